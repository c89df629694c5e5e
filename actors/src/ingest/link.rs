//! Ingest from the embedded broker (rumqttd) through its in-process local
//! link: the router hands us each publish's topic and payload as `Bytes`,
//! with no MQTT encoding, loopback socket or decoding in between.
//!
//! The link subscribes at QoS 0 (all rumqttd's local link offers): the
//! router hands us each filter's commit log in order, and a QoS 0 delivery
//! is never redelivered, so no duplicate check is needed. Only falling
//! behind by more than that log's retention (`mqtt.embedded_retention_bytes`)
//! loses frames; the router numbers every message of a filter's log, so the
//! gap between two reads is what was lost, and edgebus counts it
//! (`edgebus_mqtt_broker_overruns_total`). The link
//! cannot be re-established (the broker has no restart): when it fails,
//! ingest logs an error and stays not ready until shutdown.

use actix::Addr;
use rumqttc::QoS;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, SubscribeReasonCode};
use rumqttd::Notification;
use tokio::sync::oneshot;

use super::{ConnectionState, Ingest, Sink, StateChanged};
use crate::topic::TopicFilter;

/// Both halves of a local link, from `rumqttd::Broker::link` (taken before
/// the broker's `start()`, which blocks its thread).
pub struct LocalLink {
    pub tx: LinkTx,
    pub rx: LinkRx,
}

impl std::fmt::Debug for LocalLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLink")
            .field("id", &self.rx.id())
            .finish()
    }
}

/// Drives the local link; owned by the future spawned in `Ingest::started`.
pub(super) struct LinkPump {
    tx: LinkTx,
    rx: LinkRx,
    topics: Vec<String>,
    /// SubAcks still expected: ready once every topic's has come.
    pending_acks: usize,
    refused: Vec<String>,
    offsets: ReadOffsets,
    sink: Sink,
    me: Addr<Ingest>,
}

impl LinkPump {
    pub(super) fn new(link: LocalLink, topics: Vec<String>, sink: Sink, me: Addr<Ingest>) -> Self {
        Self {
            tx: link.tx,
            rx: link.rx,
            pending_acks: topics.len(),
            offsets: ReadOffsets::new(&topics),
            topics,
            refused: Vec::new(),
            sink,
            me,
        }
    }

    pub(super) async fn run(mut self, mut stop: oneshot::Receiver<oneshot::Sender<()>>) {
        if let Err(error) = self.serve(&mut stop).await {
            log::error!(
                "The link to the embedded MQTT broker failed: {error}. It cannot be restarted: \
                 no frames are ingested and /readyz answers 503 until edgebus is restarted."
            );
            self.me.do_send(StateChanged(ConnectionState::Disconnected));
            // Wait for shutdown only.
            if let Ok(done) = stop.await {
                let _ = done.send(());
            }
        }
    }

    /// Subscribes, then forwards notifications until told to stop (`Ok`) or
    /// the link fails (`Err`, with why).
    async fn serve(
        &mut self,
        stop: &mut oneshot::Receiver<oneshot::Sender<()>>,
    ) -> Result<(), String> {
        // The link is the connection: the broker's ConnAck came in `link()`.
        self.me.do_send(StateChanged(ConnectionState::Connected));
        for topic in &self.topics {
            self.tx
                .subscribe(topic.clone())
                .map_err(|e| format!("could not subscribe to `{topic}`: {e}"))?;
        }
        loop {
            let next = tokio::select! {
                biased;
                done = &mut *stop => {
                    self.disconnect().await;
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    return Ok(());
                }
                next = self.rx.next() => next,
            };
            match next.map_err(|e| e.to_string())? {
                Some(Notification::Forward(forward)) => {
                    let publish = &forward.publish;
                    match std::str::from_utf8(&publish.topic) {
                        Ok(topic) => {
                            if let Some((_, offset)) = forward.cursor {
                                if let Some((filter, lost)) = self.offsets.read(topic, offset) {
                                    self.sink.telemetry.broker_overrun(filter, lost);
                                }
                            }
                            // The local link has no acks to wait for.
                            let _ = self.sink.on_publish(
                                topic,
                                &publish.payload,
                                QoS::AtMostOnce,
                                false,
                            );
                        }
                        Err(_) => self.sink.on_bad_topic(&publish.topic, &publish.payload),
                    }
                }
                Some(Notification::DeviceAck(ack)) => {
                    if let Packet::SubAck(suback, _) = Packet::from(ack) {
                        self.on_subscribed(&suback.return_codes);
                    }
                }
                // The router filled our buffer and stops forwarding until we
                // say we are ready again.
                Some(Notification::Unschedule) => {
                    self.rx.wake().await.map_err(|e| e.to_string())?;
                }
                Some(Notification::Disconnect(disconnect, _)) => {
                    return Err(format!(
                        "the broker disconnected it ({:?})",
                        disconnect.reason_code
                    ));
                }
                Some(_) | None => {}
            }
        }
    }

