//! Runtime fault and latency injection over QMP (our own commands, hence
//! QMP's `x-` prefix), on any drive, through the block layer's injection
//! layer (`BlockBackend::injector`), which a drive has only while it has
//! rules:
//!
//! - `x-block-error-inject {id, operation?, errno?, sector?, count?, once?}`:
//!   requests of `operation` (read, write, flush, discard or any; default
//!   any) touching sectors `sector .. sector+count-1` (default: all; `count`
//!   defaults to 1 with `sector`) fail with `errno` (a name: EIO, ENOSPC,
//!   ...; default EIO), every time until cleared, or only the first with
//!   `once`.
//! - `x-block-latency-inject {id, operation?, ms, sector?, count?}`:
//!   matching requests wait `ms` milliseconds (1 to 600000), then run.
//! - `x-block-error-clear {id}`: drops every rule and the layer.
//!
//! `query-block` lists a drive's rules under `x-inject`.

use block::drivers::inject::{ArmedRule, Count, Latency, Rule};
use block::Op;
use serde_json::{json, Value};

use super::commands::Drive;
use super::protocol::{Args, QmpError};

/// The errno names accepted, as Linux spells them.
const ERRNOS: &[(&str, i32)] = &[
    ("EIO", libc::EIO),
    ("ENOSPC", libc::ENOSPC),
    ("EROFS", libc::EROFS),
    ("EPERM", libc::EPERM),
    ("EACCES", libc::EACCES),
    ("ENOMEDIUM", libc::ENOMEDIUM),
    ("EINVAL", libc::EINVAL),
    ("ENODEV", libc::ENODEV),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("EDQUOT", libc::EDQUOT),
    ("EFBIG", libc::EFBIG),
    ("EBUSY", libc::EBUSY),
];

const OPERATIONS: &[(&str, Option<Op>)] =
    &[("any", None), ("read", Some(Op::Read)), ("write", Some(Op::Write)), ("flush", Some(Op::Flush)), ("discard", Some(Op::Discard))];

/// Latency rules are capped at ten minutes: longer is a hang, not slowness.
pub const MAX_MS: u64 = 600_000;

fn err(desc: String) -> QmpError {
    QmpError::generic(desc)
}

fn drive<'a>(drives: &'a [Drive], a: &Args<'_>) -> Result<&'a Drive, QmpError> {
    let id = a.str("id")?;
    drives
        .iter()
        .find(|d| d.qdev == id)
        .ok_or_else(|| QmpError::device_not_found(format!("Device '{id}' not found")))
}

/// An operation by name (read, write, flush, discard, any).
pub fn op_by_name(name: &str) -> Option<Option<Op>> {
    OPERATIONS.iter().find(|(n, _)| *n == name).map(|(_, op)| *op)
}

/// An errno by its Linux name (EIO, ENOSPC, ...).
pub fn errno_by_name(name: &str) -> Option<i32> {
    ERRNOS.iter().find(|(n, _)| *n == name).map(|(_, e)| *e)
}

fn operation(a: &Args<'_>) -> Result<Option<Op>, QmpError> {
    let name = a.opt_str("operation")?.unwrap_or("any");
    op_by_name(name).ok_or_else(|| err(format!("Parameter 'operation' does not accept value '{name}'")))
}

fn op_name(op: Option<Op>) -> &'static str {
    OPERATIONS.iter().find(|(_, o)| *o == op).map_or("any", |(n, _)| n)
}

/// `sector` and `count` as an inclusive sector range.
fn sectors(a: &Args<'_>) -> Result<Option<(u64, u64)>, QmpError> {
    match (a.opt_u64("sector")?, a.opt_u64("count")?) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(err("Parameter 'count' needs 'sector'".into())),
        (Some(_), Some(0)) => Err(err("Parameter 'count' expects a value of at least 1".into())),
        (Some(s), c) => {
            let last = s.checked_add(c.unwrap_or(1) - 1).ok_or_else(|| err("Parameter 'count' is too large".into()))?;
            Ok(Some((s, last)))
        }
    }
}

fn no_medium(d: &Drive) -> QmpError {
    err(format!("Device '{}' has no medium", d.qdev))
}

pub fn error_inject(drives: &[Drive], a: Args<'_>) -> Result<(), QmpError> {
    a.only(&["id", "operation", "errno", "sector", "count", "once"])?;
    let d = drive(drives, &a)?;
    let op = operation(&a)?;
    let name = a.opt_str("errno")?.unwrap_or("EIO");
    let errno = errno_by_name(name).ok_or_else(|| err(format!("Parameter 'errno' does not accept value '{name}'")))?;
    let sectors = sectors(&a)?;
    let count = if a.opt_bool("once")?.unwrap_or(false) { Count::Once } else { Count::UntilRemoved };
    let inject = d.backend.injector().ok_or_else(|| no_medium(d))?;
    inject.add_rule(Rule { op, sectors, errno, count });
    Ok(())
}

pub fn latency_inject(drives: &[Drive], a: Args<'_>) -> Result<(), QmpError> {
    a.only(&["id", "operation", "ms", "sector", "count"])?;
    let d = drive(drives, &a)?;
    let op = operation(&a)?;
    let ms = a.u64("ms")?;
    if !(1..=MAX_MS).contains(&ms) {
        return Err(err(format!("Parameter 'ms' expects a value from 1 to {MAX_MS}")));
    }
    let sectors = sectors(&a)?;
    let inject = d.backend.injector().ok_or_else(|| no_medium(d))?;
    inject.add_latency(Latency { op, sectors, delay: std::time::Duration::from_millis(ms) });
    Ok(())
}

