//! The embedded store's data directory checked, and what is intact in it
//! recovered, with no server running: `troupe store verify` and
//! `troupe store salvage`. Both work on a copy: the directory they are
//! given is only read, so a check never erases what it found.

use std::path::Path;

use super::embedded::{self, EmbeddedStore, Inventory};
use super::journal;
use super::{Store, StoreError, StoreOptions};

/// The files a server keeps in a data directory that the checks read.
const READ: [&str; 4] = [
    embedded::DIR,
    embedded::ACKED,
    embedded::EVIDENCE,
    "troupe.redb",
];

/// What `verify` found in an intact directory.
#[derive(Debug)]
pub struct Verified {
    /// Journal files, batches and bytes read in them.
    pub journals: usize,
    pub journal_batches: u64,
    pub journal_bytes: u64,
    /// The count of batches `troupe.acked` says were acknowledged.
    pub acknowledged: u64,
    /// An earlier start refused the directory and kept evidence aside;
    /// the check ran with it put back.
    pub evidence: bool,
    pub inventory: Inventory,
}

/// What `salvage` kept and dropped.
#[derive(Debug)]
pub struct Salvaged {
    /// Each cut: the damage found (in the source's terms), and the journal
    /// bytes dropped from there on.
    pub cuts: Vec<(String, u64)>,
    /// troupe's last batch kept, and what the source says was acknowledged
    /// (`None` when its `troupe.acked` is missing or damaged).
    pub kept: u64,
    pub acknowledged: Option<u64>,
    pub inventory: Inventory,
}

/// Checks the data directory `dir` as a start would, and then reads every
/// key and value it holds, on a copy made under `scratch` (removed after).
///
/// # Errors
/// `Corrupt` for damage (the message names it in `dir`'s terms),
/// `Unavailable` when the directory cannot be read or is in use.
pub async fn verify(dir: &Path, scratch: &Path) -> Result<Verified, StoreError> {
    let _lock = lock(dir)?;
    outside(dir, scratch, "--scratch")?;
    let work = tempfile::Builder::new()
        .prefix("troupe-verify-")
        .tempdir_in(scratch)
        .map_err(|e| embedded::unavailable("make a scratch directory", e))?;
    let copy = work.path().join("data");
    let in_dir = |e: StoreError| rename(e, &copy, dir);
    let evidence = stage(dir, &copy).map_err(in_dir)?;
    let acknowledged = embedded::acked_count(&copy).map_err(in_dir)?;
    let scan = journal::scan(&copy.join(embedded::DIR), embedded::COUNT)
        .map_err(|e| in_dir(embedded::scan_failed(e)))?;
    let store = EmbeddedStore::open(&copy, StoreOptions::default()).map_err(in_dir)?;
    let inventory = store.inventory().map_err(in_dir);
    store.close().await;
    Ok(Verified {
        journals: scan.journals.len(),
        journal_batches: scan.batches,
        journal_bytes: scan.bytes,
        acknowledged: acknowledged.unwrap_or(0),
        evidence,
        inventory: inventory?,
    })
}

/// Builds at `to` (which must not exist) a data directory holding what is
/// intact in `dir`: its history up to the first damaged batch of its
/// journals. Writes acknowledged after that are lost, and `Salvaged` says
/// how many. Damage elsewhere (a table, a manifest) is not salvaged here.
///
/// # Errors
/// `Corrupt` when what is left after the cut is damaged too, or its
/// tables already hold writes from after the cut; `Unavailable` when a
/// directory cannot be read or written, or `to` exists.
pub async fn salvage(dir: &Path, to: &Path) -> Result<Salvaged, StoreError> {
    let _lock = lock(dir)?;
    if to.exists() {
        return Err(StoreError::Unavailable(format!(
            "{} exists: salvage builds a new directory and never writes into one",
            to.display()
        )));
    }
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    outside(dir, parent, "--to")?;
    // Made here, by this run alone (a name no other run picks), so the
    // rename below is within one filesystem. A salvage killed midway
    // leaves it behind, named `.NAME.salvaging-*`, for the operator to
    // delete.
    let name = to
        .file_name()
        .ok_or_else(|| StoreError::Unavailable(format!("{} names no directory", to.display())))?;
    let work = tempfile::Builder::new()
        .prefix(&format!(".{}.salvaging-", name.to_string_lossy()))
        .tempdir_in(parent)
        .map_err(|e| embedded::unavailable("make the salvage's work directory", e))?;
    let (cuts, acknowledged, inventory) = build(dir, work.path()).await?;
    sync_tree(work.path()).map_err(|e| embedded::unavailable("sync the salvage", e))?;
    let work = work.keep();
    // Never over a directory made meanwhile (a rename would replace an
    // empty one).
    let placed = nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &work,
        nix::fcntl::AT_FDCWD,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    );
    if let Err(e) = placed {
        let _ = std::fs::remove_dir_all(&work);
        return Err(embedded::unavailable("move the salvage into place", e));
    }
    if let Err(e) = embedded::sync_dir(parent) {
        tracing::warn!(error.message = %e, "the salvage is in place, but its directory entry may not be synced");
    }
    Ok(Salvaged {
        cuts,
        kept: inventory.batches,
        acknowledged,
        inventory,
    })
}

