//! The JSON body extractor. actix's `web::Json` answers malformed bodies,
//! wrong content types and oversize payloads with its own plain-text
//! errors; this one answers them in the API's shape (400, 415, 413), takes
//! an empty body as `null` (so `PUT /v1/accounts/{id}` may omit it), and
//! stops reading as soon as the configured limit is passed.

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde_json::Value;
use troupe_actors::ErrorCode;

use super::error::ApiError;
use super::HttpLimits;

pub struct JsonBody(pub Value);

impl FromRequest for JsonBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let limit = req
                .app_data::<web::Data<HttpLimits>>()
                .map_or(64 * 1024, |l| l.max_body_bytes);
            let too_large = || {
                ApiError::for_request(
                    &req,
                    ErrorCode::PayloadTooLarge,
                    format!("the body is larger than {limit} bytes"),
                )
            };
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            if declared.is_some_and(|n| n > limit) {
                return Err(too_large());
            }
            let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0));
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| {
                    ApiError::for_request(
                        &req,
                        ErrorCode::InvalidRequest,
                        format!("could not read the body: {e}"),
                    )
                })?;
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(Self(Value::Null));
            }
            let json = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<mime::Mime>().ok())
                .is_some_and(|m| {
                    m.type_() == mime::APPLICATION
                        && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
                });
            if !json {
                return Err(ApiError::for_request(
                    &req,
                    ErrorCode::UnsupportedMediaType,
                    "bodies must be JSON with Content-Type: application/json",
                ));
            }
            serde_json::from_slice(&body).map(Self).map_err(|e| {
                ApiError::for_request(
                    &req,
                    ErrorCode::InvalidRequest,
                    format!("malformed JSON: {e}"),
                )
            })
        })
    }
}
