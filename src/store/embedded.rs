//! The default store: fjall, an embedded log-structured merge tree, in
//! `troupe.fjall/` under the data directory.
//!
//! A write is an append to fjall's journal; memtables are flushed to sorted
//! tables and compacted by fjall's background threads, so a commit costs an
//! append rather than the several rewritten pages of a copy-on-write
//! B-tree (the numbers are in benches/results/).
//!
//! One writer thread makes every write. It takes all the commits queued
//! while the previous batch was being made durable and writes them as one
//! atomic fjall batch with one `fdatasync` of the journal (group commit),
//! then resolves each commit's future; the fsync never runs on an actix
//! worker. Point reads (an actor's state, an idempotency record, a fact)
//! run on the caller's thread, scans on tokio's blocking pool; both see
//! every batch written.
//!
//! Damage is never served and never erased (see `journal`): before fjall
//! opens, troupe reads every journal itself, changing nothing, and refuses
//! to start on damage anywhere but a torn last batch; fjall would cut the
//! journal there and drop every acknowledged batch after it. Each batch
//! counts itself in the `meta` keyspace, and after each fsync and its
//! replies the writer records the count in `troupe.acked` (see [`Acked`]:
//! it can only lag the journal), so a torn batch that was acknowledged is
//! told from one that was not. Once fjall has opened, every key the
//! journals wrote must read as they last wrote it: a damaged batch header
//! (which fjall's checksum does not cover) cannot reorder or hide writes.
//! Reads that meet a damaged table refuse that actor alone (`Corrupt`).
//!
//! A data directory written by the redb store of earlier versions
//! (`troupe.redb`) is migrated on start (see `migrate`).

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use fjall::{Database, Guard, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use tokio::sync::{mpsc, oneshot};

use super::journal::{self, Last};
use super::{Commit, Snapshot, Store, StoreError, StoreOptions};

/// The database's directory under the data directory.
pub(super) const DIR: &str = "troupe.fjall";
/// The count of batches acknowledged, under the data directory.
pub(super) const ACKED: &str = "troupe.acked";
/// fjall's format marker in its directory.
const VERSION_MARKER: &str = "version";
/// Where a start keeps what fjall would cut or delete, under the data
/// directory, until its checks have passed.
pub(super) const EVIDENCE: &str = "troupe.evidence";
/// What to do about damage found at start, in every refusal.
const ADVICE: &str = "nothing on disk was changed; restore the data directory from a backup, \
     or see the book's Storage chapter (docs/src/operations/storage.md): `troupe store verify` \
     and `troupe store salvage`";
/// The key of the count of batches written, in the `meta` keyspace.
pub(super) const COUNT: &[u8] = b"batches";
/// Expired idempotency records one sweep batch deletes at most, so a sweep
/// never holds the writer for long.
const SWEEP_CHUNK: usize = 512;
/// Under steady load, the longest a sweep in progress waits between chunks.
const SWEEP_PACE: std::time::Duration = std::time::Duration::from_millis(100);
/// A batch the writer has been writing for longer than this makes the store
/// not ready: fjall stalls writes while its flushes lag, and for good when
/// a flush failed.
const STUCK: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest key fjall takes (it asserts it).
const MAX_KEY: usize = u16::MAX as usize;
/// How often `troupe.acked` is synced at most (see [`Acked`]).
const ACKED_SYNC: std::time::Duration = std::time::Duration::from_secs(1);

enum Request {
    Commit(Commit, oneshot::Sender<Result<(), StoreError>>),
    /// Deletes expired idempotency records.
    Sweep,
    /// Stops the writer once everything queued before it is durable.
    Close(oneshot::Sender<()>),
}

/// Counters that show group commit at work.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub commits: AtomicU64,
    pub transactions: AtomicU64,
    /// When the batch being written began, in milliseconds since the store
    /// opened, plus one; 0 while the writer waits.
    busy_since: AtomicU64,
    /// A batch failed to be written or synced: fjall refuses every write
    /// after that (it poisons itself), until a restart.
    failed: std::sync::atomic::AtomicBool,
}

/// The database and its keyspaces. Keys that pair an actor with something
/// else start with the actor's length (see [`pair`]), so one actor's keys
/// are contiguous and never a prefix of another's.
pub(super) struct Engine {
    pub(super) db: Database,
    /// `kind/id` -> version (8 bytes, big-endian) followed by the state.
    pub(super) state: Keyspace,
    /// pair(`kind/id`, seq big-endian) -> entry.
    pub(super) entries: Keyspace,
    /// pair(`kind/id`, key) -> expiry (unix seconds, 8 bytes) followed by
    /// the record.
    pub(super) idempotency: Keyspace,
    /// expiry big-endian followed by pair(`kind/id`, key): the sweep's index.
    pub(super) expiry: Keyspace,
    /// pair(`kind/id`, key) -> fact, kept without expiry.
    pub(super) facts: Keyspace,
    /// `kind/id` of every actor with work pending -> nothing.
    pub(super) pending: Keyspace,
    /// `batches` -> how many commit batches were written (8 bytes).
    meta: Keyspace,
}

