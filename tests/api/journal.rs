//! The embedded store's journal at start: a torn last batch that was never
//! acknowledged is dropped; damage that would lose an acknowledged batch
//! stops start-up with an error, whatever part of the journal it hits,
//! and leaves every byte where it was; a damaged batch header, a damaged
//! or missing `troupe.acked` and a missing format marker are refused too.

use std::path::{Path, PathBuf};

use tempfile::TempDir;
use troupe::store::{Commit, EmbeddedStore, Store, StoreError, StoreOptions};

fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
    EmbeddedStore::open(dir, StoreOptions::default())
}

/// Writes `account/a` at versions 1 to `n`, one batch each.
pub(crate) async fn write(dir: &Path, n: u64) {
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
pub(crate) fn journal(dir: &Path) -> (PathBuf, usize) {
    let path = std::fs::read_dir(dir.join("troupe.fjall"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .max()
        .expect("no journal file");
    let end = written(&path).len();
    (path, end)
}

/// The journal's bytes up to the zeros it ends with.
fn written(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    bytes.truncate(written_len(&bytes));
    bytes
}

/// How many bytes precede the zeros `bytes` ends with (fjall preallocates
/// its journals); compared a page at a time, fast in a debug build too.
pub(crate) fn written_len(bytes: &[u8]) -> usize {
    let zeros = [0u8; 4096];
    let mut end = bytes.len();
    while end > 0 && bytes[end.saturating_sub(4096)..end] == zeros[..end.min(4096)] {
        end = end.saturating_sub(4096);
    }
    bytes[..end]
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i + 1)
}

/// Writes the memtables of `keyspaces` (every one when empty) to tables,
/// as fjall does when they fill, with the store closed.
pub(crate) fn flush(dir: &Path, keyspaces: &[&str]) {
    let db = fjall::Database::builder(dir.join("troupe.fjall"))
        .open()
        .unwrap();
    let names: Vec<String> = if keyspaces.is_empty() {
        db.list_keyspace_names()
            .into_iter()
            .map(|n| n.to_string())
            .collect()
    } else {
        keyspaces.iter().map(|n| (*n).to_owned()).collect()
    };
    for name in names {
        db.keyspace(&name, fjall::KeyspaceCreateOptions::default)
            .unwrap()
            .rotate_memtable_and_wait()
            .unwrap();
    }
}

pub(crate) fn rewrite(path: &Path, range: std::ops::Range<usize>, f: impl Fn(u8) -> u8) {
    let mut bytes = std::fs::read(path).unwrap();
    for b in &mut bytes[range] {
        *b = f(*b);
    }
    std::fs::write(path, bytes).unwrap();
}

/// Where each whole batch of `path` starts (just past the trailer of the
/// one before).
pub(crate) fn batch_starts(path: &Path) -> Vec<usize> {
    let bytes = written(path);
    let mut starts = vec![0];
    starts.extend(
        bytes
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == b"FJL\x03")
            .map(|(i, _)| i + 4),
    );
    starts.pop();
    starts
}

pub(crate) fn acked(dir: &Path) -> u64 {
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
    // The torn bytes were kept aside only until the start was sure.
    assert!(
        !dir.path().join("troupe.evidence").exists(),
        "what was kept aside was left behind"
    );
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
    let before = std::fs::read(&path).unwrap();
    let message = refused(dir.path());
    assert!(
        message.contains("acknowledged") && message.contains("backup"),
        "{message}"
    );
    // Refused before fjall could cut the batch off.
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the journal was cut"
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

/// Damage in the middle of the journal is refused before fjall opens it:
/// fjall would cut the file there, erasing the acknowledged batches after
/// the damage from the only copy. Every byte stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_start_leaves_every_byte_of_the_journal_in_place() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 20).await;
    let (path, end) = journal(dir.path());
    rewrite(&path, end / 2..end / 2 + 1, |b| b ^ 0x10);
    let before = std::fs::read(&path).unwrap();
    let message = refused(dir.path());
    assert!(
        message.contains("damaged at byte") && message.contains("nothing on disk was changed"),
        "{message}"
    );
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the refused start changed the journal"
    );
    // Refused again, the same way, on the next attempt.
    assert_eq!(refused(dir.path()), message);
}

