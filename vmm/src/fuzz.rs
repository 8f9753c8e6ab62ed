//! Fuzz harness for what a QMP client controls: the bytes on the socket,
//! through `qmp::protocol::Decoder::push` and `parse_request` (`fuzz/` runs
//! it under libFuzzer; `tests/fuzz_corpus.rs` replays the corpus on stable
//! Rust): see docs/fuzzing.md.
//!
//! The input builds a byte stream (literal bytes, canned QMP messages,
//! long runs of one byte, deep nesting) and chooses where the socket reads
//! split it. The stream is pushed in one piece, in the chosen chunks and,
//! when short, byte by byte; each must give the same inputs as a model of
//! the framing the decoder documents, run on the whole stream at once:
//! - after whitespace, an object or array runs to its matching bracket
//!   (brackets in strings do not count, a backslash escapes the next byte,
//!   a stray closing bracket ends it early), anything else to its newline;
//! - a message that has not ended within `MAX_MESSAGE` bytes (the byte
//!   after them may end it) is an error; an object or array nested deeper
//!   than `MAX_DEPTH` is an error; after either the stream resumes after
//!   the next newline;
//! - a complete message is parsed by serde_json (whose own limit, 128
//!   levels, turns deeper ones into errors).
//!
//! Every message must also go through `parse_request` as QEMU's envelope
//! check says: accepted exactly when it is an object of `execute` (a
//! string), `arguments` (an object) and `id` (anything), with the id
//! returned on errors too.

use block::fuzz::Input;
use serde_json::Value;

use crate::qmp::protocol::{self, parse_request, Decoder, QmpError, MAX_MESSAGE};

/// The scanner's nesting limit (`protocol::MAX_DEPTH`, QEMU's).
pub const MAX_DEPTH: usize = 1024;
/// serde_json's recursion limit: no message may be nested deeper.
pub const SERDE_DEPTH: usize = 128;
/// Found with this harness (seed-long-message, and the regression input
/// regression-long-message-ends-in-the-read-that-passes-the-limit): the
/// decoder checked `MAX_MESSAGE` only after scanning all it had buffered,
/// so a read that brought a message past the limit together with its end
/// got it accepted, while the same bytes in smaller reads got it refused.
/// Fixed in protocol.rs (the end is looked for within the window only);
/// false, so every stream is compared with the model.
pub const AVOID_LONG_MESSAGE_IN_ONE_READ: bool = false;
pub const MAX_OPS: usize = 64;
/// Bytes a stream may reach: a maximal message and some.
pub const MAX_STREAM: usize = MAX_MESSAGE + 65536;
/// Streams up to this long are also pushed byte by byte (a push per byte
/// costs a syscall's worth of harness work; longer streams would slow the
/// fuzzer for little).
pub const BYTEWISE_MAX: usize = 512;

/// Tags of the operations (the tag byte modulo `TAGS`).
pub mod tag {
    /// Literal bytes: length (u8), bytes.
    pub const LIT: u8 = 0;
    /// A canned message (`TEMPLATES`, index modulo their number).
    pub const TEMPLATE: u8 = 1;
    /// One byte repeated: byte, count (u16 % 16384).
    pub const FILL: u8 = 2;
    /// A nesting pattern (`NESTS`) repeated: pattern, count (u16 % 2048).
    pub const NEST: u8 = 3;
    /// A read ends here.
    pub const SPLIT: u8 = 4;
    pub const TAGS: u8 = 5;
    /// One byte repeated up to about `MAX_MESSAGE`: byte, k (u8), for
    /// `MAX_MESSAGE - 128 + k` bytes. Only the tag byte 0xff means it, not
    /// 0xff modulo `TAGS`: a megabyte costs an execution 100 ms, so only a
    /// few inputs should carry one.
    pub const BIG: u8 = 0xff;
}

