//! `GET /notifs?msg=<S|W|E|I><text>`: SecureTea-Core's notification call
//! (`[compat.securetea]`), answered as its ServerApp answers it. Served
//! here and on the Socket.IO listener, where the core calls it by default
//! (`http://127.0.0.1:5000/notifs`).

use std::net::IpAddr;

use actix_web::{web, HttpRequest, HttpResponse};

use super::publish::{notification_draft, put_on_bus};
use super::streams::authorization;
use super::AppState;
use crate::auth::Role;
use crate::error::ApiError;
use crate::securetea::{parse_msg, SOURCE};

/// What the ServerApp answers; the core does not read it.
pub const SENT: &str = "Notif sent";

/// The call, whoever received it.
pub struct NotifsCall<'a> {
    pub peer: Option<IpAddr>,
    pub authorization: Option<&'a str>,
    /// The request's `Sec-Fetch-Site`, if a browser sent one.
    pub fetch_site: Option<&'a [u8]>,
    /// The request came through a proxy (`Forwarded`, `X-Forwarded-For` or
    /// `X-Real-IP`): its peer address is the proxy's, not the caller's.
    pub proxied: bool,
    pub query: &'a str,
}

pub async fn notifs(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    accept_notif(
        &state,
        NotifsCall {
            peer: req.peer_addr().map(|a| a.ip()),
            authorization: authorization(&req),
            fetch_site: req.headers().get("sec-fetch-site").map(|v| v.as_bytes()),
            proxied: proxied(|h| req.headers().contains_key(h)),
            query: req.query_string(),
        },
    )
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(SENT))
}

/// Checks the caller, reads `msg` and publishes the notification.
pub async fn accept_notif(state: &AppState, call: NotifsCall<'_>) -> Result<(), ApiError> {
    let profile = &state.settings.compat.securetea;
    if !profile.enabled {
        return Err(ApiError::NotFound(
            "not found (compat.securetea.enabled is off)".into(),
        ));
    }
    if !from_allowed_source(&call, profile) {
        state.auth.require(call.authorization, Role::Publisher)?;
    }
    let msg = form_urlencoded::parse(call.query.as_bytes())
        .find(|(key, _)| key == "msg")
        .map(|(_, value)| value);
    let (level, text) =
        parse_msg(msg.as_deref()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (_, draft) = notification_draft(level, text.to_owned(), SOURCE)?;
    put_on_bus(state, draft).await?;
    Ok(())
}

/// Whether a proxy forwarded the request (so its peer address says nothing
/// of the caller).
/// `has` tells whether the request carries a header (either server's map).
pub fn proxied(has: impl Fn(&str) -> bool) -> bool {
    ["forwarded", "x-forwarded-for", "x-real-ip"]
        .into_iter()
        .any(has)
}

/// The ServerApp's address check. A browser page the user opens can make
/// the same GET from the same machine; browsers mark such a request
/// `Sec-Fetch-Site: cross-site` (or `same-site`), and it needs a key. A
/// proxied request needs one too: behind a proxy on the same host, every
/// caller would come from an allowed address.
fn from_allowed_source(
    call: &NotifsCall<'_>,
    profile: &crate::settings::SecureTeaSettings,
) -> bool {
    let cross_site = call
        .fetch_site
        .is_some_and(|v| v != b"none" && v != b"same-origin");
    let Some(peer) = call.peer else {
        return false;
    };
    !cross_site && !call.proxied && profile.allowed_sources.iter().any(|net| net.contains(peer))
}