/// The sequence number in the header of the batch starting at `start`.
fn seqno(bytes: &[u8], start: usize) -> u64 {
    // Start: tag (1 byte), item count (4), seqno (8, little-endian).
    u64::from_le_bytes(bytes[start + 5..start + 13].try_into().unwrap())
}

/// fjall's checksum covers a batch's items, not its header: a flipped bit
/// in a batch's sequence number would replay it out of order, or skip it
/// as flushed already, without a word. Every flip that breaks the order is
/// refused; one that keeps it (raising the last batch's number, lowering
/// the first's) changes nothing that is served, and the store opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_number_is_refused_or_harmless() {
    let mut refusals = 0;
    for batch in [0usize, 1, 4, 9] {
        for bit in [0u8, 1, 3, 7, 15, 40, 63] {
            let dir = TempDir::new().unwrap();
            write(dir.path(), 10).await;
            let (path, _) = journal(dir.path());
            let starts = batch_starts(&path);
            assert_eq!(starts.len(), 10, "one batch per commit");
            let bytes = std::fs::read(&path).unwrap();
            let numbers: Vec<u64> = starts.iter().map(|s| seqno(&bytes, *s)).collect();
            let flipped = numbers[batch] ^ (1 << bit);
            // lsm-tree reserves the top bit: a number past it would fail
            // every write after the start.
            let ordered = (batch == 0 || numbers[batch - 1] < flipped)
                && numbers.get(batch + 1).is_none_or(|next| flipped < *next)
                && flipped < 1 << 63;
            let byte = starts[batch] + 5 + usize::from(bit / 8);
            rewrite(&path, byte..byte + 1, |b| b ^ (1 << (bit % 8)));
            match open(dir.path()) {
                Err(StoreError::Corrupt(message)) => {
                    assert!(
                        !ordered,
                        "batch {batch}, bit {bit}: a flip that kept the order refused: {message}"
                    );
                    assert!(message.contains("nothing on disk was changed"), "{message}");
                    refusals += 1;
                }
                Err(e) => panic!("batch {batch}, bit {bit}: not corruption: {e}"),
                Ok(store) => {
                    assert!(ordered, "batch {batch}, bit {bit}: started out of order");
                    let s = store.load("account/a").await.unwrap().unwrap();
                    assert_eq!(
                        (s.version, s.state),
                        (10, b"state 10".to_vec()),
                        "batch {batch}, bit {bit}: served a wrong state"
                    );
                    assert_eq!(store.entries("account/a", 0, 20).await.unwrap().len(), 10);
                    // And it goes on writing.
                    commit(&store, 10).await;
                    store.close().await;
                }
            }
        }
    }
    assert!(refusals > 12, "only {refusals} of 28 flips refused");
}

