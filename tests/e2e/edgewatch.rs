//! The EdgeWatch profile (`[compat.edgewatch]`), from its dashboards' side:
//! a real WebSocket client on any path of the listener, as the bridge's
//! dashboard connected; its publishers over MQTT, lax frames and payload
//! device ids included; the lax rules held against the bridge's own
//! pydantic model; and `edgebus import edgewatch` on a `.env` file.

use std::io::Write as _;
use std::process::{Command, Stdio};

use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;

use edgebus::actors::bus::Publish;
use edgebus::actors::event::{now_ms, wire, Body, Draft};
use edgebus::actors::frame::{FrameRules, MetricsFrame};
use edgebus::settings::Settings;

use crate::helpers::{free_port, spawn_app_with, unique, TestApp, WAIT};
use crate::tools::require_python_module;

const TOKEN: &str = "dash-t0ken";

fn profile(extra: &str) -> String {
    format!("[compat.edgewatch]\nenabled = true\nbind = \"127.0.0.1:0\"\n{extra}")
}

/// A dashboard: the raw text of every message, as the bridge's clients
/// read it.
struct Dashboard {
    framed: actix_codec::Framed<BoxedSocket, Codec>,
}

#[derive(Debug, PartialEq)]
enum Seen {
    Text(String),
    Closed(Option<(u16, String)>),
}

impl Dashboard {
    async fn connect(app: &TestApp, target: &str) -> Self {
        let port = app.edgewatch_port.expect("the EdgeWatch listener");
        let url = format!("ws://127.0.0.1:{port}{target}");
        let (resp, framed) = awc::Client::new()
            .ws(&url)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {url}: {e}"));
        assert_eq!(resp.status().as_u16(), 101, "{url}");
        Self { framed }
    }