/// `salvage`'s work in `work`: a copy of `dir`, its journals cut at each
/// damage found, opened and read whole.
async fn build(
    dir: &Path,
    work: &Path,
) -> Result<(Vec<(String, u64)>, Option<u64>, Inventory), StoreError> {
    let in_dir = |e: StoreError| rename(e, work, dir);
    stage(dir, work).map_err(in_dir)?;
    let acknowledged = embedded::acked_count(work).ok().flatten();
    let db = work.join(embedded::DIR);
    let mut cuts = Vec::new();
    let scan = loop {
        let (journal, at, what) = match journal::scan(&db, embedded::COUNT) {
            // A torn end is cut too: fjall would drop it, and when it was
            // acknowledged its writes are lost like any others.
            Ok(scan) => match scan.torn.clone() {
                Some((journal, at, _)) => (
                    journal.clone(),
                    at,
                    format!("the last batch of {} is torn or damaged", journal.display()),
                ),
                None => break scan,
            },
            Err(Ok(damage)) => {
                let what = damage.to_string();
                let (journal, at) = damage.or_before.unwrap_or((damage.journal, damage.offset));
                (journal, at, what)
            }
            Err(Err(e)) => return Err(in_dir(embedded::unavailable("read the journal", e))),
        };
        let dropped =
            cut(&journal, at).map_err(|e| in_dir(embedded::unavailable("cut the journal", e)))?;
        if dropped == 0 {
            // Each cut drops bytes, so this ends; a cut that drops none
            // would repeat for ever.
            return Err(in_dir(StoreError::Unavailable(format!(
                "{what}, and cutting {} at byte {at} drops nothing",
                journal.display()
            ))));
        }
        let from = format!("{} at byte {at}", journal.display());
        cuts.push((
            rename_text(&format!("{what}; cut {from}"), work, dir),
            dropped,
        ));
    };
    // Nothing is known to be acknowledged yet; what the database holds
    // once opened is, below.
    embedded::write_acked(work, 0)?;
    let store = EmbeddedStore::open(work, StoreOptions::default()).map_err(in_dir)?;
    let checked = (|| {
        if !cuts.is_empty() {
            // No batch of the journals is kept: the tables alone hold the
            // history, and nothing says where in it the cut falls.
            let past = store.persisted_past(scan.last_seqno.unwrap_or(0));
            if let Some(space) = past {
                return Err(StoreError::Corrupt(format!(
                    "keyspace {space} already holds, in its sorted tables, writes made after \
                     the damage: what precedes it cannot be rebuilt alone; restore the data \
                     directory from a backup (docs/src/operations/storage.md)"
                )));
            }
        }
        store.inventory()
    })();
    store.close().await;
    let inventory = checked.map_err(in_dir)?;
    embedded::write_acked(work, inventory.batches)?;
    Ok((cuts, acknowledged, inventory))
}

