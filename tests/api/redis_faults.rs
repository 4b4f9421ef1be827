//! The service on a real Redis: the same guarantees as on the embedded
//! store, and recovery from Redis faults without a restart.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::json;
use tempfile::TempDir;

use crate::helpers::{all_entries, assert_error, json_of, spawn_app_with};
use crate::ledger_load::{audit, fund, Load};
use crate::redis_server::RedisServer;

#[actix_rt::test]
async fn concurrent_transfers_conserve_money_on_redis() {
    let redis = RedisServer::start();
    let app = spawn_app_with(TempDir::new().unwrap(), |s| redis.configure(s)).await;
    assert_eq!(
        json_of(app.get("/readyz").await).await["store"],
        json!("redis")
    );
    crate::concurrency::run(&app).await;
}

#[actix_rt::test]
async fn redis_down_answers_503_with_retry_after_and_redis_back_recovers_without_restart() {
    let dir = TempDir::new().unwrap();
    let mut redis = RedisServer::start_durable(dir.path());
    let app = spawn_app_with(TempDir::new().unwrap(), |s| redis.configure(s)).await;
    app.open("a").await;
    assert_eq!(app.deposit("a", 10).await.status(), StatusCode::OK);

    redis.kill();
    let started = std::time::Instant::now();
    let r = app.deposit("a", 5).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the 503 took {:?}",
        started.elapsed()
    );
    assert_eq!(r.headers()["retry-after"], "1");
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert_error(
        app.get("/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;
    assert_error(
        app.get("/v1/accounts/a").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;

    redis.restart();
    let mut recovered = false;
    for _ in 0..100 {
        if app.get("/readyz").await.status() == StatusCode::OK
            && app.get("/v1/accounts/a").await.status() == StatusCode::OK
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        recovered,
        "the service did not recover after Redis came back"
    );
    assert_eq!(
        app.balance("a").await,
        10,
        "the refused deposit must not have applied"
    );
    assert_eq!(
        json_of(app.deposit("a", 1).await).await["balance"],
        json!(11)
    );
}

/// A Redis that hangs (SIGSTOP: connections stay open, nothing answers)
/// is bounded like one that is gone: every kind of request that needs it
/// answers `503` with `Retry-After` within a few command timeouts (a keyed
/// write does a lookup and a commit, a transfer several steps), and the
/// service carries on when Redis does.
#[actix_rt::test]
async fn a_hung_redis_answers_503_for_every_kind_of_request_and_the_service_carries_on() {
    let redis = RedisServer::start();
    let app = spawn_app_with(TempDir::new().unwrap(), |s| {
        redis.configure(s);
        s.store.redis.command_timeout_ms = 300;
    })
    .await;
    app.open("a").await;
    app.open("b").await;
    assert_eq!(app.deposit("a", 100).await.status(), StatusCode::OK);

    redis.freeze(true);
    // Bounded, not fast: a request that hung would never answer at all.
    async fn bounded(
        what: &'static str,
        r: impl std::future::Future<Output = reqwest::Response>,
    ) -> (&'static str, reqwest::Response) {
        let r = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .unwrap_or_else(|_| panic!("{what} hung with Redis"));
        (what, r)
    }
    let requests = [
        bounded("deposit", app.deposit("a", 1)).await,
        bounded(
            "keyed deposit",
            app.post_with_key("/v1/accounts/b/deposits", "k", json!({"amount": 1})),
        )
        .await,
        bounded("cold read", app.get("/v1/accounts/never-loaded")).await,
        bounded(
            "transfer",
            app.post(
                "/v1/transfers",
                json!({"id": "t-h", "from": "a", "to": "b", "amount": 1}),
            ),
        )
        .await,
    ];
    for (what, r) in requests {
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
        assert_eq!(r.headers()["retry-after"], "1", "{what}");
    }
    // The deposit's commit was sent and never answered: its outcome is
    // unknown (and then fenced off), not refused.
    app.wait_metric(
        r#"troupe_store_errors_total{backend="redis",error="unknown",op="commit"}"#,
        |n| n >= 1.0,
    )
    .await;
    redis.freeze(false);

    let mut recovered = false;
    for _ in 0..100 {
        if app.deposit("a", 1).await.status() == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "the service did not carry on after Redis did");
}

/// The service starts while Redis is down, is not ready, and becomes ready
/// when Redis comes, without a restart.
#[actix_rt::test]
async fn the_service_starts_without_redis_and_becomes_ready_when_it_comes() {
    let dir = TempDir::new().unwrap();
    let mut redis = RedisServer::start_durable(dir.path());
    redis.kill();
    let app = spawn_app_with(TempDir::new().unwrap(), |s| {
        redis.configure(s);
        s.store.redis.command_timeout_ms = 300;
    })
    .await;
    assert_eq!(
        app.get("/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    redis.restart();
    let mut ready = false;
    for _ in 0..100 {
        if app.get("/readyz").await.status() == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "never became ready");
    app.open("late").await;
}

#[actix_rt::test]
async fn a_write_whose_outcome_is_unknown_is_never_applied_twice() {
    let redis = RedisServer::start();
    let app = spawn_app_with(TempDir::new().unwrap(), |s| {
        redis.configure(s);
        s.store.redis.command_timeout_ms = 200;
    })
    .await;
    app.open("a").await;
    // Writes wait for the pause; the commit times out on our side but is
    // applied by Redis once the pause ends.
    pause_writes(redis.port, 700);
    let first = app
        .post_with_key("/v1/accounts/a/deposits", "once", json!({"amount": 5}))
        .await;
    // Its caller waits while the actor fences: once the pause ends, the
    // fence finds the commit landed (200); or the wait ends first and it is
    // told the outcome is unknown (503).
    let first_status = first.status();
    assert!(
        first_status == StatusCode::OK || first_status == StatusCode::SERVICE_UNAVAILABLE,
        "{first_status}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;

    let mut answer = None;
    for _ in 0..50 {
        let r = app
            .post_with_key("/v1/accounts/a/deposits", "once", json!({"amount": 5}))
            .await;
        if r.status() == StatusCode::OK {
            answer = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first attempt may land when the pause ends, or be dropped with
    // its timed-out connection. Each has exactly one correct outcome, and
    // in both the actor must have fenced the unknown outcome off before
    // trusting what it read (a fence writes the state back at the next
    // version):
    // - the first attempt landed: open 1, deposit 2, fence 3; the retry replays;
    // - it never landed: open 1, fence 2, and the retry applies it: 3.
    // A retry that times out too (a loaded machine, 200 ms) is one more
    // unknown outcome and one more fence: at least 3, and without fences 2.
    let answer = answer.expect("the retry succeeds");
    let replayed = answer.headers().get("idempotent-replayed").is_some();
    eprintln!(
        "unknown outcome resolved: {}",
        if replayed {
            "the first attempt landed and the retry replayed it"
        } else {
            "the first attempt never landed; the fence ran and the retry applied it"
        }
    );
    assert_eq!(app.balance("a").await, 5);
    assert_eq!(all_entries(&app.client, &app.address, "a").await.len(), 1);
    let account = json_of(app.get("/v1/accounts/a").await).await;
    assert!(
        account["version"].as_u64().is_some_and(|v| v >= 3),
        "replayed {replayed}: {account}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_under_transfer_load_loses_nothing_acknowledged() {
    let dir = TempDir::new().unwrap();
    let mut redis = RedisServer::start_durable(dir.path());
    let redis_url = redis.url();
    let data = TempDir::new().unwrap();
    let child = crate::helpers::Child::start(
        data.path(),
        &[
            ("TROUPE__STORE__BACKEND", "redis"),
            ("TROUPE__STORE__REDIS__URL", &redis_url),
            ("TROUPE__STORE__REDIS__COMMAND_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let client = Client::new();
    fund(&client, &child.address).await;

    let load = Load::start(&client, &child.address, 16);
    load.under_way(30, 30).await;
    redis.kill();
    // An outage of 700 ms: requests meet it and fail, none wait for it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.restart();
    // The service carries on once Redis is back: the load makes progress.
    let deposits = load.acked.lock().unwrap().len();
    load.under_way(deposits + 30, 30).await;
    let (acked, started) = load.finish().await;

    audit(&client, &child.address, &acked, &started).await;
}

/// `CLIENT PAUSE <ms> WRITE` through a raw connection.
fn pause_writes(port: u16, ms: u64) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let ms = ms.to_string();
    let command = format!(
        "*4\r\n$6\r\nCLIENT\r\n$5\r\nPAUSE\r\n${}\r\n{ms}\r\n$5\r\nWRITE\r\n",
        ms.len()
    );
    stream.write_all(command.as_bytes()).unwrap();
    let mut ok = [0u8; 5];
    std::io::Read::read_exact(&mut stream, &mut ok).unwrap();
    assert_eq!(&ok, b"+OK\r\n");
}

/// A Redis that may evict keys would lose acknowledged data on its own
/// (`allkeys-*` anything, `volatile-*` the idempotency records, the only
/// keys with a time to live): the service refuses to start on one, and
/// says why. `noeviction` starts, and the settings read are exported.
#[actix_rt::test]
async fn a_redis_that_evicts_keys_is_refused_at_start() {
    for policy in ["allkeys-lru", "volatile-ttl"] {
        let redis = RedisServer::start_with(&["--maxmemory-policy", policy]);
        let dir = TempDir::new().unwrap();
        let mut settings = crate::helpers::test_settings(dir.path());
        redis.configure(&mut settings);
        let refused = troupe::startup::Application::build(settings)
            .await
            .err()
            .expect("the service refuses an evicting Redis");
        let message = format!("{refused:#}");
        assert!(
            message.contains(&format!("maxmemory-policy {policy}"))
                && message.contains("noeviction"),
            "{message}"
        );
    }
    let redis = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let app = spawn_app_with(TempDir::new().unwrap(), |s| redis.configure(s)).await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    // What the server promises is on the dashboard too.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let info = metrics
        .lines()
        .find(|l| l.starts_with("troupe_redis_settings_info{"))
        .unwrap_or_else(|| panic!("no Redis settings exported:\n{metrics}"));
    assert!(
        info.contains("maxmemory_policy=\"noeviction\"")
            && info.contains("appendfsync=\"")
            && info.ends_with(" 1"),
        "{info}"
    );
}

/// A managed Redis that refuses `CONFIG` (here to an ACL user without
/// it, as managed services do) cannot be checked: the service starts on
/// it (the Storage chapter says the policy is then the operator's to see to) and
/// exports no settings it could not read.
#[actix_rt::test]
async fn a_redis_that_refuses_config_starts_unchecked() {
    let redis = RedisServer::start_with(&[
        "--maxmemory-policy",
        "allkeys-lru",
        "--user",
        "troupe",
        "on",
        "nopass",
        "~*",
        "&*",
        "+@all",
        "-config",
    ]);
    let app = spawn_app_with(TempDir::new().unwrap(), |s| {
        redis.configure(s);
        s.store.redis.url = s.store.redis.url.replace("redis://", "redis://troupe:any@");
    })
    .await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        !metrics.contains("troupe_redis_settings_info{"),
        "settings exported that were never read:\n{metrics}"
    );
    app.open("alice").await;
    assert_eq!(app.deposit("alice", 5).await.status(), StatusCode::OK);
}

/// One account's data damaged in Redis (its stored version no longer a
/// number): that account answers `500 corrupt` and changes nothing, the
/// others are served, `/readyz` stays 200 and names it; once the key is
/// put right, it is served again, as it was, and no longer named.
#[actix_rt::test]
async fn one_damaged_account_is_refused_alone_and_named_by_readyz() {
    let redis = RedisServer::start();
    let app = spawn_app_with(TempDir::new().unwrap(), |s| redis.configure(s)).await;
    app.open("alice").await;
    app.open("bob").await;
    assert_eq!(app.deposit("alice", 50).await.status(), StatusCode::OK);
    assert_eq!(app.deposit("bob", 7).await.status(), StatusCode::OK);
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = "troupe:{account/alice}:state";
    let version: String = ::redis::cmd("HGET")
        .arg(key)
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    ::redis::cmd("HSET")
        .arg(key)
        .arg("v")
        .arg("not-a-number")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    let refused = app
        .post_with_key("/v1/accounts/alice/deposits", "d", json!({"amount": 5}))
        .await;
    assert_error(refused, StatusCode::INTERNAL_SERVER_ERROR, "corrupt").await;
    assert_eq!(app.deposit("bob", 1).await.status(), StatusCode::OK);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    let ready = json_of(ready).await;
    assert_eq!(
        ready["damaged"]["actors"],
        json!(["account/alice"]),
        "{ready}"
    );
    assert_eq!(ready["damaged"]["count"], 1);

    ::redis::cmd("HSET")
        .arg(key)
        .arg("v")
        .arg(&version)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let served = crate::helpers::eventually(|| async {
        app.get("/v1/accounts/alice").await.status() == StatusCode::OK
    })
    .await;
    assert!(served, "alice is not served once her key is put right");
    assert_eq!(
        app.balance("alice").await,
        50,
        "the refused deposit changed something"
    );
    assert_eq!(app.balance("bob").await, 8);
    let ready = json_of(app.get("/readyz").await).await;
    assert_eq!(ready["damaged"]["count"], 0, "{ready}");
}
