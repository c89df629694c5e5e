//! The data that flows between actors.
//!
//! A [`Draft`] is an accepted event before the bus has numbered it; the bus
//! turns it into an [`Event`], whose wire forms are serialised once and shared
//! (`Arc`, `ByteString`) by every session that receives it. An event keeps
//! those bytes, a metrics frame or a few top-level fields ([`Payload`]), and
//! an estimate of its heap size the bus bounds its memory by; not the
//! parsed JSON tree, which costs up to ~20× the payload.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use bytestring::ByteString;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::frame::MetricsFrame;
pub mod decnet;
#[cfg(test)]
pub mod testing;
pub mod wire;

use crate::families::{classify, DeliveryClass};
use crate::inflight::{InflightBytes, InflightPermit};

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Event id. One instance: an epoch (this run's start, ms) plus a sequence
/// within it, so an id from a previous run is recognised as such and never
/// replayed as if it belonged to this one (Centrifugo's epoch + offset),
/// written `base36(epoch)-seq`. Cluster mode: the Redis stream entry id
/// (`ms-seq`, decimal, as Redis writes it), the same on every instance
/// ([`EventId::stream`]). Ids of one kind order as their events do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub epoch: u64,
    pub seq: u64,
}

/// Marks a stream entry id in `epoch`: a millisecond clock never reaches
/// it, and every stream id carries it, so stream ids keep their order.
const STREAM_ID: u64 = 1 << 63;

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_stream() {
            return write!(f, "{}-{}", self.epoch & !STREAM_ID, self.seq);
        }
        write_base36(f, self.epoch)?;
        write!(f, "-{}", self.seq)
    }
}

fn write_base36(f: &mut fmt::Formatter<'_>, mut n: u64) -> fmt::Result {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut buf = [0u8; 13];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    f.write_str(std::str::from_utf8(&buf[i..]).map_err(|_| fmt::Error)?)
}

impl EventId {
    /// A Redis stream entry id, `ms-seq`.
    pub fn stream(ms: u64, seq: u64) -> Self {
        Self {
            epoch: (ms & !STREAM_ID) | STREAM_ID,
            seq,
        }
    }

    pub fn is_stream(&self) -> bool {
        self.epoch & STREAM_ID != 0
    }

    /// The millisecond part of a stream id (`None` for a local one).
    pub fn stream_ms(&self) -> Option<u64> {
        self.is_stream().then_some(self.epoch & !STREAM_ID)
    }

    /// Parses a Redis stream entry id (`ms-seq`, both decimal), as Redis
    /// and [`fmt::Display`] write it; anything else is `None`.
    pub fn parse_stream(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        let digits = |part: &str, max: usize| {
            !part.is_empty() && part.len() <= max && part.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(ms, 19) || !digits(seq, 20) {
            return None;
        }
        let ms: u64 = ms.parse().ok()?;
        if ms & STREAM_ID != 0 {
            return None;
        }
        Some(Self::stream(ms, seq.parse().ok()?))
    }

    /// Parses `epoch-seq` as produced by `Display`; anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let (epoch, seq) = text.split_once('-')?;
        if epoch.is_empty() || epoch.len() > 13 || seq.is_empty() || seq.len() > 20 {
            return None;
        }
        let epoch = u64::from_str_radix(epoch, 36).ok()?;
        if !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Self {
            epoch,
            seq: seq.parse().ok()?,
        })
    }
}

/// Payload of an event.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Body {
    Metrics(MetricsFrame),
    Object(Map<String, Value>),
}

impl Body {
    pub fn as_metrics(&self) -> Option<&MetricsFrame> {
        match self {
            Body::Metrics(m) => Some(m),
            Body::Object(_) => None,
        }
    }
}

