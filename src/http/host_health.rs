//! `PUT /v1/host-health/{host}` (a host's latest health report, any JSON
//! object up to [`MAX_REPORT_BYTES`]) and `GET /v1/host-health` (all of them,
//! `{"hosts": [...]}` sorted by host). Stored on disk by
//! [`crate::host_health`]; nothing that gates metrics gates these, so a sick
//! host can always report.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use edgebus_actors::event::now_ms;

use super::body::read_capped;
use super::streams::authorization;
use super::AppState;
use crate::auth::Role;
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
    state.auth.require(authorization(&req), Role::Publisher)?;
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

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.auth.require(authorization(&req), Role::Viewer)?;
    let store = store(&state);
    let hosts = web::block(move || store.list())
        .await
        .map_err(blocking_failed)??;
    Ok(HttpResponse::Ok().json(json!({ "hosts": hosts })))
}
