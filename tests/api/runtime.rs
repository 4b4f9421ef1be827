//! Deadlines, bounded mailboxes and the operations routes.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use tempfile::TempDir;
use troupe_actors::account::Command;
use troupe_actors::{ActorId, Address, Amount, AnyCommand, ErrorCode};

use crate::helpers::{assert_error, json_of, spawn_app, spawn_app_with};

#[actix_rt::test]
async fn a_message_whose_deadline_passed_in_the_mailbox_is_dropped_unprocessed() {
    let app = spawn_app().await;
    app.open("a").await;
    let deposit = AnyCommand::Account(Command::Deposit {
        amount: Amount::new(5).unwrap(),
    });
    let past = tokio::time::Instant::now()
        .checked_sub(Duration::from_millis(1))
        .unwrap();
    let address = Address::new(troupe_actors::Kind::Account, ActorId::parse("a").unwrap());
    let answer = app.app_runtime.ask(address, deposit, past, None).await;
    assert_eq!(
        answer.outcome.unwrap_err().code,
        ErrorCode::DeadlineExceeded
    );
    // A mailbox is first in, first out: the read that follows is handled
    // after the dropped deposit was, so it sees whether it was applied.
    assert_eq!(app.balance("a").await, 0);
}

#[actix_rt::test]
async fn a_full_mailbox_answers_429_with_retry_after_and_loses_nothing_acknowledged() {
    let app = spawn_app_with(TempDir::new().unwrap(), |s| {
        s.runtime.mailbox_capacity = 1;
        // Not the default, so the header is seen to follow the setting.
        s.server.retry_after_s = 7;
    })
    .await;
    app.open("hot").await;
    let requests = (0..300).map(|_| app.deposit("hot", 1));
    let responses = join_all(requests).await;
    let mut accepted = 0;
    let mut overloaded = 0;
    for r in responses {
        match r.status() {
            StatusCode::OK => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(r.headers()["retry-after"], "7");
                assert_error(r, StatusCode::TOO_MANY_REQUESTS, "overloaded").await;
                overloaded += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(overloaded > 0, "a mailbox of one never overflowed");
    assert_eq!(app.balance("hot").await, accepted);
}

#[actix_rt::test]
async fn health_readiness_openapi_and_metrics_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(json_of(ready).await["store"], json!("embedded"));

    let doc = json_of(app.get("/openapi.json").await).await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for path in [
        "/v1/accounts/{id}",
        "/v1/accounts/{id}/deposits",
        "/v1/accounts/{id}/entries",
        "/v1/transfers",
        "/v1/transfers/{id}",
        "/v1/actors",
        "/v1/actors/{kind}/{id}/{message}",
        "/readyz",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }

    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("process_resident_memory_bytes"));
}

#[actix_rt::test]
async fn idle_actors_are_passivated_and_come_back_with_their_state() {
    let app = spawn_app_with(TempDir::new().unwrap(), |s| s.runtime.idle_timeout_ms = 30).await;
    app.open("sleepy").await;
    app.deposit("sleepy", 9).await;
    // It really left memory: counted as passivated, nothing live.
    app.wait_metric(r#"troupe_actor_passivations_total{kind="account"}"#, |n| {
        n >= 1.0
    })
    .await;
    app.wait_metric(r#"troupe_actors_live{kind="account"}"#, |n| n == 0.0)
        .await;
    assert_eq!(app.balance("sleepy").await, 9);
    assert_eq!(
        json_of(app.deposit("sleepy", 1).await).await["version"],
        json!(3)
    );
}

/// Shutdown is a protocol: once the server has stopped, every background
/// task (the sweeper, the resume, the watches) was cancelled and awaited
/// before the store closed.
#[actix_rt::test]
async fn stopping_cancels_and_awaits_every_background_task() {
    let app = crate::helpers::spawn_app().await;
    assert!(
        !app.background.is_empty(),
        "the sweeper runs in the background"
    );
    let background = app.background.clone();
    app.stop().await;
    assert!(background.is_cancelled());
    assert_eq!(background.len(), 0, "a background task outlived the store");
}

