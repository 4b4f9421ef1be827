//! `/openapi.json`, generated from the handlers' annotations and the
//! schemas below (which document the JSON the actors produce).

use actix_web::{web, HttpResponse};
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
        EntryView,
        EntriesPage,
        TransferRequest,
        TransferView,
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
pub struct AccountView {
    id: String,
    #[schema(example = "EUR")]
    currency: String,
    balance: i64,
    overdraft_limit: u64,
    version: u64,
}

/// The answer to a deposit or withdrawal.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Movement {
    entry: EntryView,
    balance: i64,
    version: u64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EntryView {
    seq: u64,
    #[schema(example = "deposit")]
    /// `deposit`, `withdrawal`, `transfer_debit`, `transfer_credit` or `refund`.
    kind: String,
    amount: u64,
    balance_after: i64,
    transfer_id: Option<String>,
    /// RFC 3339.
    at: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EntriesPage {
    entries: Vec<EntryView>,
    /// Pass as `after` for the next page; null on the last.
    next: Option<u64>,
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
pub struct TransferView {
    id: String,
    from: String,
    to: String,
    amount: u64,
    /// `pending`, `completed` or `failed`.
    status: String,
    /// For failed transfers: `insufficient_funds`, `account_not_found`, `currency_mismatch`, `same_account`, `limit_exceeded`.
    reason: Option<String>,
    created_at: String,
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
