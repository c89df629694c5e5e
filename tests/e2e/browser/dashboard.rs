//! The dashboard end to end: edgebus on free ports, devices and events
//! published over real MQTT, the page in headless Chromium. Each test saves
//! a screenshot of its view under `target/browser-artifacts/`.

use std::time::Duration;

use serde_json::{json, Value};

use edgebus::actors::bus::Publish;
use edgebus::actors::event::{now_ms, Body, Draft};
use edgebus::simulate::{self, Behaviour, Fleet, FleetConfig, SimulateConfig};

use super::driver::Browser;
use crate::broker::Mosquitto;
use crate::helpers::{spawn_app, spawn_app_external, spawn_app_with, unique, TestApp, WAIT};

fn metrics(device: &str, seq: u64, cpu: f64, mem: f64, disk: f64) -> String {
    format!(
        r#"{{"device_id":"{device}","timestamp":{seq},"cpu_percent":{cpu},"mem_percent":{mem},"disk_percent":{disk},"gpu_percent":12.5}}"#
    )
}

/// Opens the dashboard and waits until its stream is live.
async fn open(browser: &Browser, app: &TestApp, hash: &str) {
    browser.goto(&app.url(&format!("/{hash}"))).await;
    wait_live(browser).await;
}

async fn wait_live(browser: &Browser) {
    browser
        .wait_for(
            "the connection badge to say live",
            "document.getElementById('conn').dataset.state === 'live'",
        )
        .await;
}

/// JS: the text of a device's bar cell (`cpu`, `mem`, `disk`, `gpu`).
fn cell(device: &str, column: &str) -> String {
    format!(
        "document.querySelector('tr[data-device-id=\"{device}\"] .c-{column} .val')?.textContent"
    )
}

/// JS: whether a device's cell shows `text`.
fn shows(device: &str, column: &str, text: &str) -> String {
    format!("{} === '{text}'", cell(device, column))
}

async fn assert_no_page_errors(browser: &Browser) {
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
}

#[actix_web::test]
async fn the_page_and_its_assets_are_served_with_a_strict_policy() {
    let app = spawn_app().await;
    let mut client = awc::Client::builder()
        .timeout(WAIT)
        .finish()
        .get(app.url("/"))
        .send()
        .await
        .expect("GET /");
    assert_eq!(client.status(), 200);
    let headers = client.headers().clone();
    let html = String::from_utf8(client.body().await.expect("body").to_vec()).expect("utf-8");
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    let csp = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(csp.contains(directive), "CSP lacks {directive}: {csp}");
    }
    assert_eq!(header("x-content-type-options"), "nosniff");

    // Every file the page names is there, with its type.
    for (path, kind) in [
        ("/assets/app.css", "text/css"),
        ("/assets/js/main.js", "text/javascript"),
        ("/assets/js/transport.js", "text/javascript"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        assert!(
            html.contains(path) || path.contains("transport"),
            "index.html should reference {path}"
        );
        let resp = awc::Client::new()
            .get(app.url(path))
            .send()
            .await
            .expect("GET asset");
        assert_eq!(resp.status(), 200, "{path}");
        let served = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(served.starts_with(kind), "{path} served as {served}");
        assert!(
            resp.headers().contains_key("content-security-policy"),
            "{path}"
        );
    }
    let (status, _) = app.get("/assets/../Cargo.toml").await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/assets/js/nope.js").await;
    assert_eq!(status, 404);
    let (_, config) = app.get_json("/assets/config.json").await;
    assert_eq!(config["prune_seconds"], 30);
    assert_eq!(config["auth_required"], false);
    app.handle.shutdown().await;
}