/// Messages and pieces a client may send, for the fuzzer to combine.
pub const TEMPLATES: [&str; 16] = [
    r#"{"execute":"qmp_capabilities"}"#,
    r#"{"execute":"query-status","id":1}"#,
    r#"{"execute":"blockdev-change-medium","arguments":{"id":"cd0","filename":"/x.iso"},"id":"a\"}"}"#,
    r#"{"execute":"eject","arguments":{"id":"cd0","force":true}}"#,
    r#"[1,{"a":[]}]"#,
    "\"\\\\\\\"{[\"\n",
    "\r\n",
    r#"{"exec-oob":"x"}"#,
    r#"{"execute":1}"#,
    r#"{"execute":"x","arguments":[]}"#,
    r#"{"id":{"a":[1]},"execute":"stop"}"#,
    "garbage\n",
    r#"{"execute": nope}"#,
    "]}",
    r#"{"s":"\u00e9\ud800"}"#,
    "123 456\n",
];

/// Nesting patterns.
pub const NESTS: [&str; 5] = ["[", r#"{"a":"#, r#"["x","#, "]", "}"];

/// What an execution found, for tests of the seeds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Parsed messages.
    pub messages: usize,
    /// The decoder's error descriptions, in order.
    pub errors: Vec<String>,
    /// `execute` of the messages `parse_request` accepted.
    pub requests: Vec<String>,
    pub stream_len: usize,
}

/// The stream and its read boundaries.
fn build(data: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let mut inp = Input::new(data);
    let mut s = Vec::new();
    let mut splits = Vec::new();
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        let t = inp.u8();
        if t == tag::BIG {
            let b = inp.u8();
            let n = MAX_MESSAGE - 128 + usize::from(inp.u8());
            s.resize(s.len() + n, b);
            s.truncate(MAX_STREAM);
            continue;
        }
        match t % tag::TAGS {
            tag::LIT => {
                let n = usize::from(inp.u8());
                s.extend_from_slice(inp.bytes(n));
            }
            tag::TEMPLATE => s.extend_from_slice(TEMPLATES[usize::from(inp.u8()) % TEMPLATES.len()].as_bytes()),
            tag::FILL => {
                let b = inp.u8();
                let n = usize::from(inp.u16() % 16384);
                s.resize(s.len() + n, b);
            }
            tag::NEST => {
                let p = NESTS[usize::from(inp.u8()) % NESTS.len()].as_bytes();
                let n = usize::from(inp.u16() % 2048);
                for _ in 0..n {
                    s.extend_from_slice(p);
                }
            }
            _ => splits.push(s.len()),
        }
        s.truncate(MAX_STREAM);
    }
    (s, splits)
}

/// The framing the decoder documents, on the whole stream at once.
fn model(s: &[u8]) -> Vec<protocol::Input> {
    let mut out = Vec::new();
    let mut i = 0;
    // After an error: past the next newline, or to the end.
    let resume = |i: usize| s[i..].iter().position(|&b| b == b'\n').map_or(s.len(), |n| i + n + 1);
    loop {
        while s.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let Some(&first) = s.get(i) else { break };
        let rest = &s[i..];
        // The message must end within its first MAX_MESSAGE + 1 bytes.
        let window = &rest[..rest.len().min(MAX_MESSAGE + 1)];
        let end = if first == b'{' || first == b'[' {
            match scan(window) {
                Ok(e) => e,
                Err(()) => {
                    out.push(error(format!("JSON parse error, nesting deeper than {MAX_DEPTH} levels")));
                    i = resume(i);
                    continue;
                }
            }
        } else {
            window.iter().position(|&b| b == b'\n').map(|n| n + 1)
        };
        match end {
            Some(e) => {
                out.push(match serde_json::from_slice::<Value>(&rest[..e]) {
                    Ok(v) => protocol::Input::Message(v),
                    Err(e) => error(format!("JSON parse error, {e}")),
                });
                i += e;
            }
            None if rest.len() > MAX_MESSAGE => {
                out.push(error(format!("JSON parse error, message longer than {MAX_MESSAGE} bytes")));
                i = resume(i);
            }
            None => break,
        }
    }
    out
}

fn error(desc: String) -> protocol::Input {
    protocol::Input::Error(QmpError::generic(desc))
}

