//! The commands: what each one checks and returns, against a `Machine`
//! (the running VMM, or a fake in tests), and the per-connection
//! negotiation state. QEMU's QAPI schema (qapi/*.json) is the reference for
//! names, arguments and return shapes.

use std::sync::Arc;

use block::{BlockBackend, IoStatus, Op};
use serde_json::{json, Value};

use super::inject;
use super::media::{self, Nodes};
use super::protocol::{self, parse_request, reply_err, reply_ok, Args, Input, QmpError};
use crate::runstate::RunState;
use crate::throttling;

/// What the control socket can ask of the machine. The machine queues
/// the events its actions cause (`take_events`), which the server sends
/// before the command's reply, as QEMU does.
pub trait Machine {
    fn run_state(&self) -> RunState;
    /// QEMU's vm_stop: pause the vCPUs if running, then drain and flush
    /// every drive.
    fn stop(&mut self);
    /// QEMU's qmp_cont.
    fn cont(&mut self) -> Result<(), QmpError>;
    /// The VMM ends on a reset (as QEMU with -no-reboot).
    fn system_reset(&mut self);
    fn quit(&mut self);
    fn drives(&self) -> Vec<Drive>;
    /// The nodes `blockdev-add` made.
    fn nodes(&mut self) -> &mut Nodes;
    fn take_events(&mut self) -> Vec<Value>;
}

/// A drive as `query-block` shows it.
#[derive(Clone)]
pub struct Drive {
    pub backend: Arc<BlockBackend>,
    /// The device's path in QEMU's terms (its `id` for us).
    pub qdev: String,
    /// How media opened for this drive (blockdev-change-medium) are cached.
    pub cache: block::CacheMode,
}

/// Every command we answer, for `query-commands`.
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-version",
    "query-commands",
    "query-status",
    "stop",
    "cont",
    "system_reset",
    "quit",
    "query-block",
    "query-blockstats",
    "eject",
    "blockdev-open-tray",
    "blockdev-close-tray",
    "blockdev-remove-medium",
    "blockdev-insert-medium",
    "blockdev-change-medium",
    "blockdev-add",
    "blockdev-del",
    "block_resize",
    "block_set_io_throttle",
    "x-block-error-inject",
    "x-block-latency-inject",
    "x-block-error-clear",
];

/// One connection's state: before `qmp_capabilities` only that command is
/// accepted, and events are not sent.
#[derive(Default)]
pub struct Session {
    pub negotiated: bool,
}

impl Session {
    /// The reply to one input unit.
    pub fn handle(&mut self, m: &mut dyn Machine, input: Input) -> Value {
        let v = match input {
            Input::Error(e) => return reply_err(&e, None),
            Input::Message(v) => v,
        };
        let req = match parse_request(v) {
            Ok(r) => r,
            Err((id, e)) => return reply_err(&e, id),
        };
        let is_caps = req.execute == "qmp_capabilities";
        let result = match (self.negotiated, is_caps) {
            (false, false) => Err(QmpError::not_found("Expecting capabilities negotiation with 'qmp_capabilities'")),
            (true, true) => Err(QmpError::not_found("Capabilities negotiation is already complete, command ignored")),
            (false, true) => Args(&req.arguments).only(&["enable"]).and_then(|_| {
                match req.arguments.get("enable") {
                    None => Ok(()),
                    Some(Value::Array(caps)) if caps.is_empty() => Ok(()),
                    Some(Value::Array(caps)) => {
                        Err(QmpError::generic(format!("Capability '{}' not available", caps[0].as_str().unwrap_or("?"))))
                    }
                    Some(_) => Err(QmpError::generic("Invalid parameter type for 'enable', expected: array")),
                }
                .map(|_| {
                    self.negotiated = true;
                    json!({})
                })
            }),
            (true, false) => execute(m, &req.execute, Args(&req.arguments)),
        };
        match result {
            Ok(v) => reply_ok(v, req.id),
            Err(e) => reply_err(&e, req.id),
        }
    }
}

