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
    cors_origins: Vec<String>,
    cors_max_age_seconds: usize,
    workers: usize,
    metrics_token: Secret,
    idempotency_keys_per_identity: usize,
    idempotency_max_keys: usize,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub bind: SocketAddr,
    pub allowed_origins: Vec<String>,
    /// Origins whose pages may call the HTTP API and read SSE (CORS);
    /// empty = CORS off, `["*"]` = any origin.
    pub cors_origins: Vec<String>,
    /// How long a browser may cache a preflight answer.
    pub cors_max_age_seconds: usize,
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
        let cors_origins = cors_origins(self.cors_origins)?;
        if self.cors_max_age_seconds > 86_400 {
            return Err(invalid(
                "http.cors_max_age_seconds",
                "must be at most 86400 (browsers cap it lower anyway)",
            ));
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
            cors_origins,
            cors_max_age_seconds: self.cors_max_age_seconds,
            workers: self.workers,
            metrics_token: self.metrics_token,
            idempotency_keys_per_identity: self.idempotency_keys_per_identity,
            idempotency_max_keys: self.idempotency_max_keys,
        })
    }
}

/// `http.cors_origins`, each as a browser sends it in `Origin`
/// (`scheme://host[:port]`, no trailing slash), or `*` alone.
fn cors_origins(written: Vec<String>) -> Result<Vec<String>, SettingsError> {
    let key = "http.cors_origins";
    if written.iter().any(|o| o == "*") {
        return if written.len() == 1 {
            Ok(written)
        } else {
            Err(invalid(key, "\"*\" (any origin) must be the only entry"))
        };
    }
    let mut out: Vec<String> = Vec::with_capacity(written.len());
    for origin in written {
        let trimmed = origin.trim().trim_end_matches('/');
        let bad = || {
            invalid(
                key,
                format!("{origin:?} must be a scheme://host[:port] origin, or \"*\""),
            )
        };
        let uri = trimmed.parse::<actix_web::http::Uri>().map_err(|_| bad())?;
        let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
        let bare = uri
            .path_and_query()
            .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/");
        if !scheme_ok || uri.host().is_none() || !bare || trimmed.contains('@') {
            return Err(bad());
        }
        if !out.iter().any(|o| o == trimmed) {
            out.push(trimmed.to_owned());
        }
    }
    Ok(out)
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
