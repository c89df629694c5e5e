//! The SecureTea profile (`[compat.securetea]`): the core's `GET /notifs`
//! from an allowed address or with a key, and the GUI's real
//! `socket.io-client` (2.x, as the GUI had when it gained notifications,
//! and 4.x, as it has now) receiving `newmessage`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::auth::{bearer, keys_toml, PUBLISHER, VIEWER};
use crate::helpers::{spawn_app_with, TestApp, WAIT};
use crate::tools::require_tool;

fn profile(allowed: &str) -> String {
    format!(
        "[compat.securetea]\nenabled = true\nallowed_sources = [{allowed}]\n\
         socketio_bind = \"127.0.0.1:0\"\n"
    )
}

async fn app(allowed: &str) -> TestApp {
    spawn_app_with(&format!("{}{}", keys_toml(), profile(allowed))).await
}

/// `GET target` from the local address `from`, as plain HTTP/1.1 (the
/// core's `requests.get`): status and body text.
async fn get_from(port: u16, from: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, _, body) = get_raw(port, from, target, headers).await;
    (status, body)
}

/// [`get_from`] with the head too (status line and headers, as sent).
async fn get_raw(
    port: u16,
    from: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    let local = format!("{from}:0").parse().expect("an address");
    socket
        .bind(local)
        .expect("any 127/8 address binds on Linux");
    let server = format!("127.0.0.1:{port}").parse().expect("an address");
    let mut stream = socket.connect(server).await.expect("connects");
    let mut request =
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("sends");
    let mut answer = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut answer))
        .await
        .expect("an answer within the wait")
        .expect("reads the answer");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[actix_web::test]
async fn the_cores_call_is_a_notification_from_an_allowed_address_or_with_a_key() {
    let app = app("\"127.0.0.1\"").await;
    let mut stream = app
        .sse(
            "/v1/events?topic=notifications/securetea",
            &[("Authorization", &bearer(VIEWER))],
        )
        .await
        .expect("200");
    stream.snapshot().await;

    let (status, body) = get_from(app.port, "127.0.0.1", "/notifs?msg=Whello", &[]).await;
    assert_eq!((status, body.as_str()), (200, "Notif sent"));
    let event = stream.next_event().await;
    assert_eq!(event.event, "notification");
    let payload = &event.json()["payload"];
    assert_eq!(payload["level"], "warning");
    assert_eq!(payload["message"], "hello");
    assert_eq!(payload["source"], "securetea");

    // Another address: a publisher key, not a viewer's, and not none.
    let other = "127.0.0.2";
    let (status, body) = get_from(app.port, other, "/notifs?msg=Whello", &[]).await;
    assert_eq!(status, 401, "{body}");
    let viewer = bearer(VIEWER);
    let (status, _) = get_from(
        app.port,
        other,
        "/notifs?msg=Whello",
        &[("Authorization", &viewer)],
    )
    .await;
    assert_eq!(status, 403);
    let publisher = bearer(PUBLISHER);
    let (status, body) = get_from(
        app.port,
        other,
        "/notifs?msg=Edisk%20full",
        &[("Authorization", &publisher)],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "Notif sent"));
    let payload = stream.next_event().await.json()["payload"].clone();
    assert_eq!(
        (payload["level"].as_str(), payload["message"].as_str()),
        (Some("error"), Some("disk full"))
    );

    // The port the core calls by default (the ServerApp's) answers alike.
    let socketio = app.socketio_port.expect("the Socket.IO listener");
    let (status, body) = get_from(socketio, "127.0.0.1", "/notifs?msg=Sstarted", &[]).await;
    assert_eq!((status, body.as_str()), (200, "Notif sent"));
    let payload = stream.next_event().await.json()["payload"].clone();
    assert_eq!(
        (payload["level"].as_str(), payload["message"].as_str()),
        (Some("success"), Some("started"))
    );
    let (status, body) = get_from(socketio, other, "/notifs?msg=Sstarted", &[]).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (status, body) = get_from(socketio, "127.0.0.1", "/notifs?msg=Qx", &[]).await;
    assert_eq!(status, 400, "{body}");

    // A browser page on the allowed machine is not the core.
    let (status, _) = get_from(
        app.port,
        "127.0.0.1",
        "/notifs?msg=Whello",
        &[("Sec-Fetch-Site", "cross-site")],
    )
    .await;
    assert_eq!(status, 401);
    // Nor is anyone behind a proxy on the allowed machine, on either port.
    for (port, header) in [
        (app.port, ("X-Forwarded-For", "203.0.113.9")),
        (socketio, ("Forwarded", "for=203.0.113.9")),
        (app.port, ("X-Real-IP", "203.0.113.9")),
    ] {
        let (status, _) = get_from(port, "127.0.0.1", "/notifs?msg=Whello", &[header]).await;
        assert_eq!(status, 401, "{header:?}");
    }

    // The bounds of POST /v1/notifications, and the letter.
    for (target, says) in [
        ("/notifs", "missing"),
        ("/notifs?msg=", "missing"),
        ("/notifs?msg=W", "no text"),
        ("/notifs?msg=Xhello", "must start with"),
    ] {
        let (status, body) = get_from(app.port, "127.0.0.1", target, &[]).await;
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body.contains(says), "{target}: {body}");
    }
    let long = format!("/notifs?msg=S{}", "x".repeat(2001));
    let (status, body) = get_from(app.port, "127.0.0.1", &long, &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("1 to 2000 characters"), "{body}");
}

