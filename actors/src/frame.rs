//! Strict validation of everything that arrives on a topic.
//!
//! [`MetricsFrame::parse`] enforces DESIGN.md's metrics rules in one pass with
//! a hand-written serde visitor, so every failure has a precise [`Rejection`]
//! (derived structs would accept a top-level array and report errors as text).
//! [`parse_object`] is the rule for every other family: a JSON object, no
//! duplicate keys at any depth (serde_json's `Value` silently keeps the last).

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::lax::{self, Coercion, Coercions, LaxInt};

/// Longest key quoted back in a rejection, so a hostile key cannot bloat logs.
const KEY_EXCERPT: usize = 32;

/// Why a frame was refused. One value drives the WARN line, the metric label
/// (`as_str`), the `edgebus/rejects` event and, for HTTP publish, the 400 body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("payload of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("payload is not valid UTF-8")]
    NotUtf8,
    #[error("payload is not valid JSON: {0}")]
    BadJson(String),
    #[error("payload is not a JSON object")]
    NotObject,
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    #[error("duplicate key {0:?}")]
    DuplicateKey(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("`{field}` = {value} is outside {min}..={max}")]
    OutOfRange {
        field: &'static str,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("`timestamp` must be an integer >= 0 (seconds)")]
    BadTimestamp,
    #[error("`device_id` must match ^[A-Za-z0-9._-]{{1,64}}$")]
    BadDeviceId,
    #[error("`device_id` does not match the topic's device level")]
    DeviceIdMismatch,
    #[error("topic is not acceptable: {0}")]
    BadTopic(String),
    #[error("device cap reached; new device refused")]
    DeviceCap,
}

impl Rejection {
    /// Stable snake_case reason: metric label, JSON error and event field.
    pub fn as_str(&self) -> &'static str {
        match self {
            Rejection::TooLarge(_) => "too_large",
            Rejection::NotUtf8 => "not_utf8",
            Rejection::BadJson(_) => "bad_json",
            Rejection::NotObject => "not_object",
            Rejection::UnknownKey(_) => "unknown_key",
            Rejection::DuplicateKey(_) => "duplicate_key",
            Rejection::MissingField(_) => "missing_field",
            Rejection::WrongType { .. } => "wrong_type",
            Rejection::OutOfRange { .. } => "out_of_range",
            Rejection::BadTimestamp => "bad_timestamp",
            Rejection::BadDeviceId => "bad_device_id",
            Rejection::DeviceIdMismatch => "device_id_mismatch",
            Rejection::BadTopic(_) => "bad_topic",
            Rejection::DeviceCap => "device_cap",
        }
    }

    /// Every reason, so counters can be pre-registered at zero.
    pub const ALL_REASONS: [&'static str; 14] = [
        "too_large",
        "not_utf8",
        "bad_json",
        "not_object",
        "unknown_key",
        "duplicate_key",
        "missing_field",
        "wrong_type",
        "out_of_range",
        "bad_timestamp",
        "bad_device_id",
        "device_id_mismatch",
        "bad_topic",
        "device_cap",
    ];
}

fn excerpt_key(key: &str) -> String {
    key.chars().take(KEY_EXCERPT).collect()
}

