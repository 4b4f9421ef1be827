//! `/v1/accounts`: thin translations onto the account actor's messages.
//! Each handler builds the typed command from a typed body or query; the
//! JSON body is kept only to fingerprint a keyed request.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use troupe_actors::account::{
    AccountView, AmountPayload, Command, EntriesPage, EntriesPayload, Movement, OpenPayload,
};
use troupe_actors::{AnyCommand, ErrorCode};
use utoipa::IntoParams;

use super::body::JsonBody;
use super::context::RequestMeta;
use super::error::ApiError;
use super::openapi::ErrorBody;
use super::{deliver, keyed, method_not_allowed, parse_id, typed, Shape};
use crate::runtime::{IdempotencyRequest, Runtime};

/// Sends a typed command to the account in the path.
async fn to_account(
    rt: &Runtime,
    meta: &RequestMeta,
    id: String,
    command: Command,
    idempotency: Option<IdempotencyRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(meta, id)?;
    let command = AnyCommand::Account(command);
    deliver(rt, meta, id, command, idempotency, Shape::Resource).await
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/accounts/{id}")
            .route(web::put().to(open))
            .route(web::get().to(get))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/accounts/{id}/deposits")
            .route(web::post().to(deposit))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/accounts/{id}/withdrawals")
            .route(web::post().to(withdraw))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/accounts/{id}/entries")
            .route(web::get().to(entries))
            .default_service(web::to(method_not_allowed)),
    );
}

/// Open an account; `200` when it already exists with the same settings.
#[utoipa::path(put, path = "/v1/accounts/{id}", operation_id = "openAccount", tag = "accounts",
    request_body(content = Option<troupe_actors::account::OpenPayload>, content_type = "application/json"),
    responses(
        (status = 201, description = "Opened", body = AccountView),
        (status = 200, description = "Already open with these settings", body = AccountView),
        (status = 409, description = "Exists with other settings", body = ErrorBody),
        (status = 400, body = ErrorBody)))]
pub async fn open(
    rt: web::Data<Runtime>,
    meta: RequestMeta,
    id: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    // PUT is idempotent by itself; a key adds nothing.
    let payload: OpenPayload = typed(&meta, body.0)?;
    let command = payload
        .into_command()
        .map_err(|e| meta.error(ErrorCode::InvalidRequest, e.to_string()))?;
    to_account(&rt, &meta, id.into_inner(), command, None).await
}

#[utoipa::path(get, path = "/v1/accounts/{id}", operation_id = "getAccount", tag = "accounts",
    responses((status = 200, body = AccountView), (status = 404, body = ErrorBody)))]
pub async fn get(
    rt: web::Data<Runtime>,
    meta: RequestMeta,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    to_account(&rt, &meta, id.into_inner(), Command::Get, None).await
}

#[utoipa::path(post, path = "/v1/accounts/{id}/deposits", operation_id = "deposit", tag = "accounts",
    request_body = troupe_actors::account::AmountPayload,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same body")),
    responses((status = 200, body = Movement), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn deposit(
    rt: web::Data<Runtime>,
    meta: RequestMeta,
    id: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let idempotency = keyed(&meta, "deposit", &body.0);
    let AmountPayload { amount } = typed(&meta, body.0)?;
    let command = Command::Deposit { amount };
    to_account(&rt, &meta, id.into_inner(), command, idempotency).await
}

#[utoipa::path(post, path = "/v1/accounts/{id}/withdrawals", operation_id = "withdraw", tag = "accounts",
    request_body = troupe_actors::account::AmountPayload,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same body")),
    responses((status = 200, body = Movement), (status = 404, body = ErrorBody), (status = 422, description = "insufficient_funds, limit_exceeded, idempotency_key_reused", body = ErrorBody)))]
pub async fn withdraw(
    rt: web::Data<Runtime>,
    meta: RequestMeta,
    id: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let idempotency = keyed(&meta, "withdraw", &body.0);
    let AmountPayload { amount } = typed(&meta, body.0)?;
    let command = Command::Withdraw { amount };
    to_account(&rt, &meta, id.into_inner(), command, idempotency).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EntriesQuery {
    /// Only entries with a greater sequence number (the previous page's
    /// `next`).
    #[param(minimum = 0)]
    after: Option<u64>,
    /// 1 to 1000, 100 by default.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/accounts/{id}/entries", operation_id = "listEntries", tag = "accounts", params(EntriesQuery),
    responses((status = 200, body = EntriesPage), (status = 404, body = ErrorBody)))]
pub async fn entries(
    rt: web::Data<Runtime>,
    meta: RequestMeta,
    id: web::Path<String>,
    query: web::Query<EntriesQuery>,
) -> Result<HttpResponse, ApiError> {
    let EntriesQuery { after, limit } = query.into_inner();
    let command = EntriesPayload { after, limit }
        .into_command()
        .map_err(|e| meta.error(ErrorCode::InvalidRequest, e.to_string()))?;
    to_account(&rt, &meta, id.into_inner(), command, None).await
}
