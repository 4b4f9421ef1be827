//! Retries, deadlines and unknown outcomes meet what is durable (issue
//! 24): two copies of one keyed deposit in flight together apply it once,
//! even on an account that is the source of transfers; a caller whose
//! message was handled is told what its commit made, whether its deadline
//! passed while the commit was in flight or the commit came back with an
//! unknown outcome; and a transfer its client was told was lost never
//! completes by itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use troupe::settings::Settings;
use troupe::store::{Commit, Snapshot, Store, StoreError};

use crate::helpers::{
    all_entries, eventually, json_of, replay_journal, spawn_app_layered, spawn_app_with, TestApp,
};
use crate::redis_server::RedisServer;

/// What the commits of one actor meet; every other call goes through.
#[derive(Debug, Clone, Copy)]
enum Trap {
    /// Every commit of the actor waits this long before it reaches the store.
    Slow(Duration),
    /// The actor's first commit is lost with its connection: no answer,
    /// and it never lands.
    LoseFirst,
    /// The actor's first commit with a journal entry is applied, then
    /// reported lost: an unknown outcome that in fact landed.
    LandFirstEntryUnseen,
}

/// The real store with a [`Trap`] on the commits of one actor.
struct TrappedStore {
    inner: Arc<dyn Store>,
    actor: String,
    trap: Trap,
    /// A commit met the trap (for `LoseFirst` and `LandFirstEntryUnseen`).
    sprung: AtomicBool,
}

impl TrappedStore {
    fn sprung(&self) -> bool {
        self.sprung.load(Ordering::SeqCst)
    }

    /// What a write that got no answer reports: it may have landed.
    fn injected() -> StoreError {
        StoreError::Unknown("injected fault".into())
    }
}

#[async_trait]
impl Store for TrappedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn memory(&self) -> Vec<(&'static str, u64)> {
        self.inner.memory()
    }
    async fn load(&self, actor: &str) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load(actor).await
    }
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        if commit.actor != self.actor {
            return self.inner.commit(commit).await;
        }
        match self.trap {
            Trap::Slow(delay) => {
                tokio::time::sleep(delay).await;
                self.inner.commit(commit).await
            }
            Trap::LoseFirst if !self.sprung.swap(true, Ordering::SeqCst) => Err(Self::injected()),
            Trap::LandFirstEntryUnseen
                if !commit.entries.is_empty() && !self.sprung.swap(true, Ordering::SeqCst) =>
            {
                self.inner.commit(commit).await?;
                Err(Self::injected())
            }
            _ => self.inner.commit(commit).await,
        }
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

/// A test server whose store traps the commits of `actor`.
async fn trapped_app(
    actor: &str,
    trap: Trap,
    tweak: impl FnOnce(&mut Settings),
) -> (TestApp, Arc<TrappedStore>) {
    let slot = Arc::new(Mutex::new(None::<Arc<TrappedStore>>));
    let keep = slot.clone();
    let actor = actor.to_owned();
    let layer: troupe::startup::StoreLayer = Box::new(move |inner| {
        let trapped = Arc::new(TrappedStore {
            inner,
            actor,
            trap,
            sprung: AtomicBool::new(false),
        });
        *keep.lock().unwrap() = Some(trapped.clone());
        trapped
    });
    let app = spawn_app_layered(tweak, layer).await;
    let store = slot.lock().unwrap().clone().expect("the layer was applied");
    (app, store)
}

/// The amounts of `id`'s deposit entries, each with how often it appears.
async fn deposits_in_journal(app: &TestApp, id: &str) -> BTreeMap<i64, usize> {
    let mut seen = BTreeMap::new();
    for entry in all_entries(&app.client, &app.address, id).await {
        if entry["kind"] == json!("deposit") {
            let amount = entry["amount"].as_i64().expect("an amount");
            *seen.entry(amount).or_default() += 1;
        }
    }
    seen
}

/// Asserts that every account's journal replays to its balance.
async fn journals_replay(app: &TestApp, ids: &[&str]) {
    for id in ids {
        let entries = all_entries(&app.client, &app.address, id).await;
        assert_eq!(
            replay_journal(&entries),
            app.balance(id).await,
            "{id}'s journal does not replay to its balance"
        );
    }
}

const FUNDING: i64 = 1_000_000;
const DEPOSITORS: u64 = 32;
const KEYS_EACH: u64 = 40;
const MOVERS: usize = 8;

