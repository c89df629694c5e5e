//! DECNET's per-attacker SSE form (`[compat.decnet]`): what DECNET's
//! `GET /api/v1/attackers/{uuid}/events` wrote, rendered from edgebus's
//! events, so its dashboard reads edgebus's stream unchanged.
//!
//! - A live event is `event: <name>` and `data: {"topic","type","ts",
//!   "payload"}`, where `topic` is the DECNET bus subject the event came
//!   from ([`dotted_topic`]) and `<name>` DECNET's `_sse_name_for` of it
//!   ([`event_name`]). An `id:` line is added (edgebus's event id), so a
//!   browser's own reconnect resumes; DECNET's page ignores it.
//! - A payload that is a DECNET bus envelope (`{"v","id","topic","type",
//!   "ts","payload":{…}}`, what DECNET's publishers put on NATS and what the
//!   NATS source keeps as the payload) gives its own `type`, `ts` and
//!   `payload`, as DECNET's bus handed them to its route. Any other payload
//!   (published over MQTT or HTTP) is the `payload`; `type` is the event
//!   name and `ts` edgebus's receive time in epoch seconds (a float, DECNET's
//!   unit).
//! - The snapshot is `{"attacker_uuid", "observations": [{"primitive": p,
//!   …latest payload of p}, …]}`, sorted by primitive: edgebus's last value
//!   of each `attackers/{uuid}/observation/{p}` topic stands in for DECNET's
//!   `latest_observation_per_primitive`. Everything else in the bus's
//!   snapshot is left out, as DECNET sent observations only.
//!
//! Each session renders what it takes (one parse per event and session):
//! these streams are one per open attacker page, each carrying one
//! attacker's events, so nothing is worth caching on the shared event.

use std::sync::Arc;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use super::wire::write_sse_frame;
use super::{Event, EventId};

/// The DECNET bus subject an edgebus topic stands for: the inverse of the
/// NATS source's DECNET rules. `attackers/{uuid}/…` is `attacker.…` without
/// the uuid (DECNET keeps it in the payload), and a primitive's levels are
/// its dotted tokens; any other topic has its slashes turned into dots
/// (`attribution/profile/state_changed` → `attribution.profile.state_changed`).
pub fn dotted_topic(topic: &str) -> String {
    let mut levels = topic.split('/');
    match (levels.next(), levels.next()) {
        (Some("attackers"), Some(_attacker)) => {
            let mut dotted = String::from("attacker");
            for level in levels {
                dotted.push('.');
                dotted.push_str(level);
            }
            dotted
        }
        _ => topic.replace('/', "."),
    }
}

/// The SSE event name DECNET gave a bus subject (`_sse_name_for`). Every
/// observation is `observation` (the primitive rides in the payload); a
/// subject it does not name passes through, so a new family never collapses
/// onto another's name. On this stream every subject starts `attacker.` or
/// `attribution.`, so a publisher can never make it `error` or `snapshot`.
pub fn event_name(dotted: &str) -> &str {
    if dotted.starts_with("attacker.observation.") {
        return "observation";
    }
    match dotted {
        "attacker.fingerprint_rotated" => "fingerprint.rotated",
        "attacker.scored" => "attacker.scored",
        "attribution.profile.state_changed" => "attribution.state_changed",
        "attribution.profile.multi_actor_suspected" => "attribution.multi_actor_suspected",
        other => other,
    }
}

/// The primitive of `attacker`'s observation topic
/// (`attackers/{attacker}/observation/{p…}`), its levels joined with dots
/// as DECNET spells it; `None` for any other topic.
pub fn observation_primitive(topic: &str, attacker: &str) -> Option<String> {
    let rest = topic
        .strip_prefix("attackers/")?
        .strip_prefix(attacker)?
        .strip_prefix("/observation/")?;
    (!rest.is_empty()).then(|| rest.replace('/', "."))
}

