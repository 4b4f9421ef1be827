//! Migration of a data directory written by the redb store of earlier
//! versions (`troupe.redb`) into the fjall store, once, on start.
//!
//! The copy is built in `troupe.fjall.migrating`, made durable and marked
//! complete; then `troupe.redb` is renamed `troupe.redb.migrated` (kept for
//! the operator to delete) and the copy renamed `troupe.fjall`, each rename
//! synced. A crash at any point leaves either the redb file, and the
//! migration starts over, or a complete copy, and start-up completes its
//! rename. Nothing reads or writes the new store before both renames are
//! durable, and nothing the operator may still need is overwritten.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::embedded::{pair, sync_dir, unavailable, Engine, DIR};
use super::{StoreError, StoreOptions};

const REDB: &str = "troupe.redb";
const MIGRATED: &str = "troupe.redb.migrated";
const STAGING: &str = "troupe.fjall.migrating";
/// Written (and synced) in the staging directory once the copy is durable.
const COMPLETE: &str = "complete";
/// Records per fjall batch while copying.
const CHUNK: usize = 10_000;

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency");
const EXPIRY: TableDefinition<(u64, &str, &str), ()> = TableDefinition::new("idempotency_expiry");
const FACTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("facts");
const PENDING: TableDefinition<&str, ()> = TableDefinition::new("pending");

/// Migrates `dir/troupe.redb` when there is one.
///
/// # Errors
/// When the old file cannot be read or the copy cannot be written, and
/// when a `troupe.redb` sits next to a `troupe.fjall` (an operator's copy:
/// which one holds the data is not for the service to guess).
pub(super) fn from_redb(dir: &Path, options: &StoreOptions) -> Result<(), StoreError> {
    let (old, staging, target) = (dir.join(REDB), dir.join(STAGING), dir.join(DIR));
    if !old.exists() {
        // A crash between the two renames: finish the second.
        if staging.exists() && !target.exists() {
            if !dir.join(MIGRATED).exists() {
                return Err(StoreError::Corrupt(format!(
                    "{} holds {STAGING} but neither {REDB} nor {MIGRATED}: \
                     the data it was migrated from is missing; restore it",
                    dir.display()
                )));
            }
            if !staging.join(COMPLETE).exists() {
                return Err(StoreError::Corrupt(format!(
                    "{} holds an incomplete migration and no {REDB} to redo it from; \
                     put {MIGRATED} back as {REDB} and start again",
                    dir.display()
                )));
            }
            rename(&staging, &target, dir)?;
            tracing::info!(path = %target.display(), "finished migrating from troupe.redb");
        }
        return Ok(());
    }
    if target.exists() {
        return Err(StoreError::Corrupt(format!(
            "{} holds both {REDB} (the store of earlier versions) and {DIR}; \
             move away the one that does not hold the data",
            dir.display()
        )));
    }
    if dir.join(MIGRATED).exists() {
        return Err(StoreError::Corrupt(format!(
            "{} holds {REDB} and {MIGRATED} from an earlier migration; \
             move {MIGRATED} away (it may be the only copy of older data) and start again",
            dir.display()
        )));
    }
    known_tables(&old)?;
    if staging.exists() {
        // An earlier migration that did not finish.
        std::fs::remove_dir_all(&staging).map_err(|e| unavailable("remove staging", e))?;
    }
    tracing::info!(from = %old.display(), to = %target.display(), "migrating the data directory from redb");
    let records = copy(&old, &staging, options)?;
    let complete = staging.join(COMPLETE);
    std::fs::write(&complete, records.to_string())
        .and_then(|()| std::fs::File::open(&complete)?.sync_all())
        .map_err(|e| unavailable("mark the migration complete", e))?;
    sync_dir(&staging)?;
    rename(&old, &dir.join(MIGRATED), dir)?;
    rename(&staging, &target, dir)?;
    tracing::info!(
        records,
        kept = %dir.join(MIGRATED).display(),
        "migrated the data directory from redb; delete the old file once satisfied"
    );
    Ok(())
}

