//! The default store: redb, an embedded copy-on-write B-tree with ACID
//! transactions, in one file under the data directory.
//!
//! One writer thread owns every write transaction. It takes all the commits
//! queued while the previous transaction was being made durable and applies
//! them in one transaction with one fsync (group commit, as a database's
//! write-ahead log does), then resolves each commit's future. A redb commit
//! costs about 170 µs here, so this is what makes durable writes fast; and
//! the fsync never runs on an actix worker. Reads run on tokio's blocking
//! pool, concurrently with the writer (redb readers see the last commit).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use super::{Commit, Snapshot, Store, StoreError, StoreOptions};

/// `kind/id` -> version (8 bytes, big-endian) followed by the state.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// (`kind/id`, seq) -> entry.
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
/// (`kind/id`, key) -> expiry (unix seconds, 8 bytes) followed by the record.
const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency");
/// (expiry, `kind/id`, key): the sweep's index of idempotency records.
const EXPIRY: TableDefinition<(u64, &str, &str), ()> = TableDefinition::new("idempotency_expiry");
/// (`kind/id`, key) -> fact, kept without expiry.
const FACTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("facts");
/// Expired idempotency records one sweep transaction deletes at most, so a
/// sweep never holds the writer for long and never grows a transaction.
const SWEEP_CHUNK: usize = 512;
/// Under steady load, the longest a sweep in progress waits between chunks.
const SWEEP_PACE: std::time::Duration = std::time::Duration::from_millis(100);
/// `kind/id` of every actor with work pending.
const PENDING: TableDefinition<&str, ()> = TableDefinition::new("pending");

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
}

pub struct EmbeddedStore {
    /// Taken out by `close`, which releases the file for another opener.
    db: ArcSwapOption<Database>,
    writer: mpsc::Sender<Request>,
    stats: Arc<WriterStats>,
}

impl EmbeddedStore {
    /// Opens (or creates) `troupe.redb` in `dir` and starts the writer thread.
    ///
    /// # Errors
    /// When the directory or the database cannot be created or opened.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| unavailable("create data directory", e))?;
        let db = Database::create(dir.join("troupe.redb")).map_err(|e| unavailable("open", e))?;
        let txn = db.begin_write().map_err(|e| unavailable("begin", e))?;
        create_tables(&txn).map_err(|e| unavailable("create tables", e))?;
        txn.commit().map_err(|e| unavailable("commit", e))?;

