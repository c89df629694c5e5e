//! `POST /v1/publish/{topic…}` and `POST /v1/notifications` (publisher).
//!
//! An HTTP publish meets exactly the rules an MQTT publish meets
//! ([`ingest::accept`]): metrics topics the strict frame rules, other topics
//! a JSON object without duplicate keys; the topic must belong to one of the
//! configured families (`mqtt.topics`) and not to `edgebus/`. Metrics go
//! through the registry (device table, cap), everything else straight to
//! the bus.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use std::time::{Duration, Instant};

use edgebus_actors::bus::Publish;
use edgebus_actors::cluster::AppendError;
use edgebus_actors::event::{now_ms, Body, Draft};
use edgebus_actors::families::{self, Route};
use edgebus_actors::frame::{is_safe_id, Rejection};
use edgebus_actors::ingest::{self};
use edgebus_actors::registry::{Admission, Observe};

use super::body::read_capped;
use super::idempotency::{fingerprint, Claim, IdempotencyError, MAX_KEY_LEN};
use super::streams::{authorization, check_origin, require_json};
use super::AppState;
use crate::auth::Role;
use crate::cluster_store::{StoreError, RETRY_AFTER_SECS};
use crate::error::ApiError;

/// How long a publish waits for the Redis stream (cluster mode) before it
/// answers 503; an append that has not gone out by then never does.
const STREAM_APPEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest notification message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 2000;

fn in_families(state: &AppState, topic: &str) -> bool {
    state.settings.mqtt.topics.iter().any(|f| f.matches(topic))
}

pub async fn publish(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    topic: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    let identity = state.auth.require(authorization(&req), Role::Publisher)?;
    require_json(&req)?;
    let topic = topic.into_inner();
    let limit = state.settings.mqtt.max_payload_bytes;
    let body = read_capped(&req, payload, limit).await?;
    let key = idempotency_key(&req)?;

    let draft = match ingest::accept(&topic, &body, limit, now_ms()) {
        Ok(draft) => draft,
        Err(rejected) => {
            state.telemetry.frame_rejected(&topic, &rejected.rejection);
            return Err(match rejected.rejection {
                Rejection::TooLarge(_) => ApiError::PayloadTooLarge(rejected.rejection.to_string()),
                r => ApiError::BadRequest(format!("{}: {r}", r.as_str())),
            });
        }
    };
    if !in_families(&state, &topic) {
        return Err(ApiError::BadRequest(format!(
            "topic {topic:?} is outside the configured families (mqtt.topics)"
        )));
    }

    let Some(key) = key else {
        let result = put_on_bus(&state, draft).await?;
        return Ok(HttpResponse::Created().json(result.body(&topic, "created")));
    };
    let claim = state
        .idempotency
        .claim(
            &identity.owner(req.peer_addr().map(|a| a.ip())),
            &key,
            fingerprint(&topic, &body),
        )
        .await
        .map_err(|e: IdempotencyError| match e {
            IdempotencyError::IdentityFull(..) | IdempotencyError::StoreFull(_) => {
                ApiError::TooManyRequests(e.to_string(), 60)
            }
            IdempotencyError::Store(StoreError::Unavailable) => {
                ApiError::UnavailableRetry(e.to_string(), RETRY_AFTER_SECS)
            }
            IdempotencyError::Store(StoreError::Redis(_)) | IdempotencyError::Random => {
                ApiError::Internal(anyhow::Error::new(e))
            }
        })?;
    match claim {
        Claim::AlreadyPresent(id) => {
            Ok(HttpResponse::Ok().json(Published { id }.body(&topic, "already-present")))
        }
        Claim::Conflict => Err(ApiError::Conflict(
            "Idempotency-Key was already used with a different request".into(),
        )),
        Claim::InFlight => Err(ApiError::Conflict(
            "in_flight: a request with this Idempotency-Key is still being published; \
             retry it to get its answer"
                .into(),
        )),
        // A failed publish drops `pending`, which frees the key. Publishing
        // and recording run as one task of their own: a client that hangs
        // up meanwhile cancels neither, so its retry finds the key instead
        // of publishing again.
        Claim::New(pending) => {
            let state = state.clone();
            let task = actix_web::rt::spawn(async move {
                let result = put_on_bus(&state, draft).await;
                if let Ok(published) = &result {
                    pending.record(published.id.clone()).await;
                }
                result
            });
            let result = task.await.map_err(|e| {
                ApiError::Internal(anyhow::anyhow!("the publish task failed: {e}"))
            })??;
            Ok(HttpResponse::Created().json(result.body(&topic, "created")))
        }
    }
}

