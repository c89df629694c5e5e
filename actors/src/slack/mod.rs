//! The Slack actor: delivers notices to one incoming webhook, in order, and
//! loses none that fit in its outbox.
//!
//! State: the bounded [`Outbox`] (alerts first, digests and summaries on a
//! budget of their own, see [`outbox`]), the message being sent, the time before
//! which nothing may be sent (pacing, back-off, `Retry-After`). Accepts
//! [`Enqueue`] (from Alerts, `try_send`) and [`Drain`] (from startup at
//! shutdown, `send`). Every `summary_interval` it asks the registry for the
//! active devices ([`ListDevices`], `send`) and queues a summary table.
//!
//! One request at a time, so order holds; each request starts at least
//! `pace` after the answer to the previous one (Slack allows about one
//! message per second per webhook). The rules for answers are in [`retry`]; text is escaped
//! ([`escape`]) when the request is built. The awc client is not `Send`: it
//! is built in `started()`, on the actor's own thread, with redirects off.
//!
//! Delivery is at least once: a request that timed out may have reached
//! Slack, and is sent again.

pub mod escape;
pub mod outbox;
pub mod retry;
pub mod shared;
pub mod summary;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use awc::error::SendRequestError;
use awc::http::header;
use tokio::sync::oneshot;

use crate::devices::ListDevices;
use crate::event::now_ms;
use crate::telemetry::Telemetry;

pub use crate::notice::{Notice, NoticeKind};
pub use outbox::{Outbox, OutboxLimits};
use retry::{classify, Backoff, Verdict};
pub use shared::SharedOutbox;

/// Mailbox bound: [`Enqueue`] beyond it is counted as dropped by the sender.
/// Alerts are rate-limited by cooldowns, so this is only reached in a storm.
pub const SLACK_MAILBOX: usize = 4096;

/// Bytes of Slack's answer kept for the log (its errors are short words).
const RESPONSE_BODY_LIMIT: usize = 2048;

#[derive(Clone)]
pub struct SlackConfig {
    /// Carries a token in its path: never logged.
    pub webhook_url: String,
    /// Trust for `https://` webhooks; `None` for plain `http://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
    /// Alerts that may wait (`slack.outbox_capacity`).
    pub outbox_capacity: usize,
    /// Digests that may wait, apart from alerts (`slack.digest_outbox_capacity`).
    pub digest_outbox_capacity: usize,
    /// Least time between two requests to the webhook.
    pub pace: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub summary_interval: Duration,
}

impl fmt::Debug for SlackConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackConfig")
            .field("webhook_url", &"[redacted]")
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .field("outbox_capacity", &self.outbox_capacity)
            .field("digest_outbox_capacity", &self.digest_outbox_capacity)
            .field("pace", &self.pace)
            .field("retry_min", &self.retry_min)
            .field("retry_max", &self.retry_max)
            .field("summary_interval", &self.summary_interval)
            .finish()
    }
}

pub struct Slack {
    config: SlackConfig,
    client: Option<awc::Client>,
    outbox: Outbox,
    /// The message being sent or waiting to be retried: first in line.
    current: Option<Notice>,
    in_flight: bool,
    /// A pending wake-up for the next send.
    wake: Option<SpawnHandle>,
    not_before: Instant,
    backoff: Backoff,
    registry: Option<Recipient<ListDevices>>,
    telemetry: Arc<Telemetry>,
    draining: bool,
    drained: Vec<oneshot::Sender<()>>,
    sent: u64,
    /// Cluster mode: the outbox is in Redis ([`shared`]); `outbox` and
    /// `current` stay empty.
    shared: Option<shared::Shared>,
}

