//! A simulated fleet over MQTT, for `edgebus demo`, `edgebus simulate` and
//! load tests: devices with drifting CPU/RAM and occasional CPU spikes, one
//! device that goes silent, one that only sends bad frames, attackers with
//! observations, scores and fingerprint rotations, and notifications.
//!
//! [`Fleet`] is pure and deterministic: the same seed gives the same
//! messages in the same order (time enters only as arguments). [`run`] is
//! the thin driver that paces it and publishes with rumqttc.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

/// What a device of the simulated fleet does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Publishes valid frames, drifting, now and then spiking.
    Normal,
    /// Like `Normal` until [`FleetConfig::silent_after`], then nothing.
    GoesSilent,
    /// Publishes only frames edgebus must reject, each wrong in its own way.
    BadFrames,
}

/// SplitMix64: tiny, fast, and the same sequence on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

#[derive(Debug, Clone)]
struct Device {
    id: String,
    behaviour: Behaviour,
    cpu: f64,
    cpu_base: f64,
    mem: f64,
    disk: f64,
    gpu: Option<f64>,
    /// Frames left in a CPU spike.
    spike: u32,
    bad_kind: usize,
}

#[derive(Debug, Clone)]
struct Attacker {
    uuid: String,
    score: f64,
    fingerprint: u64,
}

/// One MQTT publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: String,
}

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub devices: usize,
    pub attackers: usize,
    pub seed: u64,
    /// When the `GoesSilent` device stops.
    pub silent_after: Duration,
    /// Chance per frame that a device starts a CPU spike (> 90 %).
    pub spike_chance: f64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            devices: 36,
            attackers: 3,
            seed: 7,
            silent_after: Duration::from_secs(20),
            spike_chance: 0.004,
        }
    }
}

const PREFIXES: [&str; 6] = ["gw", "cam", "rpi", "nuc", "jetson", "plc"];
const PRIMITIVES: [&str; 6] = [
    "ssh_login",
    "http_probe",
    "port_scan",
    "smb_enum",
    "dns_tunnel",
    "tls_hello",
];
/// Notifications: (source, level, message).
const NOTES: [(&str, &str, &str); 8] = [
    ("backup", "info", "Nightly backup started"),
    ("backup", "success", "Backup completed"),
    ("backup", "error", "Backup target unreachable"),
    ("deploy", "success", "edge-agent 2.4.1 rolled out"),
    (
        "deploy",
        "warning",
        "Rollout paused: 2 devices did not answer",
    ),
    ("scanner", "info", "Vulnerability scan queued"),
    (
        "scanner",
        "warning",
        "Certificate for gw-01 expires in 9 days",
    ),
    ("ids", "error", "Port scan from 203.0.113.7 blocked"),
];

/// The simulated fleet: pure state plus a seeded generator.
#[derive(Debug, Clone)]
pub struct Fleet {
    rng: Rng,
    devices: Vec<Device>,
    attackers: Vec<Attacker>,
    config: FleetConfig,
    next_device: usize,
}

impl Fleet {
    pub fn new(config: FleetConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let n = config.devices.max(1);
        let devices = (0..n)
            .map(|i| {
                // The last device sends bad frames, the one before goes
                // silent (with three or more devices); all others behave.
                let behaviour = match (n >= 3, n - 1 - i) {
                    (true, 0) => Behaviour::BadFrames,
                    (true, 1) => Behaviour::GoesSilent,
                    _ => Behaviour::Normal,
                };
                let prefix = PREFIXES[i % PREFIXES.len()];
                let id = match behaviour {
                    Behaviour::BadFrames => "rogue-01".to_owned(),
                    _ => format!("{prefix}-{:02}", i / PREFIXES.len() + 1),
                };
                let cpu_base = rng.range(8.0, 55.0);
                Device {
                    id,
                    behaviour,
                    cpu: cpu_base,
                    cpu_base,
                    mem: rng.range(20.0, 75.0),
                    disk: rng.range(15.0, 85.0),
                    gpu: (prefix == "jetson").then(|| rng.range(5.0, 60.0)),
                    spike: 0,
                    bad_kind: 0,
                }
            })
            .collect();
        let attackers = (0..config.attackers)
            .map(|_| Attacker {
                uuid: uuid_from(&mut rng),
                score: rng.range(0.1, 0.5),
                fingerprint: rng.next_u64(),
            })
            .collect();
        Self {
            rng,
            devices,
            attackers,
            config,
            next_device: 0,
        }
    }