/// An accepted event, not yet numbered. Built by ingest (or HTTP publish) so
/// the payload's JSON, and the few fields an event keeps of it, are produced
/// off the bus's thread: a draft never holds the parsed tree either, so what
/// waits in the registry's and the bus's mailboxes costs about its wire size.
#[derive(Debug)]
pub struct Draft {
    pub topic: Arc<str>,
    pub ts_ms: u64,
    pub body: Payload,
    /// The payload serialised, once.
    payload_json: String,
    /// Event name when the topic alone cannot tell it (presence: one topic,
    /// `device.online` or `device.offline`); `None` = [`classify`]'s.
    name: Option<&'static str>,
    /// Its share of the in-flight budget, given back when the bus has
    /// numbered it (or when it is dropped on the way).
    permit: Option<InflightPermit>,
    /// Numbered already: in cluster mode, its Redis stream entry id.
    id: Option<EventId>,
}

impl Draft {
    pub fn new(topic: impl Into<Arc<str>>, ts_ms: u64, body: Body) -> Self {
        // Serialising a validated frame or a `Map` cannot fail (string keys,
        // finite numbers); fall back to an empty object rather than panic.
        let payload_json = serde_json::to_string(&body).unwrap_or_else(|_| "{}".to_owned());
        let body = match body {
            Body::Metrics(frame) => Payload::Metrics(frame),
            Body::Object(map) => Payload::Fields(Fields::from_map(&map)),
        };
        Self {
            topic: topic.into(),
            ts_ms,
            body,
            payload_json,
            name: None,
            permit: None,
            id: None,
        }
    }

    /// Names the event explicitly, overriding the topic's family name.
    pub fn with_event_name(mut self, name: &'static str) -> Self {
        self.name = Some(name);
        self
    }

    /// Gives the draft the id it already has (its stream entry id): the
    /// bus keeps it instead of numbering the event itself.
    pub fn numbered(mut self, id: EventId) -> Self {
        self.id = Some(id);
        self
    }

    pub fn id(&self) -> Option<EventId> {
        self.id
    }

    /// The name set with [`Draft::with_event_name`], if any.
    pub fn explicit_name(&self) -> Option<&'static str> {
        self.name
    }

    /// The payload as it goes on the wire.
    pub fn payload_json(&self) -> &str {
        &self.payload_json
    }

    /// What this draft keeps resident, from above: the JSON text, the kept
    /// fields and the topic, each rounded up to its allocation.
    pub fn cost(&self) -> usize {
        let fields = self.body.fields().map_or(0, Fields::heap_bytes);
        std::mem::size_of::<Self>()
            + block_bytes(self.payload_json.capacity())
            + block_bytes(16 + self.topic.len())
            + fields
    }

    /// Takes this draft's cost from `budget`; `None` (the draft dropped)
    /// when the budget cannot hold it, which the caller counts.
    pub fn reserve(mut self, budget: &Arc<InflightBytes>) -> Option<Self> {
        self.permit = Some(budget.try_reserve(self.cost())?);
        Some(self)
    }
}

/// What an event keeps of its payload once numbered: a metrics frame (a
/// small fixed struct the alerts read), or the top-level scalar fields that
/// predicates and the alerts look at. The parsed `Value` tree is dropped:
/// a 16 KB array of zeros parses into ~300 KiB of `Value`s, while the wire
/// forms below already carry every byte a client needs.
#[derive(Debug)]
pub enum Payload {
    Metrics(MetricsFrame),
    Fields(Fields),
}

impl Payload {
    pub fn as_metrics(&self) -> Option<&MetricsFrame> {
        match self {
            Payload::Metrics(m) => Some(m),
            Payload::Fields(_) => None,
        }
    }

    pub fn fields(&self) -> Option<&Fields> {
        match self {
            Payload::Fields(f) => Some(f),
            Payload::Metrics(_) => None,
        }
    }
}

/// Longest field key kept, and the characters allowed in it: the rule of a
/// subscription's `where` key, so no field that a predicate could name is
/// ever left out, and nothing else is kept.
pub const MAX_FIELD_KEY_BYTES: usize = 64;
/// Longest string value kept, in characters: a predicate's value is at most
/// this long, so a longer field could never match one.
pub const MAX_FIELD_VALUE_CHARS: usize = 256;