/// A DECNET bus envelope's `type`, `ts` and `payload`, or for any other
/// payload `name`, the receive time and the payload itself.
pub fn envelope_parts(payload: Value, name: &str, ts_ms: u64) -> (Value, Value, Value) {
    match payload {
        Value::Object(mut outer) if matches!(outer.get("payload"), Some(Value::Object(_))) => {
            let inner = outer.remove("payload").unwrap_or_default();
            // What DECNET's `Event.from_dict` falls back to.
            let kind = match outer.remove("type") {
                Some(Value::String(kind)) => Value::String(kind),
                _ => Value::String(String::new()),
            };
            let ts = match outer.remove("ts") {
                Some(Value::Number(ts)) => Value::Number(ts),
                _ => seconds(ts_ms),
            };
            (kind, ts, inner)
        }
        other => (Value::String(name.to_owned()), seconds(ts_ms), other),
    }
}

/// Epoch seconds as a float, DECNET's `ts`.
fn seconds(ts_ms: u64) -> Value {
    Number::from_f64(ts_ms as f64 / 1000.0).map_or_else(|| Value::from(ts_ms / 1000), Value::Number)
}

/// What an event's payload holds at the top, inside an envelope or not.
fn inner_object(payload: Value) -> Map<String, Value> {
    match payload {
        Value::Object(mut outer) => match outer.remove("payload") {
            Some(Value::Object(inner)) => inner,
            Some(other) => {
                outer.insert("payload".into(), other);
                outer
            }
            None => outer,
        },
        _ => Map::new(),
    }
}

/// One snapshot entry: `{"primitive": p, **payload}`, the payload's own
/// keys winning, as Python's dict display lets them.
pub fn snapshot_entry(primitive: &str, payload: Value) -> Value {
    let mut entry = Map::new();
    entry.insert("primitive".into(), Value::String(primitive.to_owned()));
    entry.extend(inner_object(payload));
    Value::Object(entry)
}

/// The payload an event carries, parsed from its envelope (the only place
/// an event keeps it whole).
fn payload_of(event: &Event) -> Value {
    #[derive(Deserialize)]
    struct Wire {
        payload: Value,
    }
    serde_json::from_str::<Wire>(&event.envelope)
        .map(|w| w.payload)
        .unwrap_or_else(|_| Value::Object(Map::new()))
}

#[derive(Serialize)]
struct Data<'a> {
    topic: &'a str,
    #[serde(rename = "type")]
    kind: Value,
    ts: Value,
    payload: Value,
}

/// Appends one live event in DECNET's form.
pub fn sse_event(out: &mut BytesMut, event: &Event) {
    let topic = dotted_topic(&event.topic);
    let name = event_name(&topic);
    let (kind, ts, payload) = envelope_parts(payload_of(event), name, event.ts_ms);
    let data = Data {
        topic: &topic,
        kind,
        ts,
        payload,
    };
    // Values parsed from JSON serialise again.
    let data = serde_json::to_string(&data).unwrap_or_else(|_| "{}".to_owned());
    write_sse_frame(out, Some(&event.id.to_string()), name, &data);
}

/// DECNET's `snapshot` event, rendered in pieces like edgebus's own (see
/// [`super::wire::SNAPSHOT_PIECE_BYTES`]): the observations are at most the
/// bus's snapshot, and a client that stops reading holds one piece.
#[derive(Debug)]
pub struct DecnetSnapshot {
    attacker: Arc<str>,
    last_id: EventId,
    /// (primitive, its latest event), sorted by primitive.
    observations: Vec<(String, Arc<Event>)>,
    next: usize,
    started: bool,
    finished: bool,
}

