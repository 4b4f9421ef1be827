//! One conformance suite for the store interface, run against the embedded
//! store and against a real Redis.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use tempfile::TempDir;
use troupe::store::{
    Commit, EmbeddedStore, IdempotencyWrite, RedisOptions, RedisStore, Store, StoreError,
    StoreOptions,
};

use crate::redis_server::RedisServer;

fn options(retention: Duration) -> StoreOptions {
    StoreOptions {
        idempotency_retention: retention,
        max_batch: 1024,
        queue: 1024,
        ..Default::default()
    }
}

/// A store under test with whatever keeps it alive.
struct Subject {
    store: Arc<dyn Store>,
    _dir: Option<TempDir>,
    _redis: Option<RedisServer>,
}

fn embedded(retention: Duration) -> Subject {
    let dir = TempDir::new().unwrap();
    let store = EmbeddedStore::open(dir.path(), options(retention)).unwrap();
    Subject {
        store: Arc::new(store),
        _dir: Some(dir),
        _redis: None,
    }
}

fn redis(retention: Duration) -> Subject {
    let server = RedisServer::start();
    let redis = RedisOptions {
        url: server.url(),
        pool_size: 8,
        connect_timeout: Duration::from_secs(1),
        command_timeout: Duration::from_secs(1),
        prefix: "conformance".into(),
    };
    let store = RedisStore::new(&redis, &options(retention)).unwrap();
    Subject {
        store: Arc::new(store),
        _dir: None,
        _redis: Some(server),
    }
}

fn commit(actor: &str, expected: u64, state: &str, entries: &[(u64, &str)]) -> Commit {
    Commit {
        actor: actor.into(),
        expected_version: expected,
        version: expected + 1,
        state: Some(state.as_bytes().to_vec()),
        entries: entries
            .iter()
            .map(|(s, e)| (*s, e.as_bytes().to_vec()))
            .collect(),
        idempotency: Vec::new(),
        facts: Vec::new(),
        pending: false,
        fence: false,
    }
}

/// `n` first commits of the actors `account/{prefix}0..n`, sent at once,
/// each with `entries`; their outcomes in order.
async fn commit_fresh(
    store: &dyn Store,
    prefix: &str,
    n: usize,
    entries: &[(u64, &str)],
) -> Vec<Result<(), StoreError>> {
    join_all((0..n).map(|i| store.commit(commit(&format!("account/{prefix}{i}"), 0, "v", entries))))
        .await
}

async fn a_missing_actor_loads_as_none_and_a_commit_loads_back(s: Subject) {
    assert_eq!(s.store.load("account/a").await.unwrap(), None);
    s.store
        .commit(commit("account/a", 0, "{\"b\":1}", &[(1, "e1")]))
        .await
        .unwrap();
    let snapshot = s.store.load("account/a").await.unwrap().unwrap();
    assert_eq!(
        (snapshot.version, snapshot.state),
        (1, b"{\"b\":1}".to_vec())
    );
}