    pub fn device_ids(&self) -> impl Iterator<Item = (&str, Behaviour)> {
        self.devices.iter().map(|d| (d.id.as_str(), d.behaviour))
    }

    pub fn attacker_uuids(&self) -> impl Iterator<Item = &str> {
        self.attackers.iter().map(|a| a.uuid.as_str())
    }

    /// The next metrics frame, round robin over the devices; `None` when the
    /// device whose turn it is has gone silent. `now_s` is the frame's
    /// timestamp, `elapsed` the time since the simulation started.
    pub fn next_frame(&mut self, now_s: u64, elapsed: Duration) -> Option<Message> {
        let i = self.next_device;
        self.next_device = (i + 1) % self.devices.len();
        let spike_chance = self.config.spike_chance;
        let silent_after = self.config.silent_after;
        let rng = &mut self.rng;
        let d = &mut self.devices[i];
        let topic = format!("devices/{}/metrics", d.id);
        match d.behaviour {
            Behaviour::GoesSilent if elapsed >= silent_after => return None,
            Behaviour::BadFrames => {
                d.bad_kind += 1;
                let payload = bad_frame(&d.id, now_s, d.bad_kind);
                return Some(Message { topic, payload });
            }
            _ => {}
        }
        // Mean-reverting random walk, with rare spikes above 90 %.
        if d.spike > 0 {
            d.spike -= 1;
            d.cpu = rng.range(91.0, 99.5);
        } else if rng.chance(spike_chance) {
            d.spike = 4 + rng.below(8) as u32;
            d.cpu = rng.range(91.0, 99.5);
        } else {
            d.cpu += (d.cpu_base - d.cpu) * 0.2 + rng.range(-4.0, 4.0);
        }
        d.cpu = d.cpu.clamp(0.5, 99.9);
        d.mem = (d.mem + rng.range(-0.8, 0.8)).clamp(5.0, 97.0);
        d.disk = (d.disk + rng.range(-0.02, 0.05)).clamp(1.0, 99.0);
        if let Some(gpu) = d.gpu.as_mut() {
            *gpu = (*gpu + rng.range(-6.0, 6.0)).clamp(0.0, 100.0);
        }
        let mut frame = json!({
            "device_id": d.id,
            "timestamp": now_s,
            "cpu_percent": round1(d.cpu),
            "mem_percent": round1(d.mem),
            "disk_percent": round1(d.disk),
        });
        if let Some(gpu) = d.gpu {
            frame["gpu_percent"] = json!(round1(gpu));
        }
        Some(Message {
            topic,
            payload: frame.to_string(),
        })
    }