impl Engine {
    /// Every keyspace, by name.
    fn spaces(&self) -> [(&'static str, &Keyspace); 7] {
        [
            ("state", &self.state),
            ("entries", &self.entries),
            ("idempotency", &self.idempotency),
            ("idempotency_expiry", &self.expiry),
            ("facts", &self.facts),
            ("pending", &self.pending),
            ("meta", &self.meta),
        ]
    }

    /// Every actor in the `pending` keyspace.
    fn pending_actors(&self) -> Result<HashSet<String>, StoreError> {
        self.pending
            .iter()
            .map(|item| {
                let k = item.key().map_err(|e| read_failed("read pending", e))?;
                String::from_utf8(k.to_vec()).map_err(|_| {
                    StoreError::Corrupt(format!("a pending actor's name is not UTF-8; {ADVICE}"))
                })
            })
            .collect()
    }

    /// How many commit batches the journal holds.
    fn batches(&self) -> Result<u64, StoreError> {
        match self
            .meta
            .get(COUNT)
            .map_err(|e| read_failed("read meta", e))?
        {
            Some(v) => Ok(split_u64(&v)?.0),
            None => Ok(0),
        }
    }

    /// Opens (or creates) the database at `path`.
    pub(super) fn open(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let db = Database::builder(path)
            .cache_size(options.cache_bytes)
            // Every batch the writer commits is made durable by its own
            // fdatasync; nothing is left for fjall to flush on a timer.
            .manual_journal_persist(true)
            // Journal values are stored as written, so the check at start
            // (`journal`) can compare each with what fjall serves.
            .journal_compression(fjall::CompressionType::None)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => StoreError::Unavailable(format!(
                    "{} is in use by another process",
                    path.display()
                )),
                // The disk or the system (permissions, space, I/O errors).
                fjall::Error::Io(e) | fjall::Error::Storage(fjall::LsmError::Io(e))
                    if !damaged(&e) =>
                {
                    unavailable("open", e)
                }
                // A file the manifest names is gone or cut short, a bad
                // table, manifest or format marker: never start on part of
                // the data.
                e => StoreError::Corrupt(format!(
                    "{} cannot be read ({e}); {ADVICE}",
                    path.display()
                )),
            })?;
        let memtable = options.memtable_bytes;
        let space = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(memtable)
            })
            .map_err(|e| unavailable("open keyspace", e))
        };
        Ok(Self {
            state: space("state")?,
            entries: space("entries")?,
            idempotency: space("idempotency")?,
            expiry: space("idempotency_expiry")?,
            facts: space("facts")?,
            pending: space("pending")?,
            meta: space("meta")?,
            db,
        })
    }
}

