//! A real HTTP server standing in for a Slack webhook: answers from a script
//! (200, 429 with Retry-After, 5xx, 400 `invalid_payload`, a redirect, or a
//! hang past the client's timeout, or a hold the test releases) and records
//! every request it receives.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::helpers::WAIT;

/// How the mock answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Ok,
    Status(u16, &'static str),
    RateLimited(&'static str),
    Redirect(String),
    /// Never answers; the connection stays open until the client gives up.
    Hang,
    /// Answers 200 once the test calls [`SlackMock::release`]: Slack is
    /// slow for exactly as long as the test says, whatever the machine's speed.
    Hold,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub at: Instant,
    /// The `text` of the JSON body.
    pub text: String,
    /// The raw body.
    pub body: String,
    /// `None` when the mock hung.
    pub status: Option<u16>,
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    requests: Vec<Request>,
}

pub struct SlackMock {
    pub url: String,
    state: Arc<Mutex<State>>,
    count: watch::Receiver<usize>,
    released: Arc<watch::Sender<bool>>,
}

impl SlackMock {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!(
            "http://{}/services/T000/B000/secret",
            listener.local_addr().expect("addr")
        );
        let state = Arc::new(Mutex::new(State::default()));
        let (count_tx, count) = watch::channel(0);
        let count_tx = Arc::new(count_tx);
        let released = Arc::new(watch::Sender::new(false));
        let (shared, gate) = (state.clone(), released.clone());
        actix_web::rt::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                actix_web::rt::spawn(serve(
                    stream,
                    shared.clone(),
                    count_tx.clone(),
                    gate.subscribe(),
                ));
            }
        });
        Self {
            url,
            state,
            count,
            released,
        }
    }

    /// Answers every held request (and any later [`Reply::Hold`]) with 200.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// Answers for the next requests, in order; then 200.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().script.extend(replies);
    }

    /// Forgets the answers not yet given: 200 from now on (Slack is back).
    pub fn clear_script(&self) {
        self.lock().script.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Texts answered with 200, in arrival order.
    pub fn delivered(&self) -> Vec<String> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.status == Some(200))
            .map(|r| r.text.clone())
            .collect()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_requests(&self, n: usize) -> Vec<Request> {
        let mut count = self.count.clone();
        tokio::time::timeout(WAIT * 2, count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} requests expected; got {:#?}", self.requests()))
            .expect("mock alive");
        self.requests()
    }

    /// Waits until `n` requests were answered 200.
    pub async fn wait_delivered(&self, n: usize) -> Vec<String> {
        let mut count = self.count.clone();
        let deadline = Instant::now() + WAIT * 3;
        loop {
            let delivered = self.delivered();
            if delivered.len() >= n {
                return delivered;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{n} deliveries expected; got {delivered:#?}"
            );
            let _ = tokio::time::timeout(left, count.changed()).await;
        }
    }

    /// Waits for a delivered text satisfying `pred`.
    pub async fn wait_text(&self, pred: impl Fn(&str) -> bool) -> String {
        let mut count = self.count.clone();
        let deadline = Instant::now() + WAIT * 2;
        loop {
            if let Some(t) = self.delivered().into_iter().find(|t| pred(t)) {
                return t;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no matching text in {:#?}",
                self.delivered()
            );
            let _ = tokio::time::timeout(left, count.changed()).await;
        }
    }
}

async fn serve(
    mut stream: TcpStream,
    state: Arc<Mutex<State>>,
    count: Arc<watch::Sender<usize>>,
    mut released: watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    loop {
        // Head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
        buf.drain(..head_end + length);
        let text = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["text"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let (reply, index) = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            let reply = s.script.pop_front().unwrap_or(Reply::Ok);
            let status = match &reply {
                Reply::Ok => Some(200),
                Reply::Status(code, _) => Some(*code),
                Reply::RateLimited(_) => Some(429),
                Reply::Redirect(_) => Some(302),
                Reply::Hang | Reply::Hold => None,
            };
            s.requests.push(Request {
                at: Instant::now(),
                text,
                body,
                status,
            });
            count.send_replace(s.requests.len());
            (reply, s.requests.len() - 1)
        };
        let response = match reply {
            Reply::Ok => response(200, "OK", "", "ok"),
            Reply::Status(code, body) => response(code, "Error", "", body),
            Reply::RateLimited(after) => response(
                429,
                "Too Many Requests",
                &format!("Retry-After: {after}\r\n"),
                "rate_limited",
            ),
            Reply::Redirect(to) => response(302, "Found", &format!("Location: {to}\r\n"), ""),
            Reply::Hold => {
                if released.wait_for(|r| *r).await.is_err() {
                    return;
                }
                // Recorded as delivered only now, and counted as a change
                // so that `wait_delivered` looks again.
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.requests[index].status = Some(200);
                count.send_modify(|_| {});
                response(200, "OK", "", "ok")
            }
            Reply::Hang => {
                // Hold the connection until the client gives up on it.
                let mut sink = [0u8; 1024];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
                return;
            }
        };
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn response(code: u16, reason: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
}

/// Asserts that the gap between consecutive requests is at least `min`
/// (less a hair for clock granularity).
pub fn assert_spacing(requests: &[Request], min: Duration) {
    let slack = Duration::from_millis(2);
    for pair in requests.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap + slack >= min,
            "requests {gap:?} apart, expected at least {min:?}"
        );
    }
}

/// `Duration` helper for readability in tests.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