/// Refuses a working directory inside the data directory: the tools never
/// write there, and a copy into itself would not end.
fn outside(dir: &Path, target: &Path, flag: &str) -> Result<(), StoreError> {
    let canonical = |p: &Path| {
        std::fs::canonicalize(p)
            .map_err(|e| embedded::unavailable(&format!("resolve {}", p.display()), e))
    };
    let (dir_c, target_c) = (canonical(dir)?, canonical(target)?);
    if target_c.starts_with(&dir_c) {
        return Err(StoreError::Unavailable(format!(
            "{flag} {} is inside {}: the data directory is only read",
            target.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// Syncs every file and directory under `root`, so a salvage reported
/// built survives a power loss.
fn sync_tree(root: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)?.sync_all()?;
        }
    }
    std::fs::File::open(root)?.sync_all()
}

/// Shares `troupe.lock` with nobody: a directory a server is using is not
/// read (a server holds it from before it reads anything until it stops).
/// A directory without the file is read as it is.
fn lock(dir: &Path) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, StoreError> {
    if !dir.is_dir() {
        return Err(StoreError::Unavailable(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if !READ[..2].iter().any(|name| dir.join(name).exists()) && !dir.join("troupe.redb").exists() {
        return Err(StoreError::Unavailable(format!(
            "{} holds no troupe data ({} or troupe.redb)",
            dir.display(),
            embedded::DIR
        )));
    }
    let file = match std::fs::File::open(dir.join("troupe.lock")) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(embedded::unavailable("open troupe.lock", e)),
    };
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map(Some)
        .map_err(|(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => StoreError::Unavailable(format!(
                "{} is in use by a running troupe (or another `troupe store` command): stop it \
                 first, or check a copy",
                dir.display()
            )),
            errno => embedded::unavailable("lock troupe.lock", errno),
        })
}

/// Copies what a start reads from `dir` to `to`, then puts back what an
/// earlier refused start kept aside (a torn end, sealed journals) so the
/// copy holds every byte that was written. Returns whether there was any.
fn stage(dir: &Path, to: &Path) -> Result<bool, StoreError> {
    let copied = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for name in READ {
            let from = dir.join(name);
            if from.exists() {
                copy(&from, &to.join(name))?;
            }
        }
        Ok(())
    })();
    copied.map_err(|e| embedded::unavailable(&format!("copy {}", dir.display()), e))?;
    let evidence = to.join(embedded::EVIDENCE);
    if !evidence.exists() {
        return Ok(false);
    }
    let restored = (|| -> std::io::Result<()> {
        let db = to.join(embedded::DIR);
        for entry in std::fs::read_dir(&evidence)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match name.split_once(".torn-at-") {
                Some((journal, at)) => {
                    let at: u64 = at.parse().map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("{} is not named as troupe names a torn end", path.display()),
                        )
                    })?;
                    let bytes = std::fs::read(&path)?;
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(db.join(journal))?;
                    std::os::unix::fs::FileExt::write_all_at(&file, &bytes, at)?;
                }
                None => {
                    std::fs::copy(&path, db.join(&name))?;
                }
            }
        }
        std::fs::remove_dir_all(&evidence)
    })();
    restored.map_err(|e| embedded::unavailable("put back what an earlier start kept aside", e))?;
    Ok(true)
}

/// Copies a file, or a directory and everything under it. A symbolic
/// link is refused: it is not troupe's, and could lead anywhere (a loop).
fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
    let kind = std::fs::symlink_metadata(from)?.file_type();
    if kind.is_symlink() {
        return Err(std::io::Error::other(format!(
            "{} is a symbolic link: copy the data directory without links, and check the copy",
            from.display()
        )));
    }
    if kind.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else if from.extension().is_some_and(|e| e == "jnl") {
        // A journal's preallocated zeros stay a hole in the copy.
        let bytes = std::fs::read(from)?;
        std::fs::write(to, &bytes[..journal::written(&bytes)])?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(to)?
            .set_len(bytes.len() as u64)
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

/// Drops a journal from byte `at` on, and every newer journal; returns the
/// bytes dropped (journals' written bytes, not their preallocated zeros).
fn cut(journal: &Path, at: usize) -> std::io::Result<u64> {
    let db = journal.parent().unwrap_or(Path::new("."));
    let journals = journal::journals(db)?;
    let mut dropped = 0;
    let mut after = false;
    for path in journals {
        let written = journal::written(&std::fs::read(&path)?) as u64;
        if path == journal {
            dropped += written.saturating_sub(at as u64);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(at as u64)?;
            after = true;
        } else if after {
            dropped += written;
            std::fs::remove_file(&path)?;
        }
    }
    Ok(dropped)
}

/// A store error whose message names the working copy, told in the
/// source directory's terms.
fn rename(e: StoreError, copy: &Path, dir: &Path) -> StoreError {
    // Evidence a check of the copy kept aside went with the copy.
    let kept = format!(
        " (what fjall dropped or deleted is in {})",
        copy.join(embedded::EVIDENCE).display()
    );
    let e = match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(m.replace(&kept, "")),
        e => e,
    };
    match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(rename_text(&m, copy, dir)),
        StoreError::Unavailable(m) => StoreError::Unavailable(rename_text(&m, copy, dir)),
        e => e,
    }
}

fn rename_text(text: &str, copy: &Path, dir: &Path) -> String {
    text.replace(&copy.display().to_string(), &dir.display().to_string())
}
