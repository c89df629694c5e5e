//! `PUT /v1/host-health/{host}` (a host's latest health report, any JSON
//! object up to [`MAX_REPORT_BYTES`]) and `GET /v1/host-health[?format=cis490]`
//! (all of them, `{"hosts": [...]}` sorted by host, each record in edgebus's
//! shape or, with `format=cis490`, in the CIS490 receiver's; see [`Shape`]). Stored by [`crate::host_health`], on
//! disk or, in cluster mode, in Redis; nothing that gates metrics gates
//! these, so a sick host can always report.
//!
//! The listing is streamed: reports are read when the client has taken the
//! previous ones (the body is polled only as the socket drains), so a `GET`
//! holds a few reports in memory however many hosts there are, and a client
//! that stops reading stops the reads.
//!
//! A new host beyond `host_health.max_hosts` gets 409: the request conflicts
//! with the store's state, and sending it again will not help until an
//! operator acts (a 5xx would invite automatic retries, a 429 the promise
//! that waiting is enough). A listing beyond `host_health.max_concurrent_lists`
//! gets 429 with `Retry-After`: that one does pass with time. A Redis that
//! is unreachable gets 503 with `Retry-After`.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::TryStreamExt;
use serde_json::json;

use edgebus_actors::event::now_ms;

use super::body::read_capped;
use super::streams::authorization;
use super::AppState;
use crate::auth::Role;
use crate::error::ApiError;
use crate::host_health::{
    parse_report, record, validate_host, HostHealthError, Shape, MAX_REPORT_BYTES, RETRY_AFTER_SECS,
};

impl From<HostHealthError> for ApiError {
    fn from(e: HostHealthError) -> Self {
        match e {
            HostHealthError::BadHost
            | HostHealthError::BadBody(_)
            | HostHealthError::BadFormat(_) => ApiError::BadRequest(e.to_string()),
            HostHealthError::TooLarge(_) => ApiError::PayloadTooLarge(e.to_string()),
            HostHealthError::Full(_) => ApiError::Conflict(e.to_string()),
            HostHealthError::Busy(_) | HostHealthError::AlreadyListing => {
                ApiError::TooManyRequests(e.to_string(), 1)
            }
            HostHealthError::Unavailable => {
                ApiError::UnavailableRetry(e.to_string(), RETRY_AFTER_SECS)
            }
            HostHealthError::Io(io) => ApiError::Internal(io.into()),
            HostHealthError::Redis(_) | HostHealthError::Pool(_) => {
                ApiError::Internal(anyhow::Error::new(e))
            }
        }
    }
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
    state.host_health.put(&host, record).await?;
    Ok(HttpResponse::Ok().json(json!({ "status": "stored", "host_id": host.as_str() })))
}

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let identity = state.auth.require(authorization(&req), Role::Viewer)?;
    let shape = Shape::from_format(format_param(req.query_string())?.as_deref())?;
    let listing = state
        .host_health
        .list(identity.owner(req.peer_addr().map(|a| a.ip())), shape)
        .await?;
    // An error midway (the pool gone at shutdown, Redis lost) ends the body
    // short: the client sees a broken response rather than a partial list.
    let body = listing
        .into_body()
        .map_err(actix_web::error::ErrorInternalServerError);
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body))
}

/// The one `format` parameter of a listing, if any; other parameters
/// (cache busters) are ignored.
fn format_param(query: &str) -> Result<Option<String>, ApiError> {
    let mut format = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "format" && format.replace(value.into_owned()).is_some() {
            return Err(ApiError::BadRequest("format given more than once".into()));
        }
    }
    Ok(format)
}
