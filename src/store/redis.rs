//! The Redis store, through a deadpool-redis connection pool. One
//! instance serves a prefix at a time (`super::lease`).
//!
//! Layout (prefix `troupe` by default; the braces mark one actor's keys).
//! One primary, not Redis Cluster: a commit also writes the pending set
//! and its kind's index, outside the actor's slot.
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `troupe:{kind/id}:state` | hash | `v` = version, `s` = JSON state, `u` = 1 while only a fence wrote it (not listed) |
//! | `troupe:{kind/id}:entries` | sorted set | score = seq, member = JSON entry |
//! | `troupe:{kind/id}:idem:{key}` | string, `EX` retention | JSON `{fingerprint, outcome}` |
//! | `troupe:{kind/id}:facts` | hash | field = fact key, value = JSON fact; never expires |
//! | `troupe:pending` | set | `kind/id` of actors with unfinished work |
//! | `troupe:actors:<kind>` | sorted set | every id of the kind with state, all scores 0 (a lexicographic index for listing) |
//! | `troupe:actors:indexed` | string | set once every actor stored before the index existed is in it |
//! | `troupe:instance` | string, `PX` lease | the id of the instance serving the prefix |
//! | `troupe:instance:epoch` | string | counts the lease's acquisitions |
//!
//! A commit is one Lua script (atomic, whatever the actor's batch holds):
//! it checks the version, then writes the state, the entries, the
//! idempotency records and the pending flag, or nothing. A command that
//! times out may still have been applied; the version check makes the
//! retry of the same commit a conflict rather than a second application,
//! and the caller reloads the state to learn which happened.
//!
//! Commits are pipelined: each thread that commits (an HTTP worker and
//! the actors it hosts) has one task that sends every commit queued on
//! that thread as one pipeline of scripts, one round trip, and queues the
//! next ones while it waits (group commit, as the embedded writer does;
//! the queue and the task stay on the committing thread, while the
//! socket's I/O runs on the thread that opened the pooled connection).
//! Each script stays atomic on its own and its outcome is its commit's
//! alone: one actor's conflict fails nobody else. A pipeline that fails or
//! times out as a whole leaves every commit in it of unknown outcome,
//! answered as unavailable; so does a commit whose whole wait passes the
//! command timeout.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::{Connection, Manager, Pool, Runtime};
use redis::{AsyncCommands, Script, ScriptInvocation};
use thread_local::ThreadLocal;
use tokio::sync::{mpsc, oneshot};

use troupe_actors::{ActorId, Kind};

use super::lease::{self, Lease, LeaseState};
use super::{Commit, Snapshot, Store, StoreError, StoreOptions};

/// Compare-and-set commit. KEYS: state, entries, pending, facts, the
/// kind's index, the instance lease, idempotency keys...; ARGV: expected
/// version, new version, has state (1/0), state, pending (1/0), actor,
/// retention seconds, entry count, fact count, the actor's id (its index
/// member), the lease's id this instance holds (empty: none kept),
/// (seq, entry)..., (fact key, fact)..., idempotency values in KEYS order.
/// A commit from an instance that does not hold the lease writes nothing.
/// Returns -1 when applied, else the version found. An actor's first
/// state joins its kind's index; has-state is 2 for a fence, which over an
/// actor never stored marks the state unlisted (field `u`) instead, until
/// the actor's first real commit lists it.
///
/// Redis does not roll a script back: a command that fails halfway (a key
/// of another type) would leave the writes before it. So everything a
/// write could fail on is checked first (each key's type, the stored
/// version), and a key found wrong fails the commit with a `CORRUPT`
/// error before anything is written. (`SET` replaces a key of any type,
/// and the other writes take arguments this store formats itself.)
const COMMIT: &str = r"
if ARGV[11] ~= '' and redis.call('GET', KEYS[6]) ~= ARGV[11] then
  return redis.error_reply('FENCED this instance does not hold ' .. KEYS[6] .. '; nothing was written')
end
local types = {'hash', 'zset', 'set', 'hash', 'zset'}
for k = 1, 5 do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'none' and t ~= types[k] then
    return redis.error_reply('CORRUPT ' .. KEYS[k] .. ' is a ' .. t .. ' where troupe keeps a ' .. types[k] .. '; nothing was written')
  end
