//! Group commit, deadlines and supervision seen from outside, through a store whose
//! loads can be held at a gate: every message sent while an actor waits for
//! its state lands in one mailbox drain, so what the docs claim about a
//! batch (one commit for all of it, replies only after it, a crash in the
//! middle of it) can be asserted exactly.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::gated::{gated_app, gated_layer, opened_and_passivated, GatedStore};
use crate::helpers::TestApp;

#[actix_rt::test]
async fn messages_waiting_together_share_one_commit_and_are_answered_after_it() {
    let (app, store) = gated_app().await;
    opened_and_passivated(&app, "g").await;
    store.hold_loads_of("account/g");
    store.hold_commits_of("account/g");
    let before = store.commits_of("account/g").len();
    let sizes = "troupe_group_commit_messages_sum";
    let summed = app.metric(sizes).await.unwrap_or(0.0);

    let deposits: Vec<_> = (0..20).map(|_| app.deposit("g", 1)).collect();
    let all = futures_util::future::join_all(deposits);
    tokio::pin!(all);
    // All 20 wait in the mailbox while the state loads; then they are
    // handled and their commit is held: not one answer may leave before it.
    let queued = app.wait_metric("troupe_actor_mailbox_depth", |n| n >= 20.0);
    tokio::select! {
        _ = &mut all => panic!("answered while loading"),
        _ = queued => {}
    }
    store.open();
    let early = tokio::time::timeout(Duration::from_millis(300), &mut all).await;
    assert!(early.is_err(), "answered before the commit was durable");
    store.open_commits();
    let answers = all.await;
    assert!(answers.iter().all(|r| r.status() == StatusCode::OK));
    assert_eq!(
        store.commits_of("account/g")[before..],
        [20],
        "one commit of 20 entries"
    );
    assert_eq!(app.balance("g").await, 20);
    // The batch-size histogram counts the 20 messages of that commit.
    app.wait_metric(sizes, |n| n >= summed + 20.0).await;
}

/// Work whose caller is gone is not done: a client that disconnects while
/// its deposit waits leaves no change behind.
#[actix_rt::test]
async fn a_message_whose_client_disconnected_is_dropped_unhandled() {
    use tokio::io::AsyncWriteExt;

    let (app, store) = gated_app().await;
    opened_and_passivated(&app, "gone").await;
    store.hold_loads_of("account/gone");
    let host = app.address.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let body = r#"{"amount":5}"#;
    let request = format!(
        "POST /v1/accounts/gone/deposits HTTP/1.1\r\nhost: {host}\r\n\
         x-request-timeout: 60000\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    app.wait_metric("troupe_actor_mailbox_depth", |n| n >= 1.0)
        .await;
    drop(tcp);
    // The server saw the client go: its request was dropped unanswered.
    let closed = r#"troupe_http_requests_total{method="POST",route="/v1/accounts/{id}/deposits",status="499"}"#;
    app.wait_metric(closed, |n| n >= 1.0).await;
    store.open();
    app.wait_metric(
        r#"troupe_actor_abandoned_drops_total{kind="account"}"#,
        |n| n >= 1.0,
    )
    .await;
    assert_eq!(app.balance("gone").await, 0);
    app.wait_metric("troupe_actor_mailbox_depth", |n| n == 0.0)
        .await;
}

#[actix_rt::test]
async fn a_crash_in_a_batch_answers_500_while_the_rest_is_committed_and_the_actor_restarts() {
    let (app, store) = gated_app().await;
    opened_and_passivated(&app, "c").await;
    store.hold_loads_of("account/c");
    let deposit = app.deposit("c", 5);
    let crash = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        app.post("/v1/actors/account/c/crash", json!({})).await
    };
    let opener = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        store.open();
    };
    let (deposit, crash, ()) = futures_util::join!(deposit, crash, opener);
    assert_eq!(deposit.status(), StatusCode::OK);
    assert_eq!(crash.status(), StatusCode::INTERNAL_SERVER_ERROR);
    app.wait_metric(r#"troupe_actor_restarts_total{kind="account"}"#, |n| {
        n >= 1.0
    })
    .await;
    assert_eq!(app.balance("c").await, 5);
    // The restart went through (a crashed activation stays busy until it
    // has reloaded): once idle, it leaves memory like any other.
    let mut options = (*app.app_runtime.options()).clone();
    options.idle_timeout = Duration::from_millis(50);
    app.app_runtime.set_options(options);
    app.wait_metric(r#"troupe_actors_live{kind="account"}"#, |n| n == 0.0)
        .await;
}

