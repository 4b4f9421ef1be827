//! Group commit, deadlines and supervision seen from outside, through a store whose
//! loads can be held at a gate: every message sent while an actor waits for
//! its state lands in one mailbox drain, so what README claims about a
//! batch (one commit for all of it, replies only after it, a crash in the
//! middle of it) can be asserted exactly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Semaphore;
use troupe::store::{Commit, Snapshot, Store, StoreError};

use crate::helpers::{spawn_app_layered, TestApp};

/// Holds loads of one actor until opened; records every commit; fails the
/// next commit of one actor on demand.
struct GatedStore {
    inner: Arc<dyn Store>,
    gated: Mutex<Option<String>>,
    gate: Semaphore,
    /// Commits of this actor wait at `commit_gate` until it opens.
    held_commits: Mutex<Option<String>>,
    commit_gate: Semaphore,
    commits: Mutex<Vec<(String, usize)>>,
    fail_next: Mutex<Option<String>>,
}

impl GatedStore {
    fn hold_loads_of(&self, actor: &str) {
        *self.gated.lock().unwrap() = Some(actor.to_owned());
    }
    fn open(&self) {
        self.gate.add_permits(1_000);
    }
    fn hold_commits_of(&self, actor: &str) {
        *self.held_commits.lock().unwrap() = Some(actor.to_owned());
    }
    fn open_commits(&self) {
        self.commit_gate.add_permits(1_000);
    }
    fn commits_of(&self, actor: &str) -> Vec<usize> {
        let commits = self.commits.lock().unwrap();
        commits
            .iter()
            .filter(|(a, _)| a == actor)
            .map(|(_, n)| *n)
            .collect()
    }
}

#[async_trait]
impl Store for GatedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn load(&self, actor: &str) -> Result<Option<Snapshot>, StoreError> {
        let gated = self.gated.lock().unwrap().as_deref() == Some(actor);
        if gated {
            let _ = self.gate.acquire().await.map(|p| p.forget());
        }
        self.inner.load(actor).await
    }
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let fail = {
            let mut next = self.fail_next.lock().unwrap();
            let hit = next.as_deref() == Some(commit.actor.as_str());
            if hit {
                *next = None;
            }
            hit
        };
        if fail {
            return Err(StoreError::Unavailable("injected fault".into()));
        }
        let held = self.held_commits.lock().unwrap().as_deref() == Some(commit.actor.as_str());
        if held {
            let _ = self.commit_gate.acquire().await.map(|p| p.forget());
        }
        self.commits
            .lock()
            .unwrap()
            .push((commit.actor.clone(), commit.entries.len()));
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
        self.inner.idempotency(actor, key).await
    }
    async fn fact(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.fact(actor, key).await
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

async fn gated_app() -> (TestApp, Arc<GatedStore>) {
    let slot = Arc::new(Mutex::new(None::<Arc<GatedStore>>));
    let keep = slot.clone();
    let layer: troupe::startup::StoreLayer = Box::new(move |inner| {
        let gated = Arc::new(GatedStore {
            inner,
            gated: Mutex::new(None),
            gate: Semaphore::new(0),
            held_commits: Mutex::new(None),
            commit_gate: Semaphore::new(0),
            commits: Mutex::new(Vec::new()),
            fail_next: Mutex::new(None),
        });
        *keep.lock().unwrap() = Some(gated.clone());
        gated
    });
    // Idle actors leave memory quickly, so the next message loads again.
    let app = spawn_app_layered(|s| s.runtime.idle_timeout_ms = 50, layer).await;
    let store = slot.lock().unwrap().clone().unwrap();
    (app, store)
}

/// Opens `id`, waits until it has left memory, then keeps actors in memory
/// from now on (so what a test sees next is the activation's own state).
async fn opened_and_passivated(app: &TestApp, id: &str) {
    app.open(id).await;
    app.wait_metric(r#"troupe_actors_live{kind="account"}"#, |n| n == 0.0)
        .await;
    let mut options = (*app.app_runtime.options()).clone();
    options.idle_timeout = Duration::from_secs(600);
    app.app_runtime.set_options(options);
}

#[actix_rt::test]
async fn messages_waiting_together_share_one_commit_and_are_answered_after_it() {
    let (app, store) = gated_app().await;
    opened_and_passivated(&app, "g").await;
    store.hold_loads_of("account/g");
    store.hold_commits_of("account/g");
    let before = store.commits_of("account/g").len();

    let deposits: Vec<_> = (0..20).map(|_| app.deposit("g", 1)).collect();
    let all = futures_util::future::join_all(deposits);
    tokio::pin!(all);
    // All 20 wait in the mailbox while the state loads; then they are
    // handled and their commit is held: not one answer may leave before it.
    let early = tokio::time::timeout(Duration::from_millis(200), &mut all).await;
    assert!(early.is_err(), "answered while loading");
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
        tokio::time::sleep(Duration::from_millis(400)).await;
        store.open();
    };
    let (late, ()) = futures_util::join!(late, opener);
    assert_eq!(late.unwrap().status(), StatusCode::GATEWAY_TIMEOUT);
    app.wait_metric(
        r#"troupe_actor_deadline_drops_total{kind="account"}"#,
        |n| n >= 1.0,
    )
    .await;
    assert_eq!(app.balance("d").await, 0, "the late deposit was applied");
}
