//! One instance per Redis prefix, until troupe runs as a cluster: a second
//! instance stays not ready and changes nothing, takes over when the first
//! stops, and an instance frozen past its lease writes nothing once it
//! wakes.

use std::time::Duration;

use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use troupe::settings::Settings;
use troupe::store::{
    Commit, LeaseState, RedisOptions, RedisStore, Store, StoreError, StoreOptions,
};

use crate::helpers::{spawn_app_with, Child, TestApp};
use crate::redis_server::RedisServer;

/// Short enough for a frozen instance's lease to lapse soon, four command
/// timeouts long as the settings require.
const LEASE_MS: u64 = 600;
const COMMAND_TIMEOUT_MS: u64 = 150;

/// A lease far longer than the test waits: a takeover within the wait is
/// the first instance's release, not its lease's expiry.
fn on_long_lease(redis: &RedisServer) -> impl Fn(&mut Settings) + '_ {
    move |s: &mut Settings| {
        redis.configure(s);
        s.store.redis.lease_ms = 20_000;
    }
}

async fn readyz(client: &reqwest::Client, base: &str) -> (StatusCode, String) {
    let r = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("request");
    (r.status(), r.text().await.unwrap_or_default())
}

/// Polls `/readyz` until it answers `want`, for a few leases at most.
async fn until_ready_is(client: &reqwest::Client, base: &str, want: StatusCode) -> String {
    let mut last = (StatusCode::OK, String::new());
    for _ in 0..100 {
        last = readyz(client, base).await;
        if last.0 == want {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{base}/readyz never answered {want}: {last:?}");
}

/// `GET /v1/accounts/{id}` on the server at `base`.
async fn read(client: &reqwest::Client, base: &str, id: &str) -> reqwest::Response {
    client
        .get(format!("{base}/v1/accounts/{id}"))
        .send()
        .await
        .expect("request")
}

/// The status of a deposit of `amount` into `id` on the server at `base`.
async fn deposit_status(client: &reqwest::Client, base: &str, id: &str, amount: u64) -> StatusCode {
    client
        .post(format!("{base}/v1/accounts/{id}/deposits"))
        .json(&json!({ "amount": amount }))
        .send()
        .await
        .expect("request")
        .status()
}

async fn balance(app: &TestApp, id: &str) -> Value {
    let r = app.get(&format!("/v1/accounts/{id}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["balance"].clone()
}

#[actix_rt::test]
async fn a_second_instance_on_one_prefix_stays_not_ready_changes_nothing_and_takes_over_after_the_first(
) {
    let redis = RedisServer::start();
    let first = spawn_app_with(TempDir::new().unwrap(), on_long_lease(&redis)).await;
    first.open("x").await;
    assert_eq!(first.deposit("x", 100).await.status(), StatusCode::OK);

    let second = spawn_app_with(TempDir::new().unwrap(), on_long_lease(&redis)).await;
    let (status, body) = readyz(&second.client, &second.address).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("another troupe instance") && body.contains("store.redis.prefix"),
        "says what is wrong and what to do: {body}"
    );
    // Nothing through the second: no read of what the first may change
    // next, no write.
    let read = second.get("/v1/accounts/x").await;
    assert_eq!(read.status(), StatusCode::SERVICE_UNAVAILABLE);
    let write = second.deposit("x", 5).await;
    assert_eq!(write.status(), StatusCode::SERVICE_UNAVAILABLE);
    let opened = second.put("/v1/accounts/y", json!({})).await;
    assert_eq!(opened.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(balance(&first, "x").await, json!(100));
    assert_eq!(
        first.get("/v1/accounts/y").await.status(),
        StatusCode::NOT_FOUND
    );

    // Another prefix on the same Redis is another deployment.
    let other = spawn_app_with(TempDir::new().unwrap(), |s| {
        on_long_lease(&redis)(s);
        s.store.redis.prefix = "elsewhere".into();
    })
    .await;
    assert_eq!(
        readyz(&other.client, &other.address).await.0,
        StatusCode::OK
    );

    // The first stops (its lease is released): the second takes over, long
    // before the lease could have expired, and reads what the first
    // acknowledged.
    first.stop().await;
    let stopped = std::time::Instant::now();
    until_ready_is(&second.client, &second.address, StatusCode::OK).await;
    assert!(stopped.elapsed() < Duration::from_secs(5));
    assert_eq!(balance(&second, "x").await, json!(100));
    assert_eq!(second.deposit("x", 5).await.status(), StatusCode::OK);
    assert_eq!(balance(&second, "x").await, json!(105));
}

/// SIGSTOP past the lease: another instance takes over and writes; the
/// frozen one, woken, serves nothing, then or after the other stops (it
/// cannot know what it holds in memory is current).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_frozen_past_its_lease_serves_and_writes_nothing_when_it_wakes() {
    let redis = RedisServer::start();
    let url = redis.url();
    let data = TempDir::new().unwrap();
    let lease = LEASE_MS.to_string();
    let command_timeout = COMMAND_TIMEOUT_MS.to_string();
    let frozen = Child::start(
        data.path(),
        &[
            ("TROUPE__STORE__BACKEND", "redis"),
            ("TROUPE__STORE__REDIS__URL", &url.clone()),
            ("TROUPE__STORE__REDIS__LEASE_MS", &lease),
            ("TROUPE__STORE__REDIS__COMMAND_TIMEOUT_MS", &command_timeout),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let base = frozen.address.clone();
    let open = client
        .put(format!("{base}/v1/accounts/x"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::CREATED);
    // x is now in the frozen instance's memory.
    assert_eq!(read(&client, &base, "x").await.status(), StatusCode::OK);
    let pid = nix::unistd::Pid::from_raw(frozen.process.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();

    let (tx, rx) = std::sync::mpsc::channel();
    let settings = move |s: &mut Settings| {
        s.store.backend = troupe::settings::StoreBackend::Redis;
        s.store.redis.url = url;
        s.store.redis.command_timeout_ms = COMMAND_TIMEOUT_MS;
        s.store.redis.lease_ms = LEASE_MS;
    };
    // The other instance, on an actix system of its own.
    let runner = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let next = spawn_app_with(TempDir::new().unwrap(), settings).await;
            until_ready_is(&next.client, &next.address, StatusCode::OK).await;

            assert_eq!(next.deposit("x", 7).await.status(), StatusCode::OK);
            tx.send(next.address.clone()).unwrap();
            // Serve until the test is done with it, then stop (releasing
            // the lease).
            tokio::time::sleep(Duration::from_millis(4_000)).await;
            next.stop().await;
        })
    });
    let next_address = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the other instance served");

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    // Woken: not even what it holds in memory is served, before or after
    // a write is tried.
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    assert_eq!(read(&client, &base, "x").await.status(), unavailable);
    assert_eq!(deposit_status(&client, &base, "x", 1).await, unavailable);
    assert_eq!(read(&client, &base, "x").await.status(), unavailable);
    let now = read(&client, &next_address, "x")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(now["balance"], json!(7), "{now}");

    // The other stops and its lease is free again: the woken instance
    // still serves nothing, and says to restart it.
    runner.join().expect("the other instance ran");
    tokio::time::sleep(Duration::from_millis(LEASE_MS * 2)).await;
    let body = until_ready_is(&client, &base, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(body.contains("restarted"), "{body}");
    assert_eq!(deposit_status(&client, &base, "x", 1).await, unavailable);
}

/// The commit script checks the lease itself: a commit sent by an
/// instance that believes it holds the lease, after another took it,
/// writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_without_the_lease_writes_nothing() {
    let server = RedisServer::start();
    let options = RedisOptions {
        url: server.url(),
        pool_size: 2,
        connect_timeout: Duration::from_secs(1),
        command_timeout: Duration::from_secs(1),
        prefix: "fence".into(),
    };
    let store = RedisStore::new(
        &options,
        &StoreOptions {
            max_batch: 16,
            queue: 16,
            ..Default::default()
        },
    )
    .unwrap();
    let state = store.hold_lease(Duration::from_secs(60)).await.unwrap();
    assert_eq!(state, LeaseState::Held);
    let commit = |expected: u64, state: &str| Commit {
        actor: "account/a".into(),
        expected_version: expected,
        version: expected + 1,
        state: Some(state.as_bytes().to_vec()),
        entries: vec![(expected + 1, b"e".to_vec())],
        idempotency: Vec::new(),
        facts: Vec::new(),
        pending: false,
        fence: false,
    };
    store.commit(commit(0, "mine")).await.unwrap();

    // Another instance's id in the lease, as after an expiry and a takeover.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = conn.set("fence:instance", "another pid 1").await.unwrap();
    match store.commit(commit(1, "stale")).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("FENCED"), "{message}")
        }
        other => panic!("a fenced commit is refused, nothing written: {other:?}"),
    }
    let snapshot = store.load("account/a").await.unwrap().unwrap();
    assert_eq!((snapshot.version, snapshot.state), (1, b"mine".to_vec()));
    let entries: Vec<String> = conn
        .zrange("fence:{account/a}:entries", 0, -1)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
}