/// A restart reloads the durable state: a change the crashed batch could
/// not commit is gone after it, and its caller was told so.
#[actix_rt::test]
async fn after_a_crash_whose_batch_could_not_commit_the_state_is_the_durable_one() {
    let (app, store) = gated_app().await;
    opened_and_passivated(&app, "r").await;
    store.hold_loads_of("account/r");
    *store.fail_next.lock().unwrap() = Some("account/r".into());
    let deposit = app.deposit("r", 5);
    let crash = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        app.post("/v1/actors/account/r/crash", json!({})).await
    };
    let opener = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        store.open();
    };
    let (deposit, crash, ()) = futures_util::join!(deposit, crash, opener);
    // Every answer of a batch whose commit failed is 503: retry.
    assert_eq!(deposit.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(crash.status(), StatusCode::SERVICE_UNAVAILABLE);
    app.wait_metric(r#"troupe_actor_restarts_total{kind="account"}"#, |n| {
        n >= 1.0
    })
    .await;
    assert_eq!(
        app.balance("r").await,
        0,
        "the uncommitted deposit survived the restart"
    );
}

/// A message whose deadline passes while it waits in a mailbox is dropped
/// unprocessed, counted, and its caller gets `504`: here it waits behind
/// its actor's load, held longer than the request's `X-Request-Timeout`.
#[actix_rt::test]
async fn a_deadline_that_passes_in_the_mailbox_drops_the_message_unapplied() {
    let (app, store) = gated_app().await;
    opened_and_passivated(&app, "d").await;
    store.hold_loads_of("account/d");
    let late = app
        .client
        .post(app.url("/v1/accounts/d/deposits"))
        .header("X-Request-Timeout", "150")
        .json(&json!({"amount": 5}))
        .send();
    let opener = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        store.open();
    };
    let depth = async {
        // While it waits, it is counted as routed and not yet answered.
        app.wait_metric("troupe_actor_mailbox_depth", |n| n >= 1.0)
            .await
    };
    let (late, (), _) = futures_util::join!(late, opener, depth);
    assert_eq!(late.unwrap().status(), StatusCode::GATEWAY_TIMEOUT);
    app.wait_metric(
        r#"troupe_actor_deadline_drops_total{kind="account"}"#,
        |n| n >= 1.0,
    )
    .await;
    assert_eq!(app.balance("d").await, 0, "the late deposit was applied");
}

/// `X-Request-Timeout` is capped by `runtime.max_timeout_ms`, and a cap
/// edited in a file applies to the next request. Behind a load that is
/// held: at a cap of 300 ms a request asking for a minute is answered `504`;
/// once the cap is raised, a request asking for 3 s outlives the old cap
/// and is answered by the actor when the load goes through.
#[actix_rt::test]
async fn x_request_timeout_is_capped_by_max_timeout_ms_and_the_cap_reloads_live() {
    let config = crate::helpers::config_dir_copy();
    let local = config.path().join("local.toml");
    std::fs::write(
        &local,
        "[runtime]\ndefault_timeout_ms = 200\nmax_timeout_ms = 300\n",
    )
    .unwrap();
    let sources = troupe::settings::Sources {
        config_dir: Some(config.path().to_path_buf()),
        env: Some("development".into()),
        overrides: vec![
            ("server.port".into(), "0".into()),
            ("server.workers".into(), "2".into()),
        ],
        remote: Vec::new(),
        environment: Some(Default::default()),
    };
    let (layer, slot) = gated_layer();
    let app = crate::helpers::spawn_app_reloading_layered(
        tempfile::TempDir::new().unwrap(),
        sources,
        Some(layer),
    )
    .await;
    let store = slot.lock().unwrap().clone().unwrap();
    store.hold_loads_of("account/slow");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let asking = |ms: &'static str| {
        client
            .get(app.url("/v1/accounts/slow"))
            .header("X-Request-Timeout", ms)
            .send()
    };
    let r = asking("60000")
        .await
        .expect("answered at the cap, not after a minute");
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);

    std::fs::write(
        &local,
        "[runtime]\ndefault_timeout_ms = 200\nmax_timeout_ms = 60000\n",
    )
    .unwrap();
    let mut reloaded = false;
    for _ in 0..250 {
        if app.app_runtime.options().max_timeout == Duration::from_secs(60) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded, "the cap never reloaded");
    let opener = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        store.open();
    };
    let (r, ()) = futures_util::join!(asking("3000"), opener);
    // Never opened: the actor's own answer, not the deadline's.
    assert_eq!(r.unwrap().status(), StatusCode::NOT_FOUND);
}