    /// Security traffic and notifications for one second of simulated time.
    pub fn second(&mut self, now_s: u64) -> Vec<Message> {
        let mut out = Vec::new();
        let rng = &mut self.rng;
        for a in &mut self.attackers {
            if rng.chance(0.6) {
                let primitive = PRIMITIVES[rng.below(PRIMITIVES.len())];
                out.push(Message {
                    topic: format!("attackers/{}/observation/{primitive}", a.uuid),
                    payload: json!({
                        "attacker_uuid": a.uuid,
                        "primitive": primitive,
                        "source_ip": format!("203.0.113.{}", 1 + rng.below(254)),
                        "count": 1 + rng.below(20),
                        "observed_at": now_s,
                    })
                    .to_string(),
                });
            }
            if rng.chance(0.2) {
                a.score = (a.score + rng.range(-0.05, 0.09)).clamp(0.0, 1.0);
                out.push(Message {
                    topic: format!("attackers/{}/scored", a.uuid),
                    payload: json!({"attacker_uuid": a.uuid, "score": round2(a.score), "scored_at": now_s})
                        .to_string(),
                });
            }
            if rng.chance(0.03) {
                let from = a.fingerprint;
                a.fingerprint = rng.next_u64();
                out.push(Message {
                    topic: format!("attackers/{}/fingerprint_rotated", a.uuid),
                    payload: json!({
                        "attacker_uuid": a.uuid,
                        "from": format!("ja4:{from:016x}"),
                        "to": format!("ja4:{:016x}", a.fingerprint),
                        "rotated_at": now_s,
                    })
                    .to_string(),
                });
            }
        }
        if rng.chance(0.12) {
            let (source, level, message) = NOTES[rng.below(NOTES.len())];
            out.push(Message {
                topic: format!("notifications/{source}"),
                payload: json!({"level": level, "message": message, "source": source}).to_string(),
            });
        }
        out
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn uuid_from(rng: &mut Rng) -> String {
    let (a, b) = (rng.next_u64(), rng.next_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// Frames that break one rule each, the way broken or hostile agents do.
fn bad_frame(id: &str, now_s: u64, kind: usize) -> String {
    match kind % 6 {
        0 => format!(
            r#"{{"device_id":"{id}","timestamp":{now_s},"cpu_percent":"<script>alert(1)</script>","mem_percent":10,"disk_percent":10}}"#
        ),
        1 => format!(
            r#"{{"device_id":"{id}","timestamp":{now_s},"cpu_percent":140,"mem_percent":10,"disk_percent":10}}"#
        ),
        2 => format!(
            r#"{{"device_id":"{id}","timestamp":{now_s},"cpu_percent":NaN,"mem_percent":10,"disk_percent":10}}"#
        ),
        3 => format!(
            r#"{{"device_id":"{id}","timestamp":{now_s},"cpu_percent":5,"mem_percent":10,"disk_percent":10,"evil":"<!channel>"}}"#
        ),
        4 => format!(
            r#"{{"device_id":"someone-else","timestamp":{now_s},"cpu_percent":5,"mem_percent":10,"disk_percent":10}}"#
        ),
        _ => "not json at all".to_owned(),
    }
}

/// Where and how fast [`run`] publishes.
#[derive(Debug, Clone)]
pub struct SimulateConfig {
    pub host: String,
    pub port: u16,
    pub fleet: FleetConfig,
    /// Metrics frames per second across the whole fleet.
    pub rate: f64,
    /// Stop after this long; `None` = until the task is dropped.
    pub duration: Option<Duration>,
    /// `(username, password)` when the broker requires a login.
    pub login: Option<(String, String)>,
}

/// What [`run`] published.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimulateReport {
    pub frames: u64,
    pub other: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("`--rate` must be a positive number of frames per second")]
    BadRate,
    #[error("publishing to the broker failed: {0}")]
    Client(#[from] rumqttc::ClientError),
}

/// How often the driver wakes to publish what is due.
const TICK: Duration = Duration::from_millis(20);

/// Publishes the fleet at `rate` until `duration` passes (or forever).
/// Reconnects on its own if the broker goes away.
pub async fn run(config: SimulateConfig) -> Result<SimulateReport, SimulateError> {
    if !(config.rate.is_finite() && config.rate > 0.0) {
        return Err(SimulateError::BadRate);
    }
    let mut options = MqttOptions::new(
        format!("edgebus-sim-{}-{}", config.fleet.seed, std::process::id()),
        config.host.clone(),
        config.port,
    );
    options.set_keep_alive(Duration::from_secs(30));
    if let Some((username, password)) = &config.login {
        options.set_credentials(username.clone(), password.clone());
    }
    options.set_inflight(500);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let (host, port) = (config.host.clone(), config.port);
    let poller = tokio::spawn(async move {
        let mut connected = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    log::info!("Simulator connected to mqtt://{host}:{port}.");
                }
                Ok(_) => {}
                Err(error) => {
                    if connected {
                        log::warn!("Simulator lost the broker: {error}; retrying.");
                    }
                    connected = false;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });

    let mut fleet = Fleet::new(config.fleet.clone());
    let start = Instant::now();
    let mut report = SimulateReport::default();
    let mut seconds_done = 0u64;
    let mut last_log = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        ticker.tick().await;
        let elapsed = start.elapsed();
        if config.duration.is_some_and(|d| elapsed >= d) {
            break Ok(());
        }
        let now_s = unix_seconds();
        let mut batch = Vec::new();
        while seconds_done <= elapsed.as_secs() {
            batch.extend(fleet.second(now_s));
            seconds_done += 1;
        }
        let due = (elapsed.as_secs_f64() * config.rate) as u64;
        let mut frames = 0;
        // A device that went silent still takes its turn, so the others keep
        // their own pace.
        while report.frames + frames < due {
            frames += 1;
            if let Some(m) = fleet.next_frame(now_s, elapsed) {
                batch.push(m);
            }
        }
        report.frames += frames;
        report.other += batch.len() as u64;
        for m in batch {
            if let Err(e) = client
                .publish(m.topic, QoS::AtLeastOnce, false, m.payload.into_bytes())
                .await
            {
                poller.abort();
                return Err(e.into());
            }
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            log::info!(
                "Simulator: {} frame turns, {} messages so far.",
                report.frames,
                report.other
            );
        }
    };
    let _ = client.disconnect().await;
    // Let the DISCONNECT out before the poller goes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    poller.abort();
    result.map(|()| report)
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_actors::families::classify;
    use edgebus_actors::ingest::accept;

    fn run_for(fleet: &mut Fleet, frames: usize, elapsed: Duration) -> Vec<Message> {
        (0..frames)
            .filter_map(|i| fleet.next_frame(1_763_800_000 + i as u64, elapsed))
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_fleet_and_messages() {
        let config = FleetConfig::default();
        let (mut a, mut b) = (Fleet::new(config.clone()), Fleet::new(config));
        assert_eq!(
            run_for(&mut a, 500, Duration::ZERO),
            run_for(&mut b, 500, Duration::ZERO)
        );
        assert_eq!(a.second(1), b.second(1));
        let mut c = Fleet::new(FleetConfig {
            seed: 8,
            ..FleetConfig::default()
        });
        let mut a = Fleet::new(FleetConfig::default());
        assert_ne!(
            run_for(&mut a, 50, Duration::ZERO),
            run_for(&mut c, 50, Duration::ZERO)
        );
    }

    #[test]
    fn normal_frames_pass_edgebus_rules_and_bad_ones_never_do() {
        let mut fleet = Fleet::new(FleetConfig::default());
        let bad: Vec<String> = fleet
            .device_ids()
            .filter(|(_, b)| *b == Behaviour::BadFrames)
            .map(|(id, _)| format!("devices/{id}/metrics"))
            .collect();
        assert_eq!(bad.len(), 1);
        let mut rejected = 0;
        for m in run_for(&mut fleet, 36 * 20, Duration::ZERO) {
            let verdict = accept(&m.topic, m.payload.as_bytes(), 16384, 0);
            if bad.contains(&m.topic) {
                assert!(verdict.is_err(), "accepted a bad frame: {}", m.payload);
                rejected += 1;
            } else {
                assert!(verdict.is_ok(), "rejected {}: {verdict:?}", m.payload);
            }
        }
        assert_eq!(rejected, 20);
    }

    #[test]
    fn cpu_spikes_above_ninety_happen_and_end() {
        let mut fleet = Fleet::new(FleetConfig {
            devices: 5,
            ..FleetConfig::default()
        });
        let cpus: Vec<f64> = run_for(&mut fleet, 20_000, Duration::ZERO)
            .iter()
            .filter(|m| !m.topic.contains("rogue"))
            .filter_map(|m| serde_json::from_str::<serde_json::Value>(&m.payload).ok())
            .filter_map(|v| v["cpu_percent"].as_f64())
            .collect();
        let hot = cpus.iter().filter(|c| **c > 90.0).count();
        assert!(hot > 0, "no spike in {} frames", cpus.len());
        assert!(hot < cpus.len() / 10, "{hot} of {} frames hot", cpus.len());
        assert!(cpus.iter().all(|c| (0.0..=100.0).contains(c)));
    }

    #[test]
    fn the_silent_device_stops_after_its_time() {
        let config = FleetConfig::default();
        let silent = Fleet::new(config.clone())
            .device_ids()
            .find(|(_, b)| *b == Behaviour::GoesSilent)
            .map(|(id, _)| format!("devices/{id}/metrics"))
            .unwrap();
        let mut fleet = Fleet::new(config.clone());
        let before = run_for(&mut fleet, 36, Duration::ZERO);
        assert!(before.iter().any(|m| m.topic == silent));
        let after = run_for(&mut fleet, 360, config.silent_after);
        assert!(!after.iter().any(|m| m.topic == silent));
        assert_eq!(after.len(), 350, "everyone else keeps publishing");
    }

    #[test]
    fn security_traffic_uses_edgebus_topic_families() {
        let mut fleet = Fleet::new(FleetConfig::default());
        let uuids: Vec<String> = fleet.attacker_uuids().map(str::to_owned).collect();
        assert_eq!(uuids.len(), 3);
        let mut names = std::collections::BTreeSet::new();
        for s in 0..300 {
            for m in fleet.second(s) {
                assert!(accept(&m.topic, m.payload.as_bytes(), 16384, 0).is_ok());
                let (name, _) = classify(&m.topic);
                names.insert(name.to_owned());
                if m.topic.starts_with("attackers/") {
                    let v: serde_json::Value = serde_json::from_str(&m.payload).unwrap();
                    let uuid = v["attacker_uuid"].as_str().unwrap();
                    assert!(m.topic.starts_with(&format!("attackers/{uuid}/")));
                    assert!(uuids.iter().any(|u| u == uuid));
                }
            }
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "attacker.scored",
                "fingerprint.rotated",
                "notification",
                "observation"
            ]
        );
    }

    #[test]
    fn uuids_look_like_uuids() {
        let id = uuid_from(&mut Rng::new(1));
        let parts: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
    }
}
