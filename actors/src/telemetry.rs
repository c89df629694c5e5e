//! Counters and the log lines that go with them, in one place per observable
//! event: a method here bumps the metric *and* writes the (rate-limited) log
//! line, so the two never disagree. Labels are low-cardinality reasons, never
//! device ids.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::frame::Rejection;
use crate::lax::{Coercion, Coercions};
use crate::notice::{NoticeKind, DROP_REASONS, PERMANENT_REASONS};

/// Log targets an operator filters on (`RUST_LOG=edgebus::rejects=off`),
/// whichever module noticed.
pub const REJECTS_LOG: &str = "edgebus::rejects";
pub const DROPS_LOG: &str = "edgebus::drops";

/// At most this many WARN lines per key per window; the rest are counted and
/// summarised, so a flood of bad frames cannot fill the disk.
const WARN_BURST: u32 = 5;
const WARN_WINDOW: Duration = Duration::from_secs(10);

/// All of edgebus's metrics. One per `Application` (not the global registry),
/// so several instances in one test process keep separate counts.
pub struct Telemetry {
    registry: Registry,
    pub frames_accepted: IntCounter,
    frames_rejected: IntCounterVec,
    pub frames_duplicate: IntCounter,
    /// `[compat.edgewatch] lax_frames`: fields accepted by a coercion.
    frames_coerced: IntCounterVec,
    /// `[compat.edgewatch] device_id_from_payload`: frames whose payload
    /// named another device than their topic.
    frames_device_from_payload: IntCounter,
    pub events_published: IntCounter,
    pub events_routed: IntCounter,
    /// Accounted bytes of the bus's history and last values (each under
    /// its `bus.*_bytes` bound), and snapshots cut at their bound.
    pub bus_history_bytes: IntGauge,
    pub bus_last_values_bytes: IntGauge,
    pub snapshots_truncated: IntCounter,
    events_dropped: IntCounterVec,
    ws_ops: IntCounterVec,
    /// WebSocket ops sent to the bus and not yet answered (at most one per
    /// session).
    pub ws_ops_in_flight: IntGauge,
    sessions_open: IntGaugeVec,
    pub mqtt_connected: IntGauge,
    pub mqtt_reconnects: IntCounter,
    /// The NATS source (`[nats]`): 1 while subscribed.
    pub nats_connected: IntGauge,
    pub nats_reconnects: IntCounter,
    broker_overruns: IntCounter,
    pub devices_known: IntGauge,
    /// Alerts raised.
    pub alerts: AlertMetrics,
    /// Slack delivery.
    pub slack: SlackMetrics,
    cluster: OnceLock<ClusterMetrics>,
    warn_limiter: WarnLimiter,
}

/// Cluster mode: the Redis stream's reader and writer. Registered on first
/// use, so a single instance shows none of them.
pub struct ClusterMetrics {
    /// `edgebus_cluster_info{instance_id}` = 1.
    pub info: IntGaugeVec,
    /// How far this instance's reader is behind the stream's newest entry.
    pub reader_lag_seconds: Gauge,
    /// The last Redis round trip (PING) seen by the health check.
    pub redis_rtt_seconds: Gauge,
    /// Events per append (one Redis round trip each).
    pub append_batch: Histogram,
    pub appended: IntCounter,
    pub read: IntCounter,
    /// Entries on the stream that are not edgebus events (skipped).
    pub foreign_entries: IntCounter,
    /// 1 while this instance holds the leader lease.
    pub leader: IntGauge,
    /// Lease renewals that succeeded (the holder renews every second).
    pub lease_renewals: IntCounter,
    /// Alert, presence and digest outputs this instance published for the
    /// cluster (it won their claim), and those another instance had
    /// published already.
    claims: IntCounterVec,
    /// Redis commands that failed, by operation.
    redis_errors: IntCounterVec,
}

impl ClusterMetrics {
    pub const OPS: [&'static str; 8] = [
        "append", "read", "backfill", "ping", "connect", "lease", "claim", "slack",
    ];