end
local found = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if not found then
  return redis.error_reply('CORRUPT ' .. KEYS[1] .. ' holds a version that is not a number; nothing was written')
end
if found ~= tonumber(ARGV[1]) then return found end
if ARGV[3] ~= '0' then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[4])
  if ARGV[5] == '1' then redis.call('SADD', KEYS[3], ARGV[6]) else redis.call('SREM', KEYS[3], ARGV[6]) end
  if ARGV[3] == '2' then
    if found == 0 then redis.call('HSET', KEYS[1], 'u', '1') end
  elseif found == 0 or redis.call('HDEL', KEYS[1], 'u') == 1 then
    redis.call('ZADD', KEYS[5], 0, ARGV[10])
  end
end
local i = 12
for _ = 1, tonumber(ARGV[8]) do
  redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, tonumber(ARGV[9]) do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for k = 7, #KEYS do
  redis.call('SET', KEYS[k], ARGV[i], 'EX', ARGV[7])
  i = i + 1
end
return -1
";

/// `reindex`'s step for one state hash (KEYS: it, the kind's index;
/// ARGV: the id): indexed unless only a fence wrote it.
const INDEX_UNLESS_FENCED: &str = r"
if redis.call('HEXISTS', KEYS[1], 'u') == 1 then return 0 end
return redis.call('ZADD', KEYS[2], 0, ARGV[1])
";

/// Connection settings, from `store.redis`.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub url: String,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub prefix: String,
}

/// A commit waiting for its pipeline, with where its outcome goes.
type Queued = (Commit, oneshot::Sender<Result<(), StoreError>>);

pub struct RedisStore {
    inner: Arc<Inner>,
    /// Each thread's queue into its pipelining task (see the module docs).
    queues: ThreadLocal<RefCell<Option<mpsc::Sender<Queued>>>>,
}

struct Inner {
    pool: Pool,
    command_timeout: Duration,
    retention_s: u64,
    prefix: String,
    commit: Script,
    /// Most commits one pipeline carries.
    max_batch: usize,
    /// Commits one thread's queue holds before committers wait.
    queue: usize,
    stats: PipelineStats,
    /// Commits waiting for their outcome, for `close`.
    in_flight: std::sync::atomic::AtomicUsize,
    lease: Lease,
    acquire: Script,
    release: Script,
}

/// Counts a commit out of `in_flight` however its wait ends.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counters that show pipelining at work.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Commits sent.
    pub commits: AtomicU64,
    /// Pipelines sent, each one round trip.
    pub round_trips: AtomicU64,
}