/// What a data directory holds, read whole by [`EmbeddedStore::inventory`].
#[derive(Debug, Default)]
pub struct Inventory {
    /// troupe's count of commit batches written.
    pub batches: u64,
    /// Each keyspace: its name, keys and bytes (keys and values).
    pub spaces: Vec<(&'static str, u64, u64)>,
    /// Actors holding state, by kind.
    pub actors: std::collections::BTreeMap<String, u64>,
}

pub struct EmbeddedStore {
    /// Taken out by `close`, which releases the directory for another
    /// opener.
    engine: ArcSwapOption<Engine>,
    writer: mpsc::Sender<Request>,
    stats: Arc<WriterStats>,
    opened: std::time::Instant,
    /// `troupe.lock`, held from before the journals are read until
    /// `close`: a second process never reads, keeps aside or opens a
    /// directory another one serves.
    lock: std::sync::Mutex<Option<nix::fcntl::Flock<std::fs::File>>>,
}

impl EmbeddedStore {
    /// Opens (or creates) `troupe.fjall` in `dir`, migrating a `troupe.redb`
    /// found there first, and starts the writer thread.
    ///
    /// # Errors
    /// When the directory or the database cannot be created or opened, or
    /// its journal is damaged before its last batch.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| unavailable("create data directory", e))?;
        let lock = lock(dir)?;
        let db = dir.join(DIR);
        let existed = check_marker(&db)?;
        let evidence = dir.join(EVIDENCE);
        if evidence.exists() {
            return Err(StoreError::Corrupt(format!(
                "an earlier start refused this data directory and kept what fjall would \
                 have cut or deleted in {}: look there before anything else; {ADVICE}",
                evidence.display()
            )));
        }
        // Created before any database is (a migrated one included).
        let (acked, acknowledged) = Acked::open(&dir.join(ACKED), existed)?;
        super::migrate::from_redb(dir, &options)?;
        let scan = journal::scan(&db, COUNT).map_err(scan_failed)?;
        if acknowledged.is_none() && scan.counts.is_some() {
            return Err(StoreError::Corrupt(format!(
                "{ACKED} is empty but the journal holds troupe's batches: how many were \
                 acknowledged is unknown; {ADVICE}"
            )));
        }
        let acknowledged = acknowledged.unwrap_or(0);
        if let Some((_, last)) = scan.counts {
            // The newest batches are in the newest journal that holds any.
            if last < acknowledged {
                return Err(StoreError::Corrupt(format!(
                    "the journal's last whole batch is troupe's batch {last} but {ACKED} says \
                     {acknowledged} were acknowledged: the journal lost acknowledged writes{}; \
                     {ADVICE}",
                    scan.torn
                        .as_ref()
                        .map_or(String::new(), |(path, at, _)| format!(
                            " (what follows byte {at} of {} is damaged)",
                            path.display()
                        )),
                )));
            }
        }
        super::keyspaces::check(&db, ADVICE)?;
        tracing::info!(
            journals = scan.journals.len(),
            batches = scan.batches,
            bytes = scan.bytes,
            keys = scan.expected.len(),
            "journals read and checked before opening the database"
        );
        if let Some((path, at, _)) = &scan.torn {
            tracing::warn!(
                journal = %path.display(),
                offset = at,
                "the journal's last batch was torn by a crash and is dropped (it was never acknowledged)"
            );
        }
        // What fjall may cut (a torn end) or delete (a sealed journal its
        // flushes have passed) once it opens is kept aside until the
        // checks below have passed: a start they refuse loses no byte.
        keep_aside(&evidence, &scan)?;
        // fjall asserts some of what it reads: a panic there is damage it
        // met, not a reason to take the process down.
        let engine =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Engine::open(&db, &options)))
                .unwrap_or_else(|_| {
                    Err(StoreError::Corrupt(format!(
                        "{} cannot be read (fjall panicked opening it); {ADVICE}",
                        db.display()
                    )))
                })?;
        let batches = engine.batches()?;
        let pending = engine.pending_actors()?;
        if batches < acknowledged {
            return Err(StoreError::Corrupt(format!(
                "{} holds {batches} commit batches but {ACKED} says {acknowledged} were \
                 acknowledged: the journal lost acknowledged writes (what fjall dropped or \
                 deleted is in {}); {ADVICE}",
                db.display(),
                evidence.display()
            )));
        }
        if acknowledged == 0 && batches > 0 {
            // An empty troupe.acked of an earlier version: from now on it
            // holds the count.
            tracing::info!(
                batches,
                "troupe.acked held no count; it is written from now on"
            );
        }
        check_replay(&engine, &scan)
            .and_then(|()| check_oldest(&engine, &scan))
            .map_err(|e| match e {
                StoreError::Corrupt(m) => StoreError::Corrupt(format!(
                    "{m} (what fjall dropped or deleted is in {})",
                    evidence.display()
                )),
                e => e,
            })?;
        // Every check passed: what was kept aside is not needed.
        std::fs::remove_dir_all(&evidence)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| unavailable("remove what was kept aside at start", e))?;
        sync_dir(dir)?;
        let engine = Arc::new(engine);
        let stats = Arc::new(WriterStats::default());
        let opened = std::time::Instant::now();
        let (writer, rx) = mpsc::channel(options.queue.max(1));
        let (thread_engine, thread_stats) = (engine.clone(), stats.clone());
        let retention = options.idempotency_retention.as_secs();
        std::thread::Builder::new()
            .name("troupe-store-writer".into())
            .spawn(move || {
                let mut writer = Writer {
                    opened,
                    engine: &thread_engine,
                    retention,
                    stats: &thread_stats,
                    batches,
                    acked,
                    pending,
                };
                let closed = guarded(&thread_stats, || writer.run(rx, options.max_batch.max(1)));
                // Release the database before telling `close` it may return.
                drop(thread_engine);
                if let Some(done) = closed {
                    let _ = done.send(());
                }
            })
            .map_err(|e| unavailable("start writer", e))?;
        Ok(Self {
            engine: ArcSwapOption::new(Some(engine)),
            writer,
            stats,
            opened,
            lock: std::sync::Mutex::new(Some(lock)),
        })
    }

    /// Reads every key and value of every keyspace (each table block is
    /// checksummed as it is read) and checks that each decodes as troupe
    /// wrote it: what `troupe store verify` runs. Blocks the caller.
    ///
    /// # Errors
    /// `Corrupt` for the first damage met, naming its keyspace.
    pub(super) fn inventory(&self) -> Result<Inventory, StoreError> {
        let engine = self
            .engine
            .load_full()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
        let mut inventory = Inventory {
            batches: engine.batches()?,
            ..Inventory::default()
        };
        for (name, space) in engine.spaces() {
            let (mut keys, mut bytes) = (0u64, 0u64);
            for item in space.iter() {
                let (key, value) = item
                    .into_inner()
                    .map_err(|e| read_failed(&format!("read keyspace {name}"), e))?;
                let bad = |why: &str| {
                    StoreError::Corrupt(format!(
                        "keyspace {name}: {why} (key {})",
                        String::from_utf8_lossy(&key)
                    ))
                };
                let actor = match name {
                    "state" => {
                        split_u64(&value).map_err(|_| bad("a state shorter than its version"))?;
                        Some(&key[..])
                    }
                    "pending" => Some(&key[..]),
                    "entries" | "facts" => {
                        Some(split_pair(&key).ok_or_else(|| bad("a key that is not an actor's"))?)
                    }
                    "idempotency" => {
                        split_u64(&value).map_err(|_| bad("a record shorter than its expiry"))?;
                        Some(split_pair(&key).ok_or_else(|| bad("a key that is not an actor's"))?)
                    }
                    "idempotency_expiry" => {
                        let (_, rest) =
                            split_u64(&key).map_err(|_| bad("a key shorter than its expiry"))?;
                        Some(split_pair(rest).ok_or_else(|| bad("a key that is not an actor's"))?)
                    }
                    _ => None,
                };
                if let Some(actor) = actor {
                    std::str::from_utf8(actor)
                        .map_err(|_| bad("an actor's name that is not UTF-8"))?;
                }
                if name == "state" {
                    let kind = actor
                        .and_then(|a| a.split(|b| *b == b'/').next())
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default();
                    *inventory.actors.entry(kind).or_default() += 1;
                }
                keys += 1;
                bytes += (key.len() + value.len()) as u64;
            }
            inventory.spaces.push((name, keys, bytes));
        }
        Ok(inventory)
    }

    /// The first keyspace whose sorted tables hold a write numbered past
    /// `seqno`: data from after a journal's cut that the journal no longer
    /// holds.
    pub(super) fn persisted_past(&self, seqno: u64) -> Option<&'static str> {
        use fjall::AbstractTree;
        let engine = self.engine.load_full()?;
        let past = engine
            .spaces()
            .into_iter()
            .find(|(_, space)| {
                space
                    .tree
                    .get_highest_persisted_seqno()
                    .is_some_and(|s| s > seqno)
            })
            .map(|(name, _)| name);
        past
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Idempotency records held on disk, expired or not (reads filter the
    /// expired ones; this counts what the sweep has yet to delete), with
    /// their index entries.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn idempotency_rows(&self) -> Result<u64, StoreError> {
        self.read(|e| {
            let records = e.idempotency.len().map_err(|e| unavailable("count", e))?;
            let index = e.expiry.len().map_err(|e| unavailable("count", e))?;
            Ok((records + index) as u64)
        })
        .await
    }

    /// A point lookup, on the caller's thread: fjall answers it from its
    /// memtables, block cache, bloom filters and the page cache in
    /// microseconds, where a hop to the blocking pool and back costs tens
    /// of them on small VMs (three such lookups per transfer: the book's
    /// performance chapter). What it costs instead: a lookup that must read the
    /// disk (a cold key, a filter block not cached, many level-0 tables
    /// behind a lagging compaction) holds the worker for that read, and a
    /// lookup can wait for the tree's version lock while a flush or a
    /// compaction installs its result (a few fsyncs). A panic in fjall is
    /// caught here and answered as unavailable, as the pool's join error
    /// was, so it cannot take the asking actor down. Scans (entries,
    /// pending, counts) keep to the blocking pool.
    fn point<T>(&self, f: impl FnOnce(&Engine) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let engine = self
            .engine
            .load_full()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&engine))).unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "a read of the store panicked".into(),
            ))
        })
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> Result<T, StoreError> + Send + 'static,
    {
        let engine = self
            .engine
            .load_full()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    /// The block cache's fill (bounded by `store.cache_mb`) and the
    /// memtables, active and sealed (each keyspace's bounded by
    /// `store.memtable_mb`, more while flushes lag). Both are fjall's
    /// experimental statistics.
    fn memory(&self) -> Vec<(&'static str, u64)> {
        match self.engine.load().as_ref() {
            Some(e) => vec![
                ("block_cache", e.db.cache_size()),
                ("memtables", e.db.write_buffer_size()),
            ],
            None => Vec::new(),
        }
    }

    async fn load(&self, actor: &str) -> Result<Option<Snapshot>, StoreError> {
        if actor.is_empty() || actor.len() > MAX_KEY {
            return Ok(None);
        }
        self.point(|e| {
            let Some(value) = e
                .state
                .get(actor.as_bytes())
                .map_err(|e| read_failed(&format!("read {actor}"), e))?
            else {
                return Ok(None);
            };
            let (version, state) = split_u64(&value)?;
            Ok(Some(Snapshot {
                version,
                state: state.to_vec(),
            }))
        })
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Request::Commit(commit, tx))
            .await
            .map_err(|_| {
                StoreError::Unavailable(if self.stats.failed.load(Ordering::Relaxed) {
                    "a write to the store failed and it refuses writes until a restart".into()
                } else {
                    "the store is closed".into()
                })
            })?;
        rx.await
            .map_err(|_| StoreError::Unknown("the store writer stopped".into()))?
    }

    async fn entries(
        &self,
        actor: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let actor = actor.to_owned();
        self.read(move |e| {
            let from = pair(&actor, &after.saturating_add(1).to_be_bytes());
            let to = pair(&actor, &u64::MAX.to_be_bytes());
            e.entries
                .range(from..=to)
                .take(limit as usize)
                .map(|item| {
                    let (_, v) = item
                        .into_inner()
                        .map_err(|e| read_failed(&format!("read an entry of {actor}"), e))?;
                    Ok(v.to_vec())
                })
                .collect()
        })
        .await
    }

    async fn list(
        &self,
        kind: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        // A range scan of the state keyspace (`kind/id` keys, in byte
        // order): from the later of `kind/prefix` and just past
        // `kind/after`, while keys keep the prefix.
        let head = format!("{kind}/{prefix}");
        let start = match after {
            Some(after) if format!("{kind}/{after}") >= head => {
                Bound::Excluded(format!("{kind}/{after}"))
            }
            _ => Bound::Included(head.clone()),
        };
        let skip = kind.len() + 1;
        self.read(move |e| {
            e.state
                .range::<String, _>((start, Bound::Unbounded))
                .map(|item| item.key().map_err(|e| read_failed("list actors", e)))
                .take_while(|key| {
                    key.as_ref()
                        .map_or(true, |k| k.starts_with(head.as_bytes()))
                })
                .take(limit)
                .map(|key| {
                    let key = key?;
                    std::str::from_utf8(&key[skip..])
                        .map(str::to_owned)
                        .map_err(|_| StoreError::Corrupt("an actor's id is not UTF-8".into()))
                })
                .collect()
        })
        .await
    }

    async fn reindex(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn idempotency(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let k = pair(actor, key.as_bytes());
        if k.len() > MAX_KEY {
            // Never written (see `refuse_keys`); fjall would assert.
            return Ok(None);
        }
        self.point(|e| {
            let Some(v) = e
                .idempotency
                .get(&k)
                .map_err(|e| read_failed(&format!("read an idempotency record of {actor}"), e))?
            else {
                return Ok(None);
            };
            let (expires, record) = split_u64(&v)?;
            Ok((expires > unix_now()).then(|| record.to_vec()))
        })
    }

    async fn fact(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let k = pair(actor, key.as_bytes());
        if k.len() > MAX_KEY {
            return Ok(None);
        }
        self.point(|e| {
            let value = e
                .facts
                .get(&k)
                .map_err(|e| read_failed(&format!("read a fact of {actor}"), e))?;
            Ok(value.map(|v| v.to_vec()))
        })
    }

    async fn pending(&self) -> Result<Vec<String>, StoreError> {
        self.read(|e| {
            let mut actors: Vec<String> = e.pending_actors()?.into_iter().collect();
            // In key order, as the keyspace holds them.
            actors.sort_unstable();
            Ok(actors)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.is_closed() {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        let busy = self.stats.busy_since.load(Ordering::Relaxed);
        let now = busy_mark(self.opened);
        if busy != 0 && now.saturating_sub(busy) > STUCK.as_millis() as u64 {
            return Err(StoreError::Unavailable(format!(
                "the store writer has been writing one batch for {} s",
                (now - busy) / 1000
            )));
        }
        if self.stats.failed.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(
                "a write to the store failed and it refuses writes until a restart".into(),
            ));
        }
        self.read(|e| {
            e.pending
                .first_key_value()
                .map(Guard::key)
                .transpose()
                .map(drop)
                .map_err(|e| unavailable("read", e))
        })
        .await
    }

    async fn sweep(&self) {
        let _ = self.writer.send(Request::Sweep).await;
    }

    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Request::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.engine.store(None);
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }
}

