//! A data directory written by the redb store of earlier versions
//! (`troupe.redb`) is migrated to the fjall store on start, once, and a
//! migration cut short is finished or started over, never half-used.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::TableDefinition;
use tempfile::TempDir;
use troupe::store::{Commit, EmbeddedStore, Snapshot, Store, StoreError, StoreOptions};

// The tables and value layouts of the redb store (0.x, before fjall).
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency");
const EXPIRY: TableDefinition<(u64, &str, &str), ()> = TableDefinition::new("idempotency_expiry");
const FACTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("facts");
const PENDING: TableDefinition<&str, ()> = TableDefinition::new("pending");

fn with_u64(n: u64, rest: &[u8]) -> Vec<u8> {
    [&n.to_be_bytes()[..], rest].concat()
}

/// Writes `dir/troupe.redb` as the redb store left it: an account at
/// version 2 with two entries, a live and an expired idempotency record,
/// a fact, and a transfer with work pending.
fn write_redb(dir: &Path) {
    write_redb_with(dir, true);
}

/// `facts`: whether the file has the facts table (versions before it
/// never created one).
fn write_redb_with(dir: &Path, facts: bool) {
    let live = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let db = redb::Database::create(dir.join("troupe.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut state = txn.open_table(STATE).unwrap();
        state
            .insert("account/a", with_u64(2, b"state-a").as_slice())
            .unwrap();
        state
            .insert("transfer/t", with_u64(1, b"state-t").as_slice())
            .unwrap();
        let mut entries = txn.open_table(ENTRIES).unwrap();
        entries.insert(("account/a", 1), b"e1".as_slice()).unwrap();
        entries.insert(("account/a", 2), b"e2".as_slice()).unwrap();
        let mut idem = txn.open_table(IDEMPOTENCY).unwrap();
        let mut expiry = txn.open_table(EXPIRY).unwrap();
        idem.insert(("account/a", "k1"), with_u64(live, b"r1").as_slice())
            .unwrap();
        expiry.insert((live, "account/a", "k1"), ()).unwrap();
        idem.insert(("account/a", "old"), with_u64(1, b"r0").as_slice())
            .unwrap();
        expiry.insert((1, "account/a", "old"), ()).unwrap();
        if facts {
            let mut facts = txn.open_table(FACTS).unwrap();
            facts
                .insert(("account/a", "leg/t"), b"applied".as_slice())
                .unwrap();
        }
        let mut pending = txn.open_table(PENDING).unwrap();
        pending.insert("transfer/t", ()).unwrap();
    }
    txn.commit().unwrap();
}

fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
    EmbeddedStore::open(
        dir,
        StoreOptions {
            idempotency_retention: Duration::from_secs(60),
            ..Default::default()
        },
    )
}

/// Everything `write_redb` wrote reads back through the store interface.
async fn assert_migrated(store: &EmbeddedStore) {
    assert_eq!(
        store.load("account/a").await.unwrap(),
        Some(Snapshot {
            version: 2,
            state: b"state-a".to_vec()
        })
    );
    assert_eq!(
        store.entries("account/a", 0, 10).await.unwrap(),
        [b"e1".to_vec(), b"e2".to_vec()]
    );
    assert_eq!(
        store.entries("account/a", 1, 10).await.unwrap(),
        [b"e2".to_vec()]
    );
    assert_eq!(
        store.idempotency("account/a", "k1").await.unwrap(),
        Some(b"r1".to_vec())
    );
    assert_eq!(store.idempotency("account/a", "old").await.unwrap(), None);
    assert_eq!(
        store.fact("account/a", "leg/t").await.unwrap(),
        Some(b"applied".to_vec())
    );
    assert_eq!(store.pending().await.unwrap(), ["transfer/t"]);
    assert_eq!(store.idempotency_rows().await.unwrap(), 4);
}

