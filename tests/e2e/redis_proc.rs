//! A private redis-server for tests that kill, restart or fill Redis (the
//! machine's shared one on 6379 is never touched): no persistence, so a
//! restart starts empty.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{free_port, unique, PORT_ATTEMPTS};
use crate::tools::{installed, wait_until_up};

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// `--requirepass`, if any.
    password: Option<String>,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisServer {
    /// On a free port. redis-server binds it itself, so a port taken since
    /// [`free_port`] chose it makes it exit: it is started again on another.
    pub fn start() -> Self {
        Self::start_with_password(None)
    }

    /// [`RedisServer::start`], requiring `password` (`AUTH`) when given.
    pub fn start_with_password(password: Option<&str>) -> Self {
        for _ in 0..PORT_ATTEMPTS {
            let dir = std::env::temp_dir().join(unique("redis"));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let mut server = Self {
                child: None,
                port: free_port(),
                dir,
                password: password.map(str::to_owned),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(log) if log.contains("in use") => {
                    eprintln!(
                        "redis-server could not listen on {}; trying another port.",
                        server.port
                    );
                }
                Err(log) => panic!("redis-server exited at start-up:\n{log}"),
            }
        }
        panic!("redis-server could not listen on {PORT_ATTEMPTS} free ports");
    }

    /// [`RedisServer::start`], or `None` (after a loud SKIPPED line) when
    /// `redis-server` is not installed and `EDGEBUS_REQUIRE_TOOLS` is unset.
    pub fn start_if_installed() -> Option<Self> {
        crate::tools::require_tool("redis-server").then(Self::start)
    }

    /// Stops it (SIGSTOP) without closing its port: connections stay open
    /// and nothing answers, as when Redis hangs. [`RedisServer::thaw`]
    /// resumes it; a frozen server is still killed on drop.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill {signal} redis-server");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What `cluster.redis_url` names.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash: no shutdown, nothing saved.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it (if running) and starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.spawn() {
            panic!(
                "redis-server could not start again on {}:\n{log}",
                self.port
            );
        }
    }

    /// `PING` answered `PONG`.
    pub fn ping(&self) -> bool {
        ping_as(self.port, self.password.as_deref())
    }

    /// Starts the process on `self.port` and waits until it answers `PING`;
    /// `Err(its log's tail)` when it exited instead.
    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.dir.join(format!("redis-{}.log", self.port));
        let log = std::fs::File::create(&log_path).expect("redis log");
        let mut command = Command::new(installed("redis-server"));
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("redis-server starts");
        let (port, password) = (self.port, self.password.clone());
        let up = wait_until_up(self.child.insert(child), &log_path, "redis-server", || {
            ping_as(port, password.as_deref())
        });
        if up.is_err() {
            self.child = None;
        }
        up
    }
}

/// An inline `PING` over a raw socket: no client library between the test
/// and the server it checks.
/// After `AUTH password` when one is given.
fn ping_as(port: u16, password: Option<&str>) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(300))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        if let Some(password) = password {
            stream.write_all(format!("AUTH {password}\r\n").as_bytes())?;
            let mut ok = [0u8; 5];
            stream.read_exact(&mut ok)?;
            if &ok != b"+OK\r\n" {
                return Ok(false);
            }
        }
        stream.write_all(b"PING\r\n")?;
        let mut answer = [0u8; 7];
        stream.read_exact(&mut answer)?;
        Ok(&answer == b"+PONG\r\n")
    };
    attempt().unwrap_or(false)
}
