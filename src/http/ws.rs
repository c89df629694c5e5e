//! `GET /v1/ws?topic=F&topic=G[&format=edgewatch][&token=…]`: upgrades to a
//! WebSocket and starts a [`WsSession`] actor for it.

use actix::Actor;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason};
use subtle::ConstantTimeEq;

use edgebus_actors::session::{WireFormat, WsSession, WsSessionConfig};
use edgebus_actors::topic::TopicFilter;

use super::AppState;
use crate::error::ApiError;
use crate::settings::Settings;

/// Topics a session gets when it names none: the device dashboard's feed.
pub const DEFAULT_TOPIC: &str = "devices/+/metrics";

/// The query of a stream request.
#[derive(Debug, Default, PartialEq)]
pub struct StreamQuery {
    pub topics: Vec<TopicFilter>,
    pub format: Option<String>,
    pub token: Option<String>,
}

impl StreamQuery {
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let mut out = StreamQuery::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "topic" => {
                    let filter = TopicFilter::parse(&value).map_err(|e| {
                        ApiError::BadRequest(format!("bad topic filter {:?}: {e}", value))
                    })?;
                    if !out.topics.contains(&filter) {
                        out.topics.push(filter);
                    }
                }
                "format" => out.format = Some(value.into_owned()),
                "token" => out.token = Some(value.into_owned()),
                _ => {} // Unknown parameters (cache busters) are ignored.
            }
        }
        Ok(out)
    }
}

/// Constant-time comparison of the legacy shared token; `true` when unset.
fn legacy_token_ok(settings: &Settings, presented: Option<&str>) -> bool {
    let expected = settings.auth.ws_token.expose();
    if expected.is_empty() {
        return true;
    }
    let presented = presented.unwrap_or("");
    bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let query = StreamQuery::parse(req.query_string())?;
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
    let mut filters = query.topics;
    if filters.is_empty() {
        filters.push(TopicFilter::parse(DEFAULT_TOPIC).map_err(|e| ApiError::Internal(e.into()))?);
    }
    let authorized = legacy_token_ok(&state.settings, query.token.as_deref());
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    if !authorized {
        state.telemetry.warn_limited("ws_unauthorized", || {
            let peer = req
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            format!("Refused a WebSocket from {peer}: missing or wrong token.")
        });
        actix::spawn(async move {
            let reason = CloseReason {
                code: CloseCode::Policy,
                description: Some("unauthorized".into()),
            };
            let _ = session.close(Some(reason)).await;
        });
        return Ok(response);
    }
    let s = &state.settings.sessions;
    let config = WsSessionConfig {
        heartbeat: Settings::seconds(s.ws_heartbeat_seconds),
        timeout: Settings::seconds(s.ws_timeout_seconds),
        write_deadline: Settings::seconds(s.write_timeout_seconds),
        queue_capacity: state.settings.bus.queue_capacity,
        format,
    };
    WsSession::new(
        session,
        stream,
        state.bus.clone(),
        filters,
        config,
        state.telemetry.clone(),
    )
    .start();
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_topics_are_all_kept_once() {
        let q = StreamQuery::parse(
            "topic=devices%2F%2B%2Fmetrics&topic=attackers/%23&topic=attackers/%23&x=1",
        )
        .unwrap();
        let topics: Vec<&str> = q.topics.iter().map(TopicFilter::as_str).collect();
        assert_eq!(topics, vec!["devices/+/metrics", "attackers/#"]);
    }

    #[test]
    fn a_bad_filter_is_a_400_naming_it() {
        let err = StreamQuery::parse("topic=a/%23/b").unwrap_err();
        assert!(err.to_string().contains("a/#/b"));
    }

    #[test]
    fn the_legacy_token_is_checked_only_when_set() {
        let open = Settings::from_toml("").unwrap();
        assert!(legacy_token_ok(&open, None));
        let locked = Settings::from_toml("[auth]\nws_token = \"s3cret\"").unwrap();
        assert!(legacy_token_ok(&locked, Some("s3cret")));
        assert!(!legacy_token_ok(&locked, Some("s3cre")));
        assert!(!legacy_token_ok(&locked, None));
    }
}
