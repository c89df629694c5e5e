//! `[registry]`: the device table, and when a device counts as active.

use std::time::Duration;

use serde::Deserialize;

use super::{at_least, SettingsError};

/// `[registry]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    prune_seconds: u64,
    max_devices: usize,
    silent_after_seconds: u64,
}

#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// A device with a frame this recent is active: it appears in snapshots
    /// and summaries, and goes `device.offline` once quiet this long.
    pub active_window: Duration,
    pub max_devices: usize,
    /// A device quiet this long is `silent`.
    pub silent_after: Duration,
}

impl RawRegistry {
    pub(super) fn validate(self) -> Result<RegistrySettings, SettingsError> {
        at_least("registry.prune_seconds", self.prune_seconds, 1)?;
        at_least("registry.max_devices", self.max_devices as u64, 1)?;
        at_least(
            "registry.silent_after_seconds",
            self.silent_after_seconds,
            1,
        )?;
        Ok(RegistrySettings {
            active_window: Duration::from_secs(self.prune_seconds),
            max_devices: self.max_devices,
            silent_after: Duration::from_secs(self.silent_after_seconds),
        })
    }
}