/// Whether `key` can name a kept field (and a predicate).
pub fn is_field_key(key: &str) -> bool {
    (1..=MAX_FIELD_KEY_BYTES).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// JSON type of a kept field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Str,
    Num,
    Bool,
}

/// Top-level scalar fields of an object payload, as text: one string of
/// keys and values back to back and one small entry per field, sorted by
/// key. Numbers are kept as serde_json writes them, so `score:42` matches
/// `42` and not `42.5`, as it did against the parsed tree.
///
/// A payload whose `payload` member is an object (a DECNET bus envelope,
/// `{"v","id","topic","type","ts","payload":{…}}`) also keeps the scalar
/// fields of that object that the top level does not have: DECNET stamps
/// `attacker_uuid` and `identity_uuid` inside, and predicates must see
/// them there. This is the rule the NATS source's `{field}` template
/// follows, so a field that can name a topic can also filter one.
#[derive(Debug, Default)]
pub struct Fields {
    text: Box<str>,
    /// (end of key, end of value, kind) in `text`.
    at: Box<[(u32, u32, FieldKind)]>,
}

/// The inner `payload` object of a DECNET bus envelope
/// (`{"v","id","topic","type","ts","payload":{…}}`): an object `payload`
/// beside a string `type`, what DECNET's `Event.to_dict` always writes. Any
/// other payload that merely has a `payload` member is not looked into, so
/// nested data cannot pose as an envelope's fields.
pub fn envelope_payload(map: &Map<String, Value>) -> Option<&Map<String, Value>> {
    match (map.get("type"), map.get("payload")) {
        (Some(Value::String(_)), Some(Value::Object(inner))) => Some(inner),
        _ => None,
    }
}

/// A payload member as a kept field's kind and text; `None` for what is
/// never kept (objects, arrays, null, empty or over-long strings).
fn scalar(value: &Value) -> Option<(FieldKind, Cow<'_, str>)> {
    match value {
        Value::String(s)
            if !s.is_empty()
                && s.len() <= 4 * MAX_FIELD_VALUE_CHARS
                && s.chars().count() <= MAX_FIELD_VALUE_CHARS =>
        {
            Some((FieldKind::Str, Cow::Borrowed(s.as_str())))
        }
        Value::Number(n) => Some((FieldKind::Num, Cow::Owned(n.to_string()))),
        Value::Bool(b) => Some((
            FieldKind::Bool,
            Cow::Borrowed(if *b { "true" } else { "false" }),
        )),
        _ => None,
    }
}

impl Fields {
    pub fn from_map(map: &Map<String, Value>) -> Self {
        let mut kept: Vec<(&str, FieldKind, Cow<'_, str>)> = Vec::new();
        let enveloped = envelope_payload(map)
            .into_iter()
            .flatten()
            .filter(|(key, _)| !map.contains_key(*key));
        for (key, value) in map.iter().chain(enveloped) {
            if !is_field_key(key) {
                continue;
            }
            if let Some((kind, text)) = scalar(value) {
                kept.push((key, kind, text));
            }
        }
        kept.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let size: usize = kept.iter().map(|(k, _, v)| k.len() + v.len()).sum();
        // Offsets are u32: a payload that large is refused long before.
        if u32::try_from(size).is_err() {
            return Self::default();
        }
        let mut text = String::with_capacity(size);
        let mut at = Vec::with_capacity(kept.len());
        for (key, kind, value) in &kept {
            text.push_str(key);
            let key_end = text.len() as u32;
            text.push_str(value);
            at.push((key_end, text.len() as u32, *kind));
        }
        Self {
            text: text.into_boxed_str(),
            at: at.into_boxed_slice(),
        }
    }

    fn entry(&self, i: usize) -> (&str, &str, FieldKind) {
        let start = if i == 0 { 0 } else { self.at[i - 1].1 as usize };
        let (key_end, end, kind) = self.at[i];
        (
            &self.text[start..key_end as usize],
            &self.text[key_end as usize..end as usize],
            kind,
        )
    }

    /// The field `key` as text, whatever its JSON type.
    pub fn get(&self, key: &str) -> Option<(FieldKind, &str)> {
        let (mut lo, mut hi) = (0, self.at.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid).0.cmp(key) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => {
                    let (_, value, kind) = self.entry(mid);
                    return Some((kind, value));
                }
            }
        }
        None
    }

    /// A string field.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key)
            .and_then(|(kind, v)| (kind == FieldKind::Str).then_some(v))
    }

    /// A number field.
    pub fn f64(&self, key: &str) -> Option<f64> {
        self.get(key)
            .and_then(|(kind, v)| (kind == FieldKind::Num).then(|| v.parse().ok())?)
    }

    /// A boolean field.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            (FieldKind::Bool, v) => Some(v == "true"),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Bytes on the heap, allocator overhead included.
    pub fn heap_bytes(&self) -> usize {
        let mut n = 0;
        if !self.text.is_empty() {
            n += block_bytes(self.text.len());
        }
        if !self.at.is_empty() {
            n += block_bytes(std::mem::size_of_val(&*self.at));
        }
        n
    }
}

