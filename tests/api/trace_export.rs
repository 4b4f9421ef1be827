//! Span export against a collector that hangs, is absent, or is fine: the
//! request path never waits on export, the queue is bounded, shutdown
//! flushes what is queued, and `troupe_trace_spans_total` adds up.

use std::time::Duration;

use futures_util::future::join_all;
use nix::sys::signal::{kill, Signal};
use reqwest::{Client, StatusCode};
use serde_json::json;
use tempfile::TempDir;

use crate::helpers::{free_port, metric_at, open_at, Child};
use crate::otlp::Receiver;

const ENDED: &str = "troupe_trace_spans_total{stage=\"ended\"}";
const EXPORTED: &str = "troupe_trace_spans_total{stage=\"exported\"}";
const FAILED: &str = "troupe_trace_spans_total{stage=\"failed\"}";

async fn exporting_to(endpoint: &str, extra: &[(&str, &str)]) -> (TempDir, Child) {
    let dir = TempDir::new().unwrap();
    let mut env = vec![("TROUPE__TELEMETRY__OTLP__ENDPOINT", endpoint)];
    env.extend_from_slice(extra);
    let child = Child::start(dir.path(), &env).await;
    (dir, child)
}

/// `requests` deposits from 8 concurrent clients; every one must answer
/// 200. A request that waited on the collector would hang with it (the
/// client gives each one 10 s, the collector never answers).
async fn deposits(child: &Child, requests: usize) {
    let client = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = &child.address;
    // The account opens while the collector is away.
    open_at(&client, base, "spans").await;
    let workers = (0..8).map(|_| {
        let client = client.clone();
        async move {
            for _ in 0..requests / 8 {
                let r = client
                    .post(format!("{base}/v1/accounts/spans/deposits"))
                    .json(&json!({"amount": 1}))
                    .send()
                    .await
                    .expect("a deposit answers while the collector is away");
                assert_eq!(r.status(), StatusCode::OK);
            }
        }
    });
    join_all(workers).await;
}

