//! Transfers are exactly-once by construction: whatever a client sends
//! (any key, any id, any retry), whatever expires, and whatever fails in
//! the store at any step, money is conserved and every transfer ends as
//! its client was told. One test per defect of the old saga, plus a
//! fault-injecting store that fails each kind of store call of each actor
//! of a transfer in turn.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use troupe::store::{Commit, EmbeddedStore, Snapshot, Store, StoreError, StoreOptions};

use crate::helpers::{
    all_entries, json_of, replay_journal, spawn_app, spawn_app_layered, spawn_app_with, TestApp,
};

async fn settled(app: &TestApp, id: &str) -> Value {
    for _ in 0..200 {
        let r = app.get(&format!("/v1/transfers/{id}")).await;
        if r.status() == StatusCode::OK {
            let body = json_of(r).await;
            if body["status"] != json!("pending") {
                return body;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("transfer {id} never settled");
}

#[actix_rt::test]
async fn client_keys_shaped_like_leg_keys_cannot_touch_a_transfer() {
    let app = spawn_app().await;
    app.open("alice").await;
    app.open("bob").await;
    app.deposit("alice", 1000).await;
    for (account, key) in [
        ("bob", "transfer:t-9:credit"),
        ("alice", "transfer:t-9:refund"),
        ("alice", "transfer:t-9:debit"),
    ] {
        let r = app
            .post_with_key(
                &format!("/v1/accounts/{account}/deposits"),
                key,
                json!({"amount": 1}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = app
        .post(
            "/v1/transfers",
            json!({"id": "t-9", "from": "alice", "to": "bob", "amount": 500}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        (app.balance("alice").await, app.balance("bob").await),
        (502, 501)
    );
}

#[actix_rt::test]
async fn a_transfer_key_is_bound_to_its_first_body() {
    let app = spawn_app().await;
    app.open("a").await;
    app.open("b").await;
    app.deposit("a", 100).await;
    let body_a = json!({"from": "a", "to": "b", "amount": 10});
    let body_b = json!({"from": "b", "to": "a", "amount": 10});
    let first = app
        .post_with_key("/v1/transfers", "pay-1", body_a.clone())
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = json_of(first).await;
    let other = app.post_with_key("/v1/transfers", "pay-1", body_b).await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let retry = app.post_with_key("/v1/transfers", "pay-1", body_a).await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(retry).await, first);
    assert_eq!((app.balance("a").await, app.balance("b").await), (90, 10));
}

#[actix_rt::test]
async fn through_the_actor_api_too_a_transfer_is_bound_to_its_first_body() {
    let app = spawn_app().await;
    app.open("a").await;
    app.open("b").await;
    app.deposit("a", 100).await;
    let path = "/v1/actors/transfer/t-api/start";
    let first = app
        .post_with_key(path, "k", json!({"from": "a", "to": "b", "amount": 10}))
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let other = app
        .post_with_key(path, "k", json!({"from": "a", "to": "b", "amount": 11}))
        .await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let retry = app
        .post_with_key(path, "k", json!({"from": "a", "to": "b", "amount": 10}))
        .await;
    assert_eq!(
        retry.status(),
        StatusCode::OK,
        "the first body's retry still replays"
    );
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!((app.balance("a").await, app.balance("b").await), (90, 10));
}

#[actix_rt::test]
async fn gets_ignore_idempotency_keys() {
    let app = spawn_app().await;
    app.open("a").await;
    let get = || {
        app.client
            .get(app.url("/v1/accounts/a"))
            .header("Idempotency-Key", "same")
            .send()
    };
    assert_eq!(json_of(get().await.unwrap()).await["balance"], json!(0));
    app.deposit("a", 7).await;
    let again = get().await.unwrap();
    assert!(again.headers().get("idempotent-replayed").is_none());
    assert_eq!(json_of(again).await["balance"], json!(7));
}

/// The store as it was before a resume: the transfer record says pending
/// (a backup restored, or an outage longer than key retention) while both
/// legs are long applied and every idempotency record has expired.
#[actix_rt::test]
async fn a_transfer_resumed_after_its_keys_expired_applies_no_leg_twice() {
    let short = |s: &mut troupe::settings::Settings| {
        s.store.idempotency_retention_s = 1;
        s.store.sweep_interval_s = 1;
    };
    let app = spawn_app_with(TempDir::new().unwrap(), short).await;
    app.open("a").await;
    app.open("b").await;
    app.deposit("a", 100).await;
    let r = app
        .post(
            "/v1/transfers",
            json!({"id": "t-old", "from": "a", "to": "b", "amount": 30}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let dir = app.stop().await;

    let options = StoreOptions {
        idempotency_retention: Duration::from_secs(1),
        max_batch: 16,
        queue: 16,
        ..Default::default()
    };
    let store = EmbeddedStore::open(dir.path(), options).unwrap();
    let snapshot = store.load("transfer/t-old").await.unwrap().unwrap();
    let mut state: Value = serde_json::from_slice(&snapshot.state).unwrap();
    state["status"] = json!("pending");
    state["phase"] = json!({"phase": "debit"});
    let rewind = Commit {
        actor: "transfer/t-old".into(),
        expected_version: snapshot.version,
        version: snapshot.version + 1,
        state: Some(serde_json::to_vec(&state).unwrap()),
        pending: true,
        ..Commit::default()
    };
    store.commit(rewind).await.unwrap();
    store.close().await;

    let app = spawn_app_with(dir, short).await;
    assert_eq!(settled(&app, "t-old").await["status"], json!("completed"));
    assert_eq!((app.balance("a").await, app.balance("b").await), (70, 30));
    assert_eq!(all_entries(&app.client, &app.address, "a").await.len(), 2);
}

#[actix_rt::test]
async fn unknown_actors_do_not_stay_in_memory_and_made_up_methods_are_one_series() {
    let app = spawn_app().await;
    for i in 0..2000 {
        let r = app.get(&format!("/v1/accounts/ghost-{i}")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = app.get(&format!("/v1/transfers/ghost-{i}")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    for method in ["FOO123", "BAR456"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        app.client
            .request(m, app.url("/v1/accounts/x"))
            .send()
            .await
            .unwrap();
    }
    let mut text = String::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = app.get("/metrics").await.text().await.unwrap();
        if text.contains("troupe_actor_passivations_total{kind=\"transfer\"} 2000") {
            break;
        }
    }
    let live: f64 = text
        .lines()
        .filter(|l| l.starts_with("troupe_actors_live{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        live < 10.0,
        "{live} activations live after 4000 unknown ids:\n{text}"
    );
    assert!(
        text.contains("troupe_actor_passivations_total{kind=\"account\"} 2000"),
        "{text}"
    );
    assert!(!text.contains("FOO123") && !text.contains("BAR456"));
    assert!(text.contains("method=\"other\""));
}

/// Which store call of which actor fails, and how.
#[derive(Debug, Clone, Copy)]
struct Fault {
    /// `load`, `fact`, `commit`, or `conflict` (another writer's identical
    /// commit lands first, and this one is refused).
    op: &'static str,
    actor: &'static str,
    nth: usize,
    /// How many matching calls fail from the `nth` on.
    times: usize,
    /// A commit applied by the store but reported lost (an unknown outcome).
    after_apply: bool,
}

struct FaultyStore {
    inner: Arc<dyn Store>,
    fault: Fault,
    armed: AtomicBool,
    seen: AtomicUsize,
    /// Loads and idempotency lookups of the fault's actor take this long.
    slow: Duration,
}

impl FaultyStore {
    /// Whether this call fails: the `nth` matching one and the `times - 1`
    /// after it, or every one while armed when `nth` is 0.
    fn trips(&self, op: &str, actor: &str) -> bool {
        if !self.armed.load(Ordering::SeqCst) || op != self.fault.op || actor != self.fault.actor {
            return false;
        }
        let seen = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        self.fault.nth == 0 || (self.fault.nth..self.fault.nth + self.fault.times).contains(&seen)
    }

    async fn pace(&self, actor: &str) {
        if self.armed.load(Ordering::SeqCst) && actor == self.fault.actor {
            tokio::time::sleep(self.slow).await;
        }
    }

    fn injected() -> StoreError {
        StoreError::Unavailable("injected fault".into())
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn load(&self, actor: &str) -> Result<Option<Snapshot>, StoreError> {
        self.pace(actor).await;
        if self.trips("load", actor) {
            return Err(Self::injected());
        }
        self.inner.load(actor).await
    }
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        if self.trips("commit", &commit.actor.clone()) {
            if self.fault.after_apply {
                // Applied, then the answer was lost: the outcome is unknown.
                self.inner.commit(commit).await?;
                return Err(StoreError::Unknown("injected fault".into()));
            }
            return Err(Self::injected());
        }
        // Another writer's commit, identical, lands first.
        if self.trips("conflict", &commit.actor.clone()) {
            let (actor, expected, found) = (
                commit.actor.clone(),
                commit.expected_version,
                commit.version,
            );
            self.inner.commit(commit).await?;
            return Err(StoreError::Conflict {
                actor,
                expected,
                found,
            });
        }
        self.inner.commit(commit).await
    }
    async fn entries(
        &self,
        actor: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.entries(actor, after, limit).await
    }
    async fn idempotency(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.pace(actor).await;
        self.inner.idempotency(actor, key).await
    }
    async fn fact(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if self.trips("fact", actor) {
            return Err(Self::injected());
        }
        self.inner.fact(actor, key).await
    }
    async fn list(
        &self,
        kind: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.list(kind, prefix, after, limit).await
    }

    async fn reindex(&self) -> Result<u64, StoreError> {
        self.inner.reindex().await
    }

    async fn pending(&self) -> Result<Vec<String>, StoreError> {
        self.inner.pending().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn sweep(&self) {
        self.inner.sweep().await;
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

impl FaultyStore {
    /// A store layer wrapping the real store in a `FaultyStore`, and where
    /// to find it once the application has built it.
    fn layer(
        fault: Fault,
        slow: Duration,
        armed: bool,
    ) -> (troupe::startup::StoreLayer, Arc<Mutex<Option<Arc<Self>>>>) {
        let slot = Arc::new(Mutex::new(None::<Arc<Self>>));
        let keep = slot.clone();
        let layer: troupe::startup::StoreLayer = Box::new(move |inner| {
            let faulty = Arc::new(Self {
                inner,
                fault,
                armed: AtomicBool::new(armed),
                seen: AtomicUsize::new(0),
                slow,
            });
            *keep.lock().unwrap() = Some(faulty.clone());
            faulty
        });
        (layer, slot)
    }
}

/// A test server on a [`FaultyStore`] (disarmed) with accounts `a` (100)
/// and `b` (0), the usual cast of a transfer under faults.
async fn faulty_app(
    fault: Fault,
    slow: Duration,
    tweak: impl FnOnce(&mut troupe::settings::Settings),
) -> (TestApp, Arc<FaultyStore>) {
    let (layer, slot) = FaultyStore::layer(fault, slow, false);
    let app = spawn_app_layered(tweak, layer).await;
    app.open("a").await;
    app.open("b").await;
    app.deposit("a", 100).await;
    let faulty = slot.lock().unwrap().clone().unwrap();
    (app, faulty)
}

/// `POST /v1/transfers` with `X-Request-Timeout: ms`.
async fn start_within(app: &TestApp, ms: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/transfers"))
        .header("X-Request-Timeout", ms)
        .json(&body)
        .send()
        .await
        .expect("the server answers")
}

/// Every store call a transfer makes, failed in turn: the transfer's and
/// both accounts' commits (lost, or applied and reported lost), loads and
/// fact reads, first and second of each. Each time, money is conserved,
/// the transfer settles without a client's help (none retries), and it ends
/// as its client was told.
#[actix_rt::test]
async fn a_transfer_survives_a_store_fault_at_every_step() {
    let mut cases = Vec::new();
    for actor in ["transfer/t", "account/a", "account/b"] {
        for nth in 1..=2 {
            for (op, after_apply) in [
                ("commit", false),
                ("commit", true),
                ("load", false),
                ("fact", false),
            ] {
                cases.push(Fault {
                    op,
                    actor,
                    nth,
                    times: 1,
                    after_apply,
                });
            }
        }
    }
    for fault in cases {
        let (app, faulty) = faulty_app(fault, Duration::ZERO, |s| {
            s.runtime.retry_interval_ms = 100;
            s.runtime.idle_timeout_ms = 50;
        })
        .await;
        // Passivate both, so loads happen with the fault armed.
        app.wait_metric(r#"troupe_actors_live{kind="account"}"#, |n| n == 0.0)
            .await;
        faulty.armed.store(true, Ordering::SeqCst);

        let r = app
            .post(
                "/v1/transfers",
                json!({"id": "t", "from": "a", "to": "b", "amount": 40}),
            )
            .await;
        let told = r.status();
        // No retry: whatever was started finishes without the client.
        let mut status = None;
        for _ in 0..60 {
            let r = app.get("/v1/transfers/t").await;
            if r.status() == StatusCode::OK {
                let body = json_of(r).await;
                status = body["status"].as_str().map(str::to_owned);
                if status.as_deref() != Some("pending") {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (a, b) = (app.balance("a").await, app.balance("b").await);
        assert_eq!(a + b, 100, "{fault:?}: money created or destroyed");
        match status.as_deref() {
            Some("completed") => {
                assert_eq!((a, b), (60, 40), "{fault:?}");
                // Its client was told so, whatever failed: legs are
                // retried; a commit applied but reported lost is found by
                // the fence; a start whose record was lost while the debit
                // it asked for was not is started again for the client
                // still waiting.
                assert_eq!(told, StatusCode::CREATED, "{fault:?}: completed");
            }
            // Lost before anything became durable: it never happened, and
            // its client was told to retry.
            None => {
                assert_eq!(
                    (a, b),
                    (100, 0),
                    "{fault:?}: money moved for a transfer that does not exist"
                );
                assert_eq!(told, StatusCode::SERVICE_UNAVAILABLE, "{fault:?}");
            }
            other => panic!("{fault:?}: the transfer ended {other:?} (client told {told})"),
        }
        assert_ne!(
            told,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{fault:?}: a transfer with funds was refused"
        );
        for id in ["a", "b"] {
            let entries = all_entries(&app.client, &app.address, id).await;
            assert_eq!(replay_journal(&entries), app.balance(id).await, "{fault:?}");
        }
        // Nothing stays unfinished: the source's outbox empties even when
        // the write that empties it is the one that failed.
        let mut pending = Vec::new();
        for _ in 0..40 {
            pending = faulty.inner.pending().await.unwrap();
            if pending.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            pending.is_empty(),
            "{fault:?}: still unfinished: {pending:?}"
        );
        app.stop().await;
    }
}

/// The answer to a leg is handled only once the step that asked for it is
/// durable, even when a slow lookup for another message holds the actor
/// between the two: a transfer whose pending record is then lost must not
/// have asked for its credit. Here a keyed message lands behind `start`, its
/// lookup outlasts the debit, the pending record's commit fails, and an
/// attacker reuses the id with another amount.
#[actix_rt::test]
async fn a_leg_answer_waits_for_the_commit_of_the_step_that_asked() {
    let fault = Fault {
        op: "commit",
        actor: "transfer/t",
        nth: 1,
        times: 1,
        after_apply: false,
    };
    // The account re-offers its outbox after a second: the attacker is faster.
    let (app, faulty) = faulty_app(fault, Duration::from_millis(150), |s| {
        s.runtime.retry_interval_ms = 1000
    })
    .await;
    faulty.armed.store(true, Ordering::SeqCst);

    let start = app.post(
        "/v1/transfers",
        json!({"id": "t", "from": "a", "to": "b", "amount": 40}),
    );
    let keyed = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        app.client
            .post(app.url("/v1/actors/transfer/t/get"))
            .header("Idempotency-Key", "look-up")
            .json(&json!({}))
            .send()
            .await
            .unwrap()
    };
    let (start, _) = futures_util::join!(start, keyed);
    // The pending record was lost while the debit landed: the start is made
    // again for its client, still waiting, and completes.
    assert_eq!(
        start.status(),
        StatusCode::CREATED,
        "the pending record was lost"
    );
    // The id, reused at once with another amount.
    app.post(
        "/v1/transfers",
        json!({"id": "t", "from": "a", "to": "b", "amount": 41}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (a, b) = (app.balance("a").await, app.balance("b").await);
    assert_eq!(a + b, 100, "money created or destroyed: a={a} b={b}");
    for id in ["a", "b"] {
        let entries = all_entries(&app.client, &app.address, id).await;
        assert_eq!(replay_journal(&entries), app.balance(id).await);
    }
}

/// A transfer left mid-way by the saga before the two-step protocol
/// deduplicated its legs with idempotency keys: resuming it here could
/// apply a leg twice or lose a refund, so the service refuses to start and
/// says what to do.
#[actix_rt::test]
async fn a_transfer_in_flight_from_the_previous_protocol_stops_start_up() {
    let dir = TempDir::new().unwrap();
    let options = StoreOptions {
        idempotency_retention: Duration::from_secs(60),
        max_batch: 16,
        queue: 16,
        ..Default::default()
    };
    let store = EmbeddedStore::open(dir.path(), options).unwrap();
    let old = json!({
        "from": "a", "to": "b", "amount": 5, "status": "pending",
        "phase": {"phase": "credit", "currency": "USD"}, "reason": null,
        "created_at": "2026-01-01T00:00:00Z"
    });
    let commit = Commit {
        actor: "transfer/t-old".into(),
        expected_version: 0,
        version: 1,
        state: Some(serde_json::to_vec(&old).unwrap()),
        pending: true,
        ..Commit::default()
    };
    store.commit(commit).await.unwrap();
    store.close().await;

    let settings = crate::helpers::test_settings(dir.path());
    let refused = troupe::startup::Application::build(settings).await;
    let message = format!("{:#}", refused.err().expect("start-up is refused"));
    assert!(
        message.contains("transfer/t-old") && message.contains("previous version"),
        "{message}"
    );
}

/// The settle that empties the source's outbox waits for the account's
/// next commit, but not for ever: an account with no other traffic writes
/// it on its own, so nothing stays listed as unfinished.
#[actix_rt::test]
async fn a_quiet_source_account_writes_its_settled_outbox_on_its_own() {
    let app = spawn_app_with(TempDir::new().unwrap(), |s| {
        s.runtime.retry_interval_ms = 100
    })
    .await;
    app.open("a").await;
    app.open("b").await;
    app.deposit("a", 100).await;
    let r = app
        .post(
            "/v1/transfers",
            json!({"id": "t-q", "from": "a", "to": "b", "amount": 5}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dir = app.stop().await;
    let options = StoreOptions {
        idempotency_retention: Duration::from_secs(60),
        max_batch: 16,
        queue: 16,
        ..Default::default()
    };
    let store = EmbeddedStore::open(dir.path(), options).unwrap();
    assert_eq!(store.pending().await.unwrap(), Vec::<String>::new());
    store.close().await;
}

/// The commit that settles a refused transfer is applied but reported
/// lost: the callers parked until that commit are answered from the
/// reloaded state at once (`422`), not left to their deadlines; the one
/// whose request started the work is not told it was a replay, the retry
/// parked behind it is.
#[actix_rt::test]
async fn parked_callers_are_answered_from_the_state_reloaded_after_an_unknown_commit() {
    // The transfer's commits: started, settled.
    let fault = Fault {
        op: "commit",
        actor: "transfer/t",
        nth: 2,
        times: 1,
        after_apply: true,
    };
    // The transfer's load is slow: the retry queues behind the first call.
    let (app, faulty) = faulty_app(fault, Duration::from_millis(300), |_| {}).await;
    faulty.armed.store(true, Ordering::SeqCst);
    let call = || {
        let body = json!({"id": "t", "from": "a", "to": "b", "amount": 500});
        start_within(&app, "10000", body)
    };
    let retry = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        call().await
    };
    let (first, retry) = futures_util::join!(call(), retry);
    assert_eq!(
        faulty.seen.load(Ordering::SeqCst),
        3,
        "started, settled, fenced"
    );
    for (r, replay) in [(first, false), (retry, true)] {
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.headers().contains_key("idempotent-replayed"), replay);
        let body = json_of(r).await;
        assert_eq!(body["error"]["code"], json!("insufficient_funds"), "{body}");
    }
    assert_eq!((app.balance("a").await, app.balance("b").await), (100, 0));
}

/// Another writer's identical start lands first (two instances on one
/// store): the caller's commit conflicts, the reloaded transfer is another
/// request's work, so the caller is answered as a replay of it.
#[actix_rt::test]
async fn a_caller_whose_start_another_writer_made_first_is_answered_as_a_replay() {
    let fault = Fault {
        op: "conflict",
        actor: "transfer/t",
        nth: 1,
        times: 1,
        after_apply: false,
    };
    let (app, faulty) = faulty_app(fault, Duration::ZERO, |_| {}).await;
    faulty.armed.store(true, Ordering::SeqCst);
    let r = start_within(
        &app,
        "10000",
        json!({"id": "t", "from": "a", "to": "b", "amount": 500}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!((app.balance("a").await, app.balance("b").await), (100, 0));
}

/// A caller parked on a transfer that cannot finish yet is answered `504`
/// at its deadline and forgotten (nothing of it stays counted), while the
/// transfer goes on and completes once the store answers again.
#[actix_rt::test]
async fn a_parked_caller_is_answered_at_its_deadline_and_forgotten() {
    // Every fact read of the source fails while armed: the debit is retried.
    let fault = Fault {
        op: "fact",
        actor: "account/a",
        nth: 0,
        times: 1,
        after_apply: false,
    };
    let (app, faulty) =
        faulty_app(fault, Duration::ZERO, |s| s.runtime.ask_max_backoff_ms = 50).await;
    faulty.armed.store(true, Ordering::SeqCst);

    let r = start_within(
        &app,
        "300",
        json!({"id": "t-slow", "from": "a", "to": "b", "amount": 5}),
    )
    .await;
    // Durable and still going on at the deadline: 202, with the transfer.
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body = json_of(r).await;
    assert_eq!(
        (body["id"].clone(), body["status"].clone()),
        (json!("t-slow"), json!("pending"))
    );
    let depth = r#"troupe_actor_mailbox_depth "#;
    let mut text = String::new();
    let mut forgotten = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = app.get("/metrics").await.text().await.unwrap();
        if text
            .lines()
            .any(|l| l.starts_with(depth) && l.ends_with(" 0"))
        {
            forgotten = true;
            break;
        }
    }
    assert!(forgotten, "the parked caller is still counted:\n{text}");
    assert_eq!(
        json_of(app.get("/v1/transfers/t-slow").await).await["status"],
        json!("pending")
    );

    faulty.armed.store(false, Ordering::SeqCst);
    assert_eq!(settled(&app, "t-slow").await["status"], json!("completed"));
    assert_eq!((app.balance("a").await, app.balance("b").await), (95, 5));
}

/// Callers parked on one unfinished transfer keep their own deadlines (a
/// short one expiring takes none of the others with it), at most a
/// mailbox's worth wait (the rest are refused `429`), a place freed by an
/// expired caller is taken again, and those still waiting when the transfer
/// completes are answered its outcome.
#[actix_rt::test]
async fn parked_callers_keep_their_own_deadlines_and_are_bounded() {
    let fault = Fault {
        op: "fact",
        actor: "account/a",
        nth: 0,
        times: 1,
        after_apply: false,
    };
    let (app, faulty) = faulty_app(fault, Duration::ZERO, |s| {
        s.runtime.ask_max_backoff_ms = 50;
        s.runtime.mailbox_capacity = 4;
    })
    .await;
    faulty.armed.store(true, Ordering::SeqCst);
    let body = json!({"id": "t-park", "from": "a", "to": "b", "amount": 5});
    let call = |timeout: &'static str| start_within(&app, timeout, body.clone());
    // The first call starts the transfer and parks until its deadline.
    let short = call("600");
    let longs = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        futures_util::future::join_all((0..5).map(|_| call("8000"))).await
    };
    let after = async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // The short caller's place is free again.
        let late = call("8000");
        let release = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            faulty.armed.store(false, Ordering::SeqCst);
        };
        futures_util::join!(late, release).0
    };
    let (short, longs, late) = futures_util::join!(short, longs, after);
    assert_eq!(short.status(), StatusCode::ACCEPTED);
    let statuses: Vec<StatusCode> = longs.into_iter().map(|r| r.status()).collect();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    let completed = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!((completed, refused), (3, 2), "{statuses:?}");
    assert_eq!(late.status(), StatusCode::CREATED);
    assert_eq!((app.balance("a").await, app.balance("b").await), (95, 5));
}

/// A restart finds a transfer unfinished while the store fails its first
/// loads: the wake-ups that meet those failures try again (with backoff)
/// until the actors load, and the transfer completes with no client
/// request at all.
#[actix_rt::test]
async fn wake_ups_that_meet_a_failing_store_retry_until_the_work_finishes() {
    // Every debit at a fails: the transfer stays unfinished, and it is the
    // only actor with unfinished work (a never applied its leg).
    let fault = Fault {
        op: "commit",
        actor: "account/a",
        nth: 0,
        times: 1,
        after_apply: false,
    };
    let (app, faulty) = faulty_app(fault, Duration::ZERO, |_| {}).await;
    faulty.armed.store(true, Ordering::SeqCst);
    let r = start_within(
        &app,
        "300",
        json!({"id": "t-wake", "from": "a", "to": "b", "amount": 40}),
    )
    .await;
    // Recorded, and going on (the debit is retried): accepted.
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let dir = app.stop().await;

    // The first load is the start-up check for transfers of an earlier
    // version; the wake-up's loads come next, and the first four fail.
    let fault = Fault {
        op: "load",
        actor: "transfer/t-wake",
        nth: 2,
        times: 4,
        after_apply: false,
    };
    let (layer, slot) = FaultyStore::layer(fault, Duration::ZERO, true);
    let app = crate::helpers::spawn_app_layered_in(
        dir,
        |s| {
            s.runtime.ask_max_backoff_ms = 50;
            // The source's outbox is cleared lazily, at this pace.
            s.runtime.retry_interval_ms = 200;
        },
        layer,
    )
    .await;
    let faulty = slot.lock().unwrap().clone().unwrap();
    let mut pending = vec!["?".to_owned()];
    for _ in 0..250 {
        pending = faulty.inner.pending().await.unwrap();
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pending.is_empty(), "still unfinished: {pending:?}");
    // The start-up check, four failures, then the load that worked.
    let loads = faulty.seen.load(Ordering::SeqCst);
    assert!(
        loads >= 6,
        "the injected failures were not all met: {loads} loads"
    );
    assert_eq!(app.balance("a").await + app.balance("b").await, 100);
    assert_eq!(app.balance("b").await, 40);
}
