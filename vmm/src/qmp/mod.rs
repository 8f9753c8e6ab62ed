//! QMP, QEMU's JSON control protocol, on a unix socket (`--qmp`), so that
//! QEMU's clients (the `qemu.qmp` Python package, `qmp-shell`, libvirt-style
//! scripts) drive this VMM unchanged. docs/qmp.md lists what we answer.
//!
//! - `protocol`: the wire format and QEMU's error texts (pure).
//! - `commands`: the commands against a `Machine`, and negotiation (pure).
//! - `media`: removable media, block nodes and resize, as QEMU's blockdev.c.
//! - `inject`: runtime fault and latency injection (`x-` commands, ours).
//! - `server`: the socket and its clients, run by the VMM's event loop.

pub mod commands;
pub mod inject;
pub mod media;
pub mod protocol;
pub mod server;

pub use commands::{Drive, Machine};
pub use protocol::QmpError;
pub use server::{parse_spec, Server};
