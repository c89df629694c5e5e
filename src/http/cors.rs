//! CORS (`http.cors_origins`): lets a GUI served from another origin call
//! the HTTP API and read SSE streams. Off while the list is empty.
//!
//! Credentials travel in `Authorization` headers (or `?ticket=`), never
//! cookies, so credentialed CORS stays off: a listed page can send what it
//! holds, and no page can ride on what a browser keeps. A request from an
//! origin not listed is served as before, only without the headers that
//! would let a browser hand the answer to that page; requests from
//! edgebus's own page and from non-browsers are not affected.

use actix_cors::Cors;
use actix_web::http::header;
use actix_web::middleware::Condition;

use crate::cis490::LAB_HOST_HEADER;
use crate::settings::Settings;

/// The request headers edgebus reads that a page may need to send.
const ALLOWED_HEADERS: [&str; 9] = [
    "authorization",
    "content-type",
    "last-event-id",
    "idempotency-key",
    "x-content-sha256",
    "x-schema-version",
    "x-episode-type",
    "x-benign-profile",
    LAB_HOST_HEADER,
];

/// Response headers a page may read beyond the CORS-safelisted ones.
const EXPOSED_HEADERS: [header::HeaderName; 3] =
    [header::RETRY_AFTER, header::WWW_AUTHENTICATE, header::ETAG];

/// The CORS middleware for `settings`, enabled only when
/// `http.cors_origins` names an origin (or is `["*"]`).
pub fn cors(settings: &Settings) -> Condition<Cors> {
    let http = &settings.http;
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "PUT"])
        .allowed_headers(ALLOWED_HEADERS)
        .expose_headers(EXPOSED_HEADERS)
        .max_age(http.cors_max_age_seconds);
    let gate_header = settings.uploads.version_gate.header.as_str();
    if let Ok(name) = header::HeaderName::from_bytes(gate_header.as_bytes()) {
        cors = cors.allowed_header(name);
    }
    if http.cors_origins.iter().any(|o| o == "*") {
        // With credentials off a literal `*` says what is meant, and no
        // response varies by the asking origin.
        cors = cors.allow_any_origin().send_wildcard();
    } else {
        for origin in &http.cors_origins {
            cors = cors.allowed_origin(origin);
        }
    }
    Condition::new(!http.cors_origins.is_empty(), cors)
}
