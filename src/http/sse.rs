//! Server-Sent Events: `GET /v1/events?topic=F[&where=k:v]`,
//! `GET /v1/devices/{id}/events` and `GET /v1/attackers/{uuid}/events`, each
//! served by one [`SseSession`] actor.
//!
//! Order of checks: query shape (400), credentials (401/403), existence of
//! the device or attacker (404), the identity's stream cap (429). Browsers
//! treat any non-200 answer as final, so a page must reconnect itself with a
//! fresh ticket and `?last_event_id=` (see docs/protocol.md, "Reconnecting from a browser").

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use edgebus_actors::bus::FindAttacker;
use edgebus_actors::families;
use edgebus_actors::frame::{is_safe_id, DeviceId};
use edgebus_actors::registry::GetDevice;
use edgebus_actors::session::{SessionStart, SseForm, SseSession, SseSessionConfig};
use edgebus_actors::subscription::{Predicate, Subscription};
use edgebus_actors::topic::TopicFilter;

use super::streams::{self, StreamQuery};
use super::AppState;
use crate::auth::{AuthError, Identity, StreamAuth};
use crate::error::ApiError;
use crate::stream_slots::StreamHold;

/// `GET /v1/events?topic=F&topic=G[&where=key:value]`.
pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = StreamQuery::parse(req.query_string())?;
    if query.topics.is_empty() {
        return Err(ApiError::BadRequest(
            "name at least one ?topic= filter (e.g. devices/+/metrics)".into(),
        ));
    }
    let subscriptions = query.subscriptions()?;
    open(&req, &state, &query, subscriptions).await
}

/// `GET /v1/devices/{id}/events`: the device's metrics and presence, and
/// its alerts.
pub async fn device_events(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let query = StreamQuery::parse(req.query_string())?;
    let identity = identity(&req, &state, &query).await?;
    // The caps and the open rate come before any lookup: a caller over them
    // costs the registry nothing.
    let permit = streams::permit(&req, &state, &identity).await?;
    let device = DeviceId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if state
        .registry
        .send(GetDevice(device.as_str().to_owned()))
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!(
            "unknown device {:?}",
            device.as_str()
        )));
    }
    let subscriptions = families::device_filters(device.as_str())
        .iter()
        .map(|f| topic(f))
        .collect::<Result<Vec<_>, _>>()?;
    start(&req, &state, &query, permit, subscriptions)
}

/// `GET /v1/attackers/{uuid}/events`: everything under
/// `attackers/{uuid}/…`, and attribution events whose `identity_uuid` is the
/// attacker's (as stamped on its newest event that carries one). Nothing of
/// any other attacker.
pub async fn attacker_events(
    req: HttpRequest,
    state: web::Data<AppState>,
    uuid: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    attacker_stream(&req, &state, &uuid, AttackerForm::Edgebus).await
}

/// How an attacker's stream is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttackerForm {
    /// edgebus's envelopes (`/v1/attackers/{uuid}/events`).
    Edgebus,
    /// DECNET's dashboard stream (`[compat.decnet]`).
    Decnet,
}

/// An attacker's stream, whoever asked: the same checks, subscriptions
/// and session in either form.
pub async fn attacker_stream(
    req: &HttpRequest,
    state: &AppState,
    uuid: &str,
    form: AttackerForm,
) -> Result<HttpResponse, ApiError> {
    let query = StreamQuery::parse(req.query_string())?;
    let identity = identity(req, state, &query).await?;
    // The caps and the open rate come before the lookup: a caller over them
    // costs the bus nothing.
    let permit = streams::permit(req, state, &identity).await?;
    // Attacker ids follow the device id rule: one safe topic level.
    if !is_safe_id(uuid) {
        return Err(ApiError::BadRequest(
            "attacker id must match ^[A-Za-z0-9._-]{1,64}$".into(),
        ));
    }
    let Some(info) = state.bus.send(FindAttacker(uuid.to_owned())).await? else {
        return Err(ApiError::NotFound(format!("unknown attacker {uuid:?}")));
    };
    let mut subscriptions = vec![topic(&families::attacker_filter(uuid))?];
    if let Some(identity) = info.identity_uuid {
        let predicate =
            Predicate::new("identity_uuid", &identity).map_err(|e| ApiError::Internal(e.into()))?;
        let filter = TopicFilter::parse(families::ATTRIBUTION_FILTER)
            .map_err(|e| ApiError::Internal(e.into()))?;
        subscriptions.push(
            Subscription::with_predicates(filter, vec![predicate])
                .map_err(|e| ApiError::Internal(e.into()))?,
        );
    }
    let form = match form {
        AttackerForm::Edgebus => SseForm::Envelope,
        AttackerForm::Decnet => SseForm::Decnet {
            attacker: uuid.into(),
        },
    };
    start_in(req, state, &query, permit, subscriptions, form)
}

fn topic(filter: &str) -> Result<Subscription, ApiError> {
    TopicFilter::parse(filter)
        .map(Subscription::topic)
        .map_err(|e| ApiError::BadRequest(format!("bad topic {filter:?}: {e}")))
}

/// SSE has no legacy token: a bearer header or a ticket (or open mode).
async fn identity(
    req: &HttpRequest,
    state: &AppState,
    query: &StreamQuery,
) -> Result<Identity, ApiError> {
    match streams::authenticate(req, state, query, false).await? {
        StreamAuth::Granted(identity) => Ok(identity),
        StreamAuth::LegacyRefused => Err(AuthError::Missing.into()),
    }
}

async fn open(
    req: &HttpRequest,
    state: &AppState,
    query: &StreamQuery,
    subscriptions: Vec<Subscription>,
) -> Result<HttpResponse, ApiError> {
    let identity = identity(req, state, query).await?;
    let permit = streams::permit(req, state, &identity).await?;
    start(req, state, query, permit, subscriptions)
}

/// Starts the session once the caller is known and holds its slot (a ticket
/// is consumed when it is checked, so this never checks again).
fn start(
    req: &HttpRequest,
    state: &AppState,
    query: &StreamQuery,
    permit: StreamHold,
    subscriptions: Vec<Subscription>,
) -> Result<HttpResponse, ApiError> {
    start_in(req, state, query, permit, subscriptions, SseForm::Envelope)
}

/// [`start`], writing `form`.
fn start_in(
    req: &HttpRequest,
    state: &AppState,
    query: &StreamQuery,
    permit: StreamHold,
    subscriptions: Vec<Subscription>,
    form: SseForm,
) -> Result<HttpResponse, ApiError> {
    let config = SseSessionConfig {
        form,
        ..crate::wiring::sse_session_config(
            &state.settings,
            &crate::http::queue_limits(state, &permit),
        )
    };
    let start = SessionStart {
        subscriptions,
        resume: query.resume(req),
        guard: Some(Box::new(permit)),
    };
    let body = SseSession::start(state.bus.clone(), start, config, state.telemetry.clone());
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // nginx and friends must not buffer the stream; Compress must not either.
        .insert_header(("X-Accel-Buffering", "no"))
        .insert_header((header::CONTENT_ENCODING, "identity"))
        .streaming(body))
}