/// `hot` is funded and is the source of a stream of transfers of 1 to
/// `cold`, while 32 clients send keyed deposits to it, each key's two
/// copies in flight together. Each key is applied once: the two balances
/// hold the funding plus the distinct keyed deposits, no more. The
/// transfers matter: the timers they leave on their source let keyed
/// lookups overtake the flush of the batch holding the first copy (the
/// same load without them applied nothing twice).
async fn copies_of_keyed_deposits_beside_transfers_apply_once(app: &TestApp) {
    app.open("hot").await;
    app.open("cold").await;
    assert_eq!(
        app.deposit("hot", FUNDING as u64).await.status(),
        StatusCode::OK
    );
    let depositing = Arc::new(AtomicBool::new(true));
    let movers: Vec<_> = (0..MOVERS)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url("/v1/transfers"));
            let depositing = depositing.clone();
            tokio::spawn(async move {
                let mut told = Vec::new();
                while depositing.load(Ordering::SeqCst) {
                    let r = client
                        .post(&url)
                        .header("X-Request-Timeout", "30000")
                        .json(&json!({"from": "hot", "to": "cold", "amount": 1}))
                        .send()
                        .await
                        .expect("a transfer is answered");
                    told.push(r.status());
                }
                told
            })
        })
        .collect();
    let depositors: Vec<_> = (0..DEPOSITORS)
        .map(|client_no| {
            let (client, url) = (app.client.clone(), app.url("/v1/accounts/hot/deposits"));
            tokio::spawn(async move {
                let mut told = Vec::new();
                for n in 0..KEYS_EACH {
                    // Distinct amounts: the journal tells the keys apart.
                    let amount = client_no * KEYS_EACH + n + 1;
                    let key = format!("dup-{amount}");
                    let copy = || {
                        client
                            .post(&url)
                            .header("Idempotency-Key", &key)
                            .header("X-Request-Timeout", "30000")
                            .json(&json!({ "amount": amount }))
                            .send()
                    };
                    let (first, second) = futures_util::join!(copy(), copy());
                    let first = first.expect("a deposit is answered").status();
                    let second = second.expect("a deposit is answered").status();
                    told.push((amount as i64, [first, second]));
                }
                told
            })
        })
        .collect();
    let mut deposits = Vec::new();
    for depositor in depositors {
        deposits.extend(depositor.await.expect("a depositor"));
    }
    depositing.store(false, Ordering::SeqCst);
    let mut transfers = Vec::new();
    for mover in movers {
        transfers.extend(mover.await.expect("a mover"));
    }

    // With no fault, one copy of each key at least is answered 200 and the
    // other 200 or a refusal (a 4xx does nothing): what was deposited is
    // known exactly.
    let unclear: Vec<_> = deposits
        .iter()
        .filter(|(_, told)| told.iter().any(|s| s.is_server_error()))
        .collect();
    assert!(
        unclear.is_empty(),
        "keyed deposits answered with a server error: {unclear:?}"
    );
    let refused: Vec<_> = deposits
        .iter()
        .filter(|(_, told)| !told.contains(&StatusCode::OK))
        .collect();
    assert!(
        refused.is_empty(),
        "keyed deposits neither copy of which was answered 200: {refused:?}"
    );
    let applied: BTreeSet<i64> = deposits.iter().map(|(amount, _)| *amount).collect();
    let completed = transfers
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert!(
        completed > 0,
        "no transfer from hot completed: {transfers:?}"
    );

    let expected = FUNDING + applied.iter().sum::<i64>();
    // A transfer answered with an error may still be finishing.
    let conserved =
        eventually(|| async { app.balance("hot").await + app.balance("cold").await == expected })
            .await;
    let (hot, cold) = (app.balance("hot").await, app.balance("cold").await);
    assert!(
        conserved,
        "hot {hot} + cold {cold} = {}, but the funding and the {} distinct keyed deposits \
         answered 200 make {expected}: {} created ({completed} transfers completed)",
        hot + cold,
        applied.len(),
        hot + cold - expected
    );
    let mut journal = deposits_in_journal(app, "hot").await;
    journal.remove(&FUNDING);
    let twice: Vec<_> = journal.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "keyed deposits applied more than once (amount, times): {twice:?}"
    );
    let journaled: BTreeSet<i64> = journal.keys().copied().collect();
    assert_eq!(
        journaled, applied,
        "the journal's deposits are not the ones answered 200"
    );
    journals_replay(app, &["hot", "cold"]).await;
}

