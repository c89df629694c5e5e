//! The NATS source: a second way in for events, beside MQTT. Subscribes the
//! configured subjects (a queue group in cluster mode, so each message is
//! taken by one instance), maps each subject to a topic ([`SubjectMap`]) and
//! hands the frame to the same per-publish path as MQTT ([`Sink`]): the
//! same validation, rejection accounting, `edgebus/rejects` events, and in
//! cluster mode the same Redis stream.
//!
//! async-nats reconnects by itself (and re-subscribes); the delays between
//! attempts are ours ([`reconnect_delay`]). A server that is down at start
//! does not stop edgebus: the client keeps trying, and the state (for
//! `/readyz` and `edgebus_nats_connected`) says so. Core NATS is at most
//! once: what is published while edgebus is not connected is not seen.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_nats::{Client, ConnectOptions, Event as NatsEvent};
use futures_util::stream::{SelectAll, StreamExt};
use rumqttc::QoS;
use tokio::sync::{mpsc, oneshot};

use super::subject::SubjectMap;
use super::SourceState;
use super::{ConnectionState, RecentFrames, Rejected, Sink};
use crate::bus::Publish;
use crate::cluster::StreamWriter;
use crate::event::now_ms;
use crate::frame::Rejection;
use crate::inflight::InflightBytes;
use crate::registry::Observe;
use crate::telemetry::{DropReason, Telemetry};

/// How long a clean close may take at shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How edgebus logs in to the NATS server.
#[derive(Clone, Default)]
pub enum NatsAuth {
    #[default]
    None,
    UserPassword(String, String),
    Token(String),
    /// A `.creds` file (JWT + NKey seed).
    CredsFile(PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::UserPassword(..) => "UserPassword([redacted])",
            Self::Token(_) => "Token([redacted])",
            Self::CredsFile(_) => "CredsFile",
        })
    }
}

#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `nats://host:port` or `tls://host:port`.
    pub url: String,
    pub auth: NatsAuth,
    /// Trust for `tls://` (empty = the system roots).
    pub ca_cert: Option<PathBuf>,
    pub subjects: Vec<String>,
    pub map: SubjectMap,
    /// Cluster mode: each message goes to one member of the group.
    pub queue_group: Option<String>,
    /// The connection name the server shows (`connz`).
    pub name: String,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub max_payload_bytes: usize,
    pub inflight_bytes: usize,
}

/// Messages the client may hold per subscription before it drops them (a
/// slow consumer): what `bus.inflight_bytes` holds of the largest frames,
/// spread over the subjects, within sane limits. async-nats's own default
/// (65,536 per subscription, of up to the server's max_payload each) would
/// let a stalled ingest buffer gigabytes.
fn subscription_capacity(c: &NatsConfig) -> usize {
    let per_frame = c.max_payload_bytes.max(1);
    let subjects = c.subjects.len().max(1);
    (c.inflight_bytes / per_frame / subjects).clamp(64, 4096)
}

/// The pause before reconnect attempt `attempts` (1 = the first): none for
/// the first, then `min`, doubling, capped at `max`.
pub fn reconnect_delay(min: Duration, max: Duration, attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(30);
    min.saturating_mul(1 << doublings).min(max.max(min))
}

pub struct NatsIngest {
    config: NatsConfig,
    registry: Recipient<Observe>,
    bus: Recipient<Publish>,
    telemetry: Arc<Telemetry>,
    stream: Option<StreamWriter>,
    source: SourceState,
}

impl NatsIngest {
    pub fn new(
        config: NatsConfig,
        registry: Recipient<Observe>,
        bus: Recipient<Publish>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            config,
            registry,
            bus,
            source: SourceState::new(telemetry.nats_connected.clone()),
            telemetry,
            stream: None,
        }
    }

    /// Cluster mode: frames go to the Redis stream, like MQTT ones.
    pub fn stream_fed(mut self, writer: StreamWriter) -> Self {
        self.stream = Some(writer);
        self
    }

    fn sink(&self) -> Sink {
        Sink {
            max_payload_bytes: self.config.max_payload_bytes,
            // The EdgeWatch bridge's leniencies are for its MQTT publishers.
            rules: crate::frame::FrameRules::default(),
            inflight: InflightBytes::new(self.config.inflight_bytes),
            registry: self.registry.clone(),
            bus: self.bus.clone(),
            stream: self.stream.clone(),
            telemetry: self.telemetry.clone(),
            // NATS never redelivers (frames come at QoS 0): never consulted.
            recent: RecentFrames::new(0),
        }
    }
}

