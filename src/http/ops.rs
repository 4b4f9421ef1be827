//! Operations routes: liveness, readiness and metrics.

use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::ContentType;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use serde_json::json;
use troupe_actors::ErrorCode;

use super::context::RequestMeta;
use super::error::ApiError;
use crate::runtime::Runtime;
use crate::telemetry::Metrics;

/// Health: open to anyone, on every listener.
pub const HEALTH: [&str; 2] = ["/healthz", "/readyz"];
/// The operators' routes: `ops:read`, on the operations listener when
/// there is one.
pub const OPERATIONS: [&str; 2] = ["/metrics", "/config"];

/// The address of the operations listener (`server.ops_bind`), if any:
/// the whole address, since it may share the main listener's port on
/// another interface.
#[derive(Debug, Clone, Copy)]
pub struct OpsAddress(pub Option<std::net::SocketAddr>);

/// With an operations listener, keeps `/metrics` and `/config` to it and
/// everything but them and health off it: each answers `404` on the other.
pub async fn split(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let ops = req.app_data::<web::Data<OpsAddress>>().and_then(|a| a.0);
    if let Some(ops) = ops {
        // As the router will match it: `/%6detrics` is `/metrics`.
        let path = crate::auth::router_path(req.path());
        let operations = OPERATIONS.contains(&path.as_str());
        let health = HEALTH.contains(&path.as_str());
        let on_ops = req.app_config().local_addr() == ops;
        if (on_ops && !operations && !health) || (!on_ops && operations) {
            let error = ApiError::for_request(
                req.request(),
                ErrorCode::NotFound,
                format!("no route for {} {} on this port", req.method(), req.path()),
            );
            return Ok(req.error_response(error).map_into_right_body());
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    let [live, ready] = HEALTH;
    let [metrics_path, config_path] = OPERATIONS;
    cfg.route(live, web::get().to(healthz))
        .route(ready, web::get().to(readyz))
        .route(metrics_path, web::get().to(metrics))
        .route(config_path, web::get().to(config));
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", operation_id = "liveness", tag = "operations", responses((status = 200, description = "{\"status\": \"ok\"}")))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// `200` when the store answers and the server is not draining, naming the
/// actors (at most 100, and how many) whose data met damage: those answer
/// `500` and the rest is served.
#[utoipa::path(get, path = "/readyz", operation_id = "readiness", tag = "operations",
    responses((status = 200, description = "{\"status\": \"ready\", \"store\": \"embedded\", \"damaged\": {\"actors\": [\"account/alice\"], \"count\": 1}}"), (status = 503, body = super::openapi::ErrorBody)))]
pub async fn readyz(rt: web::Data<Runtime>, meta: RequestMeta) -> Result<HttpResponse, ApiError> {
    if rt.is_draining() {
        return Err(meta.error(ErrorCode::Unavailable, "the server is shutting down"));
    }
    match tokio::time::timeout(Duration::from_secs(2), rt.store().ping()).await {
        // Damage in some actors' data refuses those actors alone: the rest
        // is served, so the instance stays ready and names them.
        Ok(Ok(())) => {
            let (damaged, count) = rt.store().damaged();
            Ok(HttpResponse::Ok().json(json!({
                "status": "ready",
                "store": rt.store().backend(),
                "damaged": { "actors": damaged, "count": count },
            })))
        }
        Ok(Err(e)) => Err(meta.error(ErrorCode::Unavailable, e.to_string())),
        Err(_) => Err(meta.error(ErrorCode::Unavailable, "the store did not answer in time")),
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(metrics: web::Data<Metrics>, rt: web::Data<Runtime>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType(
            prometheus::TEXT_FORMAT.parse().unwrap_or(mime::TEXT_PLAIN),
        ))
        .body(metrics.render(&rt, crate::telemetry::span_counters()))
}

/// The settings the server runs with now (after live reloads), secrets
/// redacted.
#[utoipa::path(get, path = "/config", operation_id = "getConfig", tag = "operations", responses((status = 200, description = "{\"dotted.key\": \"value\"}")))]
pub async fn config(
    current: web::Data<arc_swap::ArcSwap<crate::settings::Settings>>,
) -> HttpResponse {
    HttpResponse::Ok().json(crate::reload::redacted(&current.load()))
}
