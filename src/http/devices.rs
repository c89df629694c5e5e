//! `GET /v1/devices` (active devices keyed by id) and `GET /v1/devices/{id}`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{Map, Value};

use edgebus_actors::registry::{GetDevice, ListDevices};

use super::streams::authorization;
use super::AppState;
use crate::auth::Role;
use crate::error::ApiError;

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.auth.require(authorization(&req), Role::Viewer)?;
    let devices = state.registry.send(ListDevices).await?;
    let mut body = Map::new();
    for device in devices {
        let key = device.device_id.to_string();
        let value = serde_json::to_value(&device).map_err(|e| ApiError::Internal(e.into()))?;
        body.insert(key, value);
    }
    Ok(HttpResponse::Ok().json(Value::Object(body)))
}

pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.auth.require(authorization(&req), Role::Viewer)?;
    let id = id.into_inner();
    match state.registry.send(GetDevice(id.clone())).await? {
        Some(device) => Ok(HttpResponse::Ok().json(device)),
        None => Err(ApiError::NotFound(format!(
            "unknown device {:?}",
            id.chars().take(64).collect::<String>()
        ))),
    }
}