#[actix_web::test]
async fn devices_published_over_mqtt_appear_in_the_table_and_update_in_place() {
    let Some(browser) = Browser::start("devices_appear").await else {
        return;
    };
    let app = spawn_app().await;
    let mut publisher = app.publisher().await;
    let p = unique("dev");
    let (cool, hot, warm) = (format!("{p}-a"), format!("{p}-b"), format!("{p}-c"));
    open(&browser, &app, "").await;

    // Act: three devices publish.
    for (id, cpu) in [(&cool, 12.5), (&hot, 97.25), (&warm, 55.0)] {
        publisher
            .publish(
                &format!("devices/{id}/metrics"),
                metrics(id, 1, cpu, 40.0, 70.0),
            )
            .await;
    }

    // Assert: their values, in their rows.
    browser
        .wait_for("the hot device's CPU", &shows(&hot, "cpu", "97.3%"))
        .await;
    browser
        .wait_for("the cool device's CPU", &shows(&cool, "cpu", "12.5%"))
        .await;
    browser
        .wait_for("the warm device's CPU", &shows(&warm, "cpu", "55.0%"))
        .await;
    assert_eq!(browser.eval(&cell(&hot, "mem")).await, json!("40.0%"));
    assert_eq!(browser.eval(&cell(&hot, "disk")).await, json!("70.0%"));
    assert_eq!(browser.eval(&cell(&hot, "gpu")).await, json!("12.5%"));
    let state = format!("document.querySelector('tr[data-device-id=\"{hot}\"]').dataset.state");
    assert_eq!(browser.eval(&state).await, json!("active"));
    let level =
        format!("document.querySelector('tr[data-device-id=\"{hot}\"] .c-cpu').dataset.level");
    assert_eq!(browser.eval(&level).await, json!("hot"));

    // Sorting by CPU puts the hottest first (descending on first click).
    let order = "[...document.querySelectorAll('#fleet-body tr')].map(r => r.dataset.deviceId)";
    browser.click("#fleet thead button[data-sort=cpu]").await;
    assert_eq!(browser.eval(order).await, json!([hot, warm, cool]));
    browser.click("#fleet thead button[data-sort=id]").await;
    assert_eq!(browser.eval(order).await, json!([cool, hot, warm]));

    // Filtering by id hides the others.
    browser.type_into("#filter", &format!("{p}-c")).await;
    let visible = "[...document.querySelectorAll('#fleet-body tr')].filter(r => !r.hidden).map(r => r.dataset.deviceId)";
    assert_eq!(browser.eval(visible).await, json!([warm]));
    browser.type_into("#filter", "").await;
    browser.screenshot("fleet").await;

    // A burst of 600 frames updates rows in place: no row is created,
    // removed or moved, the same elements stay on the page.
    browser
        .exec(
            "window.__rowsBefore = [...document.querySelectorAll('#fleet-body tr')]; \
             window.__moves = 0; \
             new MutationObserver(m => { window.__moves += m.length; }) \
               .observe(document.getElementById('fleet-body'), {childList: true}); return true;",
            vec![],
        )
        .await;
    for seq in 2..=201 {
        for (i, id) in [&cool, &hot, &warm].into_iter().enumerate() {
            let cpu = (seq as f64 * 0.37 + i as f64 * 20.0) % 100.0;
            publisher
                .publish_nowait(
                    &format!("devices/{id}/metrics"),
                    metrics(id, seq, cpu, 40.0, 70.0),
                )
                .await;
        }
    }
    publisher
        .publish(
            &format!("devices/{hot}/metrics"),
            metrics(&hot, 202, 42.0, 41.0, 71.0),
        )
        .await;
    browser
        .wait_for("the burst's last frame", &shows(&hot, "cpu", "42.0%"))
        .await;
    let same = "window.__rowsBefore.length === 3 && window.__rowsBefore.every((r, i) => \
                r === document.querySelectorAll('#fleet-body tr')[i] && r.isConnected)";
    assert_eq!(browser.eval(same).await, json!(true));
    assert_eq!(browser.eval("window.__moves").await, json!(0));

    // The device view: its values, its chart and its raw events.
    browser
        .click(&format!("tr[data-device-id=\"{hot}\"] td.c-cpu"))
        .await;
    browser
        .wait_for(
            "the device view",
            &format!("document.getElementById('device-title').textContent === '{hot}'"),
        )
        .await;
    browser
        .wait_for(
            "the device's CPU",
            "document.getElementById('device-cpu').textContent === '42.0%'",
        )
        .await;
    let logged = browser
        .wait_for(
            "raw events in the log",
            "document.querySelectorAll('#device-log li[data-event=metrics]').length",
        )
        .await;
    assert!(logged.as_u64().unwrap_or(0) >= 2, "{logged}");
    let drawn = "(() => { const c = document.getElementById('device-chart'); \
                 const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
                 for (let i = 0; i < d.length; i += 4) if (d[i] > 80 && d[i + 2] > 200 && d[i + 1] > 130) return true; \
                 return false; })()";
    browser.wait_for("the CPU line on the chart", drawn).await;
    browser.screenshot("device").await;
    assert_no_page_errors(&browser).await;
    app.handle.shutdown().await;
}