impl DecnetSnapshot {
    /// `attacker`'s observations among `events` (the bus's snapshot).
    pub fn new(attacker: Arc<str>, events: &[Arc<Event>], last_id: EventId) -> Self {
        let mut observations: Vec<(String, Arc<Event>)> = events
            .iter()
            .filter_map(|e| Some((observation_primitive(&e.topic, &attacker)?, e.clone())))
            .collect();
        // `observation/motor.input_modality` (NATS) and
        // `observation/motor/input_modality` (MQTT) name one primitive:
        // DECNET's dict holds one entry per primitive, the newest.
        observations.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.id.cmp(&a.1.id)));
        observations.dedup_by(|later, first| later.0 == first.0);
        Self {
            attacker,
            last_id,
            observations,
            next: 0,
            started: false,
            finished: false,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The next piece of about `piece_bytes` (cut between entries); `None`
    /// after the last. The pieces together are one SSE event.
    pub fn next_piece(&mut self, piece_bytes: usize) -> Option<String> {
        if self.finished {
            return None;
        }
        let mut out = String::new();
        if !self.started {
            self.started = true;
            // The id is ours (base36 and digits): nothing to clean.
            out.push_str("id: ");
            out.push_str(&self.last_id.to_string());
            out.push_str("\nevent: snapshot\ndata: {\"attacker_uuid\":");
            out.push_str(&serde_json::to_string(&*self.attacker).unwrap_or_else(|_| "\"\"".into()));
            out.push_str(",\"observations\":[");
        }
        while self.next < self.observations.len() && out.len() < piece_bytes {
            let (primitive, event) = &self.observations[self.next];
            if self.next > 0 {
                out.push(',');
            }
            // JSON text escapes every control character: one `data:` line.
            let entry = snapshot_entry(primitive, payload_of(event));
            out.push_str(&entry.to_string());
            self.next += 1;
        }
        if self.next == self.observations.len() {
            self.finished = true;
            out.push_str("]}\n\n");
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::testing::parse_sse;
    use crate::event::{Body, Draft};

    fn event(seq: u64, topic: &str, payload: Value) -> Arc<Event> {
        let Value::Object(map) = payload else {
            panic!("an object")
        };
        let draft = Draft::new(topic, 1_763_800_000_123, Body::Object(map));
        Arc::new(Event::from_draft(EventId { epoch: 1, seq }, draft))
    }

    #[test]
    fn topics_are_spelled_as_decnet_s_subjects_without_the_attacker() {
        for (topic, dotted) in [
            ("attackers/a1/observation/ja3", "attacker.observation.ja3"),
            (
                "attackers/a1/observation/motor.input_modality",
                "attacker.observation.motor.input_modality",
            ),
            (
                "attackers/a1/observation/motor/input_modality",
                "attacker.observation.motor.input_modality",
            ),
            ("attackers/a1/scored", "attacker.scored"),
            (
                "attackers/a1/fingerprint_rotated",
                "attacker.fingerprint_rotated",
            ),
            ("attackers/a1", "attacker"),
            (
                "attribution/profile/state_changed",
                "attribution.profile.state_changed",
            ),
            ("attribution", "attribution"),
        ] {
            assert_eq!(dotted_topic(topic), dotted, "{topic}");
        }
    }

    #[test]
    fn event_names_follow_decnet_s_sse_name_for() {
        for (dotted, name) in [
            ("attacker.observation.ja3", "observation"),
            ("attacker.observation.motor.input_modality", "observation"),
            ("attacker.fingerprint_rotated", "fingerprint.rotated"),
            ("attacker.scored", "attacker.scored"),
            (
                "attribution.profile.state_changed",
                "attribution.state_changed",
            ),
            (
                "attribution.profile.multi_actor_suspected",
                "attribution.multi_actor_suspected",
            ),
            ("attacker.session.ended", "attacker.session.ended"),
            ("attribution.other", "attribution.other"),
            // `attacker.observation` alone has no primitive.
            ("attacker.observation", "attacker.observation"),
        ] {
            assert_eq!(event_name(dotted), name, "{dotted}");
        }
    }

    #[test]
    fn observation_topics_name_their_primitive_for_their_attacker_only() {
        let p = |t| observation_primitive(t, "a1");
        assert_eq!(p("attackers/a1/observation/ja3").as_deref(), Some("ja3"));
        assert_eq!(
            p("attackers/a1/observation/motor/input_modality").as_deref(),
            Some("motor.input_modality")
        );
        assert_eq!(p("attackers/a12/observation/ja3"), None);
        assert_eq!(p("attackers/a1/observation/"), None);
        assert_eq!(p("attackers/a1/scored"), None);
        assert_eq!(p("attribution/profile/state_changed"), None);
    }

    #[test]
    fn an_envelope_gives_its_own_type_ts_and_payload() {
        let envelope = json!({
            "v": 1, "id": "e1", "topic": "attacker.scored", "type": "scored",
            "ts": 1_763_800_000.25, "payload": {"attacker_uuid": "a1", "score": 0.9}
        });
        let (kind, ts, payload) = envelope_parts(envelope, "attacker.scored", 5);
        assert_eq!(kind, "scored");
        assert_eq!(ts, json!(1_763_800_000.25));
        assert_eq!(payload, json!({"attacker_uuid": "a1", "score": 0.9}));
        // DECNET's own fall-backs for a sparse envelope.
        let (kind, ts, _) = envelope_parts(json!({"payload": {}}), "x", 1_500);
        assert_eq!((kind, ts), (json!(""), json!(1.5)));
    }

    #[test]
    fn a_plain_payload_is_the_payload_with_the_name_and_receive_time() {
        let plain = json!({"attacker_uuid": "a1", "score": 3, "payload": "not an object"});
        let (kind, ts, payload) =
            envelope_parts(plain.clone(), "attacker.scored", 1_763_800_000_123);
        assert_eq!(kind, "attacker.scored");
        assert_eq!(ts, json!(1_763_800_000.123));
        assert_eq!(payload, plain);
    }

    #[test]
    fn a_live_event_is_named_and_shaped_as_decnet_sent_it() {
        let e = event(
            7,
            "attackers/a1/observation/motor.input_modality",
            json!({"v": 1, "type": "motor.input_modality", "ts": 12.5,
                   "payload": {"attacker_uuid": "a1", "value": "pasted"}}),
        );
        let mut out = BytesMut::new();
        sse_event(&mut out, &e);
        let events = parse_sse(std::str::from_utf8(&out).unwrap());
        assert_eq!(events.len(), 1);
        let (id, name, data) = &events[0];
        assert_eq!(id.as_deref(), Some("1-7"));
        assert_eq!(name, "observation");
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            data,
            json!({
                "topic": "attacker.observation.motor.input_modality",
                "type": "motor.input_modality",
                "ts": 12.5,
                "payload": {"attacker_uuid": "a1", "value": "pasted"},
            })
        );
    }

    #[test]
    fn the_snapshot_holds_the_attacker_s_latest_observations_sorted_by_primitive() {
        let events = [
            event(
                3,
                "attackers/a1/observation/tls.ja3",
                json!({"v": 1, "ts": 3.0, "payload": {"value": "771", "confidence": 0.5}}),
            ),
            event(1, "attackers/a1/scored", json!({"score": 9})),
            event(
                2,
                "attackers/a1/observation/dns",
                json!({"value": "x.example", "primitive": "dns.own"}),
            ),
            event(4, "attackers/a2/observation/aaa", json!({"value": 1})),
            event(
                5,
                "attribution/profile/state_changed",
                json!({"identity_uuid": "i"}),
            ),
        ];
        let mut snapshot = DecnetSnapshot::new("a1".into(), &events, EventId { epoch: 1, seq: 5 });
        let text: String = std::iter::from_fn(|| snapshot.next_piece(1)).collect();
        assert!(snapshot.is_finished());
        let parsed = parse_sse(&text);
        assert_eq!(parsed.len(), 1, "{text}");
        let (id, name, data) = &parsed[0];
        assert_eq!((id.as_deref(), name.as_str()), (Some("1-5"), "snapshot"));
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            data,
            json!({
                "attacker_uuid": "a1",
                "observations": [
                    // The payload's own `primitive` wins, as in DECNET's
                    // `{"primitive": p, **payload}`; the order is the topic's.
                    {"primitive": "dns.own", "value": "x.example"},
                    {"primitive": "tls.ja3", "value": "771", "confidence": 0.5},
                ],
            })
        );
        let mut empty = DecnetSnapshot::new("a9".into(), &events, EventId { epoch: 1, seq: 5 });
        let text = empty.next_piece(usize::MAX).unwrap();
        assert_eq!(
            text,
            "id: 1-5\nevent: snapshot\ndata: {\"attacker_uuid\":\"a9\",\"observations\":[]}\n\n"
        );
        assert_eq!(empty.next_piece(usize::MAX), None);
    }

    #[test]
    fn one_primitive_under_two_spellings_is_one_entry_the_newest() {
        let events = [
            event(
                3,
                "attackers/a1/observation/motor.input_modality",
                json!({"v": "new"}),
            ),
            event(
                2,
                "attackers/a1/observation/motor/input_modality",
                json!({"v": "old"}),
            ),
        ];
        let mut snapshot = DecnetSnapshot::new("a1".into(), &events, EventId { epoch: 1, seq: 3 });
        let text: String = std::iter::from_fn(|| snapshot.next_piece(usize::MAX)).collect();
        let (_, _, data) = &parse_sse(&text)[0];
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            data["observations"],
            json!([{"primitive": "motor.input_modality", "v": "new"}])
        );
    }
}