/// A worker thread that dies takes its shard with it: messages for that
/// shard are answered `503` (a state that retrying fixes, not `429`), and
/// the worker that takes its place hosts the shard again, with its actors
/// reloaded from the store.
#[actix_rt::test]
async fn a_dead_shard_answers_503_and_its_replacement_serves_its_actors() {
    let dir = TempDir::new().unwrap();
    let settings = crate::helpers::test_settings(dir.path());
    let store: std::sync::Arc<dyn troupe::store::Store> = std::sync::Arc::new(
        troupe::store::EmbeddedStore::open(dir.path(), settings.store_options()).unwrap(),
    );
    let runtime = troupe::runtime::Runtime::new(store, settings.runtime_options(), 1);
    let host = |runtime: &troupe::runtime::Runtime| {
        let arbiter = actix::Arbiter::new();
        let rt = runtime.clone();
        assert!(arbiter.spawn_fn(move || {
            rt.host_shard_here();
        }));
        arbiter
    };
    let ask = |runtime: troupe::runtime::Runtime, command: Command| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let address = Address::new(troupe_actors::Kind::Account, ActorId::parse("w").unwrap());
        runtime
            .ask(address, AnyCommand::Account(command), deadline, None)
            .await
    };
    let open = || Command::Open {
        currency: troupe_actors::Currency::USD,
        overdraft_limit: 0,
    };
    let deposit = || Command::Deposit {
        amount: Amount::new(7).unwrap(),
    };

    let worker = host(&runtime);
    assert!(ask(runtime.clone(), open()).await.outcome.is_ok());
    assert!(ask(runtime.clone(), deposit()).await.outcome.is_ok());
    worker.stop();
    worker.join().unwrap();

    let refused = ask(runtime.clone(), deposit()).await;
    assert_eq!(refused.outcome.unwrap_err().code, ErrorCode::Unavailable);

    let _replacement = host(&runtime);
    // The replacement registers its shard asynchronously.
    let mut got = ask(runtime.clone(), Command::Get).await.outcome;
    for _ in 0..250 {
        if got.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        got = ask(runtime.clone(), Command::Get).await.outcome;
    }
    assert_eq!(
        got.expect("the replacement serves").body["balance"],
        json!(7)
    );
}

/// A metrics sink that stopped keeping up: the shards never wait on it,
/// and every report its full mailbox refused is counted.
#[actix_rt::test]
async fn reports_a_full_metrics_mailbox_refuses_are_dropped_and_counted() {
    struct Stuck;
    impl actix::Actor for Stuck {
        type Context = actix::Context<Self>;
        fn started(&mut self, ctx: &mut Self::Context) {
            ctx.set_mailbox_capacity(1);
        }
    }
    impl actix::Handler<troupe::runtime::RuntimeReport> for Stuck {
        type Result = ();
        fn handle(&mut self, _: troupe::runtime::RuntimeReport, _: &mut Self::Context) {
            // Holds its thread: the mailbox fills and stays full.
            std::thread::sleep(Duration::from_secs(5));
        }
    }
    let dir = TempDir::new().unwrap();
    let settings = crate::helpers::test_settings(dir.path());
    let store: std::sync::Arc<dyn troupe::store::Store> = std::sync::Arc::new(
        troupe::store::EmbeddedStore::open(dir.path(), settings.store_options()).unwrap(),
    );
    let runtime = troupe::runtime::Runtime::start(store, settings.runtime_options(), 2);
    let arbiter = actix::Arbiter::new();
    let stuck = <Stuck as actix::Actor>::start_in_arbiter(&arbiter.handle(), |_| Stuck);
    runtime.set_metrics_sink(stuck.recipient());
    // Two shards report every 250 ms; the sink takes one and holds it.
    let mut dropped = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        dropped = runtime.dropped_reports();
        if dropped >= 3 {
            break;
        }
    }
    assert!(dropped >= 3, "only {dropped} reports counted as dropped");
    // The exposition shows it.
    let text = troupe::telemetry::Metrics::new().render(&runtime, None);
    let shown = text
        .lines()
        .find_map(|l| l.strip_prefix("troupe_metrics_reports_dropped_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(shown.is_some_and(|n| n >= dropped), "{text}");
    // And the runtime itself still answers at once.
    let address = Address::new(troupe_actors::Kind::Account, ActorId::parse("m").unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let answer = runtime
        .ask(address, AnyCommand::Account(Command::Get), deadline, None)
        .await;
    assert_eq!(answer.outcome.unwrap_err().code, ErrorCode::NotFound);
    arbiter.stop();
}

/// `runtime.max_activations` caps live activations across the shards: past
/// it the least recently used idle ones are passivated to make room, and
/// they come back from the store when asked.
#[actix_rt::test]
async fn live_activations_stay_within_the_cap_and_evicted_ones_come_back() {
    let app = spawn_app_with(TempDir::new().unwrap(), |s| {
        s.runtime.max_activations = 2;
        s.runtime.idle_timeout_ms = 600_000;
    })
    .await;
    for i in 0..10 {
        app.open(&format!("cap-{i}")).await;
    }
    let live = app
        .wait_metric(r#"troupe_actor_passivations_total{kind="account"}"#, |n| {
            n >= 8.0
        })
        .await;
    assert!(live >= 8.0);
    let live = app
        .metric(r#"troupe_actors_live{kind="account"}"#)
        .await
        .unwrap_or(f64::MAX);
    assert!(live <= 2.0, "{live} live activations with a cap of 2");
    assert_eq!(app.deposit("cap-0", 3).await.status(), StatusCode::OK);
    assert_eq!(app.balance("cap-0").await, 3);
}
