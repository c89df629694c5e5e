//! The EdgeWatch bridge's dashboard WebSocket, spoken by edgebus
//! (`[compat.edgewatch]`).
//!
//! The bridge served one WebSocket on `WS_HOST:WS_PORT`, any path. A
//! dashboard connected with `?token=` (when `WS_AUTH_TOKEN` was set),
//! received one `{device_id: frame, …}` message of the devices seen within
//! `PRUNE_SECONDS` (none when there was none), then `{device_id: frame}`
//! for every accepted frame; what it sent was read and ignored. A wrong or
//! missing token got the handshake, then close 1008 `unauthorized`.
//!
//! Here the listener is its own HTTP server (one worker) on
//! `compat.edgewatch.bind`, and every dashboard is an ordinary WebSocket
//! session in the edgewatch wire format: the bus's snapshot (devices in
//! `registry.active_window_seconds`), the session's bounded queue with
//! metrics conflated for a slow reader, heartbeats, the write deadline,
//! and the stream caps of a shared identity (per address). Stopped with
//! the application.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context as _;
use subtle::ConstantTimeEq;

use edgebus_actors::families;
use edgebus_actors::session::{SessionStart, WireFormat};
use edgebus_actors::subscription::Subscription;
use edgebus_actors::topic::TopicFilter;

use crate::auth::Identity;
use crate::error::ApiError;
use crate::http::{streams, AppState};

/// Connections the listener holds at once (each a dashboard).
const MAX_CONNECTIONS: usize = 1024;

/// How long in-flight upgrades get at shutdown.
const SHUTDOWN: Duration = Duration::from_secs(2);

/// The running listener: its port, and how to stop it.
pub struct EdgeWatchListener {
    pub port: u16,
    pub server: ServerHandle,
}

/// Binds `compat.edgewatch.bind` now, so a taken port stops the start,
/// then serves on a worker thread of its own.
pub fn start(state: web::Data<AppState>) -> anyhow::Result<EdgeWatchListener> {
    let settings = &state.settings.compat.edgewatch;
    let bind = settings.bind;
    let listener = TcpListener::bind(bind)
        .with_context(|| format!("`compat.edgewatch.bind`: cannot listen on {bind}"))?;
    let port = listener.local_addr()?.port();
    if settings.token.is_empty() {
        log::warn!(
            "EdgeWatch listener on {}:{port} has no `compat.edgewatch.token`: anyone who can \
             reach it reads every device's metrics.",
            bind.ip()
        );
    }
    let unacked = state.settings.sessions.write_timeout.saturating_mul(2);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .default_service(web::to(dashboard))
    })
    .workers(1)
    // As the main listener: a dashboard that hangs up is gone at once, one
    // that stops reading is dropped by the kernel, and the listener never
    // holds more connections than this (their file descriptors are the
    // process's).
    .h1_allow_half_closed(false)
    .on_connect(crate::http::unacked_timeout(unacked))
    .max_connections(MAX_CONNECTIONS)
    .disable_signals()
    .shutdown_timeout(SHUTDOWN.as_secs())
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    log::info!(
        "EdgeWatch dashboards' WebSocket listening on {}:{port}.",
        bind.ip()
    );
    Ok(EdgeWatchListener {
        port,
        server: handle,
    })
}

/// Any path: the upgrade, then the session or the close 1008.
async fn dashboard(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let profile = &state.settings.compat.edgewatch;
    // Before the upgrade, as on /v1/ws: a page from another origin cannot
    // read the dashboards' stream through a visitor's browser.
    if let Some(origin) = req.headers().get(actix_web::http::header::ORIGIN) {
        if !origin
            .to_str()
            .is_ok_and(|o| profile.allowed_origins.allows(o))
        {
            return Err(ApiError::Forbidden(
                "origin not in compat.edgewatch.allowed_origins".into(),
            )
            .into());
        }
    }
    let expected = profile.token.expose();
    let permit = if token_ok(req.query_string(), expected) {
        Some(streams::permit(&req, &state, &Identity::edgewatch()).await?)
    } else {
        None
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let Some(permit) = permit else {
        // The bridge closed inside its handler, after the handshake.
        state.telemetry.warn_limited("edgewatch_unauthorized", || {
            format!(
                "Refused an EdgeWatch dashboard from {}: missing or wrong token.",
                streams::peer(&req)
            )
        });
        crate::http::ws::close_unauthorized(session);
        return Ok(response);
    };
    let filter = TopicFilter::parse(families::METRICS_FILTER)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the metrics filter: {e}")))?;
    crate::http::ws::start_session(
        &state,
        (session, stream),
        permit,
        SessionStart {
            subscriptions: vec![Subscription::topic(filter)],
            resume: None,
            guard: None,
        },
        WireFormat::Edgewatch,
    );
    Ok(response)
}

/// The bridge's check: with no token configured anyone passes; otherwise
/// the first non-empty `token` in the query (Python's `parse_qs` drops
/// empty ones) must equal it, compared in constant time.
pub fn token_ok(query: &str, expected: &str) -> bool {
    if expected.is_empty() {
        return true;
    }
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, value)| name == "token" && !value.is_empty())
        .is_some_and(|(_, presented)| bool::from(presented.as_bytes().ct_eq(expected.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_the_first_non_empty_one_and_must_match() {
        assert!(token_ok("", ""));
        assert!(token_ok("token=anything", ""));
        assert!(token_ok("token=s3cret", "s3cret"));
        assert!(token_ok("x=1&token=&token=s3cret", "s3cret"));
        assert!(token_ok("token=s3%63ret", "s3cret"), "percent-decoded");
        assert!(!token_ok("token=s3cret&token=other", "other"));
        assert!(!token_ok("", "s3cret"));
        assert!(!token_ok("token=", "s3cret"));
        assert!(!token_ok("token=s3cre", "s3cret"));
        assert!(!token_ok("TOKEN=s3cret", "s3cret"));
    }
}
