//! Fan-out benchmark: many idle streams on one edgebus, the memory each
//! costs it, and the time to fan one event out to all of them (10,000
//! streams, < 16 KiB per idle stream, fan-out p99 < 250 ms). A stream is a
//! Server-Sent Events stream (`BENCH_KIND=sse`, the default) or a WebSocket
//! (`BENCH_KIND=ws`).
//!
//! Driven by `scripts/bench.sh` (`MODE=e2e SCENARIOS=sse` or `ws`), which
//! starts a release `edgebus` on free ports and passes its pid. On its own
//! (`cargo bench` without `BENCH_HTTP`) it prints a note and exits.
//!
//! 1. Checks its own parsers (chunked transfer coding + SSE lines;
//!    WebSocket frames) on canned responses, then warms edgebus up: one
//!    stream opened, one notification published and received (fed to the
//!    parser one byte at a time), the stream closed. Waits until edgebus
//!    reports 0 open sessions of the kind and reads its RSS
//!    (`/proc/<BENCH_EDGEBUS_PID>/status`).
//! 2. Opens `BENCH_STREAMS` streams on `/v1/events?topic=notifications/%23`
//!    (SSE) or `/v1/ws?topic=notifications/%23` (WebSocket, upgraded with
//!    version 13) over raw tokio sockets: one small task per stream,
//!    `BENCH_THREADS` current-thread runtimes, one read buffer per thread (a
//!    task reads only when its socket is readable and keeps no buffer of its
//!    own beyond one SSE line or text message). WebSocket streams answer
//!    every ping with a masked pong, as edgebus closes clients that stay
//!    silent. Streams open in waves of `BENCH_WAVE` (spread over the
//!    threads); a wave is done when each of its streams has its `snapshot`
//!    (the bus registered it) or failed.
//! 3. Once all are open and idle for `BENCH_SETTLE_S`, reads edgebus's RSS
//!    again: memory per idle stream = ΔRSS / open streams. (User space only:
//!    the kernel's socket buffers are not in RSS.)
//! 4. Publishes `BENCH_EVENTS` notifications (`POST /v1/notifications`) one
//!    at a time: each waits until every stream got the previous one (or
//!    `BENCH_EVENT_TIMEOUT_S`) plus `BENCH_GAP_MS`, so each measures the
//!    fan-out of one event to idle streams. The message carries the run's
//!    marker, the event's number and its send time (this process's clock,
//!    taken just before the request is written).
//! 5. Reports, per event, the time from send until the LAST stream received
//!    it (fan-out completion: p50/p99/max over events), the latency of every
//!    single delivery, and what was lost.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream, ToSocketAddrs};
use std::rc::Rc;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every stream subscribes to this filter (query-encoded `notifications/#`).
const FILTER: &str = "notifications/%23";

/// `source` of the notifications: they are published on `notifications/bench`.
const SOURCE: &str = "bench";

/// A response head longer than this is refused.
const MAX_HEAD: usize = 16 * 1024;

/// SSE lines, event data and WebSocket text messages longer than this are
/// not kept (a big snapshot is only skipped over, its kind read from its
/// first bytes; our notifications are ~250 bytes).
const MAX_LINE: usize = 4 * 1024;

/// Buffers grown past this by a long line are given back afterwards, so
/// idle streams stay small.
const KEEP_CAPACITY: usize = 512;

/// One read buffer per runtime thread, shared by all of its streams.
const READ_BUF: usize = 64 * 1024;

/// Longest wait for one wave of streams before the next one starts anyway.
const WAVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for a TCP connection and the request write.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for the blocking HTTP exchanges (publish, /metrics, warm-up).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Distinct stream errors kept for the report.
const KEEP_ERRORS: usize = 5;

/// What a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Sse,
    Ws,
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "sse" => Ok(Protocol::Sse),
            "ws" => Ok(Protocol::Ws),
            other => Err(format!("unknown stream kind {other:?}: use sse or ws")),
        }
    }
}

impl Protocol {
    /// Also the `kind` label of `edgebus_sessions_open`.
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Sse => "sse",
            Protocol::Ws => "ws",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Protocol::Sse => "SSE",
            Protocol::Ws => "WebSocket",
        }
    }

    fn request(self, host: &str) -> String {
        match self {
            Protocol::Sse => format!(
                "GET /v1/events?topic={FILTER} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
            ),
            Protocol::Ws => format!(
                "GET /v1/ws?topic={FILTER} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
        }
    }

    fn reader(self) -> Reader {
        match self {
            Protocol::Sse => Reader::Sse(SseReader::new()),
            Protocol::Ws => Reader::Ws(WsReader::new()),
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    protocol: Protocol,
    label: String,
    http: String,
    addr: SocketAddr,
    streams: usize,
    events: usize,
    threads: usize,
    wave: usize,
    gap: Duration,
    event_timeout: Duration,
    connect_timeout: Duration,
    settle: Duration,
    edgebus_pid: Option<u32>,
}

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) if !text.is_empty() => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value")),
        _ => default,
    }
}

impl Config {
    /// `None` when not driven by `scripts/bench.sh` (no `BENCH_HTTP`).
    fn from_env() -> Option<Self> {
        let http = std::env::var("BENCH_HTTP").ok().filter(|s| !s.is_empty())?;
        let addr = http
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .expect("BENCH_HTTP must be host:port of edgebus's HTTP listener");
        let streams: usize = env_or("BENCH_STREAMS", 10_000usize).max(1);
        let threads: usize = env_or("BENCH_THREADS", 2usize).clamp(1, streams);
        let pid: u32 = env_or("BENCH_EDGEBUS_PID", 0u32);
        let protocol: Protocol = env_or("BENCH_KIND", Protocol::Sse);
        Some(Self {
            protocol,
            label: env_or("BENCH_LABEL", protocol.as_str().to_owned()),
            http,
            addr,
            streams,
            events: env_or("BENCH_EVENTS", 50usize).max(1),
            threads,
            wave: env_or("BENCH_WAVE", 500usize).max(threads),
            gap: Duration::from_millis(env_or("BENCH_GAP_MS", 200u64)),
            event_timeout: Duration::from_secs_f64(env_or("BENCH_EVENT_TIMEOUT_S", 10.0f64)),
            connect_timeout: Duration::from_secs_f64(env_or("BENCH_CONNECT_TIMEOUT_S", 300.0f64)),
            settle: Duration::from_secs_f64(env_or("BENCH_SETTLE_S", 2.0f64)),
            edgebus_pid: (pid != 0).then_some(pid),
        })
    }
}