#[actix_web::test]
async fn notifications_and_alerts_show_toasts_coloured_by_level() {
    let Some(browser) = Browser::start("toasts").await else {
        return;
    };
    let app = spawn_app().await;
    let mut publisher = app.publisher().await;
    let device = unique("hot");
    open(&browser, &app, "").await;

    publisher
        .publish(
            "notifications/backup",
            r#"{"level":"warning","message":"Backup finished late","source":"backup"}"#,
        )
        .await;
    let warning = browser
        .wait_for(
            "a warning toast",
            "[...document.querySelectorAll('#toasts .toast.lvl-warning')].map(t => t.textContent).join('|')",
        )
        .await;
    assert!(
        warning
            .as_str()
            .unwrap_or("")
            .contains("Backup finished late"),
        "{warning}"
    );

    // A CPU spike trips the default `cpu_high` rule (above 90).
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            crate::helpers::metrics_json(&device, 1, 97.5),
        )
        .await;
    let alert = browser
        .wait_for(
            "an error toast for the alert",
            "[...document.querySelectorAll('#toasts .toast.lvl-error[data-kind=alert]')].map(t => t.textContent).join('|')",
        )
        .await;
    let alert = alert.as_str().unwrap_or("");
    assert!(
        alert.contains("cpu_high") && alert.contains(&device) && alert.contains("97.5"),
        "{alert}"
    );
    // The alert is also listed, linking to its device.
    browser
        .wait_for(
            "the alert in the fleet's alert list",
            &format!("document.querySelector('#alerts-list a[href=\"#/device/{device}\"]')"),
        )
        .await;
    // Colours differ by level.
    let colours = browser
        .eval(
            "['warning', 'error'].map(l => getComputedStyle(document.querySelector('#toasts .toast.lvl-' + l)).borderLeftColor)",
        )
        .await;
    assert_ne!(colours[0], colours[1], "{colours}");
    browser.screenshot("toasts").await;
    assert_no_page_errors(&browser).await;
    app.handle.shutdown().await;
}

#[actix_web::test]
async fn html_in_text_fields_is_shown_as_text_and_never_runs() {
    let Some(browser) = Browser::start("html_as_text").await else {
        return;
    };
    let app = spawn_app().await;
    let mut publisher = app.publisher().await;
    open(&browser, &app, "").await;
    let evil = r#"<img src=x onerror="window.__pwned=1"><b>bold</b>"#;

    publisher
        .publish(
            "notifications/<script>window.__pwned=2</script>",
            json!({"level": "error", "message": evil}).to_string(),
        )
        .await;
    publisher
        .publish(
            "attackers/<img src=y onerror=window.__pwned=3>/scored",
            json!({"score": 0.5}).to_string(),
        )
        .await;

    let shown = browser
        .wait_for(
            "the toast",
            "document.querySelector('#toasts .toast .toast-msg')?.textContent",
        )
        .await;
    assert_eq!(shown, json!(evil));
    let title = browser
        .eval("document.querySelector('#toasts .toast .toast-title').textContent")
        .await;
    assert_eq!(title, json!("<script>window.__pwned=2</script>"));
    browser
        .wait_for(
            "the attacker in the list",
            "document.querySelector('#attackers-list li a')?.textContent",
        )
        .await;
    // Give any injected handler a chance to run before looking for it.
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    let injected = browser
        .eval(
            "({imgs: document.querySelectorAll('img').length, \
               bolds: document.querySelectorAll('#toasts b, #notifications-list .msg b').length, \
               scripts: document.querySelectorAll('body script').length, \
               pwned: window.__pwned === undefined ? null : window.__pwned})",
        )
        .await;
    assert_eq!(
        injected,
        json!({"imgs": 0, "bolds": 0, "scripts": 0, "pwned": null})
    );
    browser.screenshot("html-as-text").await;
    assert_no_page_errors(&browser).await;
    // And the policy backs it: the page cannot turn a string into markup
    // (after the error check: the refusal is logged as an error).
    let refused = browser
        .exec(
            "try { document.createElement('div').innerHTML = '<img src=x>'; return 'assigned'; } \
             catch (e) { return e.name; }",
            vec![],
        )
        .await;
    assert_eq!(
        refused,
        json!("TypeError"),
        "Trusted Types must be enforced"
    );
    app.handle.shutdown().await;
}