async fn a_stale_commit_is_a_conflict_and_applies_nothing(s: Subject) {
    s.store
        .commit(commit("account/a", 0, "v1", &[(1, "e1")]))
        .await
        .unwrap();
    s.store
        .commit(commit("account/a", 1, "v2", &[(2, "e2")]))
        .await
        .unwrap();
    let mut stale = commit("account/a", 1, "stale", &[(2, "stale-entry")]);
    stale.idempotency.push(IdempotencyWrite {
        key: "k".into(),
        value: b"r".to_vec(),
    });
    let err = s.store.commit(stale).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 1,
                found: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        s.store.load("account/a").await.unwrap().unwrap().state,
        b"v2".to_vec()
    );
    assert_eq!(
        s.store.entries("account/a", 0, 10).await.unwrap(),
        vec![b"e1".to_vec(), b"e2".to_vec()]
    );
    assert_eq!(s.store.idempotency("account/a", "k").await.unwrap(), None);
    // Expecting a version of an actor that was never written is a conflict
    // too (found 0), and writes nothing.
    let err = s
        .store
        .commit(commit("account/new", 3, "ghost", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 3,
                found: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(s.store.load("account/new").await.unwrap(), None);
}

async fn the_same_commit_twice_applies_once(s: Subject) {
    let c = commit("account/a", 0, "v1", &[(1, "e1")]);
    s.store.commit(c.clone()).await.unwrap();
    assert!(matches!(
        s.store.commit(c).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(s.store.entries("account/a", 0, 10).await.unwrap().len(), 1);
}

async fn entries_are_read_after_a_sequence_number_up_to_a_limit(s: Subject) {
    let entries: Vec<(u64, String)> = (1..=5).map(|i| (i, format!("e{i}"))).collect();
    let refs: Vec<(u64, &str)> = entries.iter().map(|(i, e)| (*i, e.as_str())).collect();
    s.store
        .commit(commit("account/a", 0, "v", &refs))
        .await
        .unwrap();
    s.store
        .commit(commit("account/b", 0, "v", &[(1, "other")]))
        .await
        .unwrap();
    let page = s.store.entries("account/a", 2, 2).await.unwrap();
    assert_eq!(page, vec![b"e3".to_vec(), b"e4".to_vec()]);
    assert_eq!(
        s.store.entries("account/a", 5, 10).await.unwrap(),
        Vec::<Vec<u8>>::new()
    );
}

async fn idempotency_records_are_kept_with_their_commit_and_expire(s: Subject) {
    // Late in a wall-clock second: a store counting whole seconds must
    // still keep the record its full retention (one second in this suite).
    while SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_millis()
        < 900
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let written = Instant::now();
    let mut c = commit("account/a", 0, "v", &[]);
    c.idempotency.push(IdempotencyWrite {
        key: "key-1".into(),
        value: b"record".to_vec(),
    });
    s.store.commit(c).await.unwrap();
    assert_eq!(
        s.store.idempotency("account/a", "key-1").await.unwrap(),
        Some(b"record".to_vec())
    );
    assert_eq!(
        s.store.idempotency("account/b", "key-1").await.unwrap(),
        None
    );
    // Then it goes, read or swept.
    let mut kept = Some(Vec::new());
    for _ in 0..250 {
        s.store.sweep().await;
        kept = s.store.idempotency("account/a", "key-1").await.unwrap();
        if kept.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(kept, None, "the record outlived its retention");
    let lived = written.elapsed();
    assert!(
        lived >= Duration::from_secs(1),
        "the record was kept {lived:?}, less than its retention"
    );
}

async fn facts_are_written_with_their_commit_only_and_outlive_retention(s: Subject) {
    let mut c = commit("account/a", 0, "v", &[(1, "debit")]);
    c.facts.push(("transfer:t-1".into(), b"debited".to_vec()));
    s.store.commit(c).await.unwrap();
    // A conflicting commit writes none of its facts.
    let mut stale = commit("account/a", 0, "w", &[]);
    stale
        .facts
        .push(("transfer:t-2".into(), b"debited".to_vec()));
    assert!(matches!(
        s.store.commit(stale).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        s.store.fact("account/a", "transfer:t-2").await.unwrap(),
        None
    );
    assert_eq!(
        s.store.fact("account/b", "transfer:t-1").await.unwrap(),
        None
    );
    // Retention is one second in this suite: facts are not idempotency records.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    s.store.sweep().await;
    assert_eq!(
        s.store.fact("account/a", "transfer:t-1").await.unwrap(),
        Some(b"debited".to_vec())
    );
}

async fn pending_actors_are_listed_until_a_commit_clears_them(s: Subject) {
    let mut c = commit("transfer/t", 0, "p", &[]);
    c.pending = true;
    s.store.commit(c).await.unwrap();
    assert_eq!(
        s.store.pending().await.unwrap(),
        vec!["transfer/t".to_owned()]
    );
    s.store
        .commit(commit("transfer/t", 1, "done", &[]))
        .await
        .unwrap();
    assert!(s.store.pending().await.unwrap().is_empty());
}

fn pending(actor: &str, expected: u64) -> Commit {
    let mut c = commit(actor, expected, "p", &[]);
    c.pending = true;
    c
}

/// Membership follows each actor's last commit: one that stays pending
/// stays listed, and commits of one actor sent together (one batch, most
/// likely) leave it as the last of them says.
async fn pending_membership_follows_each_actors_last_commit(s: Subject) {
    s.store.commit(pending("transfer/a", 0)).await.unwrap();
    s.store.commit(pending("transfer/a", 1)).await.unwrap();
    s.store.commit(pending("transfer/b", 0)).await.unwrap();
    let (b1, b2, c1, c2) = tokio::join!(
        s.store.commit(commit("transfer/b", 1, "done", &[])),
        s.store.commit(pending("transfer/b", 2)),
        s.store.commit(pending("transfer/c", 0)),
        s.store.commit(commit("transfer/c", 1, "done", &[])),
    );
    for outcome in [b1, b2, c1, c2] {
        outcome.unwrap();
    }
    let mut listed = s.store.pending().await.unwrap();
    listed.sort();
    assert_eq!(listed, ["transfer/a", "transfer/b"]);
}

async fn concurrent_commits_of_many_actors_all_land(s: Subject) {
    s.store.ping().await.unwrap();
    let outcomes = commit_fresh(&*s.store, "c", 200, &[(1, "e")]).await;
    assert!(outcomes.iter().all(Result::is_ok));
    for i in [0, 99, 199] {
        assert_eq!(
            s.store
                .load(&format!("account/c{i}"))
                .await
                .unwrap()
                .unwrap()
                .version,
            1
        );
    }
}

/// A closed store is not ready and accepts nothing: no write can be
/// acknowledged after shutdown has closed it.
async fn a_closed_store_is_not_ready_and_accepts_nothing(s: Subject) {
    s.store.ping().await.unwrap();
    s.store.close().await;
    assert!(s.store.ping().await.is_err(), "a closed store answers ping");
    assert!(
        s.store
            .commit(commit("account/a", 0, "v", &[]))
            .await
            .is_err(),
        "a closed store accepted a commit"
    );
    assert!(
        s.store.load("account/a").await.is_err(),
        "a closed store answered a load"
    );
    assert!(
        s.store.idempotency("account/a", "k").await.is_err(),
        "a closed store answered an idempotency lookup"
    );
    assert!(
        s.store.fact("account/a", "transfer:t").await.is_err(),
        "a closed store answered a fact lookup"
    );
}

async fn actors_are_listed_by_kind_in_byte_order_a_page_at_a_time(s: Subject) {
    let ids = [
        "a", "a.1", "a:2", "a-3", "a_4", "ab", "b", "pay-1", "pay-2", "pay-10", "Z",
    ];
    for id in ids {
        s.store
            .commit(commit(&format!("account/{id}"), 0, "s", &[]))
            .await
            .unwrap();
    }
    // A later commit lists the actor once; a commit without state (only
    // idempotency records) lists nothing; other kinds stay apart.
    s.store
        .commit(commit("account/a", 1, "s2", &[]))
        .await
        .unwrap();
    let mut stateless = commit("account/ghost", 0, "", &[]);
    stateless.state = None;
    stateless.idempotency.push(IdempotencyWrite {
        key: "k".into(),
        value: b"r".to_vec(),
    });
    s.store.commit(stateless).await.unwrap();
    // An actor whose first commit had no state is listed with its first
    // state.
    let mut late = commit("account/late", 0, "", &[]);
    late.state = None;
    late.idempotency.push(IdempotencyWrite {
        key: "k".into(),
        value: b"r".to_vec(),
    });
    s.store.commit(late).await.unwrap();
    s.store
        .commit(commit("account/late", 0, "s", &[]))
        .await
        .unwrap();
    s.store
        .commit(commit("transfer/t1", 0, "s", &[]))
        .await
        .unwrap();
    let list = |prefix: &'static str, after: Option<&'static str>, limit: usize| {
        let store = s.store.clone();
        async move { store.list("account", prefix, after, limit).await.unwrap() }
    };
    let mut sorted: Vec<&str> = ids.to_vec();
    sorted.push("late");
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["Z", "a", "a-3", "a.1", "a:2", "a_4", "ab", "b", "late", "pay-1", "pay-10", "pay-2"]
    );
    assert_eq!(list("", None, 100).await, sorted);
    assert_eq!(list("", None, 3).await, sorted[..3]);
    assert_eq!(list("", Some("a-3"), 2).await, ["a.1", "a:2"]);
    assert_eq!(list("", Some("pay-2"), 2).await, Vec::<String>::new());
    assert_eq!(list("pay-", None, 100).await, ["pay-1", "pay-10", "pay-2"]);
    assert_eq!(list("pay-", Some("pay-1"), 100).await, ["pay-10", "pay-2"]);
    assert_eq!(
        list("pay-", Some("a"), 1).await,
        ["pay-1"],
        "an after below the prefix starts at the prefix"
    );
    assert_eq!(list("pay-", Some("q"), 100).await, Vec::<String>::new());
    assert_eq!(list("q", None, 100).await, Vec::<String>::new());
    assert_eq!(
        list("a", None, 100).await,
        ["a", "a-3", "a.1", "a:2", "a_4", "ab"]
    );
    assert_eq!(
        s.store.list("transfer", "", None, 100).await.unwrap(),
        ["t1"]
    );
    assert_eq!(
        s.store.list("nothing", "", None, 100).await.unwrap(),
        Vec::<String>::new()
    );
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded_store {
            $(#[tokio::test] async fn $name() { super::$name(super::embedded(std::time::Duration::from_secs(1))).await })*
        }
        mod redis_store {
            $(#[tokio::test] async fn $name() { super::$name(super::redis(std::time::Duration::from_secs(1))).await })*
        }
    };
}

conformance!(
    a_missing_actor_loads_as_none_and_a_commit_loads_back,
    a_stale_commit_is_a_conflict_and_applies_nothing,
    the_same_commit_twice_applies_once,
    entries_are_read_after_a_sequence_number_up_to_a_limit,
    idempotency_records_are_kept_with_their_commit_and_expire,
    facts_are_written_with_their_commit_only_and_outlive_retention,
    pending_actors_are_listed_until_a_commit_clears_them,
    pending_membership_follows_each_actors_last_commit,
    concurrent_commits_of_many_actors_all_land,
    a_closed_store_is_not_ready_and_accepts_nothing,
    actors_are_listed_by_kind_in_byte_order_a_page_at_a_time,
);

/// Deployments sharing one Redis under different `store.redis.prefix`es
/// see nothing of each other: state, pending work, idempotency records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_prefixes_isolate_deployments_sharing_a_server() {
    let server = RedisServer::start();
    let open = |prefix: &str| {
        let redis = RedisOptions {
            url: server.url(),
            pool_size: 2,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            prefix: prefix.into(),
        };
        RedisStore::new(&redis, &options(Duration::from_secs(60))).unwrap()
    };
    let (blue, green) = (open("blue"), open("green"));
    let mut c = commit("transfer/t", 0, "p", &[(1, "e")]);
    c.pending = true;
    c.idempotency.push(IdempotencyWrite {
        key: "k".into(),
        value: b"r".to_vec(),
    });
    blue.commit(c).await.unwrap();
    assert_eq!(blue.pending().await.unwrap(), vec!["transfer/t".to_owned()]);
    assert_eq!(green.pending().await.unwrap(), Vec::<String>::new());
    assert_eq!(green.load("transfer/t").await.unwrap(), None);
    assert_eq!(green.idempotency("transfer/t", "k").await.unwrap(), None);
    // And the other's commit at version 0 lands: nothing of blue's is in the way.
    green
        .commit(commit("transfer/t", 0, "q", &[]))
        .await
        .unwrap();
    assert_eq!(
        blue.load("transfer/t").await.unwrap().unwrap().state,
        b"p".to_vec()
    );
}

/// The embedded store's point lookups (state, idempotency records, facts)
/// run on the caller's thread, not on tokio's blocking pool: a hop there
/// and back costs tens of microseconds per lookup, three lookups per
/// transfer. Here the runtime's one blocking thread is held, and every
/// point lookup still answers (the limit only stops a hang).
#[test]
fn embedded_point_lookups_do_not_wait_for_the_blocking_pool() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = TempDir::new().unwrap();
        let store = EmbeddedStore::open(dir.path(), options(Duration::from_secs(60))).unwrap();
        let mut c = commit("account/a", 0, "s", &[(1, "e")]);
        c.facts = vec![("transfer:t".into(), b"{}".to_vec())];
        store.commit(c).await.unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let blocker = tokio::task::spawn_blocking(move || {
            let _ = held.recv();
        });
        let lookups = async {
            assert!(store.load("account/a").await.unwrap().is_some());
            assert!(store
                .fact("account/a", "transfer:t")
                .await
                .unwrap()
                .is_some());
            assert!(store.idempotency("account/a", "k").await.unwrap().is_none());
        };
        let answered = tokio::time::timeout(Duration::from_secs(10), lookups).await;
        release.send(()).unwrap();
        blocker.await.unwrap();
        answered.expect("a point lookup waited for the blocking pool");
    });
}

/// The embedded writer remembers the pending set to write it only when
/// membership changes: what it remembers is read back at open, so a
/// commit after a restart still clears an actor left pending before it.
#[tokio::test]
async fn the_embedded_pending_set_is_cleared_by_commits_after_a_reopen() {
    let dir = TempDir::new().unwrap();
    let open = || EmbeddedStore::open(dir.path(), options(Duration::from_secs(60))).unwrap();
    let store = open();
    store.commit(pending("transfer/a", 0)).await.unwrap();
    store.commit(pending("transfer/b", 0)).await.unwrap();
    store.close().await;
    let store = open();
    store
        .commit(commit("transfer/a", 1, "done", &[]))
        .await
        .unwrap();
    assert_eq!(store.pending().await.unwrap(), ["transfer/b"]);
    store.close().await;
    assert_eq!(open().pending().await.unwrap(), ["transfer/b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_coalesces_concurrent_commits_into_fewer_transactions() {
    let dir = TempDir::new().unwrap();
    let store =
        Arc::new(EmbeddedStore::open(dir.path(), options(Duration::from_secs(60))).unwrap());
    let outcomes = commit_fresh(&*store, "g", 500, &[(1, "e")]).await;
    assert!(outcomes.iter().all(Result::is_ok));
    let stats = store.stats();
    let (commits, transactions) = (
        stats.commits.load(std::sync::atomic::Ordering::Relaxed),
        stats
            .transactions
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    assert_eq!(commits, 500);
    assert!(
        transactions < 250,
        "{transactions} transactions for 500 commits"
    );
}

/// `store.max_batch` bounds the commits one transaction holds, however
/// many wait: 200 commits queued at once take at least 200 / 4 of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_holds_at_most_max_batch_commits() {
    let dir = TempDir::new().unwrap();
    let options = StoreOptions {
        max_batch: 4,
        ..options(Duration::from_secs(60))
    };
    let store = Arc::new(EmbeddedStore::open(dir.path(), options).unwrap());
    let outcomes = commit_fresh(&*store, "m", 200, &[(1, "e")]).await;
    assert!(outcomes.iter().all(Result::is_ok));
    let transactions = store
        .stats()
        .transactions
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        transactions >= 50,
        "{transactions} transactions for 200 commits of at most 4"
    );
}

/// Compare-and-set holds inside one group commit: of commits computed
/// from the same version of an actor, written in the same batch, one
/// lands and the others conflict with the version it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_of_one_actor_in_one_batch_are_compared_with_each_other() {
    let dir = TempDir::new().unwrap();
    let store =
        Arc::new(EmbeddedStore::open(dir.path(), options(Duration::from_secs(60))).unwrap());
    let before = store
        .stats()
        .transactions
        .load(std::sync::atomic::Ordering::Relaxed);
    let commits = (0..64).map(|i| {
        let store = store.clone();
        let actor = format!("account/x{}", i % 8);
        async move {
            (
                actor.clone(),
                store.commit(commit(&actor, 0, "v", &[(1, "e")])).await,
            )
        }
    });
    let outcomes = join_all(commits).await;
    let batches = store
        .stats()
        .transactions
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    // Fewer than 8 batches for 64 commits: one held 9 or more, so two of
    // the same actor (of 8) shared it.
    assert!(
        batches < 8,
        "{batches} batches: the commits were not grouped"
    );
    for i in 0..8 {
        let actor = format!("account/x{i}");
        let mine: Vec<_> = outcomes.iter().filter(|(a, _)| *a == actor).collect();
        let landed = mine.iter().filter(|(_, r)| r.is_ok()).count();
        assert_eq!(landed, 1, "{actor}: {mine:?}");
        assert!(mine
            .iter()
            .all(|(_, r)| matches!(r, Ok(()) | Err(StoreError::Conflict { found: 1, .. }))));
        assert_eq!(store.entries(&actor, 0, 10).await.unwrap().len(), 1);
    }
}

/// Expired records are deleted, not only hidden from reads: the sweep
/// removes them in chunks of its own, more than one chunk's worth here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_sweep_deletes_expired_records_in_chunks() {
    let dir = TempDir::new().unwrap();
    let store = EmbeddedStore::open(dir.path(), options(Duration::from_secs(1))).unwrap();
    for batch in 0..3 {
        let mut c = commit(&format!("account/s{batch}"), 0, "v", &[]);
        c.idempotency = (0..400)
            .map(|i| IdempotencyWrite {
                key: format!("k-{i}"),
                value: b"r".to_vec(),
            })
            .collect();
        store.commit(c).await.unwrap();
    }
    assert_eq!(store.idempotency_rows().await.unwrap(), 2 * 1200);
    // Once the last record written has expired (reads hide it), one sweep
    // goes on chunk after chunk until every expired record is gone.
    let mut expired = false;
    for _ in 0..250 {
        expired = store
            .idempotency("account/s2", "k-399")
            .await
            .unwrap()
            .is_none();
        if expired {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(expired, "the records never expired");
    // A record written now has not expired (it is kept at least 1 s).
    let mut fresh = commit("account/s0", 1, "w", &[]);
    fresh.idempotency.push(IdempotencyWrite {
        key: "new".into(),
        value: b"r".to_vec(),
    });
    store.commit(fresh).await.unwrap();
    // Nothing is swept until asked (the service asks every
    // `store.sweep_interval_s`), whatever else the writer does.
    // (Two commits: whatever the writer does after the first is done by
    // the time it has written the second.)
    for version in 0..2 {
        let c = commit("account/other", version, "v", &[]);
        store.commit(c).await.unwrap();
    }
    assert_eq!(store.idempotency_rows().await.unwrap(), 2 * 1201);
    // One sweep goes on chunk after chunk until every expired record is
    // gone, and keeps the fresh one.
    store.sweep().await;
    let mut rows = u64::MAX;
    for _ in 0..250 {
        rows = store.idempotency_rows().await.unwrap();
        if rows <= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        rows, 2,
        "one sweep left expired records or took the fresh one"
    );
    assert!(store
        .idempotency("account/s0", "new")
        .await
        .unwrap()
        .is_some());
    store.close().await;
}

#[tokio::test]
async fn redis_down_is_unavailable_within_the_timeout_and_redis_back_recovers() {
    let mut server = RedisServer::start();
    let redis = RedisOptions {
        url: server.url(),
        pool_size: 4,
        connect_timeout: Duration::from_millis(300),
        command_timeout: Duration::from_millis(300),
        prefix: "fault".into(),
    };
    let store = RedisStore::new(&redis, &options(Duration::from_secs(60))).unwrap();
    store
        .commit(commit("account/a", 0, "v1", &[]))
        .await
        .unwrap();
    server.kill();
    let started = std::time::Instant::now();
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.commit(commit("account/a", 1, "v2", &[])).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "unavailable took {:?}",
        started.elapsed()
    );
    server.restart();
    store.ping().await.unwrap();
    // No persistence in this server: the store starts empty and works again.
    store
        .commit(commit("account/b", 0, "v", &[]))
        .await
        .unwrap();
}

fn redis_store(server: &RedisServer, max_batch: usize) -> RedisStore {
    let redis = RedisOptions {
        url: server.url(),
        pool_size: 4,
        connect_timeout: Duration::from_secs(1),
        command_timeout: Duration::from_secs(5),
        prefix: "pipelined".into(),
    };
    let options = StoreOptions {
        max_batch,
        ..options(Duration::from_secs(60))
    };
    RedisStore::new(&redis, &options).unwrap()
}

fn round_trips(store: &RedisStore) -> (u64, u64) {
    let stats = store.stats();
    (
        stats.commits.load(std::sync::atomic::Ordering::Relaxed),
        stats.round_trips.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Commits queued together on one thread go to Redis as one pipeline:
/// 64 commits of 64 actors, far fewer round trips, every one applied.
#[tokio::test]
async fn redis_commits_waiting_together_share_a_round_trip() {
    let server = RedisServer::start();
    let store = redis_store(&server, 1024);
    let outcomes = commit_fresh(&store, "p", 64, &[(1, "e")]).await;
    assert!(outcomes.iter().all(Result::is_ok));
    let (commits, trips) = round_trips(&store);
    assert_eq!(commits, 64);
    assert!(trips < 8, "{trips} round trips for 64 commits");
    for i in 0..64 {
        let actor = format!("account/p{i}");
        assert_eq!(store.load(&actor).await.unwrap().unwrap().version, 1);
        assert_eq!(store.entries(&actor, 0, 10).await.unwrap().len(), 1);
    }
}

/// `store.max_batch` bounds a pipeline too.
#[tokio::test]
async fn a_redis_pipeline_holds_at_most_max_batch_commits() {
    let server = RedisServer::start();
    let store = redis_store(&server, 4);
    let outcomes = commit_fresh(&store, "q", 64, &[]).await;
    assert!(outcomes.iter().all(Result::is_ok));
    let (commits, trips) = round_trips(&store);
    assert_eq!(commits, 64);
    assert!(
        trips >= 16,
        "{trips} round trips for 64 commits of at most 4"
    );
}

/// Each commit in a pipeline keeps its own compare-and-set and its own
/// outcome: of 8 commits of one actor from the same version, one lands and
/// the others conflict with it; for the odd actors, already at version 1,
/// every one conflicts. An outcome handed to another actor's commit would
/// show as an odd actor with a landed commit or an even one with none.
#[tokio::test]
async fn commits_in_one_redis_pipeline_succeed_or_conflict_each_on_its_own() {
    let server = RedisServer::start();
    let store = redis_store(&server, 1024);
    for i in (1..8).step_by(2) {
        store
            .commit(commit(&format!("account/x{i}"), 0, "v", &[(1, "e")]))
            .await
            .unwrap();
    }
    let before = round_trips(&store).1;
    let commits = (0..64).map(|i| {
        let store = &store;
        let actor = format!("account/x{}", i % 8);
        async move {
            let outcome = store.commit(commit(&actor, 0, "v", &[(1, "e")])).await;
            (actor, outcome)
        }
    });
    let outcomes = join_all(commits).await;
    let trips = round_trips(&store).1 - before;
    assert!(
        trips < 8,
        "{trips} round trips: the commits were not pipelined"
    );
    for i in 0..8 {
        let actor = format!("account/x{i}");
        let mine: Vec<_> = outcomes.iter().filter(|(a, _)| *a == actor).collect();
        let landed = mine.iter().filter(|(_, r)| r.is_ok()).count();
        assert_eq!(landed, 1 - i % 2, "{actor}: {mine:?}");
        assert!(mine
            .iter()
            .all(|(_, r)| matches!(r, Ok(()) | Err(StoreError::Conflict { found: 1, .. }))));
        assert_eq!(store.entries(&actor, 0, 10).await.unwrap().len(), 1);
    }
}

/// A Redis that forgot the commit script (restarted, or `SCRIPT FLUSH`)
/// ran none of the pipeline: the script is loaded again and every commit
/// applied once.
#[tokio::test]
async fn a_redis_that_forgot_the_commit_script_gets_it_again() {
    let server = RedisServer::start();
    let store = redis_store(&server, 1024);
    store
        .commit(commit("account/s", 0, "v1", &[(1, "e1")]))
        .await
        .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let flushed: String = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(flushed, "OK");
    let again = (0..4).map(|i| {
        let store = &store;
        async move {
            store
                .commit(commit(&format!("account/f{i}"), 0, "v", &[(1, "e")]))
                .await
        }
    });
    let mut outcomes = join_all(again).await;
    outcomes.push(
        store
            .commit(commit("account/s", 1, "v2", &[(2, "e2")]))
            .await,
    );
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let s = store.load("account/s").await.unwrap().unwrap();
    assert_eq!((s.version, s.state), (2, b"v2".to_vec()));
    assert_eq!(store.entries("account/s", 0, 10).await.unwrap().len(), 2);
    for i in 0..4 {
        let f = store.load(&format!("account/f{i}")).await.unwrap().unwrap();
        assert_eq!(f.version, 1);
    }
}

/// The service sweeps on its own every `store.sweep_interval_s`: expired
/// records leave the disk with no one calling `sweep`.
#[actix_rt::test]
async fn the_running_service_sweeps_expired_records_on_its_interval() {
    let app = crate::helpers::spawn_app_with(TempDir::new().unwrap(), |s| {
        s.store.sweep_interval_s = 1;
        s.store.idempotency_retention_s = 1;
    })
    .await;
    app.open("a").await;
    for i in 0..20 {
        let r = app
            .post_with_key(
                "/v1/accounts/a/deposits",
                &format!("k-{i}"),
                serde_json::json!({"amount": 1}),
            )
            .await;
        assert_eq!(r.status(), reqwest::StatusCode::OK);
    }
    // Time is the feature here: a record expires one to two seconds after
    // its write (whole seconds, rounded up), the next sweep comes within
    // one more; the rest is margin for a loaded machine.
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let dir = app.stop().await;
    let store = EmbeddedStore::open(dir.path(), options(Duration::from_secs(1))).unwrap();
    assert_eq!(store.idempotency_rows().await.unwrap(), 0);
    store.close().await;
}

/// `ping` (what `/readyz` asks) reports a writer stuck on one batch for
/// 10 s, never one that is merely idle or busy: an embedded store idle for
/// longer than that is ready, and so is one writing commit after commit.
/// (Time is the feature here: the test waits out the 10 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_is_ready_when_idle_past_the_stuck_limit_and_while_writing() {
    let dir = TempDir::new().unwrap();
    let store =
        Arc::new(EmbeddedStore::open(dir.path(), options(Duration::from_secs(60))).unwrap());
    store
        .commit(commit("account/idle", 0, "v", &[(1, "e")]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    store.ping().await.expect("ready after 10.5 s idle");

    let writing = {
        let store = store.clone();
        tokio::spawn(async move {
            let commits = (0..2_000).map(|i| {
                let store = store.clone();
                async move {
                    store
                        .commit(commit(&format!("account/w{i}"), 0, "v", &[(1, "e")]))
                        .await
                }
            });
            join_all(commits).await
        })
    };
    let mut pings = 0;
    while !writing.is_finished() {
        store.ping().await.expect("ready while writing");
        pings += 1;
    }
    assert!(writing.await.unwrap().iter().all(Result::is_ok));
    assert!(pings > 0);
}

/// Every key, with its value as `DUMP` gives it: the whole server's data.
async fn dump_all(c: &mut ::redis::aio::MultiplexedConnection) -> Vec<(String, Vec<u8>)> {
    let mut keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query_async(c).await.unwrap();
    keys.sort();
    let mut all = Vec::new();
    for key in keys {
        let value: Vec<u8> = ::redis::cmd("DUMP").arg(&key).query_async(c).await.unwrap();
        all.push((key, value));
    }
    all
}

/// Redis does not roll a script back, so a commit checks, before its first
/// write, everything a write could fail on. A value of the wrong type at
/// any key the commit writes fails it as corrupt with nothing written (the
/// state included); once the key is put right, the same commit applies,
/// once.
#[tokio::test]
async fn a_redis_commit_meeting_a_wrong_typed_key_writes_nothing() {
    let server = RedisServer::start();
    let store = redis_store(&server, 16);
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys = ["state", "entries", "pending", "facts", "index"];
    for (i, which) in keys.iter().enumerate() {
        let actor = format!("account/w{i}");
        let key = match *which {
            "pending" => "pipelined:pending".to_owned(),
            "index" => "pipelined:actors:account".to_owned(),
            own => format!("pipelined:{{{actor}}}:{own}"),
        };
        let first = Commit {
            facts: vec![("f1".into(), b"1".to_vec())],
            pending: true,
            ..commit(&actor, 0, "s1", &[(1, "e1")])
        };
        store.commit(first).await.unwrap();
        let kept: Vec<u8> = ::redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        let _: () = ::redis::cmd("SET")
            .arg(&key)
            .arg("oops")
            .query_async(&mut c)
            .await
            .unwrap();
        let second = Commit {
            idempotency: vec![IdempotencyWrite {
                key: "k".into(),
                value: b"r".to_vec(),
            }],
            facts: vec![("f2".into(), b"2".to_vec())],
            pending: false,
            ..commit(&actor, 1, "s2", &[(2, "e2")])
        };
        let before = dump_all(&mut c).await;
        let refused = store.commit(second.clone()).await;
        assert!(
            matches!(&refused, Err(StoreError::Corrupt(m)) if m.contains(&key)),
            "{which}: {refused:?}"
        );
        assert!(
            before == dump_all(&mut c).await,
            "{which}: a refused commit wrote something"
        );
        let _: () = ::redis::cmd("RESTORE")
            .arg(&key)
            .arg(0)
            .arg(&kept)
            .arg("REPLACE")
            .query_async(&mut c)
            .await
            .unwrap();
        store.commit(second).await.unwrap();
        let loaded = store.load(&actor).await.unwrap().unwrap();
        assert_eq!((loaded.version, loaded.state), (2, b"s2".to_vec()));
        assert_eq!(store.entries(&actor, 0, 10).await.unwrap().len(), 2);
        assert_eq!(
            store.idempotency(&actor, "k").await.unwrap(),
            Some(b"r".to_vec())
        );
        assert!(!store.pending().await.unwrap().contains(&actor));
    }
}

/// A version that is not a number is refused the same way.
#[tokio::test]
async fn a_redis_commit_meeting_an_unreadable_version_writes_nothing() {
    let server = RedisServer::start();
    let store = redis_store(&server, 16);
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    store
        .commit(commit("account/v", 0, "s1", &[(1, "e1")]))
        .await
        .unwrap();
    let _: () = ::redis::cmd("HSET")
        .arg("pipelined:{account/v}:state")
        .arg("v")
        .arg("one")
        .query_async(&mut c)
        .await
        .unwrap();
    let before = dump_all(&mut c).await;
    let refused = store
        .commit(commit("account/v", 1, "s2", &[(2, "e2")]))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Corrupt(_))),
        "{refused:?}"
    );
    assert!(
        before == dump_all(&mut c).await,
        "a refused commit wrote something"
    );
}

/// fjall asserts a key's length (a panic in the writer, which took every
/// later write with it): a commit whose key is too long fails alone, its
/// batch's other commits land, and the store stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_too_long_for_the_embedded_store_fails_alone() {
    let s = embedded(Duration::from_secs(60));
    let long = Commit {
        facts: vec![("f".repeat(70_000), b"x".to_vec())],
        ..commit("account/long", 0, "s", &[])
    };
    let (refused, landed) = tokio::join!(
        s.store.commit(long),
        s.store.commit(commit("account/ok", 0, "s", &[(1, "e")]))
    );
    match refused {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("70016 bytes"), "{m}"),
        other => panic!("a 70 kB key: {other:?}"),
    }
    landed.unwrap();
    assert_eq!(s.store.load("account/long").await.unwrap(), None);
    assert!(s
        .store
        .fact("account/long", &"f".repeat(70_000))
        .await
        .unwrap()
        .is_none());
    s.store.ping().await.unwrap();
    s.store
        .commit(commit("account/ok", 1, "t", &[(2, "e")]))
        .await
        .unwrap();
}

