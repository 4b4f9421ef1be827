//! `/v1/transfers`: thin translations onto the transfer actor's messages,
//! built as typed commands.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;
use troupe_actors::transfer::{Command, StartPayload, TransferView};
use troupe_actors::{ActorId, AnyCommand, ErrorCode};

use super::body::JsonBody;
use super::context::RequestMeta;
use super::error::ApiError;
use super::openapi::{ErrorBody, TransferRequest};
use super::{deliver, deliver_transfer_read, method_not_allowed, parse_id, typed, Reader, Shape};
use crate::auth::{Auth, Denial, Grant};
use crate::runtime::Runtime;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/transfers")
            .route(web::post().to(start))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/transfers/{id}")
            .route(web::get().to(get))
            .default_service(web::to(method_not_allowed)),
    );
}

/// Move money between two accounts, all or nothing.
///
/// The transfer's `id` is its idempotency key: the same id with the same
/// body replays the outcome. Without an id, one is derived from the
/// `Idempotency-Key` header when given, else generated.
#[utoipa::path(post, path = "/v1/transfers", operation_id = "startTransfer", tag = "transfers", request_body = TransferRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Used as the transfer's identity when the body has no id")),
    responses(
        (status = 201, description = "Completed", body = TransferView),
        (status = 422, description = "Failed: the body carries the transfer with its reason", body = ErrorBody),
        (status = 202, description = "Still pending at the request's deadline, and durable: it completes or is refunded on its own (GET it by its id)", body = TransferView)))]
pub async fn start(
    rt: web::Data<Runtime>,
    meta: RequestMeta,
    body: JsonBody,
    req: HttpRequest,
    grant: Option<web::ReqData<Grant>>,
    auth: Option<web::Data<Auth>>,
) -> Result<HttpResponse, ApiError> {
    let mut payload = body.0;
    let Value::Object(fields) = &mut payload else {
        return Err(meta.error(ErrorCode::InvalidRequest, "the body must be a JSON object"));
    };
    let id = match fields.remove("id") {
        Some(Value::String(id)) => parse_id(&meta, id)?,
        Some(other) => {
            return Err(meta.error(
                ErrorCode::InvalidRequest,
                format!("id must be a string, got {other}"),
            ))
        }
        None => derived_id(meta.idempotency_key.as_deref()),
    };
    // The transfer's id is its idempotency key: the transfer actor binds
    // the id to the first body it sees, durably and with no expiry. A
    // separate idempotency record would only be a second, weaker binding,
    // so none is sent.
    let StartPayload { from, to, amount } = typed(&meta, payload)?;
    // A key limited to an id prefix moves money only between its own
    // accounts, under a transfer id of its own.
    if let (Some(grant), Some(auth)) = (grant, auth) {
        if ![&id, &from, &to].iter().all(|i| grant.permits(i.as_str())) {
            return Err(auth.deny(&req, Some(&grant), Denial::Ids));
        }
    }
    let command = AnyCommand::Transfer(Command::Start { from, to, amount });
    deliver(&rt, &meta, id, command, None, Shape::Resource).await
}

/// A transfer id from an idempotency key (stable), or a fresh one.
fn derived_id(key: Option<&str>) -> ActorId {
    let uuid = match key {
        Some(key) => uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes()),
        None => uuid::Uuid::new_v4(),
    };
    // A hyphenated UUID is always a valid id.
    ActorId::parse(uuid.to_string()).unwrap_or_else(|_| unreachable!("a UUID is a valid id"))
}

#[utoipa::path(get, path = "/v1/transfers/{id}", operation_id = "getTransfer", tag = "transfers",
    responses((status = 200, body = TransferView), (status = 404, body = ErrorBody)))]
pub async fn get(
    rt: web::Data<Runtime>,
    meta: RequestMeta,
    id: web::Path<String>,
    req: HttpRequest,
    grant: Option<web::ReqData<Grant>>,
    auth: Option<web::Data<Auth>>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&meta, id.into_inner())?;
    let reader = Reader {
        grant,
        auth,
        req: &req,
    };
    deliver_transfer_read(&rt, &meta, id, Shape::Resource, reader).await
}
