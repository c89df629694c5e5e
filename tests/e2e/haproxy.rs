//! A private HAProxy in front of edgebus instances, as a deployment puts a
//! load balancer in front of a cluster. Health checks hit `/readyz`; every
//! answer names the backend that served it (`X-Edgebus-Backend: n0`, `n1`…,
//! in the order the ports were given), so a test knows which instance a
//! client is on.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{free_port, unique, PORT_ATTEMPTS, WAIT};
use crate::tools::{installed, tail};

/// The response header naming the backend.
pub const BACKEND_HEADER: &str = "x-edgebus-backend";

/// How HAProxy picks a backend for a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each request to the next healthy backend.
    RoundRobin,
    /// Every request to the first healthy backend in the order given: a
    /// failover test knows where clients are, and where they go next.
    First,
}

impl Balance {
    fn keyword(self) -> &'static str {
        match self {
            Self::RoundRobin => "roundrobin",
            Self::First => "first",
        }
    }
}

/// An answer through HAProxy.
#[derive(Debug)]
pub struct Routed {
    pub status: u16,
    /// Index (into the ports given to [`Haproxy::start`]) of the backend
    /// that answered; `None` when HAProxy answered itself (503: none up).
    pub backend: Option<usize>,
    pub body: String,
}

/// One backend as HAProxy's `show stat` reports it.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// `UP`, `DOWN`, or a transition such as `UP 1/2`.
    pub status: String,
    /// The last health check's result: `L7OK` once `/readyz` answered 200.
    pub check_status: String,
}

impl ServerState {
    /// Up, and a health check has actually passed (not just the initial state).
    pub fn is_up(&self) -> bool {
        self.status.starts_with("UP") && self.check_status == "L7OK"
    }

    pub fn is_down(&self) -> bool {
        self.status.starts_with("DOWN")
    }
}

pub struct Haproxy {
    child: Child,
    port: u16,
    dir: PathBuf,
    backends: usize,
    http: awc::Client,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Haproxy {
    /// Round-robin over `backends` (ports on 127.0.0.1).
    pub fn start(backends: &[u16]) -> Self {
        Self::start_with(backends, Balance::RoundRobin)
    }

    /// On a free port. HAProxy binds it itself, so a port taken since
    /// [`free_port`] chose it makes it exit: it is started again on another.
    pub fn start_with(backends: &[u16], balance: Balance) -> Self {
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match Self::try_start(backends, balance, port) {
                Ok(proxy) => return proxy,
                Err(log) if log.contains("cannot bind") || log.contains("in use") => {
                    eprintln!("HAProxy could not listen on {port}; trying another port.");
                }
                Err(log) => panic!("HAProxy exited at start-up:\n{log}"),
            }
        }
        panic!("HAProxy could not listen on {PORT_ATTEMPTS} free ports");
    }

