//! A minimal W3C WebDriver client over awc, driving Debian's headless
//! Chromium through chromedriver (started here on a free port). Just what the
//! dashboard tests need: navigate, run a script, wait for a condition, take a
//! screenshot. Scripts read the DOM; the page is never given test hooks.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::{Mutex, MutexGuard};

use crate::helpers::{free_port, unique, PORT_ATTEMPTS};

/// Browser tests run one at a time: each Chromium wants a core of its own on
/// a 2-core machine, and a starved renderer makes every deadline flaky.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// How long a condition may take in the browser (a reconnect waits out a
/// back-off of up to 8 s).
pub const BROWSER_WAIT: Duration = Duration::from_secs(30);

const REQUIRE_ENV: &str = "EDGEBUS_REQUIRE_BROWSER";

fn chromium_path() -> PathBuf {
    std::env::var_os("EDGEBUS_CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

fn chromedriver_path() -> PathBuf {
    std::env::var_os("EDGEBUS_CHROMEDRIVER")
        .map_or_else(|| "/usr/bin/chromedriver".into(), PathBuf::from)
}

/// Where screenshots go: `target/browser-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/browser-artifacts");
    dir
}

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    http: awc::Client,
    profile: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

/// chromedriver on a free port. It binds the port itself, so when the
/// port was taken since [`free_port`] chose it (chromedriver exits), it is
/// started again on another one.
fn start_chromedriver(chromedriver: &Path) -> (Child, u16) {
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port();
        let mut driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Listening and still running: the answer is its own.
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && matches!(driver.try_wait(), Ok(None))
            {
                return (driver, port);
            }
            if let Ok(Some(_)) = driver.try_wait() {
                eprintln!("chromedriver could not listen on {port}; trying another port.");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver never listened on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("chromedriver could not listen on {PORT_ATTEMPTS} free ports");
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session, or returns `None`
    /// (with a loud message) when Chromium is not installed and
    /// `EDGEBUS_REQUIRE_BROWSER` is unset. With it set, a missing browser
    /// fails the test: CI never skips silently.
    pub async fn start(test: &str) -> Option<Self> {
        let (chromium, chromedriver) = (chromium_path(), chromedriver_path());
        if !chromium.exists() || !chromedriver.exists() {
            let what = format!(
                "{} or {} is missing (apt-get install chromium chromium-driver; .ci/run does)",
                chromium.display(),
                chromedriver.display()
            );
            if std::env::var_os(REQUIRE_ENV).is_some() {
                panic!("{REQUIRE_ENV} is set but {what}");
            }
            eprintln!(
                "\n########\n# SKIPPED browser test `{test}`: {what}.\n# Set {REQUIRE_ENV}=1 to make this a failure.\n########\n"
            );
            return None;
        }
        let turn = ONE_AT_A_TIME.lock().await;
        let (driver, port) = start_chromedriver(&chromedriver);
        let profile = std::env::temp_dir().join(unique("edgebus-chromium"));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--force-device-scale-factor=1",
            "--window-size=1400,900",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.to_string_lossy(), "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let http = awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish();
        let mut browser = Self {
            driver,
            port,
            session: String::new(),
            http,
            profile,
            _turn: turn,
        };
        let value = browser.call("POST", "/session", Some(caps)).await;
        browser.session = value["sessionId"]
            .as_str()
            .expect("a WebDriver session id")
            .to_owned();
        Some(browser)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url),
        };
        let mut resp = match body {
            Some(body) => req.send_json(&body).await,
            None => req.send().await,
        }
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let bytes = resp
            .body()
            .limit(64 << 20)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path} body: {e}"));
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert!(
            resp.status().is_success(),
            "WebDriver {method} {path} answered {}: {json}",
            resp.status()
        );
        json["value"].clone()
    }

    fn session_path(&self, tail: &str) -> String {
        format!("/session/{}{tail}", self.session)
    }

    pub async fn goto(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(json!({ "url": url })),
        )
        .await;
    }

    /// Runs a script body (use `return`), with `arguments[i]` = `args[i]`.
    pub async fn exec(&self, script: &str, args: Vec<Value>) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Runs an asynchronous script body: it must call
    /// `arguments[arguments.length - 1](value)` to finish.
    pub async fn exec_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/async"),
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Value of a JavaScript expression.
    pub async fn eval(&self, expr: &str) -> Value {
        self.exec(&format!("return ({expr});"), vec![]).await
    }

    /// Polls a JavaScript expression until it is truthy; returns its value.
    /// On timeout, fails with `what`, the last value and the page's console.
    pub async fn wait_for(&self, what: &str, expr: &str) -> Value {
        let script = format!("try {{ return ({expr}); }} catch (e) {{ return null; }}");
        let deadline = Instant::now() + BROWSER_WAIT;
        loop {
            let v = self.exec(&script, vec![]).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let conn = self
                    .eval("document.getElementById('conn')?.textContent")
                    .await;
                let logs = self.console().await;
                let shot = self.screenshot(&unique("timeout")).await;
                panic!(
                    "browser: timed out waiting for {what}\n  expression: {expr}\n  last value: {v}\n  \
                     connection: {conn}\n  screenshot: {}\n  console:\n{logs}",
                    shot.display()
                );
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sets an input's value as typing would, firing `input`.
    pub async fn type_into(&self, selector: &str, text: &str) {
        self.exec(
            "const el = document.querySelector(arguments[0]); el.value = arguments[1]; \
             el.dispatchEvent(new Event('input', {bubbles: true})); return true;",
            vec![json!(selector), json!(text)],
        )
        .await;
    }

    pub async fn click(&self, selector: &str) {
        let found = self
            .exec(
                "const el = document.querySelector(arguments[0]); if (!el) return false; el.click(); return true;",
                vec![json!(selector)],
            )
            .await;
        assert_eq!(found, Value::Bool(true), "nothing to click at {selector}");
    }

    /// Saves a PNG under `target/browser-artifacts/{name}.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let data = self
            .call("GET", &self.session_path("/screenshot"), None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        let path = artifacts_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// The browser console so far, one line per entry (chromedriver's log
    /// endpoint; empty if it is unavailable).
    pub async fn console(&self) -> String {
        let url = format!(
            "http://127.0.0.1:{}{}",
            self.port,
            self.session_path("/se/log")
        );
        let Ok(mut resp) = self
            .http
            .post(url)
            .send_json(&json!({"type": "browser"}))
            .await
        else {
            return String::new();
        };
        let body: Value = resp.json().limit(16 << 20).await.unwrap_or(Value::Null);
        body["value"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| format!("    [{}] {}", e["level"], e["message"]))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    /// Console entries at SEVERE level (JavaScript errors, CSP violations),
    /// leaving out failed loads and connects: a reconnecting page (or one
    /// meeting a server without a ticket endpoint) logs those by design.
    pub async fn console_errors(&self) -> Vec<String> {
        self.console()
            .await
            .lines()
            .filter(|l| l.contains("\"SEVERE\""))
            .filter(|l| {
                !l.contains("Failed to load resource") && !l.contains("WebSocket connection to")
            })
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session makes chromedriver close Chromium; killing
        // chromedriver alone would leave the browser running. Plain blocking
        // HTTP: Drop cannot await.
        if !self.session.is_empty() {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let request = format!(
                    "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.session, self.port
                );
                if stream.write_all(request.as_bytes()).is_ok() {
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink);
                }
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
