//! A real SSE client over a raw socket: HTTP/1.1, chunked decoding and the
//! WHATWG event-stream parsing rules, so tests see exactly what a browser's
//! EventSource would dispatch. A small receive buffer plays a slow reader.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::WAIT;

#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("data of {:?} is not JSON: {e}", self.event))
    }
}

#[derive(Debug)]
pub enum SseItem {
    Comment(String),
    Event(SseEvent),
}

/// A refused stream: status and JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

pub struct SseClient {
    stream: TcpStream,
    raw: Vec<u8>,
    text: String,
    pub headers: Vec<(String, String)>,
    /// The id of the last event that carried one (what EventSource sends
    /// back as `Last-Event-ID`).
    pub last_id: Option<String>,
    pub retry_ms: Option<u64>,
    ended: bool,
}

impl SseClient {
    pub async fn open(port: u16, target: &str, headers: &[(&str, &str)]) -> Result<Self, Refused> {
        Self::open_with_buffer(port, target, headers, None).await
    }

    pub async fn open_with_buffer(
        port: u16,
        target: &str,
        headers: &[(&str, &str)],
        rcvbuf: Option<u32>,
    ) -> Result<Self, Refused> {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut stream = socket
            .connect(format!("127.0.0.1:{port}").parse().expect("address"))
            .await
            .expect("connect");
        let mut request = format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\
             Accept-Encoding: gzip, br\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut head = Vec::new();
        tokio::time::timeout(WAIT, async {
            while !head.ends_with(b"\r\n\r\n") {
                head.push(stream.read_u8().await.expect("response head"));
            }
        })
        .await
        .expect("a response head within the wait");
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut client = Self {
            stream,
            raw: Vec::new(),
            text: String::new(),
            headers,
            last_id: None,
            retry_ms: None,
            ended: false,
        };
        if status == 200 {
            return Ok(client);
        }
        let length: usize = client
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        client.stream.read_exact(&mut body).await.expect("body");
        Err(Refused {
            status,
            headers: client.headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads more of the body and decodes its chunks; false at the end.
    async fn fill(&mut self) -> bool {
        if self.ended {
            return false;
        }
        let mut buf = [0u8; 16 * 1024];
        let n = match self.stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                self.ended = true;
                return false;
            }
            Ok(n) => n,
        };
        self.raw.extend_from_slice(&buf[..n]);
        // Chunked transfer coding: `<hex size>\r\n<data>\r\n`, size 0 ends.
        while let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&self.raw[..eol]).into_owned();
            let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
            if size == 0 {
                self.ended = true;
                break;
            }
            if self.raw.len() < eol + 2 + size + 2 {
                break;
            }
            let data = self.raw[eol + 2..eol + 2 + size].to_vec();
            self.text
                .push_str(std::str::from_utf8(&data).expect("UTF-8 body"));
            self.raw.drain(..eol + 2 + size + 2);
        }
        true
    }

    /// The next comment or event, as a browser would parse them.
    pub async fn next_item(&mut self) -> Option<SseItem> {
        tokio::time::timeout(WAIT, self.next_item_untimed())
            .await
            .expect("an SSE item within the wait")
    }

    async fn next_item_untimed(&mut self) -> Option<SseItem> {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                if let Some(item) = self.parse_block(&block) {
                    return Some(item);
                }
                continue;
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    fn parse_block(&mut self, block: &str) -> Option<SseItem> {
        let mut id = None;
        let mut event = String::new();
        let mut data: Vec<&str> = Vec::new();
        let mut comment = None;
        for line in block.split('\n').filter(|l| !l.is_empty()) {
            if let Some(text) = line.strip_prefix(':') {
                comment = Some(text.trim().to_owned());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => event = value.to_owned(),
                "data" => data.push(value),
                "retry" => self.retry_ms = value.parse().ok(),
                _ => {}
            }
        }
        if let Some(id) = &id {
            self.last_id = Some(id.clone());
        }
        if !data.is_empty() {
            return Some(SseItem::Event(SseEvent {
                id,
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data: data.join("\n"),
            }));
        }
        comment.map(SseItem::Comment)
    }

    /// The next event, skipping comments.
    pub async fn next_event(&mut self) -> SseEvent {
        loop {
            match self.next_item().await {
                Some(SseItem::Event(e)) => return e,
                Some(SseItem::Comment(_)) => continue,
                None => panic!("the stream ended"),
            }
        }
    }

    /// The first event, which must be the snapshot; returns its data.
    pub async fn snapshot(&mut self) -> Value {
        let e = self.next_event().await;
        assert_eq!(
            e.event, "snapshot",
            "first event must be the snapshot: {e:?}"
        );
        e.json()
    }

    /// Whether the server ends the stream within `within`.
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, async {
            while self.next_item_untimed().await.is_some() {}
        })
        .await
        .is_ok()
    }
}
