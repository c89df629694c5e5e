//! `[alerts]`: threshold rules and the security digests' budgets.

use std::time::Duration;

use serde::Deserialize;

use edgebus_actors::alerts::rules::{self, Rule, RuleSpec};
use edgebus_actors::frame::Field;

use super::{de, invalid, SettingsError};

/// `[alerts]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    #[serde(rename = "cooldown_seconds", deserialize_with = "de::seconds")]
    cooldown: Duration,
    rules: Vec<RawAlertRule>,
    #[serde(rename = "digest_window_seconds", deserialize_with = "de::seconds")]
    digest_window: Duration,
    max_digests_per_window: u32,
    #[serde(rename = "rejecting_window_seconds", deserialize_with = "de::seconds")]
    rejecting_window: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertRule {
    name: String,
    field: String,
    #[serde(default)]
    above: Option<f64>,
    #[serde(default)]
    below: Option<f64>,
    #[serde(default)]
    cooldown_seconds: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// Checked, with `alerts.cooldown_seconds` filled in where a rule has
    /// no cooldown of its own.
    pub rules: Vec<Rule>,
    /// Security digests: at most one roll-up per attacker per window.
    pub digest_window: Duration,
    /// …and at most this many roll-ups per window overall.
    pub max_digests_per_window: u32,
    /// A device with only rejected frames for this long is `rejecting`.
    pub rejecting_window: Duration,
}

impl RawAlerts {
    pub(super) fn validate(self) -> Result<AlertSettings, SettingsError> {
        if self.digest_window.as_secs() < 1 {
            return Err(invalid(
                "alerts.digest_window_seconds",
                "must be at least 1",
            ));
        }
        if self.rejecting_window.as_secs() < 1 {
            return Err(invalid(
                "alerts.rejecting_window_seconds",
                "must be at least 1",
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut compiled = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.iter().enumerate() {
            let at = |field: &str| format!("alerts.rules[{i}].{field}");
            let name_ok = (1..=64).contains(&rule.name.len())
                && rule
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok || !names.insert(rule.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    "must be unique and match ^[A-Za-z0-9_-]{1,64}$",
                ));
            }
            if rules::RESERVED_NAMES.contains(&rule.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    format!("{:?} is reserved for edgebus's own detectors", rule.name),
                ));
            }
            if Field::parse(&rule.field).is_none() {
                let names: Vec<&str> = Field::ALL.iter().map(|f| f.as_str()).collect();
                return Err(invalid(
                    at("field"),
                    format!("must be one of {}", names.join(", ")),
                ));
            }
            if rule.above.is_none() && rule.below.is_none() {
                return Err(invalid(
                    at("above"),
                    "a rule needs `above`, `below` or both",
                ));
            }
            if rule.above.iter().chain(&rule.below).any(|v| !v.is_finite()) {
                return Err(invalid(at("above"), "thresholds must be finite numbers"));
            }
            let spec = RuleSpec {
                name: rule.name.clone(),
                field: rule.field.clone(),
                above: rule.above,
                below: rule.below,
                cooldown: rule.cooldown_seconds.map(Duration::from_secs),
            };
            // The checks above cover every reason compiling refuses a rule;
            // should the engine add one, it is named here all the same.
            compiled.push(
                Rule::compile(&spec, self.cooldown)
                    .map_err(|e| invalid(format!("alerts.rules[{i}]"), e.to_string()))?,
            );
        }
        Ok(AlertSettings {
            rules: compiled,
            digest_window: self.digest_window,
            max_digests_per_window: self.max_digests_per_window,
            rejecting_window: self.rejecting_window,
        })
    }
}
