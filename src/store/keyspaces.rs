//! fjall's keyspace directories, checked before fjall opens them. Each
//! keyspace (`troupe.fjall/keyspaces/N/`) holds a `current` marker, the
//! manifest it names (`vM`: the keyspace's tables) and its tables. lsm-tree
//! reads some of their bytes before it checks them and asserts what it
//! read, or allocates as much as a damaged count says: a flipped bit there
//! aborts the process, where troupe must refuse with a message. So the
//! checksums lsm-tree writes are compared here first.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::embedded::unavailable;
use super::StoreError;

/// The end of every sfa archive (tables, manifests): `SFA!`, its version
/// (1), its checksum's type (0, xxh3), the xxh3-128 of its table of
/// contents, where that starts and how long it is.
const TRAILER: usize = 4 + 1 + 1 + 16 + 8 + 8;

/// Checks every keyspace under `db`; `advice` ends each refusal.
///
/// # Errors
/// `Corrupt` naming the first damage found; `Unavailable` when a file
/// cannot be read.
pub(super) fn check(db: &Path, advice: &str) -> Result<(), StoreError> {
    let spaces = match std::fs::read_dir(db.join("keyspaces")) {
        Ok(spaces) => spaces,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(unavailable("read the keyspaces", e)),
    };
    for space in spaces {
        let space = space
            .map_err(|e| unavailable("read the keyspaces", e))?
            .path();
        if space.is_dir() && !unborn(&space)? {
            let refuse =
                |why: String| StoreError::Corrupt(format!("{} {why}; {advice}", space.display()));
            let tables = check_manifest(&space, refuse)?;
            check_tables(&space, &tables, refuse)?;
        }
    }
    Ok(())
}

/// A keyspace whose creation a crash cut short: lsm-tree makes the
/// directory and its `tables/`, then its first manifest, then `current`,
/// and fjall deletes a keyspace without `current` at start. With no table
/// nothing is lost; what the journals wrote to it is checked after
/// (`check_replay`: a write to a keyspace that is gone is refused).
fn unborn(space: &Path) -> Result<bool, StoreError> {
    let read = |dir: &Path| match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    };
    // It may hold its first manifest (`v0`) or the temporary file
    // `current` is written through: no table, no `current`.
    let tables = read(&space.join("tables")).map_err(|e| unavailable("read a keyspace", e))?;
    Ok(tables.is_empty() && !space.join("current").exists())
}

/// A keyspace's `current` marker names its manifest and holds that file's
/// xxh3-128, which lsm-tree writes and does not compare (it asserts some
/// of the manifest's fields instead). A keyspace without the marker is
/// refused too: fjall would delete it, tables and all, and start it empty.
/// Returns the tables the manifest lists.
fn check_manifest(
    space: &Path,
    refuse: impl Fn(String) -> StoreError,
) -> Result<HashSet<u64>, StoreError> {
    let current = match std::fs::read(space.join("current")) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refuse(
                "has no `current` marker: fjall would delete it, tables and all, and start it \
                 empty"
                    .into(),
            ))
        }
        Err(e) => return Err(unavailable("read a keyspace's `current` marker", e)),
    };
    // The manifest's number (u64), its xxh3-128 (u128), the hash's type (0).
    let (Ok(id), Ok(sum), [0]) = (
        current
            .get(..8)
            .unwrap_or_default()
            .try_into()
            .map(u64::from_le_bytes),
        current
            .get(8..24)
            .unwrap_or_default()
            .try_into()
            .map(u128::from_le_bytes),
        current.get(24..).unwrap_or_default(),
    ) else {
        return Err(refuse(format!(
            "has a damaged `current` marker ({} bytes, not the 25 fjall writes)",
            current.len()
        )));
    };
    let bytes = match std::fs::read(space.join(format!("v{id}"))) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refuse(format!(
                "has no manifest v{id}, which its `current` marker names (the marker or the \
                 directory is damaged)"
            )))
        }
        Err(e) => return Err(unavailable("read a keyspace's manifest", e)),
    };
    if xxhash_rust::xxh3::xxh3_128(&bytes) != sum {
        return Err(refuse(format!(
            "has a damaged manifest: v{id} does not match the checksum its `current` marker \
             holds"
        )));
    }
    listed(&bytes).ok_or_else(|| {
        refuse(format!(
            "has a manifest v{id} whose list of tables cannot be read, though its checksum \
             matches (written by another version of fjall?)"
        ))
    })
}

