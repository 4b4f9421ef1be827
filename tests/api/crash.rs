//! The service as a child process: SIGKILL during a load of transfers loses
//! no acknowledged write and leaves no transfer half done; SIGTERM drains.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use reqwest::{Client, StatusCode};
use serde_json::json;
use tempfile::TempDir;

use crate::helpers::{metric_at, Child};
use crate::ledger_load::{audit, fund, Load};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_write_and_resolves_every_transfer() {
    let dir = TempDir::new().unwrap();
    let mut child = Child::start(dir.path(), &[]).await;
    let client = Client::new();
    fund(&client, &child.address).await;

    let load = Load::start(&client, &child.address, 16);
    load.under_way(40, 40).await;
    kill(child.pid(), Signal::SIGKILL).unwrap();
    child.process.wait().await.unwrap();
    let (acked, started) = load.finish().await;

    let child = Child::start(dir.path(), &[]).await;
    audit(&client, &child.address, &acked, &started).await;
}

/// A crash loop: the server is killed again and again during a storm of
/// concurrent transfers, each time restarting on the same data, often
/// while the previous crash's transfers are still being resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkills_during_a_transfer_storm_conserve_money_and_finish_every_transfer() {
    let dir = TempDir::new().unwrap();
    let mut child = Child::start(dir.path(), &[]).await;
    let client = Client::new();
    fund(&client, &child.address).await;
    let (mut acked, mut started) = (Vec::new(), Vec::new());
    for round in 1..=4u64 {
        let load = Load::start_round(&client, &child.address, 16, round);
        // Each round is killed at a different depth of work.
        let depth = 12 + 10 * round as usize;
        load.under_way(depth, depth).await;
        kill(child.pid(), Signal::SIGKILL).unwrap();
        child.process.wait().await.unwrap();
        let (a, s) = load.finish().await;
        acked.extend(a);
        started.extend(s);
        child = Child::start(dir.path(), &[]).await;
    }
    audit(&client, &child.address, &acked, &started).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readyz_503_then_exits_zero() {
    drains_on(Signal::SIGTERM).await;
}

/// SIGINT (Ctrl-C) drains exactly as SIGTERM does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_turns_readyz_503_then_exits_zero() {
    drains_on(Signal::SIGINT).await;
}

async fn drains_on(signal: Signal) {
    let dir = TempDir::new().unwrap();
    let mut child = Child::start(dir.path(), &[("TROUPE__SERVER__DRAIN_DELAY_MS", "1500")]).await;
    let client = Client::new();
    let r = client
        .put(format!("{}/v1/accounts/z", child.address))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    kill(child.pid(), signal).unwrap();
    // Until the signal is handled /readyz may still say 200; it must say
    // 503 while the server still serves, before it stops listening.
    let ready = loop {
        let ready = client
            .get(format!("{}/readyz", child.address))
            .send()
            .await
            .expect("still serving during the drain delay");
        if ready.status() != StatusCode::OK {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.headers()["retry-after"], "1");
    let status = tokio::time::timeout(Duration::from_secs(15), child.process.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

/// SIGTERM under load: requests already in flight finish and what they
/// acknowledged is durable, the listener refuses new connections once the
/// drain delay has passed, and the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_work_refuses_new_connections_and_exits() {
    let dir = TempDir::new().unwrap();
    let env = [("TROUPE__SERVER__DRAIN_DELAY_MS", "300")];
    let mut child = Child::start(dir.path(), &env).await;
    let client = Client::new();
    fund(&client, &child.address).await;
    let load = Load::start_round(&client, &child.address, 8, 7);
    load.under_way(20, 20).await;

    kill(child.pid(), Signal::SIGTERM).unwrap();
    // After the drain delay the listener closes: a new connection (a new
    // client, no pooled connection) is refused.
    let mut refused = false;
    for _ in 0..500 {
        let fresh = Client::new()
            .get(format!("{}/healthz", child.address))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if fresh.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused,
        "new connections were still served 10 s after SIGTERM"
    );
    let status = tokio::time::timeout(Duration::from_secs(15), child.process.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let (acked, started) = load.finish().await;

    let child = Child::start(dir.path(), &[]).await;
    audit(&client, &child.address, &acked, &started).await;
}

/// After a crash, unfinished work finishes with no client asking about it:
/// the restarted server wakes every actor the store lists as unfinished,
/// and nothing is left listed once they are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_unfinished_work_finishes_without_any_request() {
    let dir = TempDir::new().unwrap();
    let env = [("TROUPE__RUNTIME__RETRY_INTERVAL_MS", "200")];
    let mut child = Child::start(dir.path(), &env).await;
    let client = Client::new();
    fund(&client, &child.address).await;
    let load = Load::start_round(&client, &child.address, 16, 9);
    load.under_way(20, 20).await;
    kill(child.pid(), Signal::SIGKILL).unwrap();
    child.process.wait().await.unwrap();
    load.finish().await;

    // Idle actors leave memory fast: an actor with unfinished work never
    // does, so none live means none has work left, and a lazily written
    // settle is durable before its account can go.
    let env = [
        ("TROUPE__RUNTIME__RETRY_INTERVAL_MS", "200"),
        ("TROUPE__RUNTIME__IDLE_TIMEOUT_MS", "100"),
    ];
    let mut child = Child::start(dir.path(), &env).await;
    // No request at all (only /metrics is read): the server's own
    // resumption wakes what the store lists as unfinished.
    child
        .wait_log(0, Duration::from_secs(10), |l| {
            l["fields"]["message"] == json!("resumed unfinished actors")
        })
        .await;
    // Each shard reports its live actors every 250 ms: the condition must
    // hold across two reports of every shard, not one stale one.
    let live = |kind: &str| format!(r#"troupe_actors_live{{kind="{kind}"}}"#);
    let woken = r#"troupe_actor_activations_total{kind="transfer"}"#;
    let mut held_since = None;
    let mut woken_and_done = false;
    for _ in 0..300 {
        let base = &child.address;
        let activated = metric_at(&client, base, woken).await;
        let transfers = metric_at(&client, base, &live("transfer")).await;
        let accounts = metric_at(&client, base, &live("account")).await;
        if activated > Some(0.0) && transfers == Some(0.0) && accounts == Some(0.0) {
            let since = *held_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > Duration::from_millis(600) {
                woken_and_done = true;
                break;
            }
        } else {
            held_since = None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        woken_and_done,
        "unfinished actors still live\n{}",
        child.output()
    );
    kill(child.pid(), Signal::SIGTERM).unwrap();
    child.process.wait().await.unwrap();

    let options = troupe::store::StoreOptions {
        idempotency_retention: Duration::from_secs(60),
        max_batch: 16,
        queue: 16,
        ..Default::default()
    };
    let store = troupe::store::EmbeddedStore::open(dir.path(), options).unwrap();
    use troupe::store::Store as _;
    let pending = store.pending().await.unwrap();
    store.close().await;
    assert!(pending.is_empty(), "still unfinished: {pending:?}");
}