fn execute(m: &mut dyn Machine, name: &str, a: Args<'_>) -> Result<Value, QmpError> {
    let ok = json!({});
    match name {
        "query-version" => {
            a.only(&[])?;
            Ok(protocol::greeting()["QMP"]["version"].clone())
        }
        "query-commands" => {
            a.only(&[])?;
            Ok(COMMANDS.iter().map(|c| json!({"name": c})).collect())
        }
        "query-status" => {
            a.only(&[])?;
            let s = m.run_state();
            Ok(json!({"status": s.name(), "running": s.is_running(), "singlestep": false}))
        }
        "stop" => {
            a.only(&[])?;
            m.stop();
            Ok(ok)
        }
        "cont" => {
            a.only(&[])?;
            m.cont().map(|_| ok)
        }
        "system_reset" => {
            a.only(&[])?;
            m.system_reset();
            Ok(ok)
        }
        "quit" => {
            a.only(&[])?;
            m.quit();
            Ok(ok)
        }
        "query-block" => {
            a.only(&[])?;
            Ok(m.drives().iter().map(block_info).collect())
        }
        "query-blockstats" => {
            a.only(&["query-nodes"])?;
            a.opt_bool("query-nodes")?;
            Ok(m.drives().iter().map(|d| block_stats(&d.backend)).collect())
        }
        "eject" => media::eject(&m.drives(), a).map(|_| ok),
        "blockdev-open-tray" => media::open_tray_cmd(&m.drives(), a).map(|_| ok),
        "blockdev-close-tray" => media::close_tray_cmd(&m.drives(), a).map(|_| ok),
        "blockdev-remove-medium" => media::remove_medium_cmd(&m.drives(), a).map(|_| ok),
        "blockdev-insert-medium" => {
            let drives = m.drives();
            media::insert_medium_cmd(&drives, m.nodes(), a).map(|_| ok)
        }
        "blockdev-change-medium" => media::change_medium(&m.drives(), a).map(|_| ok),
        "blockdev-add" => {
            let drives = m.drives();
            media::blockdev_add(&drives, m.nodes(), a.0).map(|_| ok)
        }
        "blockdev-del" => {
            let drives = m.drives();
            media::blockdev_del(&drives, m.nodes(), a).map(|_| ok)
        }
        "block_resize" => {
            let drives = m.drives();
            media::block_resize(&drives, m.nodes(), a).map(|_| ok)
        }
        "block_set_io_throttle" => set_io_throttle(&m.drives(), a).map(|_| ok),
        "x-block-error-inject" => inject::error_inject(&m.drives(), a).map(|_| ok),
        "x-block-latency-inject" => inject::latency_inject(&m.drives(), a).map(|_| ok),
        "x-block-error-clear" => inject::clear(&m.drives(), a).map(|_| ok),
        _ => Err(QmpError::not_found(format!("The command {name} has not been found"))),
    }
}

/// QEMU's qmp_block_set_io_throttle: the drive (by `device` or `id`) must
/// have a medium; limits that are all zero turn throttling off; a drive
/// without limits joins `group`, or a group named after itself.
fn set_io_throttle(drives: &[Drive], a: Args<'_>) -> Result<(), QmpError> {
    let allowed = throttling::qmp_args();
    a.only(&allowed.iter().map(String::as_str).collect::<Vec<_>>())?;
    let (d, _) = media::drive(drives, &a)?;
    if !d.backend.is_inserted() {
        return Err(QmpError::generic("Device has no medium"));
    }
    let (cfg, group) = throttling::from_qmp(&a)?;
    d.backend.set_io_limits(&cfg, group.as_deref()).map_err(QmpError::generic)
}

fn io_status(s: IoStatus) -> &'static str {
    match s {
        IoStatus::Ok => "ok",
        IoStatus::Failed => "failed",
        IoStatus::NoSpace => "nospace",
    }
}

/// QEMU's BlockInfo. `io-status` only where a device enabled it (QEMU
/// shows it only then too); `tray_open` only for drives with a tray;
/// `inserted` only with a medium.
pub fn block_info(d: &Drive) -> Value {
    let b = &d.backend;
    let mut info = json!({
        "device": b.name(),
        "qdev": d.qdev,
        "type": "unknown",
        "removable": b.has_removable_media(),
        "locked": b.is_medium_locked(),
    });
    if b.has_tray() {
        info["tray_open"] = json!(b.is_tray_open());
    }
    if let Some(s) = b.iostatus() {
        info["io-status"] = json!(io_status(s));
    }
    if let (Some(file), Some(node), Some(drv)) = (b.medium_filename(), b.node_name(), b.medium_driver()) {
        let size = b.getlength().unwrap_or(0);
        info["inserted"] = json!({
            "file": file,
            "node-name": node,
            "ro": b.is_read_only(),
            "drv": drv,
            "encrypted": false,
            "backing_file_depth": 0,
            "detect_zeroes": "off",
            "write_threshold": 0,
            "cache": {"writeback": b.write_cache(), "direct": false, "no-flush": false},
            "image": {"filename": file, "format": drv, "virtual-size": size},
        });
        if let Some(chain) = b.medium_info() {
            // QEMU's BlockDeviceInfo for a format node: the header's
            // backing file, the chain's depth, and ImageInfo per layer.
            info["inserted"]["backing_file_depth"] = json!(chain.depth());
            if let Some(bf) = &chain.backing_filename {
                info["inserted"]["backing_file"] = json!(bf);
            }
            info["inserted"]["image"] = image_info(&chain);
        }
        if let Some(m) = info["inserted"].as_object_mut() {
            m.extend(throttling::info_fields(b.io_limits()));
        }
    }
    if let Some(rules) = inject::listing(d) {
        info["x-inject"] = rules;
    }
    info
}

