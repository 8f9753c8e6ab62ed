//! The command line, as clap sees it: words only. Meaning and validation live
//! in `config`, so that every bad value gets the same one-line error and exit
//! status 1 whether clap or we found it.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "vmm",
    version,
    about = "A minimal KVM virtual machine monitor that boots Linux directly",
    after_help = "Console: with --serial stdio on a terminal, Ctrl-A x quits and Ctrl-A Ctrl-A sends Ctrl-A."
)]
pub struct Cli {
    /// Guest kernel: a bzImage or an ELF vmlinux.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// Initial ramdisk, loaded high in guest RAM.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "console=ttyS0 panic=-1")]
    pub cmdline: String,

    /// Guest RAM, e.g. 512M, 1G, 2048M (a bare number means MiB).
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    pub memory: String,

    /// Number of vCPUs, 1 to 32.
    #[arg(long, value_name = "N", default_value = "1")]
    pub cpus: String,

    /// A drive, with QEMU's -drive keys: file, if=virtio|ide, media=disk|cdrom,
    /// index, format=raw, readonly=on|off,
    /// cache=writeback|writethrough|none|directsync|unsafe,
    /// aio=io_uring|threads, discard=ignore|unmap, werror=report|ignore|enospc|stop,
    /// rerror=report|ignore|stop, id, serial; I/O limits:
    /// throttling.{bps,iops}-{total,read,write}[-max[-length]],
    /// throttling.iops-size, throttling.group; and ours, repeatable:
    /// x-inject=OP:ERRNO[:once][@SECTOR[+COUNT]], x-latency=OP:MS[@SECTOR[+COUNT]].
    #[arg(long, value_name = "KEY=VAL,...")]
    pub drive: Vec<String>,

    /// An IDE CD-ROM at the secondary master (if=ide,index=2,media=cdrom).
    #[arg(long, value_name = "PATH")]
    pub cdrom: Option<PathBuf>,

    /// The QMP control socket to listen on: PATH, or QEMU's spelling
    /// unix:PATH,server=on,wait=off.
    #[arg(long, value_name = "PATH")]
    pub qmp: Option<String>,

    /// Where the guest's ttyS0 goes: stdio, file:PATH or none.
    #[arg(long, value_name = "stdio|file:PATH|none", default_value = "stdio")]
    pub serial: String,

    /// At exit, print each drive's I/O statistics (QEMU's blockstats
    /// counters) to stderr, one line per drive.
    #[arg(long)]
    pub print_blockstats: bool,

    /// Start with the vCPUs stopped, for the control socket to resume.
    #[arg(long)]
    pub paused: bool,
}