impl Slack {
    /// `registry`: where summaries come from (`None`: no summaries).
    pub fn new(
        config: SlackConfig,
        registry: Option<Recipient<ListDevices>>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            outbox: Outbox::new(OutboxLimits {
                alerts: config.outbox_capacity,
                digests: config.digest_outbox_capacity,
            }),
            backoff: Backoff::new(config.retry_min, config.retry_max, now_ms()),
            config,
            client: None,
            current: None,
            in_flight: false,
            wake: None,
            not_before: Instant::now(),
            registry,
            telemetry,
            draining: false,
            drained: Vec::new(),
            sent: 0,
            shared: None,
        }
    }

    /// Cluster mode: delivers from the shared outbox in Redis while this
    /// instance holds the leader lease.
    pub fn with_shared_outbox(mut self, setup: SharedOutbox) -> Self {
        self.shared = Some(shared::Shared::new(setup));
        self
    }

    fn enqueue(&mut self, notice: Notice, ctx: &mut Context<Self>) {
        if let Some(kind) = self.outbox.push(notice) {
            self.telemetry.slack_dropped(kind, "outbox_full");
        }
        self.update_depth();
        self.pump(ctx);
    }

    fn update_depth(&self) {
        if self.shared.is_some() {
            return;
        }
        let depth = self.outbox.len() + usize::from(self.current.is_some());
        self.telemetry.slack.outbox_depth.set(depth as i64);
    }

    /// Sends the next message if nothing is in flight and its time has come,
    /// or arms a wake-up for that time.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.shared.is_some() {
            self.pump_shared(ctx);
            return;
        }
        if self.in_flight || self.wake.is_some() {
            return;
        }
        if self.current.is_none() {
            self.current = self.outbox.pop();
        }
        let Some(notice) = &self.current else {
            self.update_depth();
            for done in self.drained.drain(..) {
                let _ = done.send(());
            }
            return;
        };
        let now = Instant::now();
        if now < self.not_before {
            let handle = ctx.run_later(self.not_before - now, |act, ctx| {
                act.wake = None;
                act.pump(ctx);
            });
            self.wake = Some(handle);
            return;
        }
        let Some(bounded) = self.request(&notice.text) else {
            return;
        };
        self.in_flight = true;
        ctx.spawn(
            bounded
                .into_actor(self)
                .map(|reply, act, ctx| act.answered(reply, ctx)),
        );
    }

    /// One POST of `text` to the webhook, bounded in time; `None` before
    /// the client exists (`started`).
    fn request(
        &self,
        text: &str,
    ) -> Option<impl std::future::Future<Output = Result<Reply, String>> + 'static> {
        let client = self.client.as_ref()?;
        let body = serde_json::json!({
            "text": escape::escape_capped(text, escape::MAX_TEXT_CHARS)
        })
        .to_string();
        let request = client
            .post(&self.config.webhook_url)
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .timeout(self.config.timeout)
            .send_body(body);
        let timeout = self.config.timeout;
        let reply = async move {
            let mut response = request.await.map_err(describe)?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body =
                match tokio::time::timeout(timeout, response.body().limit(RESPONSE_BODY_LIMIT))
                    .await
                {
                    Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                    _ => String::new(),
                };
            Ok(Reply {
                status,
                retry_after,
                body,
            })
        };
        // The client's own timeout covers connect and headers; this one
        // bounds the whole exchange, body included.
        let bounded = async move {
            tokio::time::timeout(timeout * 2, reply)
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()))
        };
        Some(bounded)
    }

    fn answered(&mut self, reply: Result<Reply, String>, ctx: &mut Context<Self>) {
        self.in_flight = false;
        let now = Instant::now();
        let (done, wait) = self.account(&reply);
        if done {
            self.current = None;
        }
        self.not_before = now + wait;
        self.update_depth();
        self.pump(ctx);
    }

    /// Counts and logs Slack's answer to one message and moves the
    /// back-off: whether the message is done with (sent, or refused for
    /// good) and how long from now the next request must wait. One place
    /// for both outboxes, the in-process one and cluster mode's in Redis.
    fn account(&mut self, reply: &Result<Reply, String>) -> (bool, Duration) {
        // Counted from the answer, not the request: the previous request
        // has surely reached Slack by now, so Slack sees the gap whatever
        // the network's jitter.
        let pace = self.config.pace;
        let metrics = &self.telemetry.slack;
        let verdict = match reply {
            Ok(r) => classify(r.status, r.retry_after.as_deref()),
            Err(_) => Verdict::Retry,
        };
        match verdict {
            Verdict::Delivered => {
                metrics.sent.inc();
                self.sent += 1;
                self.backoff.reset();
                (true, pace)
            }
            Verdict::RetryAfter(wait) => {
                metrics.retried.inc();
                self.telemetry.warn_limited("slack_retry", || {
                    format!(
                        "Slack is rate-limiting (429); retrying in {:.1}s as its Retry-After asks.",
                        wait.as_secs_f64()
                    )
                });
                (false, pace.max(wait))
            }
            Verdict::Retry => {
                metrics.retried.inc();
                let wait = self.backoff.next_delay();
                let cause = match reply {
                    Ok(r) => format!("HTTP {}", r.status),
                    Err(e) => e.clone(),
                };
                self.telemetry.warn_limited("slack_retry", || {
                    format!(
                        "Slack delivery failed ({cause}); retry {} in {:.1}s.",
                        self.backoff.attempts(),
                        wait.as_secs_f64()
                    )
                });
                (false, pace.max(wait))
            }
            Verdict::Permanent(reason) => {
                self.telemetry.slack_failed(reason);
                let (status, body) = match reply {
                    Ok(r) => (r.status, r.body.as_str()),
                    Err(_) => (0, ""),
                };
                let body: String = body.chars().take(200).collect();
                log::error!(
                    "Slack refused a message with HTTP {status} `{}`; dropped, not retried. Check `slack.webhook_url`.",
                    body.escape_debug()
                );
                self.backoff.reset();
                (true, pace)
            }
        }
    }

    fn summarize(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        let Some(registry) = self.registry.clone() else {
            return;
        };
        // Cluster mode: one summary per cluster, from the leader.
        if let Some(shared) = &self.shared {
            if !shared.is_leader() {
                return;
            }
        }
        ctx.spawn(
            async move { registry.send(ListDevices).await }
                .into_actor(self)
                .map(|devices, act, ctx| match devices {
                    Ok(devices) => {
                        match summary::render_summary(&devices, summary::MAX_SUMMARY_CHARS) {
                            Some(text) if act.shared.is_some() => {
                                act.enqueue_summary_shared(text, ctx)
                            }
                            Some(text) => act.enqueue(
                                Notice {
                                    kind: NoticeKind::Summary,
                                    text,
                                },
                                ctx,
                            ),
                            None => log::debug!("No active device; Slack summary skipped."),
                        }
                    }
                    Err(e) => log::warn!("The registry did not answer for the Slack summary: {e}."),
                }),
        );
    }
}

