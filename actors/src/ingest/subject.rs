//! NATS subjects to edgebus topics: the pure rules behind the NATS source.
//!
//! A [`SubjectMap`] is an ordered list of rules, each a NATS subject pattern
//! (`*` = one token, `>` = one or more trailing tokens) and a topic template.
//! The first rule whose pattern matches the subject builds the topic; a
//! subject no rule matches becomes its tokens joined with `/`
//! (`attacker.scored` → `attacker/scored`).
//!
//! Template syntax, in `{…}` placeholders between literal text:
//! - `{name}`: the payload's top-level string field `name`; a payload that
//!   is a DECNET bus envelope (`{"v":…,"payload":{…}}`) is looked into when
//!   the field is not at the top;
//! - `{0}`, `{1}`, …: the subject's token at that index (0 = the first);
//! - `{>}`: the tokens the pattern's `>` matched, joined with `/`;
//! - `{>.}`: the same tokens joined with `.`, as one topic level (DECNET's
//!   dotted primitives: `attacker.observation.motor.input_modality` →
//!   `…/observation/motor.input_modality`).
//!
//! A substituted value must be one valid topic level (not empty, no `/`,
//! `+`, `#` or control character): a payload cannot inject levels.

use serde_json::{Map, Value};

use crate::topic::{validate_topic, TopicFilter};

/// Why a subject or its payload could not be turned into a topic: the
/// frame is rejected (`bad_topic`) with this as its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("NATS subject `{subject}`: payload field `{field}` is missing or not a string")]
    MissingField { subject: String, field: String },
    #[error("NATS subject `{subject}`: `{{{placeholder}}}` gave {value:?}, not one topic level")]
    BadLevel {
        subject: String,
        placeholder: String,
        value: String,
    },
    #[error("NATS subject `{subject}` mapped to `{topic}`: {reason}")]
    BadTopic {
        subject: String,
        topic: String,
        reason: String,
    },
    #[error("NATS subject `{subject}` mapped to `{topic}`, which is not in mqtt.topics or nats.allow_topics")]
    NotAllowed { subject: String, topic: String },
}

/// A mapping rule that cannot be used, found at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("subject {0:?}: {1}")]
    Subject(String, &'static str),
    #[error("topic {0:?}: {1}")]
    Template(String, String),
}

