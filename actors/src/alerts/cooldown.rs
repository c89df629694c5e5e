//! Cooldown per (device, rule): a sustained breach alerts once per cooldown,
//! not once per frame, and its end is announced once. Pure: time is an
//! argument.
//!
//! A device that never breached costs nothing here: state is created at its
//! first breach. Evaluating a frame allocates nothing.

use std::collections::HashMap;

use crate::frame::{DeviceId, MetricsFrame};

use super::rules::Rule;

/// What a frame changed for one rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Breached and the cooldown has passed: alert.
    Fire { rule: usize, value: f64 },
    /// Back within the threshold after an announced breach: say so, once.
    Resolve { rule: usize, value: f64 },
}

#[derive(Debug, Clone, Copy, Default)]
struct RuleState {
    breaching: bool,
    /// An alert went out for the current breach (so its end is announced).
    announced: bool,
    last_alert_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Cooldown {
    devices: HashMap<DeviceId, Box<[RuleState]>>,
}

impl Cooldown {
    /// Evaluates `frame` against `rules` at `now_ms`, appending to `out`.
    pub fn evaluate(
        &mut self,
        rules: &[Rule],
        frame: &MetricsFrame,
        now_ms: u64,
        out: &mut Vec<Decision>,
    ) {
        let states = match self.devices.get_mut(frame.device_id.as_str()) {
            Some(states) => states,
            None => {
                let breached = rules
                    .iter()
                    .any(|r| r.field.read(frame).is_some_and(|v| r.breached(v)));
                if !breached {
                    return;
                }
                self.devices
                    .entry(frame.device_id.clone())
                    .or_insert_with(|| vec![RuleState::default(); rules.len()].into())
            }
        };
        for (i, (rule, state)) in rules.iter().zip(states.iter_mut()).enumerate() {
            let Some(value) = rule.field.read(frame) else {
                continue;
            };
            if rule.breached(value) {
                let due = state
                    .last_alert_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) >= rule.cooldown_ms);
                if due {
                    state.last_alert_ms = Some(now_ms);
                    state.announced = true;
                    out.push(Decision::Fire { rule: i, value });
                }
                state.breaching = true;
            } else if state.breaching {
                state.breaching = false;
                if std::mem::take(&mut state.announced) {
                    out.push(Decision::Resolve { rule: i, value });
                }
            }
        }
    }

    /// Drops a forgotten device's state.
    pub fn forget(&mut self, device: &str) {
        self.devices.remove(device);
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::alerts::rules::RuleSpec;

    fn rules(cooldown_s: u64) -> Vec<Rule> {
        let spec = |name: &str, field: &str, above| RuleSpec {
            name: name.into(),
            field: field.into(),
            above: Some(above),
            below: None,
            cooldown: None,
        };
        [
            spec("cpu_high", "cpu_percent", 90.0),
            spec("mem_high", "mem_percent", 80.0),
        ]
        .iter()
        .map(|s| Rule::compile(s, Duration::from_secs(cooldown_s)).unwrap())
        .collect()
    }

    fn frame(device: &str, cpu: f64, mem: f64) -> MetricsFrame {
        let json = format!(
            r#"{{"device_id":"{device}","timestamp":1,"cpu_percent":{cpu},"mem_percent":{mem},"disk_percent":3}}"#
        );
        MetricsFrame::parse(device, json.as_bytes(), 4096).unwrap()
    }

    fn run(c: &mut Cooldown, rules: &[Rule], f: &MetricsFrame, now: u64) -> Vec<Decision> {
        let mut out = Vec::new();
        c.evaluate(rules, f, now, &mut out);
        out
    }

    #[test]
    fn a_sustained_breach_alerts_once_per_cooldown() {
        let r = rules(60);
        let mut c = Cooldown::default();
        let hot = frame("d1", 95.0, 10.0);
        let mut fired = Vec::new();
        // One frame per second for three minutes.
        for s in 0..180u64 {
            for d in run(&mut c, &r, &hot, s * 1000) {
                fired.push((s, d));
            }
        }
        let times: Vec<u64> = fired.iter().map(|(s, _)| *s).collect();
        assert_eq!(times, vec![0, 60, 120]);
        assert!(fired
            .iter()
            .all(|(_, d)| matches!(d, Decision::Fire { rule: 0, .. })));
    }

    #[test]
    fn recovery_is_announced_once_and_only_after_an_alert() {
        let r = rules(60);
        let mut c = Cooldown::default();
        assert_eq!(run(&mut c, &r, &frame("d1", 95.0, 0.0), 0).len(), 1);
        assert_eq!(
            run(&mut c, &r, &frame("d1", 40.0, 0.0), 1000),
            vec![Decision::Resolve {
                rule: 0,
                value: 40.0
            }]
        );
        assert!(run(&mut c, &r, &frame("d1", 40.0, 0.0), 2000).is_empty());
        // A new breach within the cooldown is held back, so its end is not
        // announced either: nothing was said about it.
        assert!(run(&mut c, &r, &frame("d1", 99.0, 0.0), 3000).is_empty());
        assert!(run(&mut c, &r, &frame("d1", 10.0, 0.0), 4000).is_empty());
    }

    #[test]
    fn devices_and_rules_are_independent() {
        let r = rules(60);
        let mut c = Cooldown::default();
        assert_eq!(run(&mut c, &r, &frame("d1", 95.0, 0.0), 0).len(), 1);
        assert_eq!(run(&mut c, &r, &frame("d2", 95.0, 0.0), 10).len(), 1);
        assert_eq!(
            run(&mut c, &r, &frame("d1", 95.0, 85.0), 20),
            vec![Decision::Fire {
                rule: 1,
                value: 85.0
            }],
            "mem_high on d1 has its own cooldown"
        );
        assert!(run(&mut c, &r, &frame("d2", 95.0, 0.0), 30).is_empty());
    }

    #[test]
    fn healthy_devices_keep_no_state() {
        let r = rules(60);
        let mut c = Cooldown::default();
        for i in 0..100 {
            run(&mut c, &r, &frame(&format!("d{i}"), 10.0, 10.0), 0);
        }
        assert!(c.is_empty());
        run(&mut c, &r, &frame("d1", 95.0, 0.0), 0);
        assert_eq!(c.len(), 1);
        c.forget("d1");
        assert!(c.is_empty());
    }

    proptest! {
        /// Never two alerts for one device and rule within the cooldown, and
        /// always an alert for the first breach.
        #[test]
        fn never_two_alerts_within_a_cooldown(
            steps in prop::collection::vec((0u64..5_000, 0.0f64..100.0), 1..200),
            cooldown_s in 0u64..10,
        ) {
            let r = rules(cooldown_s);
            let mut c = Cooldown::default();
            let mut now = 0;
            let mut last_fire: Option<u64> = None;
            let mut first_breach_seen = false;
            for (dt, cpu) in steps {
                now += dt;
                let out = run(&mut c, &r, &frame("d1", cpu, 0.0), now);
                let fired = out.iter().any(|d| matches!(d, Decision::Fire { rule: 0, .. }));
                if cpu >= 90.0 && !first_breach_seen {
                    first_breach_seen = true;
                    prop_assert!(fired, "the first breach always alerts");
                }
                if fired {
                    if let Some(t) = last_fire {
                        prop_assert!(now - t >= cooldown_s * 1000);
                    }
                    last_fire = Some(now);
                }
            }
        }
    }
}
