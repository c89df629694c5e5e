//! `[http]`: where edgebus listens and who may call it.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{in_range, invalid, Secret, SettingsError};

/// `[http]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    bind: String,
    allowed_origins: Vec<String>,
    workers: usize,
    metrics_token: Secret,
    idempotency_keys_per_identity: usize,
    idempotency_max_keys: usize,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub bind: SocketAddr,
    pub allowed_origins: Vec<String>,
    /// 0 = one per core.
    pub workers: usize,
    /// Bearer token a scraper may present to `/metrics` instead of a key.
    pub metrics_token: Secret,
    /// `Idempotency-Key`s one identity may hold at once (24 h each).
    pub idempotency_keys_per_identity: usize,
    /// `Idempotency-Key`s held at once over all identities.
    pub idempotency_max_keys: usize,
}

impl RawHttp {
    pub(super) fn validate(self) -> Result<HttpSettings, SettingsError> {
        let bind = self
            .bind
            .parse::<SocketAddr>()
            .map_err(|_| invalid("http.bind", "must be an address like 127.0.0.1:8080"))?;
        for origin in &self.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(invalid(
                    "http.allowed_origins",
                    format!("{origin:?} must be a scheme://host[:port] origin"),
                ));
            }
        }
        let metrics_token = self.metrics_token.expose();
        if !metrics_token.is_empty() && metrics_token.len() < 16 {
            return Err(invalid(
                "http.metrics_token",
                "must be empty or at least 16 characters",
            ));
        }
        in_range(
            "http.idempotency_max_keys",
            self.idempotency_max_keys,
            10_000_000,
        )?;
        in_range(
            "http.idempotency_keys_per_identity",
            self.idempotency_keys_per_identity,
            self.idempotency_max_keys,
        )?;
        Ok(HttpSettings {
            bind,
            allowed_origins: self.allowed_origins,
            workers: self.workers,
            metrics_token: self.metrics_token,
            idempotency_keys_per_identity: self.idempotency_keys_per_identity,
            idempotency_max_keys: self.idempotency_max_keys,
        })
    }
}

impl HttpSettings {
    /// `http.workers`, with 0 resolved to the machine's cores (2 if unknown).
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }

    /// `http.bind`'s host as a URL writes it (`[::1]` for IPv6).
    pub fn bind_host(&self) -> String {
        match self.bind {
            SocketAddr::V4(addr) => addr.ip().to_string(),
            SocketAddr::V6(addr) => format!("[{}]", addr.ip()),
        }
    }
}