/// `troupe.acked`: the count of batches acknowledged, 8 bytes big-endian,
/// then their xxh3 (8 bytes): a file damaged or cut short is told from a
/// count. (Files of 8 bytes, the count alone, were written by earlier
/// versions and are read as such.)
struct Acked {
    file: std::fs::File,
    /// When the file was last synced, if ever.
    synced: Option<std::time::Instant>,
    /// A count was written since the last sync.
    dirty: bool,
}

impl Acked {
    /// Opens the file; returns it with the count it holds. `existed`: the
    /// database was there already, so the file must be too (it is created
    /// before the database is).
    fn open(path: &Path, existed: bool) -> Result<(Self, Option<u64>), StoreError> {
        let read = |path: &Path| {
            if !std::fs::metadata(path)?.is_file() {
                return Err(std::io::Error::other("it is not a regular file"));
            }
            std::fs::read(path)
        };
        let bytes = match read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(unavailable("read troupe.acked", e)),
        };
        let count = match (bytes.as_deref(), existed) {
            (None, false) => Some(0),
            (None, true) => {
                return Err(StoreError::Corrupt(format!(
                    "{} is missing: it counts the batches the journal must hold, and \
                     without it a damaged end of the journal cannot be told from a torn \
                     write; {ADVICE}",
                    path.display()
                )))
            }
            // Earlier versions created it empty and wrote it at the first
            // batch: empty is "no count", which the caller accepts only
            // for a database that holds no batch.
            (Some([]), _) => None,
            (Some(bytes), _) => Some(Self::decode(bytes).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "{} is damaged ({} bytes that are not a count and its checksum); {ADVICE}",
                    path.display(),
                    bytes.len()
                ))
            })?),
        };
        if bytes.is_none() {
            // Created whole (written aside, synced, renamed into place)
            // before the database, so the database never exists without
            // it and a crash never leaves it empty.
            let staged = path.with_extension("acked.new");
            std::fs::write(&staged, Self::encode(0))
                .and_then(|()| std::fs::File::open(&staged)?.sync_all())
                .and_then(|()| std::fs::rename(&staged, path))
                .map_err(|e| unavailable("create troupe.acked", e))?;
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| unavailable("open troupe.acked", e))?;
        let acked = Self {
            file,
            synced: None,
            dirty: false,
        };
        Ok((acked, count))
    }

    fn encode(count: u64) -> [u8; 16] {
        let count = count.to_be_bytes();
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&count);
        bytes[8..].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(&count).to_be_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<u64> {
        match bytes.len() {
            8 => bytes.try_into().ok().map(u64::from_be_bytes),
            16 => {
                let count: [u8; 8] = bytes[..8].try_into().ok()?;
                (Self::encode(u64::from_be_bytes(count))[..] == *bytes)
                    .then(|| u64::from_be_bytes(count))
            }
            _ => None,
        }
    }

    fn write(&mut self, count: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, &Self::encode(count), 0)?;
        self.dirty = true;
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        // A failed sync is tried again a second later, not at once: a
        // disk that refuses every sync must not spin the writer.
        self.synced = Some(std::time::Instant::now());
        self.file.sync_data()?;
        self.dirty = false;
        Ok(())
    }

    /// Records `count`, after the journal holding it was synced and its
    /// commits answered; syncs the file at once if it was not synced in
    /// the last [`ACKED_SYNC`], else leaves that to [`Acked::due`], so
    /// after a power loss it lags by about that much at most (a crash of
    /// the process alone loses nothing: the kernel has the write).
    fn record(&mut self, count: u64) {
        let mut done = self.write(count);
        if done.is_ok() && self.due() == Some(std::time::Duration::ZERO) {
            done = self.sync();
        }
        if let Err(e) = done {
            tracing::warn!(error.message = %e, "recording acknowledged batches in troupe.acked failed");
        }
    }

    /// How long until an unsynced count is due to be synced; `None` when
    /// everything written is synced.
    fn due(&self) -> Option<std::time::Duration> {
        self.dirty.then(|| match self.synced {
            Some(t) => ACKED_SYNC.saturating_sub(t.elapsed()),
            None => std::time::Duration::ZERO,
        })
    }

    /// Syncs what was written if it is due.
    fn sync_if_due(&mut self) {
        if self.due() == Some(std::time::Duration::ZERO) {
            if let Err(e) = self.sync() {
                tracing::warn!(error.message = %e, "syncing troupe.acked failed");
            }
        }
    }
}