        let db = Arc::new(db);
        let stats = Arc::new(WriterStats::default());
        let (writer, rx) = mpsc::channel(options.queue.max(1));
        let (thread_db, thread_stats) = (db.clone(), stats.clone());
        let retention = options.idempotency_retention.as_secs();
        std::thread::Builder::new()
            .name("troupe-store-writer".into())
            .spawn(move || {
                let closed = write_loop(
                    &thread_db,
                    rx,
                    options.max_batch.max(1),
                    retention,
                    &thread_stats,
                );
                // Release the file before telling `close` it may return.
                drop(thread_db);
                if let Some(done) = closed {
                    let _ = done.send(());
                }
            })
            .map_err(|e| unavailable("start writer", e))?;
        Ok(Self {
            db: ArcSwapOption::new(Some(db)),
            writer,
            stats,
        })
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Idempotency records held on disk, expired or not (reads filter the
    /// expired ones; this counts what the sweep has yet to delete).
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn idempotency_rows(&self) -> Result<u64, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(|e| unavailable("begin read", e))?;
            let records = txn
                .open_table(IDEMPOTENCY)
                .map_err(|e| unavailable("open idempotency", e))?;
            let index = txn
                .open_table(EXPIRY)
                .map_err(|e| unavailable("open expiry", e))?;
            let count = |n: Result<u64, redb::StorageError>| n.map_err(|e| unavailable("count", e));
            Ok(count(records.len())? + count(index.len())?)
        })
        .await
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self
            .db
            .load_full()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn load(&self, actor: &str) -> Result<Option<Snapshot>, StoreError> {
        let actor = actor.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(|e| unavailable("begin read", e))?;
            let table = txn
                .open_table(STATE)
                .map_err(|e| unavailable("open state", e))?;
            let Some(value) = table
                .get(actor.as_str())
                .map_err(|e| unavailable("read state", e))?
            else {
                return Ok(None);
            };
            let (version, state) = split_u64(value.value())?;
            Ok(Some(Snapshot {
                version,
                state: state.to_vec(),
            }))
        })
        .await
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Request::Commit(commit, tx))
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the store writer stopped".into()))?
    }

    async fn entries(
        &self,
        actor: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let actor = actor.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(|e| unavailable("begin read", e))?;
            let table = txn
                .open_table(ENTRIES)
                .map_err(|e| unavailable("open entries", e))?;
            let from = (actor.as_str(), after.saturating_add(1));
            let range = table
                .range(from..=(actor.as_str(), u64::MAX))
                .map_err(|e| unavailable("read entries", e))?;
            range
                .take(limit as usize)
                .map(|item| {
                    let (_, v) = item.map_err(|e| unavailable("read entry", e))?;
                    Ok(v.value().to_vec())
                })
                .collect()
        })
        .await
    }

    async fn idempotency(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (actor, key) = (actor.to_owned(), key.to_owned());
        self.read(move |db| {
            let txn = db.begin_read().map_err(|e| unavailable("begin read", e))?;
            let table = txn
                .open_table(IDEMPOTENCY)
                .map_err(|e| unavailable("open idempotency", e))?;
            let Some(v) = table
                .get((actor.as_str(), key.as_str()))
                .map_err(|e| unavailable("read idempotency", e))?
            else {
                return Ok(None);
            };
            let (expires, record) = split_u64(v.value())?;
            Ok((expires > unix_now()).then(|| record.to_vec()))
        })
        .await
    }

    async fn fact(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (actor, key) = (actor.to_owned(), key.to_owned());
        self.read(move |db| {
            let txn = db.begin_read().map_err(|e| unavailable("begin read", e))?;
            let table = txn
                .open_table(FACTS)
                .map_err(|e| unavailable("open facts", e))?;
            let value = table
                .get((actor.as_str(), key.as_str()))
                .map_err(|e| unavailable("read fact", e))?;
            Ok(value.map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn pending(&self) -> Result<Vec<String>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(|e| unavailable("begin read", e))?;
            let table = txn
                .open_table(PENDING)
                .map_err(|e| unavailable("open pending", e))?;
            let iter = table.iter().map_err(|e| unavailable("read pending", e))?;
            iter.map(|item| {
                let (k, _) = item.map_err(|e| unavailable("read pending", e))?;
                Ok(k.value().to_owned())
            })
            .collect()
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.is_closed() {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        self.read(|db| {
            db.begin_read()
                .map(drop)
                .map_err(|e| unavailable("begin read", e))
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
        self.db.store(None);
    }
}

/// Runs until the channel closes or a `Close` arrives; returns its sender.
fn write_loop(
    db: &Database,
    mut rx: mpsc::Receiver<Request>,
    max_batch: usize,
    retention: u64,
    stats: &WriterStats,
) -> Option<oneshot::Sender<()>> {
    let mut batch = Vec::with_capacity(max_batch);
    // A sweep in progress runs one chunk whenever no commit is waiting, and
    // at least every SWEEP_PACE under steady load, so it never starves.
    let mut sweeping = false;
    let mut last_chunk = std::time::Instant::now();
    loop {
        if sweeping && last_chunk.elapsed() >= SWEEP_PACE {
            sweeping = sweep_chunk(db);
            last_chunk = std::time::Instant::now();
        }
        let first = if sweeping {
            match rx.try_recv() {
                Ok(request) => request,
                Err(mpsc::error::TryRecvError::Empty) => {
                    sweeping = sweep_chunk(db);
                    last_chunk = std::time::Instant::now();
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
            }
        } else {
            rx.blocking_recv()?
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
            write_batch(db, commits, retention, stats);
        }
        if closing.is_some() {
            return closing;
        }
    }
}

/// One transaction, one fsync, for every commit in the batch.
fn write_batch(
    db: &Database,
    commits: Vec<(Commit, oneshot::Sender<Result<(), StoreError>>)>,
    retention: u64,
    stats: &WriterStats,
) {
    let n = commits.len();
    let result = (|| -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let txn = db
            .begin_write()
            .map_err(|e| unavailable("begin write", e))?;
        let mut outcomes = Vec::with_capacity(n);
        {
            let mut tables = Tables::open(&txn)?;
            for (commit, _) in &commits {
                outcomes.push(tables.apply(commit, retention)?);
            }
        }
        txn.commit().map_err(|e| unavailable("commit", e))?;
        Ok(outcomes)
    })();
    stats.transactions.fetch_add(1, Ordering::Relaxed);
    stats.commits.fetch_add(n as u64, Ordering::Relaxed);
    tracing::trace!(batch = n, "store commit");
    match result {
        Ok(outcomes) => {
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
}

/// The tables of one write transaction, opened once for the whole batch.
struct Tables<'txn> {
    state: redb::Table<'txn, &'static str, &'static [u8]>,
    entries: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
    idempotency: redb::Table<'txn, (&'static str, &'static str), &'static [u8]>,
    expiry: redb::Table<'txn, (u64, &'static str, &'static str), ()>,
    pending: redb::Table<'txn, &'static str, ()>,
    facts: redb::Table<'txn, (&'static str, &'static str), &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            state: txn
                .open_table(STATE)
                .map_err(|e| unavailable("open state", e))?,
            entries: txn
                .open_table(ENTRIES)
                .map_err(|e| unavailable("open entries", e))?,
            idempotency: txn
                .open_table(IDEMPOTENCY)
                .map_err(|e| unavailable("open idempotency", e))?,
            expiry: txn
                .open_table(EXPIRY)
                .map_err(|e| unavailable("open expiry", e))?,
            pending: txn
                .open_table(PENDING)
                .map_err(|e| unavailable("open pending", e))?,
            facts: txn
                .open_table(FACTS)
                .map_err(|e| unavailable("open facts", e))?,
        })
    }

    /// Applies one commit inside the shared transaction. The outer `Result`
    /// fails the whole transaction; the inner one is this commit's verdict.
    fn apply(&mut self, c: &Commit, retention: u64) -> Result<Result<(), StoreError>, StoreError> {
        let actor = c.actor.as_str();
        let found = match self
            .state
            .get(actor)
            .map_err(|e| unavailable("read state", e))?
        {
            Some(v) => split_u64(v.value())?.0,
            None => 0,
        };
        if found != c.expected_version {
            let conflict = StoreError::Conflict {
                actor: c.actor.clone(),
                expected: c.expected_version,
                found,
            };
            return Ok(Err(conflict));
        }
        if let Some(bytes) = &c.state {
            let value = [&c.version.to_be_bytes()[..], bytes].concat();
            self.state
                .insert(actor, value.as_slice())
                .map_err(|e| unavailable("write state", e))?;
            if c.pending {
                self.pending
                    .insert(actor, ())
                    .map_err(|e| unavailable("write pending", e))?;
            } else {
                self.pending
                    .remove(actor)
                    .map_err(|e| unavailable("write pending", e))?;
            }
        }
        for (seq, entry) in &c.entries {
            self.entries
                .insert((actor, *seq), entry.as_slice())
                .map_err(|e| unavailable("write entry", e))?;
        }
        for (key, value) in &c.facts {
            self.facts
                .insert((actor, key.as_str()), value.as_slice())
                .map_err(|e| unavailable("write fact", e))?;
        }
        // Whole seconds, rounded up: a record is kept at least `retention`.
        let expires = unix_now().saturating_add(retention).saturating_add(1);
        for w in &c.idempotency {
            let value = [&expires.to_be_bytes()[..], &w.value].concat();
            self.idempotency
                .insert((actor, w.key.as_str()), value.as_slice())
                .map_err(|e| unavailable("write idempotency", e))?;
            self.expiry
                .insert((expires, actor, w.key.as_str()), ())
                .map_err(|e| unavailable("write expiry", e))?;
        }
        Ok(Ok(()))
    }
}

/// One chunk of the sweep of expired idempotency records, in a
/// transaction of its own with at most [`SWEEP_CHUNK`] records: never
/// inside a user's commit, so a sweep can neither fail one nor hold the
/// writer for long. Returns whether more may be left.
fn sweep_chunk(db: &Database) -> bool {
    match sweep_expired(db) {
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
fn sweep_expired(db: &Database) -> Result<usize, StoreError> {
    let now = unix_now();
    let txn = db
        .begin_write()
        .map_err(|e| unavailable("begin sweep", e))?;
    let n = {
        let mut expiry = txn
            .open_table(EXPIRY)
            .map_err(|e| unavailable("open expiry", e))?;
        let mut idem = txn
            .open_table(IDEMPOTENCY)
            .map_err(|e| unavailable("open idempotency", e))?;
        let expired: Vec<(u64, String, String)> = expiry
            // Expired as reads see it: `expires <= now`.
            .range((0, "", "")..(now + 1, "", ""))
            .map_err(|e| unavailable("read expiry", e))?
            .take(SWEEP_CHUNK)
            .map(|item| {
                let (k, _) = item.map_err(|e| unavailable("read expiry", e))?;
                let (t, a, key) = k.value();
                Ok((t, a.to_owned(), key.to_owned()))
            })
            .collect::<Result<_, StoreError>>()?;
        for (t, actor, key) in &expired {
            expiry
                .remove((*t, actor.as_str(), key.as_str()))
                .map_err(|e| unavailable("sweep", e))?;
            // A newer record under the same key has a later expiry: keep it.
            let current = idem
                .get((actor.as_str(), key.as_str()))
                .map_err(|e| unavailable("sweep", e))?
                .map(|v| split_u64(v.value()).map(|(e, _)| e))
                .transpose()?;
            if current.is_some_and(|e| e <= now) {
                idem.remove((actor.as_str(), key.as_str()))
                    .map_err(|e| unavailable("sweep", e))?;
            }
        }
        expired.len()
    };
    if n > 0 {
        txn.commit().map_err(|e| unavailable("commit sweep", e))?;
    }
    Ok(n)
}

fn create_tables(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(STATE)?;
    txn.open_table(ENTRIES)?;
    txn.open_table(IDEMPOTENCY)?;
    txn.open_table(EXPIRY)?;
    txn.open_table(PENDING)?;
    txn.open_table(FACTS)?;
    Ok(())
}

fn split_u64(bytes: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    let (head, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| StoreError::Corrupt("value shorter than its 8-byte header".into()))?;
    Ok((u64::from_be_bytes(*head), rest))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}
