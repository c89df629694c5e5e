//! `GET /notifs?msg=<S|W|E|I><text>`: SecureTea-Core's notification call
//! (`[compat.securetea]`), answered as its ServerApp answers it.

use actix_web::{web, HttpRequest, HttpResponse};

use super::publish::{notification_draft, put_on_bus};
use super::streams::authorization;
use super::AppState;
use crate::auth::Role;
use crate::error::ApiError;
use crate::securetea::{parse_msg, SOURCE};

/// What the ServerApp answers; the core does not read it.
const SENT: &str = "Notif sent";

pub async fn notifs(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let profile = &state.settings.compat.securetea;
    if !profile.enabled {
        return Err(ApiError::NotFound(
            "not found (compat.securetea.enabled is off)".into(),
        ));
    }
    if !from_allowed_source(&req, profile) {
        state.auth.require(authorization(&req), Role::Publisher)?;
    }
    let msg = form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(key, _)| key == "msg")
        .map(|(_, value)| value);
    let (level, text) =
        parse_msg(msg.as_deref()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (_, draft) = notification_draft(level, text.to_owned(), SOURCE)?;
    put_on_bus(&state, draft).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(SENT))
}

/// The ServerApp's address check. A browser page the user opens can make
/// the same GET from the same machine; browsers mark such a request
/// `Sec-Fetch-Site: cross-site` (or `same-site`), and it needs a key.
fn from_allowed_source(req: &HttpRequest, profile: &crate::settings::SecureTeaSettings) -> bool {
    let cross_site = req
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() != b"none" && v.as_bytes() != b"same-origin");
    let Some(peer) = req.peer_addr() else {
        return false;
    };
    !cross_site && profile.allowed_sources.iter().any(|net| net.contains(peer.ip()))
}
