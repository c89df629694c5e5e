//! Micro-benchmarks of the event path, without actix and without sockets:
//!
//! - `ingest/*`: strict frame validation ([`MetricsFrame::parse`]) and the
//!   whole acceptance rule ([`accept`]: topic checks, validation, `Draft`
//!   building including the one serialisation of the payload).
//! - `routing/*`: the [`FilterIndex`] with 1,000 per-device filters plus a few
//!   wildcards, against a linear scan of the same filters.
//! - `fanout/*`: what the bus does per event minus the actor mailbox:
//!   [`Event::from_draft`] (numbering, envelope and WebSocket frame) and one
//!   [`SessionQueue::offer_event`] per matching session, with every queue
//!   drained again by its [`SessionInbox`].
//!
//! - `alerts/*`: the ingest path per frame over 1,000 devices (acceptance,
//!   device table, event build) plus what the Alerts actor does with the
//!   frame ([`Engine::on_event`]: presence, fleet health, rules), without
//!   rules and with 10: the cost of rules on one core, although in the
//!   service they run on the Alerts actor's own thread.
//!
//! `cargo bench --bench pipeline` (about a minute). Throughput is reported
//! in elements/s: frames for `ingest`, topic lookups for `routing`,
//! deliveries (event × session) for `fanout`.
//!
//! [`SessionQueue::offer_event`]: edgebus_actors::session::SessionQueue::offer_event
//! [`SessionInbox`]: edgebus_actors::session::SessionInbox

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use edgebus_actors::alerts::engine::{Engine, Output};
use edgebus_actors::alerts::rules::{compile_all, RuleSpec};
use edgebus_actors::alerts::{
    AlertsConfig, DEFAULT_MAX_UPLOAD_HOSTS, DEFAULT_UPLOADS_FATAL_WINDOW,
    DEFAULT_UPLOADS_SILENT_AFTER,
};
use edgebus_actors::bus::{session_queue, Delivery, Offer};
use edgebus_actors::event::{Draft, Event, EventId, Payload};
use edgebus_actors::frame::MetricsFrame;
use edgebus_actors::ingest::accept;
use edgebus_actors::registry::DeviceTable;
use edgebus_actors::topic::{FilterIndex, TopicFilter};

/// `mqtt.max_payload_bytes` default.
const MAX_BYTES: usize = 16 * 1024;

/// A realistic frame with all eight fields (163 bytes).
const FRAME: &[u8] = br#"{"device_id":"d1","timestamp":1763800000,"cpu_percent":12.5,"mem_percent":40.25,"disk_percent":70.1,"gpu_percent":33.3,"agent_cpu_percent":1.5,"agent_mem_mb":42.7}"#;

const TOPIC: &str = "devices/d1/metrics";

/// Per-device filters in the routing and fan-out benchmarks.
const DEVICE_FILTERS: usize = 1_000;

/// A few wildcards next to the per-device filters, as a mixed deployment has.
const WILDCARDS: [&str; 5] = [
    "devices/+/metrics",
    "devices/#",
    "#",
    "attackers/#",
    "notifications/#",
];

fn ingest(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(1));
    group.bench_function("metrics_frame_parse", |b| {
        b.iter(|| MetricsFrame::parse(black_box("d1"), black_box(FRAME), MAX_BYTES))
    });
    group.bench_function("accept", |b| {
        b.iter(|| {
            accept(
                black_box(TOPIC),
                black_box(FRAME),
                MAX_BYTES,
                1_763_800_000_123,
            )
        })
    });
    group.finish();
}

fn filter(text: &str) -> TopicFilter {
    TopicFilter::parse(text).expect("benchmark filters are valid")
}

/// 1,000 `devices/dev-N/metrics` filters plus the wildcards, keyed 0..N.
fn filters() -> Vec<TopicFilter> {
    (0..DEVICE_FILTERS)
        .map(|i| filter(&format!("devices/dev-{i}/metrics")))
        .chain(WILDCARDS.iter().map(|w| filter(w)))
        .collect()
}

fn routing(c: &mut Criterion) {
    let filters = filters();
    let mut index = FilterIndex::default();
    for (key, f) in filters.iter().enumerate() {
        index.insert(f, key as u64);
    }
    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(1));
    // Matches dev-500's filter, `devices/+/metrics`, `devices/#` and `#`.
    group.bench_function("index_1005_filters_device_topic", |b| {
        b.iter(|| {
            let mut hits = 0u32;
            index.for_each_match(black_box("devices/dev-500/metrics"), |_| hits += 1);
            assert_eq!(hits, 4);
            hits
        })
    });
    // Matches `attackers/#` and `#`: no per-device filter is visited.
    group.bench_function("index_1005_filters_other_topic", |b| {
        b.iter(|| {
            let mut hits = 0u32;
            index.for_each_match(black_box("attackers/u1/observation/dns"), |_| hits += 1);
            assert_eq!(hits, 2);
            hits
        })
    });
    // What the index saves: every filter tried in turn.
    group.bench_function("linear_scan_1005_filters_device_topic", |b| {
        b.iter(|| {
            let topic = black_box("devices/dev-500/metrics");
            filters.iter().filter(|f| f.matches(topic)).count()
        })
    });
    group.finish();
}