#[actix_web::test]
async fn without_allowed_sources_every_call_needs_a_key_and_without_the_profile_there_is_none() {
    let app = app("").await;
    let (status, _) = get_from(app.port, "127.0.0.1", "/notifs?msg=Whello", &[]).await;
    assert_eq!(status, 401);
    drop(app);
    let off = spawn_app_with(&keys_toml()).await;
    assert_eq!(off.socketio_port, None);
    let publisher = bearer(PUBLISHER);
    let (status, _) = get_from(
        off.port,
        "127.0.0.1",
        "/notifs?msg=Whello",
        &[("Authorization", &publisher)],
    )
    .await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn browsers_reach_the_socketio_listener_only_from_the_allowed_origins() {
    let gui = "http://gui.example:4200";
    let app = spawn_app_with(&format!(
        "{}socketio_cors_origins = [\"{gui}\"]\n",
        profile("")
    ))
    .await;
    let port = app.socketio_port.expect("the Socket.IO listener");
    let handshake = "/socket.io/?EIO=4&transport=polling";
    let (status, head, body) = get_raw(port, "127.0.0.1", handshake, &[("Origin", gui)]).await;
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.contains(&format!("access-control-allow-origin: {gui}")),
        "{head}"
    );
    assert!(body.contains("\"sid\""), "an Engine.IO open packet: {body}");
    let (status, _, body) = get_raw(
        port,
        "127.0.0.1",
        handshake,
        &[("Origin", "http://evil.example")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Not a browser: no Origin, no CORS.
    let (status, head, _) = get_raw(port, "127.0.0.1", handshake, &[]).await;
    assert_eq!(status, 200);
    assert!(!head.contains("access-control-allow-origin"), "{head}");
}

/// `socket.io-client@version` under the test's target dir, installed from
/// npm once and reused after.
fn socketio_client(version: &str) -> PathBuf {
    // Tests asking for the same version at once must not run two installs
    // into one directory.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let prefix = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("securetea-npm")
        .join(version);
    let module = prefix.join("node_modules").join("socket.io-client");
    if module.join("package.json").is_file() {
        return module;
    }
    let output = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&prefix)
        .arg(format!("socket.io-client@{version}"))
        .output()
        .expect("npm runs");
    assert!(
        output.status.success(),
        "npm install socket.io-client@{version} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    module
}

/// The GUI client in a node process; killed when dropped.
struct Gui {
    child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
}

impl Gui {
    fn start(module: &Path, port: u16, count: usize) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/securetea/gui_client.js");
        let mut child = Command::new("node")
            .arg(script)
            .arg(module)
            .arg(format!("http://127.0.0.1:{port}"))
            .arg(count.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT * 3, self.lines.recv())
            .await
            .expect("the GUI client printed within the wait")
            .expect("the GUI client printed before exiting")
    }
}

impl Drop for Gui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `eio`: the Engine.IO protocol version the client speaks.
async fn the_gui_gets_newmessage_with_its_level_letter(version: &str, eio: &str) {
    if !require_tool("node") || !require_tool("npm") {
        return;
    }
    let module = socketio_client(version);
    let app = app("\"127.0.0.1\"").await;
    let port = app.socketio_port.expect("the Socket.IO listener");
    let mut gui = Gui::start(&module, port, 2);
    let connected = gui.next().await;
    assert_eq!(connected["connected"], true, "{connected}");
    assert_eq!(connected["transport"], "websocket", "{connected}");
    assert_eq!(connected["eio"], eio, "{connected}");

    let (status, _) = get_from(app.port, "127.0.0.1", "/notifs?msg=Whello", &[]).await;
    assert_eq!(status, 200);
    // Any notification reaches the GUI, info as the `S` its toasts know.
    let answer = app
        .call(
            "POST",
            "/v1/notifications",
            &[("Authorization", &bearer(PUBLISHER))],
            Some(r#"{"level":"info","message":"from the API","source":"ci"}"#),
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");

    assert_eq!(gui.next().await["newmessage"]["message"], "Whello");
    assert_eq!(gui.next().await["newmessage"]["message"], "Sfrom the API");
    let status = gui.child.wait().expect("node exits");
    assert!(status.success(), "{status}");
}

#[actix_web::test]
async fn the_seed_guis_socketio_client_2_gets_newmessage() {
    // The GUI's package.json had "socket.io-client": "^2.3.0".
    the_gui_gets_newmessage_with_its_level_letter("2.5.0", "3").await;
}

#[actix_web::test]
async fn todays_guis_socketio_client_4_gets_newmessage() {
    // Later the GUI moved to "~4.4.0", then "~4.5.1".
    the_gui_gets_newmessage_with_its_level_letter("4.5.4", "4").await;
}

/// A GUI that connects by WebSocket (Engine.IO 4), joins the namespace and
/// then never reads again, with a small receive buffer so it stalls soon.
async fn stalled_gui(port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small buffer");
    let server = format!("127.0.0.1:{port}").parse().expect("an address");
    let mut stream = socket.connect(server).await.expect("connects");
    let upgrade = format!(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(upgrade.as_bytes()).await.expect("sends");
    read_until(&mut stream, b"0{").await;
    // "40": join "/", in a masked text frame as clients must send.
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 2];
    frame.extend_from_slice(&mask);
    frame.extend(b"40".iter().zip(mask).map(|(b, m)| b ^ m));
    stream.write_all(&frame).await.expect("sends");
    read_until(&mut stream, b"40{").await;
    stream
}

async fn read_until(stream: &mut tokio::net::TcpStream, needle: &[u8]) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the server answers within the wait")
            .expect("reads");
        assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(needle));
        seen.extend_from_slice(&buf[..n]);
    }
}