    /// The next message or the close, answering pings.
    async fn next(&mut self) -> Seen {
        loop {
            let frame = tokio::time::timeout(WAIT, self.framed.next())
                .await
                .expect("a WebSocket frame within the wait");
            match frame {
                Some(Ok(Frame::Text(bytes))) => {
                    return Seen::Text(String::from_utf8(bytes.to_vec()).expect("UTF-8 text"))
                }
                Some(Ok(Frame::Ping(p))) => {
                    let _ = self.framed.send(Message::Pong(p)).await;
                }
                Some(Ok(Frame::Close(reason))) => {
                    return Seen::Closed(
                        reason.map(|r| (u16::from(r.code), r.description.unwrap_or_default())),
                    )
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Seen::Closed(None),
            }
        }
    }

    async fn json(&mut self) -> (String, Value) {
        match self.next().await {
            Seen::Text(text) => {
                let value = serde_json::from_str(&text).expect("JSON text");
                (text, value)
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }

    async fn send(&mut self, message: Message) {
        self.framed.send(message).await.expect("send");
    }
}

/// Waits until `n` EdgeWatch (WebSocket) sessions are with the bus: their
/// join was sent before the gauge moved, so a frame published after this
/// finds them subscribed.
async fn joined(app: &TestApp, n: f64) {
    app.wait_metric("edgebus_sessions_open{kind=\"ws\"}", n)
        .await;
}

fn frame_json(device: &str, timestamp: &str, cpu: &str) -> String {
    format!(
        r#"{{"device_id":"{device}","timestamp":{timestamp},"cpu_percent":{cpu},"mem_percent":40,"disk_percent":70.5}}"#
    )
}

/// The bridge's message for one frame, as its `json.dumps` wrote it.
fn seed_text(device: &str, timestamp: u64, cpu: &str) -> String {
    format!(
        r#"{{"{device}": {{"device_id": "{device}", "timestamp": {timestamp}, "cpu_percent": {cpu}, "mem_percent": 40.0, "disk_percent": 70.5, "gpu_percent": null, "agent_cpu_percent": null, "agent_mem_mb": null}}}}"#
    )
}

#[actix_web::test]
async fn a_wrong_or_missing_token_gets_the_handshake_then_close_1008_unauthorized() {
    let app = spawn_app_with(&profile(&format!("token = \"{TOKEN}\"\n"))).await;
    // A device seen first: a refused dashboard must not get its snapshot.
    // The bus has it once an edgebus client has had its frame.
    let seen = unique("d");
    let mut witness = app.ws("?topic=devices/%2B/metrics").await;
    witness.snapshot().await;
    app.publisher()
        .await
        .publish(
            &format!("devices/{seen}/metrics"),
            frame_json(&seen, "1", "5"),
        )
        .await;
    assert_eq!(
        witness.next_event().await["payload"]["device_id"],
        seen.as_str()
    );
    for target in [
        "/",
        "/?token=dash-t0kem",
        "/any/path?token=",
        "/x?other=dash-t0ken",
    ] {
        let mut dashboard = Dashboard::connect(&app, target).await;
        assert_eq!(
            dashboard.next().await,
            Seen::Closed(Some((1008, "unauthorized".into()))),
            "{target}"
        );
    }
    let device = unique("d");
    let mut dashboard = Dashboard::connect(&app, &format!("/deep/any/path?token={TOKEN}")).await;
    let (snapshot, _) = dashboard.json().await;
    assert_eq!(
        snapshot,
        seed_text(&seen, 1, "5.0"),
        "with the token: the snapshot"
    );
    joined(&app, 2.0).await; // the witness and this dashboard
    let mut publisher = app.publisher().await;
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            frame_json(&device, "7", "42"),
        )
        .await;
    let (text, _) = dashboard.json().await;
    assert_eq!(text, seed_text(&device, 7, "42.0"));
}

#[actix_web::test]
async fn with_no_device_seen_nothing_comes_first_and_each_frame_arrives_in_the_seeds_form() {
    let app = spawn_app_with(&profile("")).await;
    let mut dashboard = Dashboard::connect(&app, "/").await;
    joined(&app, 1.0).await;
    // What a dashboard sends is read and ignored, text or binary.
    dashboard.send(Message::Text("hello".into())).await;
    dashboard.send(Message::Binary(vec![1, 2, 3].into())).await;
    let device = unique("d");
    let mut publisher = app.publisher().await;
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            r#"{"device_id":"DEV","timestamp":5,"cpu_percent":12.25,"mem_percent":0,"disk_percent":100,"agent_cpu_percent":150,"agent_mem_mb":0.00001}"#.replace("DEV", &device),
        )
        .await;
    let (text, value) = dashboard.json().await;
    assert_eq!(
        text,
        format!(
            r#"{{"{device}": {{"device_id": "{device}", "timestamp": 5, "cpu_percent": 12.25, "mem_percent": 0.0, "disk_percent": 100.0, "gpu_percent": null, "agent_cpu_percent": 150.0, "agent_mem_mb": 1e-05}}}}"#
        ),
        "the first message is the frame, not a snapshot"
    );
    assert!(value[&device]["gpu_percent"].is_null());
    // Other families never reach a dashboard.
    publisher
        .publish("notifications/x", r#"{"level":"info","message":"m"}"#)
        .await;
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            frame_json(&device, "6", "1"),
        )
        .await;
    assert_eq!(dashboard.json().await.0, seed_text(&device, 6, "1.0"));
}

#[actix_web::test]
async fn the_snapshot_holds_the_devices_seen_within_the_window_and_comes_first() {
    let app = spawn_app_with(&profile("[registry]\nactive_window_seconds = 30\n")).await;
    let (a, b, old) = (unique("a"), unique("b"), unique("old"));
    let mut publisher = app.publisher().await;
    for device in [&a, &b] {
        publisher
            .publish(
                &format!("devices/{device}/metrics"),
                frame_json(device, "1", "10"),
            )
            .await;
    }
    // A device last heard from two minutes ago, past the 30 s window.
    let stale = MetricsFrame::parse(&old, frame_json(&old, "1", "10").as_bytes(), 4096)
        .expect("a valid frame");
    let draft = Draft::new(
        format!("devices/{old}/metrics"),
        now_ms() - 120_000,
        Body::Metrics(stale),
    );
    app.handle
        .bus()
        .send(Publish(draft))
        .await
        .expect("the bus takes it");
    app.wait_metric("edgebus_events_published_total", 3.0).await;

    let mut dashboard = Dashboard::connect(&app, "/dashboard").await;
    let (text, snapshot) = dashboard.json().await;
    let devices = snapshot.as_object().expect("an object");
    assert_eq!(devices.len(), 2, "{text}");
    assert!(
        devices.contains_key(&a) && devices.contains_key(&b),
        "{text}"
    );
    assert!(!devices.contains_key(&old), "{text}");
    // Each device as the bridge wrote it: the one-device message, unwrapped.
    let one = seed_text(&a, 1, "10.0");
    assert!(text.contains(&one[1..one.len() - 1]), "{text}");
    publisher
        .publish(&format!("devices/{a}/metrics"), frame_json(&a, "2", "11"))
        .await;
    assert_eq!(dashboard.json().await.0, seed_text(&a, 2, "11.0"));
}

#[actix_web::test]
async fn lax_frames_and_payload_device_ids_are_taken_only_when_enabled_and_are_counted() {
    let lax = r#"{"device_id":"DEV","timestamp":1700000000.0,"cpu_percent":"42","mem_percent":"40","disk_percent":true}"#;
    // Strict (the profile on, its options off): refused, and nothing sent.
    let strict = spawn_app_with(&profile("")).await;
    let mut dashboard = Dashboard::connect(&strict, "/").await;
    joined(&strict, 1.0).await;
    let mut publisher = strict.publisher().await;
    let device = unique("d");
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            lax.replace("DEV", &device),
        )
        .await;
    publisher
        .publish("devices/other/metrics", frame_json(&device, "3", "1"))
        .await;
    strict
        .wait_metric(
            "edgebus_frames_rejected_total{reason=\"bad_timestamp\"}",
            1.0,
        )
        .await;
    strict
        .wait_metric(
            "edgebus_frames_rejected_total{reason=\"device_id_mismatch\"}",
            1.0,
        )
        .await;
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            frame_json(&device, "4", "1"),
        )
        .await;
    assert_eq!(
        dashboard.json().await.0,
        seed_text(&device, 4, "1.0"),
        "neither refused frame reached the dashboard"
    );
    drop(strict);

    let app = spawn_app_with(&profile(
        "lax_frames = true\ndevice_id_from_payload = true\n",
    ))
    .await;
    let mut dashboard = Dashboard::connect(&app, "/").await;
    joined(&app, 1.0).await;
    let mut publisher = app.publisher().await;
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            lax.replace("DEV", &device),
        )
        .await;
    let (text, _) = dashboard.json().await;
    assert_eq!(
        text,
        format!(
            r#"{{"{device}": {{"device_id": "{device}", "timestamp": 1700000000, "cpu_percent": 42.0, "mem_percent": 40.0, "disk_percent": 1.0, "gpu_percent": null, "agent_cpu_percent": null, "agent_mem_mb": null}}}}"#
        )
    );
    for (coercion, n) in [
        ("number_from_string", 2.0),
        ("int_from_float", 1.0),
        ("number_from_bool", 1.0),
        ("int_from_string", 0.0),
    ] {
        assert_eq!(
            app.metric(&format!(
                "edgebus_frames_coerced_total{{coercion=\"{coercion}\"}}"
            ))
            .await,
            n,
            "{coercion}"
        );
    }
    // Still refused under lax rules: NaN in any spelling.
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            frame_json(&device, "1", "\"nan\""),
        )
        .await;
    app.wait_metric(
        "edgebus_frames_rejected_total{reason=\"out_of_range\"}",
        1.0,
    )
    .await;

    // The payload names the device; the topic's level is not trusted.
    let real = unique("real");
    publisher
        .publish("devices/impostor/metrics", frame_json(&real, "9", "5"))
        .await;
    assert_eq!(dashboard.json().await.0, seed_text(&real, 9, "5.0"));
    assert_eq!(
        app.metric("edgebus_frames_device_from_payload_total").await,
        1.0
    );
    let (status, view) = app.get_json(&format!("/v1/devices/{real}")).await;
    assert_eq!(status, 200, "the registry files it under {real}: {view}");
    let (status, _) = app.get_json("/v1/devices/impostor").await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn with_the_profile_off_nothing_listens() {
    let port = free_port();
    let app = spawn_app_with(&format!(
        "[compat.edgewatch]\nenabled = false\nbind = \"127.0.0.1:{port}\"\nlax_frames = true\n"
    ))
    .await;
    assert_eq!(app.edgewatch_port, None);
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "something answers on {port}");
    // Its frame options apply only with the profile on.
    let device = unique("d");
    let mut publisher = app.publisher().await;
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            frame_json(&device, "1", "\"42\""),
        )
        .await;
    app.wait_metric("edgebus_frames_rejected_total{reason=\"wrong_type\"}", 1.0)
        .await;
}