/// Refuses a redb file holding a table this version does not know: data
/// it could not carry over.
fn known_tables(old: &Path) -> Result<(), StoreError> {
    let corrupt =
        |e: redb::Error| StoreError::Corrupt(format!("{} cannot be migrated: {e}", old.display()));
    let redb = redb::Database::open(old).map_err(|e| corrupt(e.into()))?;
    let txn = redb.begin_read().map_err(|e| corrupt(e.into()))?;
    let known = [
        STATE.name(),
        ENTRIES.name(),
        IDEMPOTENCY.name(),
        EXPIRY.name(),
        FACTS.name(),
        PENDING.name(),
    ];
    for table in txn.list_tables().map_err(|e| corrupt(e.into()))? {
        if !known.contains(&table.name()) {
            return Err(StoreError::Corrupt(format!(
                "{} holds table {}, which this version does not know",
                old.display(),
                table.name()
            )));
        }
    }
    Ok(())
}

/// Copies every table, then syncs; returns how many records it copied.
fn copy(old: &Path, staging: &Path, options: &StoreOptions) -> Result<u64, StoreError> {
    let corrupt =
        |e: redb::Error| StoreError::Corrupt(format!("{} cannot be migrated: {e}", old.display()));
    let redb = redb::Database::open(old).map_err(|e| corrupt(e.into()))?;
    let txn = redb.begin_read().map_err(|e| corrupt(e.into()))?;
    let engine = Engine::open(staging, options)?;
    let mut copier = Copier {
        engine: &engine,
        batch: engine.db.batch(),
        records: 0,
    };
    // Tables older versions never created are empty.
    macro_rules! each {
        ($def:expr, |$k:ident, $v:ident| $body:block) => {
            match txn.open_table($def) {
                Ok(table) => {
                    for item in table.iter().map_err(|e| corrupt(e.into()))? {
                        let (k, v) = item.map_err(|e| corrupt(e.into()))?;
                        let ($k, $v) = (k.value(), v.value());
                        $body
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(corrupt(e.into())),
            }
        };
    }
    each!(STATE, |actor, value| {
        copier.put(&engine.state, actor.as_bytes().to_vec(), value)?;
    });
    each!(ENTRIES, |key, value| {
        let (actor, seq) = key;
        copier.put(&engine.entries, pair(actor, &seq.to_be_bytes()), value)?;
    });
    each!(IDEMPOTENCY, |key, value| {
        let (actor, key) = key;
        copier.put(&engine.idempotency, pair(actor, key.as_bytes()), value)?;
    });
    each!(EXPIRY, |key, _unit| {
        let (expires, actor, key) = key;
        let index = [&expires.to_be_bytes()[..], &pair(actor, key.as_bytes())].concat();
        copier.put(&engine.expiry, index, &[])?;
    });
    each!(FACTS, |key, value| {
        let (actor, key) = key;
        copier.put(&engine.facts, pair(actor, key.as_bytes()), value)?;
    });
    each!(PENDING, |actor, _unit| {
        copier.put(&engine.pending, actor.as_bytes().to_vec(), &[])?;
    });
    let records = copier.records;
    copier.flush()?;
    engine
        .db
        .persist(fjall::PersistMode::SyncAll)
        .map_err(|e| unavailable("sync the migrated store", e))?;
    Ok(records)
}

struct Copier<'e> {
    engine: &'e Engine,
    batch: fjall::OwnedWriteBatch,
    records: u64,
}

impl Copier<'_> {
    fn put(
        &mut self,
        space: &fjall::Keyspace,
        key: Vec<u8>,
        value: &[u8],
    ) -> Result<(), StoreError> {
        self.batch.insert(space, key, value);
        self.records += 1;
        if self.batch.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        let batch = std::mem::replace(&mut self.batch, self.engine.db.batch());
        batch
            .commit()
            .map_err(|e| unavailable("write the migrated store", e))
    }
}

/// Renames `from` to `to` and syncs their directory.
fn rename(from: &Path, to: &Path, dir: &Path) -> Result<(), StoreError> {
    std::fs::rename(from, to).map_err(|e| unavailable("rename", e))?;
    sync_dir(dir)
}
