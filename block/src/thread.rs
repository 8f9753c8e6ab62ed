//! How every long-lived thread of the VMM is started.

use std::thread::JoinHandle;

/// Stack size of the VMM's own threads (vCPUs, device I/O threads, block
/// workers). None of them recurses or keeps large buffers on the stack.
///
/// Why not the default 2 MiB: where transparent huge pages are `always`
/// (Debian's default), a 2 MiB stack that happens to be 2 MiB-aligned is
/// backed by one huge page the first time it is touched, and a thread that
/// uses a few KiB of stack then costs 2 MiB of RSS. Measured with
/// bench-boot: 3.0 MiB outside guest RAM when no stack was aligned, 5.0 MiB
/// when one was. A stack smaller than a huge page can never be one.
pub const STACK_SIZE: usize = 512 << 10;

/// `std::thread::Builder::spawn` with a name and [`STACK_SIZE`].
pub fn spawn<F, T>(name: String, f: F) -> std::io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new().name(name).stack_size(STACK_SIZE).spawn(f)
}
