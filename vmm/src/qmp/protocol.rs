//! QMP's wire format: a stream of JSON objects in, replies and events out.
//! Everything here is pure (no sockets, no machine), so that the error
//! replies can be tested byte for byte and fuzzed.
//!
//! What a client sends is untrusted: the decoder bounds the bytes it keeps
//! for one message (`MAX_MESSAGE`), serde_json bounds nesting (128 levels),
//! and every malformed input becomes an error reply, never a closed
//! connection. The error texts are QEMU's (qapi/qmp-dispatch.c,
//! qobject/json-parser.c, qapi/qobject-input-visitor.c), so that clients
//! matching on them work unchanged.

use serde_json::{json, Map, Value};

/// Bytes one message may take before it is complete. QEMU allows 64 MiB;
/// no command of ours needs more than a few hundred bytes, and this is
/// what the VMM buffers per client at most.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Nesting the scanner accepts (QEMU's JSON parser stops at 1024; serde
/// itself stops at 128 when it parses).
const MAX_DEPTH: usize = 1024;

/// A QMP error: QEMU's class (`GenericError`, `CommandNotFound`,
/// `DeviceNotFound`, ...) and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    pub class: &'static str,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError { class: "GenericError", desc: desc.into() }
    }
    pub fn not_found(desc: impl Into<String>) -> Self {
        QmpError { class: "CommandNotFound", desc: desc.into() }
    }
    pub fn device_not_found(desc: impl Into<String>) -> Self {
        QmpError { class: "DeviceNotFound", desc: desc.into() }
    }
}

/// One unit the decoder found in the stream.
#[derive(Debug, PartialEq)]
pub enum Input {
    Message(Value),
    /// Not JSON, or too long: answered with an error, and the stream goes
    /// on after the next newline.
    Error(QmpError),
}

/// Splits a byte stream into JSON values. Messages need no separator
/// (`{...}{...}` is two). Objects and arrays are delimited by a scanner that
/// keeps its place between reads (nesting depth, inside a string or not),
/// so each byte is looked at once however the message is split, and serde
/// parses a value once it is complete: a slow 1 MiB message costs 1 MiB of
/// work, not a re-parse per read. Anything else (a bare word, a number,
/// garbage) runs to the end of its line. After an error the stream resumes
/// at the next value (or, for a line, the next line).
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Dropping input until the next newline, after an oversized message.
    skipping: bool,
    /// Scanner state for the object or array at the start of `buf`.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Decoder {
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Input> {
        let mut out = Vec::new();
        if self.skipping {
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    data = &data[nl + 1..];
                    self.skipping = false;
                }
                None => return out,
            }
        }
        self.buf.extend_from_slice(data);
        loop {
            if self.scanned == 0 {
                let start = self.buf.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(self.buf.len());
                self.buf.drain(..start);
            }
            let Some(&first) = self.buf.first() else { break };
            let end = if first == b'{' || first == b'[' { self.scan() } else { Ok(self.line_end()) };
            let Ok(end) = end else {
                out.push(Input::Error(QmpError::generic(format!(
                    "JSON parse error, nesting deeper than {MAX_DEPTH} levels"
                ))));
                self.drop_to_newline();
                continue;
            };
            match end {
                Some(end) => {
                    let v = serde_json::from_slice::<Value>(&self.buf[..end]);
                    self.buf.drain(..end);
                    self.reset_scan();
                    out.push(match v {
                        Ok(v) => Input::Message(v),
                        Err(e) => Input::Error(QmpError::generic(format!("JSON parse error, {e}"))),
                    });
                }
                None if self.buf.len() > MAX_MESSAGE => {
                    out.push(Input::Error(QmpError::generic(format!(
                        "JSON parse error, message longer than {MAX_MESSAGE} bytes"
                    ))));
                    self.drop_to_newline();
                }
                None => break,
            }
        }
        out
    }

    /// After an error: the stream resumes after the next newline, which
    /// may still be to come.
    fn drop_to_newline(&mut self) {
        match self.buf.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                self.buf.drain(..=nl);
            }
            None => {
                self.buf.clear();
                self.skipping = true;
            }
        }
        self.reset_scan();
    }

    fn reset_scan(&mut self) {
        (self.scanned, self.depth, self.in_string, self.escaped) = (0, 0, false, false);
    }

    /// How far into `buf` a message's end is looked for: its first
    /// `MAX_MESSAGE + 1` bytes (the byte after the limit may still end
    /// it). Past them the message is too long, however the reads split it:
    /// looking further when one read brought more would accept what
    /// smaller reads refuse (found by the qmp_decoder fuzz target).
    fn window(&self) -> usize {
        self.buf.len().min(MAX_MESSAGE + 1)
    }

    /// The length of the object or array at the start of `buf`, once its
    /// closing bracket has arrived. A stray closing bracket ends it early,
    /// and serde then reports the error.
    fn scan(&mut self) -> Result<Option<usize>, ()> {
        let window = self.window();
        while self.scanned < window {
            let b = self.buf[self.scanned];
            self.scanned += 1;
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return Err(());
                    }
                }
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Ok(Some(self.scanned));
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// A value that is not an object or array: up to its newline. Where
    /// the last look stopped is kept (`scanned`), so a line trickled in a
    /// byte per read costs its length, not its length squared.
    fn line_end(&mut self) -> Option<usize> {
        let window = self.window();
        match self.buf[self.scanned..window].iter().position(|&b| b == b'\n') {
            Some(nl) => Some(self.scanned + nl + 1),
            None => {
                self.scanned = window;
                None
            }
        }
    }
}