#[actix_web::test]
async fn a_restart_shows_disconnected_then_recovers_with_the_missed_data() {
    let Some(browser) = Browser::start("restart").await else {
        return;
    };
    // A broker outliving edgebus, keeping edgebus's session (clean session
    // off) so frames published while edgebus is down reach it on return.
    let (_broker, mqtt_port) = Mosquitto::on_free_port();
    let client_id = unique("edgebus-restart");
    let extra = format!("[mqtt]\nclient_id = \"{client_id}\"\npersistent_session = true\n");
    let app = spawn_app_external(mqtt_port, &extra).await;
    let http_port = app.port;
    let mut publisher = crate::helpers::Publisher::connect(mqtt_port).await;
    let p = unique("r");
    let (old, new) = (format!("{p}-old"), format!("{p}-new"));
    open(&browser, &app, "").await;
    publisher
        .publish(
            &format!("devices/{old}/metrics"),
            metrics(&old, 1, 10.0, 20.0, 30.0),
        )
        .await;
    browser
        .wait_for("the first frame", &shows(&old, "cpu", "10.0%"))
        .await;

    // Act 1: edgebus stops. The page says so.
    app.handle.shutdown().await;
    browser
        .wait_for(
            "the badge to show the disconnection",
            "document.getElementById('conn').dataset.state === 'reconnecting' \
             && /retry in/.test(document.getElementById('conn').textContent)",
        )
        .await;
    browser.screenshot("disconnected").await;

    // Act 2: frames arrive while edgebus is down; then it comes back on the
    // same port.
    publisher
        .publish(
            &format!("devices/{old}/metrics"),
            metrics(&old, 2, 66.0, 20.0, 30.0),
        )
        .await;
    publisher
        .publish(
            &format!("devices/{new}/metrics"),
            metrics(&new, 1, 33.0, 20.0, 30.0),
        )
        .await;
    let extra = format!("{extra}[http]\nbind = \"127.0.0.1:{http_port}\"\n");
    let app = spawn_app_external(mqtt_port, &extra).await;
    assert_eq!(app.port, http_port);

    // Assert: live again, with what was published during the outage.
    wait_live(&browser).await;
    browser
        .wait_for("the missed update", &shows(&old, "cpu", "66.0%"))
        .await;
    browser
        .wait_for("the missed new device", &shows(&new, "cpu", "33.0%"))
        .await;
    browser.screenshot("recovered").await;
    assert_no_page_errors(&browser).await;
    app.handle.shutdown().await;
}

const API_KEY: &str = "dashboard-test-key-0123456789";

#[actix_web::test]
async fn signing_in_trades_the_key_for_tickets_and_never_puts_it_in_a_url() {
    let Some(browser) = Browser::start("sign_in").await else {
        return;
    };
    let app = spawn_app_with(&format!(
        "[auth]\napi_keys = [{{ name = \"ops\", key = \"{API_KEY}\", roles = [\"viewer\"] }}]"
    ))
    .await;
    let probe = awc::Client::new()
        .post(app.url("/v1/auth/ticket"))
        .send()
        .await
        .expect("POST /v1/auth/ticket");
    assert_eq!(probe.status(), 401, "a ticket without a key");

    // The page asks for a key instead of streaming.
    browser.goto(&app.url("/")).await;
    browser
        .wait_for(
            "the sign-in dialog",
            "document.getElementById('signin').open && document.getElementById('conn').dataset.state === 'signin'",
        )
        .await;
    browser.screenshot("signin").await;

    // A wrong key is refused in the dialog.
    browser
        .type_into("#signin-key", "not-the-key-not-the-key")
        .await;
    browser.click("#signin-form button[type=submit]").await;
    browser
        .wait_for(
            "the refusal",
            "document.getElementById('signin-error').textContent",
        )
        .await;

    // The right key: the stream goes live and carries events.
    browser.type_into("#signin-key", API_KEY).await;
    browser.click("#signin-form button[type=submit]").await;
    wait_live(&browser).await;
    let device = unique("signed");
    let mut publisher = app.publisher().await;
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            metrics(&device, 1, 21.0, 1.0, 1.0),
        )
        .await;
    browser
        .wait_for("the device", &shows(&device, "cpu", "21.0%"))
        .await;

    // No URL the page used carries the key.
    let urls = browser
        .eval("[location.href, ...performance.getEntriesByType('resource').map(e => e.name)]")
        .await;
    assert!(!urls.to_string().contains(API_KEY), "{urls}");
    assert_no_page_errors(&browser).await;
    app.handle.shutdown().await;
}

