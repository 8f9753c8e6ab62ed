//! Removable media and block nodes over QMP: QEMU's blockdev.c logic for
//! eject, the tray, removing and inserting media, changing them in one
//! step, block nodes made by `blockdev-add`, and `block_resize`. Every
//! check, its order and its message are QEMU's, so that a client written
//! for QEMU (iotest 118's sequences among them) sees the same answers.
//!
//! The drive's device is told through the block layer (`change_media`,
//! `eject_request`), which also reports DEVICE_TRAY_MOVED; media changes
//! and resizes happen inside drained sections of the block layer, so no
//! request straddles them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use block::drivers::null::NullDriver;
use block::image::Format;
use block::{BlockDriver, CacheMode};
use serde_json::{Map, Value};

use super::commands::Drive;
use super::protocol::{Args, QmpError};

/// A node made by `blockdev-add`: owned by the monitor until
/// `blockdev-del`, whether or not a drive uses it meanwhile.
pub struct Node {
    driver: Arc<dyn BlockDriver>,
    filename: String,
    read_only: bool,
}

#[derive(Default)]
pub struct Nodes(BTreeMap<String, Node>);

impl Nodes {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

fn err(desc: String) -> QmpError {
    QmpError::generic(desc)
}

/// QEMU's qmp_get_blk: exactly one of `device` (the drive's name) and `id`
/// (its device's id; the same name here). Returns the drive and the name
/// to use in messages.
pub(super) fn drive<'a>(drives: &'a [Drive], a: &Args<'_>) -> Result<(&'a Drive, String), QmpError> {
    let (device, id) = (a.opt_str("device")?, a.opt_str("id")?);
    let (name, by_id) = match (device, id) {
        (Some(n), None) => (n, false),
        (None, Some(n)) => (n, true),
        _ => return Err(err("Need exactly one of 'device' and 'id'".into())),
    };
    drives
        .iter()
        .find(|d| if by_id { d.qdev == name } else { d.backend.name() == name })
        .map(|d| (d, name.to_string()))
        .ok_or_else(|| QmpError::device_not_found(format!("Device '{name}' not found")))
}

/// How `do_open_tray` ended, for callers that tolerate some failures.
enum Tray {
    Open,
    /// No tray: the callers that go on to remove the medium ignore this
    /// (QEMU's -ENOSYS, whose message nobody sees).
    Absent,
    /// Locked and not forced: the guest was asked to eject.
    Locked(QmpError),
    Failed(QmpError),
}

/// QEMU's do_open_tray.
fn open_tray(d: &Drive, name: &str, force: bool) -> Tray {
    let b = &d.backend;
    if !b.has_removable_media() {
        return Tray::Failed(err(format!("Device '{name}' is not removable")));
    }
    if !b.has_tray() {
        return Tray::Absent;
    }
    if b.is_tray_open() {
        return Tray::Open;
    }
    let locked = b.is_medium_locked();
    if locked {
        b.eject_request(force);
    }
    if !locked || force {
        b.change_media(false);
    }
    if locked && !force {
        return Tray::Locked(err(format!(
            "Device '{name}' is locked and force was not specified, wait for tray to open and try again"
        )));
    }
    Tray::Open
}

/// QEMU's blockdev_remove_medium.
fn remove_medium(d: &Drive, name: &str) -> Result<(), QmpError> {
    let b = &d.backend;
    if !b.has_removable_media() {
        return Err(err(format!("Device '{name}' is not removable")));
    }
    if b.has_tray() && !b.is_tray_open() {
        return Err(err(format!("Tray of device '{name}' is not open")));
    }
    if !b.is_inserted() {
        return Ok(());
    }
    b.remove_medium();
    if !b.has_tray() {
        // Tray-less removable devices learn of the change only here.
        b.change_media(false);
    }
    Ok(())
}

