//! `/openapi.json`, generated from the handlers' annotations, the actors'
//! typed views (the very types that serialise their replies) and the
//! request and error shapes below; [`complete`] adds what every operation
//! shares, and `/docs` renders it (Swagger UI, its assets built into the
//! binary: the page needs no other host).

mod complete;

use std::sync::OnceLock;

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};
use troupe_actors::account::{AccountView, EntriesPage, Entry, EntryKind, Movement};
use troupe_actors::transfer::{Status as TransferStatus, TransferView};
use troupe_actors::ErrorCode;
use utoipa::{OpenApi, ToSchema};
use utoipa_swagger_ui::{Config, SwaggerUi};

/// The document's path, and the docs page's.
pub const DOCUMENT: &str = "/openapi.json";
pub const DOCS: &str = "/docs";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(DOCUMENT, web::get().to(document))
        .route(DOCS, web::get().to(docs_slash))
        .service(
            SwaggerUi::new(format!("{DOCS}/{{_:.*}}")).config(
                Config::from(DOCUMENT)
                    // Swagger UI would otherwise send the document's URL to
                    // validator.swagger.io from any host but localhost.
                    .validator_url("none")
                    .display_operation_id(true)
                    // A key typed into "Authorize" is not kept in the
                    // browser's storage.
                    .persist_authorization(false),
            ),
        );
}

/// `/docs` is `/docs/`: the page's assets are relative to it.
async fn docs_slash() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header(("Location", format!("{DOCS}/")))
        .finish()
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

/// The whole document, built once.
pub fn document_json() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
        complete::complete(&mut doc);
        add_examples(&mut doc);
        doc
    })
}

async fn document() -> HttpResponse {
    HttpResponse::Ok().json(document_json())
}

/// Examples of the bodies clients send and the error they get.
fn add_examples(doc: &mut Value) {
    let examples = [
        (
            "OpenPayload",
            json!({"currency": "EUR", "overdraft_limit": 0}),
        ),
        ("AmountPayload", json!({"amount": 1000})),
        (
            "TransferRequest",
            json!({"id": "t-1", "from": "alice", "to": "bob", "amount": 250}),
        ),
        (
            "ErrorBody",
            json!({"error": {
                "code": "insufficient_funds",
                "message": "balance 100 is below the 250 asked",
                "request_id": "9b2f0c1e-8d44-4c5e-9a3e-2f6b8f0d7a11",
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"
            }}),
        ),
        ("ActorPage", json!({"ids": ["alice", "bob"], "next": "bob"})),
    ];
    for (schema, example) in examples {
        if let Some(s) = doc
            .pointer_mut(&format!("/components/schemas/{schema}"))
            .and_then(Value::as_object_mut)
        {
            s.insert("examples".into(), json!([example]));
        }
    }
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TransferRequest {
    /// Optional; also the idempotency key: one id names one transfer for good.
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    id: Option<String>,
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    from: String,
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    to: String,
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_u64)]
    amount: u64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    code: ErrorCode,
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
