//! Per-client sessions: the WebSocket and SSE actors that drain the bus's
//! session queues ([`crate::bus::queue`]) to their clients.

pub mod budget;
pub mod sse;
pub mod ws;

use crate::subscription::Subscription;

pub use budget::OpLimits;
pub use sse::{SseBody, SseForm, SseSession, SseSessionConfig};
pub use ws::{WireFormat, WsSession, WsSessionConfig};

/// What a new session starts with, whatever its transport.
pub struct SessionStart {
    pub subscriptions: Vec<Subscription>,
    /// The client's `Last-Event-ID`, as sent.
    pub resume: Option<String>,
    /// Held for the session's life and dropped when it ends (the identity's
    /// stream slot): ending the session is what frees it.
    pub guard: Option<Box<dyn Send>>,
}

/// Why a session's writer stopped (WebSocket or SSE).
#[derive(Debug)]
pub(crate) enum WriterEnd {
    ClientGone,
    WriteDeadline,
    ServerClosing,
    QueueClosed,
}