impl Actor for NatsIngest {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let stop_rx = self.source.started();
        let pump = NatsPump {
            config: self.config.clone(),
            sink: self.sink(),
            telemetry: self.telemetry.clone(),
            me: ctx.address(),
        };
        ctx.spawn(pump.run(stop_rx).into_actor(self));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.telemetry.nats_connected.set(0);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct StateChanged(ConnectionState);

impl Handler<StateChanged> for NatsIngest {
    type Result = ();

    fn handle(&mut self, msg: StateChanged, _: &mut Context<Self>) {
        self.source.changed(msg.0);
    }
}

/// The NATS source's connection state (`send` from `/readyz`).
#[derive(Message)]
#[rtype(result = "ConnectionState")]
pub struct NatsStatus;

impl Handler<NatsStatus> for NatsIngest {
    type Result = MessageResult<NatsStatus>;

    fn handle(&mut self, _: NatsStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.source.state())
    }
}

/// Unsubscribes, closes the connection and stops (`send` at shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct NatsStop;

impl Handler<NatsStop> for NatsIngest {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: NatsStop, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.source
                .stop(CLOSE_GRACE * 2)
                .into_actor(self)
                .map(|(), _, ctx| ctx.stop()),
        )
    }
}

type Flush = Pin<Box<dyn Future<Output = bool> + Send>>;

struct NatsPump {
    config: NatsConfig,
    sink: Sink,
    telemetry: Arc<Telemetry>,
    me: Addr<NatsIngest>,
}