/// The bridge's `Metrics` model, verbatim, run over one JSON frame per
/// line: `OK {device_id: model_dump()}` as its `json.dumps` wrote it, or `ERR`.
const SEED_MODEL: &str = r#"
import json, sys
from typing import Optional
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

_DEVICE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"

class Metrics(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    device_id: str = Field(pattern=_DEVICE_ID_PATTERN)
    timestamp: int = Field(ge=0)
    cpu_percent: float = Field(ge=0, le=100)
    mem_percent: float = Field(ge=0, le=100)
    disk_percent: float = Field(ge=0, le=100)
    gpu_percent: Optional[float] = Field(default=None, ge=0, le=100)
    agent_cpu_percent: Optional[float] = Field(default=None, ge=0, le=1000)
    agent_mem_mb: Optional[float] = Field(default=None, ge=0)

    @field_validator("cpu_percent", "mem_percent", "disk_percent",
                     "gpu_percent", "agent_cpu_percent", "agent_mem_mb")
    @classmethod
    def _reject_nonfinite(cls, value):
        if value is None:
            return value
        if not (value == value):
            raise ValueError("must be a finite number")
        return value

for line in open(sys.argv[1], encoding="utf-8"):
    try:
        m = Metrics.model_validate(json.loads(line))
        sys.stdout.write("OK " + json.dumps({m.device_id: m.model_dump()}) + "\n")
    except (ValidationError, ValueError):
        sys.stdout.write("ERR\n")
"#;

/// Frames to judge, each marked when edgebus refuses by design what the
/// bridge took: infinities (`agent_mem_mb` has no upper bound, and Python
/// reads `Infinity` and `1e400`), timestamps past `u64`, duplicate keys.
fn corpus() -> Vec<(String, bool)> {
    let base = [
        ("device_id", "\"d1\""),
        ("timestamp", "1"),
        ("cpu_percent", "1"),
        ("mem_percent", "1"),
        ("disk_percent", "1"),
    ];
    let with = |field: &str, value: &str| {
        let mut parts: Vec<String> = base
            .iter()
            .filter(|(k, _)| *k != field)
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        parts.push(format!("\"{field}\":{value}"));
        format!("{{{}}}", parts.join(","))
    };
    let strings = [
        "42",
        "42.5",
        " 42.5 ",
        "4_2",
        "4__2",
        "_42",
        "42_",
        "1_e2",
        "1e_2",
        "1_.5",
        "1._5",
        "1e2",
        "1E2",
        "0x10",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "infinity",
        "+inf",
        "-0",
        "+5",
        "",
        " ",
        "42.0",
        "42.00",
        "42.",
        ".5",
        "5.",
        "+.5",
        "-.5",
        "1.5",
        "1e3",
        "0042",
        "00",
        "0.0",
        "-0.0",
        "00.5",
        "1_000",
        "1_000.0",
        "1_0.0",
        "10.0_0",
        "4_2.0",
        "42\n",
        "\t42",
        "\u{a0}42",
        "\u{3000}42",
        "4 2",
        "1,5",
        "１２",
        "٣",
        "1e-400",
        "1e400",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "+-5",
        "--5",
        "1.0000000001",
        "99.99999999999999",
        "100.0",
        "100.00000000000001",
        "0.1",
        "1e-5",
    ];
    let literals = [
        "true",
        "false",
        "null",
        "[1]",
        "{}",
        "42",
        "42.0",
        "42.5",
        "-0.0",
        "-1",
        "1e2",
        "1700000000.0",
        "1.7e9",
        "9.2e18",
        "9.3e18",
        "1e20",
        "5e-324",
        "1e-7",
        "0.1",
        "33.333333333333336",
        "1e16",
        "1234567890123456.0",
        "1e300",
        "1e400",
        "NaN",
        "Infinity",
        "-Infinity",
        "18446744073709551615",
        "18446744073709551616",
        "1000000000000000000000000000000",
    ];
    let mut out = Vec::new();
    let fields = [
        "timestamp",
        "cpu_percent",
        "gpu_percent",
        "agent_cpu_percent",
        "agent_mem_mb",
    ];
    for field in fields {
        for s in strings {
            let value = serde_json::to_string(s).expect("a JSON string");
            out.push((with(field, &value), false));
        }
        for literal in literals {
            out.push((with(field, literal), false));
        }
    }
    for id in [
        "d1",
        "d1\n",
        "d1 ",
        " d1",
        "ＡＢ",
        "a.b_c-D",
        "",
        &"a".repeat(65),
    ] {
        out.push((
            with("device_id", &serde_json::to_string(id).expect("JSON")),
            false,
        ));
    }
    out.push((with("device_id", "5"), false));
    out.push((with("evil", "\"<!channel>\""), false));
    out.push(("[1,2]".to_owned(), false));
    out.push((
        r#"{"device_id":"d1","timestamp":1,"cpu_percent":1,"mem_percent":1}"#.to_owned(),
        false,
    ));
    out.push((
        r#"{"device_id":"d1","timestamp":1,"cpu_percent":1,"cpu_percent":2,"mem_percent":1,"disk_percent":1}"#
            .to_owned(),
        true,
    ));
    // Marked by what the bridge made of them: an infinity, or a timestamp
    // past u64.
    for (json, stricter) in &mut out {
        let inf_ok = |v: &str| json.contains(&format!("\"agent_mem_mb\":{v}"));
        if [
            "\"inf\"",
            "\"Infinity\"",
            "\"infinity\"",
            "\"+inf\"",
            "\"1e400\"",
            "1e400",
            "Infinity",
        ]
        .iter()
        .any(|v| inf_ok(v))
        {
            *stricter = true;
        }
        if [
            "\"18446744073709551616\"",
            "18446744073709551616",
            "1000000000000000000000000000000",
        ]
        .iter()
        .any(|v| json.contains(&format!("\"timestamp\":{v}")))
        {
            *stricter = true;
        }
    }
    out
}

#[actix_web::test]
async fn lax_frames_agree_with_the_bridges_pydantic_model() {
    if !require_python_module("pydantic") {
        return;
    }
    let corpus = corpus();
    let path = std::env::temp_dir().join(format!("{}.jsonl", unique("edgewatch-corpus")));
    let mut file = std::fs::File::create(&path).expect("a corpus file");
    for (json, _) in &corpus {
        assert!(!json.contains('\n'), "one frame per line: {json:?}");
        writeln!(file, "{json}").expect("written");
    }
    drop(file);
    let out = Command::new("python3")
        .args(["-c", SEED_MODEL])
        .arg(&path)
        .stderr(Stdio::inherit())
        .output()
        .expect("python3 runs");
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "the model script failed");
    let verdicts: Vec<String> = String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(verdicts.len(), corpus.len());
    // The bridge took any device id its pattern allowed, whatever the topic.
    let rules = FrameRules {
        lax: true,
        device_id_from_payload: true,
    };
    let (mut agreed, mut stricter) = (0, 0);
    for ((json, by_design), verdict) in corpus.iter().zip(&verdicts) {
        let ours = MetricsFrame::parse_with("d1", json.as_bytes(), 16 * 1024, rules);
        match (verdict.strip_prefix("OK "), ours) {
            (Some(seed), Ok(accepted)) => {
                assert!(!by_design, "edgebus took {json} though marked as refused");
                assert_eq!(
                    wire::edgewatch_message(&[&accepted.frame]),
                    seed,
                    "the same values, printed the same, for {json}"
                );
                agreed += 1;
            }
            (Some(seed), Err(rejection)) => {
                assert!(
                    by_design,
                    "the bridge took {json} (as {seed}) but edgebus refused it: {rejection}"
                );
                stricter += 1;
            }
            (None, Ok(accepted)) => panic!(
                "edgebus took {json} (as {:?}), which the bridge refused",
                accepted.frame
            ),
            (None, Err(_)) => agreed += 1,
        }
    }
    // Enough of both kinds that the comparison means something.
    let accepted = verdicts.iter().filter(|v| v.starts_with("OK")).count();
    assert!(
        accepted > 100 && verdicts.len() - accepted > 100,
        "{accepted}"
    );
    assert!(stricter >= 5 && agreed + stricter == corpus.len());
}

