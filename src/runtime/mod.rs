//! Virtual actors: addressed by (kind, id), activated on their first message
//! from durable state, passivated when idle, restarted after a panic.
//!
//! ```text
//! HTTP handler --try_send--> Shard (one per arbiter thread, picked by hash of the address)
//!                              | directory: address -> activation, created on first use
//!                              v
//!                            Activation<B> (bounded mailbox; batches what is waiting,
//!                              |             persists once, replies once durable)
//!                              v
//!                            Store (group commit: many actors, one fsync)
//! ```
//!
//! Nothing is shared between shards but the store; a shard and its
//! activations live on one thread, so routing inside a shard costs no
//! synchronisation. In the service each HTTP worker hosts one shard: a
//! request whose actor lives on its own worker never leaves the thread
//! (a cross-thread wake-up costs tens of microseconds on small VMs).

mod activation;
pub mod core;
mod idempotency;
mod shard;
mod slot;
mod stats;
mod supervision;

use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::{Addr, Arbiter};
use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use troupe_actors::{kinds, Address, AnyCommand, ErrorCode, Outcome, Rejection};

pub use idempotency::{IdempotencyRecord, IdempotencyRequest};
pub use stats::RuntimeReport;
pub use supervision::{RestartPolicy, SupervisionEvent};

use crate::store::Store;
use shard::{Route, Shard};

/// The runtime's tunables; every one of them can change while running.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Capacity of each activation's mailbox; a full mailbox answers `429`.
    pub mailbox_capacity: usize,
    /// Capacity of each shard's mailbox.
    pub shard_mailbox_capacity: usize,
    /// An activation idle this long is passivated.
    pub idle_timeout: Duration,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    /// Deadline of each attempt of an actor-to-actor ask.
    pub effect_timeout: Duration,
    /// Backoff between attempts of an ask that failed transiently.
    pub ask_min_backoff: Duration,
    pub ask_max_backoff: Duration,
    /// How often unfinished work that nothing drives is resumed, and a
    /// failed load of an actor with unfinished work is retried.
    pub retry_interval: Duration,
    /// Live activations across all shards; idle ones are passivated to
    /// make room, and a shard with no idle one answers `429`.
    pub max_activations: usize,
    /// Actors with unfinished work woken at once after a restart.
    pub wake_concurrency: usize,
    pub restart: RestartPolicy,
    /// Idempotency records each activation keeps in memory.
    pub idempotency_cache: usize,
}

/// The answer to one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub outcome: Outcome,
    /// The outcome repeats an earlier one (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

impl Answer {
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            replayed: false,
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(Err(Rejection::new(code, message)))
    }
}

/// A message on its way to an activation.
#[derive(Debug)]
pub struct Envelope {
    pub command: AnyCommand,
    pub deadline: Instant,
    pub idempotency: Option<IdempotencyRequest>,
    pub reply: oneshot::Sender<Answer>,
    /// The sender's span: handling is recorded as its child.
    pub span: tracing::Span,
    /// When the message was sent, for the mailbox wait.
    pub sent_at: Instant,
    /// Sent by an actor or by the runtime itself (a transfer leg, a
    /// wake-up): activated even past `max_activations`, since unfinished
    /// work must reach its actors whatever clients are doing.
    pub internal: bool,
    /// Whether the activation took the message before its caller gave up.
    pub ticket: Arc<Ticket>,
}

/// Decides, once, who has the last word on a message: its activation,
/// which takes it and then always answers with what became of it, or its
/// caller, which gives up at the deadline and answers `504` itself. A
/// message the caller gave up on is dropped unprocessed, so that `504`
/// never stands for a change that was made.
#[derive(Debug, Default)]
pub struct Ticket(AtomicU8);

const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const GIVEN_UP: u8 = 2;

