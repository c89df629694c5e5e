//! `[compat.decnet]`: DECNET's dashboard against edgebus. Its per-attacker
//! SSE stream (`GET /api/v1/attackers/{uuid}/events`) and the ticket call
//! its frontend makes first (`POST /api/v1/auth/sse-ticket`), in DECNET's
//! paths and shapes, served by edgebus's own stream machinery. Off by
//! default: the paths answer 404 then.

use serde::Deserialize;

use super::SettingsError;

/// `[compat.decnet]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDecnet {
    enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecnetSettings {
    pub enabled: bool,
}

impl RawDecnet {
    pub(super) fn validate(self) -> Result<DecnetSettings, SettingsError> {
        // Nothing to check yet; kept so the profile has one place to grow
        // its rules, like every other section.
        Ok(DecnetSettings {
            enabled: self.enabled,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::settings::Settings;

    #[test]
    fn the_profile_is_off_by_default_and_refuses_unknown_keys() {
        let s = Settings::from_toml("").unwrap();
        assert!(!s.compat.decnet.enabled);
        let on = Settings::from_toml("[compat.decnet]\nenabled = true").unwrap();
        assert!(on.compat.decnet.enabled);
        let line = Settings::from_toml("[compat.decnet]\ntopology = true")
            .unwrap_err()
            .to_string();
        assert!(line.contains("topology"), "{line}");
    }
}
