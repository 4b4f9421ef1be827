//! The store's instrumentation: a wrapper that times every operation and
//! counts every error into the Prometheus registry, whatever the backend,
//! and keeps the actors whose data met damage for `/readyz`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use prometheus::{HistogramVec, IntCounterVec};

use super::{Commit, Snapshot, Store, StoreError};

/// Times every operation of the store it wraps and counts its errors, by
/// backend, operation and kind of error.
pub struct InstrumentedStore {
    inner: Arc<dyn Store>,
    duration: HistogramVec,
    errors: IntCounterVec,
    /// Actors whose last operation met damaged data: one actor's damage
    /// refuses that actor, and the service goes on (ready) for the rest.
    damaged: Mutex<BTreeSet<String>>,
    /// How many `damaged` holds, read without the lock on the hot path.
    damaged_count: AtomicUsize,
}

impl InstrumentedStore {
    pub fn new(inner: Arc<dyn Store>, duration: HistogramVec, errors: IntCounterVec) -> Self {
        Self {
            inner,
            duration,
            errors,
            damaged: Mutex::new(BTreeSet::new()),
            damaged_count: AtomicUsize::new(0),
        }
    }

    /// Notes whether `actor`'s data met damage in an operation that
    /// concerned it: listed after a `Corrupt`, let go after a success (a
    /// repaired key, a record written anew).
    fn note<T>(&self, actor: &str, result: &Result<T, StoreError>) {
        let corrupt = matches!(result, Err(StoreError::Corrupt(_)));
        if !corrupt && self.damaged_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Ok(mut damaged) = self.damaged.lock() else {
            return;
        };
        if corrupt {
            damaged.insert(actor.to_owned());
        } else if result.is_ok() {
            damaged.remove(actor);
        }
        self.damaged_count.store(damaged.len(), Ordering::Relaxed);
    }

    fn observe<T>(&self, op: &str, started: Instant, result: &Result<T, StoreError>) {
        let backend = self.inner.backend();
        self.duration
            .with_label_values(&[backend, op])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            let kind = match e {
                StoreError::Conflict { .. } => "conflict",
                StoreError::Unavailable(_) => "unavailable",
                StoreError::Unknown(_) => "unknown",
                StoreError::Corrupt(_) => "corrupt",
            };
            self.errors.with_label_values(&[backend, op, kind]).inc();
        }
    }
}

#[async_trait]
impl Store for InstrumentedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn memory(&self) -> Vec<(&'static str, u64)> {
        self.inner.memory()
    }

    fn serving(&self) -> Result<(), StoreError> {
        self.inner.serving()
    }

    fn damaged(&self) -> (Vec<String>, usize) {
        match self.damaged.lock() {
            Ok(damaged) => (
                damaged
                    .iter()
                    .take(super::DAMAGED_LISTED)
                    .cloned()
                    .collect(),
                damaged.len(),
            ),
            Err(_) => (Vec::new(), 0),
        }
    }

    async fn load(&self, actor: &str) -> Result<Option<Snapshot>, StoreError> {
        let started = Instant::now();
        let result = self.inner.load(actor).await;
        self.observe("load", started, &result);
        self.note(actor, &result);
        result
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let started = Instant::now();
        let actor = commit.actor.clone();
        let result = self.inner.commit(commit).await;
        self.observe("commit", started, &result);
        self.note(&actor, &result);
        result
    }

    async fn entries(
        &self,
        actor: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let started = Instant::now();
        let result = self.inner.entries(actor, after, limit).await;
        self.observe("entries", started, &result);
        self.note(actor, &result);
        result
    }

    async fn idempotency(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let started = Instant::now();
        let result = self.inner.idempotency(actor, key).await;
        self.observe("idempotency", started, &result);
        self.note(actor, &result);
        result
    }

    async fn fact(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let started = Instant::now();
        let result = self.inner.fact(actor, key).await;
        self.observe("fact", started, &result);
        self.note(actor, &result);
        result
    }

    async fn list(
        &self,
        kind: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let started = Instant::now();
        let result = self.inner.list(kind, prefix, after, limit).await;
        self.observe("list", started, &result);
        result
    }

    async fn reindex(&self) -> Result<u64, StoreError> {
        self.inner.reindex().await
    }

    async fn pending(&self) -> Result<Vec<String>, StoreError> {
        let started = Instant::now();
        let result = self.inner.pending().await;
        self.observe("pending", started, &result);
        result
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.ping().await;
        self.observe("ping", started, &result);
        result
    }

    async fn sweep(&self) {
        self.inner.sweep().await;
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}
