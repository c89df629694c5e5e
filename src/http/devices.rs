//! `GET /v1/devices` (active devices keyed by id) and `GET /v1/devices/{id}`.

use actix_web::{web, HttpResponse};
use serde_json::{Map, Value};

use edgebus_actors::registry::{GetDevice, ListDevices};

use super::AppState;
use crate::error::ApiError;

pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
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
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    match state.registry.send(GetDevice(id.clone())).await? {
        Some(device) => Ok(HttpResponse::Ok().json(device)),
        None => Err(ApiError::NotFound(format!(
            "unknown device {:?}",
            id.chars().take(64).collect::<String>()
        ))),
    }
}
