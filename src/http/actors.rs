//! `/v1/actors`: the actor API for internal services. Any message of any
//! kind, by name, with a JSON payload; the REST routes are translations
//! onto the same messages, so both paths behave identically.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use troupe_actors::account::{DEFAULT_PAGE, MAX_PAGE};
use troupe_actors::{kinds, ActorId, ErrorCode, Kind};
use utoipa::{IntoParams, ToSchema};

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
        web::resource("/v1/actors/{kind}")
            .route(web::get().to(list))
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
#[utoipa::path(get, path = "/v1/actors", operation_id = "listActorKinds", tag = "actors", responses((status = 200, description = "{\"kinds\": [{\"kind\", \"messages\": [{\"name\", \"description\", \"payload\"}]}]}")))]
pub async fn catalog() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "kinds": kinds::catalog() }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only ids starting with this (0 to 128 characters of `[A-Za-z0-9._:-]`).
    #[param(pattern = r"^[A-Za-z0-9._:-]{0,128}$")]
    prefix: Option<String>,
    /// Only ids after this one: the previous page's `next`.
    #[param(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    after: Option<String>,
    /// 1 to 1000, 100 by default.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page of a kind's ids.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActorPage {
    /// Ascending (byte order).
    ids: Vec<String>,
    /// The last id of this page when more follow (pass it as `after`),
    /// else `null`.
    next: Option<String>,
}

/// Every actor of the kind the store holds, active or passivated, a page
/// at a time. A key limited to a prefix lists only its own ids.
#[utoipa::path(get, path = "/v1/actors/{kind}", operation_id = "listActors", tag = "actors", params(ListQuery),
    responses((status = 200, body = ActorPage), (status = 400, body = ErrorBody),
        (status = 404, description = "Unknown kind", body = ErrorBody)))]
pub async fn list(
    rt: web::Data<Runtime>,
    meta: RequestMeta,
    kind: web::Path<String>,
    query: web::Query<ListQuery>,
    req: HttpRequest,
    grant: Option<web::ReqData<Grant>>,
    auth: Option<web::Data<Auth>>,
) -> Result<HttpResponse, ApiError> {
    let kind = known_kind(&meta, &kind)?;
    let ListQuery {
        prefix,
        after,
        limit,
    } = query.into_inner();
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(meta.error(
            ErrorCode::InvalidRequest,
            format!("limit must be from 1 to {MAX_PAGE}, got {limit}"),
        ));
    }
    let mut prefix = prefix.unwrap_or_default();
    if !prefix.is_empty() {
        // A prefix is the start of an id: checked as one.
        parse_id(&meta, prefix.clone())?;
    }
    let after = after.map(|a| parse_id(&meta, a)).transpose()?;
    if let (Some(grant), Some(auth)) = (&grant, &auth) {
        if let Some(own) = &grant.ids {
            // A wider prefix narrows to the key's own; another is refused.
            if own.starts_with(prefix.as_str()) {
                prefix.clone_from(own);
            } else if !prefix.starts_with(own.as_str()) {
                return Err(auth.deny(&req, Some(grant), Denial::Ids));
            }
        }
    }
    let page = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut ids = rt
        .store()
        .list(
            kind.as_str(),
            &prefix,
            after.as_ref().map(ActorId::as_str),
            page + 1,
        )
        .await
        .map_err(|e| match e {
            // Not worth a retry: stored bytes that do not read.
            crate::store::StoreError::Corrupt(_) => meta.error(ErrorCode::Corrupt, e.to_string()),
            e => meta.error(ErrorCode::Unavailable, e.to_string()),
        })?;
    let next = if ids.len() > page {
        ids.truncate(page);
        ids.last().cloned()
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(ActorPage { ids, next }))
}

/// The actor's current state, read through its mailbox (its `get` message).
#[utoipa::path(get, path = "/v1/actors/{kind}/{id}", operation_id = "getActorState", tag = "actors",
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
#[utoipa::path(post, path = "/v1/actors/{kind}/{id}/{message}", operation_id = "sendActorMessage", tag = "actors",
    request_body(content = Option<serde_json::Value>, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = ActorReply), (status = 404, description = "Unknown kind or message, or no such actor", body = ErrorBody),
        (status = 409, description = "already_exists (open with other settings)", body = ErrorBody),
        (status = 422, description = "The message's business refusal (insufficient_funds, ...) or idempotency_key_reused", body = ErrorBody)))]
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
