//! A `redis-server` of a test's own on a free port, killed when dropped;
//! never the machine's shared Redis on 6379, which tests must not flush or
//! stop.
//!
//! Without `redis-server` installed a test calls [`RedisServer::start`] and
//! gets `None` after a loud SKIPPED line, unless `EDGEBUS_REQUIRE_TOOLS` is
//! set (CI), where a missing tool fails the test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{free_port, PORT_ATTEMPTS, WAIT};

const BINARIES: [&str; 2] = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"];

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    binary: String,
}

/// `redis-server`'s path, if it is installed.
fn binary() -> Option<String> {
    BINARIES
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_owned)
        .or_else(|| {
            let found = Command::new("redis-server")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            found.then(|| "redis-server".to_owned())
        })
}

/// `PONG` to a `PING` on `port`: a Redis listens there.
fn pongs(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().expect("address"),
        Duration::from_millis(300),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

impl RedisServer {
    /// On a free port; `None` (after a loud SKIPPED line) when
    /// `redis-server` is not installed and `EDGEBUS_REQUIRE_TOOLS` is unset.
    /// Redis binds the port itself, so a port taken since [`free_port`]
    /// chose it makes it exit: it is started again on another one.
    pub fn start() -> Option<Self> {
        let Some(binary) = binary() else {
            assert!(
                std::env::var_os("EDGEBUS_REQUIRE_TOOLS").is_none(),
                "redis-server is not installed and EDGEBUS_REQUIRE_TOOLS is set"
            );
            eprintln!(
                "\n*** SKIPPED: redis-server not installed (set EDGEBUS_REQUIRE_TOOLS to fail instead) ***\n"
            );
            return None;
        };
        for _ in 0..PORT_ATTEMPTS {
            let mut server = Self {
                child: None,
                port: free_port(),
                binary: binary.clone(),
            };
            if server.spawn() {
                return Some(server);
            }
            eprintln!(
                "redis-server could not listen on {}; trying another port.",
                server.port
            );
        }
        panic!("redis-server could not listen on {PORT_ATTEMPTS} free ports");
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it and waits until it has exited: the port refuses at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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

    /// Starts it again on the same port, empty (nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server listens again on {}", self.port);
    }

    fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// `false` when it exited instead of listening (the port was taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if !self.running() {
                self.child = None;
                return false;
            }
            // Answering and still running after it answered: the answer is
            // its own, not that of whoever had the port.
            if pongs(self.port) && self.running() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server listens on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
