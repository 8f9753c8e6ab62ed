//! The host side of the guest console: where ttyS0's output goes, the
//! terminal mode while the VMM runs, and keyboard input with QEMU's Ctrl-A
//! escape.

use std::io::{self, Write};
use std::os::fd::RawFd;
use std::sync::{Mutex, OnceLock};

/// Unbuffered stdout: the guest writes a byte at a time and a prompt without
/// a newline must show at once, which a line-buffered `Stdout` would hold.
pub struct RawStdout;

impl Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: writes from a valid buffer of the given length to fd 1.
        let n = unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

static SAVED_TERMIOS: OnceLock<Mutex<Option<libc::termios>>> = OnceLock::new();

fn saved() -> &'static Mutex<Option<libc::termios>> {
    SAVED_TERMIOS.get_or_init(|| Mutex::new(None))
}

/// Puts stdin's terminal in raw mode (so Ctrl-C, arrows and the like reach
/// the guest) and restores it on drop, on panic, and on every exit path that
/// unwinds through `main`.
pub struct RawTerminal {
    _private: (),
}

pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

impl RawTerminal {
    pub fn enable() -> io::Result<RawTerminal> {
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        *saved().lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            prev(info);
        }));
        let mut raw = t;
        // SAFETY: cfmakeraw edits the struct in place.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing: our own messages end in "\n" only.
        raw.c_oflag |= libc::OPOST | libc::ONLCR;
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawTerminal { _private: () })
    }
}

pub fn restore_terminal() {
    if let Some(t) = saved().lock().unwrap_or_else(|e| e.into_inner()).take() {
        // SAFETY: restores settings read earlier from the same descriptor.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_terminal();
    }
}

const CTRL_A: u8 = 0x01;

/// What a chunk of keyboard input turns into.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes for the guest.
    Guest(Vec<u8>),
    /// Ctrl-A x: the user wants out.
    Quit,
}

/// QEMU's console escape: Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A,
/// Ctrl-A followed by anything else is dropped. Only active on a terminal:
/// piped input goes to the guest byte for byte.
#[derive(Default)]
pub struct Escape {
    enabled: bool,
    after_ctrl_a: bool,
}

impl Escape {
    pub fn new(enabled: bool) -> Self {
        Escape { enabled, after_ctrl_a: false }
    }

    pub fn feed(&mut self, bytes: &[u8]) -> Input {
        if !self.enabled {
            return Input::Guest(bytes.to_vec());
        }
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            if self.after_ctrl_a {
                self.after_ctrl_a = false;
                match b {
                    b'x' | b'X' => return Input::Quit,
                    CTRL_A => out.push(CTRL_A),
                    _ => {}
                }
            } else if b == CTRL_A {
                self.after_ctrl_a = true;
            } else {
                out.push(b);
            }
        }
        Input::Guest(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences() {
        let mut e = Escape::new(true);
        assert_eq!(e.feed(b"ls\r"), Input::Guest(b"ls\r".to_vec()));
        assert_eq!(e.feed(&[CTRL_A, CTRL_A, b'a']), Input::Guest(vec![CTRL_A, b'a']));
        assert_eq!(e.feed(&[CTRL_A]), Input::Guest(vec![]));
        assert_eq!(e.feed(b"x"), Input::Quit);
        assert_eq!(e.feed(&[CTRL_A, b'z', b'b']), Input::Guest(vec![b'b']));
    }

    #[test]
    fn piped_input_is_passed_through() {
        let mut e = Escape::new(false);
        assert_eq!(e.feed(&[CTRL_A, b'x']), Input::Guest(vec![CTRL_A, b'x']));
    }
}
