//! Inside the L1 VM: joins a serial port (L1's second UART, which QEMU
//! connects to a unix socket on the host) to the VMM's QMP socket, so that
//! a host-side test drives a nested VMM with qemu.qmp as it would drive one
//! on the host. One QMP session per VMM run: the bridge waits for the
//! VMM's socket, then copies bytes both ways until the VMM closes it.
//!
//! Usage: qmp-bridge TTY SOCKET

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn raw_mode(fd: i32) -> std::io::Result<()> {
    // SAFETY: termios calls on an fd we own, with a zeroed struct that
    // tcgetattr fills before it is changed.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::cfmakeraw(&mut t);
        libc::cfsetspeed(&mut t, libc::B115200);
        if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, tty, sock] = &args[..] else {
        eprintln!("usage: qmp-bridge TTY SOCKET");
        std::process::exit(2);
    };
    let mut serial = match std::fs::OpenOptions::new().read(true).write(true).open(tty) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("qmp-bridge: {tty}: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = raw_mode(serial.as_raw_fd()) {
        eprintln!("qmp-bridge: {tty}: raw mode: {e}");
        std::process::exit(1);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut vmm = loop {
        match UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                eprintln!("qmp-bridge: {sock}: {e}");
                std::process::exit(1);
            }
        }
    };
    eprintln!("qmp-bridge: {tty} <-> {sock}");
    // Both ways in one poll loop, so that the bridge ends as soon as the
    // VMM closes its socket and never holds the serial port afterwards
    // (a later VMM run in the same L1 gets a bridge of its own).
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: serial.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: vmm.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two fds we own, with a correctly sized array.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) } < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if fds[1].revents != 0 {
            match vmm.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if serial.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            break;
        }
        if fds[0].revents & libc::POLLIN == 0 && fds[0].revents & libc::POLLHUP != 0 {
            // A hung-up tty stays "ready": do not spin on it.
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if fds[0].revents & libc::POLLIN != 0 {
            match serial.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    if vmm.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
    eprintln!("qmp-bridge: the VMM closed its socket");
}