async fn metric(child: &Child, series: &str) -> f64 {
    metric_at(&Client::new(), &child.address, series)
        .await
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_collector_neither_holds_requests_nor_grows_the_queue() {
    let receiver = Receiver::default();
    receiver.hold(true);
    let port = receiver.start().await;
    let queue = 64.0;
    let (_dir, child) = exporting_to(
        &format!("http://127.0.0.1:{port}"),
        &[
            ("TROUPE__TELEMETRY__OTLP__QUEUE_SIZE", "64"),
            // Nothing fails during the test: the export just hangs.
            ("TROUPE__TELEMETRY__OTLP__EXPORT_TIMEOUT_MS", "60000"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;

    deposits(&child, 400).await;
    let ended = metric(&child, ENDED).await;
    assert!(ended >= 800.0, "spans ended: {ended}");
    assert_eq!(metric(&child, EXPORTED).await, 0.0, "the collector hangs");

    // Released, the collector gets what was queued (at most one batch in
    // flight and one queue's worth), never the rest: it was dropped.
    receiver.hold(false);
    // Settled: between two scrapes only the scrapes' own spans arrive.
    let mut exported = -1.0;
    for _ in 0..300 {
        let now = metric(&child, EXPORTED).await;
        if exported > 0.0 && now - exported <= 2.0 {
            break;
        }
        exported = now;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(exported > 0.0, "nothing was exported after the release");
    let failed = metric(&child, FAILED).await;
    let dropped = metric(&child, ENDED).await - exported - failed;
    assert!(
        dropped >= ended - 2.0 * queue,
        "ended {ended} before the release, {exported} exported, {failed} failed: \
         the queue held more than its bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_collector_costs_requests_nothing_and_export_failures_are_counted() {
    let (_dir, child) = exporting_to(
        &format!("http://127.0.0.1:{}", free_port()),
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("TROUPE__TELEMETRY__OTLP__EXPORT_TIMEOUT_MS", "500"),
        ],
    )
    .await;
    deposits(&child, 80).await;
    let mut failed = 0.0;
    for _ in 0..150 {
        failed = metric(&child, FAILED).await;
        if failed > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed > 0.0, "no failed export counted");
    assert_eq!(metric(&child, EXPORTED).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_span_counters_add_up_to_what_the_collector_received() {
    let receiver = Receiver::default();
    let port = receiver.start().await;
    let (_dir, child) = exporting_to(
        &format!("http://127.0.0.1:{port}"),
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    )
    .await;
    deposits(&child, 40).await;
    // A scrape's own span ends after its exposition is rendered and is
    // exported before the next scrape: once export has caught up, the
    // counters read by a scrape equal what the collector holds.
    let mut last = (0.0, 0.0, 0.0, 0);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let received = receiver.spans().len();
        let text = Client::new()
            .get(format!("{}/metrics", child.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let value = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        last = (value(ENDED), value(EXPORTED), value(FAILED), received);
        if last.0 == last.1 && last.1 == received as f64 && received > 80 {
            assert_eq!(last.2, 0.0, "no export failed");
            return;
        }
    }
    panic!("(ended, exported, failed, received) never agreed: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_spans_still_queued() {
    let receiver = Receiver::default();
    let port = receiver.start().await;
    let (_dir, mut child) = exporting_to(
        &format!("http://127.0.0.1:{port}"),
        // No scheduled export during the test: only shutdown sends.
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    )
    .await;
    deposits(&child, 16).await;
    let ended = metric(&child, ENDED).await;
    assert!(ended >= 32.0, "spans ended: {ended}");
    assert!(receiver.spans().is_empty(), "exported before shutdown");

    kill(child.pid(), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.process.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let deposits = receiver
        .spans()
        .iter()
        .filter(|s| s.name == "POST /v1/accounts/{id}/deposits")
        .count();
    assert_eq!(
        deposits, 16,
        "every queued request span reached the collector"
    );
}

/// Parent-based sampling: at ratio 0 a new trace is not sampled while a
/// caller's sampled `traceparent` is followed; a reloaded ratio applies to
/// the next request. The endpoint comes from the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_a_sampled_caller_and_the_ratio_reloads_live() {
    let receiver = Receiver::default();
    let port = receiver.start().await;
    let config = crate::helpers::config_dir_copy();
    let local = config.path().join("local.toml");
    std::fs::write(&local, "[telemetry.otlp]\nsampling_ratio = 0.0\n").unwrap();
    let data = TempDir::new().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let child = Child::start_in(
        data.path(),
        config.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let client = Client::new();
    let get = |id: &str, traceparent: Option<String>| {
        let mut r = client.get(format!("{}/v1/accounts/{id}", child.address));
        if let Some(t) = traceparent {
            r = r.header("traceparent", t);
        }
        r.send()
    };
    let route = "GET /v1/accounts/{id}";
    let roots = |r: &Receiver| -> Vec<Vec<u8>> {
        r.spans()
            .into_iter()
            .filter(|s| s.name == route)
            .map(|s| s.trace_id)
            .collect()
    };

    get("unsampled", None).await.unwrap();
    let caller = "6e0c63257de34c926f9efcd03927272e";
    get("followed", Some(format!("00-{caller}-00f067aa0ba902b7-01")))
        .await
        .unwrap();
    let mut exported = Vec::new();
    for _ in 0..250 {
        exported = roots(&receiver);
        if !exported.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caller_bytes: Vec<u8> = (0..caller.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&caller[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(
        exported,
        vec![caller_bytes.clone()],
        "only the sampled caller's request is exported"
    );

    std::fs::write(&local, "[telemetry.otlp]\nsampling_ratio = 1.0\n").unwrap();
    let mut reloaded = false;
    for _ in 0..250 {
        let settings: serde_json::Value = client
            .get(format!("{}/config", child.address))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ratio = settings["telemetry.otlp.sampling_ratio"]
            .as_str()
            .and_then(|r| r.parse::<f64>().ok());
        if ratio == Some(1.0) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded, "the ratio never reloaded");
    get("now-sampled", None).await.unwrap();
    let mut new_trace = false;
    for _ in 0..250 {
        if roots(&receiver).iter().any(|t| *t != caller_bytes) {
            new_trace = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(new_trace, "a new trace was not sampled after the reload");
}
