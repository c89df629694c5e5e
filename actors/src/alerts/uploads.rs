//! Upload-health detectors, per host, after the seed receiver's
//! `check_fleet_health`, fed by the `uploads/{host}` events (one per upload
//! attempt that passed authentication):
//!
//! - **silent**: a host that made an attempt in the last 24 h but none for
//!   `silent_after`;
//! - **fatal-only**: at least [`FATAL_MIN_ATTEMPTS`] attempts within
//!   `fatal_window`, every one refused for the host's own fault (a 4xx other
//!   than 429), none stored or duplicate in that window. A 429 or a 5xx is
//!   edgebus's trouble, not the host's: it neither counts nor breaks the run;
//! - **unstamped**: an attempt without the commit header.
//!
//! Each is reported at most once per (host, symptom, UTC hour bucket) and
//! its end announced once ([`super::episode`]): an attempt after a silence,
//! a 2xx after fatal-only, a stamped attempt after unstamped. Pure: time is
//! an argument; the actor arms one timer for [`Uploads::next_deadline`].

use std::collections::{HashMap, VecDeque};

use crate::frame::DeviceId;

use super::episode::{Episode, Quiet, Silence, SilenceWatch, Watched};

/// One refused upload is a glitch; this many within the window, with none
/// stored, is a host that cannot ship.
pub const FATAL_MIN_ATTEMPTS: usize = 3;

/// What an attempt's HTTP status says about the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: stored or already present.
    Ok,
    /// 4xx except 429: the host sent something edgebus refuses.
    Refused,
    /// 429, 5xx (and anything else): edgebus was busy or failed; says
    /// nothing about the host.
    Other,
}

impl Outcome {
    pub fn from_http_status(status: u16) -> Self {
        match status {
            200..=299 => Outcome::Ok,
            429 => Outcome::Other,
            400..=499 => Outcome::Refused,
            _ => Outcome::Other,
        }
    }
}

/// One upload attempt, as its `uploads/{host}` event tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt<'a> {
    pub http_status: u16,
    /// The outcome's label (`stale-commit`, `sha-mismatch`, …), if given.
    pub status: Option<&'a str>,
    /// Whether the request carried the commit header; `None` if unknown.
    pub stamped: Option<bool>,
}

impl Attempt<'_> {
    pub fn outcome(&self) -> Outcome {
        Outcome::from_http_status(self.http_status)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UploadSymptom {
    Silent,
    FatalOnly,
    Unstamped,
}

impl UploadSymptom {
    pub const ALL: [UploadSymptom; 3] = [
        UploadSymptom::Silent,
        UploadSymptom::FatalOnly,
        UploadSymptom::Unstamped,
    ];

    /// The symptom as the seed's `alerts.jsonl` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadSymptom::Silent => "silent",
            UploadSymptom::FatalOnly => "fatal-only",
            UploadSymptom::Unstamped => "unstamped",
        }
    }

    /// The alert rule it is raised under (`alerts/{host}/{rule}`).
    pub fn rule(self) -> &'static str {
        match self {
            UploadSymptom::Silent => "uploads-silent",
            UploadSymptom::FatalOnly => "uploads-fatal-only",
            UploadSymptom::Unstamped => "uploads-unstamped",
        }
    }

    pub fn from_rule(rule: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.rule() == rule)
    }
}

/// What the detectors found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadNotice {
    Silent {
        host: DeviceId,
        last_attempt_ms: u64,
    },
    FatalOnly {
        host: DeviceId,
        /// Host refusals since its last stored upload (or since it was first
        /// seen).
        refused: u64,
        /// The refusal that made it fatal-only.
        http_status: u16,
        status: Option<String>,
    },
    Unstamped {
        host: DeviceId,
        http_status: u16,
    },
    Resolved {
        host: DeviceId,
        symptom: UploadSymptom,
    },
    /// No attempt for [`FORGET_AFTER_MS`]: the host's state is gone.
    Forgotten {
        host: DeviceId,
    },
}