// ---------------------------------------------------------------------------
// Response parsing: HTTP/1.1 head, chunked transfer coding, SSE lines.

/// What a dispatched SSE event or WebSocket text message is, as far as this
/// bench cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No `event:` field (the SSE default, `message`), or `message`.
    Message,
    Snapshot,
    /// SSE `event: notification`; WebSocket `{"type":"event",…}`.
    Notification,
    Lagged,
    Other,
}

impl Kind {
    fn of(name: &[u8]) -> Self {
        match name {
            b"message" => Kind::Message,
            b"snapshot" => Kind::Snapshot,
            b"notification" => Kind::Notification,
            b"lagged" => Kind::Lagged,
            _ => Kind::Other,
        }
    }
}

/// Where the reader is in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Head,
    /// A chunk-size line: the size so far, hex digits seen, in an extension.
    ChunkSize {
        size: u64,
        digits: u8,
        ext: bool,
    },
    ChunkData {
        left: u64,
    },
    /// The CRLF after a chunk's data (`cr`: the CR was seen).
    ChunkEnd {
        cr: bool,
    },
    /// Trailer fields after the last chunk, up to an empty line.
    Trailer {
        empty_line: bool,
    },
    /// No transfer coding: the body runs until EOF.
    Raw,
    /// The last chunk and its trailer were read: the server ended the body.
    Done,
}

/// One response: its head, its chunked body and the SSE events in it,
/// delivered to a callback as `(kind, data)` (`None` when the data was too
/// long to keep). Follows the WHATWG event-stream rules: lines end in CRLF,
/// LF or CR; `:` starts a comment; one space after the colon is dropped;
/// several `data:` lines join with LF; an event without data is not
/// dispatched.
struct SseReader {
    framing: Framing,
    head: Vec<u8>,
    line: Vec<u8>,
    line_long: bool,
    after_cr: bool,
    kind: Kind,
    data: Vec<u8>,
    data_long: bool,
    has_data: bool,
}

impl SseReader {
    fn new() -> Self {
        Self {
            framing: Framing::Head,
            head: Vec::new(),
            line: Vec::new(),
            line_long: false,
            after_cr: false,
            kind: Kind::Message,
            data: Vec::new(),
            data_long: false,
            has_data: false,
        }
    }

    fn done(&self) -> bool {
        self.framing == Framing::Done
    }

    fn feed(
        &mut self,
        bytes: &[u8],
        on_event: &mut impl FnMut(Kind, Option<&[u8]>),
    ) -> Result<(), String> {
        if self.framing == Framing::Head {
            let Some((head, end)) = take_head(&mut self.head, bytes)? else {
                return Ok(());
            };
            self.framing = parse_head(&head[..end])?;
            let body = &head[end..];
            return self.body(body, on_event);
        }
        self.body(bytes, on_event)
    }

    fn body(
        &mut self,
        bytes: &[u8],
        on_event: &mut impl FnMut(Kind, Option<&[u8]>),
    ) -> Result<(), String> {
        let mut i = 0;
        while i < bytes.len() {
            match self.framing {
                Framing::Head => return Err("body before head".into()),
                Framing::Raw => {
                    self.sse(&bytes[i..], on_event);
                    i = bytes.len();
                }
                Framing::ChunkData { left } => {
                    let n = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.sse(&bytes[i..i + n], on_event);
                    i += n;
                    let left = left - n as u64;
                    self.framing = if left == 0 {
                        Framing::ChunkEnd { cr: false }
                    } else {
                        Framing::ChunkData { left }
                    };
                }
                Framing::ChunkSize { size, digits, ext } => {
                    let b = bytes[i];
                    i += 1;
                    self.framing = match b {
                        b'\n' if digits == 0 => return Err("chunk size line without digits".into()),
                        b'\n' if size == 0 => Framing::Trailer { empty_line: true },
                        b'\n' => Framing::ChunkData { left: size },
                        b'\r' => Framing::ChunkSize { size, digits, ext },
                        _ if ext => Framing::ChunkSize { size, digits, ext },
                        b';' => Framing::ChunkSize {
                            size,
                            digits,
                            ext: true,
                        },
                        b' ' | b'\t' => Framing::ChunkSize { size, digits, ext },
                        _ => {
                            let digit = (b as char)
                                .to_digit(16)
                                .ok_or_else(|| format!("bad chunk size byte {b:#04x}"))?;
                            if digits >= 15 {
                                return Err("chunk size too large".into());
                            }
                            Framing::ChunkSize {
                                size: size * 16 + u64::from(digit),
                                digits: digits + 1,
                                ext,
                            }
                        }
                    };
                }
                Framing::ChunkEnd { cr } => {
                    let b = bytes[i];
                    i += 1;
                    self.framing = match b {
                        b'\r' if !cr => Framing::ChunkEnd { cr: true },
                        b'\n' => Framing::ChunkSize {
                            size: 0,
                            digits: 0,
                            ext: false,
                        },
                        _ => return Err(format!("chunk data not followed by CRLF ({b:#04x})")),
                    };
                }
                Framing::Trailer { empty_line } => {
                    let b = bytes[i];
                    i += 1;
                    self.framing = match b {
                        b'\n' if empty_line => Framing::Done,
                        b'\n' => Framing::Trailer { empty_line: true },
                        b'\r' => Framing::Trailer { empty_line },
                        _ => Framing::Trailer { empty_line: false },
                    };
                }
                Framing::Done => return Err("bytes after the last chunk".into()),
            }
        }
        Ok(())
    }

