//! The VM configuration: the command line turned into checked values. Every
//! check a user can fail happens here, before any KVM object, thread or
//! terminal change exists, so an error leaves nothing half-started.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use block::driver::os_reason;
use block::{AioEngine, CacheMode, DiscardMode, OnError};

use crate::cli::Cli;

/// What is wrong with the user's input. Each renders as one line naming the
/// bad value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--memory '{0}': {1}")]
    Memory(String, &'static str),
    #[error("--cpus '{0}': must be a whole number from 1 to {MAX_CPUS}")]
    Cpus(String),
    #[error("{what} '{path}': {reason}")]
    File { what: &'static str, path: PathBuf, reason: String },
    #[error("--kernel '{0}': not a bzImage or ELF kernel")]
    KernelFormat(PathBuf),
    #[error("{0}")]
    Qmp(String),
    #[error("--serial '{0}': expected stdio, file:PATH or none")]
    Serial(String),
    #[error("--drive '{spec}': {reason}")]
    Drive { spec: String, reason: String },
}

pub const MAX_CPUS: u8 = 32;
/// Below this a stock kernel cannot even unpack itself.
const MIN_MEMORY: u64 = 16 << 20;
/// Far beyond what the hosts we run on have; keeps the arithmetic sane.
const MAX_MEMORY: u64 = 1 << 40;
/// Virtio disks get vda..vdh; the MMIO slots and IRQs are sized for that.
pub const MAX_VIRTIO_DRIVES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOutput {
    Stdio,
    File(PathBuf),
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    Virtio,
    Ide,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Disk,
    Cdrom,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    /// None only for a CD-ROM drive that starts empty.
    pub file: Option<PathBuf>,
    pub interface: Interface,
    pub media: Media,
    /// IDE position 0..3 (primary master, primary slave, secondary master,
    /// secondary slave); None for virtio.
    pub index: Option<u8>,
    pub readonly: bool,
    pub cache: CacheMode,
    pub aio: AioEngine,
    pub discard: DiscardMode,
    pub werror: OnError,
    pub rerror: OnError,
    pub id: String,
    pub serial: Option<String>,
    /// `x-inject=` / `x-latency=` rules armed at start (issue 12).
    pub inject: Vec<InjectRule>,
    /// `throttling.*`: I/O limits and their group (issue 14).
    pub throttling: crate::throttling::Throttling,
    /// `format=`: None probes, as QEMU does (and warns for raw).
    pub format: Option<block::image::Format>,
    /// `snapshot=on`: writes go to a throw-away overlay.
    pub snapshot: bool,
}

/// A fault or latency rule from the command line, armed on the drive's
/// injection layer at start, as QMP's x-block-error-inject and
/// x-block-latency-inject would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InjectRule {
    Error(block::drivers::inject::Rule),
    Latency(block::drivers::inject::Latency),
}

