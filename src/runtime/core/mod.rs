//! The activation's decisions, as a state machine without I/O.
//!
//! One [`Core`] per actor holds the behaviour's state, the open batch,
//! the caches, the parked callers, the asks in flight and the timers it
//! wants. The host (the actix activation in the service, the simulator in
//! the tests) tells it what happened through `handle_*` methods (a message
//! arrived, a lookup, load or commit answered, an ask answered, a timer
//! fired, the mailbox drained) and carries out what [`Core::poll_action`]
//! hands back: read this key, commit this batch, send this ask, answer
//! this caller, wake me then. Nothing here touches a socket, a clock or a
//! thread (quinn-proto's `Connection` is the model), so every interleaving
//! the host can produce, the simulator can produce too.
//!
//! # Layout
//! - this file: the events, the actions, the [`Phase`] and what is derived
//!   from it (whether the actor may passivate, whether it wants a flush);
//! - [`batch`]: the open batch and what a message sees of it;
//! - `serve`: a message's way in: deadline, idempotency record, fact,
//!   handling, and the step's way out into the batch;
//! - `commit`: sealing the batch, the commit's outcome, and the fence that
//!   settles an outcome the store could not tell;
//! - `load`: loading, restarting after a panic, parked callers after a
//!   reload;
//! - `asks`: effects sent to other actors, their retries and answers.

mod asks;
pub mod batch;
mod commit;
mod load;
mod serve;

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use lru::LruCache;
use troupe_actors::{Address, AnyCommand, Behavior};

pub use batch::LookupKey;

use super::idempotency::IdempotencyRequest;
use super::supervision::Supervision;
use super::{Answer, RuntimeOptions};
use crate::store::{Commit, StoreError};
use asks::Asks;
use batch::{Batch, Sealed};

/// The moment an event happens: the monotonic instant deadlines and timers
/// are measured on, and the wall clock entries are stamped with.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub wall: DateTime<Utc>,
}

/// A message for this actor, with whoever waits for its answer.
pub struct Incoming<C, R> {
    pub command: C,
    pub reply: R,
    pub idempotency: Option<IdempotencyRequest>,
    pub deadline: Instant,
    /// The sender's span: handling is recorded as its child.
    pub span: tracing::Span,
    pub sent_at: Instant,
}

impl<C, R> Incoming<C, R> {
    /// The same message with its command converted (to a kind's own
    /// command type); its caller back when the command does not convert.
    ///
    /// # Errors
    /// The caller to answer, when `convert` gives nothing.
    pub fn try_map<D>(self, convert: impl FnOnce(C) -> Option<D>) -> Result<Incoming<D, R>, R> {
        match convert(self.command) {
            Some(command) => Ok(Incoming {
                command,
                reply: self.reply,
                idempotency: self.idempotency,
                deadline: self.deadline,
                span: self.span,
                sent_at: self.sent_at,
            }),
            None => Err(self.reply),
        }
    }
}

/// Identifies one ask until it is answered; never reused by a core.
pub type AskId = u64;

/// What a core asks its host to do.
pub enum Action<R> {
    /// Read the actor's durable state; with `fence`, then write it back at
    /// the next version so that a commit of unknown outcome can no longer
    /// land (the answer says which version was read).
    Load { fence: bool },
    /// Read one record or fact from the store.
    Lookup(LookupKey),
    /// Make this commit durable (nothing to write: `None`), then read these
    /// journal pages (after, limit + 1 rows).
    Commit {
        commit: Option<Commit>,
        pages: Vec<(u64, u32)>,
        /// The first writer's span: the commit is recorded as its child.
        span: Option<tracing::Span>,
        /// Messages the commit answers.
        messages: usize,
    },
    /// Deliver `command` to `target`; answer [`Core::handle_answer`].
    Ask {
        id: AskId,
        target: Address,
        command: AnyCommand,
        deadline: Instant,
        /// The span of the step that asked.
        span: tracing::Span,
    },
    /// Answer a caller.
    Reply { to: R, answer: Answer },
    /// Call [`Core::handle_timer`] with `timer` at `at`.
    Timer { at: Instant, timer: Timer },
}

/// The wake-ups a core asks for. A timer that finds nothing to do when it
/// fires (its epoch passed, its work was done) does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Parked callers whose deadline passed are answered.
    Parked,
    /// A lazy change nothing else committed is committed on its own.
    Lazy { epoch: u32 },
    /// Unfinished work nothing drives is resumed.
    Recheck { epoch: u32 },
    /// The restart backoff after a panic has passed.
    Restart,
    /// Try a failed load again.
    Reload,
    /// Send an ask that failed transiently again.
    Ask(AskId),
    /// Callers waiting on a commit of unknown outcome have waited enough.
    Doubt,
}