/// What a heap block of `n` bytes really takes, from above: an 8-byte
/// header (glibc) and the size class it lands in. jemalloc (the binary's
/// allocator) and glibc both round to at most four classes per doubling,
/// so up to 25 % more: a 16,385-byte buffer takes 20 KiB.
pub fn block_bytes(n: usize) -> usize {
    let n = n.saturating_add(8);
    if n <= 16 {
        return 16;
    }
    // n in (2^k, 2^(k+1)]: classes every 2^(k-2).
    let below = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
    let step = (below / 4).max(16);
    n.div_ceil(step).saturating_mul(step)
}

/// The shared-buffer header `bytes` allocates when a buffer is first
/// sliced or cloned.
const BYTES_SHARED: usize = 32;

/// A numbered event, stored once in its wire forms.
#[derive(Debug)]
pub struct Event {
    pub id: EventId,
    pub topic: Arc<str>,
    /// One of the fixed names of [`classify`] (or an explicit one set by
    /// edgebus itself): never chosen by a publisher.
    pub name: &'static str,
    pub class: DeliveryClass,
    pub ts_ms: u64,
    pub body: Payload,
    /// `{"id","topic","event","ts","payload"}`: SSE `data:` and snapshots
    /// (a slice of `sse`, not a copy).
    pub envelope: ByteString,
    /// `{"type":"event",…envelope}`: the WebSocket text frame.
    pub ws_frame: ByteString,
    /// `id:`/`event:`/`data: envelope` for SSE, shared by every SSE session.
    sse: Bytes,
    /// `{device_id: frame}` for `?format=edgewatch`, built on first use.
    edgewatch: OnceLock<Option<ByteString>>,
    /// [`Event::heap_bytes`], computed once.
    cost: usize,
}

impl Event {
    pub fn from_draft(id: EventId, draft: Draft) -> Self {
        let Draft {
            topic,
            ts_ms,
            body,
            payload_json,
            name: explicit,
            permit,
            id: _,
        } = draft;
        // Numbered: the mailboxes no longer hold it; the bus's own bounds
        // take over.
        drop(permit);
        let (name, class) = classify(&topic);
        let name = explicit.unwrap_or(name);
        let id_text = id.to_string();
        // `"id":…,"payload":{…}}`, the part both wire forms share.
        let mut head = Vec::with_capacity(96 + topic.len() + name.len() + payload_json.len());
        head.extend_from_slice(b"\"id\":\"");
        head.extend_from_slice(id_text.as_bytes());
        head.extend_from_slice(b"\",\"topic\":");
        push_json_string(&mut head, &topic);
        head.extend_from_slice(b",\"event\":");
        push_json_string(&mut head, name);
        let _ = write!(head, ",\"ts\":{ts_ms},\"payload\":");
        head.extend_from_slice(payload_json.as_bytes());
        drop(payload_json);
        head.push(b'}');
        let ws_frame = joined(&[b"{\"type\":\"event\",", &head]);
        // The SSE frame holds the envelope: `data:` is one line, since JSON
        // text escapes every control character and the id and name are
        // ours. (`wire::write_sse_frame` writes the same bytes.)
        let prefix = format!("id: {id_text}\nevent: {name}\ndata: ");
        let sse = joined_bytes(&[prefix.as_bytes(), b"{", &head, b"\n\n"]);
        let envelope =
            ByteString::try_from(sse.slice(prefix.len()..sse.len() - 2)).unwrap_or_default();
        let mut event = Self {
            id,
            topic,
            name,
            class,
            ts_ms,
            body,
            envelope,
            ws_frame,
            sse,
            edgewatch: OnceLock::new(),
            cost: 0,
        };
        event.cost = event.estimate_heap_bytes();
        event
    }

