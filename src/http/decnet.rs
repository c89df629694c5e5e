//! `[compat.decnet]`: DECNET's dashboard against edgebus.
//!
//! - `POST /api/v1/auth/sse-ticket` (where DECNET's frontend calls it:
//!   its API client's base is `/api/v1`) and `POST /auth/sse-ticket`: a
//!   stream ticket for a bearer API key or JWT, as `POST /v1/auth/ticket`
//!   mints it. DECNET answers `{"ticket", "expires_in"}`, which is
//!   edgebus's own answer already.
//! - `GET /api/v1/attackers/{uuid}/events`: the attacker's stream
//!   (`/v1/attackers/{uuid}/events`: same auth, checks, caps, keepalives
//!   and resume) written in DECNET's form ([`SseForm::Decnet`]).
//!
//! With the profile off every path here answers 404, before anything else,
//! as a path edgebus does not serve.
//!
//! [`SseForm::Decnet`]: edgebus_actors::session::SseForm::Decnet

use actix_web::{web, HttpRequest, HttpResponse};

use super::sse::{attacker_stream, AttackerForm};
use super::tickets;
use super::AppState;
use crate::error::ApiError;

/// `POST /auth/sse-ticket`, `POST /api/v1/auth/sse-ticket`.
pub async fn sse_ticket(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    enabled(&state)?;
    tickets::ticket(req, state).await
}

/// `GET /api/v1/attackers/{uuid}/events`.
pub async fn attacker_events(
    req: HttpRequest,
    state: web::Data<AppState>,
    uuid: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    enabled(&state)?;
    attacker_stream(&req, &state, &uuid, AttackerForm::Decnet).await
}

fn enabled(state: &AppState) -> Result<(), ApiError> {
    if state.settings.compat.decnet.enabled {
        Ok(())
    } else {
        Err(ApiError::NotFound(
            "not found (compat.decnet.enabled is off)".into(),
        ))
    }
}
