//! The embedded store's journal at start: a torn last batch that was never
//! acknowledged is dropped; damage that would lose an acknowledged batch
//! stops start-up with an error, whatever part of the journal it hits.

use std::path::{Path, PathBuf};

use tempfile::TempDir;
use troupe::store::{Commit, EmbeddedStore, Store, StoreError, StoreOptions};

fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
    EmbeddedStore::open(dir, StoreOptions::default())
}

/// Writes `account/a` at versions 1 to `n`, one batch each.
async fn write(dir: &Path, n: u64) {
    let store = open(dir).unwrap();
    for v in 0..n {
        let c = Commit {
            actor: "account/a".into(),
            expected_version: v,
            version: v + 1,
            state: Some(format!("state {}", v + 1).into_bytes()),
            entries: vec![(v + 1, b"entry".to_vec())],
            ..Default::default()
        };
        store.commit(c).await.unwrap();
    }
    store.close().await;
}

/// The journal file fjall appends to, and where its data ends (the file
/// is preallocated with zeros).
fn journal(dir: &Path) -> (PathBuf, usize) {
    let path = std::fs::read_dir(dir.join("troupe.fjall"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .max()
        .expect("no journal file");
    let bytes = std::fs::read(&path).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    (path, end)
}

fn rewrite(path: &Path, range: std::ops::Range<usize>, f: impl Fn(u8) -> u8) {
    let mut bytes = std::fs::read(path).unwrap();
    for b in &mut bytes[range] {
        *b = f(*b);
    }
    std::fs::write(path, bytes).unwrap();
}

fn acked(dir: &Path) -> u64 {
    let bytes = std::fs::read(dir.join("troupe.acked")).unwrap();
    u64::from_be_bytes(bytes[..8].try_into().unwrap())
}

fn refused(dir: &Path) -> String {
    match open(dir) {
        Ok(_) => panic!("started on a damaged journal"),
        Err(e @ StoreError::Corrupt(_)) => e.to_string(),
        Err(e) => panic!("not reported as corruption: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_batch_never_acknowledged_is_dropped_and_the_store_goes_on() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 3).await;
    assert_eq!(acked(dir.path()), 3);
    // The process died while appending the third batch: part of it reached
    // the file, its fsync never returned, so it was never acknowledged.
    let (path, end) = journal(dir.path());
    rewrite(&path, end - 20..end, |_| 0);
    std::fs::write(dir.path().join("troupe.acked"), 2u64.to_be_bytes()).unwrap();

    let store = open(dir.path()).unwrap();
    let snapshot = store.load("account/a").await.unwrap().unwrap();
    assert_eq!((snapshot.version, snapshot.state), (2, b"state 2".to_vec()));
    assert_eq!(store.entries("account/a", 0, 10).await.unwrap().len(), 2);
    // Writing goes on from the surviving state, and survives a restart.
    let c = Commit {
        actor: "account/a".into(),
        expected_version: 2,
        version: 3,
        state: Some(b"again".to_vec()),
        ..Default::default()
    };
    store.commit(c).await.unwrap();
    store.close().await;
    let store = open(dir.path()).unwrap();
    assert_eq!(
        store.load("account/a").await.unwrap().unwrap().state,
        b"again"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_batch_that_was_acknowledged_stops_start_up() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 3).await;
    let (path, end) = journal(dir.path());
    rewrite(&path, end - 20..end, |_| 0);
    let message = refused(dir.path());
    assert!(
        message.contains("acknowledged") && message.contains("backup"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_last_batch_stops_start_up_wherever_it_hits() {
    // Damage in several places and shapes: flipped bits in the data,
    // zeroed framing, at a quarter, half and three quarters of the journal.
    for (quarters, zero) in [(1, false), (2, false), (2, true), (3, true)] {
        let dir = TempDir::new().unwrap();
        write(dir.path(), 50).await;
        let (path, end) = journal(dir.path());
        let from = end * quarters / 4;
        if zero {
            rewrite(&path, from..from + 16, |_| 0);
        } else {
            rewrite(&path, from..from + 16, |b| b ^ 0xff);
        }
        let message = refused(dir.path());
        assert!(message.contains("backup"), "{message}");
    }
}

/// A `troupe.acked` that exists but cannot be read (here a FIFO: reads at
/// an offset fail) stops start-up: taken as "nothing acknowledged", it
/// would let a torn batch that was acknowledged be dropped in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_count_that_cannot_be_read_stops_start_up() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 3).await;
    let (path, end) = journal(dir.path());
    rewrite(&path, end - 20..end, |_| 0);
    let acked = dir.path().join("troupe.acked");
    std::fs::remove_file(&acked).unwrap();
    nix::unistd::mkfifo(&acked, nix::sys::stat::Mode::S_IRWXU).unwrap();
    match open(dir.path()) {
        Ok(_) => panic!("started without reading troupe.acked"),
        Err(e) => assert!(e.to_string().contains("read troupe.acked"), "{e}"),
    }
}
