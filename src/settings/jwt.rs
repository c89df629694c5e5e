//! `[auth.jwt]`: JSON Web Tokens accepted beside API keys. Off while no key
//! is configured.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::auth::Role;
use super::{invalid, Secret, SettingsError};

/// Shortest HS256 secret: RFC 7518 §3.2 wants a key at least as long as
/// the hash (32 bytes).
pub const MIN_HS256_SECRET: usize = 32;

/// Largest public key file read: a PEM public key is well under 2 KiB.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Longest claim name accepted for `roles_claim` / `identity_claim`.
const MAX_CLAIM_NAME: usize = 128;

/// `[auth.jwt]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwt {
    hs256_secret: Secret,
    public_key_pem: String,
    public_key_file: String,
    algorithms: Vec<String>,
    issuer: String,
    audience: String,
    leeway_seconds: u64,
    roles_claim: String,
    default_roles: Vec<String>,
    identity_claim: String,
    allow_query_token_on_streams: bool,
}

/// The key tokens are verified with. `Debug` never shows a secret.
#[derive(Clone)]
pub struct JwtKey(pub DecodingKey);

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JwtKey({:?})", self.0.family())
    }
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub key: JwtKey,
    /// Accepted `alg` header values; all of the key's family.
    pub algorithms: Vec<Algorithm>,
    /// Required `iss`.
    pub issuer: String,
    /// Required in `aud` (a string, or a list naming it).
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// The claim listing edgebus roles (a list, or a space-separated string).
    pub roles_claim: String,
    /// Roles of a verified token that has no `roles_claim` at all (an
    /// issuer that keeps roles elsewhere, as DECNET does); empty = none.
    pub default_roles: Vec<Role>,
    /// The claim naming the caller: its identity for per-identity caps.
    pub identity_claim: String,
    /// `?token=<jwt>` opens SSE streams (older DECNET frontends).
    pub allow_query_token_on_streams: bool,
}

impl RawJwt {
    /// `None` when no key is configured (JWTs off).
    pub(super) fn validate(self) -> Result<Option<JwtSettings>, SettingsError> {
        let given = [
            !self.hs256_secret.is_empty(),
            !self.public_key_pem.trim().is_empty(),
            !self.public_key_file.is_empty(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => {
                if self.allow_query_token_on_streams {
                    return Err(invalid(
                        "auth.jwt.allow_query_token_on_streams",
                        "needs a JWT key (auth.jwt.hs256_secret, public_key_pem or public_key_file)",
                    ));
                }
                return Ok(None);
            }
            1 => {}
            _ => {
                return Err(invalid(
                    "auth.jwt",
                    "set exactly one of hs256_secret, public_key_pem, public_key_file",
                ))
            }
        }
        let key = self.key()?;
        let algorithms = self.algorithms(&key)?;
        if self.issuer.trim().is_empty() {
            return Err(invalid(
                "auth.jwt.issuer",
                "must name the issuer (`iss`) tokens must carry",
            ));
        }
        if self.audience.trim().is_empty() {
            return Err(invalid(
                "auth.jwt.audience",
                "must name the audience (`aud`) tokens must carry",
            ));
        }
        if self.leeway_seconds > 300 {
            return Err(invalid("auth.jwt.leeway_seconds", "must be at most 300"));
        }
        for (key, name) in [
            ("auth.jwt.roles_claim", &self.roles_claim),
            ("auth.jwt.identity_claim", &self.identity_claim),
        ] {
            if name.is_empty() || name.len() > MAX_CLAIM_NAME {
                return Err(invalid(
                    key,
                    format!("must be a claim name of 1 to {MAX_CLAIM_NAME} characters"),
                ));
            }
        }
        let default_roles = self
            .default_roles
            .iter()
            .map(|name| {
                Role::parse(name).ok_or_else(|| {
                    invalid(
                        "auth.jwt.default_roles",
                        format!("{name:?} is not a role (viewer, publisher, admin)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(JwtSettings {
            key: JwtKey(key),
            algorithms,
            issuer: self.issuer,
            audience: self.audience,
            leeway: Duration::from_secs(self.leeway_seconds),
            roles_claim: self.roles_claim,
            default_roles,
            identity_claim: self.identity_claim,
            allow_query_token_on_streams: self.allow_query_token_on_streams,
        }))
    }

    fn key(&self) -> Result<DecodingKey, SettingsError> {
        if !self.hs256_secret.is_empty() {
            if self.hs256_secret.expose().len() < MIN_HS256_SECRET {
                return Err(invalid(
                    "auth.jwt.hs256_secret",
                    format!("must be at least {MIN_HS256_SECRET} characters"),
                ));
            }
            return DecodingKey::from_secret(self.hs256_secret.expose().as_bytes())
                .map_err(|e| invalid("auth.jwt.hs256_secret", e.to_string()));
        }
        let (setting, pem) = if self.public_key_file.is_empty() {
            ("auth.jwt.public_key_pem", self.public_key_pem.clone())
        } else {
            let setting = "auth.jwt.public_key_file";
            let path = &self.public_key_file;
            let unreadable =
                |e: std::io::Error| invalid(setting, format!("cannot read {path}: {e}"));
            let size = std::fs::metadata(path).map_err(unreadable)?.len();
            if size > MAX_KEY_FILE_BYTES {
                return Err(invalid(
                    setting,
                    format!("{path} is over {MAX_KEY_FILE_BYTES} bytes: not a PEM public key"),
                ));
            }
            (setting, std::fs::read_to_string(path).map_err(unreadable)?)
        };
        if pem.contains("PRIVATE KEY") {
            return Err(invalid(
                setting,
                "is a private key: edgebus needs only the public key",
            ));
        }
        public_key(pem.as_bytes()).ok_or_else(|| {
            invalid(
                setting,
                "must be a PEM public key (-----BEGIN PUBLIC KEY-----): RSA, EC (P-256/P-384) or Ed25519",
            )
        })
    }

    /// As configured, or the usual one for the key: HS256, RS256, ES256,
    /// EdDSA. Every one must suit the key, so no token can choose how its
    /// signature is checked (the HS256-with-a-public-key confusion).
    fn algorithms(&self, key: &DecodingKey) -> Result<Vec<Algorithm>, SettingsError> {
        let family = key.family();
        if self.algorithms.is_empty() {
            let default = match family {
                jsonwebtoken::AlgorithmFamily::Hmac => Algorithm::HS256,
                jsonwebtoken::AlgorithmFamily::Rsa => Algorithm::RS256,
                jsonwebtoken::AlgorithmFamily::Ec => Algorithm::ES256,
                _ => Algorithm::EdDSA,
            };
            return Ok(vec![default]);
        }
        let mut out = Vec::with_capacity(self.algorithms.len());
        for name in &self.algorithms {
            let alg = Algorithm::from_str(name).map_err(|_| {
                invalid(
                    "auth.jwt.algorithms",
                    format!("{name:?} is not a JWS algorithm (HS256, RS256, PS256, ES256, ES384, EdDSA, …)"),
                )
            })?;
            if alg.family() != family {
                return Err(invalid(
                    "auth.jwt.algorithms",
                    format!("{name} does not suit the configured {family:?} key"),
                ));
            }
            if !out.contains(&alg) {
                out.push(alg);
            }
        }
        Ok(out)
    }
}

/// An RSA, EC or Ed25519 public key in PEM; `None` for anything else.
fn public_key(pem: &[u8]) -> Option<DecodingKey> {
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .ok()
}
