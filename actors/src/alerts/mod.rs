//! The Alerts actor: threshold rules with cooldown, fleet-health detectors
//! (silent, rejecting), upload detectors (silent, fatal-only, unstamped),
//! device presence and security digests.
//!
//! It is a subscriber of the bus like any session (`devices/+/metrics`,
//! `edgebus/rejects`, `uploads/+`, attacker observations and scores),
//! through its own bounded queue: the bus hands it the same shared event it
//! hands every session, with a non-blocking `try_send`, so ingest and the
//! registry do no extra work for alerts, and nothing waits on rule
//! evaluation, which runs on this actor's thread. Should it fall behind, metrics conflate (it keeps
//! the newest frame per device) like any session's.
//!
//! Decisions live in the pure [`Engine`], built of [`rules`] and
//! [`cooldown`] (threshold rules), [`health`] (silent, rejecting),
//! [`uploads`] (both on [`episode`]'s once-an-hour rule), [`presence`] and
//! [`digest`]; its output becomes events ([`record`]) published on the bus
//! (`try_send`) and Slack notices ([`crate::slack::Enqueue`], `try_send`).
//! Deadlines (offline, silent, digest windows) share one timer armed for the
//! earliest one. Time comes from a [`Clock`], so tests can move an hour
//! forward.
//!
//! Upload firings are also appended to `alerts.jsonl` ([`journal`]). The
//! actor takes them from the bus, subscribed to the upload rules' alert
//! topics, rather than from its own output: in cluster mode one instance
//! publishes each alert and every instance reads it back from the stream,
//! so every instance's journal is complete.

pub mod clock;
pub mod cooldown;
pub mod deadlines;
pub mod digest;
pub mod engine;
pub mod episode;
pub mod health;
pub mod journal;
pub mod presence;
pub mod record;
pub mod rules;
pub mod uploads;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::bus::{
    self, session_queue, Bus, Delivery, Publish, SessionId, SessionInbox, SessionQueue, Taken,
    CONTROL_RESERVE,
};
use crate::cluster::{Claim, Guard, Voice};
use crate::families;
use crate::notice::{Notice, NoticeKind};
use crate::slack::Enqueue;
use crate::subscription::Subscription;
use crate::telemetry::{DropReason, Telemetry};
use crate::topic::TopicFilter;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::Engine;
pub use journal::{Journal, DEFAULT_JOURNAL_MAX_BYTES};
use record::{Alert, AlertState};
pub use rules::{Rule, RuleSpec};

/// Events the alerts subscription may hold before the bus's slow-consumer
/// policy applies (metrics conflate, others are dropped and counted).
pub const ALERTS_QUEUE: usize = 16_384;

/// How often the actor drains its queue. Awaiting the queue instead would
/// have the bus wake this thread for nearly every frame (a futex syscall on
/// the bus's fan-out path, and a second busy thread on 2 cores); a tick
/// costs at most this much alert latency and takes a burst in one pass.
pub const DRAIN_EVERY: Duration = Duration::from_millis(5);

/// What the Alerts actor listens to on the bus. The last three are its own
/// upload alerts, read back for the journal.
pub const SUBSCRIPTIONS: [&str; 8] = [
    families::METRICS_FILTER,
    families::REJECTS_TOPIC,
    families::ATTACKER_OBSERVATIONS_FILTER,
    families::ATTACKER_SCORES_FILTER,
    families::UPLOADS_FILTER,
    "alerts/+/uploads-silent",
    "alerts/+/uploads-fatal-only",
    "alerts/+/uploads-unstamped",
];

/// `uploads.silent_after_seconds` by default.
pub const DEFAULT_UPLOADS_SILENT_AFTER: Duration = Duration::from_secs(1800);
/// `uploads.fatal_window_seconds` by default.
pub const DEFAULT_UPLOADS_FATAL_WINDOW: Duration = Duration::from_secs(1800);
/// Upload hosts tracked at once by default.
pub const DEFAULT_MAX_UPLOAD_HOSTS: usize = 10_000;

