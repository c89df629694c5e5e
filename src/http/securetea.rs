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

/// The ServerApp's address check. A browser page the user opens can make
/// the same GET from the same machine; browsers mark such a request
/// `Sec-Fetch-Site: cross-site` (or `same-site`), and it needs a key.
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
    !cross_site && profile.allowed_sources.iter().any(|net| net.contains(peer))
}