#[actix_web::test]
async fn the_attacker_view_receives_its_events_and_not_another_attackers() {
    let Some(browser) = Browser::start("attacker_view").await else {
        return;
    };
    let app = spawn_app().await;
    let mut publisher = app.publisher().await;
    let (mine, other) = (unique("att-mine"), unique("att-other"));
    let obs = |uuid: &str, primitive: &str, n: u64| {
        json!({"attacker_uuid": uuid, "primitive": primitive, "n": n}).to_string()
    };
    publisher
        .publish(
            &format!("attackers/{mine}/observation/ssh_login"),
            obs(&mine, "ssh_login", 1),
        )
        .await;
    publisher
        .publish(
            &format!("attackers/{other}/observation/http_probe"),
            obs(&other, "http_probe", 1),
        )
        .await;
    publisher
        .publish(
            &format!("attackers/{mine}/scored"),
            json!({"attacker_uuid": mine, "score": 0.82}).to_string(),
        )
        .await;
    publisher
        .publish(
            &format!("attackers/{mine}/fingerprint_rotated"),
            json!({"attacker_uuid": mine, "from": "ja3:aa", "to": "ja3:bb"}).to_string(),
        )
        .await;
    // The fleet page lists the attacker (WebSocket, scored topic).
    open(&browser, &app, "").await;
    browser
        .wait_for(
            "the attacker in the list",
            &format!("document.querySelector('#attackers-list li[data-attacker=\"{mine}\"]')"),
        )
        .await;

    browser
        .click(&format!("#attackers-list li[data-attacker=\"{mine}\"] a"))
        .await;
    browser
        .wait_for(
            "the attacker stream to be live",
            "document.getElementById('attacker-conn').dataset.state === 'live'",
        )
        .await;
    let timeline = "[...document.querySelectorAll('#attacker-timeline li[data-topic]')].map(li => li.dataset.topic)";
    browser
        .wait_for(
            "the snapshot in the timeline",
            &format!("{timeline}.length >= 3"),
        )
        .await;

    // Live: one more for each attacker; only ours may show.
    publisher
        .publish(
            &format!("attackers/{other}/observation/http_probe"),
            obs(&other, "http_probe", 2),
        )
        .await;
    publisher
        .publish(
            &format!("attackers/{mine}/observation/ssh_login"),
            obs(&mine, "ssh_login", 2),
        )
        .await;
    browser
        .wait_for(
            "the live observation",
            "document.getElementById('attacker-observations').textContent === '2'",
        )
        .await;
    let topics = browser.eval(timeline).await;
    let topics: Vec<&str> = topics
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        topics
            .iter()
            .all(|t| t.starts_with(&format!("attackers/{mine}/"))),
        "{topics:?}"
    );
    assert_eq!(
        browser
            .eval("document.getElementById('attacker-score').textContent")
            .await,
        json!("0.82")
    );
    assert_eq!(
        browser
            .eval("document.getElementById('attacker-rotations').textContent")
            .await,
        json!("1")
    );
    browser.screenshot("attacker").await;
    assert_no_page_errors(&browser).await;
    app.handle.shutdown().await;
}

