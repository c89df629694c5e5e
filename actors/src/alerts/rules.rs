//! Threshold rules (`alerts.rules`): which metric, which threshold, which
//! cooldown. Checked once at start, so evaluating a frame is a field read
//! and two comparisons per rule: no string matching, no allocation.

use std::sync::Arc;
use std::time::Duration;

pub use crate::frame::Field;

/// Rule names that fleet-health and upload detectors and digests use for
/// themselves.
pub const RESERVED_NAMES: [&str; 6] = [
    "silent",
    "rejecting",
    "security_digest",
    "uploads-silent",
    "uploads-fatal-only",
    "uploads-unstamped",
];

/// A rule as configured (the service shell fills it from settings).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub name: String,
    pub field: String,
    pub above: Option<f64>,
    pub below: Option<f64>,
    /// `None` = the default cooldown (`alerts.cooldown_seconds`).
    pub cooldown: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("rule {0:?}: unknown field {1:?}")]
    UnknownField(String, String),
    #[error("rule {0:?}: needs `above`, `below` or both, as finite numbers")]
    NoThreshold(String),
    #[error("rule name {0:?} is reserved for edgebus's own detectors")]
    ReservedName(String),
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: Arc<str>,
    pub field: Field,
    /// Breached at or above this value.
    pub above: Option<f64>,
    /// Breached at or below this value.
    pub below: Option<f64>,
    pub cooldown_ms: u64,
}

impl Rule {
    pub fn compile(spec: &RuleSpec, default_cooldown: Duration) -> Result<Self, RuleError> {
        if RESERVED_NAMES.contains(&spec.name.as_str()) {
            return Err(RuleError::ReservedName(spec.name.clone()));
        }
        let field = Field::parse(&spec.field)
            .ok_or_else(|| RuleError::UnknownField(spec.name.clone(), spec.field.clone()))?;
        let finite = |v: &Option<f64>| v.is_none_or(f64::is_finite);
        if (spec.above.is_none() && spec.below.is_none())
            || !finite(&spec.above)
            || !finite(&spec.below)
        {
            return Err(RuleError::NoThreshold(spec.name.clone()));
        }
        Ok(Self {
            name: spec.name.as_str().into(),
            field,
            above: spec.above,
            below: spec.below,
            cooldown_ms: spec.cooldown.unwrap_or(default_cooldown).as_millis() as u64,
        })
    }

    /// The seed bridge alerted at `cpu >= threshold`: thresholds are inclusive.
    #[inline]
    pub fn breached(&self, value: f64) -> bool {
        self.above.is_some_and(|a| value >= a) || self.below.is_some_and(|b| value <= b)
    }

    /// "above 90", "below 5", "above 90 or below 5".
    pub fn threshold_text(&self) -> String {
        match (self.above, self.below) {
            (Some(a), Some(b)) => format!("above {a} or below {b}"),
            (Some(a), None) => format!("above {a}"),
            (None, Some(b)) => format!("below {b}"),
            (None, None) => "none".to_owned(),
        }
    }
}

/// Compiles every spec, or names the first bad one.
pub fn compile_all(specs: &[RuleSpec], default_cooldown: Duration) -> Result<Vec<Rule>, RuleError> {
    specs
        .iter()
        .map(|spec| Rule::compile(spec, default_cooldown))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MetricsFrame;

    fn spec(name: &str, field: &str, above: Option<f64>, below: Option<f64>) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            field: field.into(),
            above,
            below,
            cooldown: None,
        }
    }

    fn frame(cpu: f64, gpu: Option<f64>) -> MetricsFrame {
        let gpu = gpu
            .map(|g| format!(r#","gpu_percent":{g}"#))
            .unwrap_or_default();
        let json = format!(
            r#"{{"device_id":"d1","timestamp":1,"cpu_percent":{cpu},"mem_percent":2,"disk_percent":3{gpu}}}"#
        );
        MetricsFrame::parse("d1", json.as_bytes(), 4096).unwrap()
    }

    #[test]
    fn thresholds_are_inclusive_like_the_seed() {
        let rule = Rule::compile(
            &spec("cpu_high", "cpu_percent", Some(90.0), None),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(!rule.breached(89.9));
        assert!(rule.breached(90.0));
        assert!(rule.breached(100.0));
        assert_eq!(rule.cooldown_ms, 60_000);
        let low = Rule::compile(
            &spec("disk_low", "disk_percent", None, Some(5.0)),
            Duration::ZERO,
        )
        .unwrap();
        assert!(low.breached(5.0) && low.breached(0.0) && !low.breached(5.1));
        let band = Rule::compile(
            &spec("band", "mem_percent", Some(90.0), Some(10.0)),
            Duration::ZERO,
        )
        .unwrap();
        assert!(band.breached(95.0) && band.breached(5.0) && !band.breached(50.0));
        assert_eq!(band.threshold_text(), "above 90 or below 10");
    }

    #[test]
    fn a_per_rule_cooldown_overrides_the_default() {
        let mut s = spec("cpu_high", "cpu_percent", Some(90.0), None);
        s.cooldown = Some(Duration::from_secs(5));
        assert_eq!(
            Rule::compile(&s, Duration::from_secs(60))
                .unwrap()
                .cooldown_ms,
            5_000
        );
    }

    #[test]
    fn bad_specs_are_refused_with_the_rule_named() {
        let d = Duration::ZERO;
        assert_eq!(
            Rule::compile(&spec("t", "temperature", Some(1.0), None), d),
            Err(RuleError::UnknownField("t".into(), "temperature".into()))
        );
        assert!(matches!(
            Rule::compile(&spec("t", "cpu_percent", None, None), d),
            Err(RuleError::NoThreshold(_))
        ));
        assert!(matches!(
            Rule::compile(&spec("t", "cpu_percent", Some(f64::NAN), None), d),
            Err(RuleError::NoThreshold(_))
        ));
        assert!(matches!(
            Rule::compile(&spec("silent", "cpu_percent", Some(1.0), None), d),
            Err(RuleError::ReservedName(_))
        ));
    }

    #[test]
    fn fields_read_the_frame_and_absent_optionals_are_none() {
        let f = frame(12.5, None);
        assert_eq!(Field::Cpu.read(&f), Some(12.5));
        assert_eq!(Field::Gpu.read(&f), None);
        assert_eq!(Field::Gpu.read(&frame(1.0, Some(33.0))), Some(33.0));
        for field in Field::ALL {
            assert_eq!(Field::parse(field.as_str()), Some(field));
        }
    }
}