    fn register(registry: &Registry) -> Self {
        fn reg<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: M) -> M {
            registry
                .register(Box::new(m.clone()))
                .expect("metric names are unique");
            m
        }
        let info = IntGaugeVec::new(
            Opts::new(
                "edgebus_cluster_info",
                "This instance's id in cluster mode (value 1).",
            ),
            &["instance_id"],
        )
        .expect("static metric definition is valid");
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "edgebus_cluster_redis_errors_total",
                "Redis commands that failed, by operation.",
            ),
            &["op"],
        )
        .expect("static metric definition is valid");
        for op in Self::OPS {
            redis_errors.with_label_values(&[op]);
        }
        let claims = IntCounterVec::new(
            Opts::new(
                "edgebus_cluster_claims_total",
                "Alert, presence and digest outputs claimed, by outcome: published by this instance, or already published by another.",
            ),
            &["outcome"],
        )
        .expect("static metric definition is valid");
        for outcome in ["published", "already_published"] {
            claims.with_label_values(&[outcome]);
        }
        let gauge = |name: &str, help: &str| {
            reg(
                registry,
                Gauge::new(name, help).expect("static metric definition is valid"),
            )
        };
        let counter = |name: &str, help: &str| {
            reg(
                registry,
                IntCounter::new(name, help).expect("static metric definition is valid"),
            )
        };
        Self {
            info: reg(registry, info),
            reader_lag_seconds: gauge(
                "edgebus_cluster_reader_lag_seconds",
                "How far this instance's stream reader is behind the newest entry.",
            ),
            redis_rtt_seconds: gauge(
                "edgebus_cluster_redis_rtt_seconds",
                "The last Redis round trip (PING), in seconds.",
            ),
            append_batch: reg(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "edgebus_cluster_append_batch_events",
                        "Events appended to the stream per Redis round trip.",
                    )
                    .buckets(vec![1.0, 2.0, 4.0, 16.0, 64.0, 256.0, 1024.0]),
                )
                .expect("static metric definition is valid"),
            ),
            appended: counter(
                "edgebus_cluster_appended_total",
                "Events this instance appended to the stream.",
            ),
            read: counter(
                "edgebus_cluster_read_total",
                "Events this instance read from the stream.",
            ),
            foreign_entries: counter(
                "edgebus_cluster_foreign_entries_total",
                "Stream entries that are not edgebus events, skipped.",
            ),
            leader: reg(
                registry,
                IntGauge::new(
                    "edgebus_cluster_leader",
                    "1 while this instance holds the leader lease (Slack delivery, summaries).",
                )
                .expect("static metric definition is valid"),
            ),
            lease_renewals: counter(
                "edgebus_cluster_lease_renewals_total",
                "Leader lease renewals that succeeded.",
            ),
            claims: reg(registry, claims),
            redis_errors: reg(registry, redis_errors),
        }
    }

    /// One alert, presence change or digest claimed: `won` when this
    /// instance published it for the cluster.
    pub fn claimed(&self, won: bool) {
        let outcome = if won {
            "published"
        } else {
            "already_published"
        };
        self.claims.with_label_values(&[outcome]).inc();
    }

    pub fn claims(&self, won: bool) -> u64 {
        let outcome = if won {
            "published"
        } else {
            "already_published"
        };
        self.claims.with_label_values(&[outcome]).get()
    }

    pub fn redis_error(&self, op: &str) {
        self.redis_errors.with_label_values(&[op]).inc();
    }

    pub fn redis_errors(&self, op: &str) -> u64 {
        self.redis_errors.with_label_values(&[op]).get()
    }
}

/// Alerts raised by rule, and what the upload detectors and the journal
/// could not take.
pub struct AlertMetrics {
    raised: IntCounterVec,
    /// Upload attempts from hosts over `max_upload_hosts`, not looked at.
    pub upload_hosts_untracked: IntCounter,
    /// `alerts.jsonl` lines not written, by reason (`full`, `closed`).
    journal_dropped: IntCounterVec,
}

