//! The no-bridge reference: MQTT-over-WebSocket subscribers on the broker's
//! own WebSocket listener (Mosquitto's `protocol websockets`), counted by the
//! same per-client code as the edgebus clients.
//!
//! The MQTT 3.1.1 packets are rumqttc's `mqttbytes` v4 codec; what is ours is
//! the stream handling around it: WebSocket messages are not MQTT packets (one
//! message may carry several packets or a part of one), so every binary
//! message is appended to a buffer and whole packets are taken off its front.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::Item;
use awc::ws::{Frame, Message};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet, Subscribe, SubscribeReasonCode};
use rumqttc::mqttbytes::{Error as MqttError, QoS};

use super::{open_ws, ClientStats, Shared};

/// The subscription, the MQTT spelling of the edgebus clients' topic.
const FILTER: &str = "devices/+/metrics";

/// Largest packet accepted from the broker; ours are ~160 bytes.
const MAX_PACKET: usize = 1 << 20;

/// Keep-alive sent in CONNECT. A run (connect, publish, drain) can outlast
/// it, so the client pings at half of it.
const KEEP_ALIVE: Duration = Duration::from_secs(60);

/// Mosquitto's WebSocket listener refuses a handshake without this
/// subprotocol.
const SUBPROTOCOL: &str = "mqtt";

/// CONNECT with a clean session and [`KEEP_ALIVE`].
fn connect_packet(client_id: &str) -> Bytes {
    let connect = Connect {
        keep_alive: KEEP_ALIVE.as_secs() as u16,
        clean_session: true,
        ..Connect::new(client_id)
    };
    encode(&Packet::Connect(connect))
}

/// SUBSCRIBE to [`FILTER`] at QoS 0.
fn subscribe_packet() -> Bytes {
    // rumqttc's event loop numbers packets itself; on its own, `new` leaves
    // the id at 0, which MQTT forbids and Mosquitto answers by closing.
    let subscribe = Subscribe {
        pkid: 1,
        ..Subscribe::new(FILTER, QoS::AtMostOnce)
    };
    encode(&Packet::Subscribe(subscribe))
}

fn encode(packet: &Packet) -> Bytes {
    let mut out = BytesMut::new();
    packet
        .write(&mut out, MAX_PACKET)
        .expect("the load client's own packets encode");
    out.freeze()
}

/// MQTT packets out of a byte stream that arrives in arbitrary pieces.
#[derive(Default)]
struct PacketReader {
    buf: BytesMut,
}