    /// One SubAck per subscribed topic, in order.
    fn on_subscribed(&mut self, codes: &[SubscribeReasonCode]) {
        if self.pending_acks == 0 {
            return;
        }
        let index = self.topics.len() - self.pending_acks;
        self.pending_acks -= 1;
        let failed = codes.iter().any(|code| {
            !matches!(
                code,
                SubscribeReasonCode::QoS0
                    | SubscribeReasonCode::QoS1
                    | SubscribeReasonCode::QoS2
                    | SubscribeReasonCode::Success(_)
            )
        });
        if failed {
            if let Some(topic) = self.topics.get(index) {
                self.refused.push(topic.clone());
            }
        }
        if self.pending_acks > 0 {
            return;
        }
        if self.refused.is_empty() {
            log::info!(
                "Subscribed to {:?} on the embedded broker (local link).",
                self.topics
            );
            self.me.do_send(StateChanged(ConnectionState::Subscribed));
        } else {
            log::error!(
                "The embedded broker refused the subscription to {:?}. Staying not ready.",
                self.refused
            );
        }
    }

    async fn disconnect(&mut self) {
        let disconnect = Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        };
        if let Err(error) = self.tx.send(Packet::Disconnect(disconnect, None)).await {
            log::warn!("Could not leave the embedded broker cleanly: {error}.");
        }
    }
}

/// Where ingest's read of each of its filters' commit logs stands. The
/// router numbers the messages of a filter's log one by one, so a read that
/// skips numbers means the broker dropped them (its retention was outrun)
/// before ingest read them. rumqttd reports such jumps only through alerts
/// its own timer pushes, which a broker assembled from its parts lacks.
struct ReadOffsets {
    /// Each subscribed filter (a `$share/{group}/` prefix removed: its log
    /// is the filter's) and the offset of the last message read from it.
    filters: Vec<(String, Option<TopicFilter>, Option<u64>)>,
}

impl ReadOffsets {
    fn new(topics: &[String]) -> Self {
        let filters = topics
            .iter()
            .map(|topic| {
                let filter = topic
                    .strip_prefix("$share/")
                    .and_then(|rest| rest.split_once('/'))
                    .map_or(topic.as_str(), |(_, filter)| filter);
                (topic.clone(), TopicFilter::parse(filter).ok(), None)
            })
            .collect();
        Self { filters }
    }