impl RedisStore {
    /// Builds the pool. Connections are made on demand, so the service
    /// starts while Redis is down and recovers when it comes back.
    ///
    /// # Errors
    /// When the URL is malformed.
    pub fn new(redis: &RedisOptions, options: &StoreOptions) -> Result<Self, StoreError> {
        // redis-rs answers a command after 500 ms by default, whatever
        // `command_timeout` says: give connections the settings' bounds.
        let connection = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(redis.command_timeout))
            .set_connection_timeout(Some(redis.connect_timeout));
        let manager = Manager::new_with_config(redis.url.as_str(), connection)
            .map_err(|e| StoreError::Unavailable(format!("redis configuration: {e}")))?;
        let pool = Pool::builder(manager)
            .max_size(redis.pool_size.max(1))
            .wait_timeout(Some(redis.command_timeout))
            .create_timeout(Some(redis.connect_timeout))
            .recycle_timeout(Some(redis.command_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("redis pool: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                command_timeout: redis.command_timeout,
                retention_s: options.idempotency_retention.as_secs().max(1),
                prefix: redis.prefix.clone(),
                commit: Script::new(COMMIT),
                max_batch: options.max_batch.max(1),
                queue: options.queue.max(1),
                stats: PipelineStats::default(),
                in_flight: std::sync::atomic::AtomicUsize::new(0),
                lease: Lease::new(&redis.prefix),
                acquire: Script::new(lease::ACQUIRE),
                release: Script::new(lease::RELEASE),
            }),
            queues: ThreadLocal::new(),
        })
    }

    /// Keeps this prefix's instance lease from now on (`super::lease`):
    /// one attempt now, then [`RedisStore::keep_lease`] renews it.
    ///
    /// # Errors
    /// When Redis cannot be asked; the lease is then taken by the renewals.
    pub async fn hold_lease(&self, ttl: Duration) -> Result<LeaseState, StoreError> {
        self.inner.lease.enable(ttl);
        self.renew_lease().await
    }

    async fn renew_lease(&self) -> Result<LeaseState, StoreError> {
        let inner = &self.inner;
        let sent = inner.lease.sent();
        let mut call = inner.acquire.prepare_invoke();
        call.key(inner.lease_key())
            .key(format!("{}:epoch", inner.lease_key()))
            .arg(&inner.lease.id)
            .arg(inner.lease.ttl_ms());
        let answer: Result<(String, String), StoreError> = inner
            .run(
                "lease",
                |mut c| async move { call.invoke_async(&mut c).await },
            )
            .await;
        match answer {
            Ok(answer) => Ok(inner.lease.answered(sent, answer)),
            Err(e) => {
                inner.lease.failed(&e);
                Err(e)
            }
        }
    }

    async fn release_lease(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut call = inner.release.prepare_invoke();
        call.key(inner.lease_key()).arg(&inner.lease.id);
        inner
            .run("lease", |mut c| async move {
                call.invoke_async::<i64>(&mut c).await
            })
            .await
            .map(drop)
    }

    /// Renews the lease a third of its length apart until `background`
    /// stops (while another instance holds it, asks every half second at
    /// most, to take over soon after that one stops), saying when it
    /// changes hands.
    pub fn keep_lease(
        self: &Arc<Self>,
        background: &crate::background::Background,
        now: Option<LeaseState>,
    ) {
        let store = self.clone();
        background.spawn(async move {
            let renew = Duration::from_millis(store.inner.lease.ttl_ms() / 3)
                .max(Duration::from_millis(10));
            let wait = renew.min(Duration::from_millis(500));
            let mut last = now;
            let mut failing = false;
            loop {
                let pause = match last {
                    Some(LeaseState::Held) => renew,
                    _ => wait,
                };
                tokio::time::sleep(pause).await;
                let state = match store.renew_lease().await {
                    Ok(state) => state,
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error.message = %e, "cannot renew the Redis lease; not ready once it lapses");
                        }
                        failing = true;
                        continue;
                    }
                };
                failing = false;
                if last.as_ref() != Some(&state) {
                    log_lease(&state, &store.inner.prefix);
                }
                if state == LeaseState::Lost {
                    // Free the prefix for the next instance at once.
                    let _ = store.release_lease().await;
                    return;
                }
                last = Some(state);
            }
        });
    }

    /// How many commits went in how many round trips.
    pub fn stats(&self) -> &PipelineStats {
        &self.inner.stats
    }

    /// This thread's queue into its pipelining task; starts the task on
    /// the current runtime when there is none or it has stopped (its
    /// runtime shut down).
    fn queue(&self) -> mpsc::Sender<Queued> {
        let mut slot = self.queues.get_or(|| RefCell::new(None)).borrow_mut();
        if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(self.inner.queue);
        tokio::spawn(pipeline(self.inner.clone(), rx));
        *slot = Some(tx.clone());
        tx
    }
}

/// Sends what `rx` queues, as many commits per round trip as are waiting
/// (up to `max_batch`), one round trip at a time.
async fn pipeline(inner: Arc<Inner>, mut rx: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(inner.max_batch);
    // The first pipeline loads the script before its calls.
    let mut loaded = false;
    while rx.recv_many(&mut batch, inner.max_batch).await > 0 {
        let outcomes = inner.write(batch.iter().map(|(c, _)| c), &mut loaded).await;
        for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
            let _ = reply.send(outcome);
        }
    }
}

impl Inner {
    fn key(&self, actor: &str, what: &str) -> String {
        format!("{}:{{{actor}}}:{what}", self.prefix)
    }

    fn pending_key(&self) -> String {
        format!("{}:pending", self.prefix)
    }