/// Longest outcome label kept for a notice: labels are edgebus's own, this
/// only keeps a notice small whatever the event said.
const MAX_STATUS_CHARS: usize = 32;

#[derive(Debug)]
struct HostUploads {
    silence: Silence,
    last_ok_ms: Option<u64>,
    /// The last [`FATAL_MIN_ATTEMPTS`] host refusals since the last 2xx,
    /// oldest first.
    recent_refusals: VecDeque<u64>,
    refused: u64,
    fatal_only: Episode,
    unstamped: Episode,
}

impl Watched for HostUploads {
    fn silence(&mut self) -> &mut Silence {
        &mut self.silence
    }
}

impl HostUploads {
    fn new(now_ms: u64) -> Self {
        Self {
            silence: Silence::new(now_ms),
            last_ok_ms: None,
            recent_refusals: VecDeque::with_capacity(FATAL_MIN_ATTEMPTS),
            refused: 0,
            fatal_only: Episode::default(),
            unstamped: Episode::default(),
        }
    }
}

#[derive(Debug)]
pub struct Uploads {
    hosts: HashMap<DeviceId, HostUploads>,
    watch: SilenceWatch,
    fatal_window_ms: u64,
    /// Hosts tracked at once: host ids come from authenticated publishers,
    /// but their number is still theirs to choose.
    max_hosts: usize,
    /// Attempts from hosts beyond `max_hosts`, not looked at.
    untracked: u64,
}

impl Uploads {
    pub fn new(silent_after_ms: u64, fatal_window_ms: u64, max_hosts: usize) -> Self {
        Self {
            hosts: HashMap::new(),
            watch: SilenceWatch::new(silent_after_ms),
            fatal_window_ms,
            max_hosts,
            untracked: 0,
        }
    }

    /// One upload attempt by `host`.
    pub fn attempt(
        &mut self,
        host: &DeviceId,
        attempt: Attempt<'_>,
        now_ms: u64,
        out: &mut Vec<UploadNotice>,
    ) {
        let window = self.fatal_window_ms;
        let Some(h) = self.touch(host, now_ms, out) else {
            return;
        };
        match attempt.outcome() {
            Outcome::Ok => {
                h.last_ok_ms = Some(h.last_ok_ms.map_or(now_ms, |t| t.max(now_ms)));
                h.recent_refusals.clear();
                h.refused = 0;
                if h.fatal_only.clear() {
                    out.push(UploadNotice::Resolved {
                        host: host.clone(),
                        symptom: UploadSymptom::FatalOnly,
                    });
                }
            }
            Outcome::Refused => {
                if h.recent_refusals.len() == FATAL_MIN_ATTEMPTS {
                    h.recent_refusals.pop_front();
                }
                h.recent_refusals.push_back(now_ms);
                h.refused += 1;
                let within = |t: u64| now_ms.saturating_sub(t) < window;
                let enough = h.recent_refusals.len() == FATAL_MIN_ATTEMPTS
                    && h.recent_refusals.front().is_some_and(|&t| within(t));
                let none_ok = !h.last_ok_ms.is_some_and(within);
                if enough && none_ok && h.fatal_only.admit(now_ms) {
                    out.push(UploadNotice::FatalOnly {
                        host: host.clone(),
                        refused: h.refused,
                        http_status: attempt.http_status,
                        status: attempt
                            .status
                            .map(|s| s.chars().take(MAX_STATUS_CHARS).collect()),
                    });
                }
            }
            Outcome::Other => {}
        }
        match attempt.stamped {
            Some(false) if h.unstamped.admit(now_ms) => out.push(UploadNotice::Unstamped {
                host: host.clone(),
                http_status: attempt.http_status,
            }),
            Some(true) if h.unstamped.clear() => out.push(UploadNotice::Resolved {
                host: host.clone(),
                symptom: UploadSymptom::Unstamped,
            }),
            _ => {}
        }
    }

