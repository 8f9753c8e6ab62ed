//! The QMP unix socket: accepting clients, reading their bytes, buffering
//! what they have not read yet. It runs on the VMM's main thread inside its
//! event loop (the owner of the machine), so a command never races another
//! command or a run-state change.
//!
//! A client that stops reading cannot stall the VMM: output is written
//! non-blocking, kept up to `MAX_PENDING` bytes, and a client over that is
//! dropped.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::commands::{Machine, Session};
use super::protocol::{encode, event, greeting, Decoder};

/// Output kept for a client that does not read, before it is dropped.
const MAX_PENDING: usize = 16 << 20;

struct Client {
    stream: UnixStream,
    decoder: Decoder,
    session: Session,
    out: Vec<u8>,
    /// Gone or over its limit: gets nothing more, and is closed once the
    /// event loop has stopped watching its fd (`close`).
    dead: bool,
}

impl Client {
    /// Writes what it can; false when the client is gone or over its limit.
    fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        self.out.len() <= MAX_PENDING
    }

    fn send(&mut self, v: &Value) -> bool {
        if self.dead {
            return false;
        }
        self.out.extend_from_slice(&encode(v));
        self.dead = !self.flush();
        !self.dead
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("--qmp {0}: a process is already listening there")]
    InUse(PathBuf),
    #[error("--qmp {0}: exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("--qmp {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// What the event loop must do after the server handled a readiness event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// New clients to watch for input.
    pub added: Vec<RawFd>,
    /// Clients gone: stop watching, then `Server::close` them.
    pub removed: Vec<RawFd>,
    /// Clients with output pending (watch for writability) or drained.
    pub want_write: Vec<(RawFd, bool)>,
    /// Watch the listener (Some(true)) or stop watching it (Some(false)):
    /// it is not watched while no client can be taken (at `MAX_CLIENTS`,
    /// or out of file descriptors), or it would wake the loop forever.
    pub listen: Option<bool>,
}

impl Changes {
    /// Both sets of changes; the later one wins for the same fd.
    pub fn merge(mut self, other: Changes) -> Changes {
        self.added.extend(other.added);
        for fd in other.removed {
            if !self.removed.contains(&fd) {
                self.removed.push(fd);
            }
        }
        self.want_write.retain(|(fd, _)| !other.want_write.iter().any(|(o, _)| o == fd));
        self.want_write.extend(other.want_write);
        self.want_write.retain(|(fd, _)| !self.removed.contains(fd));
        self.listen = other.listen.or(self.listen);
        self
    }
}

/// Clients at once; more are refused (accepted and closed at once).
pub const MAX_CLIENTS: usize = 64;

pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    clients: Vec<Client>,
    /// The listener is not watched (out of fds): watch it again once a
    /// client closes.
    listener_paused: bool,
}