    fn lease_key(&self) -> String {
        format!("{}:instance", self.prefix)
    }

    /// The index of a kind's ids, for listing.
    fn index_key(&self, kind: &str) -> String {
        format!("{}:actors:{kind}", self.prefix)
    }

    /// Runs one operation on a pooled connection within the command timeout.
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if what != "lease" {
            self.lease.check()?;
        }
        let deadline = tokio::time::Instant::now() + self.command_timeout;
        let timed_out = || format!("redis {what}: timed out after {:?}", self.command_timeout);
        // Until a connection is in hand, nothing was sent.
        let conn = tokio::time::timeout_at(deadline, self.pool.get())
            .await
            .map_err(|_| StoreError::Unavailable(timed_out()))?
            .map_err(|e| StoreError::Unavailable(format!("redis {what}: {e}")))?;
        // After that, a write that gets no answer may have been applied.
        let sent = |message: String| {
            if what == "commit" {
                StoreError::Unknown(message)
            } else {
                StoreError::Unavailable(message)
            }
        };
        match tokio::time::timeout_at(deadline, op(conn)).await {
            Err(_) => Err(sent(timed_out())),
            Ok(Ok(value)) => Ok(value),
            // A key holds what this store never wrote there (another type,
            // a version that is not a number): that actor's data is
            // damaged, and only that actor's.
            Ok(Err(e))
                if e.code() == Some("WRONGTYPE")
                    || e.kind() == redis::ErrorKind::UnexpectedReturnType =>
            {
                Err(StoreError::Corrupt(format!(
                    "redis {what}: a key holds what troupe never wrote there: {e}"
                )))
            }
            // Redis answered with an error: the command did not run.
            Ok(Err(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                    || e.is_connection_refusal() =>
            {
                Err(StoreError::Unavailable(format!("redis {what}: {e}")))
            }
            Ok(Err(e)) => Err(sent(format!("redis {what}: {e}"))),
        }
    }

    /// The script call of one commit.
    fn invocation<'s>(&'s self, c: &Commit) -> ScriptInvocation<'s> {
        let mut call = self.commit.prepare_invoke();
        call.key(self.key(&c.actor, "state"))
            .key(self.key(&c.actor, "entries"))
            .key(self.pending_key())
            .key(self.key(&c.actor, "facts"))
            .key(self.index_key(kind_of(&c.actor)))
            .key(self.lease_key());
        for w in &c.idempotency {
            call.key(self.key(&c.actor, &format!("idem:{}", w.key)));
        }
        call.arg(c.expected_version)
            .arg(c.version)
            .arg(match (&c.state, c.fence) {
                (None, _) => 0u8,
                (Some(_), false) => 1,
                (Some(_), true) => 2,
            })
            .arg(c.state.as_deref().unwrap_or_default())
            .arg(u8::from(c.pending))
            .arg(&c.actor)
            .arg(self.retention_s)
            .arg(c.entries.len())
            .arg(c.facts.len())
            .arg(id_of(&c.actor))
            .arg(self.lease.fence());
        for (seq, entry) in &c.entries {
            call.arg(*seq).arg(entry.as_slice());
        }
        for (key, fact) in &c.facts {
            call.arg(key.as_str()).arg(fact.as_slice());
        }
        for w in &c.idempotency {
            call.arg(w.value.as_slice());
        }
        call
    }

    /// Sends `commits` as one pipeline; each one's outcome, in order. A
    /// Redis that lost its script cache (a restart, `SCRIPT FLUSH`) ran
    /// none of them: the script is loaded and those are sent once more.
    async fn write<'c>(
        &self,
        commits: impl ExactSizeIterator<Item = &'c Commit>,
        loaded: &mut bool,
    ) -> Vec<Result<(), StoreError>> {
        let commits: Vec<&Commit> = commits.collect();
        // Every commit's outcome is set below; none is taken as applied by default.
        let mut outcomes: Vec<Result<(), StoreError>> = commits
            .iter()
            .map(|_| Err(StoreError::Unavailable("redis commit: not sent".into())))
            .collect();
        let mut todo: Vec<usize> = (0..commits.len()).collect();
        self.stats
            .commits
            .fetch_add(commits.len() as u64, Ordering::Relaxed);
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            if attempt > 0 || !*loaded {
                pipe.load_script(&self.commit).ignore();
            }
            for &i in &todo {
                pipe.invoke_script(&self.invocation(commits[i]));
            }
            self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
            let results: Vec<redis::RedisResult<i64>> = match self
                .run("commit", |mut conn| async move {
                    pipe.query_async::<Vec<redis::RedisResult<i64>>>(&mut conn)
                        .await
                })
                .await
            {
                Ok(results) if results.len() == todo.len() => results,
                Ok(results) => {
                    let e = StoreError::Unknown(format!(
                        "redis commit: {} answers to a pipeline of {}",
                        results.len(),
                        todo.len()
                    ));
                    for &i in &todo {
                        outcomes[i] = Err(e.clone());
                    }
                    break;
                }
                Err(e) => {
                    for &i in &todo {
                        outcomes[i] = Err(e.clone());
                    }
                    break;
                }
            };
            *loaded = true;
            let mut again = Vec::new();
            for (&i, result) in todo.iter().zip(results) {
                let c = commits[i];
                outcomes[i] = match result {
                    Ok(found) if found < 0 => Ok(()),
                    Ok(found) => Err(StoreError::Conflict {
                        actor: c.actor.clone(),
                        expected: c.expected_version,
                        found: found.unsigned_abs(),
                    }),
                    Err(e)
                        if attempt == 0
                            && e.kind()
                                == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        again.push(i);
                        continue;
                    }
                    Err(e) => Err(script_failed(&e)),
                };
            }
            if again.is_empty() {
                break;
            }
            todo = again;
        }
        outcomes
    }
}

