//! `[auth]`: API keys and their roles, JWTs (`[auth.jwt]`), or the legacy
//! shared token.

use serde::Deserialize;

use super::jwt::{JwtSettings, RawJwt};
use super::{invalid, parse_sha256_hex, Digest, Secret, SettingsError};

/// Names of JWT identities start with this, so a token's subject can
/// never share an API key's caps or `Idempotency-Key`s.
pub const JWT_NAME_PREFIX: &str = "jwt:";

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Viewer,
    Publisher,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Publisher => "publisher",
            Role::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "viewer" => Some(Role::Viewer),
            "publisher" => Some(Role::Publisher),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// `[auth]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    ws_token: Secret,
    api_keys: Vec<RawApiKey>,
    jwt: RawJwt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    name: String,
    /// The key itself, or `sha256:<64 hex>` of it.
    key: Secret,
    roles: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The seed bridge's shared token; empty = none.
    pub ws_token: Secret,
    pub api_keys: Vec<ApiKey>,
    /// `Some` when `[auth.jwt]` configures a key.
    pub jwt: Option<JwtSettings>,
}

/// One configured API key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    /// As written: the key itself, or `sha256:<64 hex>` of it.
    pub key: Secret,
    /// What presented keys are compared with.
    pub key_sha256: Digest,
    /// At least one.
    pub roles: Vec<Role>,
}

impl RawAuth {
    pub(super) fn validate(self) -> Result<AuthSettings, SettingsError> {
        let mut names = std::collections::HashSet::new();
        let mut api_keys = Vec::with_capacity(self.api_keys.len());
        for (i, key) in self.api_keys.iter().enumerate() {
            let at = |field: &str| format!("auth.api_keys[{i}].{field}");
            if key.name.is_empty() || !names.insert(key.name.as_str()) {
                return Err(invalid(at("name"), "must be non-empty and unique"));
            }
            if key.name.starts_with(JWT_NAME_PREFIX) {
                return Err(invalid(
                    at("name"),
                    format!("must not start with {JWT_NAME_PREFIX:?} (kept for JWT identities)"),
                ));
            }
            let secret = key.key.expose();
            let key_sha256 = match secret.strip_prefix("sha256:") {
                Some(hex) => parse_sha256_hex(hex).ok_or_else(|| {
                    invalid(at("key"), "sha256: must be followed by 64 hex digits")
                })?,
                None if secret.len() < 16 => {
                    return Err(invalid(at("key"), "must be at least 16 characters"))
                }
                None => Digest::of(secret.as_bytes()).0,
            };
            if key.roles.is_empty() {
                return Err(invalid(at("roles"), "must name at least one role"));
            }
            let roles = key
                .roles
                .iter()
                .map(|role| {
                    Role::parse(role).ok_or_else(|| {
                        invalid(
                            at("roles"),
                            format!("{role:?} is not one of viewer, publisher, admin"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            api_keys.push(ApiKey {
                name: key.name.clone(),
                key: key.key.clone(),
                key_sha256: Digest(key_sha256),
                roles,
            });
        }
        Ok(AuthSettings {
            ws_token: self.ws_token,
            api_keys,
            jwt: self.jwt.validate()?,
        })
    }
}
