//! `GET /metrics`: Prometheus text exposition. Open in open dev mode so a
//! local Prometheus scrapes without setup; once credentials are configured
//! it needs `Authorization: Bearer` with `http.metrics_token` (a scrape-only
//! secret), any API key, or in legacy mode the `ws_token`. The series carry
//! counts and low-cardinality labels only, but session counts and reject
//! rates still tell an outsider more than a locked deployment should.

use actix_web::{web, HttpRequest, HttpResponse};
use prometheus::{Encoder, TextEncoder};

use super::streams::authorization;
use super::AppState;
use crate::error::ApiError;

pub async fn metrics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.auth.metrics(authorization(&req))?;
    let families = state.telemetry.registry().gather();
    let mut body = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut body)
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body))
}
