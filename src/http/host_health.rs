//! `PUT /v1/host-health/{host}` (a host's latest health report, any JSON
//! object up to [`MAX_REPORT_BYTES`]) and `GET /v1/host-health` (all of them,
//! `{"hosts": [...]}` sorted by host). Stored on disk by
//! [`crate::host_health`]; nothing that gates metrics gates these, so a sick
//! host can always report.
//!
//! The listing is streamed: each report is read from disk when the client
//! has taken the previous ones (the body is polled only as the socket
//! drains), so a `GET` holds one report in memory however many hosts there
//! are, and a client that stops reading stops the reads.
//!
//! A new host beyond `host_health.max_hosts` gets 409: the request conflicts
//! with the store's state, and sending it again will not help until an
//! operator acts (a 5xx would invite automatic retries, a 429 the promise
//! that waiting is enough). A listing beyond `host_health.max_concurrent_lists`
//! gets 429 with `Retry-After`: that one does pass with time.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use edgebus_actors::event::now_ms;

use super::body::read_capped;
use super::streams::authorization;
use super::AppState;
use crate::auth::Role;
use crate::error::ApiError;
use crate::host_health::{
    parse_report, record, validate_host, HostHealthError, Listing, MAX_REPORT_BYTES,
};

impl From<HostHealthError> for ApiError {
    fn from(e: HostHealthError) -> Self {
        match e {
            HostHealthError::BadHost | HostHealthError::BadBody(_) => {
                ApiError::BadRequest(e.to_string())
            }
            HostHealthError::TooLarge(_) => ApiError::PayloadTooLarge(e.to_string()),
            HostHealthError::Full(_) => ApiError::Conflict(e.to_string()),
            HostHealthError::Busy(_) | HostHealthError::AlreadyListing => {
                ApiError::TooManyRequests(e.to_string(), 1)
            }
            HostHealthError::Io(io) => ApiError::Internal(io.into()),
        }
    }
}

fn blocking_failed(e: actix_web::error::BlockingError) -> ApiError {
    ApiError::Internal(anyhow::anyhow!("blocking pool: {e}"))
}

pub async fn put(
    req: HttpRequest,
    host: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.auth.require(authorization(&req), Role::Publisher)?;
    let host = validate_host(&host)?;
    let bytes = read_capped(&req, body, MAX_REPORT_BYTES).await?;
    let record = record(&host, parse_report(&bytes)?, now_ms());
    let store = state.host_health.clone();
    let stored_host = host.clone();
    web::block(move || store.put(&stored_host, &record))
        .await
        .map_err(blocking_failed)??;
    Ok(HttpResponse::Ok().json(json!({ "status": "stored", "host_id": host.as_str() })))
}

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let identity = state.auth.require(authorization(&req), Role::Viewer)?;
    let listing = state
        .host_health
        .list(identity.owner(req.peer_addr().map(|a| a.ip())))?;
    let body = futures_util::stream::unfold(Some(listing), |listing| async move {
        let mut listing: Listing = listing?;
        match web::block(move || (listing.next_piece(), listing)).await {
            Ok((Some(piece), listing)) => Some((Ok(web::Bytes::from(piece)), Some(listing))),
            Ok((None, _)) => None,
            // The pool is gone (shutdown): end the body short, so the
            // client sees a broken response rather than a partial list.
            Err(e) => Some((Err(actix_web::error::ErrorInternalServerError(e)), None)),
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body))
}