/// `^[A-Za-z0-9._-]{1,64}$`: an id that fills one topic level and is safe in
/// logs, Slack and HTML. Device ids, attacker ids and notification sources
/// all follow it (only device ids are [`DeviceId`]s).
pub fn is_safe_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A device id: [`is_safe_id`]. Safe in topics, logs, Slack and HTML.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn parse(text: &str) -> Result<Self, Rejection> {
        if is_safe_id(text) {
            Ok(Self(text.to_owned()))
        } else {
            Err(Rejection::BadDeviceId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for DeviceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A validated metrics frame. Fields are public read-only data; the only way
/// to build one is [`MetricsFrame::parse`], so every instance obeys the rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsFrame {
    pub device_id: DeviceId,
    pub timestamp: u64,
    pub cpu_percent: f64,
    pub mem_percent: f64,
    pub disk_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_cpu_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_mem_mb: Option<f64>,
}

/// What a metrics frame may bend. The default is DESIGN.md's strict rules;
/// `[compat.edgewatch]` may loosen two of them for the bridge's publishers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameRules {
    /// Accept the coercions pydantic's lax mode applied ([`crate::lax`]).
    pub lax: bool,
    /// The payload's `device_id` names the device, whatever the topic's
    /// device level says.
    pub device_id_from_payload: bool,
}

/// A frame accepted under [`FrameRules`], and what it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub frame: MetricsFrame,
    pub coercions: Coercions,
    /// The payload's `device_id` differed from the topic's device level.
    pub device_id_differs: bool,
}

impl MetricsFrame {
    /// Validates `payload` published on `devices/{topic_device}/metrics`.
    pub fn parse(topic_device: &str, payload: &[u8], max_bytes: usize) -> Result<Self, Rejection> {
        Self::parse_with(topic_device, payload, max_bytes, FrameRules::default()).map(|a| a.frame)
    }

    /// [`MetricsFrame::parse`] under `rules`.
    pub fn parse_with(
        topic_device: &str,
        payload: &[u8],
        max_bytes: usize,
        rules: FrameRules,
    ) -> Result<Accepted, Rejection> {
        let text = precheck(payload, max_bytes)?;
        let mut de = serde_json::Deserializer::from_str(text);
        let fields = de
            .deserialize_map(FrameVisitor { lax: rules.lax })
            .map_err(|e| Rejection::BadJson(e.to_string()))?;
        de.end().map_err(|e| Rejection::BadJson(e.to_string()))?;
        let coercions = fields.coercions;
        let frame = fields.finish()?;
        let device_id_differs = frame.device_id.as_str() != topic_device;
        if device_id_differs && !rules.device_id_from_payload {
            return Err(Rejection::DeviceIdMismatch);
        }
        Ok(Accepted {
            frame,
            coercions,
            device_id_differs,
        })
    }
}

/// A metric of a frame: what the parser reads, what an alert rule watches,
/// what settings accept as a rule's `field`. The order is the slot order of
/// the parser's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Cpu,
    Mem,
    Disk,
    Gpu,
    AgentCpu,
    AgentMem,
}

impl Field {
    pub const ALL: [Field; 6] = [
        Field::Cpu,
        Field::Mem,
        Field::Disk,
        Field::Gpu,
        Field::AgentCpu,
        Field::AgentMem,
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Field::Cpu => "cpu_percent",
            Field::Mem => "mem_percent",
            Field::Disk => "disk_percent",
            Field::Gpu => "gpu_percent",
            Field::AgentCpu => "agent_cpu_percent",
            Field::AgentMem => "agent_mem_mb",
        }
    }

    /// The value in `frame`; `None` when an optional field is absent.
    #[inline]
    pub fn read(self, frame: &MetricsFrame) -> Option<f64> {
        match self {
            Field::Cpu => Some(frame.cpu_percent),
            Field::Mem => Some(frame.mem_percent),
            Field::Disk => Some(frame.disk_percent),
            Field::Gpu => frame.gpu_percent,
            Field::AgentCpu => frame.agent_cpu_percent,
            Field::AgentMem => frame.agent_mem_mb,
        }
    }

    /// Optional metrics may be absent (or null) in a frame.
    pub const fn is_optional(self) -> bool {
        matches!(self, Field::Gpu | Field::AgentCpu | Field::AgentMem)
    }

    /// Allowed range of the metric.
    pub const fn range(self) -> (f64, f64) {
        match self {
            Field::AgentCpu => (0.0, 1000.0),
            Field::AgentMem => (0.0, f64::MAX),
            _ => (0.0, 100.0),
        }
    }
}