#[actix_web::test]
async fn the_import_command_prints_a_config_edgebus_loads_from_a_bridges_env_file() {
    let dir = std::env::temp_dir().join(unique("edgewatch-import"));
    std::fs::create_dir_all(&dir).expect("a directory");
    let env_file = dir.join("bridge.env");
    std::fs::write(
        &env_file,
        "# the bridge's .env\n\
         MQTT_BROKER=iot.example.com\n\
         mqtt_port=8884\n\
         WS_PORT=7001\n\
         WS_AUTH_TOKEN=\"from-file\"\n\
         PRUNE_SECONDS=45\n\
         CPU_ALERT_TH=80\n\
         LOG_LEVEL=debug\n",
    )
    .expect("written");
    let run = |extra_env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_edgebus"));
        command
            .args(["import", "edgewatch", "--env-file"])
            .arg(&env_file)
            .env_clear()
            .current_dir(&dir);
        for (k, v) in extra_env {
            command.env(k, v);
        }
        command.output().expect("edgebus runs")
    };
    // The environment wins over the file, whatever the case of its names.
    let out = run(&[("ws_auth_token", "from-env")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8(out.stdout).expect("UTF-8");
    let settings = Settings::from_toml(&toml).expect("the printed config loads");
    assert_eq!(settings.mqtt.url.host, "iot.example.com");
    assert_eq!(settings.mqtt.url.port, 8884);
    assert!(settings.mqtt.url.tls);
    assert_eq!(settings.registry.active_window.as_secs(), 45);
    assert_eq!(settings.alerts.rules[0].above, Some(80.0));
    let ew = &settings.compat.edgewatch;
    assert!(ew.enabled);
    assert_eq!(ew.bind, "0.0.0.0:7001".parse().expect("an address"));
    assert_eq!(ew.token.expose(), "from-env");
    assert!(toml.contains("RUST_LOG=debug"), "{toml}");

    // A value the bridge refused: one line naming it, and a failure.
    let out = run(&[("WS_PORT", "abc")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`WS_PORT`"), "{stderr}");
    assert!(out.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn a_page_from_an_origin_not_listed_is_refused_before_the_upgrade() {
    let app = spawn_app_with(&profile("allowed_origins = [\"http://dash.example\"]\n")).await;
    let port = app.edgewatch_port.expect("the EdgeWatch listener");
    let url = format!("ws://127.0.0.1:{port}/");
    let refused = awc::Client::new()
        .ws(&url)
        .origin("http://evil.example")
        .connect()
        .await;
    match refused {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|(r, _)| r.status())),
    }
    let (resp, _framed) = awc::Client::new()
        .ws(&url)
        .origin("http://dash.example")
        .connect()
        .await
        .expect("a listed origin");
    assert_eq!(resp.status().as_u16(), 101);
}

#[actix_web::test]
async fn a_dashboard_that_floods_messages_is_closed_and_the_others_keep_their_frames() {
    let app = spawn_app_with(&profile("")).await;
    let mut flooder = Dashboard::connect(&app, "/").await;
    let mut quiet = Dashboard::connect(&app, "/").await;
    joined(&app, 2.0).await;
    // Far beyond the op budget (10 a second, 40 at once): ignored messages
    // cost the shared thread too.
    for _ in 0..200 {
        flooder.send(Message::Text("x".repeat(1024).into())).await;
    }
    assert_eq!(
        flooder.next().await,
        Seen::Closed(Some((1008, "rate limit exceeded".into()))),
    );
    let device = unique("d");
    app.publisher()
        .await
        .publish(
            &format!("devices/{device}/metrics"),
            frame_json(&device, "3", "1"),
        )
        .await;
    let (text, _) = quiet.json().await;
    assert_eq!(text, seed_text(&device, 3, "1.0"));
}

#[test]
fn a_locked_service_refuses_a_dashboard_listener_without_a_token() {
    let locked = "[auth]\n[[auth.api_keys]]\nname = \"ops\"\nkey = \"k-0123456789abcdef0123456789\"\nroles = [\"viewer\"]\n";
    let line = Settings::from_toml(&format!("{locked}{}", profile("")))
        .unwrap_err()
        .to_string();
    assert!(line.contains("`compat.edgewatch.token`"), "{line}");
    Settings::from_toml(&format!("{locked}{}", profile("token = \"t\"\n"))).expect("with a token");
    Settings::from_toml(&profile("")).expect("open mode, as the bridge's dev mode");
}