    /// A message at `offset` of the log of the first filter `topic` matches
    /// was read: that filter and the messages lost before it, if any.
    fn read(&mut self, topic: &str, offset: u64) -> Option<(&str, u64)> {
        let (name, _, last) = self
            .filters
            .iter_mut()
            .find(|(_, filter, _)| filter.as_ref().is_some_and(|f| f.matches(topic)))?;
        let lost = last.map_or(0, |last| offset.saturating_sub(last.saturating_add(1)));
        *last = Some(offset);
        (lost > 0).then_some((name.as_str(), lost))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use actix::{Actor, Addr};
    use rumqttd::{Broker, Config, RouterConfig};

    use super::{LocalLink, ReadOffsets};
    use crate::bus::{Bus, BusConfig};
    use crate::ingest::{ConnectionState, Ingest, IngestConfig, Status, Stop};
    use crate::registry::{Registry, RegistryConfig};
    use crate::telemetry::Telemetry;

    /// A broker with its router only (no listener: nothing here uses TCP).
    fn router_only() -> Broker {
        Broker::new(Config {
            router: RouterConfig {
                max_connections: 10,
                max_outgoing_packet_count: 100,
                max_segment_size: 1024 * 1024,
                max_segment_count: 2,
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn ingest_config(topics: &[&str]) -> IngestConfig {
        IngestConfig {
            host: "unused".into(),
            port: 0,
            tls: None,
            client_id: "edgebus-test".into(),
            credentials: None,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(1),
            max_payload_bytes: 1024,
            keep_alive: Duration::from_secs(30),
            persistent_session: false,
            inflight_bytes: 1 << 20,
            frame_rules: crate::frame::FrameRules::default(),
        }
    }

    /// A bus and a registry, as ingest's downstream.
    fn downstream() -> (Addr<Bus>, Addr<Registry>, Arc<Telemetry>) {
        let telemetry = Arc::new(Telemetry::new());
        let bus = Bus::new(
            BusConfig {
                queue_capacity: 16,
                history: 16,
                metrics_snapshot_window: Duration::from_secs(30),
                ..BusConfig::default()
            },
            telemetry.clone(),
        )
        .start();
        let registry = Registry::new(
            RegistryConfig {
                max_devices: 10,
                active_window: Duration::from_secs(30),
            },
            bus.clone().recipient(),
            telemetry.clone(),
        )
        .start();
        (bus, registry, telemetry)
    }

    /// Polls `check` until it holds. The bound only ends a test that would
    /// never pass: the router and the actors run on threads of their own,
    /// which a loaded machine may leave waiting for seconds.
    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never happened: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[actix::test]
    async fn frames_from_the_local_link_are_validated_and_counted() {
        let broker = router_only();
        let (tx, rx) = broker.link("edgebus-test").unwrap();
        let (mut publisher, _publisher_rx) = broker.link("device").unwrap();

        let (bus, registry, telemetry) = downstream();
        let ingest = Ingest::new(
            ingest_config(&["notifications/#", "attackers/#"]),
            registry.recipient(),
            bus.recipient(),
            telemetry.clone(),
        )
        .with_link(LocalLink { tx, rx })
        .start();

        let t = telemetry.clone();
        eventually("subscribed", move || t.mqtt_connected.get() == 1).await;
        assert_eq!(
            ingest.send(Status).await.unwrap(),
            ConnectionState::Subscribed
        );
        assert_eq!(telemetry.mqtt_connected.get(), 1);

        publisher.publish("notifications/a", r#"{"n":1}"#).unwrap();
        publisher.publish("attackers/u1", "[1]").unwrap();
        let t = telemetry.clone();
        eventually("one accepted", move || t.frames_accepted.get() == 1).await;
        let t = telemetry.clone();
        eventually("one rejected", move || t.frames_rejected("not_object") == 1).await;

        ingest.send(Stop).await.unwrap();
        assert_eq!(telemetry.mqtt_connected.get(), 0);
    }

    #[actix::test]
    async fn a_failed_link_leaves_ingest_not_ready_until_stopped() {
        let broker = router_only();
        let (tx, rx) = broker.link("edgebus-test").unwrap();
        let (bus, registry, telemetry) = downstream();
        let ingest = Ingest::new(
            ingest_config(&["notifications/#"]),
            registry.recipient(),
            bus.recipient(),
            telemetry.clone(),
        )
        .with_link(LocalLink { tx, rx })
        .start();
        let t = telemetry.clone();
        eventually("subscribed", move || t.mqtt_connected.get() == 1).await;

        // A second connection with our client id takes the session over.
        let _thief = broker.link("edgebus-test").unwrap();
        let t = telemetry.clone();
        eventually("not ready", move || t.mqtt_connected.get() == 0).await;
        assert_eq!(
            ingest.send(Status).await.unwrap(),
            ConnectionState::Disconnected
        );
        tokio::time::timeout(Duration::from_secs(5), ingest.send(Stop))
            .await
            .unwrap()
            .unwrap();
    }

    #[actix::test]
    async fn a_non_utf8_topic_is_a_counted_rejection() {
        let (bus, registry, telemetry) = downstream();
        let mut sink = super::Sink {
            max_payload_bytes: 1024,
            rules: crate::frame::FrameRules::default(),
            inflight: crate::inflight::InflightBytes::new(1 << 20),
            registry: registry.recipient(),
            bus: bus.recipient(),
            stream: None,
            telemetry: telemetry.clone(),
            recent: super::super::RecentFrames::new(4),
        };
        sink.on_bad_topic(b"devices/\xff/metrics", b"{}");
        assert_eq!(telemetry.frames_rejected("bad_topic"), 1);
    }

    #[test]
    fn a_gap_in_a_filters_read_offsets_is_the_frames_the_broker_dropped() {
        let mut offsets = ReadOffsets::new(&[
            "devices/+/metrics".to_owned(),
            "$share/g/attackers/#".to_owned(),
        ]);
        assert_eq!(offsets.read("devices/d1/metrics", 0), None);
        assert_eq!(offsets.read("devices/d2/metrics", 1), None);
        assert_eq!(offsets.read("attackers/a/scored", 7), None, "its own log");
        assert_eq!(
            offsets.read("devices/d1/metrics", 5),
            Some(("devices/+/metrics", 3))
        );
        assert_eq!(offsets.read("attackers/a/scored", 8), None);
        assert_eq!(offsets.read("elsewhere/x", 99), None, "no filter of ours");
    }
}
