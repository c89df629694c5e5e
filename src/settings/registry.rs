//! `[registry]`: the device table, and when a device counts as active.

use std::time::Duration;

use serde::Deserialize;

use super::{at_least, invalid, SettingsError};

/// `[registry]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    active_window_seconds: u64,
    /// The old name of `active_window_seconds`: still read, with a warning.
    #[serde(default)]
    prune_seconds: Option<u64>,
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
    /// `user_set_active_window`: whether a source other than the embedded
    /// defaults sets `active_window_seconds`, so the old key set beside it
    /// is a conflict and not the defaults' value. Deprecation notices go to
    /// `warnings`.
    pub(super) fn validate(
        self,
        user_set_active_window: bool,
        warnings: &mut Vec<String>,
    ) -> Result<RegistrySettings, SettingsError> {
        let (key, seconds) = match self.prune_seconds {
            Some(_) if user_set_active_window => {
                return Err(invalid(
                    "registry.prune_seconds",
                    "is the old name of registry.active_window_seconds, which is set too; \
                     keep only registry.active_window_seconds",
                ))
            }
            Some(seconds) => {
                warnings.push(
                    "`registry.prune_seconds` is deprecated: it is now called \
                     `registry.active_window_seconds`. The old name still works for now."
                        .to_owned(),
                );
                ("registry.prune_seconds", seconds)
            }
            None => ("registry.active_window_seconds", self.active_window_seconds),
        };
        at_least(key, seconds, 1)?;
        at_least("registry.max_devices", self.max_devices as u64, 1)?;
        at_least(
            "registry.silent_after_seconds",
            self.silent_after_seconds,
            1,
        )?;
        Ok(RegistrySettings {
            active_window: Duration::from_secs(seconds),
            max_devices: self.max_devices,
            silent_after: Duration::from_secs(self.silent_after_seconds),
        })
    }
}
