use super::*;
use super::{session_queue, SessionInbox};
use crate::event::Body;
use crate::frame::MetricsFrame;
use crate::subscription::{Predicate, Subscription};
use serde_json::json;

fn bus(queue_capacity: usize) -> (Addr<Bus>, Arc<Telemetry>) {
    let telemetry = Arc::new(Telemetry::new());
    let config = BusConfig {
        queue_capacity,
        history: 100,
        metrics_snapshot_window: Duration::from_secs(30),
        ..BusConfig::default()
    };
    (Bus::new(config, telemetry.clone()).start(), telemetry)
}

fn filters(list: &[&str]) -> Vec<TopicFilter> {
    list.iter()
        .map(|f| TopicFilter::parse(f).unwrap())
        .collect()
}

fn note(topic: &str, n: u64) -> Publish {
    let mut body = serde_json::Map::new();
    body.insert("n".into(), n.into());
    Publish(Draft::new(topic, now_ms(), Body::Object(body)))
}

fn metrics(device: &str, cpu: u32) -> Publish {
    let json = format!(
        r#"{{"device_id":"{device}","timestamp":1,"cpu_percent":{cpu},"mem_percent":1,"disk_percent":1}}"#
    );
    let frame = MetricsFrame::parse(device, json.as_bytes(), 4096).unwrap();
    Publish(Draft::new(
        format!("devices/{device}/metrics"),
        now_ms(),
        Body::Metrics(frame),
    ))
}

async fn join(bus: &Addr<Bus>, capacity: usize, list: &[&str]) -> (SessionId, SessionInbox) {
    let subs = filters(list).into_iter().map(Subscription::topic).collect();
    join_with(bus, capacity, subs, None).await
}

async fn join_with(
    bus: &Addr<Bus>,
    capacity: usize,
    subscriptions: Vec<Subscription>,
    resume: Option<&str>,
) -> (SessionId, SessionInbox) {
    let (queue, inbox) = session_queue(capacity);
    let session = SessionId::next();
    bus.send(Join {
        session,
        queue,
        subscriptions,
        resume: resume.map(str::to_owned),
    })
    .await
    .unwrap();
    (session, inbox)
}

fn object(topic: &str, payload: serde_json::Value) -> Publish {
    let serde_json::Value::Object(map) = payload else {
        panic!("object payload")
    };
    Publish(Draft::new(topic, now_ms(), Body::Object(map)))
}

fn drain(inbox: &mut SessionInbox) -> Vec<Delivery> {
    let mut items = Vec::new();
    while let Some(item) = inbox.try_recv() {
        items.push(item);
    }
    items
}

fn event_seqs(items: &[Delivery]) -> Vec<u64> {
    items
        .iter()
        .filter_map(|d| match d {
            Delivery::Event(e) => Some(e.id.seq),
            _ => None,
        })
        .collect()
}

#[actix::test]
async fn a_joiner_gets_the_snapshot_first_then_only_later_events() {
    let (bus, _) = bus(16);
    bus.send(note("n/a", 1)).await.unwrap();
    bus.send(note("n/a", 2)).await.unwrap();
    bus.send(note("other/b", 3)).await.unwrap();
    let (_, mut inbox) = join(&bus, 16, &["n/#"]).await;
    let live = bus.send(note("n/a", 4)).await.unwrap();

    let items = drain(&mut inbox);
    let Delivery::Snapshot(snapshot) = &items[0] else {
        panic!("first item must be the snapshot: {items:?}");
    };
    assert_eq!(snapshot.events.len(), 1, "latest value per topic only");
    assert_eq!(snapshot.events[0].id.seq, 2);
    assert_eq!(
        snapshot.last_id.seq, 3,
        "the bus's newest id at that moment"
    );
    assert!(!snapshot.reset);
    assert_eq!(event_seqs(&items), vec![live.seq]);
}

