//! `[sessions]`: streaming sessions (WebSocket and SSE), tickets and caps.

use std::time::Duration;

use serde::Deserialize;

use super::{at_least, de, in_range, invalid, SettingsError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    /// SSE comment lines this often keep proxies from closing the stream.
    #[serde(rename = "keepalive_seconds", deserialize_with = "de::seconds")]
    pub keepalive: Duration,
    #[serde(rename = "ws_heartbeat_seconds", deserialize_with = "de::seconds")]
    pub ws_heartbeat: Duration,
    #[serde(rename = "ws_timeout_seconds", deserialize_with = "de::seconds")]
    pub ws_timeout: Duration,
    #[serde(rename = "write_timeout_seconds", deserialize_with = "de::seconds")]
    pub write_timeout: Duration,
    pub max_streams_per_identity: usize,
    /// Where callers share one identity (open mode, the legacy token), the
    /// stream cap is per source address instead.
    pub max_streams_per_address: usize,
    /// Streams open at once over all callers.
    pub max_streams: usize,
    #[serde(rename = "ticket_ttl_seconds", deserialize_with = "de::seconds")]
    pub ticket_ttl: Duration,
    /// Unredeemed tickets one identity (or, for shared identities, one
    /// address) may hold at once.
    pub max_tickets_per_identity: usize,
    /// Unredeemed tickets held at once over all identities.
    pub max_tickets: usize,
    /// SSE `retry:`: how long a browser waits before reconnecting.
    #[serde(rename = "sse_retry_ms", deserialize_with = "de::milliseconds")]
    pub sse_retry: Duration,
    /// Streams one owner may open per second, and in a burst: each open
    /// costs the bus a snapshot or a replay.
    pub stream_opens_per_second: u32,
    pub stream_opens_burst: u32,
    /// WebSocket client ops (subscribe/unsubscribe) per second, and burst.
    pub ws_ops_per_second: u32,
    pub ws_ops_burst: u32,
    /// Topic filters named in those ops per second, and burst.
    pub ws_filters_per_second: u32,
    pub ws_filters_burst: u32,
    /// Events the bus puts into those ops' snapshots per second, and burst.
    pub ws_snapshot_events_per_second: u32,
    pub ws_snapshot_events_burst: u32,
}

impl SessionSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        at_least("sessions.keepalive_seconds", self.keepalive.as_secs(), 1)?;
        at_least(
            "sessions.ws_heartbeat_seconds",
            self.ws_heartbeat.as_secs(),
            1,
        )?;
        if self.ws_timeout <= self.ws_heartbeat {
            return Err(invalid(
                "sessions.ws_timeout_seconds",
                "must be greater than sessions.ws_heartbeat_seconds",
            ));
        }
        at_least(
            "sessions.write_timeout_seconds",
            self.write_timeout.as_secs(),
            1,
        )?;
        at_least(
            "sessions.max_streams_per_identity",
            self.max_streams_per_identity as u64,
            1,
        )?;
        at_least(
            "sessions.max_streams_per_address",
            self.max_streams_per_address as u64,
            1,
        )?;
        in_range("sessions.max_streams", self.max_streams, 1_000_000)?;
        at_least("sessions.ticket_ttl_seconds", self.ticket_ttl.as_secs(), 1)?;
        in_range("sessions.max_tickets", self.max_tickets, 10_000_000)?;
        in_range(
            "sessions.max_tickets_per_identity",
            self.max_tickets_per_identity,
            self.max_tickets,
        )?;
        if !(100..=600_000).contains(&self.sse_retry.as_millis()) {
            return Err(invalid(
                "sessions.sse_retry_ms",
                "must be from 100 to 600000",
            ));
        }
        for (key, value) in [
            (
                "sessions.stream_opens_per_second",
                self.stream_opens_per_second,
            ),
            ("sessions.stream_opens_burst", self.stream_opens_burst),
            ("sessions.ws_ops_per_second", self.ws_ops_per_second),
            ("sessions.ws_ops_burst", self.ws_ops_burst),
            ("sessions.ws_filters_per_second", self.ws_filters_per_second),
            (
                "sessions.ws_snapshot_events_per_second",
                self.ws_snapshot_events_per_second,
            ),
            (
                "sessions.ws_snapshot_events_burst",
                self.ws_snapshot_events_burst,
            ),
        ] {
            if !(1..=1_000_000).contains(&value) {
                return Err(invalid(key, "must be from 1 to 1000000"));
            }
        }
        let most = edgebus_actors::bus::MAX_FILTERS_PER_SESSION as u32;
        if !(most..=1_000_000).contains(&self.ws_filters_burst) {
            return Err(invalid(
                "sessions.ws_filters_burst",
                "must be from 64 (one op's most filters) to 1000000",
            ));
        }
        Ok(())
    }
}
