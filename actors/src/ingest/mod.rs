//! The Ingest actor: owns the MQTT client and turns every publish into a
//! validated [`Draft`] or a counted, reported rejection.
//!
//! State: the connection state (for `/readyz`). Accepts [`Status`] and
//! [`Stop`]. Sends metrics to the Registry ([`crate::registry::Observe`]) and every
//! other accepted event, and every rejection, to the Bus ([`crate::bus::Publish`]),
//! always with `try_send`: ingest never waits on anything downstream, a full
//! mailbox is an `overload` drop.
//!
//! The rumqttc event loop runs as a future in this actor's context. rumqttc
//! neither backs off nor re-subscribes after a reconnect; both happen here:
//! every ConnAck subscribes again, and every error waits [`Backoff`].
//!
//! With the embedded broker, a [`LocalLink`] (`link`) replaces rumqttc: the
//! router hands publishes over in-process. Both sources end in one
//! per-publish function, `Sink::on_publish`. The NATS source ([`nats`]) is a
//! third, with its own actor, ending there too.

pub mod backoff;
mod link;
pub mod nats;
pub mod subject;
pub mod tls;

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rumqttc::{
    AsyncClient, ConnectionError, Event as MqttEvent, EventLoop, MqttOptions, Outgoing, Packet,
    QoS, SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, oneshot};

use crate::bus::Publish;
use crate::cluster::{AppendError, StreamWriter};
use crate::event::{now_ms, Body, Draft};
use crate::families::{is_own_topic, metrics_device, route, Route, RESERVED_PREFIX};
use crate::inflight::InflightBytes;
use crate::registry::Observe;
use crate::telemetry::{DropReason, Telemetry};
use crate::topic::validate_topic;

use crate::frame::{parse_object, DeviceId, FrameRules, MetricsFrame, Rejection};
use crate::lax::Coercions;
use crate::reject::reject_draft;
pub use backoff::Backoff;
pub use link::LocalLink;

/// rumqttc's incoming packet limit. It must sit far above
/// `mqtt.max_payload_bytes`: a packet over it drops the whole connection (and
/// with a persistent session the broker redelivers it forever), while a frame
/// under it but over `max_payload_bytes` is rejected and counted by us.
pub const MQTT_PACKET_LIMIT: usize = 16 * 1024 * 1024;

/// Publishes remembered to recognise a broker redelivery (DUP flag).
const RECENT_FRAMES: usize = 4096;

/// How long a clean disconnect may take at shutdown.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub host: String,
    pub port: u16,
    /// Some for `mqtts://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub topics: Vec<String>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub max_payload_bytes: usize,
    pub keep_alive: Duration,
    /// Clean session off: the broker queues QoS 1 frames while we are away.
    pub persistent_session: bool,
    /// Bytes of accepted frames that may wait for the registry and the bus.
    pub inflight_bytes: usize,
    /// What a metrics frame may bend (`[compat.edgewatch]`); strict by default.
    pub frame_rules: FrameRules,
}

impl IngestConfig {
    fn mqtt_options(&self) -> MqttOptions {
        let mut options = MqttOptions::new(&self.client_id, &self.host, self.port);
        options
            .set_keep_alive(self.keep_alive)
            .set_clean_session(!self.persistent_session)
            .set_max_packet_size(MQTT_PACKET_LIMIT, 64 * 1024);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user, password);
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        }
        options
    }
}

/// Where ingest is in its connection life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    /// Connected, subscription not yet acknowledged.
    Connected,
    /// Subscribed to every configured topic: ready.
    Subscribed,
    Disconnected,
    Stopped,
}

/// What a source actor (MQTT, NATS) keeps of its pump: the connection
/// state `/readyz` asks for, the gauge that mirrors it, and how to stop the
/// pump. One place for the rules both sources follow: a stopped source stays
/// stopped, and stopping waits for the pump's goodbye within a grace.
pub(crate) struct SourceState {
    state: ConnectionState,
    gauge: prometheus::IntGauge,
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
}

impl SourceState {
    pub(crate) fn new(gauge: prometheus::IntGauge) -> Self {
        Self {
            state: ConnectionState::Connecting,
            gauge,
            stop: None,
        }
    }

    pub(crate) fn state(&self) -> ConnectionState {
        self.state
    }