/// The writer thread's state.
struct Writer<'a> {
    opened: std::time::Instant,
    engine: &'a Engine,
    retention: u64,
    stats: &'a WriterStats,
    /// Commit batches written so far.
    batches: u64,
    acked: Acked,
    /// What the `pending` keyspace holds, which only this thread writes: a
    /// commit writes there only when it changes an actor's membership, so
    /// the many commits of actors with nothing pending write no tombstone.
    /// As large as the pending set (actors resident until their work is
    /// done).
    pending: HashSet<String>,
}

impl Writer<'_> {
    /// Runs until the channel closes or a `Close` arrives; returns its sender.
    fn run(
        &mut self,
        mut rx: mpsc::Receiver<Request>,
        max_batch: usize,
    ) -> Option<oneshot::Sender<()>> {
        let mut batch = Vec::with_capacity(max_batch);
        // A sweep in progress runs one chunk whenever no commit is waiting, and
        // at least every SWEEP_PACE under steady load, so it never starves.
        let mut sweeping = false;
        let mut last_chunk = std::time::Instant::now();
        // Wakes the writer to sync `troupe.acked` when a burst ends: after
        // the last batch of a burst, silence must not leave its count
        // unsynced (a timer needs a runtime; without one, the next batch
        // syncs it).
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .ok();
        loop {
            self.acked.sync_if_due();
            if sweeping && last_chunk.elapsed() >= SWEEP_PACE {
                sweeping = self.sweep_chunk();
                last_chunk = std::time::Instant::now();
            }
            let first = if sweeping {
                match rx.try_recv() {
                    Ok(request) => request,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        sweeping = self.sweep_chunk();
                        last_chunk = std::time::Instant::now();
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => return None,
                }
            } else {
                match (self.acked.due(), &timer) {
                    (Some(wait), Some(timer)) => {
                        match timer.block_on(async { tokio::time::timeout(wait, rx.recv()).await })
                        {
                            Ok(request) => request?,
                            // Due: synced at the top of the loop.
                            Err(_) => continue,
                        }
                    }
                    _ => rx.blocking_recv()?,
                }
            };
            batch.push(first);
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let mut closing = None;
            let mut commits = Vec::with_capacity(batch.len());
            for request in batch.drain(..) {
                match request {
                    Request::Commit(commit, reply) => commits.push((commit, reply)),
                    Request::Sweep => sweeping = true,
                    Request::Close(done) => closing = Some(done),
                }
            }
            if !commits.is_empty() {
                self.write_batch(commits);
            }
            if closing.is_some() {
                // What was acknowledged last survives a power loss too.
                if let Err(e) = self.acked.sync() {
                    tracing::warn!(error.message = %e, "syncing troupe.acked failed");
                }
                return closing;
            }
        }
    }

    /// One chunk of the sweep, marked busy like a batch (a write stall
    /// inside it holds every commit behind it).
    fn sweep_chunk(&self) -> bool {
        self.stats
            .busy_since
            .store(busy_mark(self.opened), Ordering::Relaxed);
        let more = sweep_chunk(self.engine);
        self.stats.busy_since.store(0, Ordering::Relaxed);
        more
    }

    /// One atomic batch, one fdatasync, for every commit in the batch.
    fn write_batch(&mut self, commits: Vec<(Commit, oneshot::Sender<Result<(), StoreError>>)>) {
        let (engine, stats) = (self.engine, self.stats);
        stats
            .busy_since
            .store(busy_mark(self.opened), Ordering::Relaxed);
        let n = commits.len();
        let count = self.batches + 1;
        // Whole seconds, rounded up: a record is kept at least `retention`.
        let expires = unix_now().saturating_add(self.retention).saturating_add(1);
        type Outcomes = (Vec<Result<(), StoreError>>, Vec<(String, bool)>);
        let result = (|| -> Result<Outcomes, StoreError> {
            let mut batch = engine.db.batch().durability(Some(PersistMode::SyncData));
            let mut written = Written {
                versions: HashMap::new(),
                pending: HashMap::new(),
                durable: &self.pending,
            };
            let mut outcomes = Vec::with_capacity(n);
            for (commit, _) in &commits {
                // A commit whose stored state cannot be read fails alone,
                // before anything of it joins the batch.
                let outcome = apply(engine, &mut batch, &mut written, commit, expires);
                outcomes.push(outcome.unwrap_or_else(Err));
            }
            batch.insert(&engine.meta, COUNT, &count.to_be_bytes()[..]);
            // fjall refuses every write once one failed (it poisons
            // itself): that batch was not written. Any other failure came
            // while writing or syncing the journal: it may be there.
            batch.commit().map_err(|e| match e {
                fjall::Error::Poisoned => StoreError::Unavailable(
                    "a write to the store failed and it refuses writes until a restart".into(),
                ),
                e => StoreError::Unknown(format!("commit: {e}")),
            })?;
            let changed: Vec<(String, bool)> = written
                .pending
                .into_iter()
                .map(|(actor, pending)| (actor.to_owned(), pending))
                .collect();
            Ok((outcomes, changed))
        })();
        let durable = result.is_ok();
        if !durable {
            stats.failed.store(true, Ordering::Relaxed);
        }
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats.commits.fetch_add(n as u64, Ordering::Relaxed);
        tracing::trace!(batch = n, "store commit");
        match result {
            Ok((outcomes, changed)) => {
                for (actor, pending) in changed {
                    if pending {
                        self.pending.insert(actor);
                    } else {
                        self.pending.remove(&actor);
                    }
                }
                for ((_, reply), outcome) in commits.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error.message = %e, batch = n, "store transaction failed");
                for (_, reply) in commits {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        if durable {
            self.batches = count;
            self.acked.record(count);
        }
        stats.busy_since.store(0, Ordering::Relaxed);
    }
}

/// What a batch being built has written so far, which reads of the
/// keyspaces do not see yet.
struct Written<'c> {
    versions: HashMap<&'c str, u64>,
    /// Membership of the pending set changed by this batch.
    pending: HashMap<&'c str, bool>,
    /// Membership as durable before this batch.
    durable: &'c HashSet<String>,
}

