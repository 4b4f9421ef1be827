//! A store whose work for one actor can be held at gates: its loads, its
//! keyed lookups (idempotency records and facts) and its commits. Holding
//! them puts an activation exactly where a test wants it: every message
//! sent meanwhile lands in one mailbox drain, a commit is in flight while
//! other actors answer, a lookup is pending while an ask comes back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;
use troupe::store::{Commit, Snapshot, Store, StoreError};

use crate::helpers::{spawn_app_layered, TestApp};

/// One actor's calls of one kind wait here until the gate opens.
struct Gate {
    actor: Mutex<Option<String>>,
    open: Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            actor: Mutex::new(None),
            open: Semaphore::new(0),
        }
    }
}

impl Gate {
    fn hold(&self, actor: &str) {
        *self.actor.lock().unwrap() = Some(actor.to_owned());
    }

    fn open(&self) {
        self.open.add_permits(1_000);
    }

    async fn pass(&self, actor: &str) {
        let held = self.actor.lock().unwrap().as_deref() == Some(actor);
        if held {
            let _ = self.open.acquire().await.map(|p| p.forget());
        }
    }
}

/// One commit: its actor, its journal entries, the state it wrote.
type Committed = (String, usize, Option<Vec<u8>>);

/// Holds loads, lookups or commits of one actor until opened; records
/// every commit; fails the next commit of one actor on demand.
pub struct GatedStore {
    inner: Arc<dyn Store>,
    loads: Gate,
    lookups: Gate,
    commits_gate: Gate,
    commits: Mutex<Vec<Committed>>,
    pub fail_next: Mutex<Option<String>>,
    /// The next commit of this actor gets no answer and never lands: its
    /// outcome is unknown to the runtime.
    pub lose_next: Mutex<Option<String>>,
    /// The next load of this actor fails (the store is unavailable).
    pub fail_next_load: Mutex<Option<String>>,
    /// Loads of each actor that went through (held or not).
    loads_done: Mutex<Vec<String>>,
}

impl GatedStore {
    pub fn hold_loads_of(&self, actor: &str) {
        self.loads.hold(actor);
    }
    pub fn open(&self) {
        self.loads.open();
    }
    /// How many loads of `actor` the store answered, failed ones included.
    pub fn loads_of(&self, actor: &str) -> usize {
        self.loads_done
            .lock()
            .unwrap()
            .iter()
            .filter(|a| *a == actor)
            .count()
    }
    pub fn hold_lookups_of(&self, actor: &str) {
        self.lookups.hold(actor);
    }
    pub fn open_lookups(&self) {
        self.lookups.open();
    }
    pub fn hold_commits_of(&self, actor: &str) {
        self.commits_gate.hold(actor);
    }
    pub fn open_commits(&self) {
        self.commits_gate.open();
    }
    pub fn commits_of(&self, actor: &str) -> Vec<usize> {
        let commits = self.commits.lock().unwrap();
        commits
            .iter()
            .filter(|(a, _, _)| a == actor)
            .map(|(_, n, _)| *n)
            .collect()
    }
    /// The states committed for `actor`, in order (commits writing none
    /// left out).
    pub fn states_of(&self, actor: &str) -> Vec<serde_json::Value> {
        let commits = self.commits.lock().unwrap();
        commits
            .iter()
            .filter(|(a, _, _)| a == actor)
            .filter_map(|(_, _, state)| serde_json::from_slice(state.as_deref()?).ok())
            .collect()
    }
}

#[async_trait]
impl Store for GatedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn load(&self, actor: &str) -> Result<Option<Snapshot>, StoreError> {
        self.loads.pass(actor).await;
        self.loads_done.lock().unwrap().push(actor.to_owned());
        let fail = {
            let mut next = self.fail_next_load.lock().unwrap();
            let hit = next.as_deref() == Some(actor);
            if hit {
                *next = None;
            }
            hit
        };
        if fail {
            return Err(StoreError::Unavailable("injected fault".into()));
        }
        self.inner.load(actor).await
    }
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let fail = {
            let mut next = self.fail_next.lock().unwrap();
            let hit = next.as_deref() == Some(commit.actor.as_str());
            if hit {
                *next = None;
            }
            hit
        };
        if fail {
            return Err(StoreError::Unavailable("injected fault".into()));
        }
        let lose = {
            let mut next = self.lose_next.lock().unwrap();
            let hit = next.as_deref() == Some(commit.actor.as_str());
            if hit {
                *next = None;
            }
            hit
        };
        if lose {
            return Err(StoreError::Unknown("injected: no answer".into()));
        }
        self.commits_gate.pass(&commit.actor).await;
        self.commits.lock().unwrap().push((
            commit.actor.clone(),
            commit.entries.len(),
            commit.state.clone(),
        ));
        self.inner.commit(commit).await
    }
    async fn entries(
        &self,
        actor: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.entries(actor, after, limit).await
    }
    async fn idempotency(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.lookups.pass(actor).await;
        self.inner.idempotency(actor, key).await
    }
    async fn fact(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.lookups.pass(actor).await;
        self.inner.fact(actor, key).await
    }
    async fn list(
        &self,
        kind: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.list(kind, prefix, after, limit).await
    }

    async fn reindex(&self) -> Result<u64, StoreError> {
        self.inner.reindex().await
    }

    async fn pending(&self) -> Result<Vec<String>, StoreError> {
        self.inner.pending().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn sweep(&self) {
        self.inner.sweep().await;
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

/// A gated store and the layer that puts it under a test server.
pub fn gated_layer() -> (
    troupe::startup::StoreLayer,
    Arc<Mutex<Option<Arc<GatedStore>>>>,
) {
    let slot = Arc::new(Mutex::new(None::<Arc<GatedStore>>));
    let keep = slot.clone();
    let layer: troupe::startup::StoreLayer = Box::new(move |inner| {
        let gated = Arc::new(GatedStore {
            inner,
            loads: Gate::default(),
            lookups: Gate::default(),
            commits_gate: Gate::default(),
            commits: Mutex::new(Vec::new()),
            fail_next: Mutex::new(None),
            lose_next: Mutex::new(None),
            fail_next_load: Mutex::new(None),
            loads_done: Mutex::new(Vec::new()),
        });
        *keep.lock().unwrap() = Some(gated.clone());
        gated
    });
    (layer, slot)
}

/// A test server on a gated store; idle actors leave memory quickly, so
/// the next message loads again.
pub async fn gated_app() -> (TestApp, Arc<GatedStore>) {
    gated_app_with(|s| s.runtime.idle_timeout_ms = 50).await
}

/// A test server on a gated store, with its settings tweaked.
pub async fn gated_app_with(
    tweak: impl FnOnce(&mut troupe::settings::Settings),
) -> (TestApp, Arc<GatedStore>) {
    let (layer, slot) = gated_layer();
    let app = spawn_app_layered(tweak, layer).await;
    let store = slot.lock().unwrap().clone().unwrap();
    (app, store)
}

/// Opens `id`, waits until it has left memory, then keeps actors in memory
/// from now on (so what a test sees next is the activation's own state).
pub async fn opened_and_passivated(app: &TestApp, id: &str) {
    app.open(id).await;
    app.wait_metric(r#"troupe_actors_live{kind="account"}"#, |n| n == 0.0)
        .await;
    let mut options = (*app.app_runtime.options()).clone();
    options.idle_timeout = Duration::from_secs(600);
    app.app_runtime.set_options(options);
}
