//! `POST /v1/auth/ticket` (a stream ticket for a bearer key) and
//! `POST /v1/ping` (a smoke test of credentials and clock, and of what a lab
//! host calls itself: `host_id` from `X-Lab-Host`, `schema_version`).

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::streams::{authorization, check_origin};
use super::AppState;
use crate::auth::Role;
use crate::cis490::{lab_host, LAB_HOST_HEADER, SCHEMA_VERSION};
use crate::error::ApiError;

/// A single-use ticket bound to the caller's identity and roles, under the
/// caller's own outstanding-ticket cap. In open dev mode anyone gets one
/// (streams then need none, but a page written for a locked-down deployment
/// works unchanged).
pub async fn ticket(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    let identity = state.auth.require(authorization(&req), Role::Viewer)?;
    let ticket = state
        .auth
        .mint_ticket(&identity, req.peer_addr().map(|a| a.ip()))
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({
            "ticket": ticket,
            "expires_in": state.auth.tickets.ttl_seconds(),
        })))
}

pub async fn ping(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    // Any valid key, whatever its roles, may ping.
    let identity = state.auth.identify(authorization(&req))?;
    let t_wall_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let host_id = lab_host(req.headers().get(LAB_HOST_HEADER).map(|v| v.as_bytes()));
    Ok(HttpResponse::Ok().json(json!({
        "ok": true,
        "identity": &*identity.name,
        "roles": identity.roles(),
        "host_id": host_id,
        "t_wall_ns": t_wall_ns,
        "schema_version": SCHEMA_VERSION,
    })))
}
