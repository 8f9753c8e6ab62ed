//! I/O limits as the user writes them: `--drive throttling.*` keys and the
//! arguments of QMP `block_set_io_throttle`, and how `query-block` shows
//! them. One table names each of QEMU's six buckets in both spellings, so
//! the command line, the control socket and the report cannot disagree.

use block::throttle::{Bucket, Config};
use serde_json::{json, Map, Value};

use crate::qmp::protocol::{Args, QmpError};

/// (bucket, `throttling.` key, QMP argument), in QEMU's order.
const NAMES: [(Bucket, &str, &str); 6] = [
    (Bucket::BpsTotal, "bps-total", "bps"),
    (Bucket::BpsRead, "bps-read", "bps_rd"),
    (Bucket::BpsWrite, "bps-write", "bps_wr"),
    (Bucket::OpsTotal, "iops-total", "iops"),
    (Bucket::OpsRead, "iops-read", "iops_rd"),
    (Bucket::OpsWrite, "iops-write", "iops_wr"),
];

/// A drive's limits from the command line, checked with QEMU's rules.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Throttling {
    pub cfg: Config,
    pub group: Option<String>,
}

// Rates are integers parsed from text; the levels (f64) are always 0 here.
impl Eq for Throttling {}

/// A number with an optional binary suffix (k, M, G, T), so that
/// `bps-total=8M` is 8 MiB/s. QEMU takes plain numbers only.
fn parse_number(v: &str) -> Option<u64> {
    let (digits, shift) = match v.char_indices().last()? {
        (i, 'k' | 'K') => (&v[..i], 10),
        (i, 'M' | 'm') => (&v[..i], 20),
        (i, 'G' | 'g') => (&v[..i], 30),
        (i, 'T' | 't') => (&v[..i], 40),
        _ => (v, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

impl Throttling {
    /// One `throttling.KEY=VALUE` of `--drive` (`key` without the prefix).
    /// False: not a throttling key.
    pub fn set_key(&mut self, key: &str, value: &str) -> Result<bool, String> {
        if key == "group" {
            if value.is_empty() {
                return Err("throttling.group: empty group name".into());
            }
            self.group = Some(value.to_string());
            return Ok(true);
        }
        let number = || {
            parse_number(value).ok_or_else(|| format!("throttling.{key}: invalid value '{value}' (expected a number, with an optional k, M, G or T)"))
        };
        if key == "iops-size" {
            self.cfg.op_size = number()?;
            return Ok(true);
        }
        for (bucket, name, _) in NAMES {
            let b = self.cfg.bucket_mut(bucket);
            if key == name {
                b.avg = number()?;
            } else if key.strip_prefix(name) == Some("-max") {
                b.max = number()?;
            } else if key.strip_prefix(name) == Some("-max-length") {
                b.burst_length = number()?;
            } else {
                continue;
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// QEMU's throttle_is_valid, once every key is in.
    pub fn validate(&self) -> Result<(), String> {
        self.cfg.validate()
    }
}

/// The limits of QMP `block_set_io_throttle`'s arguments (QEMU's
/// BlockIOThrottle): the six rates are required, the rest optional.
pub fn from_qmp(a: &Args<'_>) -> Result<(Config, Option<String>), QmpError> {
    let mut cfg = Config::default();
    for (bucket, _, arg) in NAMES {
        let b = cfg.bucket_mut(bucket);
        b.avg = a.u64(arg)?;
        if let Some(max) = a.opt_u64(&format!("{arg}_max"))? {
            b.max = max;
        }
        if let Some(len) = a.opt_u64(&format!("{arg}_max_length"))? {
            b.burst_length = len;
        }
    }
    if let Some(size) = a.opt_u64("iops_size")? {
        cfg.op_size = size;
    }
    let group = a.opt_str("group")?.map(str::to_string);
    Ok((cfg, group))
}

/// Every argument `from_qmp` reads, for the unknown-argument check.
pub fn qmp_args() -> Vec<String> {
    let mut v: Vec<String> = ["device", "id", "iops_size", "group"].iter().map(|s| s.to_string()).collect();
    for (_, _, arg) in NAMES {
        v.extend([arg.to_string(), format!("{arg}_max"), format!("{arg}_max_length")]);
    }
    v
}

/// The fields QEMU's BlockDeviceInfo (query-block's `inserted`) has for
/// limits: the six rates always (0 without limits); each `_max` when
/// set, with its `_max_length`; `iops_size` when set; `group` with limits.
pub fn info_fields(limits: Option<(Config, String)>) -> Map<String, Value> {
    let mut m = Map::new();
    let (cfg, group) = match limits {
        Some((c, g)) => (c, Some(g)),
        None => (Config::default(), None),
    };
    for (bucket, _, arg) in NAMES {
        let b = cfg.bucket(bucket);
        m.insert(arg.to_string(), json!(b.avg));
        if b.max != 0 {
            m.insert(format!("{arg}_max"), json!(b.max));
            m.insert(format!("{arg}_max_length"), json!(b.burst_length));
        }
    }
    if cfg.op_size != 0 {
        m.insert("iops_size".into(), json!(cfg.op_size));
    }
    if let Some(g) = group {
        m.insert("group".into(), json!(g));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(keys: &[(&str, &str)]) -> Result<Throttling, String> {
        let mut t = Throttling::default();
        for (k, v) in keys {
            assert!(t.set_key(k, v)?, "{k} is a throttling key");
        }
        t.validate().map(|_| t)
    }

    #[test]
    fn every_key_sets_its_bucket() {
        let t = parse(&[
            ("bps-read", "8M"),
            ("bps-read-max", "16M"),
            ("bps-read-max-length", "3"),
            ("iops-write", "100"),
            ("iops-size", "4k"),
            ("group", "g1"),
        ])
        .unwrap();
        let r = t.cfg.bucket(Bucket::BpsRead);
        assert_eq!((r.avg, r.max, r.burst_length), (8 << 20, 16 << 20, 3));
        assert_eq!(t.cfg.bucket(Bucket::OpsWrite).avg, 100);
        assert_eq!(t.cfg.op_size, 4096);
        assert_eq!(t.group.as_deref(), Some("g1"));
        assert!(!Throttling::default().set_key("bps", "1").unwrap(), "QEMU's legacy names are not ours");
    }

    #[test]
    fn qemus_rules_refuse_impossible_limits() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[("bps-total", "1M"), ("bps-read", "1M")], "cannot be used at the same time"),
            (&[("bps-total", "2M"), ("bps-total-max", "1M")], "cannot be lower than"),
            (&[("iops-size", "4096")], "iops size requires an iops value"),
            (&[("bps-total", "1M"), ("bps-total-max-length", "5")], "burst length set without burst rate"),
        ];
        for (keys, want) in cases {
            let e = parse(keys).unwrap_err();
            assert!(e.contains(want), "{keys:?}: {e}");
        }
        for bad in ["", "M", "1.5M", "-1", "8X", "99999999999T"] {
            let e = parse(&[("bps-total", bad)]).unwrap_err();
            assert!(e.starts_with("throttling.bps-total: invalid value"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn info_shows_rates_always_and_bursts_when_set() {
        let m = info_fields(None);
        assert_eq!(m["bps"], 0);
        assert!(m.get("group").is_none() && m.get("bps_max").is_none());
        let t = parse(&[("iops-total", "50"), ("iops-total-max", "100"), ("iops-total-max-length", "2")]).unwrap();
        let m = info_fields(Some((t.cfg, "g".into())));
        assert_eq!((m["iops"].as_u64(), m["iops_max"].as_u64(), m["iops_max_length"].as_u64()), (Some(50), Some(100), Some(2)));
        assert_eq!(m["group"], "g");
        assert!(m.get("bps_max").is_none());
    }
}
