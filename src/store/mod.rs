//! Durable storage of actor state, behind one interface the runtime uses.
//!
//! The unit of writing is a [`Commit`]: one actor's new state, the journal
//! entries and idempotency records that came with it, applied atomically
//! and only if the stored version is still the one the activation loaded
//! (compare-and-set), so a stale activation can never overwrite newer state.
//! Implementations coalesce the commits of many actors into one durable
//! transaction (group commit); a commit's future resolves only once it is
//! durable.

mod embedded;
mod instrumented;
mod journal;
mod keyspaces;
mod lease;
mod migrate;
mod offline;
mod redis;

use std::time::Duration;

use async_trait::async_trait;

pub use embedded::{EmbeddedStore, Inventory};
pub use instrumented::InstrumentedStore;
pub use lease::LeaseState;
pub use offline::{salvage, verify, Salvaged, Verified};
pub use redis::{log_lease, RedisOptions, RedisStore, ServerSettings};

/// How many damaged actors `/readyz` names at most (it counts them all).
pub const DAMAGED_LISTED: usize = 100;

/// An actor's durable state and the version it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub version: u64,
    pub state: Vec<u8>,
}

/// A stored idempotency record, kept for the configured retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyWrite {
    pub key: String,
    pub value: Vec<u8>,
}

/// One actor's atomic change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commit {
    /// The actor, as `kind/id`.
    pub actor: String,
    /// The version the change was computed from; 0 for an actor never stored.
    pub expected_version: u64,
    pub version: u64,
    /// `None` when only idempotency records are written.
    pub state: Option<Vec<u8>>,
    /// Journal entries by sequence number.
    pub entries: Vec<(u64, Vec<u8>)>,
    pub idempotency: Vec<IdempotencyWrite>,
    /// Durable keyed facts (key, value), kept without expiry: what an
    /// account records about the transfer legs it applied.
    pub facts: Vec<(String, Vec<u8>)>,
    /// Whether the actor has unfinished work to resume after a restart.
    pub pending: bool,
    /// A fence: the state written back as it was read, to settle a commit
    /// of unknown outcome. A fence over an actor never stored does not
    /// make it one a listing shows: its first real commit does.
    pub fence: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The stored version is not the expected one: another activation wrote.
    #[error("version conflict on {actor}: expected {expected}, found {found}")]
    Conflict {
        actor: String,
        expected: u64,
        found: u64,
    },
    /// The store cannot be reached or refused the operation, which did
    /// not happen; retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A write was sent and no answer came back (a timeout, a connection
    /// lost, a sync that failed): it may have been applied, or may still
    /// be. The runtime settles it by fencing the actor's version.
    #[error("store outcome unknown: {0}")]
    Unknown(String),
    /// Stored bytes could not be understood.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
}

/// What the runtime needs from a store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and metrics: `embedded`, `redis`.
    fn backend(&self) -> &'static str;

    /// The actors whose last read or write met damaged data (`Corrupt`),
    /// at most [`DAMAGED_LISTED`] of them, and how many there are: what
    /// `/readyz` lists. Empty for a store that does not keep track.
    fn damaged(&self) -> (Vec<String>, usize) {
        (Vec::new(), 0)
    }

    /// Memory the store holds in this process, by part, in bytes: what
    /// `/metrics` shows as `troupe_store_memory_bytes`. Empty for stores
    /// that keep their data elsewhere.
    /// Whether this instance may serve from the store at all, checked
    /// before every message reaches an actor (what an actor holds in
    /// memory included): the Redis store serves only while it holds its
    /// prefix's lease. Cheap: no I/O.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], saying why.
    fn serving(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn memory(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot answer.
    async fn load(&self, actor: &str) -> Result<Option<Snapshot>, StoreError>;

    /// Applies the commit atomically once it is durable.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the stored version moved, and
    /// [`StoreError::Unavailable`] when the store could not take it: nothing
    /// of the commit is applied then. [`StoreError::Unknown`] when it was
    /// sent and its outcome is not known: it may land, now or later, unless
    /// a write at a later version is made first.
    async fn commit(&self, commit: Commit) -> Result<(), StoreError>;

    /// Journal entries with a sequence number above `after`, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot answer.
    async fn entries(
        &self,
        actor: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, StoreError>;

    /// An unexpired idempotency record.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot answer.
    async fn idempotency(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// The fact an actor stored under `key`, written by an earlier commit.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot answer.
    async fn fact(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Ids of the actors of `kind` the store holds state for, ascending
    /// (byte order), starting with `prefix`, after `after` (exclusive),
    /// at most `limit`: a page of a listing, whether the actors are
    /// active or passivated.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot answer.
    async fn list(
        &self,
        kind: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Indexes for listing what an earlier version stored without them
    /// (the Redis store's per-kind index; nothing for the embedded store,
    /// whose listing is a range scan). Idempotent and safe beside
    /// commits; returns how many actors it indexed.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot answer.
    async fn reindex(&self) -> Result<u64, StoreError>;

    /// Every actor whose last commit said it has work pending.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot answer.
    async fn pending(&self) -> Result<Vec<String>, StoreError>;

    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot answer.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Deletes expired idempotency records.
    async fn sweep(&self);

    /// Waits for queued commits and releases the store.
    async fn close(&self);
}

/// Settings every store implementation shares.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long idempotency records are kept.
    pub idempotency_retention: Duration,
    /// The most commits one durable transaction takes.
    pub max_batch: usize,
    /// Commits waiting for the writer before senders wait.
    pub queue: usize,
    /// The embedded store's block cache.
    pub cache_bytes: u64,
    /// The embedded store's memtable per keyspace (seven of them): what it
    /// holds in memory before writing a sorted table. Fixed when the store
    /// is created.
    pub memtable_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            idempotency_retention: Duration::from_secs(86_400),
            max_batch: 1024,
            queue: 8192,
            cache_bytes: 32 << 20,
            memtable_bytes: 8 << 20,
        }
    }
}
