//! The API's error shape, and the one place where every error of every
//! layer becomes an HTTP status and a body:
//! `{"error": {"code", "message", "request_id", "trace_id"}}`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde_json::{json, Value};
use troupe_actors::{ErrorCode, Rejection};

use super::context::RequestIds;
use super::HttpLimits;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Fields merged beside `error` (a failed transfer's state).
    pub details: Option<Value>,
    pub ids: RequestIds,
    pub retry_after_s: u64,
    /// The error repeats an earlier answer (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

impl ApiError {
    pub fn new(
        code: ErrorCode,
        message: impl Into<String>,
        ids: &RequestIds,
        retry_after_s: u64,
    ) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
            ids: ids.clone(),
            retry_after_s,
            replayed: false,
        }
    }

    /// For errors raised before a handler runs (extractors, routing).
    pub fn for_request(req: &HttpRequest, code: ErrorCode, message: impl Into<String>) -> Self {
        let ids = RequestIds::of(req);
        let retry = req
            .app_data::<actix_web::web::Data<HttpLimits>>()
            .map_or(1, |l| l.retry_after_s);
        Self::new(code, message, &ids, retry)
    }

    pub fn from_rejection(r: Rejection, ids: &RequestIds, retry_after_s: u64) -> Self {
        Self {
            code: r.code,
            message: r.message,
            details: r.details,
            ids: ids.clone(),
            retry_after_s,
            replayed: false,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::AlreadyExists => StatusCode::CONFLICT,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::InsufficientFunds
        | ErrorCode::CurrencyMismatch
        | ErrorCode::SameAccount
        | ErrorCode::LimitExceeded
        | ErrorCode::IdempotencyKeyReused
        | ErrorCode::AccountNotFound => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal | ErrorCode::Corrupt => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        status_of(self.code)
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = match &self.details {
            Some(Value::Object(fields)) => Value::Object(fields.clone()),
            _ => json!({}),
        };
        body["error"] = json!({
            "code": self.code.as_str(),
            "message": self.message,
            "request_id": self.ids.request_id,
            "trace_id": self.ids.trace_id,
        });
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self.code, ErrorCode::Overloaded | ErrorCode::Unavailable) {
            response.insert_header((header::RETRY_AFTER, self.retry_after_s.to_string()));
        }
        if self.code == ErrorCode::Unauthorized {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"troupe\""));
        }
        if self.replayed {
            response.insert_header((super::IDEMPOTENT_REPLAYED, "true"));
        }
        response.json(body)
    }
}