/// Label for digests in `edgebus_alerts_raised_total`.
pub const DIGEST_RULE: &str = "security_digest";

#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub rules: Vec<Rule>,
    /// A device is offline this long after its last frame (`registry.prune_seconds`).
    pub offline_after: Duration,
    /// `registry.silent_after_seconds`.
    pub silent_after: Duration,
    /// `alerts.rejecting_window_seconds`.
    pub rejecting_window: Duration,
    /// `alerts.digest_window_seconds`.
    pub digest_window: Duration,
    /// `alerts.max_digests_per_window`: digests posted per window overall.
    pub max_digests_per_window: u32,
    /// `registry.max_devices`: bounds devices known only from rejections.
    pub max_devices: usize,
    /// `uploads.silent_after_seconds`: a host that uploaded in the last
    /// 24 h and not since is silent.
    pub uploads_silent_after: Duration,
    /// `uploads.fatal_window_seconds`: refusals within it, none stored, are
    /// fatal-only.
    pub uploads_fatal_window: Duration,
    /// Hosts the upload detectors track; attempts from others are counted
    /// (`edgebus_alerts_upload_hosts_untracked_total`) and ignored.
    pub max_upload_hosts: usize,
}

pub struct Alerts {
    engine: Engine,
    bus: Addr<Bus>,
    slack: Option<Recipient<Enqueue>>,
    telemetry: Arc<Telemetry>,
    clock: Arc<dyn Clock>,
    session: SessionId,
    queue: SessionQueue,
    inbox: Option<SessionInbox>,
    /// Reused for every drain.
    batch: Vec<Delivery>,
    /// The armed timer and the deadline it is for.
    timer: Option<(u64, SpawnHandle)>,
    /// Cluster mode: every instance decides the same (they read one
    /// stream in one order, and decide on the stream's time); each output
    /// is claimed in Redis, and the instance that wins the claim appends it
    /// to the stream and queues its Slack message in the shared outbox.
    voice: Option<Voice>,
    /// `alerts.jsonl`, when the service keeps one.
    journal: Option<Journal>,
}

/// The share of a cooldown the cluster's mark lasts less than the
/// cooldown itself, at most [`MAX_MARK_MARGIN_MS`]: instances in step
/// decide by the stream's time, and their next alert, due exactly at the
/// cooldown's end, must find the mark gone.
const MARK_MARGIN_DIVISOR: u64 = 10;
const MAX_MARK_MARGIN_MS: u64 = 2_000;

fn mark_ttl(cooldown_ms: u64) -> Duration {
    let margin = (cooldown_ms / MARK_MARGIN_DIVISOR).min(MAX_MARK_MARGIN_MS);
    Duration::from_millis(cooldown_ms.saturating_sub(margin).max(1))
}

impl Alerts {
    pub fn new(
        config: AlertsConfig,
        bus: Addr<Bus>,
        slack: Option<Recipient<Enqueue>>,
        telemetry: Arc<Telemetry>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (queue, inbox) = session_queue(ALERTS_QUEUE);
        for rule in &config.rules {
            telemetry.alerts.preregister(&rule.name);
        }
        for rule in ["silent", "rejecting", DIGEST_RULE] {
            telemetry.alerts.preregister(rule);
        }
        for symptom in uploads::UploadSymptom::ALL {
            telemetry.alerts.preregister(symptom.rule());
        }
        Self {
            engine: Engine::new(config),
            bus,
            slack,
            telemetry,
            clock,
            session: SessionId::next(),
            queue,
            inbox: Some(inbox),
            batch: Vec::new(),
            timer: None,
            voice: None,
            journal: None,
        }
    }

