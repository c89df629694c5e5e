//! One error type for the HTTP surface: every failure is JSON
//! `{"error": "…"}` with the right status. A 500's body stays generic while
//! the log gets the cause.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::auth::AuthError;
use crate::cluster_store::{StoreError, RETRY_AFTER_SECS};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Retry after this many seconds.
    #[error("{0}")]
    TooManyRequests(String, u64),
    #[error("{0}")]
    Unavailable(String),
    /// 503 with `Retry-After`: a store this request needs is unreachable
    /// for now; retry after this many seconds.
    #[error("{0}")]
    UnavailableRetry(String, u64),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::UnavailableRetry(..) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            log::error!("Request failed: {cause:#}.");
        }
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::TooManyRequests(_, after) | ApiError::UnavailableRetry(_, after) => {
                response.insert_header((header::RETRY_AFTER, after.to_string()));
            }
            // Something edgebus depends on (Redis, in cluster mode) is
            // briefly away: a client may try again shortly.
            ApiError::Unavailable(_) => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            _ => {}
        }
        response.json(json!({ "error": self.to_string() }))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let text = e.to_string();
        match e {
            AuthError::Forbidden(_) => ApiError::Forbidden(text),
            AuthError::TooManyStreams(..) => ApiError::TooManyRequests(text, 1),
            AuthError::OpeningTooFast(_, _, wait) => ApiError::TooManyRequests(text, wait),
            AuthError::TooManyTickets(..) | AuthError::TicketsFull(_) => {
                ApiError::TooManyRequests(text, 1)
            }
            AuthError::Random => ApiError::Internal(anyhow::anyhow!(text)),
            AuthError::Store(StoreError::Unavailable) => {
                ApiError::UnavailableRetry(text, RETRY_AFTER_SECS)
            }
            AuthError::Store(StoreError::Redis(_)) => ApiError::Internal(anyhow::anyhow!(text)),
            AuthError::Repeated(_) => ApiError::BadRequest(text),
            AuthError::Missing
            | AuthError::MissingToken
            | AuthError::InvalidToken
            | AuthError::InvalidKey
            | AuthError::Malformed
            | AuthError::KeyInUrl
            | AuthError::JwtInUrl
            | AuthError::Jwt(_)
            | AuthError::BadTicket => ApiError::Unauthorized(text),
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ApiError::Internal(anyhow::anyhow!("actor unavailable: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    #[actix_web::test]
    async fn errors_are_json_with_their_status() {
        let resp = ApiError::NotFound("unknown device \"x\"".into()).error_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = to_bytes(resp.into_body()).await.unwrap();
        assert_eq!(&body[..], br#"{"error":"unknown device \"x\""}"#);
    }

    #[actix_web::test]
    async fn internal_errors_do_not_leak_their_cause() {
        let resp = ApiError::Internal(anyhow::anyhow!("db password is hunter2")).error_response();
        let body = to_bytes(resp.into_body()).await.unwrap();
        assert_eq!(&body[..], br#"{"error":"internal error"}"#);
    }

    #[actix_web::test]
    async fn an_unavailable_store_says_when_to_retry() {
        let resp = ApiError::UnavailableRetry("store down".into(), 2).error_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers().get(header::RETRY_AFTER).unwrap(), "2");
        let body = to_bytes(resp.into_body()).await.unwrap();
        assert_eq!(&body[..], br#"{"error":"store down"}"#);
    }
}
