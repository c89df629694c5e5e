//! SSE streams over real sockets: framing, headers, keepalive, per-attacker
//! and per-identity filtering, replay, reset, lagged, and no leaked sessions.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::auth::{bearer, locked_app, VIEWER};
use std::sync::Arc;

use edgebus_actors::alerts::ManualClock;
use edgebus_actors::event::now_ms;

use crate::helpers::{
    large_snapshot_then_live, metrics_json, publish_large_notifications, spawn_app, spawn_app_with,
    spawn_app_with_clock, unique, TestApp, WAIT,
};
use crate::sse_client::{SseClient, SseItem};

/// `sessions.keepalive_seconds` as shipped.
fn default_keepalive() -> Duration {
    let settings = edgebus::settings::Settings::from_toml("").expect("the defaults are valid");
    settings.sessions.keepalive
}

/// Publishes a notification over HTTP and returns its event id.
async fn notify(app: &TestApp, source: &str, message: &str) -> String {
    let body = json!({"level": "info", "message": message, "source": source}).to_string();
    let answer = app
        .call("POST", "/v1/notifications", &[], Some(&body))
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    answer.body["id"].as_str().expect("id").to_owned()
}

async fn publish_json(app: &TestApp, topic: &str, payload: Value) -> String {
    let answer = app
        .call(
            "POST",
            &format!("/v1/publish/{topic}"),
            &[],
            Some(&payload.to_string()),
        )
        .await;
    assert_eq!(answer.status, 201, "{topic}: {answer:?}");
    answer.body["id"].as_str().expect("id").to_owned()
}

#[actix_web::test]
async fn a_stream_opens_with_keepalive_retry_and_snapshot_then_events() {
    let app = spawn_app().await;
    let device = unique("sse");
    let mut publisher = app.publisher().await;
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            metrics_json(&device, 1, 10.0),
        )
        .await;
    app.wait_metric("edgebus_frames_accepted_total", 1.0).await;

    let started = Instant::now();
    let mut sse = app
        .sse("/v1/events?topic=devices/%2B/metrics", &[])
        .await
        .expect("200");
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    assert_eq!(
        sse.header("content-encoding"),
        Some("identity"),
        "never gzip"
    );
    match sse.next_item().await {
        Some(SseItem::Comment(c)) => assert_eq!(c, "keepalive"),
        other => panic!("a keepalive comment first, got {other:?}"),
    }
    // At once, not at the first keepalive tick (15 s by default): the bound
    // is half of that, so a loaded machine's seconds of delay do not matter.
    assert!(
        started.elapsed() < default_keepalive() / 2,
        "headers flushed at once"
    );
    let snapshot = sse.snapshot().await;
    assert_eq!(sse.retry_ms, Some(3000), "retry hint");
    assert_eq!(snapshot["reset"], false);
    assert_eq!(
        snapshot["events"][0]["payload"]["device_id"],
        device.as_str()
    );

    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            metrics_json(&device, 2, 20.0),
        )
        .await;
    let event = sse.next_event().await;
    assert_eq!(event.event, "metrics");
    let envelope = event.json();
    assert_eq!(
        event.id.as_deref(),
        envelope["id"].as_str(),
        "id: is the envelope id"
    );
    assert_eq!(envelope["topic"], format!("devices/{device}/metrics"));
    assert_eq!(envelope["payload"]["cpu_percent"], 20.0);
}

#[actix_web::test]
async fn keepalive_comments_fill_every_silence() {
    let app = spawn_app_with("[sessions]\nkeepalive_seconds = 1").await;
    let mut sse = app
        .sse("/v1/events?topic=quiet/%23", &[])
        .await
        .expect("200");
    sse.snapshot().await;
    let mut stamps = Vec::new();
    while stamps.len() < 3 {
        if let Some(SseItem::Comment(c)) = sse.next_item().await {
            assert_eq!(c, "keepalive");
            stamps.push(Instant::now());
        }
    }
    // Never sooner than the interval (less timer granularity). Later only by
    // the machine's load, which is not under test: the upper bound tells the
    // 1 s setting from the 15 s default, with seconds to spare.
    for gap in stamps.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            gap >= Duration::from_millis(800) && gap < default_keepalive() / 2,
            "keepalive every ~1 s, got {gap:?}"
        );
    }
}