fn metrics_draft() -> Draft {
    accept(TOPIC, FRAME, MAX_BYTES, 1_763_800_000_123).expect("the benchmark frame is valid")
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");

    group.throughput(Throughput::Elements(1));
    group.bench_function("event_from_draft", |b| {
        let mut seq = 0u64;
        b.iter_batched(
            metrics_draft,
            |d| {
                seq += 1;
                Event::from_draft(EventId { epoch: 1, seq }, d)
            },
            BatchSize::SmallInput,
        )
    });

    for sessions in [1usize, 1_000] {
        // Queues as the bus holds them (default `bus.queue_capacity`).
        let (queues, mut inboxes): (Vec<_>, Vec<_>) =
            (0..sessions).map(|_| session_queue(256)).unzip();
        group.throughput(Throughput::Elements(sessions as u64));
        group.bench_function(format!("event_to_{sessions}_queues_and_drain"), |b| {
            let mut seq = 0u64;
            b.iter_batched(
                metrics_draft,
                |d| {
                    seq += 1;
                    let event = Arc::new(Event::from_draft(EventId { epoch: 1, seq }, d));
                    for queue in &queues {
                        let offer = queue.offer_event(&event);
                        debug_assert_eq!(offer, Offer::Queued);
                    }
                    let mut drained = 0usize;
                    for inbox in &mut inboxes {
                        while let Some(item) = inbox.try_recv() {
                            if let Delivery::Event(e) = item {
                                drained += e.ws_frame.len();
                            }
                        }
                    }
                    drained
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// Devices in the alerts benchmark (`registry.max_devices` default).
const ALERT_DEVICES: usize = 1_000;

/// Ten rules over every field; about one device in ten breaches `cpu_high`
/// (and then stays within its cooldown), the rest are healthy.
fn ten_rules() -> Vec<RuleSpec> {
    let rule = |name: &str, field: &str, above: Option<f64>, below: Option<f64>| RuleSpec {
        name: name.into(),
        field: field.into(),
        above,
        below,
        cooldown: None,
    };
    vec![
        rule("cpu_high", "cpu_percent", Some(90.0), None),
        rule("cpu_idle", "cpu_percent", None, Some(0.5)),
        rule("mem_high", "mem_percent", Some(95.0), None),
        rule("mem_band", "mem_percent", Some(99.0), Some(1.0)),
        rule("disk_full", "disk_percent", Some(95.0), None),
        rule("disk_empty", "disk_percent", None, Some(0.1)),
        rule("gpu_hot", "gpu_percent", Some(97.0), None),
        rule("agent_cpu", "agent_cpu_percent", Some(500.0), None),
        rule("agent_mem", "agent_mem_mb", Some(4096.0), None),
        rule("agent_mem_low", "agent_mem_mb", None, Some(0.01)),
    ]
}

fn alerts(c: &mut Criterion) {
    let frames: Vec<(String, Vec<u8>)> = (0..ALERT_DEVICES)
        .map(|i| {
            let device = format!("dev-{i}");
            let cpu = (i % 100) as f64 + 0.5;
            let payload = format!(
                r#"{{"device_id":"{device}","timestamp":1763800000,"cpu_percent":{cpu},"mem_percent":40.25,"disk_percent":70.1,"gpu_percent":33.3,"agent_cpu_percent":1.5,"agent_mem_mb":42.7}}"#
            );
            (format!("devices/{device}/metrics"), payload.into_bytes())
        })
        .collect();
    let mut group = c.benchmark_group("alerts");
    group.throughput(Throughput::Elements(1));
    for rules in [0usize, 10] {
        let mut engine = Engine::new(alerts_config(rules));
        let mut table = DeviceTable::new(ALERT_DEVICES, 30_000);
        let now = 1_763_800_000_123;
        let (mut i, mut seq) = (0usize, 0u64);
        group.bench_function(format!("ingest_path_1000_devices_{rules}_rules"), |b| {
            b.iter(|| {
                let (topic, payload) = &frames[i % ALERT_DEVICES];
                i += 1;
                seq += 1;
                let draft = accept(topic, payload, MAX_BYTES, now).expect("valid frame");
                if let Payload::Metrics(frame) = &draft.body {
                    table.observe(frame, now);
                }
                let event = Arc::new(Event::from_draft(EventId { epoch: 1, seq }, draft));
                engine.on_event(&event, now);
                if !engine.out.is_empty() {
                    engine.out = Output::default();
                }
                event
            })
        });
    }
    // The Alerts actor's share alone, on prebuilt events.
    let events: Vec<Arc<Event>> = frames
        .iter()
        .enumerate()
        .map(|(seq, (topic, payload))| {
            let draft = accept(topic, payload, MAX_BYTES, 0).expect("valid frame");
            Arc::new(Event::from_draft(
                EventId {
                    epoch: 1,
                    seq: seq as u64,
                },
                draft,
            ))
        })
        .collect();
    for rules in [0usize, 10] {
        let mut engine = Engine::new(alerts_config(rules));
        let mut i = 0usize;
        group.bench_function(format!("engine_only_1000_devices_{rules}_rules"), |b| {
            b.iter(|| {
                engine.on_event(&events[i % ALERT_DEVICES], 1_763_800_000_123);
                i += 1;
                if !engine.out.is_empty() {
                    engine.out = Output::default();
                }
            })
        });
    }
    group.finish();
}

fn alerts_config(rules: usize) -> AlertsConfig {
    AlertsConfig {
        rules: compile_all(&ten_rules()[..rules], Duration::from_secs(60))
            .expect("benchmark rules are valid"),
        offline_after: Duration::from_secs(30),
        silent_after: Duration::from_secs(1800),
        rejecting_window: Duration::from_secs(300),
        digest_window: Duration::from_secs(300),
        max_digests_per_window: 20,
        max_devices: ALERT_DEVICES,
        uploads_silent_after: DEFAULT_UPLOADS_SILENT_AFTER,
        uploads_fatal_window: DEFAULT_UPLOADS_FATAL_WINDOW,
        max_upload_hosts: DEFAULT_MAX_UPLOAD_HOSTS,
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = ingest, routing, fanout, alerts
}
criterion_main!(benches);