impl PacketReader {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole packet, `Ok(None)` until more bytes arrive.
    fn next_packet(&mut self) -> Result<Option<Packet>, MqttError> {
        match Packet::read(&mut self.buf, MAX_PACKET) {
            Ok(packet) => Ok(Some(packet)),
            Err(MqttError::InsufficientBytes(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// Where a client stands in the CONNECT/SUBSCRIBE exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Subscribing,
    Subscribed,
}

/// Why a client gave up.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("the broker refused CONNECT: {0:?}")]
    Connect(ConnectReturnCode),
    #[error("the broker refused the subscription")]
    Subscribe,
    #[error("undecodable MQTT from the broker: {0}")]
    Decode(MqttError),
    #[error("unexpected {0} from the broker")]
    Unexpected(&'static str),
}

/// Feeds one packet to the client's state and counters.
fn on_packet(
    packet: Packet,
    phase: &mut Phase,
    stats: &mut ClientStats,
    shared: &Shared,
) -> Result<(), Refusal> {
    match packet {
        Packet::Publish(publish) => stats.on_payload(&publish.payload, shared),
        Packet::ConnAck(ack) if *phase == Phase::Connecting => {
            if ack.code != ConnectReturnCode::Success {
                return Err(Refusal::Connect(ack.code));
            }
            *phase = Phase::Subscribing;
        }
        Packet::SubAck(ack) if *phase == Phase::Subscribing => {
            if !matches!(
                ack.return_codes.as_slice(),
                [SubscribeReasonCode::Success(_)]
            ) {
                return Err(Refusal::Subscribe);
            }
            *phase = Phase::Subscribed;
            shared.ready.fetch_add(1, Ordering::AcqRel);
        }
        Packet::PingResp => {}
        Packet::ConnAck(_) => return Err(Refusal::Unexpected("CONNACK")),
        Packet::SubAck(_) => return Err(Refusal::Unexpected("SUBACK")),
        _ => stats.other_frames += 1,
    }
    Ok(())
}

/// One MQTT-over-WebSocket subscriber on `url`, until `stop` or `deadline`.
pub(super) async fn run_client(
    client: awc::Client,
    url: String,
    client_id: String,
    shared: Arc<Shared>,
    connect_by: Instant,
    deadline: Instant,
) -> ClientStats {
    let mut stats = ClientStats::new(shared.total);
    let request = client
        .ws(url)
        .protocols([SUBPROTOCOL])
        .max_frame_size(1 << 22);
    let Some(mut framed) = open_ws(request, connect_by, &shared).await else {
        return stats;
    };
    stats.connected = true;
    let mut phase = Phase::Connecting;
    // Two messages, not one: a broker need not parse a second packet out of
    // the message that carried CONNECT.
    for packet in [connect_packet(&client_id), subscribe_packet()] {
        if let Err(error) = framed.send(Message::Binary(packet)).await {
            eprintln!("e2e_load: mqtt-ws: sending CONNECT/SUBSCRIBE failed: {error}");
            shared.failed.fetch_add(1, Ordering::AcqRel);
            return stats;
        }
    }
    let mut reader = PacketReader::default();
    let mut check = tokio::time::interval(Duration::from_millis(100));
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE / 2, KEEP_ALIVE / 2);
    let outcome: Result<(), Refusal> = loop {
        tokio::select! {
            biased;
            frame = framed.next() => {
                let bytes = match frame {
                    Some(Ok(Frame::Binary(bytes)))
                    | Some(Ok(Frame::Continuation(Item::FirstBinary(bytes))))
                    | Some(Ok(Frame::Continuation(Item::Continue(bytes))))
                    | Some(Ok(Frame::Continuation(Item::Last(bytes)))) => bytes,
                    Some(Ok(Frame::Ping(payload))) => {
                        let _ = framed.send(Message::Pong(payload)).await;
                        continue;
                    }
                    end @ (Some(Ok(Frame::Close(_))) | Some(Err(_)) | None) => {
                        stats.closed_early = !shared.stop.load(Ordering::Acquire);
                        if stats.closed_early {
                            eprintln!("e2e_load: mqtt-ws client {client_id}: stream ended: {end:?}");
                        }
                        break Ok(());
                    }
                    Some(Ok(_)) => {
                        stats.other_frames += 1;
                        continue;
                    }
                };
                reader.push(&bytes);
                let step = loop {
                    match reader.next_packet() {
                        Ok(Some(packet)) => {
                            if let Err(refusal) = on_packet(packet, &mut phase, &mut stats, &shared) {
                                break Err(refusal);
                            }
                        }
                        Ok(None) => break Ok(()),
                        Err(error) => break Err(Refusal::Decode(error)),
                    }
                };
                if step.is_err() {
                    break step;
                }
            },
            _ = ping.tick() => {
                if framed.send(Message::Binary(encode(&Packet::PingReq))).await.is_err() {
                    stats.closed_early = !shared.stop.load(Ordering::Acquire);
                    break Ok(());
                }
            },
            _ = check.tick() => {
                if shared.stop.load(Ordering::Acquire) || Instant::now() >= deadline {
                    let _ = framed.send(Message::Binary(encode(&Packet::Disconnect))).await;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        framed.send(Message::Close(None)),
                    )
                    .await;
                    break Ok(());
                }
            }
        }
    };
    if let Err(refusal) = outcome {
        eprintln!("e2e_load: mqtt-ws client {client_id}: {refusal}");
        stats.closed_early = true;
    }
    // A client that never got its SUBACK counts as failed, so the start-up
    // wait does not sit out the whole connect timeout for it.
    if phase != Phase::Subscribed {
        shared.failed.fetch_add(1, Ordering::AcqRel);
    }
    stats
}

/// Checks of the packet handling, run by `cargo bench --bench e2e_load`
/// without a scenario: a wrong split or varint here would show up in a run
/// only as loss.
pub(super) fn self_check() {
    // What the broker sends: CONNACK, SUBACK, two PUBLISH (remaining length
    // over 127, so a two-byte varint), PINGRESP.
    let mut stream = vec![0x20, 2, 0, 0, 0x90, 3, 0, 1, 0];
    let (mut topic, mut payload) = (Vec::new(), Vec::new());
    let frames = [(7u64, 100u64), (1234, 100)];
    for (index, devices) in frames {
        super::frame(index, devices, &mut topic, &mut payload);
        assert!(
            2 + topic.len() + payload.len() > 127,
            "test a two-byte varint"
        );
        super::put_publish(&mut stream, &topic, &payload);
    }
    stream.extend_from_slice(&[0xD0, 0]);
    let expected = |packets: &[Packet]| {
        assert_eq!(packets.len(), 5, "{packets:?}");
        assert!(matches!(&packets[0], Packet::ConnAck(a) if a.code == ConnectReturnCode::Success));
        assert!(
            matches!(&packets[1], Packet::SubAck(a) if a.return_codes == [SubscribeReasonCode::Success(QoS::AtMostOnce)])
        );
        for (packet, (index, devices)) in packets[2..4].iter().zip(frames) {
            let Packet::Publish(publish) = packet else {
                panic!("expected PUBLISH, got {packet:?}");
            };
            assert_eq!(
                super::parse_frame(&publish.payload),
                Some((index % devices, index / devices))
            );
        }
        assert_eq!(packets[4], Packet::PingResp);
    };
    let drain = |reader: &mut PacketReader, out: &mut Vec<Packet>| {
        while let Some(packet) = reader.next_packet().expect("a valid stream decodes") {
            out.push(packet);
        }
    };
    // Every split of the stream into two messages, then one byte per message.
    for at in 0..=stream.len() {
        let (mut reader, mut packets) = (PacketReader::default(), Vec::new());
        reader.push(&stream[..at]);
        drain(&mut reader, &mut packets);
        reader.push(&stream[at..]);
        drain(&mut reader, &mut packets);
        expected(&packets);
    }
    let (mut reader, mut packets) = (PacketReader::default(), Vec::new());
    for byte in &stream {
        reader.push(std::slice::from_ref(byte));
        drain(&mut reader, &mut packets);
    }
    expected(&packets);

    // What the client sends.
    let connect = connect_packet("bench-1");
    assert_eq!(
        &connect[..],
        b"\x10\x13\x00\x04MQTT\x04\x02\x00\x3c\x00\x07bench-1",
        "CONNECT: MQTT 3.1.1, clean session, keep-alive 60 s"
    );
    assert_eq!(
        &subscribe_packet()[..],
        b"\x82\x16\x00\x01\x00\x11devices/+/metrics\x00",
        "SUBSCRIBE: flags 0b0010, packet id 1 (0 is forbidden), QoS 0"
    );
    assert_eq!(&encode(&Packet::PingReq)[..], [0xC0, 0]);
    println!("e2e_load: mqtt-ws packet checks passed");
}