/// Checks a NATS subject or subscription pattern: dot-separated non-empty
/// tokens without whitespace; `*` and `>` only as whole tokens, `>` last.
pub fn validate_subject(subject: &str) -> Result<(), RuleError> {
    let bad = |rule| Err(RuleError::Subject(subject.to_owned(), rule));
    if subject.is_empty() {
        return bad("is empty");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return bad("has an empty token");
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("contains whitespace or a control character");
        }
        if token.len() > 1 && token.contains(['*', '>']) {
            return bad("a wildcard must be a whole token");
        }
        if *token == ">" && i + 1 != tokens.len() {
            return bad("`>` must be the last token");
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(String),
    Token(usize),
    Tail,
    /// The tail as one level, its tokens joined with dots.
    DottedTail,
}

/// One rule: a subject pattern and the template of its topic.
#[derive(Debug, Clone)]
pub struct Rule {
    pattern: Vec<String>,
    template: Vec<Part>,
}

impl Rule {
    pub fn parse(subject: &str, topic: &str) -> Result<Self, RuleError> {
        validate_subject(subject)?;
        let pattern: Vec<String> = subject.split('.').map(str::to_owned).collect();
        let bad = |rule: String| RuleError::Template(topic.to_owned(), rule);
        let mut template = Vec::new();
        let mut rest = topic;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                template.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| bad("unclosed `{`".into()))?
                + open;
            let name = &rest[open + 1..close];
            template.push(match name {
                ">" if pattern.last().is_some_and(|t| t == ">") => Part::Tail,
                ">." if pattern.last().is_some_and(|t| t == ">") => Part::DottedTail,
                ">" | ">." => {
                    return Err(bad(format!("`{{{name}}}` needs a subject ending in `>`")))
                }
                "" => return Err(bad("empty `{}`".into())),
                _ if name.bytes().all(|b| b.is_ascii_digit()) => {
                    let index: usize = name.parse().map_err(|_| bad(format!("`{{{name}}}`")))?;
                    // A fixed index must exist in every subject the pattern matches.
                    let fixed = pattern.iter().filter(|t| *t != ">").count();
                    if index >= fixed {
                        return Err(bad(format!(
                            "`{{{index}}}`: the subject pattern has {fixed} fixed token(s)"
                        )));
                    }
                    Part::Token(index)
                }
                _ if name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
                {
                    Part::Field(name.to_owned())
                }
                _ => {
                    return Err(bad(format!(
                        "`{{{name}}}` is not a field name, index or `>`"
                    )))
                }
            });
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(bad("`}` without `{`".into()));
        }
        if !rest.is_empty() {
            template.push(Part::Literal(rest.to_owned()));
        }
        // The literal skeleton must already be a topic name.
        let skeleton: String = template
            .iter()
            .map(|p| match p {
                Part::Literal(text) => text.as_str(),
                _ => "x",
            })
            .collect();
        validate_topic(&skeleton).map_err(|e| bad(e.to_string()))?;
        Ok(Self { pattern, template })
    }

    /// The subject's tail matched by `>`, or `None` if the subject does not
    /// match this rule (`Some(&[])` when the pattern has no `>`).
    fn matches<'s>(&self, tokens: &'s [&'s str]) -> Option<&'s [&'s str]> {
        for (i, p) in self.pattern.iter().enumerate() {
            match p.as_str() {
                ">" => return (i < tokens.len()).then(|| &tokens[i..]),
                "*" if i < tokens.len() => {}
                exact if tokens.get(i) == Some(&exact) => {}
                _ => return None,
            }
        }
        (tokens.len() == self.pattern.len()).then_some(&[][..])
    }
}

/// The rules DECNET's publishers need to land on edgebus's attacker
/// families. Attribution subjects need none: `attribution.profile.x` →
/// `attribution/profile/x` by the default rule. A primitive may have dots
/// of its own (`motor.input_modality`): it stays one level.
pub const DECNET_RULES: [(&str, &str); 3] = [
    (
        "attacker.observation.>",
        "attackers/{attacker_uuid}/observation/{>.}",
    ),
    (
        "attacker.fingerprint_rotated",
        "attackers/{attacker_uuid}/fingerprint_rotated",
    ),
    ("attacker.scored", "attackers/{attacker_uuid}/scored"),
];

/// The subjects subscribed by default: what DECNET publishes.
pub const DECNET_SUBJECTS: [&str; 4] = [
    "attacker.observation.>",
    "attacker.fingerprint_rotated",
    "attacker.scored",
    "attribution.>",
];

/// Ordered rules and the topics a mapped frame may land on.
#[derive(Debug, Clone)]
pub struct SubjectMap {
    rules: Vec<Rule>,
    allowed: Vec<TopicFilter>,
}

impl SubjectMap {
    /// `rules` are tried in order, before [`DECNET_RULES`]; a topic is
    /// taken only if some filter in `allowed` matches it.
    pub fn new(mut rules: Vec<Rule>, allowed: Vec<TopicFilter>) -> Self {
        for (subject, topic) in DECNET_RULES {
            if let Ok(rule) = Rule::parse(subject, topic) {
                rules.push(rule);
            }
        }
        Self { rules, allowed }
    }

    /// The topic for a message on `subject` carrying `payload`.
    pub fn topic(&self, subject: &str, payload: &[u8]) -> Result<String, MapError> {
        let tokens: Vec<&str> = subject.split('.').collect();
        let topic = match self
            .rules
            .iter()
            .find_map(|r| Some((r, r.matches(&tokens)?)))
        {
            Some((rule, tail)) => fill(rule, subject, &tokens, tail, payload)?,
            None => tokens.join("/"),
        };
        validate_topic(&topic).map_err(|e| MapError::BadTopic {
            subject: subject.to_owned(),
            topic: topic.clone(),
            reason: e.to_string(),
        })?;
        if !self.allowed.iter().any(|f| f.matches(&topic)) {
            return Err(MapError::NotAllowed {
                subject: subject.to_owned(),
                topic,
            });
        }
        Ok(topic)
    }