#[actix_rt::test]
async fn copies_of_a_keyed_deposit_in_flight_together_apply_once_on_a_transfer_source() {
    let app = spawn_app_with(TempDir::new().unwrap(), |s| {
        // One remembered key per activation: a copy that arrives after
        // another key finds the first copy's record only where it really
        // is (the open batch), never in a cache that happens to be large.
        s.runtime.idempotency_cache = 1;
    })
    .await;
    copies_of_keyed_deposits_beside_transfers_apply_once(&app).await;
}

#[actix_rt::test]
async fn copies_of_a_keyed_deposit_in_flight_together_apply_once_on_a_transfer_source_on_redis() {
    let redis = RedisServer::start();
    let app = spawn_app_with(TempDir::new().unwrap(), |s| {
        redis.configure(s);
        s.runtime.idempotency_cache = 1;
    })
    .await;
    copies_of_keyed_deposits_beside_transfers_apply_once(&app).await;
}

/// Every commit of `q` takes 150 ms, and twelve deposits of distinct
/// amounts are sent at once with a deadline of 20 ms: those handled
/// before their deadline are in the commit, the others wait for it in the
/// mailbox and expire there. A `504` says "dropped unprocessed", so the
/// balance is exactly the deposits answered `200`, and no deposit answered
/// `504` is in the journal.
#[actix_rt::test]
async fn a_deposit_handled_before_its_deadline_is_not_answered_504_while_its_commit_lands() {
    let slow = Trap::Slow(Duration::from_millis(150));
    let (app, _store) = trapped_app("account/q", slow, |_| {}).await;
    app.open("q").await;
    let answers = futures_util::future::join_all((0..12).map(|i| {
        let amount = 1000 + i;
        let sent = app
            .client
            .post(app.url("/v1/accounts/q/deposits"))
            .header("X-Request-Timeout", "20")
            .json(&json!({ "amount": amount }))
            .send();
        async move { (amount, sent.await.expect("a deposit is answered").status()) }
    }))
    .await;
    let odd: Vec<_> = answers
        .iter()
        .filter(|(_, s)| !matches!(*s, StatusCode::OK | StatusCode::GATEWAY_TIMEOUT))
        .collect();
    assert!(odd.is_empty(), "answered neither 200 nor 504: {odd:?}");

    // Reads go through the mailbox, behind the commit in flight.
    let journal = deposits_in_journal(&app, "q").await;
    let balance = app.balance("q").await;
    assert!(
        !journal.is_empty(),
        "no deposit was handled before its deadline, so nothing was tested: {answers:?}"
    );
    let acknowledged: i64 = answers
        .iter()
        .filter(|(_, s)| *s == StatusCode::OK)
        .map(|(amount, _)| *amount)
        .sum();
    let applied_yet_504: Vec<i64> = answers
        .iter()
        .filter(|(amount, s)| *s == StatusCode::GATEWAY_TIMEOUT && journal.contains_key(amount))
        .map(|(amount, _)| *amount)
        .collect();
    assert!(
        applied_yet_504.is_empty(),
        "deposits answered 504 (dropped unprocessed) yet applied: {applied_yet_504:?}; \
         the balance is {balance}, the deposits answered 200 make {acknowledged}"
    );
    assert_eq!(
        balance, acknowledged,
        "the balance is not the deposits answered 200: {answers:?}"
    );
    journals_replay(&app, &["q"]).await;
}

/// The deposit's commit is applied by the store and then reported lost
/// (`Unavailable`: a connection dropped after the write). The runtime
/// fences and reloads, and finds its commit landed: the caller is told
/// `200`, as what is durable says; `503` would do only had it not landed.
#[actix_rt::test]
async fn a_deposit_whose_commit_lands_but_comes_back_unknown_is_answered_as_applied() {
    let (app, store) = trapped_app("account/a", Trap::LandFirstEntryUnseen, |_| {}).await;
    app.open("a").await;
    let told = app.deposit("a", 10).await.status();
    assert!(store.sprung(), "the deposit's commit never met the trap");
    assert!(
        matches!(told, StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE),
        "the deposit was answered {told}"
    );
    let balance = app.balance("a").await;
    let acknowledged = if told == StatusCode::OK { 10 } else { 0 };
    assert_eq!(
        balance, acknowledged,
        "the deposit was answered {told} and the balance is {balance}: \
         the client was not told what is durable"
    );
    journals_replay(&app, &["a"]).await;
}