/// A durable state as loaded.
pub struct Loaded<S> {
    pub state: S,
    /// The version now stored (after the fence, if one was written).
    pub version: u64,
    /// The version found before fencing (`version` without a fence).
    pub found: u64,
    /// The [`digest`] of the state bytes found, if any.
    pub digest: Option<u64>,
}

/// A digest of a state's bytes as stored, to tell one commit's state from
/// another's (SipHash with fixed keys: the same within a process).
pub fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(bytes)
}

/// Journal rows read for one `entries` message.
pub type Page = Result<Vec<Vec<u8>>, StoreError>;

/// Where an activation stands; exactly one at a time, with its data.
enum Phase<C, R> {
    /// No usable state in memory: not loaded yet, or thrown away after a
    /// failed commit. `doubt`: a commit whose outcome is unknown, settled
    /// by the next load's fence.
    Unloaded {
        doubt: Option<Sealed<R>>,
    },
    Loading {
        doubt: Option<Sealed<R>>,
    },
    /// After a panic: waiting out the backoff before reloading.
    Restarting {
        doubt: Option<Sealed<R>>,
    },
    /// The state is the durable one plus the open batch; messages are served.
    Ready,
    /// The message at the head waits for a record or fact from the store.
    LookingUp {
        incoming: Incoming<C, R>,
        key: LookupKey,
    },
    /// A sealed batch is being made durable; `restart` after a panic.
    Committing {
        sealed: Sealed<R>,
        restart: Option<std::time::Duration>,
    },
}

/// A caller waiting for the behaviour to settle (a transfer's `start`),
/// with the command it sent, to hand it to a reloaded state again.
struct Parked<C, R> {
    reply: R,
    replayed: bool,
    deadline: Instant,
    command: Option<C>,
}

/// Recent records and facts, as the bytes the store holds, written or read
/// by this activation.
struct Caches {
    idempotency: LruCache<String, Box<[u8]>>,
    facts: LruCache<String, Box<[u8]>>,
}

pub struct Core<B: Behavior, R> {
    address: Address,
    options: Arc<RuntimeOptions>,
    phase: Phase<B::Command, R>,
    state: B::State,
    /// Version of `state`, counting changes not yet durable.
    version: u64,
    /// The version the store holds for this actor.
    durable_version: u64,
    /// Whether the state the store holds has unfinished work: after a
    /// failed commit the state in memory no longer says.
    durable_pending: bool,
    /// Boxed and absent between batches: an idle activation stays small.
    open: Option<Box<Batch<R>>>,
    /// Numbers the open batch; the last generation durable.
    open_generation: u64,
    durable_generation: u64,
    /// Messages waiting while the core loads, looks up or commits.
    queue: VecDeque<Incoming<B::Command, R>>,
    parked: Vec<Parked<B::Command, R>>,
    caches: Option<Box<Caches>>,
    asks: Asks,
    /// The state holds a change written with the next commit (`Step::lazy`).
    lazy: bool,
    /// A recheck timer is set.
    recheck_armed: bool,
    supervision: Option<Box<Supervision>>,
    /// Callers of commits whose outcome is unknown, with the commit's
    /// generation: answered when a fence tells, or at their deadline.
    doubtful: Vec<(u64, batch::Held<R>)>,
    /// The last commit met another writer's version: the reload finds
    /// that writer's work (read once, by the reload).
    conflicted: bool,
    /// Bumped whenever the state is thrown away or reloaded.
    epoch: u32,
    actions: VecDeque<Action<R>>,
}

