//! `[compat.decnet]`: DECNET's dashboard against edgebus. Its publishers on
//! a private nats-server, its frontend's calls (`POST /api/v1/auth/sse-ticket`,
//! then `GET /api/v1/attackers/{uuid}/events?ticket=…`, or the older
//! `?token=<jwt>`), and what that frontend reads: `: keepalive`, a snapshot
//! of the latest observation per primitive, then DECNET-named events with
//! dotted topics, only of its attacker and its attacker's identity.

use std::collections::HashMap;

use serde_json::{json, Value};

use edgebus::actors::alerts::ManualClock;
use edgebus::actors::event::now_ms;

use crate::auth::{bearer, keys_toml, PUBLISHER, VIEWER};
use crate::helpers::{spawn_app_with, unique, TestApp};
use crate::jwt::{jwt_toml, token};
use crate::nats::{envelope, nats_toml, publish, publisher, NatsServer};
use crate::sse_client::{SseClient, SseEvent, SseItem};
use crate::tools::require_tool;

const ON: &str = "[compat.decnet]\nenabled = true\n";

fn viewer_jwt() -> String {
    token(&ManualClock::new(now_ms()), "analyst", json!(["viewer"]))
}

/// A ticket from DECNET's ticket call at `path`, for `credential`.
async fn decnet_ticket(app: &TestApp, path: &str, credential: &str) -> String {
    let auth = bearer(credential);
    let answer = app
        .call("POST", path, &[("Authorization", auth.as_str())], None)
        .await;
    assert_eq!(answer.status, 200, "{path}: {answer:?}");
    // DECNET's `SSETicketResponse`.
    assert_eq!(answer.body["expires_in"], 60, "{answer:?}");
    answer.body["ticket"].as_str().expect("a ticket").to_owned()
}

fn stream_path(attacker: &str, query: &str) -> String {
    format!("/api/v1/attackers/{attacker}/events?{query}")
}

/// What a DECNET page sees first: the comment that flushes the headers,
/// then the snapshot (the `retry:` hint between them dispatches nothing).
async fn opening(stream: &mut SseClient) -> Value {
    match stream.next_item().await {
        Some(SseItem::Comment(text)) => assert_eq!(text, "keepalive"),
        other => panic!("the stream must open with `: keepalive`, got {other:?}"),
    }
    let first = stream.next_event().await;
    assert_eq!(first.event, "snapshot", "{first:?}");
    first.json()
}