/// A batch whose number falls to or below what fjall has already flushed
/// to its tables is skipped by fjall's replay as flushed already: its
/// writes would vanish. The number keeps the journal's own order (it is
/// its first batch), so only the check of what the replay serves, key by
/// key, can tell; it refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_numbered_below_the_flushed_tables_is_refused() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path()).unwrap();
    let mut version = 0;
    for _ in 0..5 {
        commit(&store, version).await;
        version += 1;
    }
    store.close().await;
    // Flush every keyspace to tables, as fjall does when memtables fill.
    flush(dir.path(), &[]);
    let store = open(dir.path()).unwrap();
    for _ in 0..3 {
        commit(&store, version).await;
        version += 1;
    }
    store.close().await;
    // The five batches flushed are no longer needed: drop them from the
    // journal, as fjall deletes a journal once its batches are in tables.
    let path = journals(dir.path()).pop().unwrap();
    let starts = batch_starts(&path);
    assert_eq!(starts.len(), 8);
    let bytes = std::fs::read(&path).unwrap();
    let mut kept = bytes[starts[5]..].to_vec();
    kept.resize(bytes.len(), 0);
    std::fs::write(&path, &kept).unwrap();
    // The store starts on that journal as it is...
    let store = open(dir.path()).unwrap();
    assert_eq!(store.entries("account/a", 0, 20).await.unwrap().len(), 8);
    store.close().await;
    // ...but not once its first batch is numbered below the flushed ones.
    let path = journals(dir.path()).pop().unwrap();
    let first = batch_starts(&path)[0];
    rewrite(&path, first + 5..first + 13, |_| 0);
    rewrite(&path, first + 5..first + 6, |_| 1);
    // And a torn write after the last batch, which fjall cuts off when it
    // opens, before the check that refuses runs.
    let mut bytes = written(&path);
    bytes.extend_from_slice(&[7u8; 4]);
    std::fs::write(&path, &bytes).unwrap();
    let message = refused(dir.path());
    assert!(message.contains("out of order or skipped"), "{message}");
    // What fjall cut is kept, named, and every later start refuses until
    // an operator has looked.
    let evidence = dir.path().join("troupe.evidence");
    assert!(message.contains("troupe.evidence"), "{message}");
    let torn: Vec<Vec<u8>> = std::fs::read_dir(&evidence)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".torn-at-"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(torn, vec![vec![7u8; 4]], "the torn bytes kept aside");
    let again = refused(dir.path());
    assert!(again.contains("an earlier start refused"), "{again}");
    // `troupe store verify` puts the kept bytes back on its copy and
    // names the damage itself, changing nothing.
    let before = crate::offline::snapshot(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(["store", "verify"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("out of order or skipped"), "{stderr}");
    assert_eq!(crate::offline::snapshot(dir.path()), before);
}

/// Commits `account/a` from `version` to the next.
pub(crate) async fn commit(store: &EmbeddedStore, version: u64) {
    let c = Commit {
        actor: "account/a".into(),
        expected_version: version,
        version: version + 1,
        state: Some(format!("state {}", version + 1).into_bytes()),
        entries: vec![(version + 1, b"entry".to_vec())],
        ..Default::default()
    };
    store.commit(c).await.unwrap();
}

/// The journal files, oldest first.
pub(crate) fn journals(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("troupe.fjall"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let id = p.file_stem()?.to_str()?.parse().ok()?;
            (p.extension()? == "jnl").then_some((id, p))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// `troupe.acked` deleted, cut short or with a flipped bit: refused, never
/// read as "nothing acknowledged" (which would let a damaged end of the
/// journal pass for a torn write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_damaged_acknowledged_count_is_refused() {
    type Damage = (&'static str, fn(&Path));
    let damages: [Damage; 4] = [
        ("deleted", |p| std::fs::remove_file(p).unwrap()),
        ("cut to 4 bytes", |p| {
            let bytes = std::fs::read(p).unwrap();
            std::fs::write(p, &bytes[..4]).unwrap();
        }),
        ("emptied", |p| std::fs::write(p, b"").unwrap()),
        ("a bit flipped", |p| rewrite(p, 7..8, |b| b ^ 1)),
    ];
    for (what, damage) in damages {
        let dir = TempDir::new().unwrap();
        write(dir.path(), 3).await;
        let file = dir.path().join("troupe.acked");
        assert_eq!(
            std::fs::read(&file).unwrap().len(),
            16,
            "a count and its checksum"
        );
        damage(&file);
        let message = refused(dir.path());
        assert!(message.contains("troupe.acked"), "{what}: {message}");
    }
}

/// fjall's format marker deleted: named, not "File exists".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_format_marker_is_named() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 3).await;
    std::fs::remove_file(dir.path().join("troupe.fjall/version")).unwrap();
    let message = refused(dir.path());
    assert!(message.contains("format marker"), "{message}");
}

/// A keyspace directory without its `current` marker: fjall would delete
/// it, tables and all, and start it empty. Refused first, nothing deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyspace_without_its_marker_is_refused_before_fjall_deletes_it() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 3).await;
    // Its writes in tables: a keyspace without tables and without its
    // marker loses nothing when fjall deletes it (its writes are in the
    // journal, replayed and read back), and is let through.
    flush(dir.path(), &["state"]);
    let spaces = dir.path().join("troupe.fjall/keyspaces");
    let space = std::fs::read_dir(&spaces)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name().is_some_and(|n| n != "0")
                && std::fs::read_dir(p.join("tables")).is_ok_and(|mut t| t.next().is_some())
        })
        .expect("a keyspace with a table");
    std::fs::remove_file(space.join("current")).unwrap();
    let before: Vec<_> = std::fs::read_dir(&space)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let message = refused(dir.path());
    assert!(message.contains("no `current` marker"), "{message}");
    let after: Vec<_> = std::fs::read_dir(&space)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        before.len(),
        after.len(),
        "files of the keyspace were deleted"
    );
}