impl Ticket {
    /// The activation takes the message; `false` if its caller gave up.
    pub fn take(&self) -> bool {
        self.0
            .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The caller gives up; `false` if the message was taken already.
    fn give_up(&self) -> bool {
        self.0
            .compare_exchange(WAITING, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A routed message's answer to come.
pub(crate) struct Pending {
    rx: oneshot::Receiver<Answer>,
    ticket: Arc<Ticket>,
}

impl Envelope {
    /// Nobody waits for the answer any more (the HTTP client
    /// disconnected). Messages the runtime or an actor sent never count as
    /// abandoned: their senders retry, and unfinished work must go on.
    pub fn abandoned(&self) -> bool {
        !self.internal && self.reply.is_closed()
    }
}

/// A cheap, cloneable handle on the runtime.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Vec<ShardSlot>,
    options: ArcSwap<RuntimeOptions>,
    store: Arc<dyn Store>,
    draining: AtomicBool,
    /// Where shards send their counts (the metrics actor), once set.
    metrics: OnceLock<actix::Recipient<RuntimeReport>>,
    dropped_reports: AtomicU64,
}

/// Where one shard lives, once a thread hosts it.
#[derive(Default)]
struct ShardSlot {
    addr: ArcSwapOption<Addr<Shard>>,
    hosted: Notify,
}

impl Runtime {
    /// A runtime with `shards` shards and no thread hosting them yet: each
    /// HTTP worker calls [`Runtime::host_shard_here`], so a request and the
    /// actors of its worker's shard share a thread and hand messages over
    /// without a cross-thread wake-up.
    pub fn new(store: Arc<dyn Store>, options: RuntimeOptions, shards: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                shards: (0..shards.max(1)).map(|_| ShardSlot::default()).collect(),
                options: ArcSwap::from_pointee(options),
                store,
                draining: AtomicBool::new(false),
                metrics: OnceLock::new(),
                dropped_reports: AtomicU64::new(0),
            }),
        }
    }

    /// A runtime whose shards each get an arbiter thread of their own (for
    /// benches and tools that run no HTTP server).
    pub fn start(store: Arc<dyn Store>, options: RuntimeOptions, threads: usize) -> Self {
        let runtime = Self::new(store, options, threads);
        for index in 0..runtime.inner.shards.len() {
            let arbiter = Arbiter::new();
            let rt = runtime.clone();
            let addr = actix::Actor::start_in_arbiter(&arbiter.handle(), move |ctx| {
                Shard::new(index, rt, ctx)
            });
            runtime.register(index, addr);
            // The arbiter thread lives as long as the actix system.
            drop(arbiter);
        }
        runtime
    }

    /// Starts a shard on the current thread's arbiter, taking the first
    /// slot that no live shard holds (a restarted worker takes over the
    /// slot of the one that died). Returns the slot, if any was free.
    pub fn host_shard_here(&self) -> Option<usize> {
        let index = self
            .inner
            .shards
            .iter()
            .position(|slot| match &*slot.addr.load() {
                None => true,
                Some(addr) => !addr.connected(),
            })?;
        // Claim the slot before starting so a concurrent worker picks another.
        let rt = self.clone();
        let addr = <Shard as actix::Actor>::create(move |ctx| Shard::new(index, rt, ctx));
        self.register(index, addr);
        Some(index)
    }

    fn register(&self, index: usize, addr: Addr<Shard>) {
        let slot = &self.inner.shards[index];
        slot.addr.store(Some(Arc::new(addr)));
        slot.hosted.notify_waiters();
    }

    /// The shard at `index`, waiting until `deadline` for a thread to host it.
    async fn shard(&self, index: usize, deadline: Instant) -> Option<Arc<Addr<Shard>>> {
        let slot = &self.inner.shards[index];
        loop {
            let hosted = slot.hosted.notified();
            if let Some(addr) = slot.addr.load_full() {
                return Some(addr);
            }
            tokio::time::timeout_at(deadline, hosted).await.ok()?;
        }
    }

    /// How many shards the runtime has.
    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    pub fn options(&self) -> Arc<RuntimeOptions> {
        self.inner.options.load_full()
    }