/// Size, UTF-8 and "starts with `{`" checks shared by every family.
fn precheck(payload: &[u8], max_bytes: usize) -> Result<&str, Rejection> {
    if payload.len() > max_bytes {
        return Err(Rejection::TooLarge(payload.len()));
    }
    let text = std::str::from_utf8(payload).map_err(|_| Rejection::NotUtf8)?;
    // serde would happily read a struct from a JSON array: demand an object.
    match text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .as_bytes()
        .first()
    {
        Some(b'{') => Ok(text),
        Some(_) => Err(if serde_json::from_str::<IgnoredAny>(text).is_ok() {
            Rejection::NotObject
        } else {
            Rejection::BadJson("expected a JSON object".into())
        }),
        None => Err(Rejection::BadJson("empty payload".into())),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    DeviceId,
    Timestamp,
    Metric(Field),
}

impl Key {
    const fn name(self) -> &'static str {
        match self {
            Key::DeviceId => "device_id",
            Key::Timestamp => "timestamp",
            Key::Metric(field) => field.as_str(),
        }
    }

    /// This key's bit in `Fields::seen`.
    const fn bit(self) -> u16 {
        match self {
            Key::DeviceId => 1,
            Key::Timestamp => 1 << 1,
            Key::Metric(field) => 1 << (2 + field as u16),
        }
    }
}

/// A key as read from the frame: known keys cost no allocation.
enum FrameKey {
    Known(Key),
    Unknown(String),
}

impl<'de> de::Deserialize<'de> for FrameKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = FrameKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FrameKey, E> {
                Ok(match v {
                    "device_id" => FrameKey::Known(Key::DeviceId),
                    "timestamp" => FrameKey::Known(Key::Timestamp),
                    other => match Field::parse(other) {
                        Some(field) => FrameKey::Known(Key::Metric(field)),
                        None => FrameKey::Unknown(excerpt_key(other)),
                    },
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Any JSON value, classified just enough to validate a field.
enum Scalar {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str(String),
    Nested,
}

impl<'de> de::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Unsigned(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Signed(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Nested)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Nested)
            }
        }
        d.deserialize_any(V)
    }
}

/// Fields collected so far, plus the first rule broken (in document order).
#[derive(Default)]
struct Fields {
    seen: u16,
    device_id: Option<DeviceId>,
    timestamp: Option<u64>,
    /// Indexed by `Field as usize`.
    numbers: [Option<f64>; Field::ALL.len()],
    first_error: Option<Rejection>,
    /// Lax rules ([`crate::lax`]) on.
    lax: bool,
    coercions: Coercions,
}

impl Fields {
    fn fail(&mut self, rejection: Rejection) {
        self.first_error.get_or_insert(rejection);
    }

