//! The fleet around uploads, end to end: the version gate over a real git
//! repository the test makes, and the seed monitor's detectors (fatal-only,
//! unstamped, silent) raised from real uploads on the injected clock, posted
//! to Slack and appended to `alerts.jsonl`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use edgebus::actors::alerts::{Check, ManualClock};
use edgebus::actors::event::now_ms;

use crate::alerts::slack_toml;
use crate::helpers::{spawn_app_with, spawn_app_with_clock, WAIT};
use crate::slack_mock::SlackMock;
use crate::tools::require_tool;
use crate::uploads::{config, data_dir, put, sha256};

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn commit(repo: &Path, message: &str) -> String {
    git(
        repo,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            message,
        ],
    );
    git(repo, &["rev-parse", "HEAD"])
}

#[actix_web::test]
async fn the_version_gate_follows_the_repository_as_commits_land() {
    if !require_tool("git") {
        return;
    }
    let dir = data_dir();
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).expect("repo dir");
    git(&repo, &["init", "-q"]);
    let commits: Vec<String> = (0..3).map(|i| commit(&repo, &format!("c{i}"))).collect();
    let gate = format!(
        "[uploads.version_gate]\nenabled = true\nrepo = \"{}\"\nwindow = 2\n",
        repo.display()
    );
    let app = spawn_app_with(&config(&dir, &gate)).await;
    let body = b"episode".to_vec();
    let sha = sha256(&body);
    let upload = |id: &'static str, commit: Option<String>| {
        let (port, sha, body) = (app.port, sha.clone(), body.clone());
        async move {
            let mut headers = vec![("X-Content-SHA256", sha.clone())];
            if let Some(c) = commit {
                headers.push(("X-Cis490-Code-Commit", c));
            }
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            put(port, &format!("lab-01/{id}.tar.zst"), &headers, body).await
        }
    };

    assert_eq!(upload("e1", Some(commits[2].clone())).await.status, 201);
    assert_eq!(
        upload("e2", Some(commits[1].to_ascii_uppercase()))
            .await
            .status,
        201
    );
    let stale = upload("e3", Some(commits[0].clone())).await;
    assert_eq!(stale.status, 412, "{stale:?}");
    assert_eq!(
        stale.body["error"],
        "code commit rejected: not in receiver's allow-list"
    );
    assert_eq!(stale.body["your_commit"], commits[0].as_str());
    assert_eq!(stale.body["valid_window_size"], 2);
    assert_eq!(stale.body["head_commit"], commits[2].as_str());
    assert!(stale.body["remediation"]
        .as_str()
        .is_some_and(|r| r.contains("FIXYOURSELF.md")));
    let missing = upload("e3", None).await;
    assert_eq!(missing.status, 400, "{missing:?}");
    assert_eq!(missing.body["error"], "missing X-Cis490-Code-Commit header");
    assert_eq!(missing.body["see_also"], "FIXYOURSELF.md");
    let bad = upload("e3", Some("abc".into())).await;
    assert_eq!(
        (bad.status, bad.body.clone()),
        (
            400,
            json!({"error": "X-Cis490-Code-Commit must be 40 lowercase hex"})
        )
    );

    // Two commits land: the window moves without a restart.
    let newer: Vec<String> = (3..5).map(|i| commit(&repo, &format!("c{i}"))).collect();
    let moved = upload("e4", Some(commits[2].clone())).await;
    assert_eq!(moved.status, 412, "{moved:?}");
    assert_eq!(moved.body["head_commit"], newer[1].as_str());
    assert_eq!(upload("e4", Some(newer[0].clone())).await.status, 201);

    // Host health is never gated.
    let health = app
        .call(
            "PUT",
            "/v1/host-health/lab-01",
            &[(
                "Authorization",
                &format!("Bearer {}", crate::uploads::PUBLISHER),
            )],
            Some(r#"{"disk":"ok"}"#),
        )
        .await;
    assert_eq!(health.status, 200, "{health:?}");
    app.handle.stop_now();
}

/// The start of the current UTC hour plus `minutes`.
fn this_hour_plus(minutes: u64) -> u64 {
    now_ms() / 3_600_000 * 3_600_000 + minutes * 60_000
}

/// `alerts.jsonl`'s lines, once it holds at least `n`.
async fn journal(dir: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(dir.join("alerts.jsonl")).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a journal line is JSON"))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "alerts.jsonl holds {lines:?}, want {n} lines"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn refused_unstamped_and_silent_uploaders_are_alerted_once_an_hour() {
    let slack = SlackMock::start().await;
    let clock = Arc::new(ManualClock::new(this_hour_plus(5)));
    let dir = data_dir();
    let app = spawn_app_with_clock(
        &config(
            &dir,
            &format!(
                "{}[uploads]\nsilent_after_seconds = 1800\n",
                slack_toml(&slack)
            ),
        ),
        Some(clock.clone()),
    )
    .await;
    let body = b"episode".to_vec();
    let good = sha256(&body);
    let wrong = sha256(b"something else");
    let stamp = "b".repeat(40);

    // A host whose every upload is refused, and without the commit header.
    for i in 0..3 {
        let got = put(
            app.port,
            &format!("lab-bad/e{i}.tar.zst"),
            &[("X-Content-SHA256", &wrong)],
            body.clone(),
        )
        .await;
        assert_eq!(got.status, 400, "{got:?}");
    }
    slack
        .wait_text(|t| t.contains("lab-bad uploads are all refused (fatal-only)"))
        .await;
    slack
        .wait_text(|t| t.contains("lab-bad uploads are unstamped"))
        .await;
    // A healthy, stamped host beside it raises nothing.
    let healthy = put(
        app.port,
        "lab-ok/e1.tar.zst",
        &[
            ("X-Content-SHA256", &good),
            ("X-Cis490-Code-Commit", &stamp),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(healthy.status, 201);
    let lines = journal(&dir, 2).await;
    let mut symptoms: Vec<&str> = lines.iter().filter_map(|l| l["symptom"].as_str()).collect();
    symptoms.sort_unstable();
    assert_eq!(symptoms, ["fatal-only", "unstamped"], "{lines:#?}");
    assert!(lines.iter().all(|l| l["host"] == "lab-bad"));

    // Still refused ten minutes on: the same hour, nothing new.
    clock.advance(Duration::from_secs(600));
    for i in 3..6 {
        put(
            app.port,
            &format!("lab-bad/e{i}.tar.zst"),
            &[("X-Content-SHA256", &wrong)],
            body.clone(),
        )
        .await;
    }
    // Quiet for the silence threshold: both hosts are silent (each once).
    clock.advance(Duration::from_secs(1800));
    app.handle.alerts().send(Check).await.expect("alerts alive");
    slack
        .wait_text(|t| t.contains("lab-ok uploads are silent"))
        .await;
    slack
        .wait_text(|t| t.contains("lab-bad uploads are silent"))
        .await;
    let lines = journal(&dir, 4).await;
    assert_eq!(lines.len(), 4, "one line per firing: {lines:#?}");
    let texts = slack.delivered();
    assert_eq!(
        texts.iter().filter(|t| t.contains("fatal-only")).count(),
        1,
        "reported once in its hour: {texts:#?}"
    );
    app.handle.stop_now();
}