/// A command as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub execute: String,
    pub arguments: Map<String, Value>,
}

/// Checks the envelope as QEMU's qmp_dispatch_check_obj does. On error the
/// id, if there was one, still comes back for the reply.
pub fn parse_request(v: Value) -> Result<Request, (Option<Value>, QmpError)> {
    let Value::Object(mut obj) = v else {
        return Err((None, QmpError::generic("QMP input must be a JSON object")));
    };
    let id = obj.remove("id");
    let fail = |id: &Option<Value>, desc: String| Err((id.clone(), QmpError::generic(desc)));
    if let Some(key) = obj.keys().find(|k| !matches!(k.as_str(), "execute" | "arguments")) {
        let key = key.clone();
        return fail(&id, format!("QMP input member '{key}' is unexpected"));
    }
    let execute = match obj.remove("execute") {
        Some(Value::String(s)) => s,
        Some(_) => return fail(&id, "QMP input member 'execute' must be a string".into()),
        None => return fail(&id, "QMP input lacks member 'execute'".into()),
    };
    let arguments = match obj.remove("arguments") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return fail(&id, "QMP input member 'arguments' must be an object".into()),
    };
    Ok(Request { id, execute, arguments })
}

/// A command's arguments, read as QEMU's input visitor reads them.
pub struct Args<'a>(pub &'a Map<String, Value>);

impl<'a> Args<'a> {
    /// Refuses members the command does not take.
    pub fn only(&self, allowed: &[&str]) -> Result<(), QmpError> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(QmpError::generic(format!("Parameter '{k}' is unexpected"))),
            None => Ok(()),
        }
    }

    fn typed<T>(&self, key: &str, what: &str, get: impl Fn(&'a Value) -> Option<T>) -> Result<Option<T>, QmpError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => {
                get(v).map(Some).ok_or_else(|| QmpError::generic(format!("Invalid parameter type for '{key}', expected: {what}")))
            }
        }
    }

    fn required<T>(&self, key: &str, v: Option<T>) -> Result<T, QmpError> {
        v.ok_or_else(|| QmpError::generic(format!("Parameter '{key}' is missing")))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, QmpError> {
        self.typed(key, "string", Value::as_str)
    }

    pub fn str(&self, key: &str) -> Result<&'a str, QmpError> {
        let v = self.opt_str(key)?;
        self.required(key, v)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, QmpError> {
        self.typed(key, "boolean", Value::as_bool)
    }

    /// A non-negative integer (QEMU's `size` and `uint64`).
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, QmpError> {
        self.typed(key, "integer", Value::as_u64)
    }

    pub fn u64(&self, key: &str) -> Result<u64, QmpError> {
        let v = self.opt_u64(key)?;
        self.required(key, v)
    }
}