#[actix_web::test]
async fn a_stalled_gui_loses_its_own_messages_and_slows_no_other() {
    if !require_tool("node") || !require_tool("npm") {
        return;
    }
    let module = socketio_client("4.5.4");
    let app = app("").await;
    let port = app.socketio_port.expect("the Socket.IO listener");
    let _stalled = stalled_gui(port).await;
    let mut gui = Gui::start(&module, port, 1_000_000);
    assert_eq!(gui.next().await["connected"], true);

    let drops = r#"edgebus_events_dropped_total{reason="slow_session"}"#;
    let before = app.metric(drops).await;
    let filler = "x".repeat(1900);
    let key = bearer(PUBLISHER);
    let mut sent = 0u32;
    // Batches the live GUI reads in full before the next: it never holds
    // more than a batch, while the stalled one only piles up.
    while app.metric(drops).await == before {
        assert!(sent < 20_000, "the stalled GUI never filled its buffer");
        let first = sent;
        for _ in 0..32 {
            let body =
                serde_json::json!({"level": "warning", "message": format!("{sent} {filler}")});
            let answer = app
                .call(
                    "POST",
                    "/v1/notifications",
                    &[("Authorization", &key)],
                    Some(&body.to_string()),
                )
                .await;
            assert_eq!(answer.status, 201, "{answer:?}");
            sent += 1;
        }
        for n in first..sent {
            let line = gui.next().await;
            let message = line["newmessage"]["message"].as_str().unwrap_or_default();
            assert!(
                message.starts_with(&format!("W{n} ")),
                "message {n} reached the live GUI in order: {:.40}",
                message
            );
        }
    }
}

#[actix_web::test]
async fn a_connection_that_never_sends_its_request_is_closed() {
    use tokio::io::AsyncReadExt;
    let app = app("\"127.0.0.1\"").await;
    let port = app.socketio_port.expect("the Socket.IO listener");
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    // The listener's header timeout is 10 s: closed well within three waits.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(crate::helpers::WAIT * 3, idle.read(&mut buf))
        .await
        .expect("the idle connection is closed by the server");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed, not answered: {read:?}"
    );
    app.handle.stop_now();
}