    /// A new pump; it ends when asked through the returned receiver.
    pub(crate) fn started(&mut self) -> oneshot::Receiver<oneshot::Sender<()>> {
        let (stop_tx, stop_rx) = oneshot::channel();
        self.stop = Some(stop_tx);
        stop_rx
    }

    /// The pump reports `state` (ignored once stopped).
    pub(crate) fn changed(&mut self, state: ConnectionState) {
        if self.state == ConnectionState::Stopped {
            return;
        }
        self.state = state;
        self.gauge
            .set(i64::from(state == ConnectionState::Subscribed));
    }

    /// Marks the source stopped and asks the pump to end; the future
    /// resolves when it has, or after `grace`.
    pub(crate) fn stop(&mut self, grace: Duration) -> impl Future<Output = ()> + 'static {
        self.state = ConnectionState::Stopped;
        self.gauge.set(0);
        let (done_tx, done_rx) = oneshot::channel();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(done_tx);
        }
        async move {
            let _ = tokio::time::timeout(grace, done_rx).await;
        }
    }
}

pub struct Ingest {
    config: IngestConfig,
    registry: Recipient<Observe>,
    bus: Recipient<Publish>,
    telemetry: Arc<Telemetry>,
    source: SourceState,
    /// The embedded broker's in-process link, used instead of rumqttc.
    link: Option<LocalLink>,
    /// Shared by every connection this actor makes.
    inflight: Arc<InflightBytes>,
    /// Cluster mode: accepted events and rejections go to the Redis stream,
    /// and a frame is acknowledged to the broker once it is there.
    stream: Option<StreamWriter>,
}

impl Ingest {
    pub fn new(
        config: IngestConfig,
        registry: Recipient<Observe>,
        bus: Recipient<Publish>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            inflight: InflightBytes::new(config.inflight_bytes),
            config,
            registry,
            bus,
            source: SourceState::new(telemetry.mqtt_connected.clone()),
            telemetry,
            link: None,
            stream: None,
        }
    }

    /// Cluster mode: appends to the stream instead of feeding the registry
    /// and the bus, and acknowledges each QoS 1/2 frame only once appended.
    pub fn stream_fed(mut self, writer: StreamWriter) -> Self {
        self.stream = Some(writer);
        self
    }

    /// Reads from the embedded broker's local link instead of connecting to
    /// `host:port` with rumqttc (the broker/TLS/session settings then go
    /// unused: there is no network between the broker and us).
    pub fn with_link(mut self, link: LocalLink) -> Self {
        self.link = Some(link);
        self
    }

    fn sink(&self) -> Sink {
        Sink {
            max_payload_bytes: self.config.max_payload_bytes,
            rules: self.config.frame_rules,
            inflight: self.inflight.clone(),
            registry: self.registry.clone(),
            bus: self.bus.clone(),
            stream: self.stream.clone(),
            telemetry: self.telemetry.clone(),
            recent: RecentFrames::new(RECENT_FRAMES),
        }
    }
}

impl Actor for Ingest {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let stop_rx = self.source.started();
        if let Some(link) = self.link.take() {
            log::info!(
                "Reading the embedded MQTT broker through its local link as `{}`.",
                self.config.client_id
            );
            let pump =
                link::LinkPump::new(link, self.config.topics.clone(), self.sink(), ctx.address());
            ctx.spawn(pump.run(stop_rx).into_actor(self));
            return;
        }
        let mut options = self.config.mqtt_options();
        // Cluster mode acknowledges after the append; the request channel
        // carries those acks, so it holds more than the broker keeps in flight.
        let capacity = if self.stream.is_some() {
            options.set_manual_acks(true);
            1024
        } else {
            16
        };
        let (client, eventloop) = AsyncClient::new(options, capacity);
        let client_for_acks = client.clone();
        log::info!(
            "Connecting to MQTT broker `{}:{}` as `{}`.",
            self.config.host,
            self.config.port,
            self.config.client_id
        );
        let pump = Pump {
            client,
            eventloop,
            topics: self.config.topics.clone(),
            backoff: Backoff::new(self.config.backoff_min, self.config.backoff_max),
            sink: self.sink(),
            telemetry: self.telemetry.clone(),
            me: ctx.address(),
            broker: format!("{}:{}", self.config.host, self.config.port),
            acker: self
                .stream
                .is_some()
                .then(|| Acker::start(client_for_acks.clone())),
            dropping: false,
        };
        ctx.spawn(pump.run(stop_rx).into_actor(self));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.telemetry.mqtt_connected.set(0);
    }
}

