//! Traces reach an OTLP receiver with the parent/child chain operators
//! rely on: HTTP request -> actor handling -> store commit, a transfer's
//! actor and both accounts in one trace, and a client's `traceparent` as
//! the root's parent. The receiver is built on opentelemetry-proto's tonic
//! server types and runs in the test; the service runs as a child process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use reqwest::{Client, StatusCode};
use serde_json::json;
use tempfile::TempDir;

use crate::helpers::Child;

/// An OTLP/gRPC collector in the test. While `held`, every export call
/// waits (a hung collector) and nothing is kept.
#[derive(Clone)]
pub struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    resources: Arc<Mutex<Vec<Vec<KeyValue>>>>,
    held: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Receiver {
    fn default() -> Self {
        Self {
            spans: Arc::default(),
            resources: Arc::default(),
            held: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|held| !*held).await;
        for rs in request.into_inner().resource_spans {
            if let Some(resource) = rs.resource {
                self.resources.lock().unwrap().push(resource.attributes);
            }
            for ss in rs.scope_spans {
                self.spans.lock().unwrap().extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Serves OTLP/gRPC on a free loopback port; returns the port.
    pub async fn start(&self) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        port
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Hangs (`true`) or releases the collector.
    pub fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_attr(span: &Span, key: &str) -> Option<String> {
    match attr(&span.attributes, key) {
        Some(AnyValue::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_chain_from_the_request_through_actors_to_the_store() {
    let receiver = Receiver::default();
    let otlp_port = receiver.start().await;
    let dir = TempDir::new().unwrap();
    let endpoint = format!("http://127.0.0.1:{otlp_port}");
    let child = Child::start(
        dir.path(),
        &[
            ("TROUPE__TELEMETRY__OTLP__ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("TROUPE_ENV", "staging"),
        ],
    )
    .await;
    let client = Client::new();
    let base = &child.address;
    for id in ["a", "b"] {
        let r = client
            .put(format!("{base}/v1/accounts/{id}"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let r = client
        .post(format!("{base}/v1/accounts/a/deposits"))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({"amount": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client
        .post(format!("{base}/v1/transfers"))
        .json(&json!({"id": "t-otel", "from": "a", "to": "b", "amount": 20}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // Wait for the export of the transfer's legs (check, debit, credit).
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = receiver.spans();
        let transfer_trace = spans
            .iter()
            .find(|s| s.name == "POST /v1/transfers")
            .map(|s| s.trace_id.clone());
        let legs = spans
            .iter()
            .filter(|s| Some(&s.trace_id) == transfer_trace.as_ref())
            .filter(|s| {
                s.name == "actor.handle"
                    && string_attr(s, "actor.kind").as_deref() == Some("account")
            })
            .count();
        if legs >= 3 && spans.iter().any(|s| s.name == "store.commit") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The deposit: the caller's span -> HTTP request -> actor.handle -> store.commit.
    let caller_trace_bytes = hex(caller_trace);
    let deposit: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == caller_trace_bytes)
        .collect();
    let root = deposit
        .iter()
        .find(|s| s.name == "POST /v1/accounts/{id}/deposits")
        .expect("the request's root span");
    assert_eq!(
        root.parent_span_id,
        hex(caller_span),
        "the caller's traceparent is the root's parent"
    );
    assert_eq!(string_attr(root, "http.method").as_deref(), Some("POST"));
    assert_eq!(
        string_attr(root, "http.route").as_deref(),
        Some("/v1/accounts/{id}/deposits")
    );
    assert!(
        attr(&root.attributes, "http.status_code").is_some(),
        "the status is recorded"
    );
    assert!(string_attr(root, "request_id").is_some_and(|id| !id.is_empty()));
    let handle = deposit
        .iter()
        .find(|s| s.name == "actor.handle")
        .expect("the actor's span");
    assert_eq!(handle.parent_span_id, root.span_id);
    assert_eq!(
        string_attr(handle, "actor.message").as_deref(),
        Some("deposit")
    );
    assert!(
        attr(&handle.attributes, "mailbox.wait_us").is_some(),
        "mailbox wait is recorded"
    );
    let commit = deposit
        .iter()
        .find(|s| s.name == "store.commit")
        .expect("the commit's span");
    assert_eq!(commit.parent_span_id, handle.span_id);
    assert_eq!(
        string_attr(commit, "store.backend").as_deref(),
        Some("embedded")
    );
    for key in ["batch.messages", "batch.entries"] {
        assert!(attr(&commit.attributes, key).is_some(), "{key}");
    }

    // The transfer: its actor and both accounts in one trace.
    let root = spans
        .iter()
        .find(|s| s.name == "POST /v1/transfers")
        .expect("the transfer's root span");
    let trace: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .collect();
    let transfer = trace
        .iter()
        .find(|s| {
            s.name == "actor.handle" && string_attr(s, "actor.kind").as_deref() == Some("transfer")
        })
        .expect("the transfer actor's span");
    assert_eq!(transfer.parent_span_id, root.span_id);
    let legs: Vec<&&Span> = trace
        .iter()
        .filter(|s| {
            s.name == "actor.handle" && string_attr(s, "actor.kind").as_deref() == Some("account")
        })
        .collect();
    let ids: Vec<String> = legs
        .iter()
        .filter_map(|s| string_attr(s, "actor.id"))
        .collect();
    assert!(
        ids.contains(&"a".to_owned()) && ids.contains(&"b".to_owned()),
        "both accounts in the trace: {ids:?}"
    );
    assert!(legs.iter().all(|s| s.parent_span_id == transfer.span_id));

    let resources = receiver.resources.lock().unwrap().clone();
    let resource = resources.first().expect("a resource");
    let value = |k: &str| match attr(resource, k) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(value("service.name"), "troupe");
    assert_eq!(value("service.version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(value("deployment.environment"), "staging");
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_inside_a_request_carry_its_trace_and_span_ids() {
    let dir = TempDir::new().unwrap();
    let child = Child::start(dir.path(), &[("TROUPE__LOG__FILTER", "info,troupe=trace")]).await;
    let client = Client::new();
    let base = &child.address;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = client
        .get(format!("{base}/v1/accounts/x"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let (_, line) = child
        .wait_log(0, Duration::from_secs(10), |l| {
            l["target"] == json!("troupe::http") && l["fields"]["actor.id"] == json!("x")
        })
        .await;
    let spans = line["spans"]
        .as_array()
        .expect("the spans the line was written in");
    let root = spans
        .iter()
        .find(|s| s["name"] == json!("HTTP request"))
        .expect("the request's span");
    assert_eq!(root["trace_id"], json!(trace));
    assert!(
        root["span_id"].as_str().is_some_and(|s| s.len() == 16),
        "{root}"
    );
    assert!(root["request_id"].as_str().is_some());
}

/// No log line per request: under `info`, and under development's
/// `info,troupe=debug` too, successful requests, client errors (404, 400,
/// 422) and the 504 a client can ask for write nothing; a `500` writes one
/// error line that carries the request's ids. `RUST_LOG`, when set, wins
/// over `log.filter`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_internal_errors_write_a_log_line_per_request() {
    assert_one_line_per_internal_error("info").await;
    // A line per request under `debug` cost deposits a third of their
    // throughput (docs/src/performance.md): per-message lines are `trace`.
    assert_one_line_per_internal_error("info,troupe=debug").await;

    // RUST_LOG wins over log.filter.
    let client = Client::new();
    let dir = TempDir::new().unwrap();
    let child = Child::start(
        dir.path(),
        &[
            ("TROUPE__LOG__FILTER", "info"),
            ("RUST_LOG", "info,troupe::http=trace"),
        ],
    )
    .await;
    client
        .get(format!("{}/v1/accounts/rust-log", child.address))
        .send()
        .await
        .unwrap();
    child
        .wait_log(0, Duration::from_secs(10), |l| {
            l["target"] == json!("troupe::http") && l["fields"]["actor.id"] == json!("rust-log")
        })
        .await;
}

async fn assert_one_line_per_internal_error(filter: &str) {
    use nix::sys::signal::{kill, Signal};

    let dir = TempDir::new().unwrap();
    let mut child = Child::start(dir.path(), &[("TROUPE__LOG__FILTER", filter)]).await;
    let client = Client::new();
    let base = child.address.clone();
    client
        .put(format!("{base}/v1/accounts/q"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    for _ in 0..10 {
        let ok = client
            .post(format!("{base}/v1/accounts/q/deposits"))
            .json(&json!({"amount": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let missing = client.get(format!("{base}/v1/accounts/nobody")).send();
        assert_eq!(missing.await.unwrap().status(), StatusCode::NOT_FOUND);
        let malformed = client
            .post(format!("{base}/v1/accounts/q/deposits"))
            .header("Content-Type", "application/json")
            .body("{")
            .send();
        assert_eq!(malformed.await.unwrap().status(), StatusCode::BAD_REQUEST);
        let refused = client
            .post(format!("{base}/v1/accounts/q/withdrawals"))
            .json(&json!({"amount": 1_000_000}))
            .send();
        assert_eq!(
            refused.await.unwrap().status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let hurried = client
            .post(format!("{base}/v1/accounts/q/deposits"))
            .header("X-Request-Timeout", "1")
            .json(&json!({"amount": 1}))
            .send();
        // Usually 504; a commit faster than a millisecond is 200.
        let status = hurried.await.unwrap().status();
        assert!(
            [StatusCode::GATEWAY_TIMEOUT, StatusCode::OK].contains(&status),
            "{status}"
        );
    }
    let crashed = client
        .post(format!("{base}/v1/actors/account/q/crash"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(crashed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    // Everything written while serving is in once the process has exited.
    kill(child.pid(), Signal::SIGTERM).unwrap();
    child.exit().await;
    let output = child.output();
    let in_requests: Vec<serde_json::Value> = output
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == json!("HTTP request")))
        })
        .collect();
    let errors: Vec<&serde_json::Value> = in_requests
        .iter()
        .filter(|l| l["level"] == json!("ERROR") && l["target"] == json!("troupe::http::context"))
        .collect();
    assert_eq!(errors.len(), 1, "one line for the 500:\n{output}");
    assert_eq!(errors[0]["fields"]["http.status_code"], json!(500));
    let spans = errors[0]["spans"].as_array().unwrap();
    assert!(spans.iter().any(|s| s["request_id"].is_string()));
    // The crash itself is logged by the supervisor (not per request); no
    // other line was written inside a request.
    assert!(
        in_requests.iter().all(|l| l["level"] == json!("ERROR")
            || l["target"] != json!("tracing_actix_web::middleware")),
        "{output}"
    );
    let quiet = in_requests
        .iter()
        .filter(|l| l["level"] != json!("ERROR"))
        .count();
    assert_eq!(
        quiet, 0,
        "lines written per request under {filter}:\n{output}"
    );
}
