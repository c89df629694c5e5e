//! What WebSocket and SSE stream requests share: the query (topics, `where`
//! predicates, ticket, resume id), authentication, the stream caps, and the
//! browser checks every state-changing request shares (`Origin`,
//! `Content-Type`).

use actix_web::http::header;
use actix_web::HttpRequest;

use edgebus_actors::subscription::{Predicate, Subscription};
use edgebus_actors::topic::TopicFilter;

use super::AppState;
use crate::auth::{AuthError, Identity, StreamAuth, StreamCredentials};
use crate::error::ApiError;
use crate::stream_slots::StreamHold;

/// Most `topic` parameters one request may name.
pub const MAX_TOPICS_PER_REQUEST: usize = 64;

/// The query of a stream request. Single-valued parameters given twice are
/// refused rather than guessed at (HTTP parameter pollution).
#[derive(Debug, Default, PartialEq)]
pub struct StreamQuery {
    pub topics: Vec<TopicFilter>,
    pub predicates: Vec<Predicate>,
    pub format: Option<String>,
    pub token: Option<String>,
    pub ticket: Option<String>,
    pub last_event_id: Option<String>,
}

fn once(slot: &mut Option<String>, name: &'static str, value: String) -> Result<(), ApiError> {
    if slot.is_some() {
        return Err(AuthError::Repeated(name).into());
    }
    *slot = Some(value);
    Ok(())
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
                    if out.topics.len() > MAX_TOPICS_PER_REQUEST {
                        return Err(ApiError::BadRequest(format!(
                            "at most {MAX_TOPICS_PER_REQUEST} topic filters per stream"
                        )));
                    }
                }
                "where" => {
                    let p = Predicate::parse(&value)
                        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                    out.predicates.push(p);
                }
                "format" => once(&mut out.format, "format", value.into_owned())?,
                "token" => once(&mut out.token, "token", value.into_owned())?,
                "ticket" => once(&mut out.ticket, "ticket", value.into_owned())?,
                "last_event_id" => {
                    once(&mut out.last_event_id, "last_event_id", value.into_owned())?
                }
                _ => {} // Unknown parameters (cache busters) are ignored.
            }
        }
        Ok(out)
    }

    /// Every topic with the request's predicates (which apply to all).
    pub fn subscriptions(&self) -> Result<Vec<Subscription>, ApiError> {
        self.topics
            .iter()
            .map(|t| {
                Subscription::with_predicates(t.clone(), self.predicates.clone())
                    .map_err(|e| ApiError::BadRequest(e.to_string()))
            })
            .collect()
    }

    /// `Last-Event-ID` (what a browser sends on its own reconnects) wins
    /// over `?last_event_id=` (what a page sets when it reconnects itself).
    pub fn resume(&self, req: &HttpRequest) -> Option<String> {
        req.headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| self.last_event_id.clone())
    }
}

pub fn authorization(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// Authenticates a stream request: 401/403 before anything else is looked
/// at, so an unknown device or attacker is only ever reported to a caller
/// who may see it.
pub async fn authenticate(
    req: &HttpRequest,
    state: &AppState,
    query: &StreamQuery,
    websocket: bool,
) -> Result<StreamAuth, ApiError> {
    let result = match state.auth.refuse_keys_in_url(req.query_string()) {
        Ok(()) => {
            let creds = StreamCredentials {
                authorization: authorization(req),
                ticket: query.ticket.as_deref(),
                token: query.token.as_deref(),
            };
            state.auth.stream_shared(&creds, websocket).await
        }
        Err(e) => Err(e),
    };
    result.map_err(|e| {
        state.telemetry.warn_limited("stream_unauthorized", || {
            format!("Refused a stream from {}: {e}.", peer(req))
        });
        e.into()
    })
}

/// Takes a slot under `sessions.max_streams_per_identity`, or for a shared
/// identity `sessions.max_streams_per_address` (429 when full). In cluster
/// mode a named identity's slot is then taken in Redis too (429 when the
/// cluster holds its cap, 503 when Redis is away).
pub async fn permit(
    req: &HttpRequest,
    state: &AppState,
    identity: &Identity,
) -> Result<StreamHold, ApiError> {
    let local = state
        .auth
        .acquire_stream(identity, req.peer_addr().map(|a| a.ip()))?;
    match &state.cluster {
        Some(cluster) => Ok(cluster.streams.acquire(identity, local).await?),
        None => Ok(StreamHold::local(local)),
    }
}

/// Whether `origin` is this server itself: what the `Host` header names,
/// whatever the scheme (TLS may end at a proxy).
fn same_origin(req: &HttpRequest, origin: &str) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
}

/// The `Origin` check (cross-site WebSocket hijacking, cross-site POSTs).
/// Requests without an `Origin` (curl, devices: not browsers) and requests
/// from edgebus's own page always pass. Other origins pass when listed in
/// `http.allowed_origins` or named in `http.cors_origins` (a GUI given CORS
/// must also be able to post); with both lists empty they pass only once
/// credentials are configured, since then a page elsewhere has nothing to
/// ride on (keys travel in headers, never cookies). In open mode an empty
/// list means "this origin only": otherwise any page the operator visits
/// could publish to, or read from, a local edgebus. A CORS `*` is no
/// listing here.
pub fn check_origin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let http = &state.settings.http;
    let allowed = &http.allowed_origins;
    let listed = |list: &[String]| list.iter().any(|a| a.trim_end_matches('/') == origin);
    if same_origin(req, origin) || listed(allowed) || listed(&http.cors_origins) {
        return Ok(());
    }
    if allowed.is_empty() && !state.auth.is_open() {
        return Ok(());
    }
    state.telemetry.warn_limited("foreign_origin", || {
        format!(
            "Refused a request from {} with Origin {:?}.",
            peer(req),
            origin.chars().take(100).collect::<String>()
        )
    });
    Err(ApiError::Forbidden(format!(
        "origin {:?} is not in http.allowed_origins",
        origin.chars().take(100).collect::<String>()
    )))
}

/// JSON bodies must say so: `text/plain` and form posts are what a page on
/// another origin can send without a CORS preflight, so refusing them (415)
/// closes that door whatever the mode.
pub fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be application/json (got {:?})",
            content_type.chars().take(100).collect::<String>()
        )))
    }
}

pub fn peer(req: &HttpRequest) -> String {
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default()
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
    fn a_bad_filter_or_predicate_is_a_400_naming_it() {
        let err = StreamQuery::parse("topic=a/%23/b").unwrap_err();
        assert!(err.to_string().contains("a/#/b"));
        let err = StreamQuery::parse("topic=a&where=nocolon").unwrap_err();
        assert!(err.to_string().contains("nocolon"));
    }

    #[test]
    fn predicates_apply_to_every_topic() {
        let q = StreamQuery::parse("topic=a/%23&topic=b&where=identity_uuid:i1").unwrap();
        let subs = q.subscriptions().unwrap();
        assert_eq!(subs.len(), 2);
        assert!(subs.iter().all(|s| s.predicates.len() == 1));
    }

    #[test]
    fn single_valued_parameters_given_twice_are_refused() {
        for q in [
            "ticket=a&ticket=b",
            "last_event_id=1&last_event_id=2",
            "token=a&token=a",
        ] {
            let err = StreamQuery::parse(q).unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{q}");
        }
    }
}
