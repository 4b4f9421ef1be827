//! RED metrics per route: a middleware counting requests by route template,
//! method and status, timing them, and gauging those in flight.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;

use super::Metrics;

/// Middleware recording [`Metrics`]' HTTP families.
///
/// # Errors
/// Only those of the inner service.
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(metrics) = req.app_data::<web::Data<Metrics>>().cloned() else {
        return next.call(req).await;
    };
    // Templates, never raw paths: label values stay bounded.
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let mut served = Served {
        metrics,
        route,
        method,
        started: Instant::now(),
        status: None,
    };
    served.metrics.http_in_flight.inc();
    let response = next.call(req).await;
    served.status = Some(match &response {
        Ok(r) => r.status(),
        Err(e) => e.as_response_error().status_code(),
    });
    response
}

/// One request in flight; recorded when dropped, so a request whose client
/// went away (its future dropped) leaves the in-flight gauge too, counted
/// as status `499` (client closed request, as nginx says).
struct Served {
    metrics: web::Data<Metrics>,
    route: String,
    method: &'static str,
    started: Instant,
    status: Option<actix_web::http::StatusCode>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.http_in_flight.dec();
        let status = self.status.as_ref().map_or("499", |s| s.as_str());
        m.http_requests
            .with_label_values(&[self.route.as_str(), self.method, status])
            .inc();
        m.http_duration
            .with_label_values(&[self.route.as_str()])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// The method as a label: the standard ones by name, anything else
/// `other`, so a client making methods up cannot add series forever.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}