#[actix_web::test]
async fn an_attacker_stream_carries_its_attacker_and_identity_and_nothing_else() {
    let app = spawn_app_with(
        "[mqtt]\ntopics = [\"devices/+/metrics\", \"attackers/#\", \"notifications/#\", \"attribution/#\"]",
    )
    .await;
    let (a, b) = (unique("att-a"), unique("att-b"));
    publish_json(
        &app,
        &format!("attackers/{a}/observation/ssh"),
        json!({"attacker_uuid": a, "identity_uuid": "id-a", "n": 1}),
    )
    .await;
    publish_json(
        &app,
        &format!("attackers/{a}/observation/ssh"),
        json!({"attacker_uuid": a, "identity_uuid": "id-a", "n": 2}),
    )
    .await;
    publish_json(
        &app,
        &format!("attackers/{a}/observation/http"),
        json!({"attacker_uuid": a, "n": 3}),
    )
    .await;
    publish_json(
        &app,
        &format!("attackers/{b}/observation/ssh"),
        json!({"attacker_uuid": b, "identity_uuid": "id-b"}),
    )
    .await;

    let mut sse = app
        .sse(&format!("/v1/attackers/{a}/events"), &[])
        .await
        .expect("a known attacker streams");
    let snapshot = sse.snapshot().await;
    let snap: Vec<(String, u64)> = snapshot["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap().to_owned(),
                e["payload"]["n"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        snap,
        vec![
            (format!("attackers/{a}/observation/ssh"), 2),
            (format!("attackers/{a}/observation/http"), 3),
        ],
        "the latest observation per primitive, of this attacker only"
    );

    publish_json(
        &app,
        &format!("attackers/{b}/scored"),
        json!({"attacker_uuid": b, "score": 9}),
    )
    .await;
    publish_json(
        &app,
        "attribution/profile/state_changed",
        json!({"identity_uuid": "id-b"}),
    )
    .await;
    let scored = publish_json(
        &app,
        &format!("attackers/{a}/scored"),
        json!({"attacker_uuid": a, "score": 7}),
    )
    .await;
    let rotated = publish_json(
        &app,
        &format!("attackers/{a}/fingerprint_rotated"),
        json!({"attacker_uuid": a}),
    )
    .await;
    let attributed = publish_json(
        &app,
        "attribution/profile/state_changed",
        json!({"identity_uuid": "id-a", "state": "merged"}),
    )
    .await;
    let observed = publish_json(
        &app,
        &format!("attackers/{a}/observation/ftp"),
        json!({"attacker_uuid": a}),
    )
    .await;

    let mut got = Vec::new();
    for _ in 0..4 {
        let e = sse.next_event().await;
        got.push((e.id.clone().unwrap(), e.event.clone()));
    }
    assert_eq!(
        got,
        vec![
            (scored, "attacker.scored".to_owned()),
            (rotated, "fingerprint.rotated".to_owned()),
            (attributed, "state_changed".to_owned()),
            (observed, "observation".to_owned()),
        ],
        "the other attacker and the other identity never arrive"
    );
}

#[actix_web::test]
async fn where_predicates_filter_any_stream_by_payload() {
    let app = spawn_app().await;
    let mut red = app
        .sse("/v1/events?topic=attackers/%2B/scored&where=team:red", &[])
        .await
        .expect("200");
    red.snapshot().await;
    publish_json(
        &app,
        "attackers/x1/scored",
        json!({"team": "blue", "score": 1}),
    )
    .await;
    let wanted = publish_json(
        &app,
        "attackers/x2/scored",
        json!({"team": "red", "score": 2}),
    )
    .await;
    let e = red.next_event().await;
    assert_eq!(e.id.as_deref(), Some(wanted.as_str()));
    let bad = app
        .call("GET", "/v1/events?topic=a&where=nonsense", &[], None)
        .await;
    assert_eq!(bad.status, 400);
}

#[actix_web::test]
async fn a_reconnecting_client_gets_every_missed_event_once_then_live_ones() {
    let app = spawn_app().await;
    let source = unique("replay");
    let target = format!("/v1/events?topic=notifications/{source}");
    let mut first = app.sse(&target, &[]).await.expect("200");
    first.snapshot().await;
    notify(&app, &source, "m0").await;
    assert_eq!(first.next_event().await.json()["payload"]["message"], "m0");
    let last_id = first.last_id.clone().expect("an id was seen");
    drop(first);

    let mut missed = Vec::new();
    for n in 1..=20 {
        missed.push(notify(&app, &source, &format!("m{n}")).await);
        notify(&app, "elsewhere", "not for this stream").await;
    }
    // As EventSource does on its own reconnect: same URL, Last-Event-ID header.
    let mut again = app
        .sse(&target, &[("Last-Event-ID", &last_id)])
        .await
        .expect("200");
    let live = notify(&app, &source, "live").await;
    let mut got = Vec::new();
    while got.len() < 21 {
        let e = again.next_event().await;
        assert_ne!(e.event, "snapshot", "a replay needs no snapshot");
        got.push(e.id.unwrap());
    }
    let mut expected = missed.clone();
    expected.push(live);
    assert_eq!(got, expected, "nothing lost, nothing repeated, in order");
}

#[actix_web::test]
async fn an_id_the_ring_no_longer_holds_gets_a_reset_snapshot() {
    let app = spawn_app_with("[bus]\nhistory = 5").await;
    let source = unique("reset");
    let target = format!("/v1/events?topic=notifications/{source}");
    let old = notify(&app, &source, "first").await;
    for n in 0..10 {
        notify(&app, &source, &format!("n{n}")).await;
    }
    for resume in [
        old.as_str(),
        "abc",
        "-1",
        "18446744073709551616",
        "zzzzzzzzzzzzz-1",
    ] {
        let mut sse = app
            .sse(&format!("{target}&last_event_id={resume}"), &[])
            .await
            .unwrap_or_else(|r| panic!("{resume}: never an error status: {r:?}"));
        let snapshot = sse.snapshot().await;
        assert_eq!(snapshot["reset"], true, "{resume}");
        assert_eq!(
            snapshot["events"][0]["payload"]["message"], "n9",
            "{resume}"
        );
    }
}

#[actix_web::test]
async fn a_browser_style_reconnect_with_a_fresh_ticket_loses_nothing() {
    let app = locked_app("").await;
    let source = unique("ticketed");
    let base = format!("/v1/events?topic=notifications/{source}");
    let url = format!("{base}&ticket={}", app.ticket(Some(VIEWER)).await);
    let mut sse = app.sse(&url, &[]).await.expect("200");
    sse.snapshot().await;
    let auth = bearer(crate::auth::PUBLISHER);
    let publish = |message: String| {
        let body = json!({"level": "info", "message": message, "source": source}).to_string();
        let auth = auth.clone();
        let app = &app;
        async move {
            let a = app
                .call(
                    "POST",
                    "/v1/notifications",
                    &[("Authorization", &auth)],
                    Some(&body),
                )
                .await;
            assert_eq!(a.status, 201);
            a.body["id"].as_str().unwrap().to_owned()
        }
    };
    publish("before".into()).await;
    sse.next_event().await;
    let last = sse.last_id.clone().unwrap();
    drop(sse); // the network drops
    let missed = publish("while away".into()).await;

    // EventSource retries the same URL: the used ticket is refused, for good.
    let retry = app
        .sse(&url, &[("Last-Event-ID", &last)])
        .await
        .err()
        .expect("401");
    assert_eq!(retry.status, 401);
    // The page's recipe: a new ticket, and the last id in the query.
    let url = format!(
        "{base}&ticket={}&last_event_id={last}",
        app.ticket(Some(VIEWER)).await
    );
    let mut sse = app.sse(&url, &[]).await.expect("200");
    assert_eq!(sse.next_event().await.id.as_deref(), Some(missed.as_str()));
}

#[actix_web::test]
async fn a_client_that_falls_behind_is_told_how_many_events_it_lost() {
    let app =
        spawn_app_with("[bus]\nqueue_capacity = 4\n[sessions]\nwrite_timeout_seconds = 30\n[mqtt]\nembedded_retention_bytes = 33554432").await;
    let topic = format!("notifications/{}", unique("lag"));
    let mut slow = SseClient::open_with_buffer(
        app.port,
        "/v1/events?topic=notifications/%23",
        &[],
        Some(2048),
    )
    .await
    .expect("200");
    let publisher = app.publisher().await;
    const N: u64 = 600;
    publisher.flood(&topic, N).await;
    app.wait_metric(
        r#"edgebus_events_dropped_total{reason="slow_session"}"#,
        1.0,
    )
    .await;
    slow.snapshot().await;
    let (mut seen, mut lagged) = (Vec::new(), 0);
    while seen.len() as u64 + lagged < N {
        let e = slow.next_event().await;
        match e.event.as_str() {
            "notification" => seen.push(e.json()["payload"]["n"].as_u64().unwrap()),
            "lagged" => lagged += e.json()["dropped"].as_u64().unwrap(),
            other => panic!("unexpected event {other}"),
        }
    }
    assert!(lagged > 0, "the client was told");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order");
    let counted = app
        .wait_metric_value(
            r#"edgebus_events_dropped_total{reason="slow_session"}"#,
            lagged as f64,
        )
        .await;
    assert_eq!(counted as u64, lagged, "notice and counter agree");
}

#[actix_web::test]
async fn a_client_that_stops_reading_is_ended_after_the_write_timeout_and_frees_its_slot() {
    let app = locked_app(
        "[bus]\nqueue_capacity = 4\n[sessions]\nmax_streams_per_identity = 1\nwrite_timeout_seconds = 1\n[mqtt]\nembedded_retention_bytes = 33554432",
    )
    .await;
    let auth = bearer(VIEWER);
    let headers = [("Authorization", auth.as_str())];
    let stream = "/v1/events?topic=notifications/%23";
    let mut stuck = SseClient::open_with_buffer(app.port, stream, &headers, Some(2048))
        .await
        .expect("200");
    stuck.snapshot().await;
    // From here on it never reads again, and it holds the identity's one slot.
    let capped = app.sse(stream, &headers).await.err().expect("capped");
    assert_eq!(capped.status, 429);

    let publisher = app.publisher().await;
    let topic = format!("notifications/{}", unique("stuck"));
    publisher.flood(&topic, 600).await;
    // Its socket, actix-web's buffer and its queue fill up (the bus drops
    // what does not fit: awaited first, so the wait below does not include
    // the ~9 MB's way through the broker on a loaded machine); nothing is
    // taken for the write timeout, so the session ends and frees the slot.
    app.wait_metric(
        r#"edgebus_events_dropped_total{reason="slow_session"}"#,
        1.0,
    )
    .await;
    app.wait_metric_where(r#"edgebus_sessions_open{kind="sse"}"#, |v| v == 0.0)
        .await;
    let mut next = app
        .sse(stream, &headers)
        .await
        .expect("the slot is free again");
    next.snapshot().await;
    drop(stuck);
}

#[actix_web::test]
async fn a_resuming_client_that_never_reads_its_replay_is_ended_by_the_watchdog() {
    // The watchdog runs every 2 s: the session lives at least that long,
    // long enough to be seen open first.
    // The flood below is kept whole: by the broker while ingest catches
    // up, and by the history.
    let app = spawn_app_with(
        "[sessions]\nwrite_timeout_seconds = 2\n[bus]\nhistory_bytes = 67108864\n[mqtt]\nembedded_retention_bytes = 33554432",
    )
    .await;
    let source = unique("pinned");
    let topic = format!("notifications/{source}");
    let resume = notify(&app, &source, "before").await;
    let publisher = app.publisher().await;
    // ~9 MB of history after the resume id, and nothing published later:
    // only the replay can fill this client's stream.
    publisher.flood(&topic, 600).await;
    app.wait_metric("edgebus_events_published_total", 601.0)
        .await;

    let stuck = SseClient::open_with_buffer(
        app.port,
        &format!("/v1/events?topic={topic}"),
        &[("Last-Event-ID", &resume)],
        Some(2048),
    )
    .await
    .expect("200");
    app.wait_metric_where(r#"edgebus_sessions_open{kind="sse"}"#, |v| v == 1.0)
        .await;
    // It never reads. The replay leaves the queue a piece at a time, the
    // rest waits there untaken, and the watchdog ends the session (which
    // frees it), as for live events.
    app.wait_metric_where(r#"edgebus_sessions_open{kind="sse"}"#, |v| v == 0.0)
        .await;
    drop(stuck);
}

#[actix_web::test]
async fn a_long_replay_arrives_whole_and_in_order_across_its_pieces() {
    let app = spawn_app().await;
    let source = unique("long");
    let topic = format!("notifications/{source}");
    let resume = notify(&app, &source, "before").await;
    let publisher = app.publisher().await;
    const N: u64 = 500;
    for n in 0..N {
        publisher
            .publish_nowait(
                &topic,
                format!(r#"{{"level":"info","message":"m","n":{n}}}"#),
            )
            .await;
    }
    app.wait_metric("edgebus_events_published_total", (N + 1) as f64)
        .await;
    let mut sse = app
        .sse(
            &format!("/v1/events?topic={topic}&last_event_id={resume}"),
            &[],
        )
        .await
        .expect("200");
    let live = {
        let body = json!({"level": "info", "message": "live", "source": source}).to_string();
        let answer = app
            .call("POST", "/v1/notifications", &[], Some(&body))
            .await;
        answer.body["id"].as_str().expect("id").to_owned()
    };
    for n in 0..N {
        let e = sse.next_event().await;
        assert_eq!(e.event, "notification");
        assert_eq!(
            e.json()["payload"]["n"],
            n,
            "every missed event once, in order"
        );
    }
    assert_eq!(sse.next_event().await.id.as_deref(), Some(live.as_str()));
}

#[actix_web::test]
async fn a_thousand_connect_disconnect_cycles_leave_no_session_behind() {
    // The real binary in its own process, so its memory is its own.
    // Opening 1,200 streams in a row is what this test does on purpose.
    let service = crate::helpers::Service::start(&[
        ("EDGEBUS__SESSIONS__STREAM_OPENS_PER_SECOND", "1000000"),
        ("EDGEBUS__SESSIONS__STREAM_OPENS_BURST", "1000000"),
    ])
    .await;
    let cycle = |n: usize| {
        let service = &service;
        async move {
            for _ in 0..n {
                let mut sse =
                    SseClient::open(service.port, "/v1/events?topic=devices/%2B/metrics", &[])
                        .await
                        .expect("200");
                sse.snapshot().await;
            }
        }
    };
    cycle(200).await; // warm up allocator pools and worker buffers
    service
        .wait_metric(r#"edgebus_sessions_open{kind="sse"}"#, |v| v == 0.0)
        .await;
    let before = service.rss_kib();
    cycle(1000).await;
    service
        .wait_metric(r#"edgebus_sessions_open{kind="sse"}"#, |v| v == 0.0)
        .await;
    let grown = service.rss_kib().saturating_sub(before);
    assert!(
        grown < 2 * 1024,
        "memory flat after 1,000 cycles: grew {grown} KiB"
    );
}

#[actix_web::test]
async fn shutdown_ends_sse_streams() {
    let app = spawn_app().await;
    let mut sse = app.sse("/v1/events?topic=a/%23", &[]).await.expect("200");
    sse.snapshot().await;
    app.handle.shutdown().await;
    assert!(
        sse.ends_within(WAIT).await,
        "the stream ends so the browser reconnects"
    );
}

#[actix_web::test]
async fn the_websocket_resumes_from_an_id_too() {
    let app = spawn_app().await;
    let source = unique("wsresume");
    let first = notify(&app, &source, "one").await;
    let second = notify(&app, &source, "two").await;
    let mut ws = app
        .ws(&format!(
            "?topic=notifications/{source}&last_event_id={first}"
        ))
        .await;
    let frame = ws.next_event().await;
    assert_eq!(frame["id"], second.as_str(), "replay, no snapshot");
    let mut ws = app
        .ws(&format!(
            "?topic=notifications/{source}&last_event_id=bogus"
        ))
        .await;
    let frame = ws.next_json().await;
    assert_eq!(
        (frame["type"].as_str(), frame["reset"].as_bool()),
        (Some("snapshot"), Some(true))
    );
}

#[actix_web::test]
async fn a_client_opening_and_closing_streams_in_a_loop_is_refused_past_its_rate() {
    // Arrange: the service's clock stands still, so the burst is all there is.
    let clock = Arc::new(ManualClock::new(now_ms()));
    let app = spawn_app_with_clock(
        "[sessions]\nstream_opens_per_second = 1\nstream_opens_burst = 5",
        Some(clock.clone()),
    )
    .await;
    let open = || SseClient::open(app.port, "/v1/events?topic=devices/%2B/metrics", &[]);

    // Act: open and drop streams as fast as they answer (each costs the bus
    // a snapshot), as a client trying to keep the bus busy would.
    let mut opened = 0;
    let refused = loop {
        match open().await {
            Ok(sse) => {
                drop(sse);
                opened += 1;
                assert!(opened <= 5, "the sixth open must be refused");
            }
            Err(refused) => break refused,
        }
    };

    // Assert: refused with 429 and when to come back; a second later, in.
    assert_eq!(opened, 5);
    assert_eq!(refused.status, 429);
    assert!(refused
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("retry-after") && v == "1"));
    assert!(refused.body["error"]
        .as_str()
        .is_some_and(|e| e.contains("stream_opens_per_second")));
    clock.advance(Duration::from_secs(1));
    assert!(open().await.is_ok());
}

#[actix_web::test]
async fn a_snapshot_larger_than_one_piece_arrives_as_one_event_then_live_events() {
    // Arrange: a ~200 KB snapshot, written in pieces as the socket takes them.
    let app = spawn_app().await;
    let family = unique("big");
    let mut publisher = app.publisher().await;
    let message = publish_large_notifications(&app, &mut publisher, &family, 100).await;

    // Act
    let mut sse = app
        .sse("/v1/events?topic=notifications/%23", &[])
        .await
        .expect("200");

    // Assert: one snapshot event with every one of them, then live events.
    let snapshot = sse.snapshot().await;
    let events = snapshot["events"].as_array().expect("events");
    large_snapshot_then_live(events, 100, &message, &mut publisher, &family).await;
    assert_eq!(sse.next_event().await.json()["payload"]["message"], "live");
}

/// Whether this process's socket from `local` to `remote` (loopback
/// ports) is still an established TCP connection.
fn established(local: u16, remote: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port = |addr: &str| {
                    addr.rsplit(':')
                        .next()
                        .and_then(|p| u16::from_str_radix(p, 16).ok())
                };
                f.len() > 3
                    && port(f[1]) == Some(local)
                    && port(f[2]) == Some(remote)
                    && f[3] == "01"
            })
    })
}

#[actix_web::test]
async fn a_client_that_stops_reading_loses_its_connection_not_just_its_session() {
    use std::io::Write as _;

    // Arrange: a stream whose client reads nothing, with a small receive
    // window, so what the server sends stays unacknowledged.
    let app = spawn_app_with("[sessions]\nwrite_timeout_seconds = 1").await;
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("small window");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], app.port).into();
    socket.connect(&addr.into()).expect("connect");
    let mut stalled: std::net::TcpStream = socket.into();
    write!(
        stalled,
        "GET /v1/events?topic=notifications/%23 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .expect("request");
    let client_port = stalled.local_addr().expect("local").port();
    app.wait_metric(r#"edgebus_sessions_open{kind="sse"}"#, 1.0)
        .await;

    // Act: far more than both sockets' buffers hold.
    let publisher = app.publisher().await;
    let message = "m".repeat(2000);
    for i in 0..4000 {
        publisher
            .publish_nowait(
                &format!("notifications/{}", i % 50),
                format!(r#"{{"level":"info","message":"{message}"}}"#),
            )
            .await;
    }

    // Assert: the server gives the connection up (the kernel's timeout for
    // unacknowledged data), so neither its buffers nor its slot outlive it.
    let deadline = Instant::now() + WAIT;
    while established(app.port, client_port) {
        assert!(
            Instant::now() < deadline,
            "the server still holds the stalled connection"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stalled);
}