    /// An honest upper estimate of what this event keeps resident: the
    /// `Arc` block, both wire buffers, the kept fields, the topic, and the
    /// edgewatch form a metrics event may build later.
    fn estimate_heap_bytes(&self) -> usize {
        let arc_block = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Self>();
        let mut n = block_bytes(arc_block);
        n += block_bytes(self.sse.len()) + block_bytes(BYTES_SHARED);
        n += block_bytes(self.ws_frame.len()) + block_bytes(BYTES_SHARED);
        // The topic `Arc<str>` may be this event's alone.
        n += block_bytes(2 * std::mem::size_of::<usize>() + self.topic.len());
        match &self.body {
            Payload::Fields(fields) => n += fields.heap_bytes(),
            Payload::Metrics(frame) => {
                // The device id string, and the edgewatch text (shorter than
                // the envelope, which holds the same frame and more).
                n += block_bytes(frame.device_id.as_str().len());
                n += block_bytes(self.envelope.len()) + block_bytes(BYTES_SHARED);
            }
        }
        n
    }

    /// Bytes this event keeps on the heap, estimated from above (see
    /// `estimate_heap_bytes`); the bus bounds its history and last values
    /// by the sum of these.
    pub fn heap_bytes(&self) -> usize {
        self.cost
    }

    /// The SSE frame of this event, shared by every SSE session.
    pub fn sse_frame(&self) -> &Bytes {
        &self.sse
    }

    /// The seed dashboard's `{device_id: frame}` text, for metrics events.
    pub fn edgewatch_frame(&self) -> Option<&ByteString> {
        self.edgewatch
            .get_or_init(|| {
                let frame = self.body.as_metrics()?;
                Some(wire::edgewatch_message(&[frame]).into())
            })
            .as_ref()
    }
}

/// `text` as a JSON string literal, appended.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    if serde_json::to_writer(&mut *out, text).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// `parts` back to back, in one buffer of exactly that size.
fn joined_bytes(parts: &[&[u8]]) -> Bytes {
    let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        bytes.extend_from_slice(part);
    }
    Bytes::from(bytes)
}

