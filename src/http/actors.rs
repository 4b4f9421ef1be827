//! `/v1/actors`: the actor API for internal services. Any message of any
//! kind, by name, with a JSON payload; the REST routes are translations
//! onto the same messages, so both paths behave identically.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use troupe_actors::{kinds, ErrorCode, Kind};

use super::body::JsonBody;
use super::context::RequestMeta;
use super::error::ApiError;
use super::openapi::{ActorReply, ErrorBody};
use super::{deliver_transfer_read, method_not_allowed, parse_id, send, Reader, Shape};
use crate::auth::{Auth, Denial, Grant};
use crate::runtime::Runtime;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/actors")
            .route(web::get().to(catalog))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/actors/{kind}/{id}")
            .route(web::get().to(state))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/actors/{kind}/{id}/{message}")
            .route(web::post().to(message))
            .default_service(web::to(method_not_allowed)),
    );
}

/// The kinds, each with its messages and their payload schemas.
#[utoipa::path(get, path = "/v1/actors", tag = "actors", responses((status = 200, description = "{\"kinds\": [{\"kind\", \"messages\": [{\"name\", \"description\", \"payload\"}]}]}")))]
pub async fn catalog() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "kinds": kinds::catalog() }))
}

/// The actor's current state, read through its mailbox (its `get` message).
#[utoipa::path(get, path = "/v1/actors/{kind}/{id}", tag = "actors",
    responses((status = 200, body = ActorReply), (status = 404, body = ErrorBody)))]
pub async fn state(
    rt: web::Data<Runtime>,
    meta: RequestMeta,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    grant: Option<web::ReqData<Grant>>,
    auth: Option<web::Data<Auth>>,
) -> Result<HttpResponse, ApiError> {
    let (kind, id) = path.into_inner();
    let kind = known_kind(&meta, &kind)?;
    let id = parse_id(&meta, id)?;
    if kind == Kind::Transfer {
        let reader = Reader {
            grant,
            auth,
            req: &req,
        };
        return deliver_transfer_read(&rt, &meta, id, Shape::Wrapped, reader).await;
    }
    send(&rt, &meta, kind, id, "get", json!({}), Shape::Wrapped).await
}

/// Send `message` with the body as its payload.
#[utoipa::path(post, path = "/v1/actors/{kind}/{id}/{message}", tag = "actors",
    request_body(content = Option<serde_json::Value>, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = ActorReply), (status = 404, description = "Unknown kind or message", body = ErrorBody)))]
pub async fn message(
    rt: web::Data<Runtime>,
    meta: RequestMeta,
    path: web::Path<(String, String, String)>,
    body: JsonBody,
    req: HttpRequest,
    grant: Option<web::ReqData<Grant>>,
    auth: Option<web::Data<Auth>>,
) -> Result<HttpResponse, ApiError> {
    let (kind, id, message) = path.into_inner();
    let kind = known_kind(&meta, &kind)?;
    let id = parse_id(&meta, id)?;
    if let (Some(grant), Some(auth)) = (&grant, &auth) {
        // The actor's id was checked with the path; a transfer's accounts
        // are in its body.
        if grant.ids.is_some() && kind == Kind::Transfer {
            let accounts = ["from", "to"].map(|f| body.0.get(f).and_then(|v| v.as_str()));
            if !accounts.iter().all(|a| a.is_none_or(|a| grant.permits(a))) {
                return Err(auth.deny(&req, Some(grant), Denial::Ids));
            }
        }
    }
    // Reading a transfer as a message is reading it: its accounts too.
    if kind == Kind::Transfer && message == "get" {
        let reader = Reader {
            grant,
            auth,
            req: &req,
        };
        return deliver_transfer_read(&rt, &meta, id, Shape::Wrapped, reader).await;
    }
    send(&rt, &meta, kind, id, &message, body.0, Shape::Wrapped).await
}

fn known_kind(meta: &RequestMeta, kind: &str) -> Result<Kind, ApiError> {
    Kind::parse(kind)
        .ok_or_else(|| meta.error(ErrorCode::NotFound, format!("no actor kind {kind:?}")))
}