/// QEMU's blockdev_insert_medium, with the node's name (None: an
/// anonymous node, as blockdev-change-medium makes).
fn insert_medium(d: &Drive, name: &str, node: &Node, node_name: Option<&str>) -> Result<(), QmpError> {
    let b = &d.backend;
    if !b.has_removable_media() {
        return Err(err(format!("Device '{name}' is not removable")));
    }
    if b.has_tray() && !b.is_tray_open() {
        return Err(err(format!("Tray of device '{name}' is not open")));
    }
    if b.is_inserted() {
        return Err(err(format!("There already is a medium in device '{name}'")));
    }
    b.set_read_only(node.read_only);
    let r = match node_name {
        Some(n) => b.insert_node(node.driver.clone(), &node.filename, n.to_string()),
        None => b.insert_medium(node.driver.clone(), &node.filename),
    };
    r.map_err(|e| err(e.to_string()))?;
    if !b.has_tray() {
        b.change_media(true);
    }
    Ok(())
}

/// QEMU's qmp_blockdev_close_tray.
fn close_tray(d: &Drive, name: &str) -> Result<(), QmpError> {
    let b = &d.backend;
    if !b.has_removable_media() {
        return Err(err(format!("Device '{name}' is not removable")));
    }
    if !b.has_tray() || !b.is_tray_open() {
        return Ok(());
    }
    b.change_media(true);
    Ok(())
}

/// Opens an image as QEMU's bdrv_open: `format` None probes (and says on
/// stderr that probing a raw image is unsafe, as QEMU does); `locking`
/// false for QEMU's locking=off or force-share=on.
fn open_image(filename: &str, format: Option<Format>, read_only: bool, cache: CacheMode, locking: bool) -> Result<Node, QmpError> {
    let o = block::image::OpenOptions { format, read_only, cache, snapshot: false, no_lock: !locking };
    let opened = block::image::open(Path::new(filename), &o).map_err(|e| match e {
        block::Error::Open { reason, .. } => err(format!("Could not open '{filename}': {reason}")),
        other => err(other.to_string()),
    })?;
    if let Some(w) = opened.warning {
        eprintln!("vmm: warning: {w}");
    }
    Ok(Node { driver: opened.driver, filename: filename.to_string(), read_only })
}