/// [`joined_bytes`] as text. Every part is UTF-8 built above, so the check
/// cannot fail.
fn joined(parts: &[&[u8]]) -> ByteString {
    ByteString::try_from(joined_bytes(parts)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics_draft() -> Draft {
        let frame = MetricsFrame::parse(
            "d1",
            br#"{"device_id":"d1","timestamp":5,"cpu_percent":1,"mem_percent":2,"disk_percent":3}"#,
            1024,
        )
        .unwrap();
        Draft::new(
            "devices/d1/metrics",
            1_763_800_000_123,
            Body::Metrics(frame),
        )
    }

    #[test]
    fn ids_round_trip_through_text() {
        let id = EventId {
            epoch: 1_763_800_000_000,
            seq: 1042,
        };
        let text = id.to_string();
        assert_eq!(EventId::parse(&text), Some(id));
        assert_eq!(
            EventId::parse(&EventId { epoch: 0, seq: 0 }.to_string()),
            Some(EventId { epoch: 0, seq: 0 })
        );
    }

    #[test]
    fn stream_ids_round_trip_as_redis_writes_them_and_keep_their_order() {
        let id = EventId::stream(1_764_423_000_000, 3);
        assert_eq!(id.to_string(), "1764423000000-3");
        assert_eq!(EventId::parse_stream("1764423000000-3"), Some(id));
        assert_eq!(id.stream_ms(), Some(1_764_423_000_000));
        assert!(EventId::stream(1, 9) < EventId::stream(2, 0));
        assert!(EventId::stream(2, 0) < EventId::stream(2, 1));
        for bad in [
            "",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "1-+2",
            "99999999999999999999-1",
        ] {
            assert_eq!(EventId::parse_stream(bad), None, "{bad}");
        }
        assert!(!EventId { epoch: 1, seq: 1 }.is_stream());
    }

    #[test]
    fn garbage_ids_do_not_parse() {
        for bad in [
            "",
            "abc",
            "-1",
            "k3f9-",
            "-5",
            "k3f9-x",
            "k3f9-+5",
            "k3f9-99999999999999999999999",
            "!!-1",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn envelope_and_ws_frame_follow_the_wire_format() {
        let id = EventId { epoch: 36, seq: 7 };
        let event = Event::from_draft(id, metrics_draft());
        let envelope: Value = serde_json::from_str(&event.envelope).unwrap();
        assert_eq!(envelope["id"], "10-7");
        assert_eq!(envelope["topic"], "devices/d1/metrics");
        assert_eq!(envelope["event"], "metrics");
        assert_eq!(envelope["ts"], 1_763_800_000_123u64);
        assert_eq!(envelope["payload"]["cpu_percent"], 1.0);
        let frame: Value = serde_json::from_str(&event.ws_frame).unwrap();
        assert_eq!(frame["type"], "event");
        assert_eq!(frame["id"], "10-7");
        assert_eq!(frame["payload"], envelope["payload"]);
    }

    #[test]
    fn edgewatch_form_is_keyed_by_device() {
        let event = Event::from_draft(EventId { epoch: 1, seq: 1 }, metrics_draft());
        let v: Value = serde_json::from_str(event.edgewatch_frame().unwrap()).unwrap();
        assert_eq!(v["d1"]["disk_percent"], 3.0);
        let other = Draft::new("notifications/x", 0, Body::Object(Map::new()));
        assert!(Event::from_draft(EventId { epoch: 1, seq: 2 }, other)
            .edgewatch_frame()
            .is_none());
    }

    #[test]
    fn an_explicit_event_name_overrides_the_topic_family() {
        let draft = Draft::new("devices/d1/presence", 0, Body::Object(Map::new()))
            .with_event_name("device.offline");
        let event = Event::from_draft(EventId { epoch: 1, seq: 1 }, draft);
        assert_eq!(event.name, "device.offline");
        let v: Value = serde_json::from_str(&event.envelope).unwrap();
        assert_eq!(v["event"], "device.offline");
        let plain = Draft::new("alerts/d1/cpu_high", 0, Body::Object(Map::new()));
        assert_eq!(
            Event::from_draft(EventId { epoch: 1, seq: 2 }, plain).name,
            "alert"
        );
    }

    #[test]
    fn topics_with_quotes_stay_valid_json() {
        let draft = Draft::new("odd/\"quoted\"", 0, Body::Object(Map::new()));
        let event = Event::from_draft(EventId { epoch: 1, seq: 1 }, draft);
        let v: Value = serde_json::from_str(&event.envelope).unwrap();
        assert_eq!(v["topic"], "odd/\"quoted\"");
    }

    #[test]
    fn a_hostile_array_keeps_its_wire_forms_and_no_parsed_tree() {
        let json = format!(r#"{{"a":[{}],"k":"v"}}"#, vec!["0"; 7_990].join(","));
        let Value::Object(map) = serde_json::from_str::<Value>(&json).unwrap() else {
            unreachable!()
        };
        let event = Event::from_draft(
            EventId { epoch: 1, seq: 1 },
            Draft::new("attackers/a/observation/dns", 0, Body::Object(map)),
        );
        let fields = event.body.fields().unwrap();
        assert_eq!(fields.len(), 1, "only the scalar field");
        assert_eq!(fields.str("k"), Some("v"));
        // Two wire buffers (SSE frame holding the envelope, WebSocket frame)
        // rounded to their size class, and a few hundred bytes more; the
        // parsed tree was ~20x the payload.
        let wire = json.len();
        assert!(event.heap_bytes() > 2 * wire, "{}", event.heap_bytes());
        assert!(
            event.heap_bytes() < 2 * block_bytes(wire + 200) + 1024,
            "{}",
            event.heap_bytes()
        );
        assert_eq!(
            event.sse_frame().len(),
            event.envelope.len() + "id: 1-1\nevent: observation\ndata: \n\n".len()
        );
    }

    #[test]
    fn blocks_round_up_to_their_size_class() {
        assert_eq!(block_bytes(0), 16);
        assert_eq!(block_bytes(8), 16);
        assert_eq!(block_bytes(9), 32);
        assert_eq!(block_bytes(100), 112);
        assert_eq!(block_bytes(16_376), 16_384);
        assert_eq!(block_bytes(16_385), 20_480);
        for n in [1usize, 50, 1000, 40_000, 1 << 22] {
            assert!(block_bytes(n) >= n + 8);
            assert!(block_bytes(n) <= (n + 8) * 5 / 4 + 16, "{n}");
        }
    }

    #[test]
    fn kept_fields_answer_by_key_and_type() {
        let Value::Object(map) = serde_json::json!({
            "s": "text", "n": 42, "f": 2.5, "b": false, "z": null,
            "long": "x".repeat(MAX_FIELD_VALUE_CHARS + 1), "bad key": "v",
            "o": {"s": "inner"}, "e": ""
        }) else {
            unreachable!()
        };
        let f = Fields::from_map(&map);
        assert_eq!(f.get("s"), Some((FieldKind::Str, "text")));
        assert_eq!(f.get("n"), Some((FieldKind::Num, "42")));
        assert_eq!(f.f64("f"), Some(2.5));
        assert_eq!(f.f64("s"), None);
        assert_eq!(f.str("n"), None);
        assert_eq!(f.get("b"), Some((FieldKind::Bool, "false")));
        for missing in ["z", "long", "bad key", "o", "e", "nope", ""] {
            assert_eq!(f.get(missing), None, "{missing}");
        }
        assert_eq!(f.len(), 4);
    }

    #[test]
    fn an_envelope_s_inner_fields_are_kept_unless_the_top_level_has_them() {
        let Value::Object(map) = serde_json::json!({
            "v": 1, "type": "profile.state_changed", "ts": 1.5,
            "payload": {"identity_uuid": "i-1", "ts": 9, "type": "inner", "nested": {"a": "b"}}
        }) else {
            unreachable!()
        };
        let f = Fields::from_map(&map);
        assert_eq!(f.str("identity_uuid"), Some("i-1"));
        assert_eq!(
            f.str("type"),
            Some("profile.state_changed"),
            "top level wins"
        );
        assert_eq!(f.f64("ts"), Some(1.5));
        assert_eq!(f.get("nested"), None);
        assert_eq!(f.get("a"), None, "only one level down");
        let Value::Object(flat) = serde_json::json!({"payload": "text", "k": 1}) else {
            unreachable!()
        };
        assert_eq!(Fields::from_map(&flat).len(), 2, "no envelope: as before");
        let Value::Object(nested) =
            serde_json::json!({"k": 1, "payload": {"identity_uuid": "someone-else"}})
        else {
            unreachable!()
        };
        assert_eq!(
            Fields::from_map(&nested).get("identity_uuid"),
            None,
            "a nested payload without an envelope's type is not an envelope"
        );
    }
}