/// Slack's answer, as far as the verdict and the log need it.
struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

/// A failed request, without the URL (its path is the webhook's secret).
fn describe(error: SendRequestError) -> String {
    match error {
        SendRequestError::Timeout => "timed out".to_owned(),
        SendRequestError::Connect(e) => format!("connection failed: {e}"),
        SendRequestError::Send(e) => format!("send failed: {e}"),
        SendRequestError::Response(e) => format!("bad response: {e}"),
        _ => "request failed".to_owned(),
    }
}

impl Actor for Slack {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(SLACK_MAILBOX);
        let mut connector = awc::Connector::new().timeout(self.config.timeout);
        if let Some(tls) = &self.config.tls {
            let mut tls = (**tls).clone();
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            connector = connector.rustls_0_23(Arc::new(tls));
        }
        // Redirects off: a webhook that redirects is misconfigured, and
        // following it would send alerts (and our IP) elsewhere.
        self.client = Some(
            awc::Client::builder()
                .connector(connector)
                .disable_redirects()
                .timeout(self.config.timeout)
                .finish(),
        );
        if self.registry.is_some() {
            ctx.run_interval(self.config.summary_interval, Self::summarize);
        }
        self.update_depth();
        self.connect_shared(ctx);
    }
}

/// Queues a message (`try_send` from Alerts; a full mailbox is counted as a
/// drop by the sender).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Enqueue(pub Notice);

impl Handler<Enqueue> for Slack {
    type Result = ();

    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) {
        self.enqueue(msg.0, ctx);
    }
}

/// Shutdown: keep sending until the outbox is empty or `deadline` passes,
/// then count what is left as dropped (`send` from startup).
#[derive(Message, Debug)]
#[rtype(result = "DrainReport")]
pub struct Drain {
    pub deadline: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Messages delivered over the actor's life.
    pub sent: u64,
    /// Messages left undelivered at the deadline.
    pub dropped: usize,
}

impl Handler<Drain> for Slack {
    type Result = ResponseActFuture<Self, DrainReport>;

    fn handle(&mut self, msg: Drain, ctx: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        // Cluster mode: what is queued stays in Redis for the next leader.
        if self.shared.is_some() {
            let report = DrainReport {
                sent: self.sent,
                dropped: 0,
            };
            return Box::pin(actix::fut::ready(report));
        }
        let (done, flushed) = oneshot::channel();
        self.drained.push(done);
        self.pump(ctx);
        Box::pin(
            async move { tokio::time::timeout(msg.deadline, flushed).await.is_ok() }
                .into_actor(self)
                .map(|flushed, act, _| {
                    let mut left = act.outbox.take_all();
                    if !flushed {
                        left.extend(act.current.take());
                        for notice in &left {
                            act.telemetry.slack_dropped(notice.kind, "shutdown");
                        }
                        if !left.is_empty() {
                            log::warn!(
                                "Shutting down with {} Slack message(s) undelivered.",
                                left.len()
                            );
                        }
                    }
                    act.update_depth();
                    DrainReport {
                        sent: act.sent,
                        dropped: left.len(),
                    }
                }),
        )
    }
}
