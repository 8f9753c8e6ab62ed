//! QEMU's image locking (block/file-posix.c), so that we and QEMU refuse
//! each other the same way: an image file is locked with open file
//! description (OFD) byte-range locks, one byte per permission at offset
//! 100 + bit for what a user holds and 200 + bit for what it does not
//! let others hold. A second writer, or a writer to a file someone reads
//! as a backing file, is refused with QEMU's message.
//!
//! Writers hold consistent-read, write, write-unchanged and resize, and do
//! not share write or resize (as QEMU's qcow2 node on its file); readers
//! (read-only drives, backing layers) hold consistent-read and do not share
//! write or resize either. Two readers coexist.
//!
//! As QEMU, the bytes are taken first and the others' checked after, from
//! the same descriptor (whose own locks a check does not see): two users
//! opening at the same moment cannot both miss each other. Only regular
//! files are locked (QEMU's host_device does not lock either).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// QEMU's BLK_PERM_* bits and names.
const CONSISTENT_READ: u32 = 0;
const WRITE: u32 = 1;
const WRITE_UNCHANGED: u32 = 2;
const RESIZE: u32 = 3;
const NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];

/// Keeps the locks while alive (they go with the descriptor).
pub struct ImageLock {
    _fd: File,
}

fn flock(kind: libc::c_short, off: i64) -> libc::flock {
    // SAFETY: a plain C struct, zero is a valid value for every field.
    let mut f: libc::flock = unsafe { std::mem::zeroed() };
    f.l_type = kind;
    f.l_whence = libc::SEEK_SET as libc::c_short;
    f.l_start = off;
    f.l_len = 1;
    f
}

/// Someone else (another open file description) holds byte `off`.
fn held_by_others(fd: &File, off: i64) -> std::io::Result<bool> {
    let mut f = flock(libc::F_WRLCK as libc::c_short, off);
    // SAFETY: F_OFD_GETLK on our descriptor with a valid flock.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut f) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f.l_type != libc::F_UNLCK as libc::c_short)
}

fn lock_byte(fd: &File, off: i64) -> std::io::Result<()> {
    let f = flock(libc::F_RDLCK as libc::c_short, off);
    // SAFETY: F_OFD_SETLK on our descriptor with a valid flock.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &f) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Locks `path` for reading, or for writing too, or says in QEMU's words
/// why not. A file system without OFD locks (some network ones) is used
/// unlocked, as QEMU's locking=auto does.
pub fn lock(path: &Path, write: bool) -> Result<ImageLock, String> {
    let fd = File::open(path).map_err(|e| e.to_string())?;
    if !fd.metadata().is_ok_and(|m| m.is_file()) {
        return Ok(ImageLock { _fd: fd });
    }
    let perms: &[u32] = if write { &[CONSISTENT_READ, WRITE, WRITE_UNCHANGED, RESIZE] } else { &[CONSISTENT_READ] };
    let unshared = [WRITE, RESIZE];
    let unsupported = |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENOLCK) | Some(libc::EINVAL));
    let check = || -> std::io::Result<Result<(), String>> {
        for &p in perms {
            lock_byte(&fd, PERM_BASE + i64::from(p))?;
        }
        for &p in &unshared {
            lock_byte(&fd, SHARED_BASE + i64::from(p))?;
        }
        for &p in perms {
            if held_by_others(&fd, SHARED_BASE + i64::from(p))? {
                return Ok(Err(format!("Failed to get \"{}\" lock (is another process using the image?)", NAMES[p as usize])));
            }
        }
        for &p in &unshared {
            if held_by_others(&fd, PERM_BASE + i64::from(p))? {
                return Ok(Err(format!("Failed to get shared \"{}\" lock (is another process using the image?)", NAMES[p as usize])));
            }
        }
        Ok(Ok(()))
    };
    match check() {
        Ok(Ok(())) => Ok(ImageLock { _fd: fd }),
        // Dropping the descriptor releases what was taken.
        Ok(Err(msg)) => Err(msg),
        Err(e) if unsupported(&e) => Ok(ImageLock { _fd: fd }),
        Err(e) => Err(format!("cannot lock the image: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_and_a_writer_over_a_reader_are_refused() {
        let p = std::env::temp_dir().join(format!("lock-test-{}", std::process::id()));
        std::fs::write(&p, [0u8; 512]).unwrap();
        let r1 = lock(&p, false).unwrap();
        let _r2 = lock(&p, false).expect("two readers");
        let e = lock(&p, true).err().unwrap();
        assert_eq!(e, "Failed to get \"write\" lock (is another process using the image?)");
        drop(r1);
        drop(_r2);
        let w = lock(&p, true).unwrap();
        assert!(lock(&p, true).is_err(), "a second writer");
        let e = lock(&p, false).err().unwrap();
        assert!(e.starts_with("Failed to get shared \"write\" lock"), "{e}");
        drop(w);
        let _w = lock(&p, true).expect("free again");
        let _ = std::fs::remove_file(&p);
    }
}
