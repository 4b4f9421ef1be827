//! The Redis store, through a deadpool-redis connection pool, so several
//! instances can share state.
//!
//! Layout (prefix `troupe` by default; the braces are a Redis Cluster hash
//! tag keeping one actor's keys in one slot):
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `troupe:{kind/id}:state` | hash | `v` = version, `s` = JSON state |
//! | `troupe:{kind/id}:entries` | sorted set | score = seq, member = JSON entry |
//! | `troupe:{kind/id}:idem:{key}` | string, `EX` retention | JSON `{fingerprint, outcome}` |
//! | `troupe:{kind/id}:facts` | hash | field = fact key, value = JSON fact; never expires |
//! | `troupe:pending` | set | `kind/id` of actors with unfinished work |
//!
//! A commit is one Lua script (one atomic round trip, whatever the batch
//! holds): it checks the version, then writes the state, the entries, the
//! idempotency records and the pending flag, or nothing. A command that
//! times out may still have been applied; the version check makes the
//! retry of the same commit a conflict rather than a second application,
//! and the caller reloads the state to learn which happened.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::{Config, Connection, Pool, Runtime};
use redis::{AsyncCommands, Script};

use super::{Commit, Snapshot, Store, StoreError, StoreOptions};

/// Compare-and-set commit. KEYS: state, entries, pending, facts,
/// idempotency keys...; ARGV: expected version, new version, has state
/// (1/0), state, pending (1/0), actor, retention seconds, entry count, fact
/// count, (seq, entry)..., (fact key, fact)..., idempotency values in KEYS
/// order. Returns -1 when applied, else the version found.
const COMMIT: &str = r"
local found = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if found ~= tonumber(ARGV[1]) then return found end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[4])
  if ARGV[5] == '1' then redis.call('SADD', KEYS[3], ARGV[6]) else redis.call('SREM', KEYS[3], ARGV[6]) end
end
local i = 10
for _ = 1, tonumber(ARGV[8]) do
  redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, tonumber(ARGV[9]) do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for k = 5, #KEYS do
  redis.call('SET', KEYS[k], ARGV[i], 'EX', ARGV[7])
  i = i + 1
end
return -1
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

pub struct RedisStore {
    pool: Pool,
    command_timeout: Duration,
    retention_s: u64,
    prefix: String,
    commit: Script,
}

impl RedisStore {
    /// Builds the pool. Connections are made on demand, so the service
    /// starts while Redis is down and recovers when it comes back.
    ///
    /// # Errors
    /// When the URL is malformed.
    pub fn new(redis: &RedisOptions, options: &StoreOptions) -> Result<Self, StoreError> {
        let pool = Config::from_url(redis.url.clone())
            .builder()
            .map_err(|e| StoreError::Unavailable(format!("redis configuration: {e}")))?
            .max_size(redis.pool_size.max(1))
            .wait_timeout(Some(redis.command_timeout))
            .create_timeout(Some(redis.connect_timeout))
            .recycle_timeout(Some(redis.command_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("redis pool: {e}")))?;
        Ok(Self {
            pool,
            command_timeout: redis.command_timeout,
            retention_s: options.idempotency_retention.as_secs().max(1),
            prefix: redis.prefix.clone(),
            commit: Script::new(COMMIT),
        })
    }

    fn key(&self, actor: &str, what: &str) -> String {
        format!("{}:{{{actor}}}:{what}", self.prefix)
    }

    fn pending_key(&self) -> String {
        format!("{}:pending", self.prefix)
    }

    /// Runs one operation on a pooled connection within the command timeout.
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self
                .pool
                .get()
                .await
                .map_err(|e| StoreError::Unavailable(format!("redis {what}: {e}")))?;
            op(conn)
                .await
                .map_err(|e| StoreError::Unavailable(format!("redis {what}: {e}")))
        };
        tokio::time::timeout(self.command_timeout, work)
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "redis {what}: timed out after {:?}",
                    self.command_timeout
                ))
            })?
    }
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn load(&self, actor: &str) -> Result<Option<Snapshot>, StoreError> {
        let key = self.key(actor, "state");
        let (version, state): (Option<u64>, Option<Vec<u8>>) = self
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
        let mut call = self.commit.prepare_invoke();
        call.key(self.key(&c.actor, "state"))
            .key(self.key(&c.actor, "entries"))
            .key(self.pending_key())
            .key(self.key(&c.actor, "facts"));
        for w in &c.idempotency {
            call.key(self.key(&c.actor, &format!("idem:{}", w.key)));
        }
        call.arg(c.expected_version)
            .arg(c.version)
            .arg(u8::from(c.state.is_some()))
            .arg(c.state.as_deref().unwrap_or_default())
            .arg(u8::from(c.pending))
            .arg(&c.actor)
            .arg(self.retention_s)
            .arg(c.entries.len())
            .arg(c.facts.len());
        for (seq, entry) in &c.entries {
            call.arg(*seq).arg(entry.as_slice());
        }
        for (key, fact) in &c.facts {
            call.arg(key.as_str()).arg(fact.as_slice());
        }
        for w in &c.idempotency {
            call.arg(w.value.as_slice());
        }
        let found: i64 = self
            .run("commit", |mut conn| async move {
                call.invoke_async(&mut conn).await
            })
            .await?;
        if found < 0 {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                actor: c.actor,
                expected: c.expected_version,
                found: found.unsigned_abs(),
            })
        }
    }

    async fn entries(
        &self,
        actor: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let key = self.key(actor, "entries");
        let min = format!("({after}");
        self.run("entries", |mut c| async move {
            c.zrangebyscore_limit(&key, min, "+inf", 0, limit as isize)
                .await
        })
        .await
    }

    async fn idempotency(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(actor, &format!("idem:{key}"));
        self.run("idempotency", |mut c| async move { c.get(&key).await })
            .await
    }

    async fn fact(&self, actor: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let hash = self.key(actor, "facts");
        let field = key.to_owned();
        self.run("fact", |mut c| async move { c.hget(&hash, &field).await })
            .await
    }

    async fn pending(&self) -> Result<Vec<String>, StoreError> {
        let key = self.pending_key();
        self.run("pending", |mut c| async move { c.smembers(&key).await })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run("ping", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(drop)
    }

    /// Redis expires idempotency records itself.
    async fn sweep(&self) {}

    async fn close(&self) {
        self.pool.close();
    }
}
