//! `GET /metrics`: Prometheus text exposition.

use actix_web::{web, HttpResponse};
use prometheus::{Encoder, TextEncoder};

use super::AppState;
use crate::error::ApiError;

pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let families = state.telemetry.registry().gather();
    let mut body = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut body)
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body))
}