impl Server {
    /// Listens on `path` with mode 0600. A stale socket file (nobody
    /// accepts on it) is replaced; a live one, or any other file, is an
    /// error, so that two VMMs cannot steal each other's socket.
    pub fn bind(path: &Path) -> Result<Server, BindError> {
        let err = |e| BindError::Io(path.to_path_buf(), e);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(BindError::InUse(path.to_path_buf()));
                }
                std::fs::remove_file(path).map_err(err)?;
            }
            Ok(_) => return Err(BindError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        // The socket is created with the umask applied: 0600 from the first
        // moment, no window for another user to connect. Still one thread
        // here (the VMM binds before starting any).
        // SAFETY: umask only swaps the process's file-creation mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(Server { listener, path: path.to_path_buf(), clients: Vec::new(), listener_paused: false })
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub fn is_client(&self, fd: RawFd) -> bool {
        self.clients.iter().any(|c| c.stream.as_raw_fd() == fd)
    }

    /// Closes clients reported in `Changes::removed`, once the caller no
    /// longer watches their fds (so an fd number is never reused while a
    /// watch on it remains).
    /// Returns whether to watch the listener again (it was paused for
    /// want of fds and a client is now gone).
    pub fn close(&mut self, fds: &[RawFd]) -> bool {
        let before = self.clients.len();
        self.clients.retain(|c| !fds.contains(&c.stream.as_raw_fd()));
        if self.listener_paused && self.clients.len() < before {
            self.listener_paused = false;
            return true;
        }
        false
    }

    /// Accepts every waiting client and greets it.
    pub fn accept(&mut self) -> Changes {
        let mut ch = Changes::default();
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    // Over the limit: closed at once (the client sees EOF).
                    if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let mut c = Client {
                        stream,
                        decoder: Decoder::default(),
                        session: Session::default(),
                        out: Vec::new(),
                        dead: false,
                    };
                    if c.send(&greeting()) {
                        ch.added.push(c.stream.as_raw_fd());
                        if !c.out.is_empty() {
                            ch.want_write.push((c.stream.as_raw_fd(), true));
                        }
                        self.clients.push(c);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // EMFILE, ENFILE, ENOBUFS...: the listener would stay
                // readable; stop watching it until a client closes.
                Err(_) => {
                    if !self.clients.is_empty() {
                        self.listener_paused = true;
                        ch.listen = Some(false);
                    }
                    break;
                }
            }
        }
        ch
    }

    /// Reads what client `fd` sent and runs its commands against `m`. The
    /// events a command causes go to every negotiated client before the
    /// command's reply.
    pub fn readable(&mut self, fd: RawFd, m: &mut dyn Machine) -> Changes {
        let mut ch = Changes::default();
        let Some(i) = self.clients.iter().position(|c| c.stream.as_raw_fd() == fd && !c.dead) else {
            // Dead already (its write side failed): report it again, so the
            // caller stops watching it (a hung-up fd stays readable).
            self.reap(&mut ch);
            return ch;
        };
        let mut inputs = Vec::new();
        let mut closed = false;
        let mut buf = [0u8; 4096];
        // Bounded: a client that floods is served in turns with the rest of
        // the event loop.
        for _ in 0..64 {
            match self.clients[i].stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => inputs.extend(self.clients[i].decoder.push(&buf[..n])),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        for input in inputs {
            let reply = self.clients[i].session.handle(m, input);
            let events = m.take_events();
            for e in &events {
                self.broadcast(e, &mut ch);
            }
            if !self.clients[i].send(&reply) {
                closed = true;
                break;
            }
        }
        if closed {
            self.clients[i].dead = true;
        }
        self.reap(&mut ch);
        ch
    }

    /// Client `fd` can take more output.
    pub fn writable(&mut self, fd: RawFd) -> Changes {
        let mut ch = Changes::default();
        if let Some(c) = self.clients.iter_mut().find(|c| c.stream.as_raw_fd() == fd && !c.dead) {
            c.dead = !c.flush();
        }
        self.reap(&mut ch);
        ch
    }

    /// Sends an event to every negotiated client.
    pub fn send_event(&mut self, name: &str, data: Option<Value>) -> Changes {
        let mut ch = Changes::default();
        self.broadcast(&event(name, data), &mut ch);
        self.reap(&mut ch);
        ch
    }

    pub fn broadcast_events(&mut self, events: &[Value]) -> Changes {
        let mut ch = Changes::default();
        for e in events {
            self.broadcast(e, &mut ch);
        }
        self.reap(&mut ch);
        ch
    }

    fn broadcast(&mut self, v: &Value, _ch: &mut Changes) {
        for c in self.clients.iter_mut().filter(|c| c.session.negotiated) {
            c.send(v);
        }
    }

    /// Reports every client's write interest, and the dead ones (which
    /// drop their pending output now).
    fn reap(&mut self, ch: &mut Changes) {
        for c in &mut self.clients {
            let fd = c.stream.as_raw_fd();
            if c.dead {
                c.out = Vec::new();
                if !ch.removed.contains(&fd) {
                    ch.removed.push(fd);
                }
            } else {
                ch.want_write.push((fd, !c.out.is_empty()));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `--qmp` as we take it: a path, or QEMU's `unix:PATH,server=on,wait=off`
/// (also `server`, `nowait`, `server=on,wait=off` in any order). Other
/// options are refused by name, so that a QEMU command line that asks for
/// something we do not do fails instead of half-working.
pub fn parse_spec(spec: &str) -> Result<PathBuf, String> {
    let Some(rest) = spec.strip_prefix("unix:") else {
        if spec.contains(',') || spec.starts_with("tcp:") {
            return Err(format!("--qmp '{spec}': only unix sockets: PATH or unix:PATH,server=on,wait=off"));
        }
        return Ok(PathBuf::from(spec));
    };
    let mut parts = rest.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(format!("--qmp '{spec}': no socket path"));
    }
    for opt in parts {
        match opt {
            "server" | "server=on" | "nowait" | "wait=off" => {}
            other => return Err(format!("--qmp '{spec}': option '{other}' is not supported (we always listen, without waiting)")),
        }
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_as_qemu_writes_them() {
        assert_eq!(parse_spec("/tmp/q.sock").unwrap(), PathBuf::from("/tmp/q.sock"));
        assert_eq!(parse_spec("unix:/tmp/q.sock,server=on,wait=off").unwrap(), PathBuf::from("/tmp/q.sock"));
        assert_eq!(parse_spec("unix:/tmp/q.sock,server,nowait").unwrap(), PathBuf::from("/tmp/q.sock"));
        assert!(parse_spec("unix:/tmp/q.sock,server=on,wait=on").unwrap_err().contains("'wait=on'"));
        assert!(parse_spec("tcp:localhost:4444,server=on").is_err());
        assert!(parse_spec("unix:,server").is_err());
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vmm-qmp-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    #[test]
    fn socket_is_private_stale_ones_are_replaced_live_ones_refused() {
        use std::os::unix::fs::PermissionsExt;
        let p = tmp("bind");
        let s = Server::bind(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(Server::bind(&p), Err(BindError::InUse(_))));
        // Leave a stale socket file behind: a listener dropped without
        // its Server (which would remove it).
        let stale = tmp("stale");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        let s2 = Server::bind(&stale).unwrap();
        drop(s2);
        assert!(!stale.exists(), "removed on exit");
        drop(s);
        let f = tmp("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(Server::bind(&f), Err(BindError::NotASocket(_))));
        assert_eq!(std::fs::read(&f).unwrap(), b"x", "a user's file is never removed");
        let _ = std::fs::remove_file(&f);
    }

    #[derive(Default)]
    struct Null(super::super::media::Nodes);
    impl Machine for Null {
        fn run_state(&self) -> crate::runstate::RunState {
            crate::runstate::RunState::Paused
        }
        fn stop(&mut self) {}
        fn cont(&mut self) -> Result<(), super::super::protocol::QmpError> {
            Ok(())
        }
        fn system_reset(&mut self) {}
        fn quit(&mut self) {}
        fn drives(&self) -> Vec<super::super::commands::Drive> {
            vec![]
        }
        fn nodes(&mut self) -> &mut super::super::media::Nodes {
            &mut self.0
        }
        fn take_events(&mut self) -> Vec<Value> {
            vec![serde_json::json!({"event": "X"})]
        }
    }

    fn read_line(s: &mut UnixStream) -> Value {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        serde_json::from_slice(&line).unwrap()
    }

    #[test]
    fn a_client_that_leaves_with_output_pending_is_removed_not_spun_on() {
        let p = tmp("pending");
        let mut srv = Server::bind(&p).unwrap();
        let mut a = UnixStream::connect(&p).unwrap();
        let fd = srv.accept().added[0];
        read_line(&mut a);
        a.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").unwrap();
        srv.readable(fd, &mut Null::default());
        // The client stops reading: events pile up beyond the socket buffer.
        let big = serde_json::json!({"x": "y".repeat(64 << 10)});
        let mut pending = false;
        for _ in 0..64 {
            let ch = srv.send_event("BIG", Some(big.clone()));
            pending |= ch.want_write.contains(&(fd, true));
        }
        assert!(pending, "output should be pending");
        drop(a);
        // Writable and readable both report it (epoll gives OUT|IN|HUP at
        // once), merged as the event loop does.
        let w = srv.writable(fd);
        assert_eq!(w.removed, vec![fd]);
        let r = srv.readable(fd, &mut Null::default());
        assert_eq!(r.removed, vec![fd], "readable after the write side died");
        let ch = w.merge(r);
        assert_eq!(ch.removed, vec![fd]);
        assert!(!ch.want_write.iter().any(|(f, _)| *f == fd));
        srv.close(&ch.removed);
        assert!(!srv.is_client(fd));
    }

    #[test]
    fn clients_over_the_limit_are_closed_at_once() {
        let p = tmp("limit");
        let mut srv = Server::bind(&p).unwrap();
        let conns: Vec<UnixStream> = (0..MAX_CLIENTS + 1).map(|_| UnixStream::connect(&p).unwrap()).collect();
        let ch = srv.accept();
        assert_eq!(ch.added.len(), MAX_CLIENTS);
        let mut last = conns.into_iter().last().unwrap();
        let mut b = [0u8; 1];
        assert_eq!(last.read(&mut b).unwrap(), 0, "the extra client sees EOF");
    }

    #[test]
    fn greeting_events_before_replies_and_disconnects() {
        let p = tmp("session");
        let mut srv = Server::bind(&p).unwrap();
        let mut a = UnixStream::connect(&p).unwrap();
        let mut b = UnixStream::connect(&p).unwrap();
        let ch = srv.accept();
        assert_eq!(ch.added.len(), 2);
        assert!(read_line(&mut a)["QMP"]["version"]["qemu"]["major"].is_number());
        read_line(&mut b);
        a.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").unwrap();
        srv.readable(ch.added[0], &mut Null::default());
        // The command's event comes first, then the reply; only to
        // negotiated clients (b has not negotiated: it gets nothing).
        assert_eq!(read_line(&mut a)["event"], "X");
        assert_eq!(read_line(&mut a), serde_json::json!({"return": {}}));
        a.write_all(b"{\"execute\":\"query-status\",\"id\":3}\n").unwrap();
        srv.readable(ch.added[0], &mut Null::default());
        assert_eq!(read_line(&mut a)["event"], "X");
        assert_eq!(read_line(&mut a)["return"]["status"], "paused");
        b.set_nonblocking(true).unwrap();
        assert!(b.read(&mut [0u8; 1]).is_err(), "b got output before negotiating");
        drop(b);
        let ch2 = srv.readable(ch.added[1], &mut Null::default());
        assert_eq!(ch2.removed, vec![ch.added[1]]);
        assert!(srv.is_client(ch.added[1]), "kept open until the caller stops watching it");
        srv.close(&ch2.removed);
        assert!(!srv.is_client(ch.added[1]) && srv.is_client(ch.added[0]));
    }
}
