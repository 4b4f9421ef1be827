//! `troupe store verify` and `troupe store salvage`, run as the binary on
//! data directories the store wrote: an intact one verifies and every
//! file stays as it was; damage is named in the directory's own terms and
//! nothing is changed by the check that found it; a directory in use is
//! not read (a directory an earlier start refused is checked with what
//! it kept aside put back: `journal.rs`); salvage builds a new directory holding the history up to the
//! damage, says what it lost, and never writes into the source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use tempfile::TempDir;
use troupe::store::{EmbeddedStore, Store, StoreOptions};

use crate::journal::{acked, batch_starts, commit, flush, journal, journals, rewrite, write};

fn troupe(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(args)
        .output()
        .unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every file under `dir` and its bytes (`troupe.lock` aside).
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            found.extend(snapshot(&p));
        } else if p.file_name().is_some_and(|n| n != "troupe.lock") {
            found.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    found
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intact_directory_verifies_and_is_left_as_it_was() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 5).await;
    let before = snapshot(dir.path());
    let out = troupe(&["store", "verify", path(dir.path())]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("intact"), "{stdout}");
    assert!(stdout.contains("actors: 1 account"), "{stdout}");
    assert!(stdout.contains("5 written, 5 acknowledged"), "{stdout}");
    assert!(
        stdout.contains("keyspace entries: 5 keys"),
        "every entry is read: {stdout}"
    );
    assert_eq!(snapshot(dir.path()), before, "verify changed the directory");
    // The copy it checked is gone.
    let scratch = TempDir::new().unwrap();
    let out = troupe(&[
        "store",
        "verify",
        path(dir.path()),
        "--scratch",
        path(scratch.path()),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_is_named_in_the_directory_and_every_byte_stays() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 5).await;
    let (jnl, _) = journal(dir.path());
    let starts = batch_starts(&jnl);
    // A bit inside the third batch's items: four batches follow it.
    rewrite(&jnl, starts[2] + 40..starts[2] + 41, |b| b ^ 0x10);
    let before = snapshot(dir.path());
    let out = troupe(&["store", "verify", path(dir.path())]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}{stderr}", text(&out.stdout));
    assert!(stderr.starts_with("damaged: "), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is damaged at byte {}",
            jnl.display(),
            starts[2]
        )),
        "the damage is named where it is: {stderr}"
    );
    assert_eq!(snapshot(dir.path()), before, "verify changed the directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_manifest_is_named_not_an_abort() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 3).await;
    let keyspaces = dir.path().join("troupe.fjall/keyspaces");
    let space = std::fs::read_dir(&keyspaces)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().is_some_and(|n| n != "0"))
        .unwrap();
    // The manifest `current` names (older ones may linger).
    let current = std::fs::read(space.join("current")).unwrap();
    let id = u64::from_le_bytes(current[..8].try_into().unwrap());
    let manifest = space.join(format!("v{id}"));
    let len = std::fs::metadata(&manifest).unwrap().len() as usize;
    rewrite(&manifest, len / 2..len / 2 + 1, |b| b ^ 1);
    let out = troupe(&["store", "verify", path(dir.path())]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has a damaged manifest"), "{stderr}");
    assert!(stderr.contains(&space.display().to_string()), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_in_use_is_not_read() {
    let dir = TempDir::new().unwrap();
    let store = EmbeddedStore::open(dir.path(), StoreOptions::default()).unwrap();
    let out = troupe(&["store", "verify", path(dir.path())]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("in use by a running troupe"), "{stderr}");
    store.close().await;
    let out = troupe(&["store", "verify", path(dir.path())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let empty = TempDir::new().unwrap();
    let out = troupe(&["store", "verify", path(empty.path())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("holds no troupe data"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salvage_keeps_the_history_before_the_damage_and_says_what_was_lost() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 6).await;
    assert_eq!(acked(dir.path()), 6);
    let (jnl, _) = journal(dir.path());
    let starts = batch_starts(&jnl);
    // The fourth batch's items: batches 1 to 3 are intact.
    rewrite(&jnl, starts[3] + 40..starts[3] + 41, |b| b ^ 0x10);
    let before = snapshot(dir.path());
    let out_dir = TempDir::new().unwrap();
    let to = out_dir.path().join("salvaged");

    let out = troupe(&["store", "salvage", path(dir.path()), "--to", path(&to)]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!(
            "cut: {} is damaged at byte {}",
            jnl.display(),
            starts[3]
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("lost: troupe's batches 4 to 6 were acknowledged and are gone"),
        "{stdout}"
    );
    assert_eq!(snapshot(dir.path()), before, "salvage changed its source");
    assert!(!out_dir.path().join("salvaged.salvaging").exists());

    // The new directory starts and holds exactly the first three versions.
    let store = EmbeddedStore::open(&to, StoreOptions::default()).unwrap();
    let s = store.load("account/a").await.unwrap().unwrap();
    assert_eq!((s.version, s.state), (3, b"state 3".to_vec()));
    assert_eq!(store.entries("account/a", 0, 100).await.unwrap().len(), 3);
    store.close().await;
    assert_eq!(acked(&to), 3);
    let out = troupe(&["store", "verify", path(&to)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // Never into a directory that exists.
    let again = troupe(&["store", "salvage", path(dir.path()), "--to", path(&to)]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("exists"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salvage_of_damage_it_cannot_cut_builds_nothing() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 3).await;
    // The format marker gone: nothing a cut of the journal mends.
    std::fs::remove_file(dir.path().join("troupe.fjall/version")).unwrap();
    let out_dir = TempDir::new().unwrap();
    let to = out_dir.path().join("salvaged");
    let out = troupe(&["store", "salvage", path(dir.path()), "--to", path(&to)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("format marker"), "{stderr}");
    assert!(!to.exists());
    assert_eq!(
        std::fs::read_dir(out_dir.path()).unwrap().count(),
        0,
        "a salvage that failed left its work behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salvage_refuses_when_tables_already_hold_writes_from_after_the_cut() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 3).await;
    // Only the entries reach a table (fjall flushes each keyspace when its
    // memtable fills): the journal stays, for the state it still holds.
    flush(dir.path(), &["entries"]);
    let store = EmbeddedStore::open(dir.path(), StoreOptions::default()).unwrap();
    commit(&store, 3).await;
    store.close().await;
    let sealed = journals(dir.path()).into_iter().next().unwrap();
    let starts = batch_starts(&sealed);
    assert!(starts.len() >= 3, "{starts:?}");
    // Damage in the second batch: entries 2 and 3 are in a table already,
    // and a history of batch 1 alone cannot be rebuilt from this.
    rewrite(&sealed, starts[1] + 40..starts[1] + 41, |b| b ^ 0x10);
    let out_dir = TempDir::new().unwrap();
    let to = out_dir.path().join("salvaged");
    let out = troupe(&["store", "salvage", path(dir.path()), "--to", path(&to)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}{stderr}", text(&out.stdout));
    assert!(
        stderr.contains("keyspace entries already holds"),
        "{stderr}"
    );
    assert!(!to.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_table_of_contents_is_refused_not_an_abort() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 3).await;
    flush(dir.path(), &["state"]);
    let tables: Vec<PathBuf> = std::fs::read_dir(dir.path().join("troupe.fjall/keyspaces"))
        .unwrap()
        .flat_map(|space| {
            std::fs::read_dir(space.unwrap().path().join("tables"))
                .into_iter()
                .flatten()
        })
        .map(|t| t.unwrap().path())
        .collect();
    let table = tables.first().expect("a table was written");
    // The trailer's last 16 bytes: where the table of contents starts and
    // its length. The top bit of its section count (4 bytes past its
    // start, after "TOC!") asks lsm-tree for billions of entries.
    let bytes = std::fs::read(table).unwrap();
    let at = bytes.len() - 16;
    let toc = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    assert_eq!(&bytes[toc..toc + 4], b"TOC!");
    rewrite(table, toc + 7..toc + 8, |b| b ^ 0x80);
    let message = match EmbeddedStore::open(dir.path(), StoreOptions::default()) {
        Ok(_) => panic!("started on a damaged table"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("has a damaged table"), "{message}");
    assert!(message.contains("table of contents"), "{message}");
    let out = troupe(&["store", "verify", path(dir.path())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salvage_cuts_an_acknowledged_torn_end_and_says_it_was_lost() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 4).await;
    // The last batch damaged at its end: it was acknowledged, so a start
    // refuses; salvage keeps the three before it.
    let (jnl, end) = journal(dir.path());
    rewrite(&jnl, end - 10..end - 9, |b| b ^ 4);
    let out_dir = TempDir::new().unwrap();
    let to = out_dir.path().join("salvaged");
    let out = troupe(&["store", "salvage", path(dir.path()), "--to", path(&to)]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("is torn or damaged"), "{stdout}");
    assert!(
        stdout.contains("lost: troupe's batches 4 to 4 were acknowledged"),
        "{stdout}"
    );
    let store = EmbeddedStore::open(&to, StoreOptions::default()).unwrap();
    let s = store.load("account/a").await.unwrap().unwrap();
    assert_eq!((s.version, s.state), (3, b"state 3".to_vec()));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_never_work_inside_the_data_directory() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 2).await;
    let before = snapshot(dir.path());
    let inside = dir.path().join("salvaged");
    let out = troupe(&["store", "salvage", path(dir.path()), "--to", path(&inside)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is inside"),
        "{}",
        text(&out.stderr)
    );
    let out = troupe(&[
        "store",
        "verify",
        path(dir.path()),
        "--scratch",
        path(&dir.path().join("troupe.fjall")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is inside"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(snapshot(dir.path()), before);
    assert!(!inside.exists());
}

/// A crash while fjall writes a table (a flush or compaction cut short)
/// leaves a file its manifest does not list, which fjall deletes: a
/// healthy directory, started as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_left_half_written_by_a_crash_is_not_damage() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), 3).await;
    let tables = dir.path().join("troupe.fjall/keyspaces/1/tables");
    std::fs::create_dir_all(&tables).unwrap();
    std::fs::write(tables.join("999"), b"half a table, then the crash").unwrap();
    // And a keyspace whose creation was cut short: a directory and its
    // empty `tables/`, nothing else.
    let unborn = dir.path().join("troupe.fjall/keyspaces/99");
    std::fs::create_dir_all(unborn.join("tables")).unwrap();
    // Its first manifest written, and `current` cut short in its temporary
    // file.
    std::fs::write(unborn.join("v0"), b"a manifest").unwrap();
    std::fs::write(unborn.join(".tmpAbC123"), b"cur").unwrap();
    let out = troupe(&["store", "verify", path(dir.path())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let store = EmbeddedStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.load("account/a").await.unwrap().unwrap().version, 3);
    store.close().await;
}
