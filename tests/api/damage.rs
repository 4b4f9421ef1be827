//! One flipped bit at a time, anywhere in a small data directory (its
//! journal, its tables, fjall's manifests and markers, `troupe.acked`):
//! every run either refuses at start with the damaged bytes still on disk,
//! or serves every acknowledged write exactly, or refuses (`corrupt`) the
//! reads that depend on the damage. Never a wrong state, a lost entry or
//! record, or a replay of something no longer there.
//!
//! Positions are drawn from a seed: `DAMAGE_POSITIONS` of them (300 here;
//! `make test-damage` runs thousands), from `DAMAGE_SEED` (0).

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use troupe::store::{Commit, EmbeddedStore, IdempotencyWrite, Store, StoreError, StoreOptions};

use crate::journal::{flush, written_len};

const ACTORS: [&str; 3] = ["account/alice", "account/bob", "transfer/t-1"];
/// Versions each actor reaches: half flushed to tables, half in the
/// journal only.
const VERSIONS: u64 = 8;

fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
    EmbeddedStore::open(dir, StoreOptions::default())
}

fn state(actor: &str, v: u64) -> Vec<u8> {
    format!("{{\"actor\":\"{actor}\",\"version\":{v}}}").into_bytes()
}

fn entry(actor: &str, v: u64) -> Vec<u8> {
    format!("{{\"entry\":{v},\"of\":\"{actor}\"}}").into_bytes()
}

fn record(actor: &str, v: u64) -> Vec<u8> {
    format!("{{\"reply\":{v},\"to\":\"{actor}\"}}").into_bytes()
}

fn fact(actor: &str, v: u64) -> Vec<u8> {
    format!("{{\"leg\":{v},\"at\":\"{actor}\"}}").into_bytes()
}

async fn commit_round(store: &EmbeddedStore, v: u64) {
    for actor in ACTORS {
        let c = Commit {
            actor: actor.into(),
            expected_version: v - 1,
            version: v,
            state: Some(state(actor, v)),
            entries: vec![(v, entry(actor, v))],
            idempotency: vec![IdempotencyWrite {
                key: format!("k{v}"),
                value: record(actor, v),
            }],
            facts: vec![(format!("f{v}"), fact(actor, v))],
            pending: v % 2 == 0,
            fence: false,
        };
        store
            .commit(c)
            .await
            .expect("a commit of the pristine directory");
    }
}

/// A data directory with every kind of record, in tables and in the
/// journal.
async fn pristine() -> TempDir {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path()).unwrap();
    for v in 1..=VERSIONS / 2 {
        commit_round(&store, v).await;
    }
    store.close().await;
    flush(dir.path(), &[]);
    let store = open(dir.path()).unwrap();
    for v in VERSIONS / 2 + 1..=VERSIONS {
        commit_round(&store, v).await;
    }
    store.close().await;
    dir
}

/// Every file of `dir` with the bytes that matter (a journal's written
/// part, not its preallocated zeros; not the lock file).
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path));
        } else if path.file_name().is_some_and(|n| n != "lock") {
            let len = if path.extension().is_some_and(|e| e == "jnl") {
                // A few bytes past the end: garbage after the last batch.
                let bytes = std::fs::read(&path).unwrap();
                (written_len(&bytes) + 16).min(bytes.len()) as u64
            } else {
                std::fs::metadata(&path).unwrap().len()
            };
            if len > 0 {
                found.push((path, len));
            }
        }
    }
    found.sort();
    found
}

/// Copies `from` to `to`, keeping journals sparse.
fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy(&path, &target);
        } else {
            let bytes = std::fs::read(&path).unwrap();
            let keep = written_len(&bytes);
            std::fs::write(&target, &bytes[..keep]).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&target)
                .unwrap()
                .set_len(bytes.len() as u64)
                .unwrap();
        }
    }
}

