//! `/metrics` is valid Prometheus text (checked by `promtool`) and its
//! counters move as requests are made.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app;

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

#[actix_rt::test]
async fn metrics_pass_promtool_and_counters_move() {
    let app = spawn_app().await;
    app.open("m").await;
    assert_eq!(app.deposit("m", 5).await.status(), StatusCode::OK);
    assert_eq!(
        app.get("/v1/accounts/ghost").await.status(),
        StatusCode::NOT_FOUND
    );
    let deposits = r#"troupe_http_requests_total{method="POST",route="/v1/accounts/{id}/deposits",status="200"}"#;
    let messages = r#"troupe_actor_messages_total{kind="account",message="deposit",outcome="ok"}"#;

    // Shards report every 250 ms; wait for the first deposit to show.
    let mut text = String::new();
    for _ in 0..40 {
        text = app.get("/metrics").await.text().await.unwrap();
        if sample(&text, messages).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sample(&text, deposits), Some(1.0), "{text}");
    assert_eq!(sample(&text, messages), Some(1.0));
    let build = format!(
        r#"troupe_build_info{{commit="{}",version="{}"}}"#,
        troupe::COMMIT,
        troupe::VERSION
    );
    assert_eq!(sample(&text, &build), Some(1.0), "{text}");
    assert!(sample(
        &text,
        r#"troupe_http_requests_total{method="GET",route="/v1/accounts/{id}",status="404"}"#
    )
    .is_some());
    // "m" stays live; "ghost" was never opened and was passivated at once.
    assert_eq!(
        sample(&text, r#"troupe_actors_live{kind="account"}"#),
        Some(1.0)
    );
    assert!(sample(
        &text,
        r#"troupe_store_operation_duration_seconds_count{backend="embedded",op="commit"}"#
    )
    .is_some_and(|n| n >= 2.0));
    assert!(sample(&text, "troupe_group_commit_messages_count").is_some_and(|n| n >= 1.0));
    assert!(sample(
        &text,
        r#"troupe_http_request_duration_seconds_count{route="/v1/accounts/{id}/deposits"}"#
    )
    .is_some_and(|n| n >= 1.0));
    // The scrape itself is being served.
    assert!(sample(&text, "troupe_http_requests_in_flight").is_some_and(|n| n >= 1.0));
    assert!(
        sample(&text, r#"troupe_actor_activations_total{kind="account"}"#)
            .is_some_and(|n| n >= 2.0),
        "m and ghost were activated"
    );
    assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|n| n > 0.0));
    // The embedded store's memory: the deposit sits in a memtable.
    assert!(
        sample(&text, r#"troupe_store_memory_bytes{part="memtables"}"#).is_some_and(|n| n > 0.0),
        "{text}"
    );
    assert!(sample(&text, r#"troupe_store_memory_bytes{part="block_cache"}"#).is_some());

    app.post("/v1/accounts/m/deposits", json!({"amount": 1}))
        .await;
    let refused = app
        .post("/v1/accounts/m/withdrawals", json!({"amount": 1000}))
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    app.wait_metric(
        r#"troupe_actor_messages_total{kind="account",message="withdraw",outcome="insufficient_funds"}"#,
        |n| n == 1.0,
    )
    .await;
    let mut moved = false;
    for _ in 0..40 {
        let text = app.get("/metrics").await.text().await.unwrap();
        if sample(&text, deposits) == Some(2.0) && sample(&text, messages) == Some(2.0) {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(moved, "the counters did not move");

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is on PATH (make test installs the prometheus package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `telemetry.http_metrics = false` turns the per-route HTTP series off;
/// the runtime's own metrics stay.
#[actix_rt::test]
async fn http_metrics_can_be_turned_off() {
    let app = crate::helpers::spawn_app_with(tempfile::TempDir::new().unwrap(), |s| {
        s.telemetry.http_metrics = false;
    })
    .await;
    app.open("m").await;
    assert_eq!(app.deposit("m", 5).await.status(), StatusCode::OK);
    app.wait_metric(
        r#"troupe_actor_messages_total{kind="account",message="deposit",outcome="ok"}"#,
        |n| n == 1.0,
    )
    .await;
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        !text.contains("troupe_http_requests_total{"),
        "HTTP series while turned off:\n{text}"
    );
}
