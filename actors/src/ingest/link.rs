//! Ingest from the embedded broker (rumqttd) through its in-process local
//! link: the router hands us each publish's topic and payload as `Bytes`,
//! with no MQTT encoding, loopback socket or decoding in between.
//!
//! The link subscribes at QoS 0 (all rumqttd's local link offers): nothing
//! sits between the router and us that could lose a frame, and a QoS 0
//! delivery is never redelivered, so no duplicate check is needed. The link
//! cannot be re-established (the broker has no restart): when it fails,
//! ingest logs an error and stays not ready until shutdown.

use actix::Addr;
use rumqttc::QoS;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, SubscribeReasonCode};
use rumqttd::Notification;
use tokio::sync::oneshot;

use super::{ConnectionState, Ingest, Sink, StateChanged};

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
    sink: Sink,
    me: Addr<Ingest>,
}

impl LinkPump {
    pub(super) fn new(link: LocalLink, topics: Vec<String>, sink: Sink, me: Addr<Ingest>) -> Self {
        Self {
            tx: link.tx,
            rx: link.rx,
            pending_acks: topics.len(),
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
                            self.sink
                                .on_publish(topic, &publish.payload, QoS::AtMostOnce, false)
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
