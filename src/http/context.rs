//! Per-request context: ids, deadline and idempotency key.
//!
//! The root span gives every request an id (the client's `X-Request-Id`
//! when it is usable, else a new one) and a trace id (OpenTelemetry's, which
//! follows `traceparent`), leaves both in the request's extensions for
//! handlers and error bodies, and a small middleware echoes the request id.
//! Nothing else runs per request: the hot path stays small.

use std::future::{ready, Ready};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use opentelemetry::global;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use tokio::time::Instant;
use tracing::field::Empty;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
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
    /// The client's `X-Request-Id` when usable, else a new one; the trace
    /// id of `otel` (the root span's context) when OpenTelemetry is on, else
    /// the caller's `traceparent`'s, else a new one.
    fn new(headers: &HeaderMap, otel: &SpanContext) -> Self {
        let request_id = headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let trace_id = if otel.is_valid() {
            otel.trace_id().to_string()
        } else {
            headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(trace_id_of)
                .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
        };
        Self {
            request_id,
            trace_id,
        }
    }

    /// The ids of the request, or fresh ones outside the middleware.
    pub fn of(req: &HttpRequest) -> Self {
        req.extensions()
            .get::<Self>()
            .cloned()
            .unwrap_or_else(|| Self::new(req.headers(), &SpanContext::empty_context()))
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace, _span) = (parts.next()?, parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32))
        .then_some(trace)
}

/// Reads W3C trace context from actix's header map.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The root span of every request, for tracing-actix-web's `TracingLogger`:
/// lean (a handful of fields, no log line per request), a child of the
/// caller's trace when `traceparent` is present, and the place where the
/// request and trace ids are decided.
pub struct RootSpan;

impl RootSpanBuilder for RootSpan {
    fn on_request_start(req: &ServiceRequest) -> tracing::Span {
        let route = req
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let method = req.method().as_str();
        // Without trace export the ids come from the headers alone, so the
        // span is built once with all its fields: each later `record` makes
        // the log layer format the span's fields again, on every request.
        if crate::telemetry::span_counters().is_none() {
            let ids = RequestIds::new(req.headers(), &SpanContext::empty_context());
            // `otel.*` fields only name the span for export: not here.
            let span = tracing::info_span!(
                "HTTP request",
                http.method = %method,
                http.route = %route,
                request_id = ids.request_id.as_str(),
                trace_id = ids.trace_id.as_str(),
                span_id = %format_args!("{:016x}", uuid::Uuid::new_v4().as_u64_pair().0),
            );
            req.extensions_mut().insert(ids);
            return span;
        }
        let span = tracing::info_span!(
            "HTTP request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = Empty,
            http.method = %method,
            http.route = %route,
            http.status_code = Empty,
            request_id = Empty,
            trace_id = Empty,
            span_id = Empty,
        );
        if req.headers().contains_key("traceparent") {
            let parent = global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
            let _ = span.set_parent(parent);
        }
        // One look at the OpenTelemetry context serves both ids.
        let span_context = span.context().span().span_context().clone();
        let ids = RequestIds::new(req.headers(), &span_context);
        span.record("request_id", ids.request_id.as_str());
        span.record("trace_id", ids.trace_id.as_str());
        let span_id = if span_context.is_valid() {
            span_context.span_id().to_string()
        } else {
            format!("{:016x}", uuid::Uuid::new_v4().as_u64_pair().0)
        };
        span.record("span_id", span_id.as_str());
        req.extensions_mut().insert(ids);
        span
    }

    /// Records the status on the span (with trace export: without it
    /// nothing reads it). A `500` (a bug: a panic, a corrupt
    /// record) also writes one error line inside the span, so it carries the
    /// request's ids. Nothing else writes a line: client errors, and the
    /// `503`/`504` a client or an outage can cause by the thousand (a store
    /// away, `X-Request-Timeout: 1`), are counted in `/metrics` and visible
    /// in traces, and must not flood the log.
    fn on_request_end<B: MessageBody>(
        span: tracing::Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        let (status, error) = match outcome {
            Ok(response) => (
                response.status(),
                response.response().error().map(ToString::to_string),
            ),
            Err(error) => (
                error.as_response_error().status_code(),
                Some(error.to_string()),
            ),
        };
        // The status goes on the span for trace export; without export
        // nothing reads it (the one error line below carries it).
        if crate::telemetry::span_counters().is_some() {
            DefaultRootSpanBuilder::on_request_end(span.clone(), outcome);
        }
        if status == actix_web::http::StatusCode::INTERNAL_SERVER_ERROR {
            let error = error.unwrap_or_else(|| status.to_string());
            span.in_scope(|| {
                tracing::error!(http.status_code = status.as_u16(), error.message = %error, "request failed");
            });
        }
    }
}

/// Middleware: echoes the request id as `X-Request-Id`.
///
/// # Errors
/// Only those of the inner service.
pub async fn request_ids(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let echo = req
        .extensions()
        .get::<RequestIds>()
        .and_then(|ids| HeaderValue::from_str(&ids.request_id).ok());
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
        // Keys apply to POSTs only: a GET or PUT ignores the header.
        let keyed = req.method() == actix_web::http::Method::POST;
        let idempotency_key = match req.headers().get(IDEMPOTENCY_KEY).filter(|_| keyed) {
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