    /// Decoded body bytes → SSE lines.
    fn sse(&mut self, bytes: &[u8], on_event: &mut impl FnMut(Kind, Option<&[u8]>)) {
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue; // the LF of a CRLF
            }
            match b {
                b'\r' => {
                    self.after_cr = true;
                    self.line_end(on_event);
                }
                b'\n' => self.line_end(on_event),
                _ if self.line.len() < MAX_LINE => self.line.push(b),
                _ => self.line_long = true,
            }
        }
    }

    fn line_end(&mut self, on_event: &mut impl FnMut(Kind, Option<&[u8]>)) {
        if self.line.is_empty() && !self.line_long {
            if self.has_data {
                on_event(self.kind, (!self.data_long).then_some(&self.data[..]));
            }
            self.kind = Kind::Message;
            self.data.clear();
            self.data_long = false;
            self.has_data = false;
            if self.data.capacity() > KEEP_CAPACITY {
                self.data = Vec::new();
            }
        } else if self.line.first() != Some(&b':') {
            let (field, value) = match self.line.iter().position(|&b| b == b':') {
                Some(at) => (&self.line[..at], &self.line[at + 1..]),
                None => (&self.line[..], &[][..]),
            };
            let value = value.strip_prefix(b" ").unwrap_or(value);
            match field {
                b"event" if self.line_long => self.kind = Kind::Other,
                b"event" => self.kind = Kind::of(value),
                b"data" => {
                    if self.has_data && !self.data_long {
                        self.data.push(b'\n');
                    }
                    self.has_data = true;
                    if self.line_long || self.data.len() + value.len() > MAX_LINE {
                        self.data_long = true;
                        self.data.clear();
                    } else if !self.data_long {
                        self.data.extend_from_slice(value);
                    }
                }
                _ => {} // id, retry, unknown fields
            }
        }
        self.line.clear();
        self.line_long = false;
        if self.line.capacity() > KEEP_CAPACITY {
            self.line = Vec::new();
        }
    }
}

/// Checks a response head of an event stream; the body framing it announces.
fn parse_head(head: &[u8]) -> Result<Framing, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/1.") || code != "200" {
        return Err(format!("status line {status:?}"));
    }
    let (mut chunked, mut event_stream) = (false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "content-type" => event_stream = value.starts_with("text/event-stream"),
            "content-length" => return Err("an event stream with a Content-Length".into()),
            _ => {}
        }
    }
    if !event_stream {
        return Err("Content-Type is not text/event-stream".into());
    }
    Ok(if chunked {
        Framing::ChunkSize {
            size: 0,
            digits: 0,
            ext: false,
        }
    } else {
        Framing::Raw
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Leading decimal digits: the value and how many bytes they took.
fn parse_u64(text: &[u8]) -> Option<(u64, usize)> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let value = text[..digits]
        .iter()
        .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
    Some((value, digits))
}

/// `(seq, sent_ns)` from an envelope whose message is `<marker> <seq> <sent_ns>`.
fn parse_marked(data: &[u8], marker: &[u8]) -> Option<(u64, u64)> {
    let at = find(data, marker)? + marker.len();
    let (seq, len) = parse_u64(&data[at..])?;
    let rest = data[at + len..].strip_prefix(b" ")?;
    let (sent, len) = parse_u64(rest)?;
    (rest.get(len) == Some(&b'"')).then_some((seq, sent))
}

// ---------------------------------------------------------------------------
// WebSocket: the upgrade answer and server frames.

/// RFC 6455's sample key; any key will do, and with this one the answer's
/// `Sec-WebSocket-Accept` is known without hashing.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Where the reader is in the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WsFraming {
    Head,
    /// A frame header: 2 bytes, then 0, 2 or 8 bytes of extended length
    /// (server frames carry no masking key).
    FrameHead,
    Payload {
        left: u64,
    },
    /// The server sent a close frame.
    Closed,
}

/// One WebSocket connection from the server's side: the `101` answer, then
/// frames. Text messages (fragmented or not) go to a callback as `(kind,
/// message)` (`None` when the message was too long to keep; its kind still
/// comes from its first bytes); a ping leaves a pong to send.
struct WsReader {
    framing: WsFraming,
    head: Vec<u8>,
    header: [u8; 10],
    header_len: u8,
    /// The frame being read: its opcode and FIN bit.
    opcode: u8,
    fin: bool,
    /// A message is open (its first frame came without FIN).
    in_message: bool,
    /// The open message is binary (counted, never read).
    binary: bool,
    /// The message's first `MAX_LINE` bytes.
    message: Vec<u8>,
    message_long: bool,
    /// A control frame's payload (at most 125 bytes).
    control: Vec<u8>,
    /// The payload of the last ping not answered yet.
    pong: Option<Vec<u8>>,
    /// The close frame's code and reason.
    close: Option<String>,
}

impl WsReader {
    fn new() -> Self {
        Self {
            framing: WsFraming::Head,
            head: Vec::new(),
            header: [0; 10],
            header_len: 0,
            opcode: 0,
            fin: false,
            in_message: false,
            binary: false,
            message: Vec::new(),
            message_long: false,
            control: Vec::new(),
            pong: None,
            close: None,
        }
    }

    fn done(&self) -> bool {
        self.framing == WsFraming::Closed
    }

    fn feed(
        &mut self,
        bytes: &[u8],
        on_event: &mut impl FnMut(Kind, Option<&[u8]>),
    ) -> Result<(), String> {
        if self.framing == WsFraming::Head {
            let Some((head, end)) = take_head(&mut self.head, bytes)? else {
                return Ok(());
            };
            parse_upgrade(&head[..end])?;
            self.framing = WsFraming::FrameHead;
            return self.frames(&head[end..], on_event);
        }
        self.frames(bytes, on_event)
    }