/// The tables a manifest lists, from its `tables` section: levels (u8),
/// then per level its runs (u8), per run its tables (u32), each table its
/// id (u64), checksum type (u8), checksum (u128) and seqno (u64), all
/// little-endian (lsm-tree's `version::recovery`).
fn listed(manifest: &[u8]) -> Option<HashSet<u64>> {
    let reader = sfa::Reader::from_reader(&mut std::io::Cursor::new(manifest)).ok()?;
    let section = reader.toc().section(b"tables")?;
    let from = usize::try_from(section.pos()).ok()?;
    let to = from.checked_add(usize::try_from(section.len()).ok()?)?;
    let mut bytes = manifest.get(from..to)?;
    let mut take = |n: usize| {
        let (head, rest) = bytes.split_at_checked(n)?;
        bytes = rest;
        Some(head)
    };
    let mut ids = HashSet::new();
    let levels = take(1)?[0];
    for _ in 0..levels {
        let runs = take(1)?[0];
        for _ in 0..runs {
            let tables = u32::from_le_bytes(take(4)?.try_into().ok()?);
            for _ in 0..tables {
                ids.insert(u64::from_le_bytes(take(8)?.try_into().ok()?));
                take(1 + 16 + 8)?;
            }
        }
    }
    Some(ids)
}

/// Each table's trailer and table of contents: lsm-tree reserves memory
/// for as many sections as the table of contents says before it checks
/// that table's checksum (a flipped bit in the count asked for 40 GB and
/// aborted). Only these bytes are read: the blocks carry their own
/// checksums, checked where they are read.
///
/// Only the tables the manifest lists: a table a crash left half written
/// (a flush or a compaction cut short) is not listed, and fjall deletes it.
fn check_tables(
    space: &Path,
    tables: &HashSet<u64>,
    refuse: impl Fn(String) -> StoreError,
) -> Result<(), StoreError> {
    let mut ids: Vec<&u64> = tables.iter().collect();
    ids.sort_unstable();
    for id in ids {
        let path = space.join("tables").join(id.to_string());
        match archive(&path) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(refuse(format!("has a damaged table {id}: {why}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(refuse(format!(
                    "has lost table {id}, which its manifest lists"
                )))
            }
            Err(e) => return Err(unavailable("read a table", e)),
        }
    }
    Ok(())
}

/// Whether the sfa archive at `path` ends in a trailer whose table of
/// contents matches its checksum: `Ok(Err(why))` when not.
fn archive(path: &Path) -> std::io::Result<Result<(), String>> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let Some(at) = len.checked_sub(TRAILER as u64) else {
        return Ok(Err(format!("{len} bytes, shorter than its trailer")));
    };
    let mut trailer = [0u8; TRAILER];
    file.read_exact_at(&mut trailer, at)?;
    let (head, rest) = trailer.split_at(6);
    if head != b"SFA!\x01\x00" {
        return Ok(Err("its trailer's header is not sfa's".into()));
    }
    let field = |from: usize, to: usize| rest.get(from..to).unwrap_or_default();
    let sum = field(0, 16).try_into().map(u128::from_le_bytes);
    let pos = field(16, 24).try_into().map(u64::from_le_bytes);
    let toc_len = field(24, 32).try_into().map(u64::from_le_bytes);
    let (Ok(sum), Ok(pos), Ok(toc_len)) = (sum, pos, toc_len) else {
        return Ok(Err("its trailer cannot be read".into()));
    };
    // The table of contents ends where the trailer starts.
    if pos.checked_add(toc_len) != Some(at) {
        return Ok(Err(format!(
            "its trailer places the table of contents at {pos}..+{toc_len}, not before the \
             trailer at {at}"
        )));
    }
    let mut toc = vec![
        0u8;
        usize::try_from(toc_len)
            .unwrap_or(usize::MAX)
            .min(at as usize)
    ];
    file.read_exact_at(&mut toc, pos)?;
    if xxhash_rust::xxh3::xxh3_128(&toc) != sum {
        return Ok(Err(
            "its table of contents does not match its checksum".into()
        ));
    }
    Ok(Ok(()))
}