/// The length of the object or array that `w` starts with, if it ends in
/// `w`; Err when it nests deeper than `MAX_DEPTH` first.
fn scan(w: &[u8]) -> Result<Option<usize>, ()> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in w.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(());
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Ok(Some(i + 1));
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Pushes `s` to a fresh decoder in the pieces `bounds` cut it into.
fn decode(s: &[u8], bounds: impl IntoIterator<Item = usize>) -> Vec<protocol::Input> {
    let mut d = Decoder::default();
    let mut out = Vec::new();
    let mut start = 0;
    for b in bounds.into_iter().chain([s.len()]) {
        let b = b.clamp(start, s.len());
        out.extend(d.push(&s[start..b]));
        start = b;
    }
    out
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// `parse_request` accepts exactly the envelopes QEMU accepts, and gives
/// the id back either way.
fn check_request(v: &Value, outcome: &mut Outcome) {
    let r = parse_request(v.clone());
    let Value::Object(obj) = v else {
        match r {
            Err((None, e)) if e.desc == "QMP input must be a JSON object" => return,
            r => panic!("qmp_decoder: parse_request({v}) = {r:?}, not 'must be a JSON object'"),
        }
    };
    let id = obj.get("id").cloned();
    let valid = obj.keys().all(|k| matches!(k.as_str(), "id" | "execute" | "arguments"))
        && matches!(obj.get("execute"), Some(Value::String(_)))
        && matches!(obj.get("arguments"), None | Some(Value::Object(_)));
    match r {
        Ok(req) if valid => {
            let args = obj.get("arguments").cloned().unwrap_or(Value::Object(Default::default()));
            if obj.get("execute") != Some(&Value::String(req.execute.clone()))
                || req.id != id
                || Value::Object(req.arguments) != args
            {
                panic!("qmp_decoder: parse_request({v}) changed the envelope");
            }
            outcome.requests.push(req.execute);
        }
        Err((rid, e)) if !valid => {
            if rid != id || e.class != "GenericError" || !e.desc.starts_with("QMP input ") {
                panic!("qmp_decoder: parse_request({v}) = ({rid:?}, {e:?})");
            }
        }
        r => panic!(
            "qmp_decoder: parse_request({v}) = {r:?}, but the envelope is {}valid",
            if valid { "" } else { "in" }
        ),
    }
}

fn show(s: &[u8]) -> String {
    let head = String::from_utf8_lossy(&s[..s.len().min(512)]).into_owned();
    format!("{} bytes: {head:?}{}", s.len(), if s.len() > 512 { "..." } else { "" })
}

/// The inputs, each cut to a line: a message may be a megabyte.
fn summary(inputs: &[protocol::Input]) -> String {
    let line = |i: &protocol::Input| {
        let t = format!("{i:?}");
        if t.len() > 200 {
            format!("{}... ({} bytes)", t.chars().take(200).collect::<String>(), t.len())
        } else {
            t
        }
    };
    inputs.iter().map(line).collect::<Vec<_>>().join("\n")
}

/// Runs one input.
pub fn qmp_decoder(data: &[u8]) {
    qmp_decoder_outcome(data);
}

/// `qmp_decoder`, saying what happened.
pub fn qmp_decoder_outcome(data: &[u8]) -> Outcome {
    let (s, splits) = build(data);
    let want = model(&s);
    let compare = |how: &str, got: Vec<protocol::Input>| {
        if got != want {
            panic!(
                "qmp_decoder: pushed {how}, the decoder gave\n{}\nthe framing says\n{}\nstream {}\nreads end at {splits:?}",
                summary(&got),
                summary(&want),
                show(&s)
            );
        }
    };
    let too_long = |i: &protocol::Input| matches!(i, protocol::Input::Error(e) if e.desc.contains("longer than"));
    let one_read = decode(&s, []);
    let chunks = decode(&s, splits.iter().copied());
    if !AVOID_LONG_MESSAGE_IN_ONE_READ || !want.iter().any(too_long) {
        compare("in one piece", one_read);
        compare("in the chosen reads", chunks);
    }
    if s.len() <= BYTEWISE_MAX {
        compare("byte by byte", decode(&s, 1..s.len()));
    }
    // Bounds that hold whatever the framing: the scanner's and serde's
    // nesting limits, and errors for length only past MAX_MESSAGE.
    let opening = s.iter().filter(|&&b| b == b'{' || b == b'[').count();
    let mut outcome = Outcome { stream_len: s.len(), ..Default::default() };
    for i in &want {
        match i {
            protocol::Input::Message(v) => {
                outcome.messages += 1;
                if depth(v) > SERDE_DEPTH {
                    panic!("qmp_decoder: a message nested {} deep", depth(v));
                }
                check_request(v, &mut outcome);
            }
            protocol::Input::Error(e) => {
                if (e.desc.contains("nesting") && opening <= MAX_DEPTH)
                    || (e.desc.contains("longer than") && s.len() <= MAX_MESSAGE)
                {
                    panic!("qmp_decoder: {e:?} from stream {}", show(&s));
                }
                outcome.errors.push(e.desc.clone());
            }
        }
    }
    outcome
}

/// Builds inputs by name, for the seeds.
#[derive(Default)]
pub struct Encoder {
    pub bytes: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }
    /// `b` in literal pieces of at most 255 bytes.
    pub fn lit(mut self, b: &[u8]) -> Self {
        for c in b.chunks(255) {
            self.bytes.extend_from_slice(&[tag::LIT, c.len() as u8]);
            self.bytes.extend_from_slice(c);
        }
        self
    }
    pub fn template(mut self, i: u8) -> Self {
        self.bytes.extend_from_slice(&[tag::TEMPLATE, i]);
        self
    }
    /// `n` bytes `b`: one BIG if n is near `MAX_MESSAGE`, then FILLs.
    pub fn fill(mut self, b: u8, mut n: usize) -> Self {
        if let Some(k) = n.checked_sub(MAX_MESSAGE - 128) {
            let k = k.min(255);
            self.bytes.extend_from_slice(&[tag::BIG, b, k as u8]);
            n -= MAX_MESSAGE - 128 + k;
        }
        while n > 0 {
            let k = n.min(16383);
            self.bytes.extend_from_slice(&[tag::FILL, b]);
            self.bytes.extend_from_slice(&(k as u16).to_le_bytes());
            n -= k;
        }
        self
    }
    pub fn nest(mut self, pattern: u8, n: u16) -> Self {
        self.bytes.extend_from_slice(&[tag::NEST, pattern]);
        self.bytes.extend_from_slice(&n.to_le_bytes());
        self
    }
    pub fn split(mut self) -> Self {
        self.bytes.push(tag::SPLIT);
        self
    }
}

