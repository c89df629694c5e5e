//! `PUT /v1/episodes/{host_id}/{episode_id}.tar.zst` (publisher): the seed
//! receiver's wire contract, status for status and body for body, so its
//! shipper works unchanged:
//!
//! | answer | when |
//! |---|---|
//! | 201 `{"status":"stored","sha256","size_bytes"}` | stored |
//! | 200 `{"status":"already-present","sha256"}` | the same id with the same hash |
//! | 409 `{"status":"conflict","existing_sha256"}` | the same id with another hash |
//! | 400 `{"status":"sha-mismatch","actual_sha256"}` | the body is not what its header says; nothing kept |
//! | 400 `{"error"}` | bad suffix, id, `X-Content-SHA256`, `X-Schema-Version`; the version gate's missing/bad commit |
//! | 412 | the version gate: a commit outside the allowed window |
//! | 413 `{"error":"episode exceeds max size"}` | `Content-Length` or the body over `uploads.max_bytes` |
//!
//! and edgebus's own bounds: 429 (`Retry-After`) past the concurrent
//! uploads, 408 for a body that stalls, 507 when the store is full, 503
//! when it is unreachable. Every answer given after authentication, for a
//! valid host id, is also an event on `uploads/{host}`
//! ([`crate::uploads`] has the rest).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use edgebus_actors::event::{now_ms, Body, Draft};
use edgebus_actors::families;
use edgebus_actors::frame::DeviceId;

use super::publish::put_on_bus;
use super::streams::authorization;
use super::AppState;
use crate::auth::Role;
use crate::error::ApiError;
use crate::host_health::validate_host;
use crate::uploads::gate;
use crate::uploads::request::{self, RequestError};
use crate::uploads::{Outcome, Upload, UploadError};

/// Seconds a client refused for being one upload too many waits.
const BUSY_RETRY_AFTER_SECS: u64 = 5;

/// One answer: its status, its body, and what the event says of it.
struct Answer {
    status: StatusCode,
    body: Value,
    /// The event's `status` word.
    word: &'static str,
    /// What the event adds (hash, size, reason).
    detail: Map<String, Value>,
}

impl Answer {
    fn new(status: StatusCode, word: &'static str, body: Value) -> Self {
        Self {
            status,
            body,
            word,
            detail: Map::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(key.into(), value.into());
        self
    }

    fn refused(status: StatusCode, word: &'static str, error: impl std::fmt::Display) -> Self {
        let error = error.to_string();
        Self::new(status, word, json!({ "error": error })).with("reason", error)
    }

    fn from_outcome(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Stored { sha256, size_bytes } => Self::new(
                StatusCode::CREATED,
                "stored",
                json!({"status": "stored", "sha256": sha256, "size_bytes": size_bytes}),
            )
            .with("sha256", sha256)
            .with("size_bytes", size_bytes),
            Outcome::AlreadyPresent { sha256 } => Self::new(
                StatusCode::OK,
                "already-present",
                json!({"status": "already-present", "sha256": sha256}),
            )
            .with("sha256", sha256),
            Outcome::Conflict { existing_sha256 } => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                json!({"status": "conflict", "existing_sha256": existing_sha256}),
            )
            .with("sha256", existing_sha256)
            .with("reason", "another upload with this id has a different hash"),
            Outcome::ShaMismatch { actual_sha256 } => Self::new(
                StatusCode::BAD_REQUEST,
                "sha-mismatch",
                json!({"status": "sha-mismatch", "actual_sha256": actual_sha256}),
            )
            .with("sha256", actual_sha256)
            .with("reason", "the body's SHA-256 differs from X-Content-SHA256"),
        }
    }

    fn from_error(e: UploadError) -> Self {
        match e {
            UploadError::Request(r) => Self::refused(StatusCode::BAD_REQUEST, "bad-request", r),
            UploadError::TooLarge => Self::refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                UploadError::TooLarge,
            ),
            e @ UploadError::Busy(_) => Self::refused(StatusCode::TOO_MANY_REQUESTS, "busy", e),
            e @ UploadError::Timeout(_) => Self::refused(StatusCode::REQUEST_TIMEOUT, "timeout", e),
            e @ UploadError::Full(_) => Self::refused(StatusCode::INSUFFICIENT_STORAGE, "full", e),
            e @ UploadError::Body(_) => Self::refused(StatusCode::BAD_REQUEST, "bad-request", e),
            e @ UploadError::Unavailable(_) => {
                log::warn!("Upload refused: {e}.");
                Self::refused(StatusCode::SERVICE_UNAVAILABLE, "error", e)
            }
            UploadError::Internal(cause) => {
                log::error!("Upload failed: {cause}.");
                Self::refused(StatusCode::INTERNAL_SERVER_ERROR, "error", "internal error")
            }
        }
    }

    fn response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        match self.status {
            StatusCode::TOO_MANY_REQUESTS => {
                response.insert_header(("Retry-After", BUSY_RETRY_AFTER_SECS.to_string()));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                response.insert_header((
                    "Retry-After",
                    crate::redis_link::RETRY_AFTER_SECS.to_string(),
                ));
            }
            _ => {}
        }
        response.json(&self.body)
    }
}

/// What the request said about itself, for its event, as far as it was read.
#[derive(Default)]
struct Seen {
    episode: Option<DeviceId>,
    schema_version: Option<i64>,
    commit: Option<String>,
    stamped: bool,
    episode_type: Option<String>,
    benign_profile: Option<String>,
}