impl Written<'_> {
    fn is_pending(&self, actor: &str) -> bool {
        match self.pending.get(actor) {
            Some(pending) => *pending,
            None => self.durable.contains(actor),
        }
    }
}

/// Adds one commit to the shared batch. The outer `Result` fails the whole
/// batch; the inner one is this commit's verdict.
/// fjall takes keys of 1 to 65,535 bytes and asserts it (a panic in the
/// writer): a commit whose keys it would refuse fails alone, before any of
/// it joins the batch. The API's ids are far shorter; this guards the
/// store's own interface.
fn refuse_keys(c: &Commit) -> Option<StoreError> {
    const MAX: usize = MAX_KEY;
    // The longest key a commit makes: an idempotency record's index entry
    // (its expiry, then the actor's length, the actor and the key).
    let pair = |tail: usize| 4 + c.actor.len() + tail;
    let longest = c
        .idempotency
        .iter()
        .map(|w| 8 + pair(w.key.len()))
        .chain(c.facts.iter().map(|(k, _)| pair(k.len())))
        .chain([pair(8), c.actor.len()])
        .max()
        .unwrap_or(0);
    (c.actor.is_empty() || longest > MAX).then(|| {
        StoreError::Unavailable(format!(
            "a commit of {:?}... makes a key of {longest} bytes: the embedded store takes \
             1 to {MAX}; nothing of it was written",
            c.actor.chars().take(40).collect::<String>()
        ))
    })
}

fn apply<'c>(
    engine: &Engine,
    batch: &mut OwnedWriteBatch,
    written: &mut Written<'c>,
    c: &'c Commit,
    expires: u64,
) -> Result<Result<(), StoreError>, StoreError> {
    let actor = c.actor.as_str();
    if let Some(refused) = refuse_keys(c) {
        return Ok(Err(refused));
    }
    let found = match written.versions.get(actor) {
        Some(version) => *version,
        None => match engine
            .state
            .get(actor.as_bytes())
            .map_err(|e| read_failed(&format!("read {actor}"), e))?
        {
            Some(v) => split_u64(&v)?.0,
            None => 0,
        },
    };
    if found != c.expected_version {
        return Ok(Err(StoreError::Conflict {
            actor: c.actor.clone(),
            expected: c.expected_version,
            found,
        }));
    }
    if let Some(bytes) = &c.state {
        let value = [&c.version.to_be_bytes()[..], bytes].concat();
        batch.insert(&engine.state, actor.as_bytes(), value);
        if c.pending != written.is_pending(actor) {
            if c.pending {
                batch.insert(&engine.pending, actor.as_bytes(), &[][..]);
            } else {
                batch.remove(&engine.pending, actor.as_bytes());
            }
            written.pending.insert(actor, c.pending);
        }
        written.versions.insert(actor, c.version);
    }
    for (seq, entry) in &c.entries {
        batch.insert(
            &engine.entries,
            pair(actor, &seq.to_be_bytes()),
            entry.as_slice(),
        );
    }
    for (key, value) in &c.facts {
        batch.insert(&engine.facts, pair(actor, key.as_bytes()), value.as_slice());
    }
    for w in &c.idempotency {
        let key = pair(actor, w.key.as_bytes());
        let value = [&expires.to_be_bytes()[..], &w.value].concat();
        batch.insert(
            &engine.expiry,
            [&expires.to_be_bytes()[..], &key].concat(),
            &[][..],
        );
        batch.insert(&engine.idempotency, key, value);
    }
    Ok(Ok(()))
}

/// One chunk of the sweep of expired idempotency records, in a batch of
/// its own with at most [`SWEEP_CHUNK`] records: never inside a user's
/// commit, so a sweep can neither fail one nor hold the writer for long.
/// Returns whether more may be left.
fn sweep_chunk(engine: &Engine) -> bool {
    match sweep_expired(engine) {
        Ok(n) => {
            if n > 0 {
                tracing::debug!(removed = n, "swept expired idempotency records");
            }
            n == SWEEP_CHUNK
        }
        Err(e) => {
            tracing::warn!(error.message = %e, "sweeping expired idempotency records failed; the next sweep retries");
            false
        }
    }
}

