//! `/openapi.json`, generated from the handlers' annotations, the actors'
//! typed views (the very types that serialise their replies) and the
//! request and error shapes below.

use actix_web::{web, HttpResponse};
use troupe_actors::account::{AccountView, EntriesPage, Entry, EntryKind, Movement};
use troupe_actors::transfer::{Status as TransferStatus, TransferView};
use troupe_actors::ErrorCode;
use utoipa::{OpenApi, ToSchema};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(document));
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "troupe",
        description = "An actor-based ledger: accounts, deposits, withdrawals and all-or-nothing transfers."
    ),
    paths(
        super::accounts::open,
        super::accounts::get,
        super::accounts::deposit,
        super::accounts::withdraw,
        super::accounts::entries,
        super::transfers::start,
        super::transfers::get,
        super::actors::catalog,
        super::actors::state,
        super::actors::message,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        super::ops::config,
    ),
    components(schemas(
        AccountView,
        Movement,
        Entry,
        EntryKind,
        EntriesPage,
        TransferRequest,
        TransferView,
        TransferStatus,
        ErrorCode,
        ErrorBody,
        ErrorDetail,
        ActorReply
    ))
)]
pub struct ApiDoc;

async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TransferRequest {
    /// Optional; also the idempotency key.
    id: Option<String>,
    from: String,
    to: String,
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_u64)]
    amount: u64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    code: String,
    message: String,
    request_id: String,
    trace_id: String,
}

/// Every error's body.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ActorReply {
    reply: serde_json::Value,
}
