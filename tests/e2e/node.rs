//! One edgebus instance of a cluster: the real binary in its own process,
//! reading an external broker (never embedding one), so a test can SIGKILL
//! it as a crash would and start it again on the same port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;

use crate::helpers::{free_port, unique, PORT_ATTEMPTS, WAIT};
use crate::tools::tail;

/// Log lines shown when an instance fails to start.
const TAIL_LINES: usize = 30;

pub struct Node {
    port: u16,
    env: Vec<(String, String)>,
    /// A settings file (`--config`), for what the environment spells
    /// awkwardly (lists of tables such as `auth.api_keys`).
    config: Option<String>,
    child: Option<Child>,
    dir: PathBuf,
    http: awc::Client,
}

impl Drop for Node {
    /// A failing test keeps the log and says where it is.
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "edgebus node on {} logged to {}; its end:\n{}",
                self.port,
                self.log_path().display(),
                self.log_tail(TAIL_LINES)
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Node {
    /// edgebus on a free HTTP port, reading the broker on `mqtt_port`, with
    /// `env` (`EDGEBUS__…` settings) over the defaults here; ready when it
    /// returns. A port taken since [`free_port`] chose it makes the binary
    /// exit: it is started again on another.
    pub async fn start(mqtt_port: u16, env: &[(&str, &str)]) -> Self {
        Self::start_with_config(mqtt_port, env, None).await
    }

    /// [`Node::start`], reading `config` (TOML) as its `--config` file;
    /// the environment still wins over it.
    pub async fn start_with_config(
        mqtt_port: u16,
        env: &[(&str, &str)],
        config: Option<&str>,
    ) -> Self {
        let mut base = vec![
            ("EDGEBUS__MQTT__MODE".to_owned(), "external".to_owned()),
            (
                "EDGEBUS__MQTT__URL".to_owned(),
                format!("mqtt://127.0.0.1:{mqtt_port}"),
            ),
            // Two instances with one client id would take turns kicking
            // each other off the broker.
            ("EDGEBUS__MQTT__CLIENT_ID".to_owned(), unique("node")),
            (
                "EDGEBUS__MQTT__BACKOFF_MIN_SECONDS".to_owned(),
                "1".to_owned(),
            ),
            (
                "EDGEBUS__MQTT__BACKOFF_MAX_SECONDS".to_owned(),
                "2".to_owned(),
            ),
            ("EDGEBUS__HTTP__WORKERS".to_owned(), "1".to_owned()),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ];
        for (key, value) in env {
            base.retain(|(k, _)| k != key);
            base.push(((*key).to_owned(), (*value).to_owned()));
        }
        for _ in 0..PORT_ATTEMPTS {
            let dir = std::env::temp_dir().join(unique("node"));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let mut node = Self {
                port: free_port(),
                env: base.clone(),
                config: config.map(str::to_owned),
                child: None,
                dir,
                http: awc::Client::builder().timeout(WAIT).finish(),
            };
            match node.spawn().await {
                Ok(()) => return node,
                Err(log) if port_taken(&log) => {
                    eprintln!(
                        "edgebus could not listen on {}; trying another port.",
                        node.port
                    );
                }
                Err(log) => {
                    // The message carries the log's end; no directory is left behind.
                    drop(node);
                    panic!("edgebus exited at start-up:\n{log}");
                }
            }
        }
        panic!("edgebus could not listen on {PORT_ATTEMPTS} free ports");
    }

    /// A cluster instance: [`Node::start`] with `cluster.redis_url` and
    /// `cluster.instance_id` set.
    pub async fn cluster(
        mqtt_port: u16,
        redis_url: &str,
        instance_id: &str,
        env: &[(&str, &str)],
    ) -> Self {
        Self::cluster_with_config(mqtt_port, redis_url, instance_id, env, None).await
    }

    /// [`Node::cluster`] with a `--config` file (see [`Node::start_with_config`]).
    pub async fn cluster_with_config(
        mqtt_port: u16,
        redis_url: &str,
        instance_id: &str,
        env: &[(&str, &str)],
        config: Option<&str>,
    ) -> Self {
        let mut all = vec![
            ("EDGEBUS__CLUSTER__REDIS_URL", redis_url),
            ("EDGEBUS__CLUSTER__INSTANCE_ID", instance_id),
        ];
        all.extend_from_slice(env);
        Self::start_with_config(mqtt_port, &all, config).await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, as a crash: no shutdown, no goodbye to the broker or Redis.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it (if running) and starts it again, same port and settings;
    /// ready when it returns.
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.spawn().await {
            panic!("edgebus did not start again on {}:\n{log}", self.port);
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let mut resp = self
            .http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} from node on {}: {e}", self.port));
        let body = resp.body().limit(16 << 20).await.expect("body");
        (resp.status(), String::from_utf8_lossy(&body).into_owned())
    }

    /// The end of its log (stderr and stdout, across restarts).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("edgebus-{}.log", self.port))
    }

    /// Starts the process and waits until `/readyz` is 200; `Err(its log's
    /// tail)` when it exited first.
    async fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("node log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_edgebus"));
        if let Some(config) = &self.config {
            let path = self.dir.join("edgebus.toml");
            std::fs::write(&path, config).expect("node config file");
            command.arg("--config").arg(path);
        }
        command
            .env("EDGEBUS__HTTP__BIND", format!("127.0.0.1:{}", self.port))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        self.child = Some(command.spawn().expect("the edgebus binary starts"));
        let deadline = Instant::now() + WAIT * 3;
        let mut last = None;
        loop {
            if let Ok(resp) = self.http.get(self.url("/readyz")).send().await {
                last = Some(resp.status());
                // Still running: the ready answer is its own, not a
                // stranger's on a port it failed to bind.
                if resp.status() == StatusCode::OK && self.is_running() {
                    return Ok(());
                }
            }
            if !self.is_running() {
                let status = self.child.take().and_then(|mut c| c.wait().ok());
                return Err(format!("(exit {status:?})\n{}", self.log_tail(TAIL_LINES)));
            }
            assert!(
                Instant::now() < deadline,
                "edgebus on {} never became ready (last /readyz: {last:?}):\n{}",
                self.port,
                self.log_tail(TAIL_LINES)
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The binary's own words when `http.bind` could not be had.
fn port_taken(log: &str) -> bool {
    log.contains("Address already in use")
}