    fn set(&mut self, key: Key, value: Scalar) {
        let bit = key.bit();
        if self.seen & bit != 0 {
            return self.fail(Rejection::DuplicateKey(key.name().into()));
        }
        self.seen |= bit;
        let field = key.name();
        match key {
            Key::DeviceId => match value {
                Scalar::Str(s) => match DeviceId::parse(&s) {
                    Ok(id) => self.device_id = Some(id),
                    Err(r) => self.fail(r),
                },
                _ => self.fail(Rejection::WrongType {
                    field,
                    expected: "a string",
                }),
            },
            Key::Timestamp => match value {
                Scalar::Unsigned(t) => self.timestamp = Some(t),
                Scalar::Bool(b) if self.lax => self.coerced(Coercion::NumberFromBool, u64::from(b)),
                Scalar::Float(f) if self.lax => match lax::int_from_float(f) {
                    LaxInt::Value(t) => self.coerced(Coercion::IntFromFloat, t),
                    _ => self.fail(Rejection::BadTimestamp),
                },
                Scalar::Str(s) if self.lax => match lax::int_from_str(&s) {
                    LaxInt::Value(t) => self.coerced(Coercion::IntFromString, t),
                    LaxInt::Negative | LaxInt::TooLarge => self.fail(Rejection::BadTimestamp),
                    LaxInt::NotAnInt => self.fail(Rejection::WrongType {
                        field,
                        expected: "an integer",
                    }),
                },
                Scalar::Signed(_) | Scalar::Float(_) => self.fail(Rejection::BadTimestamp),
                _ => self.fail(Rejection::WrongType {
                    field,
                    expected: "an integer",
                }),
            },
            Key::Metric(numeric) => {
                let number = match value {
                    Scalar::Unsigned(v) => v as f64,
                    Scalar::Signed(v) => v as f64,
                    Scalar::Float(v) => v,
                    Scalar::Bool(b) if self.lax => {
                        self.coercions.add(Coercion::NumberFromBool);
                        f64::from(u8::from(b))
                    }
                    Scalar::Str(s) if self.lax => match lax::float_from_str(&s) {
                        Some(v) => {
                            self.coercions.add(Coercion::NumberFromString);
                            v
                        }
                        None => {
                            return self.fail(Rejection::WrongType {
                                field,
                                expected: "a number",
                            })
                        }
                    },
                    // Optional metrics may be sent as null by agents that
                    // lack the sensor (the seed bridge accepted that too).
                    Scalar::Null if numeric.is_optional() => return,
                    _ => {
                        return self.fail(Rejection::WrongType {
                            field,
                            expected: "a number",
                        })
                    }
                };
                let (min, max) = numeric.range();
                if !number.is_finite() || number < min || number > max {
                    return self.fail(Rejection::OutOfRange {
                        field,
                        value: number,
                        min,
                        max,
                    });
                }
                self.numbers[numeric as usize] = Some(number);
            }
        }
    }

    fn coerced(&mut self, coercion: Coercion, timestamp: u64) {
        self.coercions.add(coercion);
        self.timestamp = Some(timestamp);
    }

    fn finish(self) -> Result<MetricsFrame, Rejection> {
        if let Some(r) = self.first_error {
            return Err(r);
        }
        let [cpu, mem, disk, gpu, agent_cpu, agent_mem] = self.numbers;
        Ok(MetricsFrame {
            device_id: self.device_id.ok_or(Rejection::MissingField("device_id"))?,
            timestamp: self.timestamp.ok_or(Rejection::MissingField("timestamp"))?,
            cpu_percent: cpu.ok_or(Rejection::MissingField("cpu_percent"))?,
            mem_percent: mem.ok_or(Rejection::MissingField("mem_percent"))?,
            disk_percent: disk.ok_or(Rejection::MissingField("disk_percent"))?,
            gpu_percent: gpu,
            agent_cpu_percent: agent_cpu,
            agent_mem_mb: agent_mem,
        })
    }
}

struct FrameVisitor {
    lax: bool,
}

impl<'de> Visitor<'de> for FrameVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a metrics object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields {
            lax: self.lax,
            ..Fields::default()
        };
        while let Some(key) = map.next_key::<FrameKey>()? {
            match key {
                FrameKey::Known(k) => {
                    let value = map.next_value::<Scalar>()?;
                    fields.set(k, value);
                }
                FrameKey::Unknown(name) => {
                    map.next_value::<IgnoredAny>()?;
                    fields.fail(Rejection::UnknownKey(name));
                }
            }
        }
        Ok(fields)
    }
}

/// Validates a non-metrics payload: a JSON object with no duplicate key at any
/// depth. Returns the object.
pub fn parse_object(payload: &[u8], max_bytes: usize) -> Result<Map<String, Value>, Rejection> {
    let text = precheck(payload, max_bytes)?;
    let duplicate = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = StrictValue(&duplicate)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Rejection::NotObject),
        Err(e) => Err(match duplicate.take() {
            Some(key) => Rejection::DuplicateKey(key),
            None => Rejection::BadJson(e.to_string()),
        }),
    }
}