    /// What a rejected message's report names as its topic: the subject's
    /// tokens joined with `/`, made safe to show.
    pub fn reject_topic(subject: &str) -> String {
        let topic: String = subject
            .chars()
            .map(|c| match c {
                '.' => '/',
                '+' | '#' => '_',
                c if c.is_control() => '_',
                c => c,
            })
            .collect();
        if validate_topic(&topic).is_ok() {
            topic
        } else {
            "nats/invalid_subject".into()
        }
    }
}

fn fill(
    rule: &Rule,
    subject: &str,
    tokens: &[&str],
    tail: &[&str],
    payload: &[u8],
) -> Result<String, MapError> {
    // Parsed only when a field is wanted, and only for its fields: the
    // whole payload is validated again by `accept`.
    let object = rule
        .template
        .iter()
        .any(|p| matches!(p, Part::Field(_)))
        .then(|| serde_json::from_slice::<Map<String, Value>>(payload).ok())
        .flatten();
    let mut topic = String::new();
    for part in &rule.template {
        let (placeholder, value) = match part {
            Part::Literal(text) => {
                topic.push_str(text);
                continue;
            }
            Part::Token(i) => (i.to_string(), tokens.get(*i).copied().unwrap_or_default()),
            Part::Tail => {
                topic.push_str(&tail.join("/"));
                continue;
            }
            Part::DottedTail => {
                let value = tail.join(".");
                if !is_level(&value) {
                    return Err(MapError::BadLevel {
                        subject: subject.to_owned(),
                        placeholder: ">.".into(),
                        value: value.chars().take(64).collect(),
                    });
                }
                topic.push_str(&value);
                continue;
            }
            Part::Field(name) => {
                let value = object
                    .as_ref()
                    .and_then(|o| field(o, name))
                    .ok_or_else(|| MapError::MissingField {
                        subject: subject.to_owned(),
                        field: name.clone(),
                    })?;
                (name.clone(), value)
            }
        };
        if !is_level(value) {
            return Err(MapError::BadLevel {
                subject: subject.to_owned(),
                placeholder,
                value: value.chars().take(64).collect(),
            });
        }
        topic.push_str(value);
    }
    Ok(topic)
}

/// A top-level string field, or the same field of a DECNET envelope's
/// `payload` object.
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    match object.get(name) {
        Some(Value::String(value)) => Some(value),
        Some(_) => None,
        None => crate::event::envelope_payload(object)?
            .get(name)
            .and_then(Value::as_str),
    }
}