    /// `Err(its log's tail)` when it exited instead of listening.
    fn try_start(backends: &[u16], balance: Balance, port: u16) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(unique("haproxy"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, config_text(backends, balance, port, &dir)).expect("haproxy.cfg");
        let log_path = dir.join("haproxy.log");
        let log = std::fs::File::create(&log_path).expect("haproxy.log");
        let child = Command::new(installed("haproxy"))
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("haproxy starts");
        let mut proxy = Self {
            child,
            port,
            dir,
            backends: backends.len(),
            http: awc::Client::builder().timeout(WAIT).finish(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            // Listening and still running: the answer is its own.
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && matches!(proxy.child.try_wait(), Ok(None))
            {
                return Ok(proxy);
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                return Err(format!("({status})\n{}", tail(&log_path, 20)));
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy never listened on {port}:\n{}",
                tail(&log_path, 20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A `GET` through HAProxy, and which backend answered it.
    pub async fn get(&self, path: &str) -> Routed {
        let mut resp = self
            .http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} through HAProxy: {e}"));
        let body = resp.body().limit(16 << 20).await.expect("body");
        let backend = resp
            .headers()
            .get(BACKEND_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|name| name.strip_prefix('n')?.parse().ok());
        Routed {
            status: resp.status().as_u16(),
            backend,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// Every backend's state, in the order the ports were given.
    pub async fn servers(&self) -> Vec<ServerState> {
        let mut socket = tokio::net::UnixStream::connect(self.dir.join("admin.sock"))
            .await
            .expect("HAProxy's stats socket");
        socket.write_all(b"show stat\n").await.expect("show stat");
        // Not in interactive mode: HAProxy closes after one answer.
        let mut csv = String::new();
        tokio::time::timeout(WAIT, socket.read_to_string(&mut csv))
            .await
            .expect("show stat answers within the wait")
            .expect("show stat");
        parse_show_stat(&csv, self.backends)
    }

    /// Waits until at least `n` backends passed a health check and are up.
    pub async fn wait_backends_up(&self, n: usize) {
        self.wait_servers(&format!("{n} backends up"), |servers| {
            servers.iter().filter(|s| s.is_up()).count() >= n
        })
        .await;
    }

    /// Waits until HAProxy has marked backend `index` down.
    pub async fn wait_backend_down(&self, index: usize) {
        self.wait_servers(&format!("backend n{index} down"), |servers| {
            servers[index].is_down()
        })
        .await;
    }

    async fn wait_servers(&self, what: &str, ok: impl Fn(&[ServerState]) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let servers = self.servers().await;
            if ok(&servers) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy never had {what}: {servers:?}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// HAProxy's own output (start-up warnings, alerts), for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.join("haproxy.log"), lines)
    }
}

/// Long client, server and tunnel timeouts carry SSE (not a tunnel to
/// HAProxy) and WebSocket (a tunnel after the upgrade); `redispatch` with
/// retries sends a request whose backend refuses the connection to another
/// one, before the health checks (every 200 ms, down after 2 failures) have
/// noticed.
fn config_text(backends: &[u16], balance: Balance, port: u16, dir: &std::path::Path) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, p)| format!("    server n{i} 127.0.0.1:{p} check\n"))
        .collect();
    format!(
        "global\n\
         \x20   stats socket {sock} mode 600 level admin\n\
         defaults\n\
         \x20   mode http\n\
         \x20   option redispatch 1\n\
         \x20   retries 3\n\
         \x20   timeout connect 1s\n\
         \x20   timeout check 2s\n\
         \x20   timeout client 1h\n\
         \x20   timeout server 1h\n\
         \x20   timeout tunnel 1h\n\
         frontend edgebus_in\n\
         \x20   bind 127.0.0.1:{port}\n\
         \x20   default_backend edgebus\n\
         backend edgebus\n\
         \x20   balance {balance}\n\
         \x20   option httpchk GET /readyz\n\
         \x20   http-check expect status 200\n\
         \x20   http-response set-header {BACKEND_HEADER} %s\n\
         \x20   default-server inter 200ms fastinter 200ms downinter 200ms fall 2 rise 1\n\
         {servers}",
        sock = dir.join("admin.sock").display(),
        balance = balance.keyword(),
    )
}

/// The `edgebus` backend's servers `n0…` from `show stat`'s CSV, whose
/// first line names the columns (`# pxname,svname,…`).
fn parse_show_stat(csv: &str, backends: usize) -> Vec<ServerState> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .unwrap_or_else(|| panic!("show stat header in {csv:?}"))
        .split(',')
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|c| *c == name)
            .unwrap_or_else(|| panic!("show stat has no column {name}"))
    };
    let (px, sv, status, check) = (
        column("pxname"),
        column("svname"),
        column("status"),
        column("check_status"),
    );
    let mut servers = vec![None; backends];
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.get(px) != Some(&"edgebus") {
            continue;
        }
        let index = fields
            .get(sv)
            .and_then(|name| name.strip_prefix('n')?.parse::<usize>().ok());
        if let Some(slot) = index.and_then(|i| servers.get_mut(i)) {
            *slot = Some(ServerState {
                status: fields.get(status).copied().unwrap_or("").to_owned(),
                check_status: fields.get(check).copied().unwrap_or("").to_owned(),
            });
        }
    }
    servers
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.unwrap_or_else(|| panic!("show stat lists no server n{i}: {csv}")))
        .collect()
}
