//! `[storage]` and `[host_health]`: what edgebus keeps on disk.

use serde::Deserialize;

use super::{invalid, SettingsError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub data_dir: String,
}

impl StorageSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        if self.data_dir.is_empty() {
            return Err(invalid("storage.data_dir", "must not be empty"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostHealthSettings {
    /// Hosts with a stored report; a new host beyond it is refused.
    pub max_hosts: usize,
    /// `GET /v1/host-health` listings streaming at once.
    pub max_concurrent_lists: usize,
}

impl HostHealthSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        if !(1..=1_000_000).contains(&self.max_hosts) {
            return Err(invalid(
                "host_health.max_hosts",
                "must be from 1 to 1000000",
            ));
        }
        if !(1..=1024).contains(&self.max_concurrent_lists) {
            return Err(invalid(
                "host_health.max_concurrent_lists",
                "must be from 1 to 1024",
            ));
        }
        Ok(())
    }
}
