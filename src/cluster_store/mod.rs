//! State that must be one across the instances of a cluster, kept in Redis:
//! stream tickets ([`tickets`]) and `Idempotency-Key`s ([`idempotency`]).
//! Without cluster mode both live in the process (`crate::auth::Tickets`,
//! `crate::http::idempotency::Idempotency`) and nothing here is used.
//!
//! Every call is bounded by [`REDIS_DEADLINE`], as host-health's are: a
//! Redis that is down or stalled becomes [`StoreError::Unavailable`] (HTTP
//! 503 with `Retry-After`), never a wrong answer such as a 401 for a valid
//! ticket or a second publish for a kept key. Time comes from Redis
//! (`TIME` inside each script), so instances with skewed clocks agree on
//! what has expired.

pub mod idempotency;
pub mod tickets;

use aws_lc_rs::digest::{digest, SHA256};

pub use crate::redis_link::{Link, StoreError, REDIS_DEADLINE, RETRY_AFTER_SECS};

/// Lower-case hex of the SHA-256 of `data`: how secrets and caller names
/// appear in key names (fixed length, nothing of the secret revealed).
pub fn sha256_hex(data: &[u8]) -> String {
    digest(&SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Milliseconds on Redis's clock, for the scripts below.
const NOW_MS_LUA: &str = "local t = redis.call('TIME')\n\
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";
