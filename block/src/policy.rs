//! Error policies (QEMU's werror/rerror). Names and defaults follow QEMU's
//! `-drive` so that users can carry their command lines over unchanged.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// What to do when a request fails (QEMU's `BlockdevOnError`, without `auto`,
/// which QEMU resolves to the backend's value before any device sees it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Complete the request with an error to the guest.
    Report,
    /// Complete the request as if it had succeeded.
    Ignore,
    /// Stop the VM on ENOSPC, report anything else.
    Enospc,
    /// Stop the VM and keep the request for a retry on resume.
    Stop,
}

/// The action a failed request actually gets, once the policy has looked at
/// the errno (QEMU's `BlockErrorAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    Ignore,
    Report,
    Stop,
}

impl OnError {
    /// QEMU's defaults: report for reads, enospc for writes.
    pub const DEFAULT_READ: OnError = OnError::Report;
    pub const DEFAULT_WRITE: OnError = OnError::Enospc;

    /// Parses a `rerror=` value: `enospc` is refused for reads.
    pub fn parse_read(s: &str) -> Result<OnError, Error> {
        match s.parse()? {
            OnError::Enospc => Err(Error::EnospcForRead),
            p => Ok(p),
        }
    }

    /// The decision of QEMU's `blk_get_error_action` for one errno.
    pub fn action(self, errno: i32) -> ErrorAction {
        match self {
            OnError::Report => ErrorAction::Report,
            OnError::Ignore => ErrorAction::Ignore,
            OnError::Stop => ErrorAction::Stop,
            OnError::Enospc if errno == libc_enospc() => ErrorAction::Stop,
            OnError::Enospc => ErrorAction::Report,
        }
    }
}

/// ENOSPC without pulling libc into a crate that otherwise needs none here.
const fn libc_enospc() -> i32 {
    28
}

impl FromStr for OnError {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "report" => Ok(OnError::Report),
            "ignore" => Ok(OnError::Ignore),
            "enospc" => Ok(OnError::Enospc),
            "stop" => Ok(OnError::Stop),
            _ => Err(Error::InvalidValue {
                what: "error action",
                value: s.to_string(),
                expected: "report, ignore, enospc, stop",
            }),
        }
    }
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnError::Report => "report",
            OnError::Ignore => "ignore",
            OnError::Enospc => "enospc",
            OnError::Stop => "stop",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EIO: i32 = 5;
    const ENOSPC: i32 = 28;

    #[test]
    fn action_matches_qemu_decision_table() {
        assert_eq!(OnError::Report.action(EIO), ErrorAction::Report);
        assert_eq!(OnError::Report.action(ENOSPC), ErrorAction::Report);
        assert_eq!(OnError::Ignore.action(EIO), ErrorAction::Ignore);
        assert_eq!(OnError::Stop.action(EIO), ErrorAction::Stop);
        assert_eq!(OnError::Enospc.action(ENOSPC), ErrorAction::Stop);
        assert_eq!(OnError::Enospc.action(EIO), ErrorAction::Report);
    }

    #[test]
    fn rerror_refuses_enospc() {
        assert_eq!(OnError::parse_read("enospc"), Err(Error::EnospcForRead));
        assert_eq!(OnError::parse_read("stop"), Ok(OnError::Stop));
        assert!(OnError::parse_read("bogus").is_err());
    }
}