    fn frames(
        &mut self,
        bytes: &[u8],
        on_event: &mut impl FnMut(Kind, Option<&[u8]>),
    ) -> Result<(), String> {
        let mut i = 0;
        while i < bytes.len() {
            match self.framing {
                WsFraming::Head => return Err("frames before the head".into()),
                WsFraming::Closed => return Err("bytes after the close frame".into()),
                WsFraming::FrameHead => {
                    self.header[usize::from(self.header_len)] = bytes[i];
                    self.header_len += 1;
                    i += 1;
                    if let Some(left) = self.header_done()? {
                        self.header_len = 0;
                        self.control.clear();
                        self.framing = WsFraming::Payload { left };
                        if left == 0 {
                            self.frame_end(on_event)?;
                        }
                    }
                }
                WsFraming::Payload { left } => {
                    let n = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.payload(&bytes[i..i + n]);
                    i += n;
                    let left = left - n as u64;
                    self.framing = WsFraming::Payload { left };
                    if left == 0 {
                        self.frame_end(on_event)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The payload length once the header is complete; checks it.
    fn header_done(&mut self) -> Result<Option<u64>, String> {
        let h = &self.header[..usize::from(self.header_len)];
        if h.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (h[0], h[1]);
        if b1 & 0x80 != 0 {
            return Err("a masked frame from the server".into());
        }
        if b0 & 0x70 != 0 {
            return Err(format!("reserved bits set ({b0:#04x})"));
        }
        let need = match b1 & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        if h.len() < need {
            return Ok(None);
        }
        let len = match need {
            4 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            10 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            _ => u64::from(b1 & 0x7f),
        };
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        match opcode {
            0x8..=0xa if !fin || len > 125 => {
                return Err(format!(
                    "control frame {opcode:#x} fragmented or over 125 bytes"
                ))
            }
            0x8..=0xa => {}
            0x0 if !self.in_message => return Err("continuation without a message".into()),
            0x1 | 0x2 if self.in_message => {
                return Err("a new message inside a fragmented one".into())
            }
            0x0..=0x2 => self.in_message = true,
            _ => return Err(format!("unknown opcode {opcode:#x}")),
        }
        if opcode == 0x1 || opcode == 0x2 {
            self.binary = opcode == 0x2;
        }
        self.opcode = opcode;
        self.fin = fin;
        Ok(Some(len))
    }

    fn payload(&mut self, bytes: &[u8]) {
        if self.opcode >= 0x8 {
            self.control.extend_from_slice(bytes);
            return;
        }
        let room = MAX_LINE - self.message.len();
        if bytes.len() > room {
            self.message_long = true;
        }
        self.message
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn frame_end(&mut self, on_event: &mut impl FnMut(Kind, Option<&[u8]>)) -> Result<(), String> {
        self.framing = WsFraming::FrameHead;
        match self.opcode {
            0x8 => {
                let code = match self.control.get(..2) {
                    Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]).to_string(),
                    _ => "none".into(),
                };
                let reason = String::from_utf8_lossy(self.control.get(2..).unwrap_or_default());
                self.close = Some(format!("close frame {code} {reason:?}"));
                self.framing = WsFraming::Closed;
            }
            0x9 => self.pong = Some(std::mem::take(&mut self.control)),
            0xa => {}
            _ if !self.fin => {}
            _ => {
                if self.binary {
                    on_event(Kind::Other, None);
                } else {
                    on_event(
                        ws_kind(&self.message),
                        (!self.message_long).then_some(&self.message[..]),
                    );
                }
                self.in_message = false;
                self.message.clear();
                self.message_long = false;
                if self.message.capacity() > KEEP_CAPACITY {
                    self.message = Vec::new();
                }
            }
        }
        Ok(())
    }
}

/// A text message's kind from its first bytes: edgebus renders `type` first.
fn ws_kind(message: &[u8]) -> Kind {
    let Some(rest) = message.strip_prefix(b"{\"type\":\"") else {
        return Kind::Other;
    };
    match rest {
        _ if rest.starts_with(b"event\"") => Kind::Notification,
        _ if rest.starts_with(b"snapshot\"") => Kind::Snapshot,
        _ if rest.starts_with(b"lagged\"") => Kind::Lagged,
        _ => Kind::Other,
    }
}

/// Checks the answer to the upgrade request.
fn parse_upgrade(head: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/1.") || code != "101" {
        return Err(format!("status line {status:?}"));
    }
    let accepted = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == WS_ACCEPT
        })
    });
    if !accepted {
        return Err(format!("no Sec-WebSocket-Accept: {WS_ACCEPT}"));
    }
    Ok(())
}

/// A pong with `payload`, masked as every client frame must be.
fn ws_pong(payload: &[u8]) -> Vec<u8> {
    // Masking is for proxies, not secrecy: a fixed key is enough here.
    const MASK: [u8; 4] = [0x5a, 0xc3, 0x3c, 0xa5];
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x8a);
    frame.push(0x80 | payload.len().min(125) as u8);
    frame.extend_from_slice(&MASK);
    frame.extend(
        payload
            .iter()
            .take(125)
            .zip(MASK.iter().cycle())
            .map(|(b, m)| b ^ m),
    );
    frame
}

/// A stream's reader, by protocol.
enum Reader {
    Sse(SseReader),
    Ws(WsReader),
}

impl Reader {
    fn feed(
        &mut self,
        bytes: &[u8],
        on_event: &mut impl FnMut(Kind, Option<&[u8]>),
    ) -> Result<(), String> {
        match self {
            Reader::Sse(reader) => reader.feed(bytes, on_event),
            Reader::Ws(reader) => reader.feed(bytes, on_event),
        }
    }

    fn done(&self) -> bool {
        match self {
            Reader::Sse(reader) => reader.done(),
            Reader::Ws(reader) => reader.done(),
        }
    }

    /// A pong frame owed to the server, if any.
    fn take_pong(&mut self) -> Option<Vec<u8>> {
        match self {
            Reader::Sse(_) => None,
            Reader::Ws(reader) => reader.pong.take().map(|payload| ws_pong(&payload)),
        }
    }