/// The greeting sent on connect. We claim no capability (no out-of-band
/// execution); the version is QEMU's whose behaviour we follow, and the
/// package names us.
pub fn greeting() -> Value {
    json!({
        "QMP": {
            "version": {
                "qemu": {"major": 7, "minor": 2, "micro": 0},
                "package": concat!("rvmm ", env!("CARGO_PKG_VERSION")),
            },
            "capabilities": [],
        }
    })
}

pub fn reply_ok(ret: Value, id: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("return".into(), ret);
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    Value::Object(m)
}

pub fn reply_err(e: &QmpError, id: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("error".into(), json!({"class": e.class, "desc": e.desc}));
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    Value::Object(m)
}

/// An event, stamped with the wall clock as QEMU stamps them.
pub fn event(name: &str, data: Option<Value>) -> Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut m = Map::new();
    m.insert("event".into(), Value::String(name.into()));
    if let Some(d) = data {
        m.insert("data".into(), d);
    }
    m.insert("timestamp".into(), json!({"seconds": now.as_secs(), "microseconds": now.subsec_micros()}));
    Value::Object(m)
}

/// One message on the wire: QEMU ends each with CRLF.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(d: &mut Decoder, data: &[u8]) -> Vec<Input> {
        d.push(data)
    }

    #[test]
    fn messages_split_anywhere_and_back_to_back() {
        let mut d = Decoder::default();
        assert!(msgs(&mut d, b"{\"exec").is_empty());
        let got = msgs(&mut d, b"ute\": \"a\"}{\"execute\":\"b\"}\n  {\"x\"");
        assert_eq!(got, vec![Input::Message(json!({"execute": "a"})), Input::Message(json!({"execute": "b"}))]);
        assert_eq!(msgs(&mut d, b": 1}"), vec![Input::Message(json!({"x": 1}))]);
    }

    #[test]
    fn garbage_is_an_error_and_the_next_line_parses() {
        let mut d = Decoder::default();
        let got = msgs(&mut d, b"{\"execute\": nope}\n{\"execute\":\"ok\"}\n");
        assert!(matches!(&got[0], Input::Error(e) if e.class == "GenericError" && e.desc.starts_with("JSON parse error")));
        assert_eq!(got[1], Input::Message(json!({"execute": "ok"})));
        // Garbage that is no object: an error once its line is complete.
        assert!(msgs(&mut d, b"]]]").is_empty());
        assert!(msgs(&mut d, b" still garbage").is_empty());
        let got = msgs(&mut d, b"\n{}");
        assert!(matches!(&got[0], Input::Error(_)), "{got:?}");
        assert_eq!(got[1], Input::Message(json!({})));
        // Brackets inside strings do not count; escaped quotes do not end them.
        let got = msgs(&mut d, br#"{"execute": "a}]\"{", "arguments": {"x": [1, {"y": "}"}]}}"#);
        assert_eq!(got, vec![Input::Message(json!({"execute": "a}]\"{", "arguments": {"x": [1, {"y": "}"}]}}))]);
    }

    #[test]
    fn an_endless_message_is_cut_off_and_memory_stays_bounded() {
        let mut d = Decoder::default();
        let mut errors = 0;
        msgs(&mut d, b"{\"execute\": \"");
        for _ in 0..(2 * MAX_MESSAGE / 65536) {
            for i in msgs(&mut d, &[b'a'; 65536]) {
                assert!(matches!(i, Input::Error(_)));
                errors += 1;
            }
            assert!(d.buf.len() <= MAX_MESSAGE + 65536);
        }
        assert_eq!(errors, 1);
        assert_eq!(msgs(&mut d, b"\"}\n{\"execute\":\"x\"}"), vec![Input::Message(json!({"execute": "x"}))]);
    }

    #[test]
    fn a_message_trickling_in_is_scanned_once() {
        // Byte by byte, a 100 KiB message: linear work (this would take
        // minutes if each byte re-parsed the buffer).
        let mut d = Decoder::default();
        let msg = format!("{{\"execute\": \"x\", \"arguments\": {{\"s\": \"{}\"}}}}", "z".repeat(100 << 10));
        let mut got = Vec::new();
        for b in msg.as_bytes() {
            got.extend(d.push(std::slice::from_ref(b)));
        }
        assert_eq!(got.len(), 1);
        assert!(matches!(&got[0], Input::Message(v) if v["execute"] == "x"));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut d = Decoder::default();
        let mut s = vec![b'['; 100_000];
        s.extend_from_slice(b"\n{\"execute\": \"after\"}");
        let got = msgs(&mut d, &s);
        assert!(matches!(&got[0], Input::Error(e) if e.desc.contains("nesting")), "{got:?}");
        assert_eq!(got[1], Input::Message(json!({"execute": "after"})), "the next line still parses");
    }

    #[test]
    fn envelopes_are_checked_as_qemu_does() {
        let err = |v: Value| parse_request(v).unwrap_err();
        assert_eq!(err(json!([1])).1.desc, "QMP input must be a JSON object");
        assert_eq!(err(json!({"id": 7})), (Some(json!(7)), QmpError::generic("QMP input lacks member 'execute'")));
        assert_eq!(err(json!({"execute": 1})).1.desc, "QMP input member 'execute' must be a string");
        assert_eq!(err(json!({"execute": "x", "arguments": []})).1.desc, "QMP input member 'arguments' must be an object");
        assert_eq!(err(json!({"execute": "x", "exec-oob": "y"})).1.desc, "QMP input member 'exec-oob' is unexpected");
        let r = parse_request(json!({"execute": "stop", "id": {"a": [1]}})).unwrap();
        assert_eq!((r.execute.as_str(), r.id, r.arguments.len()), ("stop", Some(json!({"a": [1]})), 0));
    }

    #[test]
    fn arguments_are_typed_as_qemu_does() {
        let m = json!({"id": "cd0", "force": "yes", "size": -1}).as_object().unwrap().clone();
        let a = Args(&m);
        assert_eq!(a.str("id").unwrap(), "cd0");
        assert_eq!(a.opt_bool("force").unwrap_err().desc, "Invalid parameter type for 'force', expected: boolean");
        assert_eq!(a.u64("size").unwrap_err().desc, "Invalid parameter type for 'size', expected: integer");
        assert_eq!(a.str("device").unwrap_err().desc, "Parameter 'device' is missing");
        assert_eq!(a.only(&["id", "force"]).unwrap_err().desc, "Parameter 'size' is unexpected");
        assert!(a.only(&["id", "force", "size"]).is_ok());
    }

    #[test]
    fn replies_echo_the_id_and_end_in_crlf() {
        let r = encode(&reply_err(&QmpError::not_found("The command x has not been found"), Some(json!("i1"))));
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "{\"error\":{\"class\":\"CommandNotFound\",\"desc\":\"The command x has not been found\"},\"id\":\"i1\"}\r\n"
        );
        assert_eq!(reply_ok(json!({}), None), json!({"return": {}}));
        let e = event("STOP", None);
        assert!(e["timestamp"]["seconds"].as_u64().unwrap() > 1_700_000_000);
    }
}
