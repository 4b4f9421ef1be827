//! Per-request context: ids, deadline and idempotency key.
//!
//! A small middleware gives every request an id (the client's
//! `X-Request-Id` when it is usable, else a new one) and a trace id (from
//! `traceparent` when present), echoes the request id back, and leaves both
//! in the request's extensions for handlers and error bodies. It does no
//! other work: per-request cost on the hot path stays small.

use std::future::{ready, Ready};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use tokio::time::Instant;
use troupe_actors::ErrorCode;

use super::error::ApiError;
use super::HttpLimits;
use crate::runtime::Runtime;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_REQUEST_TIMEOUT: &str = "x-request-timeout";
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Debug, Clone)]
pub struct RequestIds {
    pub request_id: String,
    pub trace_id: String,
}

impl RequestIds {
    fn from_headers(headers: &HeaderMap) -> Self {
        let request_id = headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let trace_id = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(trace_id_of)
            .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
        Self {
            request_id,
            trace_id,
        }
    }

    /// The ids the middleware stored, or fresh ones outside it.
    pub fn of(req: &HttpRequest) -> Self {
        req.extensions()
            .get::<Self>()
            .cloned()
            .unwrap_or_else(|| Self::from_headers(req.headers()))
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace, _span) = (parts.next()?, parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32))
        .then_some(trace)
}

/// Middleware: request and trace ids in, `X-Request-Id` out.
///
/// # Errors
/// Only those of the inner service.
pub async fn request_ids(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let ids = RequestIds::from_headers(req.headers());
    let echo = HeaderValue::from_str(&ids.request_id).ok();
    req.extensions_mut().insert(ids);
    let mut response = next.call(req).await?;
    if let Some(echo) = echo {
        response.headers_mut().insert(X_REQUEST_ID, echo);
    }
    Ok(response)
}

/// What a handler needs besides its path and body.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub ids: RequestIds,
    pub deadline: Instant,
    pub idempotency_key: Option<String>,
    pub retry_after_s: u64,
}

impl RequestMeta {
    pub fn error(&self, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::new(code, message, &self.ids, self.retry_after_s)
    }

    fn parse(req: &HttpRequest) -> Result<Self, ApiError> {
        let ids = RequestIds::of(req);
        let retry_after_s = req
            .app_data::<web::Data<HttpLimits>>()
            .map_or(1, |l| l.retry_after_s);
        let invalid = |message: String| {
            ApiError::new(ErrorCode::InvalidRequest, message, &ids, retry_after_s)
        };
        let timeout = match req.headers().get(X_REQUEST_TIMEOUT) {
            None => None,
            Some(v) => {
                let ms = v
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .filter(|ms| *ms > 0);
                Some(Duration::from_millis(ms.ok_or_else(|| {
                    invalid(
                        "X-Request-Timeout must be a positive integer number of milliseconds"
                            .into(),
                    )
                })?))
            }
        };
        let idempotency_key = match req.headers().get(IDEMPOTENCY_KEY) {
            None => None,
            Some(v) => {
                let key = v.to_str().ok().filter(|k| {
                    !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic())
                });
                Some(
                    key.ok_or_else(|| {
                        invalid("Idempotency-Key must be 1 to 128 visible ASCII characters".into())
                    })?
                    .to_owned(),
                )
            }
        };
        let deadline = match req.app_data::<web::Data<Runtime>>() {
            Some(runtime) => runtime.deadline(timeout),
            None => Instant::now() + timeout.unwrap_or(Duration::from_secs(5)),
        };
        Ok(Self {
            ids,
            deadline,
            idempotency_key,
            retry_after_s,
        })
    }
}

impl FromRequest for RequestMeta {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Self::parse(req))
    }
}