/// `OP:ERRNO[:once][@SECTOR[+COUNT]]` (x-inject) or
/// `OP:MS[@SECTOR[+COUNT]]` (x-latency).
fn parse_inject(key: &str, value: &str) -> Result<InjectRule, String> {
    use block::drivers::inject::{Count, Latency, Rule};
    use crate::qmp::inject::{errno_by_name, op_by_name, MAX_MS};
    let bad = |why: &str| format!("{key}: invalid value '{value}' ({why})");
    let (rule, range) = match value.split_once('@') {
        Some((r, range)) => (r, Some(range)),
        None => (value, None),
    };
    let sectors = match range {
        None => None,
        Some(r) => {
            let (first, count) = match r.split_once('+') {
                Some((f, c)) => (f, c.parse::<u64>().ok().filter(|&c| c > 0).ok_or_else(|| bad("COUNT must be at least 1"))?),
                None => (r, 1),
            };
            let first = first.parse::<u64>().map_err(|_| bad("SECTOR must be a number"))?;
            Some((first, first.checked_add(count - 1).ok_or_else(|| bad("range too large"))?))
        }
    };
    let fields: Vec<&str> = rule.split(':').collect();
    let op = op_by_name(fields[0]).ok_or_else(|| bad("OP is read, write, flush, discard or any"))?;
    if key == "x-latency" {
        let [_, ms] = fields[..] else { return Err(bad("expected OP:MS[@SECTOR[+COUNT]]")) };
        let ms = ms.parse::<u64>().ok().filter(|m| (1..=MAX_MS).contains(m)).ok_or_else(|| bad("MS from 1 to 600000"))?;
        return Ok(InjectRule::Latency(Latency { op, sectors, delay: std::time::Duration::from_millis(ms) }));
    }
    let (errno, count) = match fields[..] {
        [_, e] => (e, Count::UntilRemoved),
        [_, e, "once"] => (e, Count::Once),
        _ => return Err(bad("expected OP:ERRNO[:once][@SECTOR[+COUNT]]")),
    };
    let errno = errno_by_name(errno).ok_or_else(|| bad("ERRNO is a name such as EIO or ENOSPC"))?;
    Ok(InjectRule::Error(Rule { op, sectors, errno, count }))
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub kernel_format: KernelFormat,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory: u64,
    pub cpus: u8,
    pub drives: Vec<DriveConfig>,
    pub qmp: Option<PathBuf>,
    pub serial: SerialOutput,
    pub paused: bool,
    pub print_blockstats: bool,
}

impl VmConfig {
    pub fn from_cli(cli: &Cli) -> Result<VmConfig, ConfigError> {
        let kernel_format = kernel_format(&cli.kernel)?;
        if let Some(initrd) = &cli.initrd {
            check_readable("--initrd", initrd)?;
        }
        let mut drive_specs: Vec<String> = cli.drive.clone();
        if let Some(cd) = &cli.cdrom {
            drive_specs.push(format!("if=ide,index=2,media=cdrom,file={}", cd.display()));
        }
        Ok(VmConfig {
            kernel: cli.kernel.clone(),
            kernel_format,
            initrd: cli.initrd.clone(),
            cmdline: cli.cmdline.clone(),
            memory: parse_memory(&cli.memory)?,
            cpus: parse_cpus(&cli.cpus)?,
            drives: parse_drives(&drive_specs)?,
            qmp: cli.qmp.as_deref().map(crate::qmp::parse_spec).transpose().map_err(ConfigError::Qmp)?,
            serial: parse_serial(&cli.serial)?,
            paused: cli.paused,
            print_blockstats: cli.print_blockstats,
        })
    }
}

/// Sizes as QEMU's -m takes them: a number with an optional K/M/G/T suffix,
/// MiB when there is none.
pub fn parse_memory(s: &str) -> Result<u64, ConfigError> {
    let err = |why| ConfigError::Memory(s.to_string(), why);
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(err("unknown suffix (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 20),
    };
    let n: u64 = digits.parse().map_err(|_| err("not a size (e.g. 512M, 1G)"))?;
    if n == 0 {
        return Err(err("must be greater than zero"));
    }
    let bytes = n.checked_shl(shift).filter(|b| b >> shift == n).ok_or_else(|| err("too large"))?;
    if bytes < MIN_MEMORY {
        return Err(err("too small (at least 16M)"));
    }
    if bytes > MAX_MEMORY {
        return Err(err("too large (at most 1T)"));
    }
    if bytes % 4096 != 0 {
        return Err(err("must be a multiple of 4K"));
    }
    Ok(bytes)
}

pub fn parse_cpus(s: &str) -> Result<u8, ConfigError> {
    match s.trim().parse::<u8>() {
        Ok(n) if (1..=MAX_CPUS).contains(&n) => Ok(n),
        _ => Err(ConfigError::Cpus(s.to_string())),
    }
}

pub fn parse_serial(s: &str) -> Result<SerialOutput, ConfigError> {
    match s {
        "stdio" => Ok(SerialOutput::Stdio),
        "none" => Ok(SerialOutput::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialOutput::File(PathBuf::from(p))),
            _ => Err(ConfigError::Serial(s.to_string())),
        },
    }
}