/// The pump reports a state change (`do_send` to its own actor).
#[derive(Message)]
#[rtype(result = "()")]
struct StateChanged(ConnectionState);

impl Handler<StateChanged> for Ingest {
    type Result = ();

    fn handle(&mut self, msg: StateChanged, _: &mut Context<Self>) {
        self.source.changed(msg.0);
    }
}

/// Current connection state (`send` from `/readyz`).
#[derive(Message)]
#[rtype(result = "ConnectionState")]
pub struct Status;

impl Handler<Status> for Ingest {
    type Result = MessageResult<Status>;

    fn handle(&mut self, _: Status, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.source.state())
    }
}

/// Disconnects cleanly and stops (`send` from startup at shutdown); resolves
/// once the DISCONNECT went out or the grace period ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for Ingest {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Stop, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.source
                .stop(DISCONNECT_GRACE * 2)
                .into_actor(self)
                .map(|(), _, ctx| ctx.stop()),
        )
    }
}

/// Drives the rumqttc event loop; owned by the future spawned in `started`.
struct Pump {
    client: AsyncClient,
    eventloop: EventLoop,
    topics: Vec<String>,
    backoff: Backoff,
    sink: Sink,
    telemetry: Arc<Telemetry>,
    me: Addr<Ingest>,
    broker: String,
    /// Cluster mode: acknowledges frames once appended, in arrival order.
    acker: Option<Acker>,
    /// Cluster mode: a QoS 1/2 frame could not be held (the in-flight
    /// budget is full) and so is never acknowledged; the connection is
    /// dropped once, so the broker's in-flight window is not lost to it.
    dropping: bool,
}

/// Resolves to the frame to acknowledge once its append is decided, or
/// `None` when it must not be acknowledged (not appended).
type PendingAck = Pin<Box<dyn Future<Output = Option<rumqttc::Publish>> + Send>>;

/// Acknowledges cluster-mode frames once their appends are decided, in the
/// order they arrived (MQTT wants PUBACKs in order), on a task of its own:
/// the pump never stops polling the connection to wait for Redis (a
/// pending `EventLoop::poll` dropped midway is not known to be safe).
struct Acker {
    tx: mpsc::UnboundedSender<(u64, PendingAck)>,
    /// Bumped on every lost connection: packet ids belong to the
    /// connection that carried them, and an old id must never ack a frame
    /// of the next one.
    connection: Arc<AtomicU64>,
}

impl Acker {
    fn start(client: AsyncClient) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, PendingAck)>();
        let connection = Arc::new(AtomicU64::new(0));
        let current = connection.clone();
        // Bounded by the broker's in-flight window: it sends no more QoS 1
        // frames than that before their acks.
        actix::spawn(async move {
            while let Some((epoch, pending)) = rx.recv().await {
                let Some(header) = pending.await else {
                    continue;
                };
                if epoch == current.load(Ordering::Acquire) && client.ack(&header).await.is_err() {
                    return;
                }
            }
        });
        Self { tx, connection }
    }

    fn push(&self, pending: PendingAck) {
        let epoch = self.connection.load(Ordering::Acquire);
        let _ = self.tx.send((epoch, pending));
    }

    fn connection_lost(&self) {
        self.connection.fetch_add(1, Ordering::AcqRel);
    }
}

/// What a frame's acknowledgement waits for.
enum AckAfter {
    /// Nothing: acknowledged as usual (or, in cluster mode, at once: a
    /// redelivery already appended).
    Now,
    /// Its append to the stream.
    Append(oneshot::Receiver<Result<crate::event::EventId, AppendError>>),
    /// Never: it was dropped before the stream (overload), so the broker
    /// must keep it.
    Never,
}