/// An empty `troupe.acked`, as earlier versions left it before their first
/// batch, next to a database that holds no batch: the store starts and
/// writes the count from then on. Next to batches, it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_acknowledged_count_of_an_earlier_version_is_read_as_no_batch() {
    let dir = TempDir::new().unwrap();
    open(dir.path()).unwrap().close().await;
    std::fs::write(dir.path().join("troupe.acked"), b"").unwrap();
    let store = open(dir.path()).unwrap();
    commit(&store, 0).await;
    store.close().await;
    assert_eq!(acked(dir.path()), 1);
    std::fs::write(dir.path().join("troupe.acked"), b"").unwrap();
    let message = refused(dir.path());
    assert!(message.contains("empty"), "{message}");
}

/// A second store on a directory another one serves is refused before it
/// reads or keeps anything: a mistaken second start leaves nothing that
/// would block the next start of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_opener_is_refused_before_it_touches_anything() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 3).await;
    let first = open(dir.path()).unwrap();
    // A torn end, which a start would keep aside.
    let (path, _) = journal(dir.path());
    let mut bytes = written(&path);
    bytes.extend_from_slice(&[7u8; 4]);
    std::fs::write(&path, &bytes).unwrap();
    match open(dir.path()) {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("in use"), "{m}"),
        Err(e) => panic!("not refused as in use: {e}"),
        Ok(_) => panic!("two stores on one directory"),
    }
    first.close().await;
    assert!(!dir.path().join("troupe.evidence").exists());
    open(dir.path()).unwrap().close().await;
}

/// A journal lost before its batches reached the tables: the journals
/// that remain start past where the tables end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_oldest_journal_is_refused() {
    let dir = TempDir::new().unwrap();
    // fjall seals a journal past 64 MB, at its next flush: states of 1 MB
    // fill memtables, which flush, until it has.
    let store = open(dir.path()).unwrap();
    let mut version = 0;
    while journals(dir.path()).len() < 2 {
        assert!(version < 200, "no journal was sealed");
        let c = Commit {
            actor: "account/a".into(),
            expected_version: version,
            version: version + 1,
            state: Some(vec![version as u8; 1 << 20]),
            ..Default::default()
        };
        store.commit(c).await.unwrap();
        version += 1;
    }
    let c = Commit {
        actor: "account/b".into(),
        expected_version: 0,
        version: 1,
        state: Some(b"b".to_vec()),
        ..Default::default()
    };
    store.commit(c).await.unwrap();
    store.close().await;
    let all = journals(dir.path());
    assert_eq!(all.len(), 2, "{all:?}");
    // A copy with both journals starts and holds everything.
    let intact = TempDir::new().unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(dir.path().join("."))
        .arg(intact.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let store = open(intact.path()).unwrap();
    let a = store.load("account/a").await.unwrap().unwrap();
    assert_eq!(a.version, version);
    store.close().await;
    // Without the sealed one, it is refused.
    std::fs::remove_file(&all[0]).unwrap();
    let message = refused(dir.path());
    assert!(message.contains("is missing"), "{message}");
}