async fn http_publish(app: &TestApp, topic: &str, payload: &Value) {
    let auth = bearer(PUBLISHER);
    let answer = app
        .call(
            "POST",
            &format!("/v1/publish/{topic}"),
            &[("Authorization", auth.as_str())],
            Some(&payload.to_string()),
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
}

#[actix_web::test]
async fn decnet_s_frontend_reads_its_attacker_s_stream_fed_over_nats() {
    if !require_tool("nats-server") {
        return;
    }
    let server = NatsServer::start();
    let app = spawn_app_with(&format!("{}{}{ON}", nats_toml(&server.url()), jwt_toml(""))).await;
    let client = publisher(&server).await;
    let (a, b) = (unique("att-a"), unique("att-b"));
    let (ident_a, ident_b) = (unique("ident-a"), unique("ident-b"));

    // Arrange: history for both attackers, seen on the bus before the page
    // opens (a WebSocket on their topics proves it).
    let ws_ticket = app.ticket(Some(VIEWER)).await;
    let mut ws = app
        .ws(&format!("?topic=attackers/%23&ticket={ws_ticket}"))
        .await;
    ws.snapshot().await;
    let history = [
        (&a, "ja3", json!({"value": "771,old", "confidence": 0.4})),
        (&b, "ja3", json!({"value": "b-only", "confidence": 0.9})),
        (
            &a,
            "motor.input_modality",
            json!({"value": "pasted", "confidence": 0.91, "source": "behave"}),
        ),
        (&a, "ja3", json!({"value": "771,new", "confidence": 0.8})),
    ];
    for (attacker, primitive, fields) in &history {
        let mut payload = fields.clone();
        payload["attacker_uuid"] = json!(attacker);
        payload["primitive"] = json!(primitive);
        let subject = format!("attacker.observation.{primitive}");
        publish(&client, &subject, &envelope(&subject, primitive, payload)).await;
    }
    // The score carries each attacker's identity (inside the envelope).
    for (attacker, identity) in [(&a, &ident_a), (&b, &ident_b)] {
        let payload = json!({"attacker_uuid": attacker, "identity_uuid": identity, "score": 0.5});
        publish(
            &client,
            "attacker.scored",
            &envelope("attacker.scored", "scored", payload),
        )
        .await;
    }
    for _ in 0..history.len() + 2 {
        ws.next_event().await;
    }

    // Act: the frontend mints a ticket with its JWT and opens the stream.
    let ticket = decnet_ticket(&app, "/api/v1/auth/sse-ticket", &viewer_jwt()).await;
    let target = stream_path(&a, &format!("ticket={ticket}"));
    let mut stream = app.sse(&target, &[]).await.expect("the stream opens");
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    assert_eq!(stream.header("cache-control"), Some("no-cache"));

    // Assert: the latest observation per primitive, sorted, A's only.
    let snapshot = opening(&mut stream).await;
    assert_eq!(
        snapshot,
        json!({
            "attacker_uuid": a,
            "observations": [
                {"primitive": "ja3", "attacker_uuid": a, "value": "771,new", "confidence": 0.8},
                {"primitive": "motor.input_modality", "attacker_uuid": a, "value": "pasted",
                 "confidence": 0.91, "source": "behave"},
            ],
        })
    );

    // Live: B's events on every subject first, then A's; within one
    // subject NATS keeps order, so any of B's that got through would be
    // read before A's last one.
    let rotated = json!({"attacker_uuid": a, "old_hash": "h1", "new_hash": "h2"});
    let observed = json!({"attacker_uuid": a, "primitive": "tls.sni", "value": "x.example"});
    let changed = json!({"identity_uuid": ident_a, "primitive": "ja3",
                         "old_state": "stable", "new_state": "drifting"});
    let suspected = json!({"identity_uuid": ident_a, "primitives": ["ja3", "motor.input_modality"],
                           "evidence_summary": "two", "confidence": 0.7});
    let plain_score = json!({"attacker_uuid": a, "score": 0.97});
    let sends = [
        (
            "attacker.observation.tls.sni",
            envelope(
                "attacker.observation.tls.sni",
                "tls.sni",
                json!({"attacker_uuid": b, "primitive": "tls.sni", "value": "b.example"}),
            ),
        ),
        (
            "attacker.fingerprint_rotated",
            envelope(
                "attacker.fingerprint_rotated",
                "fingerprint_rotated",
                json!({"attacker_uuid": b}),
            ),
        ),
        ("attacker.scored", json!({"attacker_uuid": b, "score": 0.1})),
        (
            "attribution.profile.state_changed",
            envelope(
                "attribution.profile.state_changed",
                "profile.state_changed",
                json!({"identity_uuid": ident_b, "new_state": "stable"}),
            ),
        ),
        (
            "attacker.observation.tls.sni",
            envelope("attacker.observation.tls.sni", "tls.sni", observed.clone()),
        ),
        (
            "attacker.fingerprint_rotated",
            envelope(
                "attacker.fingerprint_rotated",
                "fingerprint_rotated",
                rotated.clone(),
            ),
        ),
        (
            "attribution.profile.state_changed",
            envelope(
                "attribution.profile.state_changed",
                "profile.state_changed",
                changed.clone(),
            ),
        ),
        (
            "attribution.profile.multi_actor_suspected",
            envelope(
                "attribution.profile.multi_actor_suspected",
                "profile.multi_actor_suspected",
                suspected.clone(),
            ),
        ),
        // A flat payload, as an MQTT or HTTP publisher would send it.
        ("attacker.scored", plain_score.clone()),
    ];
    let before = now_ms() as f64 / 1000.0;
    for (subject, payload) in &sends {
        publish(&client, subject, payload).await;
    }
    let mut got: HashMap<String, SseEvent> = HashMap::new();
    while got.len() < 5 {
        let event = stream.next_event().await;
        assert!(
            event.id.is_some(),
            "events carry ids for resuming: {event:?}"
        );
        let previous = got.insert(event.event.clone(), event);
        assert!(previous.is_none(), "one event per name: {previous:?}");
    }
    let data = |name: &str| got.get(name).map(SseEvent::json).expect(name);
    assert_eq!(
        data("observation"),
        json!({"topic": "attacker.observation.tls.sni", "type": "tls.sni",
               "ts": 1_763_800_000.25, "payload": observed})
    );
    assert_eq!(
        data("fingerprint.rotated"),
        json!({"topic": "attacker.fingerprint_rotated", "type": "fingerprint_rotated",
               "ts": 1_763_800_000.25, "payload": rotated})
    );
    assert_eq!(
        data("attribution.state_changed"),
        json!({"topic": "attribution.profile.state_changed", "type": "profile.state_changed",
               "ts": 1_763_800_000.25, "payload": changed})
    );
    assert_eq!(
        data("attribution.multi_actor_suspected"),
        json!({"topic": "attribution.profile.multi_actor_suspected",
               "type": "profile.multi_actor_suspected", "ts": 1_763_800_000.25,
               "payload": suspected})
    );
    // Not an envelope: the event name, and the receive time in seconds.
    let scored = data("attacker.scored");
    assert_eq!(scored["topic"], "attacker.scored");
    assert_eq!(scored["type"], "attacker.scored");
    assert_eq!(scored["payload"], plain_score);
    let ts = scored["ts"].as_f64().expect("ts in seconds");
    assert!(
        ts >= before - 1.0 && ts <= now_ms() as f64 / 1000.0 + 1.0,
        "{ts} vs {before}"
    );

    // A ticket opens one stream only.
    let again = app.sse(&target, &[]).await.err().expect("a spent ticket");
    assert_eq!(again.status, 401, "{:?}", again.body);
    // DECNET's path without the prefix mints as well, for an API key.
    let ticket = decnet_ticket(&app, "/auth/sse-ticket", VIEWER).await;
    let mut second = app
        .sse(&stream_path(&a, &format!("ticket={ticket}")), &[])
        .await
        .expect("a fresh ticket opens");
    assert_eq!(
        opening(&mut second).await["observations"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

#[actix_web::test]
async fn decnet_s_older_frontend_sends_its_jwt_in_the_url_where_allowed() {
    let allowed = spawn_app_with(&format!(
        "{}{ON}",
        jwt_toml("allow_query_token_on_streams = true\n")
    ))
    .await;
    let refused = spawn_app_with(&format!("{}{ON}", jwt_toml(""))).await;
    let attacker = unique("att");
    let observation = json!({"attacker_uuid": attacker, "value": 3});
    for app in [&allowed, &refused] {
        http_publish(
            app,
            &format!("attackers/{attacker}/observation/dns"),
            &observation,
        )
        .await;
    }
    let jwt = viewer_jwt();
    let target = stream_path(&attacker, &format!("token={jwt}"));

    let mut stream = allowed.sse(&target, &[]).await.expect("?token=<jwt> opens");
    let snapshot = opening(&mut stream).await;
    assert_eq!(
        snapshot["observations"],
        json!([{"primitive": "dns", "attacker_uuid": attacker, "value": 3}])
    );
    http_publish(
        &allowed,
        &format!("attackers/{attacker}/scored"),
        &json!({"score": 1}),
    )
    .await;
    let live = stream.next_event().await;
    assert_eq!(live.event, "attacker.scored");
    assert_eq!(live.json()["payload"], json!({"score": 1}));

    let no = refused.sse(&target, &[]).await.err().expect("refused");
    assert_eq!(no.status, 401, "{:?}", no.body);
}

#[actix_web::test]
async fn decnet_s_stream_checks_credentials_before_it_tells_whether_an_attacker_exists() {
    let app = spawn_app_with(&format!("{}{ON}", keys_toml())).await;
    let known = unique("att");
    http_publish(
        &app,
        &format!("attackers/{known}/scored"),
        &json!({"score": 1}),
    )
    .await;
    let unknown = unique("nobody");

    for attacker in [&known, &unknown] {
        let refused = app.sse(&stream_path(attacker, ""), &[]).await.err();
        let refused = refused.expect("no credentials");
        assert_eq!(refused.status, 401, "{attacker}: {:?}", refused.body);
        let forged = app
            .sse(&stream_path(attacker, "ticket=not-a-ticket"), &[])
            .await
            .err()
            .expect("a forged ticket");
        assert_eq!(forged.status, 401, "{attacker}: {:?}", forged.body);
    }
    let auth = bearer(VIEWER);
    let missing = app
        .sse(
            &stream_path(&unknown, ""),
            &[("Authorization", auth.as_str())],
        )
        .await
        .err()
        .expect("unknown attacker");
    assert_eq!(missing.status, 404, "{:?}", missing.body);
    let ticket = decnet_ticket(&app, "/api/v1/auth/sse-ticket", VIEWER).await;
    let missing = app
        .sse(&stream_path(&unknown, &format!("ticket={ticket}")), &[])
        .await
        .err()
        .expect("unknown attacker");
    assert_eq!(missing.status, 404, "{:?}", missing.body);
    let mut known_stream = app
        .sse(
            &stream_path(&known, ""),
            &[("Authorization", auth.as_str())],
        )
        .await
        .expect("a bearer key opens too");
    assert_eq!(opening(&mut known_stream).await["observations"], json!([]));
    // The ticket call wants credentials as well.
    let anonymous = app.call("POST", "/api/v1/auth/sse-ticket", &[], None).await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
}

#[actix_web::test]
async fn with_the_profile_off_decnet_s_paths_are_not_found() {
    let app = spawn_app_with(&keys_toml()).await;
    let attacker = unique("att");
    http_publish(
        &app,
        &format!("attackers/{attacker}/scored"),
        &json!({"score": 1}),
    )
    .await;
    let auth = bearer(VIEWER);
    for path in ["/auth/sse-ticket", "/api/v1/auth/sse-ticket"] {
        let answer = app
            .call("POST", path, &[("Authorization", auth.as_str())], None)
            .await;
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
    }
    let off = app
        .sse(
            &stream_path(&attacker, ""),
            &[("Authorization", auth.as_str())],
        )
        .await
        .err()
        .expect("not served");
    assert_eq!(off.status, 404, "{:?}", off.body);
    // edgebus's own paths are unchanged.
    let ticket = app.ticket(Some(VIEWER)).await;
    let mut own = app
        .sse(
            &format!("/v1/attackers/{attacker}/events?ticket={ticket}"),
            &[],
        )
        .await
        .expect("edgebus's attacker stream");
    let snapshot = own.snapshot().await;
    assert_eq!(snapshot["events"][0]["event"], "attacker.scored");
}