impl Pump {
    async fn run(mut self, mut stop: oneshot::Receiver<oneshot::Sender<()>>) {
        loop {
            let polled = tokio::select! {
                biased;
                done = &mut stop => {
                    self.disconnect().await;
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                polled = self.eventloop.poll() => polled,
            };
            match polled {
                Ok(MqttEvent::Incoming(Packet::Publish(publish))) => self.on_publish(&publish),
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => self.on_connected(),
                Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => {
                    self.on_subscribed(&ack.return_codes)
                }
                Ok(_) => {}
                Err(error) => {
                    let delay = self.on_error(&error);
                    tokio::select! {
                        done = &mut stop => {
                            if let Ok(done) = done {
                                let _ = done.send(());
                            }
                            return;
                        }
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn on_connected(&mut self) {
        self.me.do_send(StateChanged(ConnectionState::Connected));
        // Always subscribe again: with a clean session the broker forgot us,
        // and re-subscribing an existing persistent session is harmless.
        let filters = self
            .topics
            .iter()
            .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        if let Err(error) = self.client.try_subscribe_many(filters) {
            log::error!("Could not request the MQTT subscription: {error}.");
        }
    }

    fn on_subscribed(&mut self, codes: &[SubscribeReasonCode]) {
        let refused: Vec<&str> = self
            .topics
            .iter()
            .zip(codes)
            .filter(|(_, code)| matches!(code, SubscribeReasonCode::Failure))
            .map(|(topic, _)| topic.as_str())
            .collect();
        if refused.is_empty() {
            self.backoff.reset();
            log::info!("Subscribed to {:?} on `{}`.", self.topics, self.broker);
            self.me.do_send(StateChanged(ConnectionState::Subscribed));
        } else {
            log::error!(
                "The broker `{}` refused the subscription to {refused:?}: check its ACL. Staying not ready.",
                self.broker
            );
        }
    }

    fn on_error(&mut self, error: &ConnectionError) -> Duration {
        // Packet ids belong to the connection that carried them: the broker
        // redelivers (persistent session) or forgets (clean) what was not
        // acknowledged, and an old id must never ack a new frame.
        if let Some(acker) = &self.acker {
            acker.connection_lost();
        }
        self.dropping = false;
        self.me.do_send(StateChanged(ConnectionState::Disconnected));
        self.telemetry.mqtt_reconnects.inc();
        let delay = self.backoff.next_delay();
        log::warn!(
            "MQTT connection to `{}` failed: {error}. Retrying in {:.1}s.",
            self.broker,
            delay.as_secs_f64()
        );
        delay
    }

    async fn disconnect(&mut self) {
        if self.client.try_disconnect().is_err() {
            return;
        }
        let flushed = tokio::time::timeout(DISCONNECT_GRACE, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if flushed.is_err() {
            log::warn!("MQTT disconnect did not complete within {DISCONNECT_GRACE:?}.");
        }
    }

    fn on_publish(&mut self, publish: &rumqttc::Publish) {
        let after =
            self.sink
                .on_publish(&publish.topic, &publish.payload, publish.qos, publish.dup);
        let Some(acker) = &self.acker else {
            return;
        };
        if publish.qos == QoS::AtMostOnce {
            return;
        }
        // What an ack needs of the frame: its packet id and QoS.
        let mut header = rumqttc::Publish::new("", publish.qos, Vec::<u8>::new());
        header.pkid = publish.pkid;
        match after {
            // Through the same queue, so it cannot overtake earlier frames.
            AckAfter::Now => acker.push(Box::pin(async move { Some(header) })),
            // Never acknowledged, the frame would hold one of the few
            // in-flight slots the broker grants us for as long as the
            // connection lives, and enough of them stop QoS 1 delivery to
            // this instance for good. Reconnecting gives them back: the
            // broker redelivers (persistent session) or drops them (clean),
            // and the back-off before the reconnect lets the budget drain.
            AckAfter::Never if !self.dropping => {
                self.dropping = true;
                log::warn!(
                    "MQTT: a QoS 1 frame could not be held for the stream (bus.inflight_bytes is \
                     full); reconnecting so the broker takes it back."
                );
                let _ = self.client.try_disconnect();
            }
            AckAfter::Never => {}
            AckAfter::Append(rx) => acker.push(Box::pin(async move {
                match rx.await {
                    // Rejected by the cluster-wide cap: counted and reported.
                    Ok(Ok(_) | Err(AppendError::DeviceCap)) => Some(header),
                    _ => None,
                }
            })),
        }
    }
}

/// Where every publish goes, whatever brought it (rumqttc or the embedded
/// broker's local link): duplicate check, acceptance, then the registry or
/// the bus, or a counted rejection.
struct Sink {
    max_payload_bytes: usize,
    rules: FrameRules,
    inflight: Arc<InflightBytes>,
    registry: Recipient<Observe>,
    bus: Recipient<Publish>,
    /// Cluster mode: everything goes here instead.
    stream: Option<StreamWriter>,
    telemetry: Arc<Telemetry>,
    recent: RecentFrames,
}

impl Sink {
    fn on_publish(&mut self, topic: &str, payload: &[u8], qos: QoS, dup: bool) -> AckAfter {
        let ts_ms = now_ms();
        // Only QoS 1/2 frames can come again: QoS 0 ones skip the hashing.
        let fingerprint =
            (qos != QoS::AtMostOnce).then(|| RecentFrames::fingerprint(topic, payload));
        if let Some(fingerprint) = fingerprint {
            if dup && self.recent.contains(fingerprint) {
                self.telemetry.frames_duplicate.inc();
                return AckAfter::Now;
            }
        }
        match accept_with(topic, payload, self.max_payload_bytes, ts_ms, self.rules) {
            Ok((draft, leniency)) => {
                self.telemetry
                    .frame_bent(&leniency.coercions, leniency.device_id_differs);
                let Some(draft) = draft.reserve(&self.inflight) else {
                    self.telemetry.events_dropped(DropReason::Overload, 1);
                    return AckAfter::Never;
                };
                // Only a frame that goes on is remembered: a redelivery of
                // one dropped here must be taken, not acknowledged as seen.
                if let Some(fingerprint) = fingerprint {
                    self.recent.remember(fingerprint);
                }
                if let Some(stream) = &self.stream {
                    let device = draft
                        .body
                        .as_metrics()
                        .map(|frame| frame.device_id.to_string());
                    // A metrics frame is accepted once the cap admits it
                    // (the stream writer counts it), as the registry does.
                    if device.is_none() {
                        self.telemetry.frames_accepted.inc();
                    }
                    return append(stream, draft, device);
                }
                let sent = if route(&draft.topic) == Route::Registry {
                    self.registry.try_send(Observe(draft)).is_ok()
                } else {
                    self.telemetry.frames_accepted.inc();
                    self.bus.try_send(Publish(draft)).is_ok()
                };
                if !sent {
                    self.telemetry.events_dropped(DropReason::Overload, 1);
                }
                AckAfter::Now
            }
            Err(rejected) => self.reject(topic, &rejected, payload, ts_ms),
        }
    }

    /// A publish whose topic is not UTF-8 (possible only on the local link:
    /// rumqttc refuses such a packet itself): a `bad_topic` rejection.
    fn on_bad_topic(&mut self, topic: &[u8], payload: &[u8]) {
        let topic = String::from_utf8_lossy(topic);
        let rejected = Rejected::from(Rejection::BadTopic("the topic is not UTF-8".into()));
        // The local link has no acks: nothing waits for this.
        let _ = self.reject(&topic, &rejected, payload, now_ms());
    }

    fn reject(&mut self, topic: &str, rejected: &Rejected, payload: &[u8], ts_ms: u64) -> AckAfter {
        self.telemetry.frame_rejected(topic, &rejected.rejection);
        let device = rejected.device.as_ref().map(DeviceId::as_str);
        let draft = reject_draft(topic, device, &rejected.rejection, payload, ts_ms);
        let Some(draft) = draft.reserve(&self.inflight) else {
            self.telemetry.events_dropped(DropReason::Overload, 1);
            return AckAfter::Never;
        };
        if let Some(stream) = &self.stream {
            return append(stream, draft, None);
        }
        if self.bus.try_send(Publish(draft)).is_err() {
            self.telemetry.events_dropped(DropReason::Overload, 1);
        }
        AckAfter::Now
    }
}

/// Cluster mode: hands `draft` to the stream writer; the frame's ack waits.
fn append(stream: &StreamWriter, draft: Draft, device: Option<String>) -> AckAfter {
    let (tx, rx) = oneshot::channel();
    stream.append(draft, device, Some(tx), None);
    AckAfter::Append(rx)
}

/// A refused frame and, when the topic named a valid one, its device.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub rejection: Rejection,
    pub device: Option<DeviceId>,
}

impl From<Rejection> for Rejected {
    fn from(rejection: Rejection) -> Self {
        Self {
            rejection,
            device: None,
        }
    }
}

/// The acceptance rule for one publish, whatever its source (MQTT or HTTP):
/// topic checks, then the strict metrics rules or the generic object rules.
pub fn accept(
    topic: &str,
    payload: &[u8],
    max_bytes: usize,
    ts_ms: u64,
) -> Result<Draft, Rejected> {
    accept_with(topic, payload, max_bytes, ts_ms, FrameRules::default()).map(|(draft, _)| draft)
}

/// What lax frame rules took to accept a frame (nothing under strict ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leniency {
    pub coercions: Coercions,
    /// Filed under the payload's device, not the topic's.
    pub device_id_differs: bool,
}

/// [`accept`] with the metrics frames under `rules`. A frame whose payload
/// names another device (allowed by `rules`) becomes an event of that
/// device's topic, `devices/{device_id}/metrics`: per-device streams, the
/// registry and the alerts all follow the payload.
pub fn accept_with(
    topic: &str,
    payload: &[u8],
    max_bytes: usize,
    ts_ms: u64,
    rules: FrameRules,
) -> Result<(Draft, Leniency), Rejected> {
    validate_topic(topic).map_err(|e| Rejection::BadTopic(e.to_string()))?;
    if topic.starts_with(RESERVED_PREFIX) {
        return Err(Rejection::BadTopic(format!(
            "`{RESERVED_PREFIX}` topics are reserved for edgebus"
        ))
        .into());
    }
    if is_own_topic(topic) {
        return Err(Rejection::BadTopic(
            "alert, presence and upload topics are published by edgebus only".into(),
        )
        .into());
    }
    if let Some(device) = metrics_device(topic) {
        let accepted =
            MetricsFrame::parse_with(device, payload, max_bytes, rules).map_err(|rejection| {
                Rejected {
                    rejection,
                    device: DeviceId::parse(device).ok(),
                }
            })?;
        let leniency = Leniency {
            coercions: accepted.coercions,
            device_id_differs: accepted.device_id_differs,
        };
        let frame = accepted.frame;
        let draft = if leniency.device_id_differs {
            let topic = format!("devices/{}/metrics", frame.device_id);
            Draft::new(topic, ts_ms, Body::Metrics(frame))
        } else {
            Draft::new(topic, ts_ms, Body::Metrics(frame))
        };
        return Ok((draft, leniency));
    }
    let object = parse_object(payload, max_bytes)?;
    Ok((
        Draft::new(topic, ts_ms, Body::Object(object)),
        Leniency::default(),
    ))
}

/// Fingerprints of recent QoS 1 publishes, to recognise a redelivery.
struct RecentFrames {
    set: HashSet<u64>,
    order: VecDeque<u64>,
    cap: usize,
}

impl RecentFrames {
    fn new(cap: usize) -> Self {
        Self {
            set: HashSet::with_capacity(cap),
            order: VecDeque::with_capacity(cap),
            cap,
        }
    }

    fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
        let mut h = DefaultHasher::new();
        topic.hash(&mut h);
        payload.hash(&mut h);
        h.finish()
    }

    fn contains(&self, fingerprint: u64) -> bool {
        self.set.contains(&fingerprint)
    }

    fn remember(&mut self, fingerprint: u64) {
        if !self.set.insert(fingerprint) {
            return;
        }
        self.order.push_back(fingerprint);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;

    const GOOD: &[u8] =
        br#"{"device_id":"d1","timestamp":1,"cpu_percent":1,"mem_percent":2,"disk_percent":3}"#;

    #[test]
    fn metrics_topics_get_the_strict_rules() {
        let draft = accept("devices/d1/metrics", GOOD, 1024, 7).unwrap();
        assert!(matches!(draft.body, Payload::Metrics(_)));
        let err = accept("devices/d2/metrics", GOOD, 1024, 7).unwrap_err();
        assert_eq!(err.rejection, Rejection::DeviceIdMismatch);
        assert_eq!(err.device.unwrap().as_str(), "d2");
    }

    #[test]
    fn a_payloads_device_id_files_the_frame_under_its_device_when_allowed() {
        let rules = FrameRules {
            device_id_from_payload: true,
            lax: true,
        };
        let lax = br#"{"device_id":"d1","timestamp":"1","cpu_percent":1,"mem_percent":2,"disk_percent":3}"#;
        let (draft, leniency) = accept_with("devices/d2/metrics", lax, 1024, 7, rules).unwrap();
        assert_eq!(&*draft.topic, "devices/d1/metrics");
        assert!(leniency.device_id_differs);
        assert_eq!(leniency.coercions.iter().count(), 1);
        assert!(draft.payload_json().contains(r#""timestamp":1,"#));
        let (same, leniency) = accept_with("devices/d1/metrics", GOOD, 1024, 7, rules).unwrap();
        assert_eq!(&*same.topic, "devices/d1/metrics");
        assert_eq!(leniency, Leniency::default());
        assert!(accept("devices/d1/metrics", lax, 1024, 7).is_err());
    }

    #[test]
    fn other_topics_need_a_json_object() {
        assert!(accept("attackers/u1/scored", br#"{"score":3}"#, 1024, 0).is_ok());
        let err = accept("attackers/u1/scored", b"[1]", 1024, 0).unwrap_err();
        assert_eq!(err.rejection, Rejection::NotObject);
        assert_eq!(err.device, None);
    }

    #[test]
    fn reserved_and_malformed_topics_are_refused() {
        let err = accept("edgebus/rejects", b"{}", 1024, 0).unwrap_err();
        assert_eq!(err.rejection.as_str(), "bad_topic");
        let err = accept("devices/+/metrics", GOOD, 1024, 0).unwrap_err();
        assert_eq!(err.rejection.as_str(), "bad_topic");
        for forged in [
            "alerts/d1/cpu_high",
            "alerts",
            "devices/d1/presence",
            "uploads/lab-01",
        ] {
            let err = accept(forged, b"{}", 1024, 0).unwrap_err();
            assert_eq!(err.rejection.as_str(), "bad_topic", "{forged}");
        }
        assert!(accept("devices/d1/presence/x", b"{}", 1024, 0).is_ok());
        assert!(accept("alertsx/1", b"{}", 1024, 0).is_ok());
        let err = accept("uploads/lab-01", b"{}", 1024, 0).unwrap_err();
        assert_eq!(
            err.rejection.to_string(),
            Rejection::BadTopic(
                "alert, presence and upload topics are published by edgebus only".into()
            )
            .to_string()
        );
    }

    /// Downstream that takes messages into its mailbox and never handles
    /// them: a registry and a bus that stopped keeping up.
    struct Stalled;

    impl Actor for Stalled {
        type Context = Context<Self>;
    }

    impl Handler<Observe> for Stalled {
        type Result = MessageResult<Observe>;
        fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> Self::Result {
            panic!("a stalled actor handles nothing")
        }
    }

    impl Handler<Publish> for Stalled {
        type Result = MessageResult<Publish>;
        fn handle(&mut self, _: Publish, _: &mut Context<Self>) -> Self::Result {
            panic!("a stalled actor handles nothing")
        }
    }

    #[actix::test]
    async fn frames_waiting_for_a_stalled_bus_stay_within_the_inflight_bytes() {
        let mut ctx = Context::<Stalled>::new();
        // Mailboxes far larger than the budget: only the bytes can stop it.
        ctx.set_mailbox_capacity(1_000_000);
        let stalled = ctx.address();
        let telemetry = Arc::new(Telemetry::new());
        let budget = InflightBytes::new(1 << 20);
        let mut sink = Sink {
            max_payload_bytes: 16 * 1024,
            rules: FrameRules::default(),
            inflight: budget.clone(),
            registry: stalled.clone().recipient(),
            bus: stalled.recipient(),
            stream: None,
            telemetry: telemetry.clone(),
            recent: RecentFrames::new(4),
        };
        // 16 KB hostile payloads: 2 MB of zeros, then metrics frames.
        let mut zeros = b"{\"a\":[".to_vec();
        zeros.extend(b"0,".repeat(8000));
        zeros.extend_from_slice(b"0]}");
        for _ in 0..128 {
            sink.on_publish("attackers/a1/observation/x", &zeros, QoS::AtMostOnce, false);
        }
        for _ in 0..64 {
            sink.on_publish("devices/d1/metrics", GOOD, QoS::AtMostOnce, false);
        }
        assert!(
            budget.used() <= budget.limit(),
            "{} bytes held",
            budget.used()
        );
        let dropped = telemetry.events_dropped_count(DropReason::Overload);
        assert!(
            (64..192).contains(&dropped),
            "about half the hostile frames do not fit ({dropped} dropped)"
        );
        // What the mailbox still holds is given back when it goes.
        drop(ctx);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn recent_frames_forget_the_oldest_beyond_the_cap() {
        let mut recent = RecentFrames::new(2);
        for f in [1, 2, 3] {
            recent.remember(f);
        }
        assert!(!recent.contains(1));
        assert!(recent.contains(2) && recent.contains(3));
    }
}