pub fn clear(drives: &[Drive], a: Args<'_>) -> Result<(), QmpError> {
    a.only(&["id"])?;
    drive(drives, &a)?.backend.clear_injection();
    Ok(())
}

/// A drive's rules for query-block, or None when it has no layer.
pub fn listing(d: &Drive) -> Option<Value> {
    let inject = d.backend.injection()?;
    let range = |s: Option<(u64, u64)>, v: &mut Value| {
        if let Some((first, last)) = s {
            v["sector"] = json!(first);
            v["count"] = json!(last - first + 1);
        }
    };
    let rules = inject
        .rules()
        .into_iter()
        .map(|r| match r {
            ArmedRule::Error { rule, hits, .. } => {
                let errno = ERRNOS.iter().find(|(_, e)| *e == rule.errno).map_or("?", |(n, _)| n);
                let mut v = json!({
                    "type": "error",
                    "operation": op_name(rule.op),
                    "errno": errno,
                    "once": rule.count == Count::Once,
                    "hits": hits,
                });
                range(rule.sectors, &mut v);
                v
            }
            ArmedRule::Latency { latency, hits, .. } => {
                let mut v = json!({
                    "type": "latency",
                    "operation": op_name(latency.op),
                    "ms": latency.delay.as_millis() as u64,
                    "hits": hits,
                });
                range(latency.sectors, &mut v);
                v
            }
        })
        .collect();
    Some(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use block::drivers::null::NullDriver;
    use block::BlockBackend;
    use std::sync::Arc;

    fn drives() -> Vec<Drive> {
        let b = Arc::new(BlockBackend::new("virtio0"));
        b.insert_medium(Arc::new(NullDriver::new(1 << 20)), "null-co://").unwrap();
        vec![Drive { backend: b, qdev: "virtio0".into(), cache: Default::default() }]
    }

    fn args(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn rules_fail_and_delay_the_requests_they_name_and_clear_removes_them() {
        let ds = drives();
        let b = ds[0].backend.clone();
        error_inject(&ds, Args(&args(json!({"id": "virtio0", "operation": "write", "errno": "ENOSPC", "sector": 8, "count": 2})))).unwrap();
        assert_eq!(b.write(0, &[0u8; 4096]), Ok(()), "sectors 0-7");
        assert_eq!(b.write(8 * 512, &[0u8; 512]), Err(block::Errno::ENOSPC));
        error_inject(&ds, Args(&args(json!({"id": "virtio0", "operation": "read", "once": true})))).unwrap();
        assert_eq!(b.read(0, &mut [0u8; 512]), Err(block::Errno::EIO));
        assert_eq!(b.read(0, &mut [0u8; 512]), Ok(()), "once");
        latency_inject(&ds, Args(&args(json!({"id": "virtio0", "operation": "flush", "ms": 30})))).unwrap();
        let t = std::time::Instant::now();
        assert_eq!(b.flush(), Ok(()));
        assert!(t.elapsed() >= std::time::Duration::from_millis(30));
        let l = listing(&ds[0]).unwrap();
        assert_eq!(
            l,
            json!([
                {"type": "error", "operation": "write", "errno": "ENOSPC", "once": false, "hits": 1, "sector": 8, "count": 2},
                {"type": "latency", "operation": "flush", "ms": 30, "hits": 1}
            ])
        );
        clear(&ds, Args(&args(json!({"id": "virtio0"})))).unwrap();
        assert!(listing(&ds[0]).is_none());
        assert_eq!(b.write(8 * 512, &[0u8; 512]), Ok(()));
    }

    #[test]
    fn bad_arguments_are_refused_naming_the_field() {
        let ds = drives();
        let e = |v: Value| error_inject(&ds, Args(&args(v))).unwrap_err().desc;
        assert_eq!(e(json!({"id": "nope"})), "Device 'nope' not found");
        assert_eq!(e(json!({"id": "virtio0", "errno": "EFOO"})), "Parameter 'errno' does not accept value 'EFOO'");
        assert_eq!(e(json!({"id": "virtio0", "operation": "seek"})), "Parameter 'operation' does not accept value 'seek'");
        assert_eq!(e(json!({"id": "virtio0", "count": 3})), "Parameter 'count' needs 'sector'");
        assert_eq!(e(json!({"id": "virtio0", "sector": 1, "count": 0})), "Parameter 'count' expects a value of at least 1");
        assert_eq!(e(json!({"id": "virtio0", "sector": u64::MAX, "count": 2})), "Parameter 'count' is too large");
        assert_eq!(e(json!({"id": "virtio0", "once": 1})), "Invalid parameter type for 'once', expected: boolean");
        let l = |v: Value| latency_inject(&ds, Args(&args(v))).unwrap_err().desc;
        assert_eq!(l(json!({"id": "virtio0"})), "Parameter 'ms' is missing");
        assert_eq!(l(json!({"id": "virtio0", "ms": 0})), "Parameter 'ms' expects a value from 1 to 600000");
        assert!(listing(&ds[0]).is_none(), "no rule, no layer");
        let empty = Arc::new(BlockBackend::new("cd"));
        let ds2 = vec![Drive { backend: empty, qdev: "cd".into(), cache: Default::default() }];
        assert_eq!(error_inject(&ds2, Args(&args(json!({"id": "cd"})))).unwrap_err().desc, "Device 'cd' has no medium");
    }
}