impl<B: Behavior, R> Core<B, R> {
    /// A core with nothing loaded; [`Core::start`] loads.
    pub fn new(address: Address, options: Arc<RuntimeOptions>) -> Self {
        Self {
            address,
            options,
            phase: Phase::Unloaded { doubt: None },
            state: B::State::default(),
            version: 0,
            durable_version: 0,
            durable_pending: false,
            open: None,
            open_generation: 1,
            durable_generation: 0,
            queue: VecDeque::new(),
            parked: Vec::new(),
            caches: None,
            asks: Asks::default(),
            lazy: false,
            recheck_armed: false,
            supervision: None,
            doubtful: Vec::new(),
            conflicted: false,
            epoch: 0,
            actions: VecDeque::new(),
        }
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The state in memory: the durable one plus the open batch.
    pub fn state(&self) -> &B::State {
        &self.state
    }

    /// Replaces the tunables; they apply from the next event on.
    pub fn set_options(&mut self, options: Arc<RuntimeOptions>) {
        self.options = options;
    }

    /// Begins loading the durable state.
    pub fn start(&mut self, _now: Now) {
        if matches!(self.phase, Phase::Unloaded { .. }) {
            self.load();
        }
    }

    /// A timer the core asked for fired.
    pub fn handle_timer(&mut self, now: Now, timer: Timer) {
        match timer {
            Timer::Parked => self.expire_parked(now),
            Timer::Lazy { epoch } => self.lazy_due(epoch),
            Timer::Recheck { epoch } => self.recheck_due(now, epoch),
            // Only this timer ends a restart's backoff.
            Timer::Restart => self.load(),
            Timer::Reload if matches!(self.phase, Phase::Unloaded { .. }) => self.load(),
            Timer::Reload => {}
            Timer::Ask(id) => self.resend(now, id),
            Timer::Doubt => self.doubt_due(now),
        }
        self.after(now);
    }

    /// What every event ends with.
    fn after(&mut self, now: Now) {
        self.arm_recheck(now);
    }

    /// The next thing to do, oldest first.
    pub fn poll_action(&mut self) -> Option<Action<R>> {
        self.actions.pop_front()
    }

    /// Whether the actor must stay in memory: it is loading, looking up,
    /// committing or restarting, settling a commit of unknown outcome, or
    /// holds a batch, a lazy change, asks, answers, parked callers, callers
    /// in doubt or durable unfinished work. Messages wait only in the
    /// phases that pin, and the state in memory differs from the durable
    /// one only by the open batch and by memos (which resuming recomputes),
    /// so neither needs a test of its own.
    pub fn is_pinned(&self) -> bool {
        match &self.phase {
            Phase::Unloaded { doubt: None } | Phase::Ready => {
                debug_assert!(
                    self.queue.is_empty(),
                    "messages wait in {}",
                    self.phase_name()
                );
                debug_assert!(
                    !matches!(self.phase, Phase::Ready)
                        || !B::is_pending(&self.state)
                        || self.durable_pending
                        || self.open.is_some()
                        || self.lazy,
                    "unfinished work in memory only"
                );
                self.open.is_some()
                    || self.lazy
                    || !self.asks.is_idle()
                    || !self.parked.is_empty()
                    || self.durable_pending
                    || !self.doubtful.is_empty()
            }
            _ => true,
        }
    }

    /// The phase's name, for reports.
    pub fn phase_name(&self) -> &'static str {
        match &self.phase {
            Phase::Unloaded { doubt: None } => "unloaded",
            Phase::Unloaded { doubt: Some(_) } => "unloaded_in_doubt",
            Phase::Loading { doubt: None } => "loading",
            Phase::Loading { doubt: Some(_) } => "fencing",
            Phase::Restarting { .. } => "restarting",
            Phase::Ready => "ready",
            Phase::LookingUp { .. } => "looking_up",
            Phase::Committing { restart: None, .. } => "committing",
            Phase::Committing {
                restart: Some(_), ..
            } => "committing_before_restart",
        }
    }

    /// Messages waiting and callers parked: each bounded by the mailbox
    /// capacity.
    pub fn held(&self) -> (usize, usize) {
        (self.queue.len(), self.parked.len())
    }

    /// Whether an idle activation is worth keeping until the idle timeout:
    /// one whose state could not be loaded, or that holds nothing (an
    /// account never opened, a settled transfer), is not.
    pub fn is_resident(&self) -> bool {
        matches!(self.phase, Phase::Ready) && B::is_resident(&self.state)
    }

    /// Whether the open batch waits for a flush: the host calls
    /// [`Core::handle_drained`] once its mailbox holds nothing more.
    pub fn wants_flush(&self) -> bool {
        matches!(self.phase, Phase::Ready) && self.open.is_some()
    }

    fn emit(&mut self, action: Action<R>) {
        self.actions.push_back(action);
    }

    fn respond(&mut self, to: R, answer: Answer) {
        self.emit(Action::Reply { to, answer });
    }

    fn timer(&mut self, at: Instant, timer: Timer) {
        self.emit(Action::Timer { at, timer });
    }

    fn batch(&mut self) -> &mut Batch<R> {
        self.open.get_or_insert_with(Box::default)
    }

    fn caches(&mut self) -> &mut Caches {
        let size = NonZeroUsize::new(self.options.idempotency_cache).unwrap_or(NonZeroUsize::MIN);
        self.caches.get_or_insert_with(|| {
            Box::new(Caches {
                idempotency: LruCache::new(size),
                facts: LruCache::new(size),
            })
        })
    }
}

/// What a panic said, for the log.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The answer to a caller whose message changed nothing because the store
/// failed: `500` for data that cannot be read or written as it is, else
/// `503`.
pub fn unavailable(e: &StoreError) -> Answer {
    use troupe_actors::ErrorCode;
    match e {
        StoreError::Corrupt(_) => Answer::error(ErrorCode::Corrupt, e.to_string()),
        StoreError::Conflict { .. } => Answer::error(ErrorCode::Unavailable, format!("{e}; retry")),
        StoreError::Unavailable(_) | StoreError::Unknown(_) => {
            Answer::error(ErrorCode::Unavailable, format!("{e}; retry later"))
        }
    }
}