/// A message of exactly `len` bytes: `{"execute":"x","arguments":{"s":"zzz..."}}`.
fn message_of(e: Encoder, len: usize) -> Encoder {
    let (head, tail) = (br#"{"execute":"x","arguments":{"s":""#, br#""}}"#);
    e.lit(head).split().fill(b'z', len - head.len() - tail.len()).split().lit(tail)
}

/// Hand-made seeds: (name, input).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let e = Encoder::new;
    vec![
        (
            "split-mid-message",
            e().lit(br#"{"exec"#).split().lit(b"ute\": \"a\"}{\"execute\":\"b\"}\n  {\"x\"").split().lit(b": 1}").bytes,
        ),
        ("templates", (0..16).fold(e(), |e, i| if i % 3 == 0 { e.template(i).split() } else { e.template(i) }).bytes),
        ("garbage-then-message", e().lit(b"]]] still").split().lit(b" garbage").split().lit(b"\n{}").template(0).bytes),
        ("brackets-in-strings", e().lit(br#"{"execute": "a}]\"{", "arguments": {"x": [1, {"y": "}"}]}}"#).bytes),
        // Deeper than the scanner allows: an error, then the next line.
        ("nesting-1025", e().nest(0, 600).split().nest(0, 425).lit(b"\n").template(1).bytes),
        // Within the scanner's limit but past serde's.
        ("nesting-200", e().nest(1, 200).lit(b"1").nest(4, 200).template(0).bytes),
        // MAX_MESSAGE bytes before the closing brace: accepted.
        ("max-message", message_of(e(), MAX_MESSAGE + 1).template(0).bytes),
        // One byte more: refused, and the next line parses.
        ("long-message", message_of(e(), MAX_MESSAGE + 2).lit(b"\n").template(0).bytes),
        ("long-line", e().fill(b'a', MAX_MESSAGE + 10).split().lit(b"\n").template(0).bytes),
    ]
}