    /// Appends every upload firing seen on the bus to `journal`.
    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Cluster mode: every output is claimed through `voice` (stream and
    /// shared Slack outbox) instead of going to the bus and the local
    /// Slack actor.
    pub fn stream_fed(mut self, voice: Voice) -> Self {
        self.voice = Some(voice);
        self
    }

    /// Runs every deadline due now.
    fn check(&mut self, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        self.engine.due(now);
        self.flush(now);
        self.arm(ctx);
    }

    /// Publishes what the engine produced.
    fn flush(&mut self, now: u64) {
        if self.engine.out.is_empty() {
            return;
        }
        let out = std::mem::take(&mut self.engine.out);
        self.telemetry
            .alerts
            .upload_hosts_untracked
            .inc_by(out.uploads_untracked);
        if self.voice.is_some() {
            self.claim_all(out, now);
            return;
        }
        for change in &out.presence {
            self.publish(record::presence_draft(change, now));
        }
        for alert in out.alerts {
            self.raise(alert, now);
        }
        for report in &out.digests {
            self.telemetry.alert_raised(DIGEST_RULE);
            self.notify(Notice {
                kind: NoticeKind::Digest,
                text: record::digest_text(report),
            });
        }
        // Held back before the hand-off, so a flood of attackers never
        // fills the Slack actor's mailbox, which alerts share.
        for _ in 0..out.digests_held_back {
            self.telemetry.alert_raised(DIGEST_RULE);
            if self.slack.is_some() {
                self.telemetry
                    .slack_dropped(NoticeKind::Digest, "rate_limited");
            }
        }
    }

    /// Cluster mode: claims every output, so exactly one instance publishes
    /// each.
    fn claim_all(&self, out: engine::Output, now: u64) {
        for change in &out.presence {
            let device = change.device().to_string();
            let (kind, guard) = match change {
                presence::PresenceChange::Online { .. } => {
                    ("online", Guard::Online(device.clone()))
                }
                presence::PresenceChange::Offline { .. } => {
                    ("offline", Guard::Offline(device.clone()))
                }
            };
            self.claim(Claim {
                key: format!("{kind}:{device}:{}", change.last_seen_ms()),
                guard,
                draft: Some(record::presence_draft(change, now)),
                notice: None,
            });
        }
        for alert in out.alerts {
            if alert.state == AlertState::Firing {
                self.telemetry.alert_raised(&alert.rule);
            }
            let guard = match alert.cooldown_ms {
                Some(cooldown) => Guard::Cooldown {
                    key: format!("alert:{}:{}", alert.rule, alert.device),
                    ttl: mark_ttl(cooldown),
                },
                None => Guard::None,
            };
            self.claim(Claim {
                draft: Some(alert.draft(now)),
                notice: Some(Notice::alert(alert.text)),
                key: alert.key,
                guard,
            });
        }
        for report in &out.digests {
            self.telemetry.alert_raised(DIGEST_RULE);
            self.claim(Claim {
                key: format!("digest:{}:{}", report.attacker, report.opened_ms),
                guard: Guard::Cooldown {
                    key: format!("digest:{}", report.attacker),
                    ttl: mark_ttl(report.window_ms),
                },
                draft: None,
                notice: Some(Notice {
                    kind: NoticeKind::Digest,
                    text: record::digest_text(report),
                }),
            });
        }
        for _ in 0..out.digests_held_back {
            self.telemetry.alert_raised(DIGEST_RULE);
        }
    }

    fn claim(&self, mut claim: Claim) {
        let Some(voice) = &self.voice else {
            return;
        };
        if let Some(notice) = &mut claim.notice {
            crate::slack::outbox::fit(notice);
        }
        if !voice.claim(claim) {
            self.telemetry.events_dropped(DropReason::Overload, 1);
        }
    }

    fn raise(&mut self, alert: Alert, now: u64) {
        if alert.state == AlertState::Firing {
            self.telemetry.alert_raised(&alert.rule);
        }
        self.publish(alert.draft(now));
        self.notify(Notice::alert(alert.text));
    }

    fn publish(&self, draft: crate::event::Draft) {
        if self.bus.try_send(Publish(draft)).is_err() {
            self.telemetry.events_dropped(DropReason::Overload, 1);
        }
    }

    fn notify(&self, notice: Notice) {
        let Some(slack) = &self.slack else {
            return;
        };
        let kind = notice.kind;
        if slack.try_send(Enqueue(notice)).is_err() {
            self.telemetry.slack_dropped(kind, "overload");
        }
    }

    /// Takes everything queued, decides on each event, then sends what was
    /// decided. Tells the bus when it has drained after falling behind, as a
    /// session's writer does.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        let Some(mut inbox) = self.inbox.take() else {
            return;
        };
        let mut handled = false;
        let mut batch = std::mem::take(&mut self.batch);
        // Drained after falling behind: the queue asks the bus for what it held.
        let (bus, session) = (&self.bus, self.session);
        let resume = || bus.do_send(bus::Resume { session });
        match inbox.try_take_resuming(&mut batch, ALERTS_QUEUE + CONTROL_RESERVE, resume) {
            Some(Taken::Items { .. }) => {
                let now = self.clock.now_ms();
                let clustered = self.voice.is_some();
                for item in batch.drain(..) {
                    // The snapshot holds last values from before we joined:
                    // nothing new to decide on. Close comes at shutdown.
                    if let Delivery::Event(event) = item {
                        // Cluster mode decides on the stream's time (its
                        // entry id), the same on every instance, so every
                        // instance names each output alike.
                        let at = if clustered {
                            event.id.stream_ms().unwrap_or(now)
                        } else {
                            now
                        };
                        self.engine.on_event(&event, at);
                        self.append_to_journal(&event);
                        handled = true;
                    }
                }
            }
            Some(Taken::Closed) | None => {}
        }
        self.batch = batch;
        self.inbox = Some(inbox);
        if handled {
            self.flush(self.clock.now_ms());
            self.arm(ctx);
        }
    }

    /// Hands an upload firing to the journal's writer, never waiting.
    fn append_to_journal(&self, event: &crate::event::Event) {
        let Some(journal) = &self.journal else {
            return;
        };
        let Some(line) = record::journal_line(event) else {
            return;
        };
        if let Err(why) = journal.append(&line) {
            self.telemetry.journal_dropped(why.as_str());
        }
    }

    /// Arms the timer for the earliest deadline, unless one at least as
    /// early is armed already.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        let Some(at) = self.engine.next_deadline() else {
            return;
        };
        if let Some((armed, handle)) = self.timer {
            if armed <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = Duration::from_millis(at.saturating_sub(self.clock.now_ms()));
        let handle = ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            act.check(ctx);
        });
        self.timer = Some((at, handle));
    }
}