/// At `runtime.max_activations` with no activation idle (the one live
/// actor is waiting for its load), a client's message for another actor
/// is refused `429` with `Retry-After`; once that actor is idle, room is
/// made for the newcomer (the shard does not stay shut after a full scan).
#[actix_rt::test]
async fn at_the_activation_cap_with_none_idle_a_new_actor_gets_429() {
    let (app, store) = gated_app().await;
    app.open("other").await;
    app.open("busy").await;
    app.wait_metric(r#"troupe_actors_live{kind="account"}"#, |n| n == 0.0)
        .await;
    // One per shard; "busy" and "other" hash to the same of the two shards
    // (SipHash with fixed keys), so they compete for that one place.
    let mut options = (*app.app_runtime.options()).clone();
    options.max_activations = 1;
    options.idle_timeout = Duration::from_secs(600);
    app.app_runtime.set_options(options);
    store.hold_loads_of("account/busy");
    let busy = app.get("/v1/accounts/busy");
    let refused = async {
        app.wait_metric(r#"troupe_actors_live{kind="account"}"#, |n| n == 1.0)
            .await;
        let r = app.get("/v1/accounts/other").await;
        store.open();
        r
    };
    let (busy, refused) = futures_util::join!(busy, refused);
    assert_eq!(busy.status(), StatusCode::OK);
    assert_eq!(refused.headers()["retry-after"], "1");
    crate::helpers::assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "overloaded").await;
    // "busy" stays live, now idle: the least recently used idle actor makes
    // room. A scan that found none idle is not repeated for a moment (50 ms);
    // past that moment the shard scans again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut status = StatusCode::TOO_MANY_REQUESTS;
    for _ in 0..250 {
        status = app.get("/v1/accounts/other").await.status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, StatusCode::OK, "the full shard never made room");
}

/// `a` (100) debited 40 for transfer `t` to `b` (passivated), whose loads
/// are held: `a`'s outbox holds `t`, unfinished, until `store.open()`.
async fn debited_while_the_credit_waits(app: &TestApp, store: &GatedStore) {
    app.open("a").await;
    assert_eq!(app.deposit("a", 100).await.status(), StatusCode::OK);
    store.hold_loads_of("account/b");
    let transfer = app
        .client
        .post(app.url("/v1/transfers"))
        .header("X-Request-Timeout", "300")
        .json(&json!({"id": "t", "from": "a", "to": "b", "amount": 40}))
        .send()
        .await
        .unwrap();
    // The debit is durable and the credit waits: accepted, going on.
    assert_eq!(transfer.status(), StatusCode::ACCEPTED);
}

/// After a commit of unknown outcome the reload writes a fence: the state
/// it read, one version up. That write keeps what the state says about
/// unfinished work: `a`, whose outbox holds a transfer still waiting for
/// its credit, stays in the store's pending set, so a crash right after
/// the fence still wakes it on restart.
#[actix_rt::test]
async fn the_fence_after_a_failed_commit_keeps_unfinished_work_pending() {
    let (app, store) = gated_app().await;
    opened_and_passivated(&app, "b").await;
    debited_while_the_credit_waits(&app, &store).await;
    let commits = store.commits_of("account/a").len();

    *store.lose_next.lock().unwrap() = Some("account/a".into());
    let lost = app.deposit("a", 1).await;
    assert_eq!(lost.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The failed commit is not recorded; the fence is.
    for _ in 0..250 {
        if store.commits_of("account/a").len() > commits {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.commits_of("account/a").len(), commits + 1, "no fence");
    let pending = troupe::store::Store::pending(&*store).await.unwrap();
    assert!(
        pending.contains(&"account/a".to_owned()),
        "the fence dropped a's unfinished work: {pending:?}"
    );
    // The transfer finishes once `b` loads.
    store.open();
    app.wait_balance("b", 40).await;
}

/// An actor with unfinished work whose reload fails (here after a crash)
/// keeps trying to load, every `runtime.retry_interval_ms`, without
/// waiting for a client's message: `a`'s outbox holds a transfer.
#[actix_rt::test]
async fn an_actor_with_unfinished_work_whose_reload_fails_tries_again_by_itself() {
    let (app, store) = gated_app().await;
    opened_and_passivated(&app, "b").await;
    let mut options = (*app.app_runtime.options()).clone();
    options.retry_interval = Duration::from_millis(100);
    app.app_runtime.set_options(options);
    debited_while_the_credit_waits(&app, &store).await;

    let loads = store.loads_of("account/a");
    *store.fail_next_load.lock().unwrap() = Some("account/a".into());
    let crash = app.post("/v1/actors/account/a/crash", json!({})).await;
    assert_eq!(crash.status(), StatusCode::INTERNAL_SERVER_ERROR);
    // The reload after the crash fails; the next one, unasked, works.
    for _ in 0..250 {
        if store.loads_of("account/a") >= loads + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        store.loads_of("account/a") >= loads + 2,
        "a failed reload was not tried again"
    );
    store.open();
}