fn is_level(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && !value.contains(['/', '+', '#'])
        && !value.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decnet() -> SubjectMap {
        let allowed = ["attackers/#", "attribution/#"]
            .iter()
            .map(|f| TopicFilter::parse(f).unwrap())
            .collect();
        SubjectMap::new(Vec::new(), allowed)
    }

    const SCORED: &[u8] = br#"{"attacker_uuid":"a-1","score":0.9}"#;

    #[test]
    fn decnet_subjects_land_on_the_attacker_families() {
        let map = decnet();
        assert_eq!(
            map.topic("attacker.scored", SCORED).unwrap(),
            "attackers/a-1/scored"
        );
        assert_eq!(
            map.topic("attacker.observation.ja3", SCORED).unwrap(),
            "attackers/a-1/observation/ja3"
        );
        assert_eq!(
            map.topic("attacker.fingerprint_rotated", SCORED).unwrap(),
            "attackers/a-1/fingerprint_rotated"
        );
        assert_eq!(
            map.topic("attribution.profile.state_changed", b"{}")
                .unwrap(),
            "attribution/profile/state_changed"
        );
    }

    #[test]
    fn fields_are_read_through_a_decnet_envelope() {
        let envelope = br#"{"v":1,"id":"x","topic":"attacker.scored","type":"","ts":1.5,
            "payload":{"attacker_uuid":"a-2","score":1}}"#;
        assert_eq!(
            decnet().topic("attacker.scored", envelope).unwrap(),
            "attackers/a-2/scored"
        );
    }

    #[test]
    fn a_missing_or_unsafe_field_is_a_reason() {
        let map = decnet();
        for payload in [&b"{}"[..], br#"{"attacker_uuid":7}"#, b"not json"] {
            assert!(matches!(
                map.topic("attacker.scored", payload),
                Err(MapError::MissingField { .. })
            ));
        }
        for bad in ["a/b", "#", "+", "", "a\nb"] {
            let payload = serde_json::json!({ "attacker_uuid": bad }).to_string();
            let err = map
                .topic("attacker.scored", payload.as_bytes())
                .unwrap_err();
            assert!(matches!(err, MapError::BadLevel { .. }), "{bad:?}: {err}");
        }
        let err = map.topic("attacker.scored", b"{}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "NATS subject `attacker.scored`: payload field `attacker_uuid` is missing or not a string"
        );
    }

    #[test]
    fn unmapped_subjects_become_slashes_and_must_be_allowed() {
        let map = decnet();
        assert_eq!(map.topic("attribution.x", b"{}").unwrap(), "attribution/x");
        assert!(matches!(
            map.topic("plant.boiler", b"{}"),
            Err(MapError::NotAllowed { .. })
        ));
        // A dotted primitive (DECNET's `motor.input_modality`) is one level.
        assert_eq!(
            map.topic("attacker.observation.motor.input_modality", SCORED)
                .unwrap(),
            "attackers/a-1/observation/motor.input_modality"
        );
        assert!(matches!(
            map.topic("attacker.observation.a/b.c", SCORED),
            Err(MapError::BadLevel { .. })
        ));
        // `attacker.observation` alone has no primitive: the default rule,
        // which lands outside attackers/{id}/….
        assert_eq!(
            map.topic("attacker.observation", SCORED).unwrap_err(),
            MapError::NotAllowed {
                subject: "attacker.observation".into(),
                topic: "attacker/observation".into()
            }
        );
    }

    #[test]
    fn configured_rules_come_first_and_can_use_tokens_and_the_tail() {
        let rules = vec![
            Rule::parse("attacker.scored", "attackers/{attacker_uuid}/score").unwrap(),
            Rule::parse("plant.*.>", "plants/{1}/{>}").unwrap(),
        ];
        let allowed = vec![TopicFilter::parse("#").unwrap()];
        let map = SubjectMap::new(rules, allowed);
        assert_eq!(
            map.topic("attacker.scored", SCORED).unwrap(),
            "attackers/a-1/score"
        );
        assert_eq!(
            map.topic("plant.p1.boiler.temp", b"{}").unwrap(),
            "plants/p1/boiler/temp"
        );
        assert_eq!(map.topic("plant.p1", b"{}").unwrap(), "plant/p1");
    }

    #[test]
    fn bad_rules_are_refused_at_start() {
        for (subject, topic) in [
            ("a..b", "x"),
            ("a.>.b", "x"),
            ("a.b*", "x"),
            ("a b", "x"),
            ("a.b", "x/{"),
            ("a.b", "x/{}"),
            ("a.b", "x/{>}"),
            ("a.b", "x/{2}"),
            ("a.>", "x/{1}"),
            ("a.b", "x/{a.b}"),
            ("a.b", "x/#"),
            ("a.b", "x}"),
        ] {
            assert!(Rule::parse(subject, topic).is_err(), "{subject} → {topic}");
        }
        assert!(Rule::parse("a.*.>", "x/{0}/{1}/{>}/{f}").is_ok());
        assert!(Rule::parse("a.>", "x/{>.}").is_ok());
        assert!(Rule::parse("a.b", "x/{>.}").is_err());
    }

    #[test]
    fn reject_reports_name_a_safe_topic() {
        assert_eq!(
            SubjectMap::reject_topic("attacker.scored"),
            "attacker/scored"
        );
        assert_eq!(SubjectMap::reject_topic("a.#.+"), "a/_/_");
    }
}