    /// Replaces the tunables; new activations and new requests see them.
    pub fn set_options(&self, options: RuntimeOptions) {
        self.inner.options.store(Arc::new(options));
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The deadline of a request that asked for `timeout` (or none).
    pub fn deadline(&self, timeout: Option<Duration>) -> Instant {
        let options = self.inner.options.load();
        Instant::now()
            + timeout
                .unwrap_or(options.default_timeout)
                .min(options.max_timeout)
    }

    /// Sends `command` to the actor at `address` and waits for its answer
    /// until `deadline`. Every failure comes back as an [`Answer`] with the
    /// API's code: `429` when a mailbox is full, `503` when the shard is
    /// gone, `504` past the deadline.
    pub async fn ask(
        &self,
        address: Address,
        command: AnyCommand,
        deadline: Instant,
        idempotency: Option<IdempotencyRequest>,
    ) -> Answer {
        self.ask_as(address, command, deadline, idempotency, false)
            .await
    }

    /// As [`Runtime::ask`], for an actor or the runtime itself.
    pub(crate) async fn ask_internal(
        &self,
        address: Address,
        command: AnyCommand,
        deadline: Instant,
    ) -> Answer {
        self.ask_as(address, command, deadline, None, true).await
    }

    async fn ask_as(
        &self,
        address: Address,
        command: AnyCommand,
        deadline: Instant,
        idempotency: Option<IdempotencyRequest>,
        internal: bool,
    ) -> Answer {
        // An instance that may not serve answers nothing from memory either.
        if let Err(e) = self.inner.store.serving() {
            return Answer::error(ErrorCode::Unavailable, e.to_string());
        }
        let index = shard_of(&address, self.inner.shards.len());
        let Some(shard) = self.shard(index, deadline).await else {
            return Answer::error(ErrorCode::Unavailable, "the runtime is starting");
        };
        match route(&shard, address, command, deadline, idempotency, internal) {
            Ok(rx) => self.await_answer(rx, deadline).await,
            Err(answer) => answer,
        }
    }

    /// Routes an actor's `command` at once, without waiting for anything:
    /// the first attempt of an actor-to-actor ask leaves before its step's
    /// commit.
    ///
    /// # Errors
    /// The [`Answer`] to give when the message could not be routed.
    pub(crate) fn dispatch(
        &self,
        address: Address,
        command: AnyCommand,
        deadline: Instant,
        idempotency: Option<IdempotencyRequest>,
    ) -> Result<Pending, Answer> {
        if let Err(e) = self.inner.store.serving() {
            return Err(Answer::error(ErrorCode::Unavailable, e.to_string()));
        }
        let index = shard_of(&address, self.inner.shards.len());
        let Some(shard) = self.inner.shards[index].addr.load_full() else {
            return Err(Answer::error(
                ErrorCode::Unavailable,
                "the runtime is starting",
            ));
        };
        route(&shard, address, command, deadline, idempotency, true)
    }

    /// The answer to a routed message. At `deadline` the caller gives up
    /// (`504`) unless the activation has taken the message: then it waits
    /// for the answer, which tells what became of the message.
    pub(crate) async fn await_answer(&self, pending: Pending, deadline: Instant) -> Answer {
        let Pending { mut rx, ticket } = pending;
        let stopped = |_| Answer::error(ErrorCode::Internal, "the actor stopped before answering");
        match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(answer) => answer.unwrap_or_else(stopped),
            Err(_) if ticket.give_up() => {
                Answer::error(ErrorCode::DeadlineExceeded, "the request's deadline passed")
            }
            Err(_) => rx.await.unwrap_or_else(stopped),
        }
    }