#[actix_web::test]
async fn the_demo_fleet_fills_the_dashboard_at_hundreds_of_updates_per_second() {
    let Some(browser) = Browser::start("demo_fleet").await else {
        return;
    };
    // A short "active" window, so the device that goes silent turns stale
    // within the test.
    let app = spawn_app_with("[registry]\nprune_seconds = 3").await;
    let fleet = FleetConfig {
        silent_after: Duration::from_secs(2),
        ..FleetConfig::default()
    };
    let devices = fleet.devices;
    let silent = Fleet::new(fleet.clone())
        .device_ids()
        .find(|(_, b)| *b == Behaviour::GoesSilent)
        .map(|(id, _)| id.to_owned())
        .expect("the fleet has a silent device");
    let attackers = fleet.attackers;
    let simulator = actix_web::rt::spawn(simulate::run(SimulateConfig {
        host: "127.0.0.1".into(),
        port: app.mqtt_port,
        fleet,
        rate: 360.0,
        duration: Some(Duration::from_secs(120)),
        login: None,
    }));
    open(&browser, &app, "").await;

    // Every device sending valid frames gets a row (the one sending only bad
    // frames may join them once its `rejecting` alert names it).
    let rows = "document.querySelectorAll('#fleet-body tr[data-device-id]:not([data-device-id=\\\"rogue-01\\\"])').length";
    browser
        .wait_for(
            "a row per valid device",
            &format!("{rows} === {}", devices - 1),
        )
        .await;
    browser
        .wait_for(
            "the bad frames counted",
            "Number(document.getElementById('count-rejects').textContent) > 0",
        )
        .await;
    browser
        .wait_for(
            "the attackers listed",
            &format!("document.querySelectorAll('#attackers-list li').length === {attackers}"),
        )
        .await;
    browser
        .wait_for(
            "the silent device to turn stale",
            &format!("document.querySelector('tr[data-device-id=\"{silent}\"]')?.dataset.state === 'stale'"),
        )
        .await;
    assert_eq!(
        browser.eval(rows).await,
        json!(devices - 1),
        "no row may appear twice"
    );

    // The page keeps painting while hundreds of updates per second arrive.
    let worst_gap_ms = browser
        .exec_async(
            "const done = arguments[arguments.length - 1]; let last = performance.now(), worst = 0; \
             const t0 = last; const step = (t) => { worst = Math.max(worst, t - last); last = t; \
             if (t - t0 < 3000) requestAnimationFrame(step); else done(worst); }; requestAnimationFrame(step);",
            vec![],
        )
        .await;
    eprintln!("Demo fleet: worst gap between frames over 3 s: {worst_gap_ms} ms.");
    // A page frozen by its own rendering would show gaps of seconds.
    let worst = worst_gap_ms.as_f64().expect("a number of milliseconds");
    assert!(worst < 1500.0, "the page stalled for {worst} ms");
    browser.screenshot("demo-fleet").await;

    browser.goto(&app.url("/#/device/gw-01")).await;
    browser
        .wait_for(
            "the device's log",
            "document.querySelectorAll('#device-log li').length > 5",
        )
        .await;
    browser.screenshot("demo-device").await;
    assert_no_page_errors(&browser).await;
    simulator.abort();
    app.handle.shutdown().await;
}

/// Publishes an `uploads/{host}` event as the upload endpoint does: onto
/// the bus with its explicit event name (no client may publish under
/// `uploads/`), the payload as the uploads contract spells it.
async fn publish_upload(app: &TestApp, host: &str, event: &'static str, payload: Value) {
    let Value::Object(mut fields) = payload else {
        panic!("an upload payload is an object");
    };
    fields.insert("host_id".into(), host.into());
    fields.insert("schema_version".into(), 2.into());
    fields.insert("stamped".into(), true.into());
    let draft = Draft::new(format!("uploads/{host}"), now_ms(), Body::Object(fields))
        .with_event_name(event);
    app.handle
        .bus()
        .send(Publish(draft))
        .await
        .expect("the bus answers");
}