fn check_readable(what: &'static str, path: &Path) -> Result<File, ConfigError> {
    let file_err = |reason: String| ConfigError::File { what, path: path.to_path_buf(), reason };
    let meta = std::fs::metadata(path).map_err(|e| file_err(os_reason(&e)))?;
    if meta.is_dir() {
        return Err(file_err("is a directory".into()));
    }
    File::open(path).map_err(|e| file_err(os_reason(&e)))
}


/// Checks the kernel's magic numbers up front, so a wrong file is a clear
/// error before the VM exists. The actual loading is linux-loader's.
fn kernel_format(path: &Path) -> Result<KernelFormat, ConfigError> {
    let mut f = check_readable("--kernel", path)?;
    let mut head = [0u8; 0x210];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => {
                return Err(ConfigError::File { what: "--kernel", path: path.into(), reason: os_reason(&e) })
            }
        }
    }
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    // Linux boot protocol: 0xAA55 at 0x1FE, "HdrS" at 0x202.
    if n >= 0x206 && head[0x1fe..0x200] == [0x55, 0xaa] && head[0x202..0x206] == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(ConfigError::KernelFormat(path.to_path_buf()))
}

fn parse_onoff(v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("invalid value '{v}' (expected on or off)")),
    }
}

/// Parses every `--drive` and checks them against each other (IDE slots, ids,
/// the virtio drive count).
pub fn parse_drives(specs: &[String]) -> Result<Vec<DriveConfig>, ConfigError> {
    let mut drives: Vec<DriveConfig> = Vec::new();
    let mut ide_used = [false; 4];
    let mut ids = HashSet::new();
    let mut virtio_count = 0;
    for spec in specs {
        let derr = |reason: String| ConfigError::Drive { spec: spec.clone(), reason };
        let mut d = parse_drive(spec).map_err(derr)?;
        match d.interface {
            Interface::Ide => {
                let idx = match d.index {
                    Some(i) => i,
                    // QEMU's rule: the first free position.
                    None => match ide_used.iter().position(|u| !u) {
                        Some(i) => i as u8,
                        None => return Err(derr("no free IDE position (0 to 3 are taken)".into())),
                    },
                };
                if ide_used[idx as usize] {
                    return Err(derr(format!("IDE index {idx} is already in use")));
                }
                ide_used[idx as usize] = true;
                d.index = Some(idx);
                if d.id.is_empty() {
                    let kind = if d.media == Media::Cdrom { "cd" } else { "hd" };
                    d.id = format!("ide{}-{}{}", idx / 2, kind, idx % 2);
                }
            }
            Interface::Virtio => {
                if virtio_count == MAX_VIRTIO_DRIVES {
                    return Err(derr(format!("too many virtio drives (at most {MAX_VIRTIO_DRIVES})")));
                }
                if d.id.is_empty() {
                    d.id = format!("virtio{virtio_count}");
                }
                virtio_count += 1;
            }
        }
        if !ids.insert(d.id.clone()) {
            return Err(derr(format!("duplicate id '{}'", d.id)));
        }
        drives.push(d);
    }
    Ok(drives)
}