/// Removes up to [`SWEEP_CHUNK`] expired records; returns how many.
///
/// The deletions are synced (see the batch's comment); a chunk costs one
/// fdatasync, at most every 100 ms under load.
fn sweep_expired(engine: &Engine) -> Result<usize, StoreError> {
    let now = unix_now();
    // Expired as reads see it: `expires <= now`.
    let end = now.saturating_add(1).to_be_bytes();
    let expired: Vec<fjall::UserKey> = engine
        .expiry
        .range(..&end[..])
        .take(SWEEP_CHUNK)
        .map(|item| item.key().map_err(|e| unavailable("read expiry", e)))
        .collect::<Result<_, _>>()?;
    // Synced like a commit: at most one batch of the journal (the one
    // being written) is ever not durable, so a power loss tears only the
    // end, never a batch with another after it.
    let mut batch = engine.db.batch().durability(Some(PersistMode::SyncData));
    for index_key in &expired {
        batch.remove(&engine.expiry, index_key.clone());
        let Some(record_key) = index_key.get(8..) else {
            continue;
        };
        // A newer record under the same key has a later expiry: keep it.
        let current = engine
            .idempotency
            .get(record_key)
            .map_err(|e| unavailable("sweep", e))?
            .map(|v| split_u64(&v).map(|(e, _)| e))
            .transpose()?;
        if current.is_some_and(|e| e <= now) {
            batch.remove(&engine.idempotency, record_key);
        }
    }
    let n = expired.len();
    batch.commit().map_err(|e| unavailable("commit sweep", e))?;
    Ok(n)
}

/// A key pairing an actor with `tail`: the actor's length (4 bytes,
/// big-endian), the actor, then `tail`.
pub(super) fn pair(actor: &str, tail: &[u8]) -> Vec<u8> {
    let len = u32::try_from(actor.len()).unwrap_or(u32::MAX);
    let mut key = Vec::with_capacity(4 + actor.len() + tail.len());
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(actor.as_bytes());
    key.extend_from_slice(tail);
    key
}

/// The actor of a key made by [`pair`].
fn split_pair(key: &[u8]) -> Option<&[u8]> {
    let (len, rest) = key.split_first_chunk::<4>()?;
    rest.get(..u32::from_be_bytes(*len) as usize)
}

pub(super) fn split_u64(bytes: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    let (head, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| StoreError::Corrupt("value shorter than its 8-byte header".into()))?;
    Ok((u64::from_be_bytes(*head), rest))
}

/// Now as `busy_since` counts it: milliseconds since `opened`, plus one
/// (0 means idle).
fn busy_mark(opened: std::time::Instant) -> u64 {
    u64::try_from(opened.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Takes `troupe.lock` in the data directory (`flock`, released when the
/// process ends however it ends), or says that another process holds it.
fn lock(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, StoreError> {
    let path = dir.join("troupe.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| unavailable("open troupe.lock", e))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => {
                StoreError::Unavailable(format!("{} is in use by another process", dir.display()))
            }
            errno => unavailable("lock troupe.lock", errno),
        },
    )
}

/// Whether fjall's database already exists in `db`; refuses one whose
/// format marker is gone (fjall would take the directory for a new one and
/// fail with "File exists").
fn check_marker(db: &Path) -> Result<bool, StoreError> {
    if db.join(VERSION_MARKER).exists() {
        return Ok(true);
    }
    let held = match std::fs::read_dir(db) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(unavailable("read the database directory", e)),
    };
    if held {
        return Err(StoreError::Corrupt(format!(
            "{} holds files but not its format marker ({VERSION_MARKER}): it was damaged or \
             only partly copied; {ADVICE}",
            db.display()
        )));
    }
    Ok(false)
}

/// Every key the journals wrote must read as they last wrote it: fjall's
/// checksum does not cover a batch's header, and a damaged sequence
/// number would have replayed the batch out of order (or skipped it as
/// already flushed) without a word.
fn check_replay(engine: &Engine, scan: &journal::Scan) -> Result<(), StoreError> {
    let spaces = engine.spaces();
    for ((id, key), last) in &scan.expected {
        let Some((name, space)) = spaces.iter().find(|(_, s)| s.id() == *id) else {
            if *id == 0 {
                // fjall's own keyspace of keyspaces.
                continue;
            }
            return Err(StoreError::Corrupt(format!(
                "the journal wrote to keyspace {id}, which the database no longer has (a \
                 keyspace was lost and started anew); {ADVICE}"
            )));
        };
        let found = space
            .get(key)
            .map_err(|e| read_failed("check the journal's replay", e))?;
        let same = match (last, &found) {
            (Last::Value(hash), Some(v)) => xxhash_rust::xxh3::xxh3_64(v) == *hash,
            (Last::Removed, None) => true,
            _ => false,
        };
        if !same {
            return Err(StoreError::Corrupt(format!(
                "after replaying its journal, the database does not hold what the journal \
                 last wrote for a key in {name} ({}): a batch's header is damaged (its \
                 writes were replayed out of order or skipped); {ADVICE}",
                String::from_utf8_lossy(key)
            )));
        }
    }
    Ok(())
}

/// The oldest journal must take up where the tables end: every batch
/// writes troupe's count in `meta`, so while `meta` has not been flushed
/// past the first batch the journals hold, its tables must end at the
/// count just before that batch's. A journal deleted or lost before its
/// batches reached the tables leaves a gap (once `meta` itself was
/// flushed past it, the gap is not seen here).
fn check_oldest(engine: &Engine, scan: &journal::Scan) -> Result<(), StoreError> {
    use fjall::AbstractTree;
    let (Some((first, _)), Some(seqno)) = (scan.counts, scan.first_count_seqno) else {
        return Ok(());
    };
    let tree = &engine.meta.tree;
    if tree
        .get_highest_persisted_seqno()
        .is_some_and(|p| p >= seqno)
    {
        return Ok(());
    }
    // What `meta` held just before that batch: its tables alone.
    let flushed = match tree
        .get(COUNT, seqno)
        .map_err(|e| read_failed("read meta", e.into()))?
    {
        Some(v) => split_u64(&v)?.0,
        None => 0,
    };
    if flushed.checked_add(1) != Some(first) {
        let why = if flushed < first {
            "a journal that held the batches between is missing"
        } else {
            "the journals and the tables disagree (one of them is damaged)"
        };
        return Err(StoreError::Corrupt(format!(
            "the oldest journal starts at troupe's batch {first}, but the tables end at its \
             batch {flushed}: {why}; {ADVICE}"
        )));
    }
    Ok(())
}

/// A failed read: damaged bytes (a table block whose checksum does not
/// match, an encoding that does not decode) are `Corrupt`, and refuse
/// what depends on them; anything else is the disk or the system.
fn read_failed(what: &str, e: fjall::Error) -> StoreError {
    match e {
        fjall::Error::Io(e) | fjall::Error::Storage(fjall::LsmError::Io(e)) if !damaged(&e) => {
            unavailable(what, e)
        }
        fjall::Error::Poisoned => unavailable(what, e),
        e => StoreError::Corrupt(format!("{what}: {e}")),
    }
}

/// Keeps in `evidence` what fjall may remove once it opens: the bytes of
/// a torn end (copied: fjall truncates that file) and every sealed journal
/// (hard links: fjall deletes them whole once flushed, and never rewrites
/// them). Nothing is kept when there is nothing to keep.
fn keep_aside(evidence: &Path, scan: &journal::Scan) -> Result<(), StoreError> {
    let sealed = scan.journals.split_last().map_or(&[][..], |(_, s)| s);
    if scan.torn.is_none() && sealed.is_empty() {
        return Ok(());
    }
    let kept = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(evidence)?;
        for journal in sealed {
            if let Some(name) = journal.file_name() {
                std::fs::hard_link(journal, evidence.join(name))?;
            }
        }
        if let Some((journal, at, bytes)) = &scan.torn {
            let name = journal
                .file_name()
                .map_or_else(|| "journal".into(), |n| n.to_string_lossy().into_owned());
            let path = evidence.join(format!("{name}.torn-at-{at}"));
            std::fs::write(&path, bytes)?;
            std::fs::File::open(&path)?.sync_all()?;
        }
        std::fs::File::open(evidence)?.sync_all()
    })();
    kept.map_err(|e| unavailable("keep the journal's evidence aside", e))?;
    if let Some(dir) = evidence.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// A journal scan that failed, as the store tells it.