/// A fence over an actor never stored (after a first commit of unknown
/// outcome that did not land) writes the state back at version 1 so the
/// late commit cannot land, but does not make the actor one a listing
/// shows; its first real commit does, and a later fence changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_over_nothing_stored_lists_no_phantom_on_redis() {
    let s = redis(Duration::from_secs(60));
    let fence = |expected: u64| Commit {
        fence: true,
        ..commit("account/ghost", expected, "{}", &[])
    };
    let listed = || async {
        s.store
            .list("account", "", None, 100)
            .await
            .unwrap()
            .contains(&"ghost".to_owned())
    };
    s.store.commit(fence(0)).await.unwrap();
    assert_eq!(
        s.store
            .load("account/ghost")
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    assert!(!listed().await, "a fence over nothing listed the actor");
    // Nor does the upgrade pass that indexes what older versions stored.
    let client = ::redis::Client::open(s._redis.as_ref().unwrap().url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("DEL")
        .arg("conformance:actors:indexed")
        .query_async(&mut conn)
        .await
        .unwrap();
    s.store.reindex().await.unwrap();
    assert!(
        !listed().await,
        "reindexing listed an actor only a fence wrote"
    );
    // The late first commit can no longer land.
    assert!(matches!(
        s.store
            .commit(commit("account/ghost", 0, "late", &[]))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    s.store.commit(fence(1)).await.unwrap();
    assert!(!listed().await, "a second fence listed the actor");
    s.store
        .commit(commit("account/ghost", 2, "real", &[]))
        .await
        .unwrap();
    assert!(
        listed().await,
        "the first real commit did not list the actor"
    );
    s.store.commit(fence(3)).await.unwrap();
    assert!(listed().await, "a fence over a listed actor unlisted it");
    let snapshot = s.store.load("account/ghost").await.unwrap().unwrap();
    assert_eq!((snapshot.version, snapshot.state), (4, b"{}".to_vec()));
}