#[actix::test]
async fn overlapping_filters_deliver_an_event_once() {
    let (bus, _) = bus(16);
    let (_, mut inbox) = join(&bus, 16, &["n/#", "n/+", "#"]).await;
    bus.send(note("n/a", 1)).await.unwrap();
    assert_eq!(event_seqs(&drain(&mut inbox)), vec![1]);
}

#[actix::test]
async fn a_full_queue_drops_only_that_sessions_events_and_reports_lagged() {
    let (bus, telemetry) = bus(2);
    let (slow, mut slow_inbox) = join(&bus, 2, &["n/#"]).await;
    let (_, mut fast_inbox) = join(&bus, 64, &["n/#"]).await;
    for n in 0..5 {
        bus.send(note("n/a", n)).await.unwrap();
    }
    let slow_items = drain(&mut slow_inbox);
    assert_eq!(
        event_seqs(&slow_items),
        vec![1, 2],
        "exactly the queue capacity"
    );
    assert_eq!(event_seqs(&drain(&mut fast_inbox)), vec![1, 2, 3, 4, 5]);
    assert_eq!(telemetry.events_dropped_count(DropReason::SlowSession), 3);

    bus.send(Resume { session: slow }).await.unwrap();
    let after = drain(&mut slow_inbox);
    assert!(
        matches!(after.as_slice(), [Delivery::Lagged(3)]),
        "{after:?}"
    );
    bus.send(note("n/a", 9)).await.unwrap();
    assert_eq!(event_seqs(&drain(&mut slow_inbox)), vec![6]);
}

#[actix::test]
async fn a_slow_session_keeps_only_the_newest_frame_per_device() {
    let (bus, _) = bus(1);
    let (slow, mut inbox) = join(&bus, 1, &["devices/+/metrics"]).await;
    for cpu in [10, 20, 30, 40] {
        bus.send(metrics("d1", cpu)).await.unwrap();
    }
    bus.send(metrics("d2", 50)).await.unwrap();
    let first = drain(&mut inbox);
    assert_eq!(
        event_seqs(&first),
        vec![1],
        "queue of one holds the first frame"
    );

    bus.send(Resume { session: slow }).await.unwrap();
    let got = drain(&mut inbox);
    assert_eq!(
        event_seqs(&got),
        vec![4],
        "d1's newest frame; d2 still held (no room)"
    );
    bus.send(Resume { session: slow }).await.unwrap();
    assert_eq!(event_seqs(&drain(&mut inbox)), vec![5]);
    assert!(
        got.iter().all(|d| !matches!(d, Delivery::Lagged(_))),
        "conflation is not a loss to report"
    );
}

#[actix::test]
async fn a_slow_session_is_woken_to_collect_what_it_missed() {
    let (bus, _) = bus(1);
    let (_, mut inbox) = join(&bus, 1, &["n/#"]).await;
    bus.send(note("n/a", 1)).await.unwrap();
    bus.send(note("n/a", 2)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), inbox.behind())
        .await
        .expect("the bus wakes a session that fell behind");
}

#[actix::test]
async fn unsubscribe_is_acknowledged_and_stops_those_events() {
    let (bus, _) = bus(16);
    let (session, mut inbox) = join(&bus, 16, &["n/#", "m/#"]).await;
    bus.send(Unsubscribe {
        session,
        filters: filters(&["n/#"]),
    })
    .await
    .unwrap();
    bus.send(note("n/a", 1)).await.unwrap();
    bus.send(note("m/a", 2)).await.unwrap();
    let items = drain(&mut inbox);
    assert!(matches!(items[1], Delivery::Unsubscribed(_)));
    assert_eq!(event_seqs(&items), vec![2]);
}

#[actix::test]
async fn leaving_removes_every_filter_and_a_dropped_inbox_is_forgotten() {
    let (bus, _) = bus(16);
    let (session, _inbox) = join(&bus, 16, &["a/#", "b/#"]).await;
    let (_, gone) = join(&bus, 16, &["a/#"]).await;
    drop(gone);
    bus.send(Leave { session }).await.unwrap();
    bus.send(note("a/x", 1)).await.unwrap();
    let stats = bus.send(Stats).await.unwrap();
    assert_eq!(stats.sessions, 0);
    assert_eq!(stats.filters, 0);
}

