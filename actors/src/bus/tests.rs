use super::*;
use crate::event::Body;
use crate::ingest::frame::MetricsFrame;
use crate::session::{session_queue, SessionInbox};

fn bus(queue_capacity: usize) -> (Addr<Bus>, Arc<Telemetry>) {
    let telemetry = Arc::new(Telemetry::new());
    let config = BusConfig {
        queue_capacity,
        history: 100,
        metrics_snapshot_window: Duration::from_secs(30),
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
    let (queue, inbox) = session_queue(capacity);
    let session = SessionId::next();
    bus.send(Join {
        session,
        queue,
        filters: filters(list),
    })
    .await
    .unwrap();
    (session, inbox)
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
    assert_eq!(snapshot.len(), 1, "latest value per topic only");
    assert_eq!(snapshot[0].id.seq, 2);
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
    let (_, inbox) = join(&bus, 1, &["n/#"]).await;
    bus.send(note("n/a", 1)).await.unwrap();
    bus.send(note("n/a", 2)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), inbox.behind.notified())
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