    /// How the server ended the stream, when it said so.
    fn end(&self) -> String {
        match self {
            Reader::Ws(WsReader {
                close: Some(close), ..
            }) => format!("server ended the stream ({close})"),
            _ => "server ended the stream".into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Self-checks of the parsers.

/// The SSE parser against a canned response, fed whole and one byte at a time:
/// chunks that split lines and events, CRLF and CR line ends, a chunk
/// extension, comments, a multi-line data field, an event without data.
fn self_check() {
    let body: &[u8] =
        b": keepalive\n\nretry: 3000\n\nid: 1-1\nevent: snapshot\ndata: {\"events\":[]}\n\n\
        event: notification\r\ndata: a\r\ndata: b\r\n\r\nevent: lagged\rdata: {}\r\r\
        event: nothing\n\ndata: plain\n\n";
    let mut response = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
        transfer-encoding: chunked\r\n\r\n"
        .to_vec();
    for (n, piece) in body.chunks(7).enumerate() {
        let ext = if n == 2 { ";x=y" } else { "" };
        response.extend_from_slice(format!("{:X}{ext}\r\n", piece.len()).as_bytes());
        response.extend_from_slice(piece);
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"0\r\n\r\n");
    let expected: Vec<(Kind, Option<Vec<u8>>)> = vec![
        (Kind::Snapshot, Some(b"{\"events\":[]}".to_vec())),
        (Kind::Notification, Some(b"a\nb".to_vec())),
        (Kind::Lagged, Some(b"{}".to_vec())),
        (Kind::Message, Some(b"plain".to_vec())),
    ];
    for step in [response.len(), 1] {
        let mut reader = SseReader::new();
        let mut got = Vec::new();
        for piece in response.chunks(step) {
            reader
                .feed(piece, &mut |kind, data| {
                    got.push((kind, data.map(<[u8]>::to_vec)))
                })
                .expect("the canned response parses");
        }
        assert_eq!(got, expected, "SSE parser self-check (pieces of {step})");
        assert!(reader.done(), "the last chunk ends the body");
    }
    let marker = b"\"message\":\"m ";
    assert_eq!(
        parse_marked(
            br#"{"payload":{"message":"m 3 1234","source":"bench"}}"#,
            marker
        ),
        Some((3, 1234))
    );
    assert_eq!(parse_marked(br#"{"message":"m 3 12x"}"#, marker), None);
    ws_self_check();
}

/// A server frame: FIN, opcode, the shortest length form unless `long`.
fn ws_frame(fin: bool, opcode: u8, payload: &[u8], long: bool) -> Vec<u8> {
    let mut frame = vec![u8::from(fin) << 7 | opcode];
    match payload.len() {
        _ if long => {
            frame.push(127);
            frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        n if n < 126 => frame.push(n as u8),
        n => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// The WebSocket parser against a canned connection, fed whole and one byte
/// at a time: a snapshot in three fragments with a ping between them, events
/// with 7-, 16- and 64-bit lengths, a pong, a binary and an over-long
/// message, a close frame; and the pong it owes.
fn ws_self_check() {
    let big_event = format!(
        r#"{{"type":"event","payload":{{"message":"{}"}}}}"#,
        "x".repeat(300)
    );
    let huge = format!(
        r#"{{"type":"snapshot","events":["{}"]}}"#,
        "y".repeat(MAX_LINE)
    );
    let mut wire = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         sec-websocket-accept: {WS_ACCEPT}\r\n\r\n"
    )
    .into_bytes();
    wire.extend(ws_frame(false, 0x1, br#"{"type":"snap"#, false));
    wire.extend(ws_frame(true, 0x9, b"hb", false));
    wire.extend(ws_frame(false, 0x0, br#"shot","events":"#, false));
    wire.extend(ws_frame(true, 0x0, b"[]}", false));
    wire.extend(ws_frame(true, 0x1, br#"{"type":"event","id":1}"#, false));
    wire.extend(ws_frame(true, 0x1, big_event.as_bytes(), false));
    wire.extend(ws_frame(true, 0xa, b"", false));
    wire.extend(ws_frame(
        true,
        0x1,
        br#"{"type":"lagged","dropped":2}"#,
        true,
    ));
    wire.extend(ws_frame(true, 0x2, br#"{"type":"event"}"#, false));
    wire.extend(ws_frame(true, 0x1, huge.as_bytes(), false));
    wire.extend(ws_frame(true, 0x8, b"\x03\xe9bye", false));
    let expected: Vec<(Kind, Option<Vec<u8>>)> = vec![
        (
            Kind::Snapshot,
            Some(br#"{"type":"snapshot","events":[]}"#.to_vec()),
        ),
        (
            Kind::Notification,
            Some(br#"{"type":"event","id":1}"#.to_vec()),
        ),
        (Kind::Notification, Some(big_event.clone().into_bytes())),
        (
            Kind::Lagged,
            Some(br#"{"type":"lagged","dropped":2}"#.to_vec()),
        ),
        (Kind::Other, None),
        (Kind::Snapshot, None),
    ];
    for step in [wire.len(), 1] {
        let mut reader = Reader::Ws(WsReader::new());
        let mut got = Vec::new();
        let mut pongs = Vec::new();
        for piece in wire.chunks(step) {
            reader
                .feed(piece, &mut |kind, data| {
                    got.push((kind, data.map(<[u8]>::to_vec)))
                })
                .expect("the canned frames parse");
            pongs.extend(reader.take_pong());
        }
        assert_eq!(
            got, expected,
            "WebSocket parser self-check (pieces of {step})"
        );
        assert!(reader.done(), "the close frame ends the stream");
        assert_eq!(
            reader.end(),
            r#"server ended the stream (close frame 1001 "bye")"#
        );
        let pong = vec![0x8a, 0x82, 0x5a, 0xc3, 0x3c, 0xa5, b'h' ^ 0x5a, b'b' ^ 0xc3];
        assert_eq!(pongs, vec![pong], "one masked pong with the ping's payload");
    }
    let mut masked = WsReader::new();
    masked.framing = WsFraming::FrameHead;
    assert!(masked.feed(&[0x81, 0x80], &mut |_, _| {}).is_err());
    assert!(parse_upgrade(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
}

// ---------------------------------------------------------------------------
// The streams.

/// What the main thread and every stream share.
struct Shared {
    /// Common clock: all times are nanoseconds since this instant.
    start: Instant,
    addr: SocketAddr,
    protocol: Protocol,
    request: Vec<u8>,
    /// `"message":"<kind>-bench-<pid> ` (the rest is `<seq> <sent_ns>"`).
    marker: Vec<u8>,
    events: usize,
    ready: AtomicUsize,
    failed: AtomicUsize,
    closed_early: AtomicUsize,
    stop: AtomicBool,
    /// Per event: streams that received it, and when the last one did.
    got: Vec<AtomicUsize>,
    last_ns: Vec<AtomicU64>,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn note_error(&self, error: String) {
        if let Ok(mut errors) = self.errors.lock() {
            if errors.len() < KEEP_ERRORS && !errors.contains(&error) {
                errors.push(error);
            }
        }
    }
}

/// Per runtime thread (its streams are tasks on one thread: no locking).
#[derive(Default)]
struct ThreadStats {
    latencies_us: Vec<u32>,
    duplicates: u64,
    foreign: u64,
    lagged: u64,
    other: u64,
}

struct Local {
    /// Streams of this thread that got their snapshot or failed.
    settled: Cell<usize>,
    stats: RefCell<ThreadStats>,
}

thread_local! {
    static READ: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUF]);
}

/// One stream's own state (what stays allocated while it idles).
struct Stream {
    reader: Reader,
    tally: Tally,
}

/// What one stream received.
struct Tally {
    /// One bit per event number.
    seen: Box<[u64]>,
    ready: bool,
}

impl Tally {
    fn on_event(&mut self, kind: Kind, data: Option<&[u8]>, shared: &Shared, local: &Local) {
        match kind {
            Kind::Snapshot => {
                if !self.ready {
                    self.ready = true;
                    local.settled.set(local.settled.get() + 1);
                    shared.ready.fetch_add(1, Ordering::AcqRel);
                }
            }
            Kind::Notification => {
                let now = shared.now_ns();
                let mut stats = local.stats.borrow_mut();
                let marked = data
                    .and_then(|d| parse_marked(d, &shared.marker))
                    .filter(|(seq, _)| *seq < shared.events as u64);
                let Some((seq, sent_ns)) = marked else {
                    stats.foreign += 1;
                    return;
                };
                let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
                if self.seen[word] & bit != 0 {
                    stats.duplicates += 1;
                    return;
                }
                self.seen[word] |= bit;
                shared.got[seq as usize].fetch_add(1, Ordering::AcqRel);
                shared.last_ns[seq as usize].fetch_max(now, Ordering::AcqRel);
                let us = now.saturating_sub(sent_ns) / 1_000;
                stats.latencies_us.push(us.min(u64::from(u32::MAX)) as u32);
            }
            Kind::Lagged => local.stats.borrow_mut().lagged += 1,
            Kind::Message | Kind::Other => local.stats.borrow_mut().other += 1,
        }
    }
}

async fn connect(shared: &Shared) -> Result<tokio::net::TcpStream, String> {
    let socket = tokio::net::TcpStream::connect(shared.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    write_all(&socket, &shared.request).await?;
    Ok(socket)
}

async fn write_all(socket: &tokio::net::TcpStream, bytes: &[u8]) -> Result<(), String> {
    let mut written = 0;
    while written < bytes.len() {
        socket
            .writable()
            .await
            .map_err(|e| format!("writable: {e}"))?;
        match socket.try_write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    Ok(())
}

enum Step {
    More,
    Eof,
    Failed(String),
}

/// One stream, until the server or the network ends it (or its task is
/// dropped when the run is over).
async fn run_stream(shared: Arc<Shared>, local: Rc<Local>) {
    let socket = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&shared)).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => return stream_failed(&shared, &local, error),
        Err(_) => return stream_failed(&shared, &local, "connect timed out".into()),
    };
    let mut stream = Stream {
        reader: shared.protocol.reader(),
        tally: Tally {
            seen: vec![0u64; shared.events.div_ceil(64)].into_boxed_slice(),
            ready: false,
        },
    };
    let end = loop {
        if let Err(e) = socket.readable().await {
            break Step::Failed(format!("readable: {e}"));
        }
        let step = READ.with(|buf| {
            let mut buf = buf.borrow_mut();
            match socket.try_read(&mut buf[..]) {
                Ok(0) => Step::Eof,
                Ok(n) => {
                    let Stream { reader, tally } = &mut stream;
                    let fed = reader.feed(&buf[..n], &mut |kind, data| {
                        tally.on_event(kind, data, &shared, &local)
                    });
                    match fed {
                        Ok(()) if reader.done() => Step::Eof,
                        Ok(()) => Step::More,
                        Err(error) => Step::Failed(error),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Step::More,
                Err(e) => Step::Failed(format!("read: {e}")),
            }
        });
        match step {
            Step::More => {}
            end => break end,
        }
        if let Some(pong) = stream.reader.take_pong() {
            if let Err(error) = write_all(&socket, &pong).await {
                break Step::Failed(format!("pong: {error}"));
            }
        }
    };
    let reason = match end {
        Step::Failed(error) => error,
        _ => stream.reader.end(),
    };
    if !stream.tally.ready {
        stream_failed(&shared, &local, reason);
    } else if !shared.stop.load(Ordering::Acquire) {
        shared.closed_early.fetch_add(1, Ordering::AcqRel);
        shared.note_error(format!("after the snapshot: {reason}"));
    }
}

fn stream_failed(shared: &Shared, local: &Local, error: String) {
    local.settled.set(local.settled.get() + 1);
    shared.failed.fetch_add(1, Ordering::AcqRel);
    shared.note_error(error);
}

/// `streams` streams on one current-thread runtime, opened in waves of
/// `wave`; runs until `shared.stop`, then drops them all.
fn stream_thread(shared: Arc<Shared>, streams: usize, wave: usize) -> ThreadStats {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the streams");
    let local = Rc::new(Local {
        settled: Cell::new(0),
        stats: RefCell::new(ThreadStats::default()),
    });
    let tasks = tokio::task::LocalSet::new();
    tasks.block_on(&runtime, async {
        let mut opened = 0;
        while opened < streams && !shared.stop.load(Ordering::Acquire) {
            let upto = (opened + wave).min(streams);
            for _ in opened..upto {
                tokio::task::spawn_local(run_stream(shared.clone(), local.clone()));
            }
            opened = upto;
            let deadline = Instant::now() + WAVE_TIMEOUT;
            while local.settled.get() < opened
                && Instant::now() < deadline
                && !shared.stop.load(Ordering::Acquire)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        while !shared.stop.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Dropping the tasks closes their sockets.
    drop(tasks);
    drop(runtime);
    local.stats.take()
}

// ---------------------------------------------------------------------------
// Blocking HTTP for the warm-up, publishing and /metrics.

/// One request on its own connection (`Connection: close`): status and body.
fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> Result<(u16, Vec<u8>), String> {
    let mut socket = StdTcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    socket
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let _ = socket.set_nodelay(true);
    let body = json.unwrap_or("");
    let content_type = if json.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket
        .write_all(request.as_bytes())
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let mut response = Vec::new();
    socket
        .read_to_end(&mut response)
        .map_err(|e| format!("{method} {path}: reading the answer: {e}"))?;
    let end = find(&response, b"\r\n\r\n").ok_or("answer without a complete head")? + 4;
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or("answer without a status code")?;
    let body = &response[end..];
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body).ok_or("bad chunked answer")?
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

/// A complete chunked body, decoded.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// `edgebus_sessions_open{kind="<sse|ws>"}` from /metrics.
fn open_sessions(addr: SocketAddr, protocol: Protocol) -> Result<u64, String> {
    let (status, body) = http_exchange(addr, "GET", "/metrics", None)?;
    if status != 200 {
        return Err(format!("GET /metrics answered {status}"));
    }
    let text = String::from_utf8_lossy(&body);
    let series = format!("edgebus_sessions_open{{kind=\"{}\"}} ", protocol.as_str());
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| format!("no {} in /metrics", series.trim_end()))
}

/// `POST /v1/notifications` with `message`: the answer's status.
fn notify(addr: SocketAddr, message: &str) -> Result<u16, String> {
    let json = format!(r#"{{"level":"info","message":"{message}","source":"{SOURCE}"}}"#);
    http_exchange(addr, "POST", "/v1/notifications", Some(&json)).map(|(status, _)| status)
}

/// One stream opened, one notification published and received (fed to the
/// parser a byte at a time), the stream closed; then waits until edgebus
/// counts no open SSE session.
fn warm_up(config: &Config, shared: &Shared, pid: u32) -> Result<(), String> {
    let deadline = Instant::now() + HTTP_TIMEOUT;
    let mut socket = StdTcpStream::connect_timeout(&config.addr, HTTP_TIMEOUT)
        .map_err(|e| format!("warm-up connect: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    socket
        .write_all(&shared.request)
        .map_err(|e| format!("warm-up request: {e}"))?;
    let message = format!("{}-bench-{pid} warm-up", config.protocol.as_str());
    let mut reader = config.protocol.reader();
    let (mut snapshot, mut published, mut received) = (false, false, false);
    let mut buf = [0u8; 4096];
    while !received {
        if Instant::now() >= deadline {
            return Err(format!(
                "warm-up: no {} within {HTTP_TIMEOUT:?}",
                if snapshot { "notification" } else { "snapshot" }
            ));
        }
        if snapshot && !published {
            match notify(config.addr, &message)? {
                201 => published = true,
                status => return Err(format!("warm-up: POST /v1/notifications answered {status}")),
            }
        }
        let n = match socket.read(&mut buf) {
            Ok(0) => return Err("warm-up: edgebus closed the stream".into()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(format!("warm-up read: {e}")),
        };
        for byte in buf[..n].chunks(1) {
            reader.feed(byte, &mut |kind, data| match kind {
                Kind::Snapshot => snapshot = true,
                Kind::Notification => {
                    received |= data.is_some_and(|d| find(d, message.as_bytes()).is_some())
                }
                _ => {}
            })?;
        }
        if reader.done() {
            return Err(format!("warm-up: {}", reader.end()));
        }
        if let Some(pong) = reader.take_pong() {
            socket
                .write_all(&pong)
                .map_err(|e| format!("warm-up pong: {e}"))?;
        }
    }
    drop(socket);
    let deadline = Instant::now() + HTTP_TIMEOUT;
    loop {
        match open_sessions(config.addr, config.protocol)? {
            0 => return Ok(()),
            n if Instant::now() >= deadline => {
                return Err(format!(
                    "warm-up: {n} {} sessions still open after closing",
                    config.protocol.name()
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

// ---------------------------------------------------------------------------
// Measurements and the report.

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …).
fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// CPU seconds (user + system) this process used so far.
fn own_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => (user + system) as f64 / 100.0,
        _ => f64::NAN,
    }
}

/// Nearest-rank percentile of sorted values, in the values' unit.
fn percentile<T: Copy + Into<f64>>(sorted: &[T], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].into()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn fail(message: &str) -> ! {
    eprintln!("sse_fanout: {message}");
    std::process::exit(1);
}

/// Adds `bytes` to a response head being read; once it is complete, takes
/// the buffer (head and whatever body followed) and the head's length.
fn take_head(head: &mut Vec<u8>, bytes: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let searched_from = head.len().saturating_sub(3);
    head.extend_from_slice(bytes);
    let Some(end) = find(&head[searched_from..], b"\r\n\r\n") else {
        if head.len() > MAX_HEAD {
            return Err(format!("response head over {MAX_HEAD} bytes"));
        }
        return Ok(None);
    };
    Ok(Some((std::mem::take(head), searched_from + end + 4)))
}

fn main() {
    let Some(config) = Config::from_env() else {
        println!("sse_fanout: BENCH_HTTP is not set; nothing to do. Run scripts/bench.sh (MODE=e2e SCENARIOS=sse).");
        return;
    };
    self_check();
    let pid = std::process::id();
    let tag = format!("{}-bench-{pid}", config.protocol.as_str());
    let shared = Arc::new(Shared {
        start: Instant::now(),
        addr: config.addr,
        protocol: config.protocol,
        request: config.protocol.request(&config.http).into_bytes(),
        marker: format!("\"message\":\"{tag} ").into_bytes(),
        events: config.events,
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        closed_early: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        got: (0..config.events).map(|_| AtomicUsize::new(0)).collect(),
        last_ns: (0..config.events).map(|_| AtomicU64::new(0)).collect(),
        errors: Mutex::new(Vec::new()),
    });
    let edgebus = config.edgebus_pid.map(|p| p.to_string());
    let edgebus_rss = || edgebus.as_deref().and_then(|p| status_kib(p, "VmRSS"));

    if let Err(error) = warm_up(&config, &shared, pid) {
        fail(&error);
    }
    let rss_base = edgebus_rss();
    let own_base = status_kib("self", "VmRSS");
    eprintln!(
        "sse_fanout[{}]: warmed up; edgebus RSS {} with 0 streams; opening {} streams on {} thread(s), waves of {}",
        config.label,
        mib(rss_base),
        config.streams,
        config.threads,
        config.wave
    );

    // Open the streams.
    let opening = Instant::now();
    let mut threads = Vec::with_capacity(config.threads);
    for t in 0..config.threads {
        let n = config.streams / config.threads + usize::from(t < config.streams % config.threads);
        let wave = (config.wave / config.threads).max(1);
        let shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("{}-streams-{t}", config.protocol.as_str()))
            .spawn(move || stream_thread(shared, n, wave))
            .expect("spawning a stream thread");
        threads.push(handle);
    }
    let connect_by = opening + config.connect_timeout;
    let mut progress = Instant::now();
    loop {
        let (ready, failed) = (
            shared.ready.load(Ordering::Acquire),
            shared.failed.load(Ordering::Acquire),
        );
        if ready + failed >= config.streams || Instant::now() >= connect_by {
            break;
        }
        if progress.elapsed() >= Duration::from_secs(5) {
            progress = Instant::now();
            eprintln!(
                "sse_fanout[{}]: {ready} open, {failed} failed after {:.0} s",
                config.label,
                opening.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let open_s = opening.elapsed().as_secs_f64();
    std::thread::sleep(config.settle);
    let ready = shared.ready.load(Ordering::Acquire);
    let rss_idle = edgebus_rss();
    let own_idle = status_kib("self", "VmRSS");
    let sessions = open_sessions(config.addr, config.protocol);
    eprintln!(
        "sse_fanout[{}]: {ready}/{} streams open in {open_s:.1} s; edgebus RSS {}; publishing {} events",
        config.label,
        config.streams,
        mib(rss_idle),
        config.events
    );

    // Publish, one event at a time.
    let cpu_before = own_cpu_s();
    let mut sent_ns = vec![0u64; config.events];
    let mut post_ms = Vec::with_capacity(config.events);
    let mut publish_failures = 0usize;
    for (seq, sent) in sent_ns.iter_mut().enumerate() {
        if ready == 0 {
            break;
        }
        std::thread::sleep(config.gap);
        *sent = shared.now_ns();
        let message = format!("{tag} {seq} {sent}");
        match notify(config.addr, &message) {
            Ok(201) => post_ms.push((shared.now_ns() - *sent) as f64 / 1e6),
            Ok(status) => {
                publish_failures += 1;
                shared.note_error(format!("POST /v1/notifications answered {status}"));
                continue;
            }
            Err(error) => {
                publish_failures += 1;
                shared.note_error(error);
                continue;
            }
        }
        let deadline = Instant::now() + config.event_timeout;
        while shared.got[seq].load(Ordering::Acquire) < ready && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    // Late deliveries of the last event still count.
    let last = config.events - 1;
    let drain_by = Instant::now() + Duration::from_secs(1);
    while shared.got[last].load(Ordering::Acquire) < ready && Instant::now() < drain_by {
        std::thread::sleep(Duration::from_millis(5));
    }
    let client_cpu = own_cpu_s() - cpu_before;
    let rss_after = edgebus_rss();
    let rss_peak = edgebus.as_deref().and_then(|p| status_kib(p, "VmHWM"));

    shared.stop.store(true, Ordering::Release);
    let mut stats = ThreadStats::default();
    for handle in threads {
        match handle.join() {
            Ok(s) => {
                stats.latencies_us.extend_from_slice(&s.latencies_us);
                stats.duplicates += s.duplicates;
                stats.foreign += s.foreign;
                stats.lagged += s.lagged;
                stats.other += s.other;
            }
            Err(_) => eprintln!("sse_fanout: a stream thread panicked"),
        }
    }

    // Fan-out completion of each event every open stream received.
    let mut completion_ms = Vec::new();
    let mut incomplete = 0usize;
    let mut delivered = 0u64;
    for (seq, sent) in sent_ns.iter().enumerate() {
        let got = shared.got[seq].load(Ordering::Acquire);
        delivered += got.min(ready) as u64;
        if *sent == 0 {
            continue; // not published
        }
        if got >= ready {
            let last = shared.last_ns[seq].load(Ordering::Acquire);
            completion_ms.push(last.saturating_sub(*sent) as f64 / 1e6);
        } else {
            incomplete += 1;
        }
    }
    completion_ms.sort_by(f64::total_cmp);
    post_ms.sort_by(f64::total_cmp);
    stats.latencies_us.sort_unstable();
    let published = config.events - publish_failures;
    let expected = (published * ready) as u64;
    let loss_pct = if expected > 0 {
        100.0 * expected.saturating_sub(delivered) as f64 / expected as f64
    } else {
        f64::NAN
    };
    let per_stream_kib = match (rss_base, rss_idle) {
        (Some(base), Some(idle)) if ready > 0 => Some((idle as f64 - base as f64) / ready as f64),
        _ => None,
    };
    let lat = |p: f64| percentile(&stats.latencies_us, p) / 1_000.0;
    let (f50, f99, fmax) = (
        percentile(&completion_ms, 50.0),
        percentile(&completion_ms, 99.0),
        completion_ms.last().copied().unwrap_or(f64::NAN),
    );
    let failed = shared.failed.load(Ordering::Acquire);
    let closed_early = shared.closed_early.load(Ordering::Acquire);

    println!("== {} fan-out {} ==", config.protocol.name(), config.label);
    println!(
        "streams:            {} requested, {ready} open (snapshot received), {failed} failed, {closed_early} closed early; opened in {open_s:.1} s on {} thread(s), waves of {}",
        config.streams, config.threads, config.wave
    );
    match &sessions {
        Ok(n) => println!(
            "edgebus sessions:   edgebus_sessions_open{{kind=\"{}\"}} = {n} once all were open",
            config.protocol.as_str()
        ),
        Err(error) => println!("edgebus sessions:   unknown ({error})"),
    }
    if let Some(pid) = config.edgebus_pid {
        println!(
            "edgebus RSS:        {} with 0 streams (after warm-up), {} with {ready} idle streams, {} after the events (peak {}; pid {pid})",
            mib(rss_base),
            mib(rss_idle),
            mib(rss_after),
            mib(rss_peak)
        );
    } else {
        println!("edgebus RSS:        n/a (BENCH_EDGEBUS_PID not set)");
    }
    match per_stream_kib {
        Some(kib) => println!(
            "memory per idle stream: {kib:.2} KiB (edgebus ΔRSS / open streams; kernel socket buffers are not in RSS; target < 16 KiB: {})",
            if kib < 16.0 { "met" } else { "NOT met" }
        ),
        None => println!("memory per idle stream: n/a"),
    }
    println!(
        "events:             {published} of {} published (POST /v1/notifications → 201: p50 {:.2} ms, max {:.2} ms), each {} ms after the previous one reached every stream",
        config.events,
        percentile(&post_ms, 50.0),
        post_ms.last().copied().unwrap_or(f64::NAN),
        config.gap.as_millis()
    );
    println!(
        "fan-out completion: p50 {f50:.2} ms, p99 {f99:.2} ms, max {fmax:.2} ms (publish → the last of {ready} streams; {} events complete, {incomplete} incomplete; target p99 < 250 ms: {})",
        completion_ms.len(),
        if incomplete == 0 && f99 < 250.0 { "met" } else { "NOT met" }
    );
    println!(
        "per delivery:       p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        lat(50.0),
        lat(90.0),
        lat(99.0),
        lat(100.0),
        stats.latencies_us.len()
    );
    println!(
        "delivered:          {delivered} of {expected} (event x stream); loss {loss_pct:.3} % (duplicates {}, lagged notices {}, foreign notifications {}, other events {})",
        stats.duplicates, stats.lagged, stats.foreign, stats.other
    );
    println!(
        "load client:        RSS {} before the streams, {} with them; {client_cpu:.2} CPU s while publishing",
        mib(own_base),
        mib(own_idle)
    );
    if let Ok(errors) = shared.errors.lock() {
        for error in errors.iter() {
            println!("error:              {error}");
        }
    }
    println!(
        "RESULT label={} streams={ready} mem_per_stream_kib={} fanout_p50_ms={f50:.2} fanout_p99_ms={f99:.2} fanout_max_ms={fmax:.2} incomplete={incomplete} loss_pct={loss_pct:.3} delivered={delivered} expected={expected} delivery_p99_ms={:.2}",
        config.label,
        per_stream_kib.map_or("n/a".into(), |k| format!("{k:.2}")),
        lat(99.0)
    );
}