impl AlertMetrics {
    fn register(registry: &Registry) -> Self {
        let raised = IntCounterVec::new(
            Opts::new(
                "edgebus_alerts_raised_total",
                "Alerts raised (not resolutions), by rule or detector.",
            ),
            &["rule"],
        )
        .expect("static metric definition is valid");
        let upload_hosts_untracked = IntCounter::new(
            "edgebus_alerts_upload_hosts_untracked_total",
            "Upload attempts from hosts beyond the upload detectors' cap, not looked at.",
        )
        .expect("static metric definition is valid");
        let journal_dropped = IntCounterVec::new(
            Opts::new(
                "edgebus_alerts_journal_dropped_total",
                "Upload firings not appended to alerts.jsonl, by reason (full, closed, write_failed).",
            ),
            &["reason"],
        )
        .expect("static metric definition is valid");
        for metric in [
            Box::new(raised.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upload_hosts_untracked.clone()),
            Box::new(journal_dropped.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        Self {
            raised,
            upload_hosts_untracked,
            journal_dropped,
        }
    }

    pub fn journal_dropped(&self, reason: &str) -> u64 {
        self.journal_dropped.with_label_values(&[reason]).get()
    }

    /// Counts an `alerts.jsonl` line lost by the writer itself (which logs
    /// why); [`Telemetry::journal_dropped`] counts and logs one it never got.
    pub fn journal_lost(&self, reason: &'static str) {
        self.journal_dropped.with_label_values(&[reason]).inc();
    }

    /// Shows `rule` at zero before its first alert.
    pub fn preregister(&self, rule: &str) {
        self.raised.with_label_values(&[rule]);
    }

    pub fn raised(&self, rule: &str) -> u64 {
        self.raised.with_label_values(&[rule]).get()
    }
}

/// Slack delivery: sent, retried, failed by reason, dropped by kind and
/// reason, outbox depth.
pub struct SlackMetrics {
    pub sent: IntCounter,
    pub retried: IntCounter,
    failed: IntCounterVec,
    dropped: IntCounterVec,
    pub outbox_depth: IntGauge,
}

impl SlackMetrics {
    fn register(registry: &Registry) -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| -> IntCounterVec {
            let v = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition is valid");
            registry
                .register(Box::new(v.clone()))
                .expect("metric names are unique");
            v
        };
        let counter = |name: &str, help: &str| -> IntCounter {
            let c = IntCounter::new(name, help).expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let failed = vec(
            "edgebus_slack_failed_total",
            "Slack messages refused for good (4xx other than 429, redirects), by reason.",
            &["reason"],
        );
        let dropped = vec(
            "edgebus_slack_dropped_total",
            "Slack messages dropped before delivery, by kind and reason.",
            &["kind", "reason"],
        );
        for reason in PERMANENT_REASONS {
            failed.with_label_values(&[reason]);
        }
        for kind in NoticeKind::ALL {
            for reason in DROP_REASONS {
                dropped.with_label_values(&[kind.as_str(), reason]);
            }
        }
        let outbox_depth = IntGauge::new(
            "edgebus_slack_outbox_depth",
            "Slack messages waiting, including the one being sent.",
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(outbox_depth.clone()))
            .expect("metric names are unique");
        Self {
            sent: counter("edgebus_slack_sent_total", "Slack messages delivered."),
            retried: counter(
                "edgebus_slack_retried_total",
                "Slack requests that failed transiently (5xx, 429, timeout, connection) and were retried.",
            ),
            failed,
            dropped,
            outbox_depth,
        }
    }

    pub fn failed(&self, reason: &str) -> u64 {
        self.failed.with_label_values(&[reason]).get()
    }

    pub fn dropped(&self, kind: NoticeKind, reason: &str) -> u64 {
        self.dropped
            .with_label_values(&[kind.as_str(), reason])
            .get()
    }
}

/// Why an event did not reach a session (label of `edgebus_events_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A queued-class event did not fit in a slow session's queue.
    SlowSession,
    /// A metrics frame was replaced by a newer one for the same device.
    Conflated,
    /// An actor's mailbox was full (the whole pipeline is overloaded).
    Overload,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SlowSession => "slow_session",
            DropReason::Conflated => "conflated",
            DropReason::Overload => "overload",
        }
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> IntCounter {
            let c = IntCounter::new(name, help).expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let gauge = |name: &str, help: &str| -> IntGauge {
            let g = IntGauge::new(name, help).expect("static metric definition is valid");
            registry
                .register(Box::new(g.clone()))
                .expect("metric names are unique");
            g
        };
        let frames_rejected = IntCounterVec::new(
            Opts::new(
                "edgebus_frames_rejected_total",
                "Frames refused, by reason.",
            ),
            &["reason"],
        )
        .expect("static metric definition is valid");
        let events_dropped = IntCounterVec::new(
            Opts::new(
                "edgebus_events_dropped_total",
                "Events not delivered to a session, by reason.",
            ),
            &["reason"],
        )
        .expect("static metric definition is valid");
        let sessions_open = IntGaugeVec::new(
            Opts::new("edgebus_sessions_open", "Open streaming sessions, by kind."),
            &["kind"],
        )
        .expect("static metric definition is valid");
        let ws_ops = IntCounterVec::new(
            Opts::new(
                "edgebus_ws_ops_total",
                "WebSocket client ops, by result (accepted, rate_limited, closed).",
            ),
            &["result"],
        )
        .expect("static metric definition is valid");
        for result in WS_OP_RESULTS {
            ws_ops.with_label_values(&[result]);
        }
        let frames_coerced = IntCounterVec::new(
            Opts::new(
                "edgebus_frames_coerced_total",
                "Fields of accepted frames that needed a lax coercion ([compat.edgewatch] lax_frames), by coercion.",
            ),
            &["coercion"],
        )
        .expect("static metric definition is valid");
        for coercion in Coercion::ALL {
            frames_coerced.with_label_values(&[coercion.as_str()]);
        }
        for c in [&frames_rejected, &events_dropped, &ws_ops, &frames_coerced] {
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
        }
        registry
            .register(Box::new(sessions_open.clone()))
            .expect("metric names are unique");
        // Pre-create every label so dashboards see zeros, not gaps.
        for reason in Rejection::ALL_REASONS {
            frames_rejected.with_label_values(&[reason]);
        }
        for reason in [
            DropReason::SlowSession,
            DropReason::Conflated,
            DropReason::Overload,
        ] {
            events_dropped.with_label_values(&[reason.as_str()]);
        }
        for kind in ["ws", "sse"] {
            sessions_open.with_label_values(&[kind]);
        }
        Self {
            frames_accepted: counter("edgebus_frames_accepted_total", "Frames accepted."),
            frames_duplicate: counter(
                "edgebus_frames_duplicate_total",
                "MQTT redeliveries recognised as duplicates and not fanned out again.",
            ),
            frames_coerced,
            frames_device_from_payload: counter(
                "edgebus_frames_device_from_payload_total",
                "Frames accepted whose device_id differs from their topic's device level ([compat.edgewatch] device_id_from_payload); filed under the payload's device.",
            ),
            events_published: counter(
                "edgebus_events_published_total",
                "Events numbered by the bus.",
            ),
            events_routed: counter(
                "edgebus_events_routed_total",
                "Event deliveries queued to sessions.",
            ),
            bus_history_bytes: gauge(
                "edgebus_bus_history_bytes",
                "Estimated heap bytes of the replay history (bounded by bus.history_bytes).",
            ),
            bus_last_values_bytes: gauge(
                "edgebus_bus_last_values_bytes",
                "Estimated heap bytes of the last value per topic (bounded by bus.last_values_bytes).",
            ),
            snapshots_truncated: counter(
                "edgebus_snapshots_truncated_total",
                "Snapshots cut at bus.snapshot_max_events and sent marked truncated.",
            ),
            mqtt_connected: gauge(
                "edgebus_mqtt_connected",
                "1 while subscribed to the broker.",
            ),
            mqtt_reconnects: counter(
                "edgebus_mqtt_reconnects_total",
                "Times the MQTT connection was lost and retried.",
            ),
            nats_connected: gauge(
                "edgebus_nats_connected",
                "1 while the NATS source is connected and subscribed.",
            ),
            nats_reconnects: counter(
                "edgebus_nats_reconnects_total",
                "Times the NATS connection was lost.",
            ),
            broker_overruns: counter(
                "edgebus_mqtt_broker_overruns_total",
                "Frames the embedded broker dropped before edgebus read them.",
            ),
            devices_known: gauge("edgebus_devices_known", "Devices in the registry."),
            ws_ops_in_flight: gauge(
                "edgebus_ws_ops_in_flight",
                "WebSocket ops waiting for the bus (at most one per session).",
            ),
            ws_ops,
            alerts: AlertMetrics::register(&registry),
            slack: SlackMetrics::register(&registry),
            cluster: OnceLock::new(),
            frames_rejected,
            events_dropped,
            sessions_open,
            registry,
            warn_limiter: WarnLimiter::default(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Cluster mode's metrics, registered on first use.
    pub fn cluster(&self) -> &ClusterMetrics {
        self.cluster
            .get_or_init(|| ClusterMetrics::register(&self.registry))
    }

    /// A frame was refused: count it and log it (rate-limited, per reason,
    /// under the log target `edgebus::rejects`).
    pub fn frame_rejected(&self, topic: &str, rejection: &Rejection) {
        let reason = rejection.as_str();
        self.frames_rejected.with_label_values(&[reason]).inc();
        if let Some(suppressed) = self.warn_limiter.admit(reason) {
            let topic = topic.escape_debug();
            if suppressed > 0 {
                log::warn!(target: REJECTS_LOG, "Rejected frame on `{topic}`: {rejection} ({suppressed} similar rejections not logged).");
            } else {
                log::warn!(target: REJECTS_LOG, "Rejected frame on `{topic}`: {rejection}.");
            }
        }
    }

    /// An accepted frame needed lax rules: count each coercion, and a
    /// device id taken from the payload over the topic's.
    pub fn frame_bent(&self, coercions: &Coercions, device_id_differs: bool) {
        for (coercion, n) in coercions.iter() {
            self.frames_coerced
                .with_label_values(&[coercion.as_str()])
                .inc_by(u64::from(n));
        }
        if device_id_differs {
            self.frames_device_from_payload.inc();
        }
    }

    pub fn frames_coerced(&self, coercion: Coercion) -> u64 {
        self.frames_coerced
            .with_label_values(&[coercion.as_str()])
            .get()
    }

    pub fn frames_rejected(&self, reason: &str) -> u64 {
        self.frames_rejected.with_label_values(&[reason]).get()
    }

    /// Events that did not reach a session (or the bus), by reason.
    pub fn events_dropped(&self, reason: DropReason, n: u64) {
        self.events_dropped
            .with_label_values(&[reason.as_str()])
            .inc_by(n);
        if reason == DropReason::Overload {
            if let Some(suppressed) = self.warn_limiter.admit("overload") {
                log::warn!(target: DROPS_LOG, "Dropped {n} event(s): an actor mailbox is full ({suppressed} earlier drops not logged).");
            }
        }
    }

    pub fn events_dropped_count(&self, reason: DropReason) -> u64 {
        self.events_dropped
            .with_label_values(&[reason.as_str()])
            .get()
    }

    /// The embedded broker dropped `lost` frames of one of our filters
    /// before ingest read them (its retention was outrun).
    pub fn broker_overrun(&self, filter: &str, lost: u64) {
        self.broker_overruns.inc_by(lost);
        let filter = filter.escape_debug().to_string();
        self.warn_limited("broker_overrun", || {
            format!(
                "The embedded MQTT broker dropped {lost} frames on `{filter}` that ingest had not \
                 read yet: it fell behind by more than `mqtt.embedded_retention_bytes`."
            )
        });
    }

    pub fn broker_overruns(&self) -> u64 {
        self.broker_overruns.get()
    }

    /// A WebSocket client op was accepted, refused over its budget
    /// (`rate_limited`) or refused with the session closed (`closed`).
    pub fn ws_op(&self, result: &'static str) {
        self.ws_ops.with_label_values(&[result]).inc();
    }

    pub fn ws_ops_count(&self, result: &'static str) -> u64 {
        self.ws_ops.with_label_values(&[result]).get()
    }

    pub fn session_opened(&self, kind: &str) {
        self.sessions_open.with_label_values(&[kind]).inc();
    }

    pub fn session_closed(&self, kind: &str) {
        self.sessions_open.with_label_values(&[kind]).dec();
    }

    /// An alert was raised (rule labels come from config: bounded).
    pub fn alert_raised(&self, rule: &str) {
        self.alerts.raised.with_label_values(&[rule]).inc();
    }

    /// An upload firing did not reach the `alerts.jsonl` writer.
    pub fn journal_dropped(&self, reason: &'static str) {
        self.alerts.journal_lost(reason);
        let why = match reason {
            "full" => "its writer is behind",
            _ => "its writer has stopped",
        };
        self.warn_limited("journal_dropped", || {
            format!("Dropped an alerts.jsonl line: {why}.")
        });
    }

    /// A Slack message was refused for good.
    pub fn slack_failed(&self, reason: &'static str) {
        self.slack.failed.with_label_values(&[reason]).inc();
    }

    /// A Slack message was dropped before delivery: counted, and logged
    /// (rate-limited) since an operator loses a message.
    pub fn slack_dropped(&self, kind: NoticeKind, reason: &'static str) {
        self.slack
            .dropped
            .with_label_values(&[kind.as_str(), reason])
            .inc();
        let why = match reason {
            "outbox_full" => match kind {
                NoticeKind::Alert => {
                    "the outbox is full; raise `slack.outbox_capacity` or check Slack"
                }
                NoticeKind::Digest => {
                    "the digest outbox is full; raise `slack.digest_outbox_capacity` or check Slack"
                }
                // Superseded by a newer summary: nothing an operator lost.
                NoticeKind::Summary => return,
            },
            "rate_limited" => "over `alerts.max_digests_per_window` in this window",
            "overload" => "the Slack actor's mailbox is full",
            _ => return, // shutdown: reported once by the Slack actor
        };
        self.warn_limited("slack_dropped", || {
            format!("Dropped a Slack {}: {why}.", kind.as_str())
        });
    }

    /// Logs a WARN at most `WARN_BURST` times per window for `key`.
    pub fn warn_limited(&self, key: &'static str, message: impl FnOnce() -> String) {
        if let Some(suppressed) = self.warn_limiter.admit(key) {
            if suppressed > 0 {
                log::warn!("{} ({suppressed} similar lines not logged).", message());
            } else {
                log::warn!("{}", message());
            }
        }
    }
}

/// Labels of `edgebus_ws_ops_total`.
pub const WS_OP_RESULTS: [&str; 3] = ["accepted", "rate_limited", "closed"];

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-key log budget: `WARN_BURST` lines per `WARN_WINDOW`, then silence,
/// and the first line of the next window reports how many were skipped.
#[derive(Default)]
struct WarnLimiter {
    state: Mutex<HashMap<&'static str, Budget>>,
}

struct Budget {
    window_start: Instant,
    used: u32,
    suppressed: u64,
}

impl WarnLimiter {
    /// `Some(suppressed_since_last_line)` if this line may be written.
    fn admit(&self, key: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let budget = state.entry(key).or_insert(Budget {
            window_start: now,
            used: 0,
            suppressed: 0,
        });
        if now.duration_since(budget.window_start) >= WARN_WINDOW {
            budget.window_start = now;
            budget.used = 0;
        }
        if budget.used < WARN_BURST {
            budget.used += 1;
            Some(std::mem::take(&mut budget.suppressed))
        } else {
            budget.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warn_limiter_allows_a_burst_then_counts_the_rest() {
        let limiter = WarnLimiter::default();
        for _ in 0..WARN_BURST {
            assert_eq!(limiter.admit("bad_json"), Some(0));
        }
        assert_eq!(limiter.admit("bad_json"), None);
        assert_eq!(limiter.admit("bad_json"), None);
        assert_eq!(
            limiter.admit("other"),
            Some(0),
            "keys have separate budgets"
        );
    }

    #[test]
    fn rejections_are_counted_by_reason() {
        let t = Telemetry::new();
        t.frame_rejected("devices/d1/metrics", &Rejection::NotUtf8);
        t.frame_rejected("devices/d1/metrics", &Rejection::NotUtf8);
        assert_eq!(t.frames_rejected("not_utf8"), 2);
        assert_eq!(t.frames_rejected("bad_json"), 0);
    }
}
