//! `GET /v1/ws?topic=F&topic=G[&where=k:v][&format=edgewatch][&ticket=…|&token=…][&last_event_id=…]`:
//! upgrades to a WebSocket and starts a [`WsSession`] actor for it.

use actix::Actor;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason};

use edgebus_actors::families;
use edgebus_actors::session::{SessionStart, WireFormat, WsSession};
use edgebus_actors::subscription::Subscription;
use edgebus_actors::topic::TopicFilter;

use super::streams::{self, StreamQuery};
use super::AppState;
use crate::auth::StreamAuth;
use crate::error::ApiError;
use crate::stream_slots::StreamHold;

/// Topics a session gets when it names none: the device dashboard's feed.
pub const DEFAULT_TOPIC: &str = families::METRICS_FILTER;

pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let query = StreamQuery::parse(req.query_string())?;
    streams::check_origin(&req, &state)?;
    let format = match query.format.as_deref() {
        None | Some("envelope") => WireFormat::Envelope,
        Some("edgewatch") => WireFormat::Edgewatch,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown format {other:?}: use envelope or edgewatch"
            ))
            .into())
        }
    };
    let mut subscriptions = query.subscriptions()?;
    if subscriptions.is_empty() {
        let filter = TopicFilter::parse(DEFAULT_TOPIC).map_err(|e| ApiError::Internal(e.into()))?;
        subscriptions.push(Subscription::topic(filter));
    }
    let identity = match streams::authenticate(&req, &state, &query, true).await? {
        StreamAuth::Granted(identity) => Some(identity),
        StreamAuth::LegacyRefused => None,
    };
    let permit = match &identity {
        Some(identity) => Some(streams::permit(&req, &state, identity).await?),
        None => None,
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let Some(permit) = permit else {
        // The seed bridge's clients expect the upgrade, then close 1008.
        state.telemetry.warn_limited("ws_unauthorized", || {
            format!(
                "Refused a WebSocket from {}: missing or wrong legacy token.",
                streams::peer(&req)
            )
        });
        close_unauthorized(session);
        return Ok(response);
    };
    start_session(
        &state,
        (session, stream),
        permit,
        SessionStart {
            subscriptions,
            resume: query.resume(&req),
            guard: None,
        },
        format,
    );
    Ok(response)
}

/// Starts the session actor of an upgraded WebSocket: its queue bounds are
/// its owner's, and it holds `permit` (its stream slot) for its life.
pub(crate) fn start_session(
    state: &AppState,
    (session, stream): (actix_ws::Session, actix_ws::MessageStream),
    permit: StreamHold,
    start: SessionStart,
    format: WireFormat,
) {
    let config = crate::wiring::ws_session_config(
        &state.settings,
        &crate::http::queue_limits(state, &permit),
        format,
    );
    let start = SessionStart {
        guard: Some(Box::new(permit)),
        ..start
    };
    WsSession::new(
        session,
        stream,
        state.bus.clone(),
        start,
        config,
        state.telemetry.clone(),
    )
    .start();
}

/// Closes a WebSocket whose credentials were refused with 1008
/// `unauthorized`, after the upgrade: what the seed bridge's dashboards
/// expect (its handler closed after the handshake).
pub(crate) fn close_unauthorized(session: actix_ws::Session) {
    actix::spawn(async move {
        let reason = CloseReason {
            code: CloseCode::Policy,
            description: Some("unauthorized".into()),
        };
        let _ = session.close(Some(reason)).await;
    });
}