pub(super) fn scan_failed(e: Result<journal::Damage, std::io::Error>) -> StoreError {
    match e {
        Ok(damage) => StoreError::Corrupt(format!("{damage}; {ADVICE}")),
        Err(e) => unavailable("read the journal", e),
    }
}

/// The count `troupe.acked` in `dir` holds; `None` when it is missing or
/// empty (as an earlier version left it).
///
/// # Errors
/// `Corrupt` when it holds something else than a count and its checksum.
pub(super) fn acked_count(dir: &Path) -> Result<Option<u64>, StoreError> {
    let path = dir.join(ACKED);
    match std::fs::read(&path) {
        Ok(bytes) if bytes.is_empty() => Ok(None),
        Ok(bytes) => Acked::decode(&bytes).map(Some).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{} is damaged ({} bytes that are not a count and its checksum); {ADVICE}",
                path.display(),
                bytes.len()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(unavailable("read troupe.acked", e)),
    }
}

/// Writes `count` to `troupe.acked` in `dir` whole: aside, synced, renamed
/// into place, the directory synced.
///
/// # Errors
/// When the file cannot be written.
pub(super) fn write_acked(dir: &Path, count: u64) -> Result<(), StoreError> {
    let path = dir.join(ACKED);
    let staged = path.with_extension("acked.new");
    std::fs::write(&staged, Acked::encode(count))
        .and_then(|()| std::fs::File::open(&staged)?.sync_all())
        .and_then(|()| std::fs::rename(&staged, &path))
        .map_err(|e| unavailable("write troupe.acked", e))?;
    sync_dir(dir)
}

/// Whether an I/O error inside fjall's directory says its files are
/// damaged (cut short, undecodable, or a file its manifest names gone)
/// rather than that the disk or the system failed.
fn damaged(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::NotFound
            // A read at an offset or of a length taken from damaged bytes.
            | std::io::ErrorKind::InvalidInput
    )
}

/// Runs the writer's loop. A panic in it (fjall asserts what it is given
/// and what it reads) ends the writer with the store marked failed: not
/// ready, every later write refused, until a restart recovers from the
/// journal. The commits it held are told their outcome is unknown (their
/// replies are dropped), which the runtime settles by fencing.
fn guarded<T>(stats: &WriterStats, run: impl FnOnce() -> Option<T>) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|panic| {
        stats.failed.store(true, Ordering::Relaxed);
        let cause = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(
            cause,
            "the store's writer panicked: writes are refused until a restart"
        );
        None
    })
}

/// Syncs a directory, so the entries created or renamed in it last.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| unavailable("sync the data directory", e))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_writer_leaves_the_store_failed() {
        let stats = WriterStats::default();
        assert_eq!(guarded(&stats, || Some(1)), Some(1));
        assert!(!stats.failed.load(Ordering::Relaxed));
        let out: Option<()> = guarded(&stats, || panic!("an assertion in fjall"));
        assert_eq!(out, None);
        assert!(stats.failed.load(Ordering::Relaxed));
    }

    #[test]
    fn keys_fjall_would_assert_on_are_refused() {
        let ok = Commit {
            actor: "account/a".into(),
            ..Commit::default()
        };
        assert_eq!(refuse_keys(&ok), None);
        let empty = Commit::default();
        assert!(refuse_keys(&empty).is_some());
        let long = Commit {
            actor: "a".repeat(65_535),
            ..Commit::default()
        };
        assert!(
            refuse_keys(&long).is_some(),
            "an entry's key is longer still"
        );
        // The longest key that fits, as an idempotency index entry.
        let key = |n: usize| Commit {
            actor: "account/a".into(),
            idempotency: vec![super::super::IdempotencyWrite {
                key: "k".repeat(n),
                value: Vec::new(),
            }],
            ..Commit::default()
        };
        assert_eq!(refuse_keys(&key(65_535 - 8 - 4 - 9)), None);
        assert!(refuse_keys(&key(65_535 - 8 - 4 - 9 + 1)).is_some());
    }
}