fn next(actor: &str, expected: u64) -> Commit {
    Commit {
        actor: actor.into(),
        expected_version: expected,
        version: expected + 1,
        state: Some(b"next".to_vec()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redb_data_directory_is_migrated_on_start_and_kept_aside() {
    let dir = TempDir::new().unwrap();
    write_redb(dir.path());
    let store = open(dir.path()).unwrap();
    assert_migrated(&store).await;
    // The marker that made the copy count keeps how many records it copied.
    let copied = std::fs::read_to_string(dir.path().join("troupe.fjall").join("complete"));
    assert_eq!(copied.unwrap(), "10");
    // Compare-and-set sees the migrated versions.
    assert!(matches!(
        store.commit(next("account/a", 1)).await,
        Err(StoreError::Conflict { found: 2, .. })
    ));
    store.commit(next("account/a", 2)).await.unwrap();
    // The sweep sees the migrated expiry index.
    store.sweep().await;
    let mut rows = 0;
    for _ in 0..250 {
        rows = store.idempotency_rows().await.unwrap();
        if rows == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rows, 2, "the expired migrated record was not swept");
    store.close().await;

    assert!(!dir.path().join("troupe.redb").exists());
    assert!(dir.path().join("troupe.redb.migrated").exists());
    // Once only: the next start opens the new store as it was left.
    let store = open(dir.path()).unwrap();
    assert_eq!(store.load("account/a").await.unwrap().unwrap().version, 3);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_cut_short_starts_over_and_one_between_renames_is_finished() {
    // Cut short while copying: a partial copy is left next to the redb
    // file (here one holding a record the redb file does not).
    let dir = TempDir::new().unwrap();
    write_redb(dir.path());
    let other = TempDir::new().unwrap();
    let partial = open(other.path()).unwrap();
    partial.commit(next("account/ghost", 0)).await.unwrap();
    partial.close().await;
    let staging = dir.path().join("troupe.fjall.migrating");
    std::fs::rename(other.path().join("troupe.fjall"), &staging).unwrap();
    let store = open(dir.path()).unwrap();
    assert_migrated(&store).await;
    assert_eq!(store.load("account/ghost").await.unwrap(), None);
    store.close().await;
    assert!(!staging.exists());

    // Cut short between the renames: the redb file is already set aside
    // and the finished copy not yet in place.
    std::fs::rename(dir.path().join("troupe.fjall"), &staging).unwrap();
    let store = open(dir.path()).unwrap();
    assert_migrated(&store).await;
    store.close().await;
    assert!(dir.path().join("troupe.fjall").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redb_file_next_to_the_new_store_is_refused_and_left_alone() {
    let dir = TempDir::new().unwrap();
    write_redb(dir.path());
    let store = open(dir.path()).unwrap();
    store.commit(next("account/a", 2)).await.unwrap();
    store.close().await;
    // An operator copies the old file back in.
    std::fs::copy(
        dir.path().join("troupe.redb.migrated"),
        dir.path().join("troupe.redb"),
    )
    .unwrap();
    let message = match open(dir.path()) {
        Ok(_) => panic!("opened with both stores present"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains("troupe.redb") && message.contains("troupe.fjall"),
        "{message}"
    );
    // Neither was touched: the new store still holds the newer write.
    std::fs::remove_file(dir.path().join("troupe.redb")).unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(store.load("account/a").await.unwrap().unwrap().version, 3);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redb_file_from_before_facts_migrates_and_unknown_tables_are_refused() {
    let dir = TempDir::new().unwrap();
    write_redb_with(dir.path(), false);
    let store = open(dir.path()).unwrap();
    assert_eq!(store.load("account/a").await.unwrap().unwrap().version, 2);
    assert_eq!(store.fact("account/a", "leg/t").await.unwrap(), None);
    store.close().await;

    let dir = TempDir::new().unwrap();
    write_redb(dir.path());
    {
        let db = redb::Database::open(dir.path().join("troupe.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let later: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");
        txn.open_table(later)
            .unwrap()
            .insert("x", b"y".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    // An earlier attempt's staging directory is left as it is too.
    let staging = dir.path().join("troupe.fjall.migrating");
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join("earlier"), b"x").unwrap();
    let message = match open(dir.path()) {
        Ok(_) => panic!("migrated a table it does not know"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("schedules"), "{message}");
    assert!(dir.path().join("troupe.redb").exists());
    assert!(!dir.path().join("troupe.fjall").exists());
    assert!(staging.join("earlier").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_earlier_migration_kept_is_never_overwritten() {
    // A new troupe.redb next to the kept one (the old version run again
    // after the new store was moved away): refused, both left as they are.
    let dir = TempDir::new().unwrap();
    write_redb(dir.path());
    open(dir.path()).unwrap().close().await;
    let kept = std::fs::read(dir.path().join("troupe.redb.migrated")).unwrap();
    std::fs::rename(dir.path().join("troupe.fjall"), dir.path().join("aside")).unwrap();
    write_redb_with(dir.path(), false);
    let message = match open(dir.path()) {
        Ok(_) => panic!("migrated over what an earlier migration kept"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("troupe.redb.migrated"), "{message}");
    assert_eq!(
        std::fs::read(dir.path().join("troupe.redb.migrated")).unwrap(),
        kept
    );

    // A copy whose completion was never recorded is not put in place.
    let dir = TempDir::new().unwrap();
    write_redb(dir.path());
    open(dir.path()).unwrap().close().await;
    let staging = dir.path().join("troupe.fjall.migrating");
    std::fs::rename(dir.path().join("troupe.fjall"), &staging).unwrap();
    std::fs::remove_file(staging.join("complete")).unwrap();
    assert!(matches!(open(dir.path()), Err(StoreError::Corrupt(_))));
    assert!(!dir.path().join("troupe.fjall").exists());

    // A copy with neither the redb file nor the kept one: the data it came
    // from is missing, and an empty ledger must not start next to it.
    std::fs::write(staging.join("complete"), b"7").unwrap();
    std::fs::remove_file(dir.path().join("troupe.redb.migrated")).unwrap();
    let message = match open(dir.path()) {
        Ok(_) => panic!("started next to an orphaned migration"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("troupe.fjall.migrating"), "{message}");
    assert!(!dir.path().join("troupe.fjall").exists());
}
