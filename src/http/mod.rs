//! The HTTP layer: routes translate a request into a message for an actor
//! and the actor's answer into a response. Nothing here holds business
//! state.

mod accounts;
mod actors;
mod body;
pub mod context;
mod error;
mod openapi;
pub mod ops;
mod transfers;

use actix_web::http::header::HeaderName;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use troupe_actors::kinds::{self, ParseFailure};
use troupe_actors::payload::payload;
use troupe_actors::{ActorId, Address, AnyCommand, ErrorCode, Kind, Status};

pub use context::RequestIds;
pub use error::ApiError;
pub use openapi::{document_json, DOCS, DOCUMENT};

use crate::auth::{Auth, Denial, Grant};
use crate::runtime::{Answer, IdempotencyRequest, Runtime};
use context::RequestMeta;

pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// HTTP limits handlers and extractors read from app data.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub retry_after_s: u64,
}

/// Registers every route of API.md.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PathConfig::default().error_handler(|e, req| {
        ApiError::for_request(req, ErrorCode::InvalidRequest, format!("bad path: {e}")).into()
    }))
    .app_data(web::QueryConfig::default().error_handler(|e, req| {
        ApiError::for_request(
            req,
            ErrorCode::InvalidRequest,
            format!("bad query string: {e}"),
        )
        .into()
    }))
    .configure(accounts::routes)
    .configure(transfers::routes)
    .configure(actors::routes)
    .configure(ops::routes)
    .configure(openapi::routes);
}

/// The answer to a request for a path no route has.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::for_request(
        &req,
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

/// The answer to a method a resource does not accept.
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::for_request(
        &req,
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.path()),
    ))
}

/// How a successful reply is laid out.
#[derive(Clone, Copy)]
enum Shape {
    /// The reply's body, `201` when the actor created something.
    Resource,
    /// `200 {"reply": ...}`, for the actor API.
    Wrapped,
}

fn parse_id(meta: &RequestMeta, raw: String) -> Result<ActorId, ApiError> {
    ActorId::parse(raw).map_err(|e| meta.error(ErrorCode::InvalidRequest, e.to_string()))
}

/// The client's idempotency request for `message` with `payload`, when the
/// request carries a key.
fn keyed(meta: &RequestMeta, message: &str, payload: &Value) -> Option<IdempotencyRequest> {
    meta.idempotency_key
        .clone()
        .map(|key| IdempotencyRequest::new(key, message, payload))
}

/// A typed payload from a JSON body, parsed strictly; refused in the API's
/// error shape.
fn typed<T: serde::de::DeserializeOwned>(meta: &RequestMeta, body: Value) -> Result<T, ApiError> {
    payload::<T>(body).map_err(|e| meta.error(ErrorCode::InvalidRequest, e.to_string()))
}

/// Sends a message by kind and name with a JSON payload (the actor API).
async fn send(
    runtime: &Runtime,
    meta: &RequestMeta,
    kind: Kind,
    id: ActorId,
    message: &str,
    payload: Value,
    shape: Shape,
) -> Result<HttpResponse, ApiError> {
    let idempotency = keyed(meta, message, &payload);
    let command = kinds::parse(kind, message, payload).map_err(|e| match e {
        ParseFailure::UnknownMessage { .. } => meta.error(ErrorCode::NotFound, e.to_string()),
        ParseFailure::Invalid(e) => meta.error(ErrorCode::InvalidRequest, e.to_string()),
    })?;
    deliver(runtime, meta, id, command, idempotency, shape).await
}

/// Sends one typed command and turns the answer into a response.
async fn deliver(
    runtime: &Runtime,
    meta: &RequestMeta,
    id: ActorId,
    command: AnyCommand,
    idempotency: Option<IdempotencyRequest>,
    shape: Shape,
) -> Result<HttpResponse, ApiError> {
    let address = Address::new(command.kind(), id);
    // `trace`, not `debug`: one line per request is not what `troupe=debug`
    // (development's default) should cost every request.
    tracing::trace!(actor.kind = address.kind.as_str(), actor.id = %address.id, message = command.name(), "sending");
    let answer = runtime
        .ask(address, command, meta.deadline, idempotency)
        .await;
    respond(answer, meta, shape)
}

/// Who asks, for reads whose answer must be within the caller's ids: a
/// transfer read by a key limited to a prefix must be between accounts
/// within it, not only carry an id within it.
struct Reader<'a> {
    grant: Option<web::ReqData<Grant>>,
    auth: Option<web::Data<Auth>>,
    req: &'a HttpRequest,
}

/// As [`deliver`] for reading a transfer: with a key limited to a prefix,
/// both of its accounts must be within it.
async fn deliver_transfer_read(
    runtime: &Runtime,
    meta: &RequestMeta,
    id: ActorId,
    shape: Shape,
    reader: Reader<'_>,
) -> Result<HttpResponse, ApiError> {
    let command = AnyCommand::Transfer(troupe_actors::transfer::Command::Get);
    let (Some(grant), Some(auth)) = (reader.grant, reader.auth) else {
        return deliver(runtime, meta, id, command, None, shape).await;
    };
    if grant.ids.is_none() {
        return deliver(runtime, meta, id, command, None, shape).await;
    }
    let answer = runtime
        .ask(
            Address::new(Kind::Transfer, id),
            command,
            meta.deadline,
            None,
        )
        .await;
    if let Ok(reply) = &answer.outcome {
        let within = ["from", "to"].iter().all(|field| {
            reply
                .body
                .get(field)
                .and_then(Value::as_str)
                .is_some_and(|account| grant.permits(account))
        });
        if !within {
            return Err(auth.deny(reader.req, Some(&grant), Denial::Ids));
        }
    }
    respond(answer, meta, shape)
}

fn respond(answer: Answer, meta: &RequestMeta, shape: Shape) -> Result<HttpResponse, ApiError> {
    let Answer { outcome, replayed } = answer;
    match outcome {
        Ok(reply) => {
            let mut response = match (shape, reply.status) {
                (Shape::Resource, Status::Created) => HttpResponse::Created(),
                (Shape::Resource, Status::Accepted) => HttpResponse::Accepted(),
                _ => HttpResponse::Ok(),
            };
            if replayed {
                response.insert_header((IDEMPOTENT_REPLAYED, "true"));
            }
            Ok(match shape {
                Shape::Resource => response.json(reply.body),
                Shape::Wrapped => response.json(json!({ "reply": reply.body })),
            })
        }
        Err(rejection) => {
            let mut error = ApiError::from_rejection(rejection, &meta.ids, meta.retry_after_s);
            error.replayed = replayed;
            Err(error)
        }
    }
}