/// What one read gave, against what was acknowledged: exact, or refused as
/// corrupt. Returns whether it was refused.
fn judge<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: Result<T, StoreError>,
    want: T,
) -> Result<bool, String> {
    match got {
        Ok(got) if got == want => Ok(false),
        Err(StoreError::Corrupt(_)) => Ok(true),
        Ok(got) => Err(format!("{what}: served {got:?}, acknowledged {want:?}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// Reads back everything acknowledged; returns how many reads refused.
async fn audit(store: &EmbeddedStore) -> Result<usize, String> {
    let mut refused = 0;
    for actor in ACTORS {
        let loaded = store
            .load(actor)
            .await
            .map(|s| s.map(|s| (s.version, s.state)));
        let want = Some((VERSIONS, state(actor, VERSIONS)));
        refused += usize::from(judge(&format!("{actor}'s state"), loaded, want)?);
        let entries = store.entries(actor, 0, 100).await;
        let want: Vec<Vec<u8>> = (1..=VERSIONS).map(|v| entry(actor, v)).collect();
        refused += usize::from(judge(&format!("{actor}'s entries"), entries, want)?);
        for v in 1..=VERSIONS {
            let got = store.idempotency(actor, &format!("k{v}")).await;
            let what = format!("{actor}'s record k{v}");
            refused += usize::from(judge(&what, got, Some(record(actor, v)))?);
            let got = store.fact(actor, &format!("f{v}")).await;
            refused += usize::from(judge(
                &format!("{actor}'s fact f{v}"),
                got,
                Some(fact(actor, v)),
            )?);
        }
    }
    let mut pending = ACTORS.map(String::from).to_vec();
    pending.sort();
    let want = if VERSIONS % 2 == 0 {
        pending
    } else {
        Vec::new()
    };
    refused += usize::from(judge("the pending set", store.pending().await, want)?);
    Ok(refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_anywhere_is_refused_or_changes_nothing_served() {
    let positions: usize = std::env::var("DAMAGE_POSITIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("DAMAGE_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let pristine = pristine().await;
    {
        let store = open(pristine.path()).unwrap();
        assert_eq!(
            audit(&store).await,
            Ok(0),
            "the pristine directory reads back"
        );
        store.close().await;
    }
    let files = files(pristine.path());
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut at_start, mut at_read, mut harmless) = (0, 0, 0);
    let mut failures = Vec::new();
    for n in 0..positions {
        let mut offset = rng.random_range(0..total);
        let bit = rng.random_range(0..8u8);
        let (file, _) = files
            .iter()
            .find(|(_, len)| {
                let here = offset < *len;
                if !here {
                    offset -= len;
                }
                here
            })
            .unwrap();
        let relative = file.strip_prefix(pristine.path()).unwrap();
        let dir = TempDir::new().unwrap();
        copy(pristine.path(), dir.path());
        let damaged = dir.path().join(relative);
        let mut bytes = std::fs::read(&damaged).unwrap();
        bytes[offset as usize] ^= 1 << bit;
        std::fs::write(&damaged, &bytes).unwrap();
        let what = format!(
            "#{n}: bit {bit} of byte {offset} of {} (DAMAGE_SEED={seed})",
            relative.display()
        );
        match open(dir.path()) {
            Err(StoreError::Corrupt(message)) => {
                at_start += 1;
                if std::fs::read(&damaged).unwrap() != bytes {
                    failures.push(format!("{what}: refused ({message}) but the file changed"));
                }
            }
            Err(e) => failures.push(format!("{what}: refused, not as corrupt: {e}")),
            Ok(store) => {
                match audit(&store).await {
                    Ok(0) => harmless += 1,
                    Ok(_) => at_read += 1,
                    Err(wrong) => failures.push(format!("{what}: {wrong}")),
                }
                store.close().await;
            }
        }
    }
    eprintln!(
        "{positions} flips: {at_start} refused at start, {at_read} refused where read, \
         {harmless} changed nothing served"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(at_start > 0, "no flip was refused at start");
}
