//! `[compat.*]`: profiles that let existing tools talk to edgebus unchanged.
//! Each is off by default.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use super::decnet::{DecnetSettings, RawDecnet};
use super::edgewatch::{EdgeWatchSettings, RawEdgeWatch};
use super::{invalid, SettingsError};

/// `[compat]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompat {
    securetea: RawSecureTea,
    decnet: RawDecnet,
    edgewatch: RawEdgeWatch,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecureTea {
    enabled: bool,
    allowed_sources: Vec<String>,
    socketio_bind: String,
    socketio_cors_origins: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct CompatSettings {
    pub securetea: SecureTeaSettings,
    pub decnet: DecnetSettings,
    pub edgewatch: EdgeWatchSettings,
}

/// `[compat.securetea]`: SecureTea-Core's `GET /notifs` and a Socket.IO
/// listener for its GUI.
#[derive(Debug, Clone)]
pub struct SecureTeaSettings {
    pub enabled: bool,
    /// Addresses whose `GET /notifs` needs no key (the ServerApp's address
    /// check); empty = a publisher key always.
    pub allowed_sources: Vec<IpNet>,
    pub socketio_bind: SocketAddr,
    /// Browser origins the GUI may be served from; `*` = any.
    pub socketio_cors_origins: CorsOrigins,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    /// Empty: no cross-origin browser (a GUI served from elsewhere is refused).
    List(Vec<String>),
}

/// Browser origins as written (`scheme://host[:port]`), or `*` alone for any.
pub(super) fn origins(key: &str, written: Vec<String>) -> Result<CorsOrigins, SettingsError> {
    if written.iter().any(|o| o == "*") {
        if written.len() > 1 {
            return Err(invalid(key, "\"*\" stands alone"));
        }
        return Ok(CorsOrigins::Any);
    }
    for origin in &written {
        if !(origin.starts_with("http://") || origin.starts_with("https://")) {
            return Err(invalid(
                key,
                format!("{origin:?} must be a scheme://host[:port] origin or \"*\""),
            ));
        }
    }
    Ok(CorsOrigins::List(written))
}

impl CorsOrigins {
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            CorsOrigins::Any => true,
            CorsOrigins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
}

impl RawCompat {
    pub(super) fn validate(self) -> Result<CompatSettings, SettingsError> {
        Ok(CompatSettings {
            securetea: self.securetea.validate()?,
            decnet: self.decnet.validate()?,
            edgewatch: self.edgewatch.validate()?,
        })
    }
}

impl RawSecureTea {
    fn validate(self) -> Result<SecureTeaSettings, SettingsError> {
        let allowed_sources = self
            .allowed_sources
            .iter()
            .map(|s| {
                IpNet::parse(s).ok_or_else(|| {
                    invalid(
                        "compat.securetea.allowed_sources",
                        format!("{s:?} must be an IP address or a CIDR like 10.0.0.0/8"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let socketio_bind = self.socketio_bind.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "compat.securetea.socketio_bind",
                "must be an address like 127.0.0.1:5000",
            )
        })?;
        let socketio_cors_origins = origins(
            "compat.securetea.socketio_cors_origins",
            self.socketio_cors_origins,
        )?;
        Ok(SecureTeaSettings {
            enabled: self.enabled,
            allowed_sources,
            socketio_bind,
            socketio_cors_origins,
        })
    }
}

/// An address block: an IP address and how many leading bits must match.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `10.0.0.0/8`, `::1/128`, or a bare address (all its bits).
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.parse::<IpAddr>().ok()?, Some(prefix.parse().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// An IPv4 peer reached over an IPv6 socket (`::ffff:a.b.c.d`) counts
    /// as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (
                u128::from(u32::from(n)) << 96,
                u128::from(u32::from(i)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), self.prefix),
            _ => return false,
        };
        let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
        net & mask == ip & mask
    }
}

impl fmt::Debug for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_and_blocks_match_what_they_cover() {
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")));
        assert!(one.contains(ip("::ffff:127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
        let block = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(block.contains(ip("10.1.200.3")));
        assert!(!block.contains(ip("10.2.0.1")));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        let v6 = IpNet::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("10.1.0.1")));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("localhost").is_none());
    }

    fn error_line(toml: &str) -> String {
        crate::settings::Settings::from_toml(toml)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_profile_is_off_by_default_and_bad_values_name_their_key() {
        let s = crate::settings::Settings::from_toml("").unwrap();
        let st = &s.compat.securetea;
        assert!(!st.enabled);
        assert!(st.allowed_sources.is_empty());
        assert_eq!(st.socketio_bind, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(st.socketio_cors_origins, CorsOrigins::List(vec![]));
        let any = crate::settings::Settings::from_toml(
            "[compat.securetea]\nsocketio_cors_origins = [\"*\"]\nallowed_sources = [\"10.0.0.0/8\", \"::1\"]",
        )
        .unwrap();
        assert_eq!(any.compat.securetea.socketio_cors_origins, CorsOrigins::Any);
        assert_eq!(any.compat.securetea.allowed_sources.len(), 2);
        for (toml, key) in [
            ("allowed_sources = [\"10.0.0.0/40\"]", "allowed_sources"),
            ("socketio_bind = \"5000\"", "socketio_bind"),
            (
                "socketio_cors_origins = [\"gui.example\"]",
                "socketio_cors_origins",
            ),
            (
                "socketio_cors_origins = [\"*\", \"http://a\"]",
                "socketio_cors_origins",
            ),
        ] {
            let line = error_line(&format!("[compat.securetea]\n{toml}"));
            assert!(
                line.starts_with(&format!("invalid setting `compat.securetea.{key}`")),
                "{line}"
            );
        }
    }
}
