//! `[bus]`: per-session queues, replay history and snapshot budgets.

use serde::Deserialize;

use super::{invalid, SettingsError};

/// Bounds of `bus.history_bytes`, `bus.last_values_bytes` and
/// `bus.inflight_bytes`.
const MIN_BUS_BYTES: usize = 1 << 20;
const MAX_BUS_BYTES: usize = 1 << 40;
/// Least `bus.queue_reserved_bytes`: a few dozen typical events.
const MIN_QUEUE_RESERVE: usize = 64 << 10;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSettings {
    /// Most events one session's queue holds (a 16-byte slot each).
    pub queue_capacity: usize,
    /// Most bytes of events one session's queue holds.
    pub queue_bytes: usize,
    /// Bytes each queue holds without drawing on the shared pool.
    pub queue_reserved_bytes: usize,
    /// Bytes all queues together hold beyond their reserves.
    pub queue_pool_bytes: usize,
    pub history: usize,
    pub history_bytes: usize,
    pub last_values_bytes: usize,
    pub snapshot_max_events: usize,
    /// Bytes of accepted frames waiting in the registry's and bus's mailboxes.
    pub inflight_bytes: usize,
}

impl BusSettings {
    /// `max_payload_bytes`: `mqtt.max_payload_bytes`, validated.
    pub(super) fn validate(&self, max_payload_bytes: usize) -> Result<(), SettingsError> {
        if !(1..=1_000_000).contains(&self.queue_capacity) {
            return Err(invalid("bus.queue_capacity", "must be from 1 to 1000000"));
        }
        // An empty queue always takes one event, whatever its size, so the
        // reserve only needs to hold a few typical ones.
        if !(MIN_QUEUE_RESERVE..=MAX_BUS_BYTES).contains(&self.queue_reserved_bytes) {
            return Err(invalid(
                "bus.queue_reserved_bytes",
                "must be from 65536 (64 KiB) to 1099511627776 (1 TiB)",
            ));
        }
        if !(self.queue_reserved_bytes..=MAX_BUS_BYTES).contains(&self.queue_bytes) {
            return Err(invalid(
                "bus.queue_bytes",
                "must be at least bus.queue_reserved_bytes and at most 1099511627776 (1 TiB)",
            ));
        }
        if self.queue_pool_bytes > MAX_BUS_BYTES {
            return Err(invalid(
                "bus.queue_pool_bytes",
                "must be at most 1099511627776 (1 TiB)",
            ));
        }
        if self.history > 10_000_000 {
            return Err(invalid("bus.history", "must be at most 10000000"));
        }
        // At least a few of the largest events must fit, or replay and
        // snapshots would silently keep nothing.
        if !(MIN_BUS_BYTES..=MAX_BUS_BYTES).contains(&self.history_bytes) {
            return Err(invalid(
                "bus.history_bytes",
                "must be from 1048576 (1 MiB) to 1099511627776 (1 TiB)",
            ));
        }
        if !(MIN_BUS_BYTES..=MAX_BUS_BYTES).contains(&self.last_values_bytes) {
            return Err(invalid(
                "bus.last_values_bytes",
                "must be from 1048576 (1 MiB) to 1099511627776 (1 TiB)",
            ));
        }
        // A frame of the largest allowed size must always fit.
        if !(MIN_BUS_BYTES..=MAX_BUS_BYTES).contains(&self.inflight_bytes)
            || self.inflight_bytes < 4 * max_payload_bytes
        {
            return Err(invalid(
                "bus.inflight_bytes",
                "must be from 1048576 (1 MiB) to 1099511627776 (1 TiB), and at least 4 × mqtt.max_payload_bytes",
            ));
        }
        if !(1..=1_000_000).contains(&self.snapshot_max_events) {
            return Err(invalid(
                "bus.snapshot_max_events",
                "must be from 1 to 1000000",
            ));
        }
        Ok(())
    }
}