/// Retry interval of the source's outbox in these tests.
const RETRY_MS: u64 = 100;

/// `a` (100) pays `b` 10 in transfer `t-1`; the transfer's first commit
/// (its start) fails unapplied while the debit it asked for, committed in
/// parallel, goes through. What the client is told is what happens: `201`
/// and the money moved, or `503` and the transfer never happens (not even
/// ten retry intervals later, when the source's outbox has had every
/// chance to finish it), so that the id is free for the client's retry,
/// with a corrected body.
async fn a_transfer_whose_start_is_lost_ends_as_its_client_was_told(
    tweak: impl FnOnce(&mut Settings),
) {
    let (app, store) = trapped_app("transfer/t-1", Trap::LoseFirst, |s| {
        tweak(s);
        s.runtime.retry_interval_ms = RETRY_MS;
    })
    .await;
    app.open("a").await;
    app.open("b").await;
    assert_eq!(app.deposit("a", 100).await.status(), StatusCode::OK);
    let transfer = json!({"id": "t-1", "from": "a", "to": "b", "amount": 10});
    let told = app.post("/v1/transfers", transfer).await;
    assert!(store.sprung(), "the transfer's start never met the trap");
    let status = |body: &Value| body["status"].as_str().map(str::to_owned);
    match told.status() {
        StatusCode::CREATED => {
            let settled = eventually(|| async {
                let r = app.get("/v1/transfers/t-1").await;
                r.status() == StatusCode::OK
                    && status(&json_of(r).await).as_deref() == Some("completed")
            })
            .await;
            assert!(settled, "answered 201, yet t-1 is not completed");
            assert_eq!((app.balance("a").await, app.balance("b").await), (90, 10));
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            // Time is the point here: nothing may finish the transfer later.
            let started = tokio::time::Instant::now();
            while started.elapsed() < Duration::from_millis(10 * RETRY_MS) {
                let r = app.get("/v1/transfers/t-1").await;
                if r.status() == StatusCode::OK {
                    let body = json_of(r).await;
                    assert_ne!(
                        status(&body).as_deref(),
                        Some("completed"),
                        "t-1 was answered 503 (lost, retry), yet it completed {:?} later: {body}",
                        started.elapsed()
                    );
                }
                assert_eq!(app.balance("b").await, 0, "b was credited for a lost t-1");
                tokio::time::sleep(Duration::from_millis(RETRY_MS / 2)).await;
            }
            let quiet =
                eventually(|| async { store.pending().await.is_ok_and(|p| p.is_empty()) }).await;
            assert!(quiet, "work stays unfinished: {:?}", store.pending().await);
            assert_eq!(
                (app.balance("a").await, app.balance("b").await),
                (100, 0),
                "money moved for t-1, which was answered 503"
            );
            // Told to retry, the client retries, with a corrected amount.
            let retry = app
                .post(
                    "/v1/transfers",
                    json!({"id": "t-1", "from": "a", "to": "b", "amount": 11}),
                )
                .await;
            let code = retry.status();
            assert_eq!(
                code,
                StatusCode::CREATED,
                "the retry of t-1, answered 503 before: {}",
                retry.text().await.unwrap_or_default()
            );
            assert_eq!((app.balance("a").await, app.balance("b").await), (89, 11));
        }
        other => panic!(
            "t-1 was answered {other}: {}",
            told.text().await.unwrap_or_default()
        ),
    }
    journals_replay(&app, &["a", "b"]).await;
}

#[actix_rt::test]
async fn a_transfer_whose_start_is_lost_while_its_debit_lands_ends_as_its_client_was_told() {
    a_transfer_whose_start_is_lost_ends_as_its_client_was_told(|_| {}).await;
}

#[actix_rt::test]
async fn a_transfer_whose_start_is_lost_while_its_debit_lands_ends_as_its_client_was_told_on_redis()
{
    let redis = RedisServer::start();
    a_transfer_whose_start_is_lost_ends_as_its_client_was_told(|s| redis.configure(s)).await;
}
