//! `PUT /v1/host-health/{host}` (a host's latest health report, any JSON
//! object up to [`MAX_REPORT_BYTES`]) and `GET /v1/host-health` (all of them,
//! `{"hosts": [...]}` sorted by host). Stored on disk by
//! [`crate::host_health`]; nothing that gates metrics gates these, so a sick
//! host can always report.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::json;

use edgebus_actors::event::now_ms;

use super::AppState;
use crate::error::ApiError;
use crate::host_health::{
    parse_report, record, validate_host, HostHealthError, HostHealthStore, MAX_REPORT_BYTES,
};

impl From<HostHealthError> for ApiError {
    fn from(e: HostHealthError) -> Self {
        match e {
            HostHealthError::BadHost | HostHealthError::BadBody(_) => {
                ApiError::BadRequest(e.to_string())
            }
            HostHealthError::TooLarge(_) => ApiError::PayloadTooLarge(e.to_string()),
            HostHealthError::Io(io) => ApiError::Internal(io.into()),
        }
    }
}

fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(format!("report is over the {MAX_REPORT_BYTES}-byte limit"))
}

/// The body, refusing (413) as soon as it passes `limit`: a declared
/// Content-Length is checked before reading anything.
async fn read_capped(
    req: &HttpRequest,
    mut body: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn store(state: &AppState) -> HostHealthStore {
    HostHealthStore::new(&state.settings.storage.data_dir)
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
    let host = validate_host(&host)?;
    let bytes = read_capped(&req, body, MAX_REPORT_BYTES).await?;
    let report = parse_report(&bytes)?;
    let record = record(&host, report, now_ms());
    let store = store(&state);
    let stored_host = host.clone();
    web::block(move || store.put(&stored_host, &record))
        .await
        .map_err(blocking_failed)??;
    Ok(HttpResponse::Ok().json(json!({ "status": "stored", "host_id": host.as_str() })))
}

pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = store(&state);
    let hosts = web::block(move || store.list())
        .await
        .map_err(blocking_failed)??;
    Ok(HttpResponse::Ok().json(json!({ "hosts": hosts })))
}