fn parse_drive(spec: &str) -> Result<DriveConfig, String> {
    let mut file = None;
    let mut interface = Interface::Ide; // QEMU's default
    let mut media = Media::Disk;
    let mut index = None;
    let mut readonly = None;
    let mut cache = CacheMode::default();
    let mut aio = AioEngine::default();
    let mut discard = DiscardMode::default();
    let mut werror = OnError::DEFAULT_WRITE;
    let mut rerror = OnError::DEFAULT_READ;
    let mut id = String::new();
    let mut serial = None;
    let mut inject = Vec::new();
    let mut throttling = crate::throttling::Throttling::default();
    let mut format = None;
    let mut snapshot = false;
    let mut seen = HashSet::new();

    if spec.trim().is_empty() {
        return Err("empty drive specification".into());
    }
    for part in split_drive_spec(spec) {
        let (key, value) = part.split_once('=').ok_or_else(|| format!("'{part}' is not KEY=VALUE"))?;
        let repeatable = matches!(key, "x-inject" | "x-latency");
        if !repeatable && !seen.insert(key.to_string()) {
            return Err(format!("key '{key}' given twice"));
        }
        let bad = |e: block::Error| format!("{key}: {e}");
        match key {
            "file" => {
                if value.is_empty() {
                    return Err("file= is empty".into());
                }
                file = Some(PathBuf::from(value));
            }
            "if" => {
                interface = match value {
                    "virtio" => Interface::Virtio,
                    "ide" => Interface::Ide,
                    _ => return Err(format!("if: invalid value '{value}' (expected virtio or ide)")),
                }
            }
            "media" => {
                media = match value {
                    "disk" => Media::Disk,
                    "cdrom" => Media::Cdrom,
                    _ => return Err(format!("media: invalid value '{value}' (expected disk or cdrom)")),
                }
            }
            "index" => match value.parse::<u8>() {
                Ok(i) if i < 4 => index = Some(i),
                _ => return Err(format!("index: invalid value '{value}' (expected 0 to 3)")),
            },
            "format" => {
                format = Some(match value {
                    "raw" => block::image::Format::Raw,
                    "qcow2" => block::image::Format::Qcow2,
                    _ => return Err(format!("format: unsupported format '{value}' (raw or qcow2)")),
                })
            }
            "snapshot" => snapshot = parse_onoff(value).map_err(|e| format!("snapshot: {e}"))?,
            "readonly" => readonly = Some(parse_onoff(value).map_err(|e| format!("readonly: {e}"))?),
            "cache" => cache = value.parse().map_err(bad)?,
            "aio" => aio = value.parse().map_err(bad)?,
            "discard" => discard = value.parse().map_err(bad)?,
            "werror" => werror = value.parse().map_err(bad)?,
            "rerror" => rerror = OnError::parse_read(value).map_err(bad)?,
            "id" => {
                if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                    return Err(format!("id: invalid value '{value}' (letters, digits, '-', '_', '.')"));
                }
                id = value.to_string();
            }
            "serial" => {
                if value.len() > 20 || !value.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(format!("serial: invalid value '{value}' (at most 20 printable characters)"));
                }
                serial = Some(value.to_string());
            }
            "x-inject" | "x-latency" => inject.push(parse_inject(key, value)?),
            _ => match key.strip_prefix("throttling.") {
                Some(k) if throttling.set_key(k, value)? => {}
                _ => return Err(format!("unknown key '{key}'")),
            },
        }
    }

    if interface == Interface::Virtio {
        if index.is_some() {
            return Err("index= is only valid with if=ide (virtio disks are ordered as given)".into());
        }
        if media == Media::Cdrom {
            return Err("media=cdrom needs if=ide".into());
        }
    }
    let readonly = match (media, readonly) {
        (Media::Cdrom, Some(false)) => return Err("a CD-ROM is always read-only (readonly=off)".into()),
        (Media::Cdrom, _) => true,
        (Media::Disk, r) => r.unwrap_or(false),
    };
    match &file {
        // With snapshot=on the image is only read.
        Some(path) => check_drive_file(path, readonly || snapshot)?,
        None if media == Media::Disk => return Err("file= is required for a disk".into()),
        None if !inject.is_empty() => return Err("x-inject/x-latency need a medium (file=)".into()),
        None => {}
    }
    throttling.validate()?;
    Ok(DriveConfig { file, interface, media, index, readonly, cache, aio, discard, werror, rerror, id, serial, inject, throttling, format, snapshot })
}

/// Splits on commas, with QEMU's escape: ",," is a literal comma (for paths).
fn split_drive_spec(spec: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
}