/// The server settings that decide what survives of what troupe wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub maxmemory_policy: String,
    pub appendonly: String,
    pub appendfsync: String,
    pub save: String,
}

impl ServerSettings {
    /// Why a server so set would lose acknowledged data on its own, if it
    /// would: any policy but `noeviction` lets Redis delete keys when
    /// memory runs short (`allkeys-*` any of them; `volatile-*` the keys
    /// with a time to live, which are the idempotency records, so a retry
    /// after an unknown outcome would be applied twice).
    pub fn refusal(&self) -> Option<String> {
        (self.maxmemory_policy != "noeviction").then(|| {
            format!(
                "Redis is set to evict keys when its memory runs short (maxmemory-policy {}): \
                 states, journals or idempotency records could vanish without a trace; \
                 set maxmemory-policy to noeviction (Redis then refuses writes instead, \
                 which troupe answers with 503)",
                self.maxmemory_policy
            )
        })
    }
}

impl RedisStore {
    /// The server's settings that bear on durability; `None` when the
    /// server refuses `CONFIG GET` (managed services often rename or
    /// forbid it).
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn server_settings(&self) -> Result<Option<ServerSettings>, StoreError> {
        let mut values = Vec::with_capacity(4);
        for name in ["maxmemory-policy", "appendonly", "appendfsync", "save"] {
            let value: Option<Vec<String>> = self
                .inner
                .run("config", |mut c| async move {
                    let got = redis::cmd("CONFIG")
                        .arg("GET")
                        .arg(name)
                        .query_async::<Vec<String>>(&mut c)
                        .await;
                    match got {
                        Ok(pair) => Ok(Some(pair)),
                        // An error answer saying the command is not allowed
                        // here (renamed away, or an ACL without it); not a
                        // server that wants a password or is still loading.
                        Err(e)
                            if e.kind()
                                == redis::ErrorKind::Server(
                                    redis::ServerErrorKind::ResponseError,
                                )
                                || e.code() == Some("NOPERM") =>
                        {
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    }
                })
                .await?;
            let Some(pair) = value else {
                return Ok(None);
            };
            // `[name, value]`; an unknown name gives nothing.
            values.push(pair.into_iter().nth(1).unwrap_or_default());
        }
        let mut values = values.into_iter();
        let mut next = || values.next().unwrap_or_default();
        Ok(Some(ServerSettings {
            maxmemory_policy: next(),
            appendonly: next(),
            appendfsync: next(),
            save: next(),
        }))
    }
}

/// `s` with the characters SCAN's MATCH reads as a pattern escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `kind` of an actor named `kind/id`.
fn kind_of(actor: &str) -> &str {
    actor.split_once('/').map_or(actor, |(kind, _)| kind)
}

/// `id` of an actor named `kind/id`.
fn id_of(actor: &str) -> &str {
    actor.split_once('/').map_or("", |(_, id)| id)
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn serving(&self) -> Result<(), StoreError> {
        self.inner.lease.check()
    }

    async fn load(&self, actor: &str) -> Result<Option<Snapshot>, StoreError> {
        let key = self.inner.key(actor, "state");
        let (version, state): (Option<u64>, Option<Vec<u8>>) = self
            .inner
            .run("load", |mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("v")
                    .arg("s")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(match (version, state) {
            (Some(version), Some(state)) => Some(Snapshot { version, state }),
            _ => None,
        })
    }

    async fn commit(&self, c: Commit) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner.in_flight.fetch_add(1, Ordering::AcqRel);
        let _done = InFlight(&inner.in_flight);
        let (reply, outcome) = oneshot::channel();
        let mut queued = (c, reply);
        // The whole wait, queue and pipeline ahead included, is bounded by
        // the command timeout; past it the outcome is unknown (the commit
        // may still be sent: the version check and the caller's fence
        // handle that, as for any timed-out command).
        let work = async {
            // Twice at most: a queue whose task stopped is replaced once.
            for _ in 0..2 {
                match self.queue().send(queued).await {
                    Ok(()) => {
                        return outcome.await.unwrap_or_else(|_| {
                            Err(StoreError::Unknown(
                                "redis commit: its pipeline stopped; the outcome is unknown".into(),
                            ))
                        });
                    }
                    Err(mpsc::error::SendError(back)) => queued = back,
                }
            }
            Err(StoreError::Unavailable(
                "redis commit: no pipeline to send it on".into(),
            ))
        };
        tokio::time::timeout(inner.command_timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unknown(format!(
                    "redis commit: timed out after {:?}",
                    inner.command_timeout
                )))
            })
    }

    async fn list(
        &self,
        kind: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        // A lexicographic range of the kind's index (every score is 0):
        // from the later of `[prefix` and `(after`, to the last id with the
        // prefix (ids are ASCII, so `\xff` sorts after every one of them).
        let key = self.inner.index_key(kind);
        let min = match after {
            Some(after) if after >= prefix => format!("({after}"),
            _ => format!("[{prefix}"),
        };
        let mut max = format!("[{prefix}").into_bytes();
        max.push(0xff);
        self.inner
            .run("list", |mut c| async move {
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(&min)
                    .arg(&max)
                    .arg("BYLEX")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut c)
                    .await
            })
            .await
    }

    async fn reindex(&self) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let done = format!("{}:actors:indexed", inner.prefix);
        let marked = done.clone();
        let indexed: bool = inner
            .run("reindex", |mut c| async move {
                redis::cmd("EXISTS").arg(&marked).query_async(&mut c).await
            })
            .await?;
        if indexed {
            return Ok(0);
        }
        // SCAN, never KEYS: a page at a time, the server answering others
        // between pages.
        let pattern = format!("{}:{{*}}:state", glob_escape(&inner.prefix));
        let mut cursor: u64 = 0;
        let mut count = 0;
        loop {
            let pattern = pattern.clone();
            let (next, keys): (u64, Vec<String>) = inner
                .run("reindex", |mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let mut pipe = redis::pipe();
            let mut adds = 0;
            for key in &keys {
                // The pattern also matches other keys of an actor whose
                // names a client chose (an idempotency key `x}:state`):
                // only a real kind and a valid id are an actor's state.
                let Some((kind, id)) = key
                    .strip_prefix(&format!("{}:{{", inner.prefix))
                    .and_then(|rest| rest.strip_suffix("}:state"))
                    .and_then(|actor| actor.split_once('/'))
                    .filter(|(kind, id)| {
                        Kind::parse(kind).is_some() && ActorId::parse(*id).is_ok()
                    })
                else {
                    continue;
                };
                // Not an actor only a fence wrote (see COMMIT): that one
                // is listed by its first real commit.
                pipe.cmd("EVAL")
                    .arg(INDEX_UNLESS_FENCED)
                    .arg(2)
                    .arg(key)
                    .arg(inner.index_key(kind))
                    .arg(id);
                adds += 1;
            }
            if adds > 0 {
                let added: Vec<u64> = inner
                    .run(
                        "reindex",
                        |mut c| async move { pipe.query_async(&mut c).await },
                    )
                    .await?;
                count += added.iter().sum::<u64>();
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        inner
            .run("reindex", |mut c| async move {
                redis::cmd("SET")
                    .arg(&done)
                    .arg(1)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
        Ok(count)
    }

    async fn entries(
        &self,
        actor: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let key = self.inner.key(actor, "entries");
        let min = format!("({after}");
        self.inner
            .run("entries", |mut c| async move {
                c.zrangebyscore_limit(&key, min, "+inf", 0, limit as isize)
                    .await
            })
            .await
    }

    async fn idempotency(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.inner.key(actor, &format!("idem:{key}"));
        self.inner
            .run("idempotency", |mut c| async move { c.get(&key).await })
            .await
    }

    async fn fact(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let hash = self.inner.key(actor, "facts");
        let field = key.to_owned();
        self.inner
            .run("fact", |mut c| async move { c.hget(&hash, &field).await })
            .await
    }

    async fn pending(&self) -> Result<Vec<String>, StoreError> {
        let key = self.inner.pending_key();
        self.inner
            .run("pending", |mut c| async move { c.smembers(&key).await })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner
            .run("ping", |mut c| async move {
                redis::cmd("PING").query_async::<String>(&mut c).await
            })
            .await
            .map(drop)
    }

    /// Redis expires idempotency records itself.
    async fn sweep(&self) {}

    /// Waits (a command timeout at most) for the commits in flight to be
    /// answered, then closes the pool.
    async fn close(&self) {
        let deadline = tokio::time::Instant::now() + self.inner.command_timeout;
        while self.inner.in_flight.load(Ordering::Acquire) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if self.inner.lease.enabled() {
            if let Err(e) = self.release_lease().await {
                tracing::warn!(error.message = %e, "cannot release the Redis lease; the next instance waits for it to expire");
            }
        }
        self.inner.pool.close();
    }
}

/// Says what an attempt on the lease found.
pub fn log_lease(state: &LeaseState, prefix: &str) {
    match state {
        LeaseState::Held => tracing::info!(
            prefix,
            "serving this Redis prefix (the instance lease is ours)"
        ),
        LeaseState::Other(holder) => tracing::warn!(
            prefix,
            holder = %holder,
            "another troupe instance serves this Redis prefix: this one stays not ready and \
             answers 503 until it stops (one instance per prefix until troupe runs as a \
             cluster; give each instance its own store.redis.prefix to run both)"
        ),
        LeaseState::Lost => tracing::error!(
            prefix,
            "another troupe instance served this Redis prefix while this one was paused past \
             its lease: this instance serves nothing more; restart it"
        ),
    }
}

/// What a commit script's error says of its writes. Redis refuses a script
/// whole before it runs, or at its first write (out of memory, a replica,
/// a failed disk), and none of its writes happened; the script's own
/// `CORRUPT` comes before its first write too, and says the actor's keys
/// hold what this store never wrote. Any other error may come after some
/// writes (Redis does not roll a script back).
fn script_failed(e: &redis::RedisError) -> StoreError {
    if e.code() == Some("CORRUPT") {
        return StoreError::Corrupt(format!("redis commit: {e}"));
    }
    const REFUSED: [&str; 9] = [
        "FENCED",
        "NOSCRIPT",
        "BUSY",
        "LOADING",
        "OOM",
        "MISCONF",
        "READONLY",
        "NOREPLICAS",
        "MASTERDOWN",
    ];
    if e.code().is_some_and(|code| REFUSED.contains(&code)) {
        StoreError::Unavailable(format!("redis commit: {e}"))
    } else {
        StoreError::Unknown(format!("redis commit: {e}"))
    }
}