#[actix::test]
async fn too_many_filters_are_refused_with_an_error_item() {
    let (bus, _) = bus(16);
    let many: Vec<String> = (0..=MAX_FILTERS_PER_SESSION)
        .map(|i| format!("t/{i}"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let (_, mut inbox) = join(&bus, 16, &refs).await;
    assert!(matches!(drain(&mut inbox).as_slice(), [Delivery::Error(_)]));
}

#[actix::test]
async fn ids_increase_and_history_is_bounded() {
    let (bus, _) = bus(16);
    let mut last = None;
    for n in 0..150 {
        let id = bus.send(note("h/x", n)).await.unwrap();
        assert!(last.is_none_or(|l| id > l));
        last = Some(id);
    }
    assert_eq!(bus.send(Stats).await.unwrap().history, 100);
}

#[actix::test]
async fn shutdown_tells_every_session_to_close() {
    let (bus, _) = bus(16);
    let (_, mut inbox) = join(&bus, 16, &["#"]).await;
    assert_eq!(bus.send(Shutdown).await.unwrap(), 1);
    let items = drain(&mut inbox);
    assert!(matches!(items.last(), Some(Delivery::Close)));
}

#[actix::test]
async fn a_resuming_client_gets_exactly_what_it_missed_then_live_events() {
    let (bus, _) = bus(16);
    let first = bus.send(note("n/a", 1)).await.unwrap();
    bus.send(note("n/b", 2)).await.unwrap();
    bus.send(note("other/x", 3)).await.unwrap();
    bus.send(note("n/a", 4)).await.unwrap();
    let subs = vec![Subscription::topic(TopicFilter::parse("n/#").unwrap())];
    let (_, mut inbox) = join_with(&bus, 16, subs, Some(&first.to_string())).await;
    let live = bus.send(note("n/c", 5)).await.unwrap();
    let items = drain(&mut inbox);
    let Delivery::Replay(missed) = &items[0] else {
        panic!("a replay, not a snapshot: {items:?}");
    };
    let missed: Vec<u64> = missed.iter().map(|e| e.id.seq).collect();
    assert_eq!(missed, vec![2, 4], "matching events after the id, in order");
    assert_eq!(event_seqs(&items), vec![live.seq]);
}

#[actix::test]
async fn an_id_the_ring_no_longer_holds_gets_a_reset_snapshot() {
    let telemetry = Arc::new(Telemetry::new());
    let config = BusConfig {
        queue_capacity: 16,
        history: 3,
        metrics_snapshot_window: Duration::from_secs(30),
        ..BusConfig::default()
    };
    let bus = Bus::new(config, telemetry).start();
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(bus.send(note("n/a", n)).await.unwrap());
    }
    let subs = || vec![Subscription::topic(TopicFilter::parse("n/#").unwrap())];
    let epoch = ids[0].epoch;
    let cases = [
        ids[0].to_string(), // evicted
        EventId {
            epoch: epoch + 1,
            seq: 2,
        }
        .to_string(), // another run
        EventId { epoch, seq: 99 }.to_string(), // from the future
        "garbage".to_owned(),
        "18446744073709551616".to_owned(),
    ];
    for resume in cases {
        let (_, mut inbox) = join_with(&bus, 16, subs(), Some(&resume)).await;
        let items = drain(&mut inbox);
        match &items[..] {
            [Delivery::Snapshot(s)] => {
                assert!(s.reset, "{resume}");
                assert_eq!(s.events.len(), 1, "{resume}");
            }
            other => panic!("{resume}: {other:?}"),
        }
    }
    // The oldest id the ring still follows on from replays.
    let (_, mut inbox) = join_with(&bus, 16, subs(), Some(&ids[2].to_string())).await;
    match &drain(&mut inbox)[..] {
        [Delivery::Replay(events)] => assert_eq!(events.len(), 3),
        other => panic!("{other:?}"),
    }
    let (_, mut inbox) = join_with(&bus, 16, subs(), Some(&ids[5].to_string())).await;
    assert!(matches!(&drain(&mut inbox)[..], [Delivery::Replay(e)] if e.is_empty()));
}

#[actix::test]
async fn predicates_pick_events_by_payload_in_live_snapshot_and_replay() {
    let (bus, _) = bus(16);
    let start = bus
        .send(object(
            "attribution/p/changed",
            json!({"identity_uuid": "i1", "n": 0}),
        ))
        .await
        .unwrap();
    bus.send(object(
        "attribution/p/other",
        json!({"identity_uuid": "i2"}),
    ))
    .await
    .unwrap();
    let sub = Subscription::with_predicates(
        TopicFilter::parse("attribution/#").unwrap(),
        vec![Predicate::parse("identity_uuid:i1").unwrap()],
    )
    .unwrap();
    let (_, mut snap_inbox) = join_with(&bus, 16, vec![sub.clone()], None).await;
    let (_, mut replay_inbox) = join_with(
        &bus,
        16,
        vec![sub],
        Some(&EventId { seq: 0, ..start }.to_string()),
    )
    .await;
    let wanted = bus
        .send(object(
            "attribution/p/changed",
            json!({"identity_uuid": "i1", "n": 1}),
        ))
        .await
        .unwrap();
    bus.send(object(
        "attribution/p/changed",
        json!({"identity_uuid": "i2"}),
    ))
    .await
    .unwrap();

    let items = drain(&mut snap_inbox);
    let Delivery::Snapshot(snapshot) = &items[0] else {
        panic!("{items:?}")
    };
    let snap: Vec<u64> = snapshot.events.iter().map(|e| e.id.seq).collect();
    assert_eq!(snap, vec![start.seq]);
    assert_eq!(event_seqs(&items), vec![wanted.seq]);

    let items = drain(&mut replay_inbox);
    let Delivery::Replay(missed) = &items[0] else {
        panic!("{items:?}")
    };
    assert_eq!(
        missed.iter().map(|e| e.id.seq).collect::<Vec<_>>(),
        vec![start.seq]
    );
    assert_eq!(event_seqs(&items), vec![wanted.seq]);
}

#[actix::test]
async fn attackers_are_found_with_their_newest_identity() {
    let (bus, _) = bus(16);
    assert_eq!(bus.send(FindAttacker("a1".into())).await.unwrap(), None);
    bus.send(object(
        "attackers/a1/observation/ssh",
        json!({"identity_uuid": "old"}),
    ))
    .await
    .unwrap();
    bus.send(object(
        "attackers/a1/scored",
        json!({"identity_uuid": "new", "score": 3}),
    ))
    .await
    .unwrap();
    bus.send(object(
        "attackers/a10/scored",
        json!({"identity_uuid": "other"}),
    ))
    .await
    .unwrap();
    let info = bus.send(FindAttacker("a1".into())).await.unwrap();
    assert_eq!(info.and_then(|i| i.identity_uuid).as_deref(), Some("new"));
    let info = bus.send(FindAttacker("a2".into())).await.unwrap();
    assert_eq!(info, None);
}

/// `{"a":[0,0,…]}` of about 16 KB, parsed as ingest parses it.
fn hostile(topic: &str) -> Publish {
    let zeros = vec!["0"; 7_996].join(",");
    let json = format!(r#"{{"a":[{zeros}]}}"#);
    object(topic, serde_json::from_str(&json).unwrap())
}

#[actix::test]
async fn hostile_events_stay_under_the_byte_bounds() {
    let telemetry = Arc::new(Telemetry::new());
    let config = BusConfig {
        history: 10_000,
        history_bytes: 1 << 20,
        last_values_bytes: 512 << 10,
        ..BusConfig::default()
    };
    let bus = Bus::new(config, telemetry).start();
    for n in 0..200 {
        bus.send(hostile(&format!("attackers/a{n}/observation/dns")))
            .await
            .unwrap();
        let stats = bus.send(Stats).await.unwrap();
        assert!(stats.history_bytes <= 1 << 20, "{stats:?}");
        assert!(stats.last_values_bytes <= 512 << 10, "{stats:?}");
    }
    let stats = bus.send(Stats).await.unwrap();
    // 16 KB of payload costs about 33 KB kept (two wire forms): ~31 fit in
    // 1 MiB, ~15 in 512 KiB. The count caps alone would keep all 200.
    assert!((20..=40).contains(&stats.history), "{stats:?}");
    assert!((8..=20).contains(&stats.topics), "{stats:?}");
    // What is kept is still served: a snapshot of the newest topic.
    let (_, mut inbox) = join(&bus, 16, &["attackers/a199/#"]).await;
    let items = drain(&mut inbox);
    let Delivery::Snapshot(snapshot) = &items[0] else {
        panic!("a snapshot: {items:?}");
    };
    assert_eq!(snapshot.events.len(), 1);
    assert!(snapshot.events[0].envelope.len() > 16_000);
}

#[actix::test]
async fn a_snapshot_past_its_bound_is_marked_truncated() {
    let telemetry = Arc::new(Telemetry::new());
    let config = BusConfig {
        snapshot_max_events: 10,
        ..BusConfig::default()
    };
    let bus = Bus::new(config, telemetry).start();
    for n in 0..25 {
        bus.send(note(&format!("n/{n}"), n)).await.unwrap();
    }
    let (_, mut inbox) = join(&bus, 16, &["#"]).await;
    let Some(Delivery::Snapshot(snapshot)) = drain(&mut inbox).into_iter().next() else {
        panic!("a snapshot");
    };
    assert_eq!(snapshot.events.len(), 10);
    assert!(snapshot.truncated);
    // Sorted oldest first, each topic once, even across overlapping filters.
    let (_, mut inbox) = join(&bus, 16, &["n/3", "n/+", "n/3"]).await;
    let Some(Delivery::Snapshot(snapshot)) = drain(&mut inbox).into_iter().next() else {
        panic!("a snapshot");
    };
    let seqs: Vec<u64> = snapshot.events.iter().map(|e| e.id.seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seqs, sorted);
    assert!(snapshot.truncated, "n/+ alone finds 25");
    let (_, mut inbox) = join(&bus, 16, &["n/3", "n/4"]).await;
    let Some(Delivery::Snapshot(snapshot)) = drain(&mut inbox).into_iter().next() else {
        panic!("a snapshot");
    };
    assert_eq!(snapshot.events.len(), 2);
    assert!(!snapshot.truncated);
}

#[actix::test]
async fn predicates_and_attacker_lookups_read_the_kept_fields() {
    let (bus, _) = bus(16);
    bus.send(object(
        "attackers/x1/scored",
        json!({"identity_uuid": "i-1", "score": 42, "hot": true, "nested": {"identity_uuid": "no"}}),
    ))
    .await
    .unwrap();
    bus.send(object("attackers/x1/observation/dns", json!({"q": "a"})))
        .await
        .unwrap();
    let info = bus.send(FindAttacker("x1".into())).await.unwrap();
    assert_eq!(info.unwrap().identity_uuid.as_deref(), Some("i-1"));
    assert!(bus.send(FindAttacker("x2".into())).await.unwrap().is_none());
    assert!(bus.send(FindAttacker("+".into())).await.unwrap().is_none());

    let sub = |p: &str| {
        Subscription::with_predicates(
            TopicFilter::parse("attackers/#").unwrap(),
            vec![Predicate::parse(p).unwrap()],
        )
        .unwrap()
    };
    for (predicate, found) in [
        ("identity_uuid:i-1", 1),
        ("score:42", 1),
        ("hot:true", 1),
        ("identity_uuid:no", 0),
        ("nested:x", 0),
    ] {
        let (_, mut inbox) = join_with(&bus, 16, vec![sub(predicate)], None).await;
        let Some(Delivery::Snapshot(snapshot)) = drain(&mut inbox).into_iter().next() else {
            panic!("a snapshot");
        };
        assert_eq!(snapshot.events.len(), found, "{predicate}");
    }
}

#[actix::test]
async fn an_identity_inside_a_decnet_envelope_is_found_and_filtered_on() {
    let (bus, _) = bus(16);
    bus.send(object(
        "attackers/e1/scored",
        json!({"v": 1, "type": "scored", "ts": 1.5,
               "payload": {"attacker_uuid": "e1", "identity_uuid": "i-9"}}),
    ))
    .await
    .unwrap();
    let info = bus.send(FindAttacker("e1".into())).await.unwrap();
    assert_eq!(info.unwrap().identity_uuid.as_deref(), Some("i-9"));
    let by_identity = Subscription::with_predicates(
        TopicFilter::parse("attribution/#").unwrap(),
        vec![Predicate::parse("identity_uuid:i-9").unwrap()],
    )
    .unwrap();
    let (_, mut inbox) = join_with(&bus, 16, vec![by_identity], None).await;
    drain(&mut inbox);
    for identity in ["i-8", "i-9"] {
        bus.send(object(
            "attribution/profile/state_changed",
            json!({"v": 1, "type": "profile.state_changed", "payload": {"identity_uuid": identity}}),
        ))
        .await
        .unwrap();
    }
    let seqs = event_seqs(&drain(&mut inbox));
    assert_eq!(seqs.len(), 1, "only i-9's change: {seqs:?}");
}

/// Cluster mode's recovery, as a test double: answers every backfill with
/// what `stream` holds after the asked id, and remembers what was asked.
struct FakeStream {
    bus: Option<Recipient<Backfilled>>,
    stream: Vec<(EventId, u64)>,
    asked: Arc<std::sync::Mutex<Vec<EventId>>>,
}

impl Actor for FakeStream {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct Connect(Recipient<Backfilled>);

impl Handler<Connect> for FakeStream {
    type Result = ();
    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) {
        self.bus = Some(msg.0);
    }
}

impl Handler<Backfill> for FakeStream {
    type Result = ();
    fn handle(&mut self, msg: Backfill, _: &mut Context<Self>) {
        self.asked.lock().unwrap().push(msg.after);
        let events: Vec<Arc<Event>> = self
            .stream
            .iter()
            .filter(|(id, _)| *id > msg.after)
            .map(|(id, n)| {
                let Publish(draft) = note("n/a", *n);
                Arc::new(Event::from_draft(*id, draft))
            })
            .collect();
        let upto = events.last().map_or(msg.after, |e| e.id);
        if let Some(bus) = &self.bus {
            bus.do_send(Backfilled {
                session: msg.session,
                result: Ok(Fetched { events, upto }),
            });
        }
    }
}

fn stream_note(ms: u64, n: u64) -> PublishBatch {
    let Publish(draft) = note("n/a", n);
    PublishBatch(vec![draft.numbered(EventId::stream(ms, 0))])
}

/// A stream-fed bus with a history of `history` events, and the fake
/// stream behind it holding `stream` (id ms, n).
async fn stream_bus(
    history: usize,
    stream: Vec<(u64, u64)>,
) -> (Addr<Bus>, Arc<std::sync::Mutex<Vec<EventId>>>) {
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let fake = FakeStream {
        bus: None,
        stream: stream
            .into_iter()
            .map(|(ms, n)| (EventId::stream(ms, 0), n))
            .collect(),
        asked: asked.clone(),
    }
    .start();
    let config = BusConfig {
        queue_capacity: 16,
        history,
        ..BusConfig::default()
    };
    let bus = Bus::new(config, Arc::new(Telemetry::new()))
        .stream_fed(fake.clone().recipient())
        .start();
    fake.send(Connect(bus.clone().recipient())).await.unwrap();
    (bus, asked)
}

fn ns(events: &[Arc<Event>]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.body.fields().and_then(|f| f.f64("n")).unwrap() as u64)
        .collect()
}

#[actix::test]
async fn a_stream_fed_bus_keeps_the_stream_ids_and_drops_repeats() {
    let (bus, _) = stream_bus(10, vec![]).await;
    bus.send(stream_note(5, 1)).await.unwrap();
    bus.send(stream_note(5, 1)).await.unwrap(); // read again after a reconnect
    bus.send(stream_note(3, 9)).await.unwrap(); // older than the newest
    bus.send(note("n/a", 2)).await.unwrap(); // unnumbered: not in cluster mode
    let stats = bus.send(Stats).await.unwrap();
    assert_eq!(stats.history, 1);
    assert_eq!(stats.last_id, EventId::stream(5, 0));
    assert_eq!(stats.last_id.to_string(), "5-0");
}

#[actix::test]
async fn a_stream_resume_within_the_history_replays_from_it() {
    let (bus, asked) = stream_bus(10, vec![]).await;
    for ms in 1..=4 {
        bus.send(stream_note(ms, ms)).await.unwrap();
    }
    let subs = vec![Subscription::topic(TopicFilter::parse("n/#").unwrap())];
    let (_, mut inbox) = join_with(&bus, 16, subs, Some("2-0")).await;
    let items = drain(&mut inbox);
    let Delivery::Replay(missed) = &items[0] else {
        panic!("a replay: {items:?}");
    };
    assert_eq!(ns(missed), vec![3, 4]);
    assert!(asked.lock().unwrap().is_empty(), "Redis was not asked");
}

#[actix::test]
async fn a_stream_resume_beyond_the_history_is_fetched_from_the_stream_then_continues_live() {
    // The stream holds 1..=6; this instance's history only 5 and 6.
    let (bus, asked) = stream_bus(2, (1..=6).map(|ms| (ms, ms)).collect()).await;
    for ms in 1..=6 {
        bus.send(stream_note(ms, ms)).await.unwrap();
    }
    let subs = vec![Subscription::topic(TopicFilter::parse("n/#").unwrap())];
    let (_, mut inbox) = join_with(&bus, 16, subs, Some("2-0")).await;
    bus.send(stream_note(7, 7)).await.unwrap();
    // The backfill round trip (bus → stream → bus) is over once the bus
    // answers a message sent after it.
    bus.send(Stats).await.unwrap();
    let items = drain(&mut inbox);
    let Delivery::Replay(missed) = &items[0] else {
        panic!("a replay: {items:?}");
    };
    assert_eq!(
        ns(missed),
        vec![3, 4, 5, 6],
        "from the stream, in order, once"
    );
    let live: Vec<EventId> = items[1..]
        .iter()
        .filter_map(|d| match d {
            Delivery::Event(e) => Some(e.id),
            _ => None,
        })
        .collect();
    assert_eq!(live, vec![EventId::stream(7, 0)]);
    assert_eq!(*asked.lock().unwrap(), vec![EventId::stream(2, 0)]);
}

#[actix::test]
async fn a_stream_resume_ahead_of_this_instance_waits_for_the_events_after_it() {
    let (bus, asked) = stream_bus(10, vec![]).await;
    bus.send(stream_note(1, 1)).await.unwrap();
    let subs = vec![Subscription::topic(TopicFilter::parse("n/#").unwrap())];
    // The client saw 2 and 3 on another instance; this one has read 1 only.
    let (_, mut inbox) = join_with(&bus, 16, subs, Some("3-0")).await;
    for ms in 2..=4 {
        bus.send(stream_note(ms, ms)).await.unwrap();
    }
    let items = drain(&mut inbox);
    assert!(
        matches!(&items[0], Delivery::Replay(e) if e.is_empty()),
        "{items:?}"
    );
    assert_eq!(items.len(), 2, "only 4 is new to it: {items:?}");
    assert!(matches!(&items[1], Delivery::Event(e) if e.id == EventId::stream(4, 0)));
    assert!(asked.lock().unwrap().is_empty());
}

#[actix::test]
async fn a_local_or_far_future_id_on_a_stream_fed_bus_gets_a_reset_snapshot() {
    let (bus, _) = stream_bus(10, vec![]).await;
    bus.send(stream_note(1, 1)).await.unwrap();
    let local = EventId {
        epoch: 1_763_800_000_000,
        seq: 1,
    }
    .to_string();
    // Far ahead of anything this instance read: not worth waiting for.
    let future = format!("{}-0", 1 + 10 * 60_000);
    for resume in [local, future] {
        let subs = vec![Subscription::topic(TopicFilter::parse("n/#").unwrap())];
        let (_, mut inbox) = join_with(&bus, 16, subs, Some(&resume)).await;
        let items = drain(&mut inbox);
        assert!(
            matches!(&items[0], Delivery::Snapshot(s) if s.reset),
            "{resume}: {items:?}"
        );
    }
}

/// The default queue bounds (`config/default.toml`), with a pool of `pool` bytes.
fn default_limits(pool: &Arc<QueuePool>) -> QueueLimits {
    QueueLimits::new(65_536, 16 << 20, 256 << 10, pool.clone())
}

async fn join_limited(bus: &Addr<Bus>, limits: QueueLimits, list: &[&str]) -> SessionInbox {
    let subs = filters(list).into_iter().map(Subscription::topic).collect();
    let (queue, inbox) = session_queue(limits);
    bus.send(Join {
        session: SessionId::next(),
        queue,
        subscriptions: subs,
        resume: None,
    })
    .await
    .unwrap();
    inbox
}

#[actix::test]
async fn a_client_that_pauses_gets_every_frame_and_only_one_that_stays_behind_is_conflated() {
    let (bus, telemetry) = bus(65_536);
    let pool = Arc::new(QueuePool::new(64 << 20));
    let mut paused = join_limited(&bus, default_limits(&pool), &["devices/+/metrics"]).await;
    // 5,000 frames of 100 devices while the client reads nothing: twenty
    // times what a 256-event queue held.
    for i in 0..5_000u32 {
        bus.send(metrics(&format!("d{}", i % 100), i % 100))
            .await
            .unwrap();
    }
    let got = drain(&mut paused);
    assert_eq!(event_seqs(&got), (1..=5_000).collect::<Vec<u64>>());
    assert_eq!(telemetry.events_dropped_count(DropReason::Conflated), 0);
    assert_eq!(pool.used(), 0, "a drained queue owes the pool nothing");

    // A client that stays behind: its queue reaches its bound (here the
    // whole pool is 64 KiB beyond a 64 KiB reserve) and its metrics conflate,
    // while a client beside it that keeps up gets every frame.
    let small = Arc::new(QueuePool::new(64 << 10));
    let stalled_limits = QueueLimits::new(65_536, 16 << 20, 64 << 10, small.clone());
    let mut stalled = join_limited(&bus, stalled_limits.clone(), &["devices/+/metrics"]).await;
    let mut reading = join_limited(&bus, stalled_limits, &["devices/+/metrics"]).await;
    let mut seen = 0;
    for i in 0..2_000u32 {
        bus.send(metrics(&format!("d{}", i % 10), i % 100))
            .await
            .unwrap();
        seen += event_seqs(&drain(&mut reading)).len();
    }
    assert_eq!(seen, 2_000, "the client that keeps up misses nothing");
    assert!(telemetry.events_dropped_count(DropReason::Conflated) > 0);
    let queued = event_seqs(&drain(&mut stalled)).len();
    assert!(
        queued < 2_000,
        "the stalled one was held to its bound: {queued}"
    );
}