fn check_drive_file(path: &Path, readonly: bool) -> Result<(), String> {
    let name = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("file '{name}': {}", os_reason(&e)))?;
    if meta.is_dir() {
        return Err(format!("file '{name}': is a directory"));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(path)
        .map_err(|e| format!("file '{name}': {}", os_reason(&e)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfile(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-config-{}-{name}", std::process::id()));
        std::fs::write(&p, b"x").unwrap();
        p
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M").unwrap(), 512 << 20);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("2048M").unwrap(), 2048 << 20);
        assert_eq!(parse_memory("2048").unwrap(), 2048 << 20);
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        for bad in ["0", "0M", "", "M", "12X", "-1G", "1.5G", "8M", "99999999999T"] {
            assert!(parse_memory(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn cpu_counts() {
        assert_eq!(parse_cpus("1").unwrap(), 1);
        assert_eq!(parse_cpus("32").unwrap(), 32);
        for bad in ["0", "33", "-1", "two", ""] {
            assert!(parse_cpus(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn serial_targets() {
        assert_eq!(parse_serial("stdio").unwrap(), SerialOutput::Stdio);
        assert_eq!(parse_serial("none").unwrap(), SerialOutput::None);
        assert_eq!(parse_serial("file:/tmp/x").unwrap(), SerialOutput::File("/tmp/x".into()));
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tcp:1").is_err());
    }

    #[test]
    fn drive_keys_and_defaults() {
        let f = tmpfile("a");
        let d = parse_drives(&[format!("file={},if=virtio,cache=none,aio=threads,werror=stop,rerror=ignore,id=d0,serial=S1", f.display())]).unwrap();
        let d = &d[0];
        assert_eq!(d.interface, Interface::Virtio);
        assert_eq!(d.cache, CacheMode::None);
        assert_eq!(d.aio, AioEngine::Threads);
        assert_eq!(d.werror, OnError::Stop);
        assert_eq!(d.rerror, OnError::Ignore);
        assert_eq!(d.id, "d0");
        assert_eq!(d.serial.as_deref(), Some("S1"));
        let d = &parse_drives(&[format!("file={}", f.display())]).unwrap()[0];
        assert_eq!((d.interface, d.index, d.werror, d.rerror), (Interface::Ide, Some(0), OnError::Enospc, OnError::Report));
        assert_eq!((d.cache, d.discard), (CacheMode::Writeback, DiscardMode::Ignore), "QEMU's defaults");
        assert_eq!(d.id, "ide0-hd0");
        for (v, want) in [
            ("writeback", CacheMode::Writeback),
            ("writethrough", CacheMode::Writethrough),
            ("none", CacheMode::None),
            ("directsync", CacheMode::Directsync),
            ("unsafe", CacheMode::Unsafe),
        ] {
            assert_eq!(parse_drives(&[format!("file={},cache={v}", f.display())]).unwrap()[0].cache, want);
        }
        for (v, want) in [("ignore", DiscardMode::Ignore), ("unmap", DiscardMode::Unmap), ("on", DiscardMode::Unmap)] {
            assert_eq!(parse_drives(&[format!("file={},discard={v}", f.display())]).unwrap()[0].discard, want);
        }
        let e = parse_drives(&[format!("file={},discard=trim", f.display())]).unwrap_err().to_string();
        assert!(e.contains("discard") && e.contains("'trim'"), "{e}");
    }

    #[test]
    fn drive_errors_name_the_problem() {
        let f = tmpfile("b");
        let cases = [
            (format!("file={},bogus=1", f.display()), "unknown key 'bogus'"),
            (format!("file={},rerror=enospc", f.display()), "enospc"),
            (format!("file={},werror=sometimes", f.display()), "sometimes"),
            (format!("file={},index=4", f.display()), "index"),
            (format!("file={},format=vmdk", f.display()), "vmdk"),
            (format!("file={},snapshot=maybe", f.display()), "snapshot"),
            (format!("file={},if=scsi", f.display()), "scsi"),
            ("file=/nonexistent/x.img".to_string(), "/nonexistent/x.img"),
            ("if=virtio".to_string(), "file= is required"),
            (format!("file={},if=virtio,index=1", f.display()), "only valid with if=ide"),
            (format!("file={},noequals", f.display()), "KEY=VALUE"),
        ];
        for (spec, needle) in cases {
            let e = parse_drives(std::slice::from_ref(&spec)).unwrap_err().to_string();
            assert!(e.contains(needle), "'{spec}' gave '{e}'");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn injection_rules_at_start() {
        use block::drivers::inject::{Count, Latency, Rule};
        let f = tmpfile("inj");
        let spec = format!("file={},if=virtio,x-inject=write:EIO,x-inject=read:ENOSPC:once@100+8,x-latency=any:2000@5", f.display());
        let d = &parse_drives(&[spec]).unwrap()[0];
        assert_eq!(
            d.inject,
            vec![
                InjectRule::Error(Rule { op: Some(block::Op::Write), sectors: None, errno: libc::EIO, count: Count::UntilRemoved }),
                InjectRule::Error(Rule { op: Some(block::Op::Read), sectors: Some((100, 107)), errno: libc::ENOSPC, count: Count::Once }),
                InjectRule::Latency(Latency { op: None, sectors: Some((5, 5)), delay: std::time::Duration::from_millis(2000) }),
            ]
        );
        for (rule, needle) in [
            ("x-inject=write", "expected OP:ERRNO"),
            ("x-inject=seek:EIO", "OP is read"),
            ("x-inject=write:EFOO", "ERRNO is a name"),
            ("x-inject=write:EIO:twice", "expected OP:ERRNO"),
            ("x-inject=write:EIO@x", "SECTOR must be a number"),
            ("x-inject=write:EIO@1+0", "COUNT must be at least 1"),
            ("x-latency=read:0", "MS from 1"),
            ("x-latency=read", "expected OP:MS"),
        ] {
            let e = parse_drives(&[format!("file={},{rule}", f.display())]).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains(rule.split_once('=').unwrap().1), "'{rule}' gave '{e}'");
        }
        let e = parse_drives(&["if=ide,media=cdrom,x-inject=read:EIO".to_string()]).unwrap_err().to_string();
        assert!(e.contains("need a medium"), "{e}");
    }

    #[test]
    fn ide_positions_and_ids_are_unique() {
        let f = tmpfile("c");
        let same = [format!("file={},index=1", f.display()), format!("file={},index=1", f.display())];
        assert!(parse_drives(&same).unwrap_err().to_string().contains("already in use"));
        let ids = [format!("file={},id=x", f.display()), format!("file={},if=virtio,id=x", f.display())];
        assert!(parse_drives(&ids).unwrap_err().to_string().contains("duplicate id"));
        let auto = [format!("file={},index=0", f.display()), format!("file={}", f.display())];
        assert_eq!(parse_drives(&auto).unwrap()[1].index, Some(1));
        let many: Vec<String> = (0..9).map(|_| format!("file={},if=virtio", f.display())).collect();
        assert!(parse_drives(&many).unwrap_err().to_string().contains("too many"));
    }

    #[test]
    fn cdrom_may_be_empty_and_is_read_only() {
        let d = &parse_drives(&["if=ide,media=cdrom,index=2".to_string()]).unwrap()[0];
        assert!(d.readonly && d.file.is_none());
        assert_eq!(d.id, "ide1-cd0");
        assert!(parse_drives(&["media=cdrom,readonly=off".to_string()]).is_err());
    }

    #[test]
    fn commas_in_paths_are_escaped_by_doubling() {
        assert_eq!(split_drive_spec("file=a,,b,if=ide"), vec!["file=a,b", "if=ide"]);
    }

    #[test]
    fn kernel_magic() {
        let f = tmpfile("k-elf");
        std::fs::write(&f, b"\x7fELF\x02\x01\x01").unwrap();
        assert_eq!(kernel_format(&f).unwrap(), KernelFormat::Elf);
        let mut bz = vec![0u8; 0x300];
        bz[0x1fe] = 0x55;
        bz[0x1ff] = 0xaa;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&f, &bz).unwrap();
        assert_eq!(kernel_format(&f).unwrap(), KernelFormat::BzImage);
        std::fs::write(&f, b"hello").unwrap();
        assert!(matches!(kernel_format(&f), Err(ConfigError::KernelFormat(_))));
        assert!(kernel_format(Path::new("/nonexistent/vmlinuz")).unwrap_err().to_string().contains("No such file"));
        assert!(kernel_format(Path::new("/tmp")).unwrap_err().to_string().contains("directory"));
    }
}