impl Actor for Alerts {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(DRAIN_EVERY, Self::drain);
        let filters: Vec<TopicFilter> = SUBSCRIPTIONS
            .iter()
            .filter_map(|f| TopicFilter::parse(f).ok())
            .collect();
        self.bus.do_send(bus::Join {
            session: self.session,
            queue: self.queue.clone(),
            subscriptions: filters.into_iter().map(Subscription::topic).collect(),
            resume: None,
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.bus.do_send(bus::Leave {
            session: self.session,
        });
    }
}

/// Runs every deadline due by the clock's time now (sent by tests that move
/// a [`ManualClock`]; the actor's own timer does the same).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Check;

impl Handler<Check> for Alerts {
    type Result = ();

    fn handle(&mut self, _: Check, ctx: &mut Context<Self>) {
        self.check(ctx);
    }
}

/// Counts for tests and diagnostics (`send`).
#[derive(Message, Debug)]
#[rtype(result = "AlertsStats")]
pub struct Stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertsStats {
    pub online: usize,
    pub tracked: usize,
    /// Hosts the upload detectors track.
    pub upload_hosts: usize,
}

impl Handler<Stats> for Alerts {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(AlertsStats {
            online: self.engine.online(),
            tracked: self.engine.tracked(),
            upload_hosts: self.engine.upload_hosts(),
        })
    }
}

#[cfg(test)]
mod tests;