/// Two names of one file (device and inode).
fn same_file(a: &str, b: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// A `file` child's filename (`{"driver": "file", "filename": ...}`), for
/// a format node's `file` option.
fn file_child(driver: &str, args: &Map<String, Value>) -> Result<String, QmpError> {
    match args.get("file") {
        Some(Value::Object(child)) => {
            let c = Args(child);
            match c.str("driver")? {
                "file" => Ok(c.str("filename")?.to_string()),
                other => Err(err(format!("{driver}: a '{other}' child is not supported (only 'file')"))),
            }
        }
        Some(Value::String(_)) => Err(err(format!("{driver}: a child by node reference is not supported"))),
        Some(_) => Err(err("Invalid parameter type for 'file', expected: object".into())),
        None => Err(err("Parameter 'file' is missing".into())),
    }
}

pub fn eject(drives: &[Drive], a: Args<'_>) -> Result<(), QmpError> {
    a.only(&["device", "id", "force"])?;
    let force = a.opt_bool("force")?.unwrap_or(false);
    let (d, name) = drive(drives, &a)?;
    match open_tray(d, &name, force) {
        Tray::Open | Tray::Absent => remove_medium(d, &name),
        Tray::Locked(e) | Tray::Failed(e) => Err(e),
    }
}

pub fn open_tray_cmd(drives: &[Drive], a: Args<'_>) -> Result<(), QmpError> {
    a.only(&["device", "id", "force"])?;
    let force = a.opt_bool("force")?.unwrap_or(false);
    let (d, name) = drive(drives, &a)?;
    match open_tray(d, &name, force) {
        // Locked: the guest has been asked; QEMU reports success.
        Tray::Open | Tray::Absent | Tray::Locked(_) => Ok(()),
        Tray::Failed(e) => Err(e),
    }
}

pub fn close_tray_cmd(drives: &[Drive], a: Args<'_>) -> Result<(), QmpError> {
    a.only(&["device", "id"])?;
    let (d, name) = drive(drives, &a)?;
    close_tray(d, &name)
}

pub fn remove_medium_cmd(drives: &[Drive], a: Args<'_>) -> Result<(), QmpError> {
    a.only(&["id"])?;
    let (d, name) = drive(drives, &a)?;
    remove_medium(d, &name)
}

/// A node is in use when a drive has it as its medium.
fn in_use(drives: &[Drive], node_name: &str) -> bool {
    drives.iter().any(|d| d.backend.node_name().as_deref() == Some(node_name))
}

pub fn insert_medium_cmd(drives: &[Drive], nodes: &Nodes, a: Args<'_>) -> Result<(), QmpError> {
    a.only(&["id", "node-name"])?;
    let node_name = a.str("node-name")?;
    let (d, name) = drive(drives, &a)?;
    let node = nodes.0.get(node_name).ok_or_else(|| err(format!("Node '{node_name}' not found")))?;
    if in_use(drives, node_name) {
        return Err(err(format!("Node '{node_name}' is already in use")));
    }
    insert_medium(d, &name, node, Some(node_name))
}

/// QEMU's qmp_blockdev_change_medium: the new image is opened first, and
/// nothing changes if that fails; then open the tray (a locked one without
/// force fails, after asking the guest), remove, insert, close.
pub fn change_medium(drives: &[Drive], a: Args<'_>) -> Result<(), QmpError> {
    a.only(&["device", "id", "filename", "format", "force", "read-only-mode"])?;
    let filename = a.str("filename")?;
    let force = a.opt_bool("force")?.unwrap_or(false);
    let (d, name) = drive(drives, &a)?;
    let read_only = match a.opt_str("read-only-mode")? {
        None | Some("retain") => d.backend.is_read_only(),
        Some("read-only") => true,
        Some("read-write") => false,
        Some(other) => return Err(err(format!("Parameter 'read-only-mode' does not accept value '{other}'"))),
    };
    let format = match a.opt_str("format")? {
        None => None,
        Some("raw") | Some("file") => Some(Format::Raw),
        Some("qcow2") => Some(Format::Qcow2),
        Some(f) => return Err(err(format!("Unknown driver '{f}' (this VMM opens raw and qcow2 images)"))),
    };
    // Reopening the current medium's file can only meet our own image
    // lock: QEMU takes the new node's lock once the old node is gone, so
    // then the old medium goes first (if the file still fails to open, the
    // drive is left empty, as QEMU leaves it when the insert fails).
    let same = d.backend.medium_filename().is_some_and(|cur| same_file(&cur, filename));
    let node = match open_image(filename, format, read_only, d.cache, true) {
        Ok(n) => Some(n),
        Err(e) if same && e.desc.contains(" lock ") => None,
        Err(e) => return Err(e),
    };
    match open_tray(d, &name, force) {
        Tray::Open | Tray::Absent => {}
        Tray::Locked(e) | Tray::Failed(e) => return Err(e),
    }
    remove_medium(d, &name)?;
    let node = match node {
        Some(n) => n,
        None => open_image(filename, format, read_only, d.cache, true)?,
    };
    insert_medium(d, &name, &node, None)?;
    close_tray(d, &name)
}

/// QEMU's id_wellformed: a letter, then letters, digits, '-', '.', '_'.
/// Automatic names start with '#', so no user name can take one.
fn valid_node_name(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphabetic()) && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// `blockdev-add` for the drivers we have: `file` (filename), `raw` over a
/// `file` child, `null-co` (size, default 1 GiB as QEMU's).
pub fn blockdev_add(drives: &[Drive], nodes: &mut Nodes, args: &Map<String, Value>) -> Result<(), QmpError> {
    let a = Args(args);
    // Options QEMU clients commonly pass that change nothing here are
    // accepted; anything else is refused by name.
    a.only(&[
        "driver",
        "node-name",
        "read-only",
        "auto-read-only",
        "filename",
        "file",
        "size",
        "read-zeroes",
        "cache",
        "discard",
        "detect-zeroes",
        "aio",
        "locking",
        "force-share",
    ])?;
    let driver = a.str("driver")?;
    let node_name = a.opt_str("node-name")?.ok_or_else(|| err("'node-name' must be specified for the root node".into()))?;
    // QEMU's bdrv_assign_node_name, in its order.
    if !valid_node_name(node_name) {
        return Err(err(format!("Invalid node-name: '{node_name}'")));
    }
    if drives.iter().any(|d| d.backend.name() == node_name) {
        return Err(err(format!("node-name={node_name} is conflicting with a device id")));
    }
    if nodes.0.contains_key(node_name) || in_use(drives, node_name) {
        return Err(err(format!("Duplicate nodes with node-name='{node_name}'")));
    }
    if node_name.len() >= 32 {
        return Err(err("Node name too long".into()));
    }
    let read_only = a.opt_bool("read-only")?.unwrap_or(false);
    // QEMU's locking (on, off, auto) and force-share (read-only nodes
    // only): either turns our image locks off for this node.
    let force_share = a.opt_bool("force-share")?.unwrap_or(false);
    if force_share && !read_only {
        return Err(err("force-share=on can only be used with read-only images".into()));
    }
    let locking = match a.opt_str("locking")? {
        None | Some("on") | Some("auto") => !force_share,
        Some("off") => false,
        Some(other) => return Err(err(format!("Parameter 'locking' does not accept value '{other}'"))),
    };
    let cache = CacheMode::default();
    let node = match driver {
        "file" => open_image(a.str("filename")?, Some(Format::Raw), read_only, cache, locking)?,
        "raw" => open_image(&file_child(driver, args)?, Some(Format::Raw), read_only, cache, locking)?,
        "qcow2" => open_image(&file_child(driver, args)?, Some(Format::Qcow2), read_only, cache, locking)?,
        "null-co" => {
            let size = a.opt_u64("size")?.unwrap_or(1 << 30);
            Node { driver: Arc::new(NullDriver::new(size)), filename: "null-co://".into(), read_only }
        }
        "vmdk" | "vdi" | "vhdx" | "vpc" | "qed" | "luks" | "host_device" | "host_cdrom" | "nbd" => {
            return Err(err(format!("driver '{driver}' is not supported by this VMM")));
        }
        other => return Err(err(format!("Parameter 'driver' does not accept value '{other}'"))),
    };
    nodes.0.insert(node_name.to_string(), node);
    Ok(())
}

pub fn blockdev_del(drives: &[Drive], nodes: &mut Nodes, a: Args<'_>) -> Result<(), QmpError> {
    a.only(&["node-name"])?;
    let n = a.str("node-name")?;
    let owned = nodes.0.contains_key(n);
    if !owned && !in_use(drives, n) {
        return Err(err(format!("Failed to find node with node-name='{n}'")));
    }
    if in_use(drives, n) {
        return Err(err(format!("Node {n} is in use")));
    }
    nodes.0.remove(n);
    Ok(())
}

/// QEMU's qmp_block_resize: the arguments are typed first (size is an
/// int64), then bdrv_lookup_bs finds the drive (`device`) or else the node
/// (`node-name`), then a negative size is refused.
pub fn block_resize(drives: &[Drive], nodes: &Nodes, a: Args<'_>) -> Result<(), QmpError> {
    a.only(&["device", "node-name", "size"])?;
    let (device, node_name) = (a.opt_str("device")?, a.opt_str("node-name")?);
    let size = match a.0.get("size") {
        None => return Err(err("Parameter 'size' is missing".into())),
        Some(v) => v.as_i64().ok_or_else(|| err("Invalid parameter type for 'size', expected: integer".into()))?,
    };
    enum Target<'a> {
        Drive(&'a Drive),
        Node(&'a Node),
    }
    let mut target = None;
    if let Some(dev) = device {
        if let Some(d) = drives.iter().find(|d| d.backend.name() == dev) {
            if !d.backend.is_inserted() {
                return Err(err(format!("Device '{dev}' has no medium")));
            }
            target = Some(Target::Drive(d));
        }
    }
    if let (None, Some(n)) = (&target, node_name) {
        target = drives
            .iter()
            .find(|d| d.backend.node_name().as_deref() == Some(n))
            .map(Target::Drive)
            .or_else(|| nodes.0.get(n).map(Target::Node));
    }
    let target = target.ok_or_else(|| {
        err(format!("Cannot find device='{}' nor node-name='{}'", device.unwrap_or(""), node_name.unwrap_or("")))
    })?;
    let size = u64::try_from(size).map_err(|_| err("Parameter 'size' expects a >0 size".into()))?;
    let errno_msg = |e: block::Errno| match e.0 {
        libc::EACCES => err("Image is read-only".into()),
        _ => err(format!("Could not resize: {e}")),
    };
    match target {
        Target::Drive(d) => d.backend.resize(size).map_err(errno_msg),
        Target::Node(n) if n.read_only => Err(err("Image is read-only".into())),
        Target::Node(n) => n.driver.truncate(size).map_err(errno_msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use block::{BlockBackend, BlockEvent};
    use devices::ide::{self, IdeChannel};
    use devices::BusDevice;
    use std::sync::Mutex;

    /// A real IDE CD-ROM (the device model, no KVM), its drive, and the
    /// block events it reports.
    fn cd() -> (IdeChannel, Drive, Arc<Mutex<Vec<BlockEvent>>>) {
        let b = Arc::new(BlockBackend::new("ide1-cd0"));
        b.set_read_only(true);
        b.insert_medium(Arc::new(NullDriver::new(1 << 20)), "one.iso").unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        b.set_event_sink(Some(Box::new(move |e| sink.lock().unwrap().push(e))));
        let cfg = ide::DriveConfig { backend: b.clone(), media: ide::Media::Cdrom, serial: "QM1".into() };
        let ch = IdeChannel::new(Box::new(|_| {}), Some(cfg), None).unwrap();
        (ch, Drive { backend: b, qdev: "ide1-cd0".into(), cache: CacheMode::default() }, events)
    }

    /// The guest's PREVENT ALLOW MEDIUM REMOVAL, through the task file.
    fn prevent(ch: &mut IdeChannel, lock: bool) {
        ch.write(6, &[0xa0]);
        ch.write(4, &[12]);
        ch.write(5, &[0]);
        ch.write(7, &[0xa0]);
        let cdb = [0x1e, 0, 0, 0, u8::from(lock), 0, 0, 0, 0, 0, 0, 0];
        ch.write_string(0, 2, &cdb);
        let mut st = [0u8];
        ch.read(7, &mut st);
        assert_eq!(st[0] & 0x89, 0, "PREVENT ALLOW completed: status {:#x}", st[0]);
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_locked_tray_refuses_eject_asks_the_guest_and_force_opens_it() {
        let (mut ch, d, events) = cd();
        prevent(&mut ch, true);
        assert!(d.backend.is_medium_locked());
        let drives = [d.clone()];
        let e = eject(&drives, Args(&args(serde_json::json!({"device": "ide1-cd0"})))).unwrap_err();
        assert_eq!(e.desc, "Device 'ide1-cd0' is locked and force was not specified, wait for tray to open and try again");
        assert!(!d.backend.is_tray_open() && d.backend.is_inserted(), "nothing moved");
        assert!(events.lock().unwrap().is_empty());
        // The guest was asked: GET EVENT STATUS NOTIFICATION would report an
        // eject request (the device tests check that); open-tray without
        // force succeeds as QEMU's does, and still moves nothing.
        open_tray_cmd(&drives, Args(&args(serde_json::json!({"id": "ide1-cd0"})))).unwrap();
        assert!(!d.backend.is_tray_open());
        // A change without force fails the same way and keeps the medium.
        let two = std::env::temp_dir().join(format!("vmm-media-test-{}.iso", std::process::id()));
        std::fs::write(&two, [0u8; 4096]).unwrap();
        let e = change_medium(&drives, Args(&args(serde_json::json!({"device": "ide1-cd0", "filename": two}))));
        let _ = std::fs::remove_file(&two);
        assert!(e.unwrap_err().desc.contains("is locked and force was not specified"));
        assert_eq!(d.backend.medium_filename().as_deref(), Some("one.iso"));
        // With force: unlocked, opened, removed.
        eject(&drives, Args(&args(serde_json::json!({"device": "ide1-cd0", "force": true})))).unwrap();
        assert!(!d.backend.is_medium_locked() && d.backend.is_tray_open() && !d.backend.is_inserted());
        assert_eq!(*events.lock().unwrap(), [BlockEvent::TrayMoved { device: "ide1-cd0".into(), tray_open: true }]);
    }

    #[test]
    fn an_unlocked_guest_lock_lets_eject_through() {
        let (mut ch, d, _) = cd();
        prevent(&mut ch, true);
        prevent(&mut ch, false);
        eject(std::slice::from_ref(&d), Args(&args(serde_json::json!({"id": "ide1-cd0"})))).unwrap();
        assert!(d.backend.is_tray_open() && !d.backend.is_inserted());
    }
}