/// QEMU's ImageInfo for one image of a chain, with its backing image.
fn image_info(i: &block::image::ImageInfo) -> Value {
    let mut v = json!({"filename": i.filename, "format": i.format.name(), "virtual-size": i.virtual_size});
    if let Some(bf) = &i.backing_filename {
        v["backing-filename"] = json!(bf);
        if let Some(b) = &i.backing {
            v["full-backing-filename"] = json!(b.filename);
        }
    }
    if let Some(f) = &i.backing_format {
        v["backing-filename-format"] = json!(f);
    }
    if let Some(b) = &i.backing {
        v["backing-image"] = image_info(b);
    }
    v
}

/// QEMU's BlockStats for one drive (the device's counters).
pub fn block_stats(b: &BlockBackend) -> Value {
    let s = b.stats();
    let (r, w, f, d) = (s.get(Op::Read), s.get(Op::Write), s.get(Op::Flush), s.get(Op::Discard));
    let mut stats = json!({
        "rd_bytes": r.bytes, "wr_bytes": w.bytes, "unmap_bytes": d.bytes,
        "rd_operations": r.ops, "wr_operations": w.ops, "flush_operations": f.ops, "unmap_operations": d.ops,
        "rd_total_time_ns": r.total_time.as_nanos() as u64,
        "wr_total_time_ns": w.total_time.as_nanos() as u64,
        "flush_total_time_ns": f.total_time.as_nanos() as u64,
        "unmap_total_time_ns": d.total_time.as_nanos() as u64,
        "failed_rd_operations": r.failed, "failed_wr_operations": w.failed,
        "failed_flush_operations": f.failed, "failed_unmap_operations": d.failed,
        "invalid_rd_operations": r.invalid, "invalid_wr_operations": w.invalid,
        "invalid_flush_operations": f.invalid, "invalid_unmap_operations": d.invalid,
        "rd_merged": 0, "wr_merged": 0, "unmap_merged": 0,
        "wr_highest_offset": 0,
        "account_invalid": true, "account_failed": true,
        "timed_stats": [],
    });
    if let Some(idle) = s.idle_time() {
        stats["idle_time_ns"] = json!(idle.as_nanos() as u64);
    }
    let mut v = json!({"device": b.name(), "stats": stats});
    if let Some(node) = b.node_name() {
        v["node-name"] = json!(node);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        state: Option<RunState>,
        calls: Vec<&'static str>,
        drives: Vec<Drive>,
        nodes: Nodes,
    }

    impl Machine for Fake {
        fn run_state(&self) -> RunState {
            self.state.unwrap_or(RunState::Running)
        }
        fn stop(&mut self) {
            self.calls.push("stop");
        }
        fn cont(&mut self) -> Result<(), QmpError> {
            self.calls.push("cont");
            Err(QmpError::generic("Resetting the Virtual Machine is required"))
        }
        fn system_reset(&mut self) {
            self.calls.push("reset");
        }
        fn quit(&mut self) {
            self.calls.push("quit");
        }
        fn drives(&self) -> Vec<Drive> {
            self.drives.clone()
        }
        fn nodes(&mut self) -> &mut Nodes {
            &mut self.nodes
        }
        fn take_events(&mut self) -> Vec<Value> {
            vec![]
        }
    }

    fn send(s: &mut Session, m: &mut Fake, v: Value) -> Value {
        s.handle(m, Input::Message(v))
    }

    #[test]
    fn nothing_runs_before_negotiation_and_negotiation_happens_once() {
        let (mut s, mut m) = (Session::default(), Fake::default());
        let r = send(&mut s, &mut m, json!({"execute": "stop", "id": 1}));
        assert_eq!(r["error"]["class"], "CommandNotFound");
        assert_eq!(r["error"]["desc"], "Expecting capabilities negotiation with 'qmp_capabilities'");
        assert_eq!(r["id"], 1);
        assert!(m.calls.is_empty());
        let r = send(&mut s, &mut m, json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}));
        assert_eq!(r["error"]["desc"], "Capability 'oob' not available");
        assert!(!s.negotiated);
        assert_eq!(send(&mut s, &mut m, json!({"execute": "qmp_capabilities"})), json!({"return": {}}));
        let r = send(&mut s, &mut m, json!({"execute": "qmp_capabilities"}));
        assert_eq!(r["error"]["desc"], "Capabilities negotiation is already complete, command ignored");
    }

    #[test]
    fn commands_reach_the_machine_with_their_errors() {
        let (mut s, mut m) = (Session { negotiated: true }, Fake::default());
        assert_eq!(send(&mut s, &mut m, json!({"execute": "stop"})), json!({"return": {}}));
        let r = send(&mut s, &mut m, json!({"execute": "cont", "id": "c"}));
        assert_eq!(r, json!({"error": {"class": "GenericError", "desc": "Resetting the Virtual Machine is required"}, "id": "c"}));
        let r = send(&mut s, &mut m, json!({"execute": "stop", "arguments": {"now": true}}));
        assert_eq!(r["error"]["desc"], "Parameter 'now' is unexpected");
        let r = send(&mut s, &mut m, json!({"execute": "frobnicate"}));
        assert_eq!(r["error"], json!({"class": "CommandNotFound", "desc": "The command frobnicate has not been found"}));
        assert_eq!(m.calls, ["stop", "cont"]);
        m.state = Some(RunState::IoError);
        let r = send(&mut s, &mut m, json!({"execute": "query-status"}));
        assert_eq!(r["return"], json!({"status": "io-error", "running": false, "singlestep": false}));
        let r = send(&mut s, &mut m, json!({"execute": "query-commands"}));
        let names: Vec<&str> = r["return"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, COMMANDS);
        // Every listed command is answered (not "has not been found").
        for c in COMMANDS.iter().filter(|c| !matches!(**c, "qmp_capabilities")) {
            let r = send(&mut s, &mut m, json!({"execute": c}));
            assert_ne!(r["error"]["class"], "CommandNotFound", "{c}: {r}");
        }
    }

    #[test]
    fn block_set_io_throttle_sets_checks_and_reports_limits() {
        let (mut s, mut m) = (Session { negotiated: true }, Fake::default());
        let b = Arc::new(BlockBackend::new("qmp-throttle-d0"));
        m.drives.push(Drive { backend: b.clone(), qdev: "qmp-throttle-d0".into(), cache: Default::default() });
        let rates = |bps: u64| json!({"device": "qmp-throttle-d0", "bps": bps, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0});
        let call = |s: &mut Session, m: &mut Fake, args: Value| send(s, m, json!({"execute": "block_set_io_throttle", "arguments": args}));
        assert_eq!(call(&mut s, &mut m, rates(1 << 20))["error"]["desc"], "Device has no medium");
        b.insert_medium(Arc::new(block::drivers::null::NullDriver::new(4096)), "null-co://").unwrap();
        let mut missing = rates(1);
        missing.as_object_mut().unwrap().remove("iops_wr");
        assert_eq!(call(&mut s, &mut m, missing)["error"]["desc"], "Parameter 'iops_wr' is missing");
        let mut both = rates(1 << 20);
        both["bps_rd"] = json!(1);
        let r = call(&mut s, &mut m, both);
        assert_eq!(r["error"]["desc"], "bps/iops/max total values and read/write values cannot be used at the same time");
        let mut other = rates(1);
        other["device"] = json!("nope");
        assert_eq!(call(&mut s, &mut m, other)["error"]["class"], "DeviceNotFound");
        // Set with a burst: query-block reports it as QEMU does.
        let mut burst = rates(4 << 20);
        burst["bps_max"] = json!(8 << 20);
        burst["bps_max_length"] = json!(2);
        assert_eq!(call(&mut s, &mut m, burst), json!({"return": {}}));
        let r = send(&mut s, &mut m, json!({"execute": "query-block"}));
        let ins = &r["return"][0]["inserted"];
        assert_eq!((ins["bps"].as_u64(), ins["bps_max"].as_u64(), ins["bps_max_length"].as_u64()), (Some(4 << 20), Some(8 << 20), Some(2)));
        assert_eq!((ins["iops"].as_u64(), ins["group"].as_str()), (Some(0), Some("qmp-throttle-d0")));
        // A named group, then all zeros: off, and no group reported.
        let mut grouped = rates(1 << 20);
        grouped["group"] = json!("qmp-throttle-g");
        assert_eq!(call(&mut s, &mut m, grouped), json!({"return": {}}));
        assert_eq!(b.io_limits().unwrap().1, "qmp-throttle-g");
        assert_eq!(call(&mut s, &mut m, rates(0)), json!({"return": {}}));
        assert!(b.io_limits().is_none());
        let r = send(&mut s, &mut m, json!({"execute": "query-block"}));
        assert!(r["return"][0]["inserted"].get("group").is_none());
        assert_eq!(r["return"][0]["inserted"]["bps"], 0);
    }

    #[test]
    fn qcow2_media_show_their_chain_in_query_block() {
        if !std::process::Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success()) {
            println!("SKIPPED: qemu-img not found");
            return;
        }
        let d = std::env::temp_dir().join(format!("vmm-qmp-qcow2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("base.raw"), vec![1u8; 1 << 20]).unwrap();
        for args in [["-b", "base.raw", "-F", "raw", "mid.qcow2"], ["-b", "mid.qcow2", "-F", "qcow2", "top.qcow2"]] {
            let o = std::process::Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).args(args).current_dir(&d).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let (mut s, mut m) = (Session { negotiated: true }, Fake::default());
        let b = Arc::new(BlockBackend::new("qcow-d"));
        m.drives.push(Drive { backend: b.clone(), qdev: "qcow-d".into(), cache: Default::default() });
        let top = d.join("top.qcow2").display().to_string();
        let r = send(&mut s, &mut m, json!({"execute": "blockdev-change-medium", "arguments": {"device": "qcow-d", "filename": top, "format": "qcow2"}}));
        assert_eq!(r, json!({"return": {}}));
        let r = send(&mut s, &mut m, json!({"execute": "query-block"}));
        let ins = &r["return"][0]["inserted"];
        assert_eq!((ins["drv"].as_str(), ins["backing_file"].as_str(), ins["backing_file_depth"].as_u64()), (Some("qcow2"), Some("mid.qcow2"), Some(2)));
        let img = &ins["image"];
        assert_eq!((img["format"].as_str(), img["virtual-size"].as_u64()), (Some("qcow2"), Some(1 << 20)));
        assert_eq!(img["backing-filename-format"], "qcow2");
        assert_eq!(img["backing-image"]["backing-image"]["format"], "raw");
        assert!(img["backing-image"]["backing-image"]["filename"].as_str().unwrap().ends_with("base.raw"));
        // A qcow2 node, and a raw file that says it is qcow2.
        let file = |f: &str| json!({"driver": "file", "filename": d.join(f).display().to_string()});
        let r = send(&mut s, &mut m, json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "n1", "read-only": true, "file": file("mid.qcow2")}}));
        assert_eq!(r, json!({"return": {}}));
        let r = send(&mut s, &mut m, json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "n2", "file": file("base.raw")}}));
        assert!(r["error"]["desc"].as_str().unwrap().contains("not a qcow2 image"), "{r}");
        drop(m);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn query_block_shows_a_drive_and_its_medium() {
        let b = Arc::new(BlockBackend::new("ide1-cd0"));
        let d = Drive { backend: b.clone(), qdev: "ide1-cd0".into(), cache: Default::default() };
        let empty = block_info(&d);
        assert_eq!(empty["device"], "ide1-cd0");
        assert!(empty.get("inserted").is_none());
        assert_eq!(empty["removable"], true, "no device: removable, as QEMU");
        b.insert_medium(Arc::new(block::drivers::null::NullDriver::new(4096)), "null-co://").unwrap();
        let full = block_info(&d);
        assert_eq!(full["inserted"]["drv"], "null");
        assert_eq!(full["inserted"]["image"]["virtual-size"], 4096);
        assert_eq!(full["inserted"]["file"], "null-co://");
        let st = block_stats(&b);
        assert_eq!(st["stats"]["rd_operations"], 0);
        assert_eq!(st["device"], "ide1-cd0");
        assert!(st["stats"].get("idle_time_ns").is_none(), "no request yet");
    }
}