/// What a publish produced: the event id (metrics, which go through the
/// registry, have none to give).
pub(super) struct Published {
    id: Option<String>,
}

impl Published {
    fn body(&self, topic: &str, status: &str) -> Value {
        let mut body = json!({"status": status, "topic": topic});
        if let (Some(id), Value::Object(map)) = (&self.id, &mut body) {
            map.insert("id".into(), id.as_str().into());
        }
        body
    }
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

/// Metrics through the registry (it keeps the device table and forwards to
/// the bus), anything else straight to the bus, which answers with the id.
/// In cluster mode: onto the Redis stream, whose entry id is the event's id
/// on every instance.
pub(super) async fn put_on_bus(state: &AppState, draft: Draft) -> Result<Published, ApiError> {
    if let Some(cluster) = &state.cluster {
        let device = draft.body.as_metrics().map(|f| f.device_id.to_string());
        let deadline = Instant::now() + STREAM_APPEND_TIMEOUT;
        return match cluster.writer.append_until(draft, device, deadline).await {
            Ok(id) => Ok(Published {
                id: Some(id.to_string()),
            }),
            Err(AppendError::DeviceCap) => Err(device_cap()),
            Err(e) => Err(ApiError::Unavailable(e.to_string())),
        };
    }
    if families::route(&draft.topic) == Route::Registry {
        return match state.registry.send(Observe(draft)).await? {
            Admission::Refused => Err(device_cap()),
            Admission::New | Admission::Updated => Ok(Published { id: None }),
        };
    }
    let id = state.bus.send(Publish(draft)).await?;
    Ok(Published {
        id: Some(id.to_string()),
    })
}

fn device_cap() -> ApiError {
    ApiError::Forbidden("device cap (registry.max_devices) reached: new devices are refused".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Notification {
    level: String,
    message: String,
    #[serde(default)]
    source: Option<String>,
}

/// `{"level","message","source"?}` → an event on `notifications/{source}`
/// (`source` defaults to `api`).
pub async fn notify(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    state.auth.require(authorization(&req), Role::Publisher)?;
    require_json(&req)?;
    let body = read_capped(&req, payload, state.settings.mqtt.max_payload_bytes).await?;
    let note: Notification = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("bad notification: {e}")))?;
    let source = note.source.unwrap_or_else(|| "api".to_owned());
    let (topic, draft) = notification_draft(&note.level, note.message, &source)?;
    let id = put_on_bus(&state, draft).await?.id;
    Ok(HttpResponse::Created().json(json!({"status": "created", "topic": topic, "id": id})))
}

/// The event a notification becomes, on `notifications/{source}`, once its
/// level, message length and source pass: the one rule for every way in
/// (`POST /v1/notifications`, SecureTea's `GET /notifs`).
pub(super) fn notification_draft(
    level: &str,
    message: String,
    source: &str,
) -> Result<(String, Draft), ApiError> {
    if !matches!(level, "info" | "success" | "warning" | "error") {
        return Err(ApiError::BadRequest(format!(
            "level {:?} is not one of info, success, warning, error",
            level.chars().take(32).collect::<String>()
        )));
    }
    let chars = message.chars().count();
    if chars == 0 || chars > MAX_MESSAGE_CHARS {
        return Err(ApiError::BadRequest(format!(
            "message must be 1 to {MAX_MESSAGE_CHARS} characters (got {chars})"
        )));
    }
    if !is_safe_id(source) {
        return Err(ApiError::BadRequest(
            "source must match ^[A-Za-z0-9._-]{1,64}$".into(),
        ));
    }
    let topic = families::notification_topic(source);
    let mut map = Map::new();
    map.insert("level".into(), level.into());
    map.insert("message".into(), message.into());
    map.insert("source".into(), source.into());
    let draft = Draft::new(topic.as_str(), now_ms(), Body::Object(map));
    Ok((topic, draft))
}
