//! `[compat.edgewatch]`: the EdgeWatch bridge's WebSocket listener and the
//! frame rules its publishers relied on. Off by default.

use std::net::SocketAddr;

use serde::Deserialize;

use super::compat::{origins, CorsOrigins};
use super::{invalid, Secret, SettingsError};

/// `[compat.edgewatch]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEdgeWatch {
    enabled: bool,
    bind: String,
    token: Secret,
    allowed_origins: Vec<String>,
    lax_frames: bool,
    device_id_from_payload: bool,
}

/// `[compat.edgewatch]`, validated.
#[derive(Debug, Clone)]
pub struct EdgeWatchSettings {
    pub enabled: bool,
    /// The dashboards' listener (the bridge's `WS_HOST:WS_PORT`).
    pub bind: SocketAddr,
    /// The bridge's `WS_AUTH_TOKEN`, as `?token=`; empty = anyone who
    /// reaches `bind` reads every device's metrics (the bridge's dev mode).
    pub token: Secret,
    /// Browser origins a dashboard may be served from (`Origin`); `*` =
    /// any, as the bridge, which checked none.
    pub allowed_origins: CorsOrigins,
    /// Accept what the bridge's pydantic model coerced (numbers as strings,
    /// whole floats as the integer timestamp, booleans as numbers).
    pub lax_frames: bool,
    /// A frame's `device_id` decides its device, whatever the topic's
    /// device level says (the bridge trusted the payload).
    pub device_id_from_payload: bool,
}

impl RawEdgeWatch {
    pub(super) fn validate(self) -> Result<EdgeWatchSettings, SettingsError> {
        let bind = self.bind.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "compat.edgewatch.bind",
                "must be an address like 0.0.0.0:6789",
            )
        })?;
        Ok(EdgeWatchSettings {
            enabled: self.enabled,
            bind,
            token: self.token,
            allowed_origins: origins("compat.edgewatch.allowed_origins", self.allowed_origins)?,
            lax_frames: self.lax_frames,
            device_id_from_payload: self.device_id_from_payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::settings::Settings;

    #[test]
    fn the_profile_is_off_by_default_and_a_bad_bind_names_its_key() {
        let s = Settings::from_toml("").unwrap();
        let ew = &s.compat.edgewatch;
        assert!(!ew.enabled && !ew.lax_frames && !ew.device_id_from_payload);
        assert_eq!(ew.bind, "0.0.0.0:6789".parse().unwrap());
        assert!(ew.token.is_empty());
        let on = Settings::from_toml(
            "[compat.edgewatch]\nenabled = true\nbind = \"127.0.0.1:0\"\ntoken = \"t0ken\"\nlax_frames = true",
        )
        .unwrap();
        assert!(on.compat.edgewatch.enabled && on.compat.edgewatch.lax_frames);
        assert_eq!(on.compat.edgewatch.token.expose(), "t0ken");
        assert!(!format!("{:?}", on.compat.edgewatch).contains("t0ken"));
        let line = Settings::from_toml("[compat.edgewatch]\nbind = \"6789\"")
            .unwrap_err()
            .to_string();
        assert!(
            line.starts_with("invalid setting `compat.edgewatch.bind`"),
            "{line}"
        );
        let unknown = Settings::from_toml("[compat.edgewatch]\nprune_seconds = 5")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("prune_seconds"), "{unknown}");
    }
}