impl NatsPump {
    async fn options(
        &self,
        events: mpsc::UnboundedSender<NatsEvent>,
    ) -> std::io::Result<ConnectOptions> {
        let c = &self.config;
        let mut options = match &c.auth {
            NatsAuth::None => ConnectOptions::new(),
            NatsAuth::UserPassword(user, password) => {
                ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Token(token) => ConnectOptions::with_token(token.clone()),
            NatsAuth::CredsFile(path) => ConnectOptions::with_credentials_file(path).await?,
        };
        if let Some(ca) = &c.ca_cert {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if c.url.starts_with("tls://") {
            options = options.require_tls(true);
        }
        let (min, max) = (c.backoff_min, c.backoff_max);
        Ok(options
            .subscription_capacity(subscription_capacity(c))
            .name(c.name.clone())
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| reconnect_delay(min, max, attempts))
            .event_callback(move |event| {
                let _ = events.send(event);
                async {}
            }))
    }

    async fn run(mut self, mut stop: oneshot::Receiver<oneshot::Sender<()>>) {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let options = match self.options(events_tx).await {
            Ok(options) => options,
            Err(error) => {
                log::error!(
                    "NATS: cannot read `nats.creds_file`: {error}. The NATS source stays down."
                );
                self.me.do_send(StateChanged(ConnectionState::Stopped));
                return;
            }
        };
        log::info!(
            "Connecting to NATS `{}` as `{}`.",
            self.config.url,
            self.config.name
        );
        // Returns at once: the first connection is retried in the background.
        let client = match options.connect(self.config.url.as_str()).await {
            Ok(client) => client,
            Err(error) => {
                log::error!(
                    "NATS: `nats.url` `{}` is unusable: {error}.",
                    self.config.url
                );
                self.me.do_send(StateChanged(ConnectionState::Stopped));
                return;
            }
        };
        let Some(mut messages) = self.subscribe(&client).await else {
            self.me.do_send(StateChanged(ConnectionState::Stopped));
            return;
        };
        let mut flushing: Option<Flush> = None;
        loop {
            tokio::select! {
                biased;
                done = &mut stop => {
                    // Drain: the server stops sending and what it sent is handled.
                    let _ = tokio::time::timeout(CLOSE_GRACE, client.drain()).await;
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                Some(event) = events.recv() => {
                    if let Some(flush) = self.on_event(&client, event) {
                        flushing = Some(flush);
                    }
                }
                subscribed = async { Some(flushing.as_mut()?.await) }, if flushing.is_some() => {
                    flushing = None;
                    if subscribed == Some(true) {
                        log::info!("Subscribed to {:?} on NATS `{}`.", self.config.subjects, self.config.url);
                        self.me.do_send(StateChanged(ConnectionState::Subscribed));
                    }
                }
                message = messages.next() => match message {
                    Some(message) => self.on_message(&message),
                    None => {
                        log::error!("NATS: the subscriptions ended (connection closed). The NATS source stays down.");
                        self.me.do_send(StateChanged(ConnectionState::Stopped));
                        return;
                    }
                },
            }
        }
    }

    async fn subscribe(&self, client: &Client) -> Option<SelectAll<async_nats::Subscriber>> {
        let mut all = SelectAll::new();
        for subject in &self.config.subjects {
            let subscribed = match &self.config.queue_group {
                Some(group) => client.queue_subscribe(subject.clone(), group.clone()).await,
                None => client.subscribe(subject.clone()).await,
            };
            match subscribed {
                Ok(subscriber) => all.push(subscriber),
                Err(error) => {
                    log::error!("NATS: cannot subscribe `{subject}`: {error}.");
                    return None;
                }
            }
        }
        Some(all)
    }

    /// A state change; on a (re)connection, the flush whose answer proves
    /// the server has every subscription (they are sent before it).
    fn on_event(&mut self, client: &Client, event: NatsEvent) -> Option<Flush> {
        match event {
            NatsEvent::Connected => {
                self.me.do_send(StateChanged(ConnectionState::Connected));
                let client = client.clone();
                return Some(Box::pin(async move { client.flush().await.is_ok() }));
            }
            NatsEvent::Disconnected => {
                self.telemetry.nats_reconnects.inc();
                log::warn!(
                    "NATS connection to `{}` lost; reconnecting.",
                    self.config.url
                );
                self.me.do_send(StateChanged(ConnectionState::Disconnected));
            }
            NatsEvent::Closed => {
                self.me.do_send(StateChanged(ConnectionState::Stopped));
            }
            // The client's bounded buffer was full: it dropped messages.
            // Counted (and logged at a limited rate) as overload drops.
            NatsEvent::SlowConsumer(_) => {
                self.telemetry.events_dropped(DropReason::Overload, 1);
            }
            other => log::warn!("NATS: {other}."),
        }
        None
    }

    fn on_message(&mut self, message: &async_nats::Message) {
        let subject = message.subject.as_str();
        // Too large to be read for its topic: refused by its size alone,
        // before any parsing, under its subject spelled as a topic.
        if message.payload.len() > self.config.max_payload_bytes {
            let topic = subject.replace('.', "/");
            let _ = self
                .sink
                .on_publish(&topic, &message.payload, QoS::AtMostOnce, false);
            return;
        }
        match self.config.map.topic(subject, &message.payload) {
            // Core NATS has no acknowledgements: in cluster mode the append
            // is not waited for.
            Ok(topic) => {
                let _ = self
                    .sink
                    .on_publish(&topic, &message.payload, QoS::AtMostOnce, false);
            }
            Err(error) => {
                let rejected = Rejected::from(Rejection::BadTopic(error.to_string()));
                let topic = SubjectMap::reject_topic(subject);
                let _ = self
                    .sink
                    .reject(&topic, &rejected, &message.payload, now_ms());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_wait_longer_each_time_up_to_the_max() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<u64> = (1..=6)
            .map(|n| reconnect_delay(min, max, n).as_secs())
            .collect();
        assert_eq!(delays, [0, 1, 2, 4, 5, 5]);
        assert_eq!(reconnect_delay(min, max, usize::MAX), max);
    }
}
