//! Every app a test spawns is gone when the test ends: its threads and its
//! listening sockets. Counted in a process of its own (this binary run again
//! for one test), so the threads of tests running beside it do not blur the
//! count.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::alerts::slack_toml;
use crate::helpers::{metrics_json, spawn_app, spawn_app_with, unique, WAIT};
use crate::slack_mock::SlackMock;

/// Set for the child process that runs [`apps_in_a_row`].
const CHILD: &str = "EDGEBUS_TEARDOWN_CHILD";

/// rumqttd's router thread ("router-0"): it cannot be stopped (see
/// `edgebus::broker`), so it stays, parked, one per embedded broker.
const ROUTER: &str = "router-0";

/// How many apps the child spawns (with clients) and drops.
const APPS: usize = 3;

#[test]
fn dropped_apps_leave_no_thread_and_no_listener_behind() {
    let exe = std::env::current_exe().expect("the test binary");
    let output = Command::new(exe)
        .args([
            "teardown::apps_in_a_row",
            "--exact",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the test binary again");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the child run failed:\n{stdout}\n{stderr}"
    );
}

/// Thread names of this process, counted (`/proc/self/task/*/comm`).
fn threads() -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let comm = task.expect("a task").path().join("comm");
        // A thread that ended between the listing and this read is gone.
        if let Ok(name) = std::fs::read_to_string(comm) {
            *names.entry(name.trim().to_owned()).or_insert(0) += 1;
        }
    }
    names
}

/// Threads other than the routers, and the routers.
fn count(names: &BTreeMap<String, usize>) -> (usize, usize) {
    let routers = names.get(ROUTER).copied().unwrap_or(0);
    (names.values().sum::<usize>() - routers, routers)
}

/// Polls until `done` or the wait is over; returns the last value.
async fn settle<T>(mut read: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let value = read();
        if done(&value) || Instant::now() >= deadline {
            return value;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ports this process listens on: its sockets (`/proc/self/fd`) in the
/// LISTEN state (`/proc/self/net/tcp{,6}`). Another process may bind a
/// port an app released; that one is not ours and not counted.
fn listening_ports() -> BTreeSet<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.ok()?.path()).ok()?;
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let port = local
                .rsplit_once(':')
                .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
            if let (Some(port), true) = (port, *state == "0A" && inodes.contains(*inode)) {
                ports.insert(port);
            }
        }
    }
    ports
}

/// Spawns an app with a bit of everything running (Slack, a WebSocket and
/// an SSE stream, an MQTT publisher, a frame through the pipeline), drops
/// it while its clients are still connected, and returns its two ports.
async fn spawn_use_and_drop(slack: &SlackMock) -> (u16, u16) {
    let app = spawn_app_with(&slack_toml(slack)).await;
    let (port, mqtt_port) = (app.port, app.mqtt_port);
    let mut ws = app.ws("").await;
    ws.snapshot().await;
    let mut sse = app.sse("/v1/events?topic=a/%23", &[]).await.expect("200");
    sse.snapshot().await;
    let mut publisher = app.publisher().await;
    let device = unique("teardown");
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            metrics_json(&device, 1, 99.0),
        )
        .await;
    ws.next_event().await;
    slack.wait_text(|t| t.contains(&device)).await;
    drop(app);
    (port, mqtt_port)
}

#[actix_web::test]
#[ignore = "run by `dropped_apps_leave_no_thread_and_no_listener_behind` in a process of its own"]
async fn apps_in_a_row() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let (baseline, _) = count(&threads());
    let slack = SlackMock::start().await;
    let mut ports = Vec::new();
    for _ in 0..APPS {
        ports.push(spawn_use_and_drop(&slack).await);
    }
    let plain = spawn_app().await;
    ports.push((plain.port, plain.mqtt_port));
    drop(plain);

    let names = settle(threads, |names| count(names).0 <= baseline).await;
    let (others, routers) = count(&names);
    assert!(
        others <= baseline,
        "{others} threads (not counting rumqttd's routers) after {} apps were dropped, \
         {baseline} before: {names:#?}",
        APPS + 1
    );
    assert!(
        routers <= APPS + 1,
        "one parked router per embedded broker at most: {names:#?}"
    );
    let ours: BTreeSet<u16> = ports
        .iter()
        .flat_map(|&(http, mqtt)| [http, mqtt])
        .collect();
    let still = settle(
        || &listening_ports() & &ours,
        |still: &BTreeSet<u16>| still.is_empty(),
    )
    .await;
    assert!(
        still.is_empty(),
        "still listening on {still:?} (HTTP and MQTT ports of the apps: {ports:?})"
    );
}