    /// Wakes every actor whose durable state has unfinished work, so that
    /// transfers interrupted by a crash finish without a client's help.
    /// Each wake-up is retried with backoff until the actor has loaded: a
    /// store that fails a load now must not leave work stranded.
    ///
    /// # Errors
    /// When the store cannot list them.
    pub async fn resume_pending(
        &self,
        background: &crate::background::Background,
    ) -> Result<usize, crate::store::StoreError> {
        let pending = self.inner.store.pending().await?;
        let count = pending.len();
        // Wake-ups go past the activation cap; this bounds how many run at once.
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.options().wake_concurrency.max(1),
        ));
        for key in pending {
            let Some((kind, id)) = key.split_once('/') else {
                continue;
            };
            let (Some(kind), Ok(id)) = (
                troupe_actors::Kind::parse(kind),
                troupe_actors::ActorId::parse(id),
            ) else {
                tracing::warn!(actor = %key, "skipping unknown pending actor");
                continue;
            };
            let runtime = self.clone();
            let permits = permits.clone();
            background.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                runtime.wake(Address::new(kind, id)).await;
            });
        }
        Ok(count)
    }

    /// Asks an actor for its state until it answers with anything but a
    /// transient error: once it has loaded, it resumes its own work.
    async fn wake(&self, address: Address) {
        use backon::{ExponentialBuilder, Retryable};
        let options = self.options();
        let backoff = ExponentialBuilder::default()
            .with_min_delay(options.ask_min_backoff)
            .with_max_delay(options.ask_max_backoff)
            .with_jitter()
            .without_max_times();
        let attempt = || async {
            let command = kinds::parse(address.kind, "get", serde_json::Value::Null)
                .map_err(|e| Answer::error(ErrorCode::Internal, e.to_string()))?;
            let deadline = self.deadline(None);
            let answer = self.ask_internal(address.clone(), command, deadline).await;
            match &answer.outcome {
                Err(r) if r.code.is_transient() && !self.is_draining() => Err(answer),
                _ => Ok(answer),
            }
        };
        let _ = attempt
            .retry(backoff)
            .when(|_| !self.is_draining())
            .notify(|answer: &Answer, wait| {
                tracing::warn!(actor = %address, outcome = ?answer.outcome, ?wait, "cannot wake an actor with unfinished work yet; retrying");
            })
            .await;
    }

    /// Sends shard reports to `sink` from now on.
    pub fn set_metrics_sink(&self, sink: actix::Recipient<RuntimeReport>) {
        let _ = self.inner.metrics.set(sink);
    }

    /// Hands a shard's report to the metrics sink without waiting.
    pub(crate) fn report(&self, report: RuntimeReport) {
        if let Some(sink) = self.inner.metrics.get() {
            if sink.try_send(report).is_err() {
                self.inner.dropped_reports.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Reports dropped because the metrics actor's mailbox was full.
    pub fn dropped_reports(&self) -> u64 {
        self.inner.dropped_reports.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }
}

/// Hands an envelope to a shard without waiting.
fn route(
    shard: &Addr<Shard>,
    address: Address,
    command: AnyCommand,
    deadline: Instant,
    idempotency: Option<IdempotencyRequest>,
    internal: bool,
) -> Result<Pending, Answer> {
    let (reply, rx) = oneshot::channel();
    let ticket = Arc::new(Ticket::default());
    let envelope = Envelope {
        ticket: ticket.clone(),
        command,
        deadline,
        idempotency,
        reply,
        span: tracing::Span::current(),
        sent_at: Instant::now(),
        internal,
    };
    match shard.try_send(Route { address, envelope }) {
        Ok(()) => Ok(Pending { rx, ticket }),
        Err(actix::prelude::SendError::Full(_)) => Err(Answer::error(
            ErrorCode::Overloaded,
            "the runtime is overloaded; retry later",
        )),
        // The worker hosting the shard died; a new one takes its slot.
        Err(actix::prelude::SendError::Closed(_)) => Err(Answer::error(
            ErrorCode::Unavailable,
            "this part of the runtime is restarting; retry later",
        )),
    }
}

/// Picks the shard of an address. SipHash with fixed keys: stable across
/// runs, so a bench or a log can tell which thread owns an actor.
fn shard_of(address: &Address, shards: usize) -> usize {
    let hasher = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    let hash = hasher.hash_one((address.kind.as_str(), address.id.as_str()));
    (hash % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(internal: bool) -> (Envelope, oneshot::Receiver<Answer>) {
        let (reply, rx) = oneshot::channel();
        let command = kinds::parse(troupe_actors::Kind::Account, "get", serde_json::Value::Null)
            .expect("a get");
        let now = Instant::now();
        let envelope = Envelope {
            command,
            deadline: now + std::time::Duration::from_secs(60),
            idempotency: None,
            reply,
            span: tracing::Span::none(),
            sent_at: now,
            internal,
            ticket: Arc::default(),
        };
        (envelope, rx)
    }

    /// Only a client's hang-up abandons a message. An actor's ask whose
    /// asker stopped waiting (it crashed or was restarted before its
    /// deadline) is still handled: the asker's next attempt relies on it
    /// having been, and operators read the counter as clients gone.
    #[test]
    fn only_a_message_from_outside_whose_caller_left_is_abandoned() {
        for internal in [false, true] {
            let (envelope, rx) = envelope(internal);
            assert!(!envelope.abandoned(), "abandoned while its caller waits");
            drop(rx);
            assert_eq!(envelope.abandoned(), !internal, "internal: {internal}");
        }
    }
}