/// Builds a `Value` like serde_json does, but fails on a repeated key and
/// records which, since a serde error can only carry text.
struct StrictValue<'a>(&'a Cell<Option<String>>);

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue(self.0))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(StrictValue(self.0))?;
            if out.contains_key(&key) {
                let message = format!("duplicate key {key:?}");
                self.0.set(Some(excerpt_key(&key)));
                return Err(de::Error::custom(message));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16 * 1024;
    const GOOD: &str = r#"{"device_id":"d1","timestamp":1763800000,"cpu_percent":12.5,"mem_percent":40,"disk_percent":70.1}"#;

    fn parse(json: &str) -> Result<MetricsFrame, Rejection> {
        MetricsFrame::parse("d1", json.as_bytes(), MAX)
    }

    fn reason(json: &str) -> &'static str {
        parse(json).expect_err(json).as_str()
    }

    fn with(extra: &str) -> String {
        format!(
            r#"{{"device_id":"d1","timestamp":1,"cpu_percent":1,"mem_percent":1,"disk_percent":1{extra}}}"#
        )
    }

    #[test]
    fn a_complete_frame_is_accepted() {
        let frame = parse(GOOD).unwrap();
        assert_eq!(frame.device_id.as_str(), "d1");
        assert_eq!(frame.timestamp, 1_763_800_000);
        assert_eq!(frame.mem_percent, 40.0);
        assert_eq!(frame.gpu_percent, None);
    }

    #[test]
    fn edge_values_zero_and_hundred_are_accepted() {
        let json = r#"{"device_id":"d1","timestamp":0,"cpu_percent":0,"mem_percent":100,"disk_percent":100.0,"gpu_percent":0.0,"agent_cpu_percent":1000,"agent_mem_mb":0}"#;
        let frame = parse(json).unwrap();
        assert_eq!(frame.timestamp, 0);
        assert_eq!(frame.agent_cpu_percent, Some(1000.0));
        assert!(parse(&with(r#","gpu_percent":-0.0"#)).is_ok());
    }

    #[test]
    fn optional_fields_may_be_absent_or_null() {
        assert!(parse(&with("")).is_ok());
        let frame = parse(&with(r#","gpu_percent":null"#)).unwrap();
        assert_eq!(frame.gpu_percent, None);
    }

    #[test]
    fn a_serialised_frame_omits_absent_optional_fields() {
        let frame = parse(GOOD).unwrap();
        let json = serde_json::to_string(&frame).unwrap();
        assert_eq!(
            json,
            r#"{"device_id":"d1","timestamp":1763800000,"cpu_percent":12.5,"mem_percent":40.0,"disk_percent":70.1}"#
        );
    }

    #[test]
    fn every_bad_input_has_its_precise_reason() {
        let table: &[(&str, &str)] = &[
            ("[\"d1\",1,1,2,3]", "not_object"),
            ("42", "not_object"),
            ("\"d1\"", "not_object"),
            ("null", "not_object"),
            ("", "bad_json"),
            ("{", "bad_json"),
            ("{}garbage", "bad_json"),
            (r#"{"cpu_percent":NaN}"#, "bad_json"),
            (r#"{"cpu_percent":Infinity}"#, "bad_json"),
            (r#"{"cpu_percent":1e400}"#, "bad_json"),
            ("\u{feff}{}", "bad_json"),
            (&with(r#","evil":"<!channel>""#), "unknown_key"),
            (&with(r#","CPU_percent":1"#), "unknown_key"),
            (&with(r#","cpu_percent":2"#), "duplicate_key"),
            (
                &with(r#","gpu_percent":1,"gpu_percent":1"#),
                "duplicate_key",
            ),
            (
                r#"{"device_id":"d1","timestamp":1,"cpu_percent":1,"mem_percent":1}"#,
                "missing_field",
            ),
            (
                r#"{"timestamp":1,"cpu_percent":1,"mem_percent":1,"disk_percent":1}"#,
                "missing_field",
            ),
            (&with(r#","gpu_percent":true"#), "wrong_type"),
            (
                r#"{"device_id":"d1","timestamp":1,"cpu_percent":true,"mem_percent":1,"disk_percent":1}"#,
                "wrong_type",
            ),
            (
                r#"{"device_id":"d1","timestamp":1,"cpu_percent":1,"mem_percent":"<script>alert(1)</script>","disk_percent":1}"#,
                "wrong_type",
            ),
            (
                r#"{"device_id":"d1","timestamp":1,"cpu_percent":null,"mem_percent":1,"disk_percent":1}"#,
                "wrong_type",
            ),
            (
                r#"{"device_id":7,"timestamp":1,"cpu_percent":1,"mem_percent":1,"disk_percent":1}"#,
                "wrong_type",
            ),
            (
                r#"{"device_id":"d1","timestamp":"1","cpu_percent":1,"mem_percent":1,"disk_percent":1}"#,
                "wrong_type",
            ),
            (
                r#"{"device_id":"d1","timestamp":1,"cpu_percent":100.0000001,"mem_percent":1,"disk_percent":1}"#,
                "out_of_range",
            ),
            (
                r#"{"device_id":"d1","timestamp":1,"cpu_percent":-1,"mem_percent":1,"disk_percent":1}"#,
                "out_of_range",
            ),
            (
                r#"{"device_id":"d1","timestamp":1,"cpu_percent":1,"mem_percent":1,"disk_percent":-1e-300}"#,
                "out_of_range",
            ),
            (&with(r#","gpu_percent":101"#), "out_of_range"),
            (&with(r#","agent_cpu_percent":1000.5"#), "out_of_range"),
            (&with(r#","agent_mem_mb":-1"#), "out_of_range"),
            (
                r#"{"device_id":"d1","timestamp":-1,"cpu_percent":1,"mem_percent":1,"disk_percent":1}"#,
                "bad_timestamp",
            ),
            (
                r#"{"device_id":"d1","timestamp":1.0,"cpu_percent":1,"mem_percent":1,"disk_percent":1}"#,
                "bad_timestamp",
            ),
            (
                r#"{"device_id":"d1","timestamp":18446744073709551616,"cpu_percent":1,"mem_percent":1,"disk_percent":1}"#,
                "bad_timestamp",
            ),
            (
                r#"{"device_id":"","timestamp":1,"cpu_percent":1,"mem_percent":1,"disk_percent":1}"#,
                "bad_device_id",
            ),
            (
                r#"{"device_id":"a/b","timestamp":1,"cpu_percent":1,"mem_percent":1,"disk_percent":1}"#,
                "bad_device_id",
            ),
            (
                r#"{"device_id":"d1\n","timestamp":1,"cpu_percent":1,"mem_percent":1,"disk_percent":1}"#,
                "bad_device_id",
            ),
            (
                r#"{"device_id":"<script>","timestamp":1,"cpu_percent":1,"mem_percent":1,"disk_percent":1}"#,
                "bad_device_id",
            ),
            (
                r#"{"device_id":"d2","timestamp":1,"cpu_percent":1,"mem_percent":1,"disk_percent":1}"#,
                "device_id_mismatch",
            ),
        ];
        for (json, want) in table {
            assert_eq!(reason(json), *want, "for {json}");
        }
    }

    /// A valid frame with `field` set to the JSON `value` (added if new).
    fn frame_with(field: &str, value: &str) -> String {
        let mut parts: Vec<(String, String)> = [
            ("device_id", r#""d1""#),
            ("timestamp", "1"),
            ("cpu_percent", "1"),
            ("mem_percent", "1"),
            ("disk_percent", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        match parts.iter_mut().find(|(k, _)| k == field) {
            Some(part) => part.1 = value.to_owned(),
            None => parts.push((field.to_owned(), value.to_owned())),
        }
        let body: Vec<String> = parts.iter().map(|(k, v)| format!(r#""{k}":{v}"#)).collect();
        format!("{{{}}}", body.join(","))
    }

    const LAX: FrameRules = FrameRules {
        lax: true,
        device_id_from_payload: false,
    };

    fn lax(json: &str) -> Result<Accepted, Rejection> {
        MetricsFrame::parse_with("d1", json.as_bytes(), MAX, LAX)
    }

    #[test]
    fn lax_rules_take_what_the_bridges_model_coerced_and_say_which() {
        let json = r#"{"device_id":"d1","timestamp":1700000000.0,"cpu_percent":"42.5","mem_percent":true,"disk_percent":" 7 ","gpu_percent":"1_0","agent_mem_mb":false}"#;
        assert_eq!(reason(json), "bad_timestamp", "strict rules refuse it");
        let accepted = lax(json).unwrap();
        let frame = &accepted.frame;
        assert_eq!(frame.timestamp, 1_700_000_000);
        assert_eq!(
            (frame.cpu_percent, frame.mem_percent, frame.disk_percent),
            (42.5, 1.0, 7.0)
        );
        assert_eq!(frame.gpu_percent, Some(10.0));
        assert_eq!(frame.agent_mem_mb, Some(0.0));
        let c = accepted.coercions;
        assert_eq!(c.count(Coercion::NumberFromString), 3);
        assert_eq!(c.count(Coercion::NumberFromBool), 2);
        assert_eq!(c.count(Coercion::IntFromFloat), 1);
        assert_eq!(c.count(Coercion::IntFromString), 0);
        let ts = lax(&frame_with("timestamp", r#""1_700_000_000""#)).unwrap();
        assert_eq!(ts.frame.timestamp, 1_700_000_000);
        assert_eq!(ts.coercions.count(Coercion::IntFromString), 1);
        assert_eq!(
            lax(&frame_with("timestamp", "true"))
                .unwrap()
                .frame
                .timestamp,
            1
        );
        // A frame that needed nothing reports nothing.
        assert!(lax(GOOD).unwrap().coercions.is_empty());
    }

    #[test]
    fn lax_rules_still_refuse_what_the_strict_ones_stand_for() {
        for (field, value, want) in [
            ("cpu_percent", r#""nan""#, "out_of_range"),
            ("cpu_percent", r#""101""#, "out_of_range"),
            ("cpu_percent", r#""-1""#, "out_of_range"),
            ("agent_mem_mb", r#""inf""#, "out_of_range"),
            ("agent_mem_mb", r#""1e400""#, "out_of_range"),
            ("cpu_percent", r#""""#, "wrong_type"),
            ("cpu_percent", r#""0x10""#, "wrong_type"),
            ("cpu_percent", "null", "wrong_type"),
            ("cpu_percent", "[1]", "wrong_type"),
            ("gpu_percent", r#""<script>""#, "wrong_type"),
            ("timestamp", "1.5", "bad_timestamp"),
            ("timestamp", "1e20", "bad_timestamp"),
            ("timestamp", "-1", "bad_timestamp"),
            ("timestamp", r#""-1""#, "bad_timestamp"),
            ("timestamp", r#""18446744073709551616""#, "bad_timestamp"),
            ("timestamp", r#""1.5""#, "wrong_type"),
            ("timestamp", r#""1e3""#, "wrong_type"),
            ("timestamp", "null", "wrong_type"),
            ("device_id", "5", "wrong_type"),
            ("device_id", r#""d1 ""#, "bad_device_id"),
            ("evil", r#""<!channel>""#, "unknown_key"),
        ] {
            let json = frame_with(field, value);
            assert_eq!(lax(&json).unwrap_err().as_str(), want, "{json}");
        }
        assert_eq!(
            lax(r#"{"device_id":"d1","timestamp":1,"cpu_percent":1,"cpu_percent":"1","mem_percent":1,"disk_percent":1}"#)
                .unwrap_err()
                .as_str(),
            "duplicate_key"
        );
    }

    #[test]
    fn the_payloads_device_id_may_win_over_the_topics_only_when_asked() {
        let json = GOOD.replace("\"d1\"", "\"d9\"");
        assert_eq!(reason(&json), "device_id_mismatch");
        let rules = FrameRules {
            device_id_from_payload: true,
            ..FrameRules::default()
        };
        let accepted = MetricsFrame::parse_with("d1", json.as_bytes(), MAX, rules).unwrap();
        assert_eq!(accepted.frame.device_id.as_str(), "d9");
        assert!(accepted.device_id_differs);
        let same = MetricsFrame::parse_with("d1", GOOD.as_bytes(), MAX, rules).unwrap();
        assert!(!same.device_id_differs);
    }

    #[test]
    fn device_id_length_limit_is_64() {
        let ok = "a".repeat(64);
        assert!(DeviceId::parse(&ok).is_ok());
        assert_eq!(
            DeviceId::parse(&"a".repeat(65)),
            Err(Rejection::BadDeviceId)
        );
        assert_eq!(DeviceId::parse("d\u{e9}"), Err(Rejection::BadDeviceId));
        assert!(DeviceId::parse("..").is_ok(), "dots are in the allowed set");
    }

    #[test]
    fn size_cap_is_checked_before_parsing() {
        let json = with("");
        assert!(MetricsFrame::parse("d1", json.as_bytes(), json.len()).is_ok());
        assert_eq!(
            MetricsFrame::parse("d1", json.as_bytes(), json.len() - 1),
            Err(Rejection::TooLarge(json.len()))
        );
    }

    #[test]
    fn non_utf8_is_rejected_as_such() {
        let mut bytes = with("").into_bytes();
        bytes[14] = 0xff;
        assert_eq!(
            MetricsFrame::parse("d1", &bytes, MAX),
            Err(Rejection::NotUtf8)
        );
    }

    #[test]
    fn deep_nesting_is_a_rejection_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let json = with(&format!(r#","x":{deep}"#));
        let r = MetricsFrame::parse("d1", json.as_bytes(), usize::MAX).unwrap_err();
        assert_eq!(r.as_str(), "unknown_key");
        let json = format!(
            r#"{{"device_id":"d1","timestamp":1,"cpu_percent":{deep},"mem_percent":1,"disk_percent":1}}"#
        );
        let r = MetricsFrame::parse("d1", json.as_bytes(), usize::MAX).unwrap_err();
        assert_eq!(
            r.as_str(),
            "wrong_type",
            "skipped iteratively, no stack overflow"
        );
        let r = parse_object(format!(r#"{{"x":{deep}}}"#).as_bytes(), usize::MAX).unwrap_err();
        assert_eq!(r.as_str(), "bad_json");
    }

    #[test]
    fn objects_with_duplicate_keys_at_any_depth_are_rejected() {
        assert!(parse_object(br#"{"a":1,"b":{"c":2}}"#, MAX).is_ok());
        assert_eq!(
            parse_object(br#"{"a":1,"a":1}"#, MAX),
            Err(Rejection::DuplicateKey("a".into()))
        );
        assert_eq!(
            parse_object(br#"{"a":{"b":1,"b":2}}"#, MAX),
            Err(Rejection::DuplicateKey("b".into()))
        );
        assert_eq!(
            parse_object(br#"{"a":[{"c":1,"c":1}]}"#, MAX),
            Err(Rejection::DuplicateKey("c".into()))
        );
    }

    #[test]
    fn objects_must_be_objects() {
        assert_eq!(parse_object(b"[1]", MAX), Err(Rejection::NotObject));
        assert_eq!(
            parse_object(b"{\"a\":1} x", MAX).unwrap_err().as_str(),
            "bad_json"
        );
        assert_eq!(parse_object(b"\xff", MAX), Err(Rejection::NotUtf8));
    }

    #[test]
    fn rejection_reasons_are_listed_once_each() {
        let mut all = Rejection::ALL_REASONS.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), Rejection::ALL_REASONS.len());
    }
}