/// JS: the texts of the uploads panel, row by row.
const UPLOAD_ROWS: &str = "[...document.querySelectorAll('#uploads-body tr')].map(r => ({\
    host: r.dataset.uploadHost, outcome: r.dataset.outcome, \
    episode: r.querySelector('.u-episode').textContent, \
    status: r.querySelector('.u-status').textContent, \
    http: r.querySelector('.u-status').dataset.http, \
    size: r.querySelector('.u-size').textContent, \
    stored: r.querySelector('.u-stored').textContent, \
    duplicate: r.querySelector('.u-duplicate').textContent, \
    refused: r.querySelector('.u-refused').textContent, \
    refusal: r.querySelector('.u-refusal-status').textContent, \
    reason: r.querySelector('.u-refusal-reason').textContent}))";

#[actix_web::test]
async fn the_uploads_panel_keeps_each_hosts_last_upload_counts_and_last_refusal() {
    let Some(browser) = Browser::start("uploads_panel").await else {
        return;
    };
    let app = spawn_app().await;
    let sha = "a".repeat(64);
    // Before the page opens: reaches it in the snapshot.
    publish_upload(
        &app,
        "lab-02",
        "upload.stored",
        json!({"episode_id": "ep-0007", "status": "stored", "http_status": 201,
               "size_bytes": 1536, "sha256": sha}),
    )
    .await;
    open(&browser, &app, "").await;
    browser
        .wait_for(
            "lab-02's upload from the snapshot",
            "document.querySelector('tr[data-upload-host=\"lab-02\"] .u-status')?.textContent === 'stored'",
        )
        .await;

    // Live: a duplicate for lab-02, then a refusal for lab-01 whose reason
    // carries markup, then a stored upload for lab-01.
    let evil = r#"<img src=x onerror="window.__pwned=1">sha256 mismatch"#;
    publish_upload(
        &app,
        "lab-02",
        "upload.duplicate",
        json!({"episode_id": "ep-0007", "status": "already-present", "http_status": 200,
               "sha256": sha}),
    )
    .await;
    publish_upload(
        &app,
        "lab-01",
        "upload.refused",
        json!({"episode_id": "ep-0001", "status": "sha-mismatch", "http_status": 400,
               "reason": evil, "sha256": sha}),
    )
    .await;
    browser
        .wait_for(
            "lab-01's refusal, highlighted",
            "document.querySelector('tr[data-upload-host=\"lab-01\"]')?.dataset.outcome === 'refused' \
             && document.querySelector('tr[data-upload-host=\"lab-02\"] .u-duplicate').textContent === '1'",
        )
        .await;
    let highlight = browser
        .eval(
            "getComputedStyle(document.querySelector('tr[data-upload-host=\"lab-01\"] .u-status')).color \
             !== getComputedStyle(document.querySelector('tr[data-upload-host=\"lab-02\"] .u-status')).color",
        )
        .await;
    assert_eq!(highlight, json!(true), "a refusal stands out");
    browser.screenshot("uploads-refused").await;
    publish_upload(
        &app,
        "lab-01",
        "upload.stored",
        json!({"episode_id": "ep-0002", "status": "stored", "http_status": 201,
               "size_bytes": 12, "sha256": sha}),
    )
    .await;
    browser
        .wait_for(
            "lab-01's stored upload",
            "document.querySelector('tr[data-upload-host=\"lab-01\"] .u-stored')?.textContent === '1'",
        )
        .await;

    assert_eq!(
        browser.eval(UPLOAD_ROWS).await,
        json!([
            {"host": "lab-01", "outcome": "stored", "episode": "ep-0002", "status": "stored",
             "http": "201", "size": "12 B", "stored": "1", "duplicate": "0", "refused": "1",
             "refusal": "sha-mismatch 400", "reason": evil},
            {"host": "lab-02", "outcome": "duplicate", "episode": "ep-0007",
             "status": "already-present", "http": "200", "size": "—", "stored": "1",
             "duplicate": "1", "refused": "0", "refusal": "—", "reason": ""},
        ])
    );
    assert_eq!(
        browser
            .eval("[document.getElementById('uploads-count').textContent, document.getElementById('uploads-empty').hidden, document.querySelectorAll('img').length, window.__pwned ?? null]")
            .await,
        json!(["2 hosts", true, 0, null])
    );
    browser.screenshot("uploads").await;
    assert_no_page_errors(&browser).await;
    app.handle.shutdown().await;
}
