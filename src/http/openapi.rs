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
        super::actors::list,
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
        ActorReply,
        super::actors::ActorPage
    )),
    modifiers(&BearerKeys)
)]
pub struct ApiDoc;

/// API keys (`crate::auth`): the bearer scheme, required by every
/// operation but health (and this document), with the `401` and `403`
/// such an operation can answer when `auth.enabled`.
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        use utoipa::openapi::{Ref, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`troupe keys new` makes one: auth.keys_file), or a JWT from \
                         the identity provider auth.jwt names, with the operation's scope",
                    ))
                    .build(),
            ),
        );
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if super::ops::HEALTH.contains(&path.as_str()) {
                continue;
            }
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation.security =
                    Some(vec![SecurityRequirement::new::<_, _, &str>("bearer", [])]);
                let responses = &mut operation.responses.responses;
                responses.entry("401".into()).or_insert_with(|| {
                    error("No, malformed or unknown API key (`WWW-Authenticate: Bearer`)").into()
                });
                responses.entry("403".into()).or_insert_with(|| {
                    error("The key lacks this route's scope, or the id is outside its prefix")
                        .into()
                });
            }
        }
    }
}

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
