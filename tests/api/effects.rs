//! Effects and lazy changes seen from outside, through a gated store: an
//! ask's answer is handled only once the step that asked is durable, even
//! when it comes back before that step's commit has started; a lazy change
//! (a settled transfer leaving its source account's outbox) pays no commit
//! of its own, joins the account's next commit, or is written on its own
//! after `runtime.retry_interval_ms`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::gated::{gated_app_with, GatedStore};
use crate::helpers::{json_of, TestApp};

/// Actors whose durable state has unfinished work.
async fn pending(store: &GatedStore) -> Vec<String> {
    troupe::store::Store::pending(store)
        .await
        .expect("the pending set")
}

/// Polls until `holds` is true of the pending set; panics after 5 s.
async fn wait_pending(store: &GatedStore, holds: impl Fn(&[String]) -> bool) -> Vec<String> {
    let mut last = Vec::new();
    for _ in 0..250 {
        last = pending(store).await;
        if holds(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the pending set never held; last {last:?}");
}

/// `a` with 100 and `b` empty.
async fn two_accounts(app: &TestApp) {
    app.open("a").await;
    assert_eq!(app.deposit("a", 100).await.status(), StatusCode::OK);
    app.open("b").await;
}

/// Transfer `t`: 40 from `a` to `b`, completed.
async fn transfer_t(app: &TestApp) {
    let r = app
        .post(
            "/v1/transfers",
            json!({"id": "t", "from": "a", "to": "b", "amount": 40}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// A request sent now, answered whenever the server answers (within 30 s).
fn sent(
    app: &TestApp,
    path: &str,
    key: Option<&str>,
    body: serde_json::Value,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let mut request = app
        .client
        .post(app.url(path))
        .header("X-Request-Timeout", "30000")
        .json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    tokio::spawn(async move { request.send().await.expect("request") })
}

/// The transfer's debit is applied and answered while the transfer waits
/// on a lookup, before its own first commit (the pending record) has even
/// started. That answer must wait: handled at once, the transfer would
/// credit `b` before its record exists. It must not be lost either: with
/// `runtime.retry_interval_ms` at ten minutes, nothing else would resume
/// the transfer.
#[actix_rt::test]
async fn an_answer_that_comes_back_before_its_step_is_durable_is_handled_after_the_commit() {
    let (app, store) = gated_app_with(|s| s.runtime.retry_interval_ms = 600_000).await;
    two_accounts(&app).await;
    store.hold_loads_of("transfer/t");
    store.hold_lookups_of("transfer/t");
    store.hold_commits_of("transfer/t");

    // Shards report every 250 ms: from a report of nothing in flight on,
    // a depth counts only what this test sends next.
    app.wait_metric("troupe_actor_mailbox_depth", |n| n == 0.0)
        .await;
    let body = json!({"id": "t", "from": "a", "to": "b", "amount": 40});
    let start = sent(&app, "/v1/transfers", None, body);
    app.wait_metric("troupe_actor_mailbox_depth", |n| n >= 1.0)
        .await;
    // A keyed read queued behind the start: its idempotency lookup is held.
    let peek = sent(&app, "/v1/actors/transfer/t/get", Some("peek"), json!({}));
    app.wait_metric("troupe_actor_mailbox_depth", |n| n >= 2.0)
        .await;
    store.open();
    // The start is handled and its debit sent; the read waits on its lookup.
    app.wait_balance("a", 60).await;

    store.open_lookups();
    // The debit's answer is in; the transfer's first commit is held.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.balance("b").await,
        0,
        "credited before the transfer's record was durable"
    );

    store.open_commits();
    let start = start.await.unwrap();
    // The first record written still waits for the debit: its answer was
    // not handled before that commit.
    let first = store.states_of("transfer/t").first().cloned();
    assert_eq!(
        first.as_ref().map(|t| t["phase"]["phase"].clone()),
        Some(json!("debit")),
        "{first:?}"
    );
    assert_eq!(start.status(), StatusCode::CREATED);
    assert_eq!(json_of(start).await["status"], json!("completed"));
    assert_eq!(peek.await.unwrap().status(), StatusCode::OK);
    assert_eq!((app.balance("a").await, app.balance("b").await), (60, 40));
}

/// A settled transfer leaves its source account's outbox lazily: no commit
/// of its own. The account's durable state keeps it pending until its next
/// commit, which carries the change.
#[actix_rt::test]
async fn a_lazy_change_pays_no_commit_of_its_own_and_joins_the_next_one() {
    let (app, store) = gated_app_with(|s| s.runtime.retry_interval_ms = 600_000).await;
    two_accounts(&app).await;
    let commits = store.commits_of("account/a").len();
    transfer_t(&app).await;
    let settled = r#"troupe_actor_messages_total{kind="account",message="settle",outcome="ok"}"#;
    app.wait_metric(settled, |n| n >= 1.0).await;
    // A read goes through `a`'s mailbox after the settle notice and
    // leaves after any commit the notice made.
    assert_eq!(app.balance("a").await, 60);
    assert_eq!(
        store.commits_of("account/a").len(),
        commits + 1,
        "the debit's commit, and the settle notice's of its own"
    );
    assert!(pending(&store).await.contains(&"account/a".to_owned()));
    assert_eq!(app.deposit("a", 1).await.status(), StatusCode::OK);
    assert_eq!(
        store.commits_of("account/a").len(),
        commits + 2,
        "one more commit: the deposit's"
    );
    assert!(
        !pending(&store).await.contains(&"account/a".to_owned()),
        "the deposit's commit did not carry the settled outbox"
    );
}

/// With nothing else to commit, a lazy change is written on its own once
/// `runtime.retry_interval_ms` has passed: the account leaves the pending
/// set, so a restart does not hand the settled transfer back. Until then it
/// keeps the account in memory, however short the idle timeout: passivated
/// first, the account would lose it.
#[actix_rt::test]
async fn a_lazy_change_is_written_on_its_own_after_the_retry_interval() {
    let (app, store) = gated_app_with(|s| {
        s.runtime.retry_interval_ms = 300;
        s.runtime.idle_timeout_ms = 50;
    })
    .await;
    two_accounts(&app).await;
    transfer_t(&app).await;
    let version = |body: serde_json::Value| body["version"].as_u64().expect("a version");
    let before = version(json_of(app.get("/v1/accounts/a").await).await);
    wait_pending(&store, |p| p.is_empty()).await;
    assert_eq!((app.balance("a").await, app.balance("b").await), (60, 40));
    // Written on its own, the change is a version of its own.
    let after = version(json_of(app.get("/v1/accounts/a").await).await);
    assert_eq!(after, before + 1);
}