    /// Any attempt: refreshes last-seen, ends a silence, and makes sure a
    /// silence deadline is queued. `None` for a host over the cap.
    fn touch(
        &mut self,
        host: &DeviceId,
        now_ms: u64,
        out: &mut Vec<UploadNotice>,
    ) -> Option<&mut HostUploads> {
        if !self.hosts.contains_key(host.as_str()) {
            if self.hosts.len() >= self.max_hosts {
                self.untracked += 1;
                return None;
            }
            self.hosts.insert(host.clone(), HostUploads::new(now_ms));
        }
        let h = self.hosts.get_mut(host.as_str())?;
        if self.watch.heard(host, &mut h.silence, now_ms) {
            out.push(UploadNotice::Resolved {
                host: host.clone(),
                symptom: UploadSymptom::Silent,
            });
        }
        Some(h)
    }

    /// Runs every check due at `now_ms`.
    pub fn due(&mut self, now_ms: u64, out: &mut Vec<UploadNotice>) {
        self.watch
            .due(now_ms, &mut self.hosts, |host, quiet| match quiet {
                Quiet::Forgotten => out.push(UploadNotice::Forgotten { host }),
                Quiet::Silent { last_seen_ms } => out.push(UploadNotice::Silent {
                    host,
                    last_attempt_ms: last_seen_ms,
                }),
            });
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.watch.next_deadline()
    }

    /// Hosts tracked now.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Attempts from hosts over the cap, ignored so far.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::episode::FORGET_AFTER_MS;
    use crate::alerts::episode::HOUR_MS;

    const MIN: u64 = 60_000;
    /// 2026-05-02T13:00:00Z: the start of an hour bucket.
    const T0: u64 = 1_777_726_800_000;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    fn uploads() -> Uploads {
        Uploads::new(30 * MIN, 30 * MIN, 100)
    }