pub async fn put(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.auth.require(authorization(&req), Role::Publisher)?;
    let Some(uploads) = state.uploads.clone() else {
        return Err(ApiError::NotFound(
            "uploads are off (uploads.enabled = false)".into(),
        ));
    };
    let (host, file) = path.into_inner();
    let mut seen = Seen::default();
    let upload = read(&req, &host, &file, &state, &mut seen).await;
    // Received, answered and published as one task of its own: a client
    // that hangs up mid-body ends the body (refused, its bytes given back,
    // its temporary object removed) instead of cancelling the upload
    // half-way through its bookkeeping.
    let task = actix_web::rt::spawn(async move {
        let answer = match upload {
            Ok(upload) => match uploads.receive(&upload, body).await {
                Ok(outcome) => Answer::from_outcome(outcome),
                Err(e) => Answer::from_error(e),
            },
            Err(answer) => answer,
        };
        uploads.metrics.answered(answer.word);
        uploads
            .metrics
            .stored_bytes
            .set(uploads.used_bytes() as i64);
        // A host id that is not one names no topic: the answer alone says it.
        if let Ok(host) = validate_host(&host) {
            publish_event(&state, &host, &seen, &answer);
        }
        answer.response()
    });
    task.await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the upload task failed: {e}")))
}

/// The request's names and headers, in the seed's order of checks.
async fn read(
    req: &HttpRequest,
    host: &str,
    file: &str,
    state: &AppState,
    seen: &mut Seen,
) -> Result<Upload, Answer> {
    let settings = &state.settings.uploads;
    let headers = req.headers();
    // A value that is not text is a commit in a bad format, not a missing one.
    let raw_commit = headers
        .get(settings.version_gate.header.as_str())
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let commit = gate::normalize_commit(raw_commit);
    seen.stamped = commit.is_some();
    seen.commit = commit.clone().filter(|c| gate::is_commit_hex(c));
    let bad = |e: RequestError| Answer::from_error(UploadError::Request(e));
    let (host, episode) = request::parse_names(host, file).map_err(bad)?;
    seen.episode = Some(episode.clone());
    let sha256 = request::parse_sha(headers).map_err(bad)?;
    let schema_version = request::parse_schema_version(headers).map_err(bad)?;
    seen.schema_version = Some(schema_version);
    if let Some(gate) = &state.version_gate {
        let (gate, raw) = (gate.clone(), raw_commit.map(str::to_owned));
        let checked = web::block(move || gate.check(raw.as_deref()))
            .await
            .map_err(|e| Answer::from_error(UploadError::Internal(e.to_string())))?;
        checked.map_err(|refusal| {
            log::warn!(
                "Rejected upload host={host} id={episode} commit={} reason={}.",
                commit
                    .as_deref()
                    .unwrap_or("")
                    .chars()
                    .take(12)
                    .collect::<String>(),
                refusal.as_str()
            );
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
            Answer::new(status, refusal.as_str(), refusal.body()).with("reason", refusal.error())
        })?;
    }
    let label = |name: &str, allowed| match request::closed_label(headers, name, allowed) {
        Ok(value) => value,
        Err(dropped) => {
            log::warn!("Dropping unknown {name}={dropped:?} host={host} id={episode}.");
            None
        }
    };
    seen.episode_type = label("x-episode-type", &settings.episode_types);
    seen.benign_profile = label("x-benign-profile", &settings.benign_profiles);
    let declared = request::parse_content_length(headers).map_err(bad)?;
    if declared.is_some_and(|n| n > settings.max_bytes) {
        return Err(Answer::from_error(UploadError::TooLarge));
    }
    Ok(Upload {
        host,
        episode,
        sha256,
        schema_version,
        commit: seen.commit.clone(),
        episode_type: seen.episode_type.clone(),
        benign_profile: seen.benign_profile.clone(),
    })
}

/// The answer as an `uploads/{host}` event (`upload.stored`,
/// `upload.duplicate` or `upload.refused`), sent without holding up the
/// answer; a bus or stream that cannot take it counts it as dropped.
fn publish_event(state: &web::Data<AppState>, host: &DeviceId, seen: &Seen, answer: &Answer) {
    let mut payload = Map::new();
    payload.insert("host_id".into(), host.as_str().into());
    if let Some(episode) = &seen.episode {
        payload.insert("episode_id".into(), episode.as_str().into());
    }
    payload.insert("status".into(), answer.word.into());
    payload.insert("http_status".into(), answer.status.as_u16().into());
    for (key, value) in &answer.detail {
        payload.insert(key.clone(), value.clone());
    }
    if let Some(v) = seen.schema_version {
        payload.insert("schema_version".into(), v.into());
    }
    if let Some(commit) = &seen.commit {
        payload.insert("commit".into(), commit.as_str().into());
    }
    payload.insert("stamped".into(), seen.stamped.into());
    if let Some(t) = &seen.episode_type {
        payload.insert("episode_type".into(), t.as_str().into());
    }
    if let Some(p) = &seen.benign_profile {
        payload.insert("benign_profile".into(), p.as_str().into());
    }
    let name = match answer.status {
        StatusCode::CREATED => families::UPLOAD_STORED,
        StatusCode::OK => families::UPLOAD_DUPLICATE,
        _ => families::UPLOAD_REFUSED,
    };
    let draft = Draft::new(
        families::uploads_topic(host.as_str()),
        now_ms(),
        Body::Object(payload),
    )
    .with_event_name(name);
    let state = state.clone();
    actix_web::rt::spawn(async move {
        if let Err(e) = put_on_bus(&state, draft).await {
            log::warn!("An upload event was not published: {e}.");
        }
    });
}
