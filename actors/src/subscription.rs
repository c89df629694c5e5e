//! What a session asks for: a topic filter plus optional payload equality
//! predicates (`?where=identity_uuid:…`), so a per-entity stream is just a
//! subscription, with no per-entity code in the bus.

use std::borrow::Cow;
use std::sync::Arc;

use crate::event::{is_field_key, Event, Payload, MAX_FIELD_VALUE_CHARS};
use crate::topic::TopicFilter;

/// Most predicates one subscription may carry.
pub const MAX_PREDICATES: usize = 8;

/// `key` in the payload equals `value` (a string, or a number or boolean
/// written as text). Nested keys are not looked into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Predicate {
    pub key: Arc<str>,
    pub value: Arc<str>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PredicateError {
    #[error("a `where` predicate is `key:value`, got {0:?}")]
    Shape(String),
    #[error("predicate key {0:?} must match ^[A-Za-z0-9_.-]{{1,64}}$")]
    Key(String),
    #[error("predicate value must be 1 to 256 characters")]
    Value,
    #[error("at most {MAX_PREDICATES} predicates per subscription")]
    TooMany,
}

impl Predicate {
    /// `key:value` (or `key=value`): split at whichever comes first.
    pub fn parse(text: &str) -> Result<Self, PredicateError> {
        let at = text
            .find([':', '='])
            .ok_or_else(|| PredicateError::Shape(text.chars().take(80).collect()))?;
        let (key, value) = (&text[..at], &text[at + 1..]);
        Self::new(key, value)
    }

    pub fn new(key: &str, value: &str) -> Result<Self, PredicateError> {
        // The same rule decides which payload fields an event keeps.
        if !is_field_key(key) {
            return Err(PredicateError::Key(key.chars().take(80).collect()));
        }
        if value.is_empty() || value.chars().count() > MAX_FIELD_VALUE_CHARS {
            return Err(PredicateError::Value);
        }
        Ok(Self {
            key: key.into(),
            value: value.into(),
        })
    }

    pub fn holds(&self, body: &Payload) -> bool {
        field_text(body, &self.key).is_some_and(|v| v == *self.value)
    }
}

/// A payload field as text, for equality predicates.
fn field_text<'a>(body: &'a Payload, key: &str) -> Option<Cow<'a, str>> {
    match body {
        Payload::Fields(fields) => fields.get(key).map(|(_, text)| Cow::Borrowed(text)),
        Payload::Metrics(frame) => match key {
            "device_id" => Some(Cow::Borrowed(frame.device_id.as_str())),
            "timestamp" => Some(Cow::Owned(frame.timestamp.to_string())),
            _ => None,
        },
    }
}

/// A topic filter and the predicates an event's payload must also meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: TopicFilter,
    pub predicates: Arc<[Predicate]>,
}

impl Subscription {
    pub fn topic(filter: TopicFilter) -> Self {
        Self {
            filter,
            predicates: Arc::from([]),
        }
    }

    pub fn with_predicates(
        filter: TopicFilter,
        predicates: Vec<Predicate>,
    ) -> Result<Self, PredicateError> {
        if predicates.len() > MAX_PREDICATES {
            return Err(PredicateError::TooMany);
        }
        Ok(Self {
            filter,
            predicates: predicates.into(),
        })
    }

    pub fn has_predicates(&self) -> bool {
        !self.predicates.is_empty()
    }

    pub fn matches(&self, event: &Event) -> bool {
        self.filter.matches(&event.topic) && self.predicates_hold(&event.body)
    }

    pub fn predicates_hold(&self, body: &Payload) -> bool {
        self.predicates.iter().all(|p| p.holds(body))
    }
}

impl std::fmt::Display for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.filter.as_str())?;
        for p in self.predicates.iter() {
            write!(f, " where {}={}", p.key, p.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, Draft, EventId};
    use serde_json::{json, Value};

    fn event(topic: &str, payload: Value) -> Event {
        let Value::Object(map) = payload else {
            panic!("object")
        };
        Event::from_draft(
            EventId { epoch: 1, seq: 1 },
            Draft::new(topic, 0, Body::Object(map)),
        )
    }

    fn sub(filter: &str, preds: &[&str]) -> Subscription {
        Subscription::with_predicates(
            TopicFilter::parse(filter).unwrap(),
            preds.iter().map(|p| Predicate::parse(p).unwrap()).collect(),
        )
        .unwrap()
    }

    #[test]
    fn predicates_parse_with_colon_or_equals() {
        let p = Predicate::parse("identity_uuid:ab-12").unwrap();
        assert_eq!((&*p.key, &*p.value), ("identity_uuid", "ab-12"));
        let p = Predicate::parse("ts=12:30").unwrap();
        assert_eq!((&*p.key, &*p.value), ("ts", "12:30"));
        assert!(matches!(
            Predicate::parse("novalue"),
            Err(PredicateError::Shape(_))
        ));
        assert!(matches!(
            Predicate::parse("bad key:x"),
            Err(PredicateError::Key(_))
        ));
        assert_eq!(Predicate::parse("k:"), Err(PredicateError::Value));
    }

    #[test]
    fn an_event_matches_when_topic_and_every_predicate_do() {
        let s = sub("attribution/#", &["identity_uuid:i1", "kind:state"]);
        let yes = event(
            "attribution/profile/state_changed",
            json!({"identity_uuid": "i1", "kind": "state"}),
        );
        let other_identity = event(
            "attribution/profile/state_changed",
            json!({"identity_uuid": "i2", "kind": "state"}),
        );
        let missing = event(
            "attribution/profile/state_changed",
            json!({"kind": "state"}),
        );
        let other_topic = event(
            "attackers/a/scored",
            json!({"identity_uuid": "i1", "kind": "state"}),
        );
        assert!(s.matches(&yes));
        assert!(!s.matches(&other_identity));
        assert!(!s.matches(&missing));
        assert!(!s.matches(&other_topic));
    }

    #[test]
    fn numbers_and_booleans_compare_as_written() {
        let s = sub("#", &["score:42", "hot:true"]);
        assert!(s.matches(&event("x", json!({"score": 42, "hot": true}))));
        assert!(!s.matches(&event("x", json!({"score": 42.5, "hot": true}))));
        assert!(!s.matches(&event("x", json!({"score": {"v": 42}, "hot": true}))));
    }

    #[test]
    fn too_many_predicates_are_refused() {
        let preds = (0..=MAX_PREDICATES)
            .map(|i| Predicate::new(&format!("k{i}"), "v").unwrap())
            .collect();
        assert_eq!(
            Subscription::with_predicates(TopicFilter::parse("#").unwrap(), preds),
            Err(PredicateError::TooMany)
        );
    }
}