    fn stamped(http_status: u16) -> Attempt<'static> {
        Attempt {
            http_status,
            status: None,
            stamped: Some(true),
        }
    }

    fn refused(status: &'static str) -> Attempt<'static> {
        Attempt {
            http_status: 412,
            status: Some(status),
            stamped: Some(true),
        }
    }

    fn attempt(u: &mut Uploads, host: &str, a: Attempt<'_>, now: u64) -> Vec<UploadNotice> {
        let mut out = Vec::new();
        u.attempt(&id(host), a, now, &mut out);
        out
    }

    fn due(u: &mut Uploads, now: u64) -> Vec<UploadNotice> {
        let mut out = Vec::new();
        u.due(now, &mut out);
        out
    }

    fn silent(host: &str, last_attempt_ms: u64) -> UploadNotice {
        UploadNotice::Silent {
            host: id(host),
            last_attempt_ms,
        }
    }

    fn resolved(host: &str, symptom: UploadSymptom) -> UploadNotice {
        UploadNotice::Resolved {
            host: id(host),
            symptom,
        }
    }

    fn is_fatal(n: &UploadNotice) -> bool {
        matches!(n, UploadNotice::FatalOnly { .. })
    }

    #[test]
    fn outcomes_follow_the_http_status() {
        assert_eq!(Outcome::from_http_status(201), Outcome::Ok);
        assert_eq!(Outcome::from_http_status(200), Outcome::Ok);
        for s in [400, 404, 409, 412, 413, 422] {
            assert_eq!(Outcome::from_http_status(s), Outcome::Refused, "{s}");
        }
        for s in [429, 500, 503, 504, 302, 100] {
            assert_eq!(Outcome::from_http_status(s), Outcome::Other, "{s}");
        }
    }

    #[test]
    fn a_quiet_host_is_silent_at_its_deadline_then_once_per_hour_until_it_returns() {
        let mut u = uploads();
        assert!(attempt(&mut u, "lab-01", stamped(201), T0 + 5 * MIN).is_empty());
        assert_eq!(u.next_deadline(), Some(T0 + 35 * MIN));
        assert!(due(&mut u, T0 + 34 * MIN).is_empty());
        assert_eq!(
            due(&mut u, T0 + 35 * MIN),
            vec![silent("lab-01", T0 + 5 * MIN)]
        );
        assert_eq!(u.next_deadline(), Some(T0 + 60 * MIN), "the next bucket");
        assert!(due(&mut u, T0 + 59 * MIN).is_empty());
        assert_eq!(
            due(&mut u, T0 + 60 * MIN),
            vec![silent("lab-01", T0 + 5 * MIN)]
        );
        // Any attempt ends it, even one edgebus was too busy for.
        assert_eq!(
            attempt(&mut u, "lab-01", stamped(429), T0 + 70 * MIN),
            vec![resolved("lab-01", UploadSymptom::Silent)]
        );
        assert!(attempt(&mut u, "lab-01", stamped(201), T0 + 71 * MIN).is_empty());
    }

    #[test]
    fn a_silent_host_is_forgotten_after_a_day() {
        let mut u = uploads();
        attempt(&mut u, "lab-01", stamped(201), T0);
        let (mut reports, mut now) = (0, T0);
        while let Some(at) = u.next_deadline() {
            now = at;
            for n in due(&mut u, at) {
                match n {
                    UploadNotice::Silent { .. } => reports += 1,
                    UploadNotice::Forgotten { host } => assert_eq!(host, id("lab-01")),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(now, T0 + FORGET_AFTER_MS);
        assert_eq!(
            reports, 24,
            "13:30, then every hour until 13:00 the next day"
        );
        assert!(u.is_empty());
        // Back after the day: a new host, nothing to resolve.
        assert!(attempt(&mut u, "lab-01", stamped(201), now + MIN).is_empty());
    }

    #[test]
    fn three_refusals_in_the_window_are_fatal_only_once_per_hour() {
        let mut u = uploads();
        assert!(attempt(&mut u, "lab-01", refused("stale-commit"), T0).is_empty());
        assert!(attempt(&mut u, "lab-01", refused("stale-commit"), T0 + MIN).is_empty());
        assert_eq!(
            attempt(&mut u, "lab-01", refused("stale-commit"), T0 + 2 * MIN),
            vec![UploadNotice::FatalOnly {
                host: id("lab-01"),
                refused: 3,
                http_status: 412,
                status: Some("stale-commit".into()),
            }]
        );
        for m in 3..60 {
            let out = attempt(&mut u, "lab-01", refused("stale-commit"), T0 + m * MIN);
            assert!(out.is_empty(), "same hour bucket at +{m} min: {out:?}");
        }
        let out = attempt(&mut u, "lab-01", refused("sha-mismatch"), T0 + HOUR_MS);
        assert!(
            matches!(
                &out[..],
                [UploadNotice::FatalOnly { refused: 61, http_status: 412, status: Some(s), .. }]
                    if s == "sha-mismatch"
            ),
            "the next bucket: {out:?}"
        );
        assert_eq!(
            attempt(&mut u, "lab-01", stamped(201), T0 + HOUR_MS + MIN),
            vec![resolved("lab-01", UploadSymptom::FatalOnly)]
        );
        assert!(attempt(&mut u, "lab-01", stamped(200), T0 + HOUR_MS + 2 * MIN).is_empty());
    }

    #[test]
    fn busy_and_server_errors_neither_count_nor_break_a_run_of_refusals() {
        let mut u = uploads();
        for s in 0..10 {
            assert!(attempt(&mut u, "lab-01", stamped(429), T0 + s * 1000).is_empty());
            assert!(attempt(&mut u, "lab-01", stamped(503), T0 + s * 1000).is_empty());
        }
        attempt(&mut u, "lab-01", refused("conflict"), T0 + 10 * MIN);
        attempt(&mut u, "lab-01", stamped(429), T0 + 11 * MIN);
        attempt(&mut u, "lab-01", refused("conflict"), T0 + 12 * MIN);
        attempt(&mut u, "lab-01", stamped(500), T0 + 13 * MIN);
        let out = attempt(&mut u, "lab-01", refused("conflict"), T0 + 14 * MIN);
        assert!(out.iter().any(is_fatal), "{out:?}");
    }

    #[test]
    fn refusals_spread_beyond_the_window_are_not_fatal_only() {
        let mut u = uploads();
        for i in 0..10 {
            let out = attempt(&mut u, "lab-01", refused("conflict"), T0 + i * 16 * MIN);
            assert!(out.is_empty(), "{i}: {out:?}");
        }
    }

    #[test]
    fn a_stored_upload_within_the_window_holds_fatal_only_back() {
        let mut u = uploads();
        attempt(&mut u, "lab-01", stamped(201), T0);
        for s in 1..=10 {
            let out = attempt(&mut u, "lab-01", refused("conflict"), T0 + s * 1000);
            assert!(out.is_empty(), "stored 10 s ago: {out:?}");
        }
        let out = attempt(&mut u, "lab-01", refused("conflict"), T0 + 30 * MIN);
        assert!(
            out.iter().any(is_fatal),
            "nothing but refusals for the whole window: {out:?}"
        );
    }

    #[test]
    fn unstamped_attempts_are_reported_once_per_hour_and_end_with_a_stamp() {
        let mut u = uploads();
        let unstamped = |http_status| Attempt {
            http_status,
            status: None,
            stamped: Some(false),
        };
        assert_eq!(
            attempt(&mut u, "lab-01", unstamped(201), T0),
            vec![UploadNotice::Unstamped {
                host: id("lab-01"),
                http_status: 201
            }]
        );
        assert!(attempt(&mut u, "lab-01", unstamped(201), T0 + 59 * MIN).is_empty());
        let unknown = Attempt {
            http_status: 400,
            status: Some("bad-request"),
            stamped: None,
        };
        assert!(
            attempt(&mut u, "lab-01", unknown, T0 + 59 * MIN).is_empty(),
            "unknown neither fires nor ends it"
        );
        assert_eq!(
            attempt(&mut u, "lab-01", unstamped(201), T0 + 60 * MIN).len(),
            1
        );
        assert_eq!(
            attempt(&mut u, "lab-01", stamped(201), T0 + 61 * MIN),
            vec![resolved("lab-01", UploadSymptom::Unstamped)]
        );
        // A relapse in the same bucket was already said: neither it nor its
        // end is repeated.
        assert!(attempt(&mut u, "lab-01", unstamped(201), T0 + 62 * MIN).is_empty());
        assert!(attempt(&mut u, "lab-01", stamped(201), T0 + 63 * MIN).is_empty());
    }

    #[test]
    fn an_unstamped_refusal_reports_both_symptoms() {
        let mut u = uploads();
        let missing = Attempt {
            http_status: 400,
            status: Some("missing-commit"),
            stamped: Some(false),
        };
        attempt(&mut u, "lab-01", missing, T0);
        attempt(&mut u, "lab-01", missing, T0 + MIN);
        let out = attempt(&mut u, "lab-01", missing, T0 + 2 * MIN);
        assert_eq!(out.len(), 1);
        assert!(
            is_fatal(&out[0]),
            "unstamped was said at the first: {out:?}"
        );
    }

    #[test]
    fn hosts_over_the_cap_are_counted_not_tracked() {
        let mut u = Uploads::new(30 * MIN, 30 * MIN, 2);
        for i in 0..5 {
            attempt(&mut u, &format!("h{i}"), refused("conflict"), T0);
        }
        assert_eq!(u.len(), 2);
        assert_eq!(u.untracked(), 3);
        attempt(&mut u, "h0", refused("conflict"), T0 + 1);
        assert_eq!(u.untracked(), 3, "a tracked host is looked at");
        // A day later the tracked ones are forgotten and room is made.
        due(&mut u, T0 + FORGET_AFTER_MS + 1);
        assert!(u.is_empty());
        attempt(&mut u, "h4", stamped(201), T0 + FORGET_AFTER_MS + 2);
        assert_eq!(u.len(), 1);
    }

    #[test]
    fn rules_name_their_symptom() {
        for s in UploadSymptom::ALL {
            assert_eq!(UploadSymptom::from_rule(s.rule()), Some(s));
            assert_eq!(s.rule(), format!("uploads-{}", s.as_str()));
        }
        assert_eq!(UploadSymptom::from_rule("silent"), None);
    }
}
