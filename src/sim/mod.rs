//! A deterministic simulator of the runtime: the real activation [`Core`]
//! of every actor, driven by a seeded scheduler instead of actix, over a
//! simulated store, network and clock.
//!
//! Everything a run does is chosen by one seed: when messages, store
//! answers, ask answers and timers arrive, which store calls fail, which
//! commits end with an unknown outcome (and whether they landed, at once or
//! later), when the process crashes (losing every activation and every
//! call in flight) and restarts (waking what the store lists as pending),
//! and when idle activations are passivated. A workload plays the clients
//! (hostile ones: the same key twice at once and later, tiny deadlines,
//! retries after errors) and states the invariants, checked as the run
//! goes and once it has quiesced. A failing run names its seed; the same
//! seed replays it step for step.
//!
//! It serves any kind: [`Simulation::host`] takes a [`Behavior`], and a
//! [`Workload`] is all a kind's author writes (`tests/simulate/` has the
//! ledger's). FoundationDB's simulation and TigerBeetle's VOPR are the
//! models; madsim, turmoil and shuttle simulate tokio, a network or
//! threads, while the core needs none of those: it is a plain state
//! machine, so a plain event queue drives it.
//!
//! [`Core`]: crate::runtime::core::Core
//! [`Behavior`]: troupe_actors::Behavior

mod host;
pub mod store;
mod world;

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use troupe_actors::{Address, AnyCommand};

pub use store::Durable;
pub use world::{options, Simulation};

use crate::runtime::core::AskId;
use crate::runtime::{Answer, IdempotencyRequest};

/// Numbers a client's request for the whole run.
pub type RequestId = u64;

/// Who waits for an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyTo {
    Client(RequestId),
    /// An actor's ask: the asker, its activation's incarnation, the ask.
    Ask {
        from: String,
        incarnation: u64,
        id: AskId,
    },
    /// The wake-up of an actor with unfinished work after a restart.
    Wake {
        address: Address,
        attempt: u32,
    },
}

/// A request a client sends.
#[derive(Debug, Clone)]
pub struct Request {
    pub address: Address,
    pub command: AnyCommand,
    pub idempotency: Option<IdempotencyRequest>,
    /// The request's deadline, from when it is sent.
    pub timeout: Duration,
}

/// What a client was told.
#[derive(Debug, Clone, PartialEq)]
pub enum Told {
    Answer(Answer),
    /// The connection was lost (the process crashed, or was down when the
    /// request was sent): the client cannot know what happened.
    Lost,
}

/// How often each fault happens, each a probability per opportunity.
#[derive(Debug, Clone)]
pub struct Faults {
    /// A load or lookup fails.
    pub read_fails: f64,
    /// A commit is refused before reaching the store: not applied, and
    /// said so.
    pub commit_fails: f64,
    /// A commit gets no answer and never lands: unknown outcome.
    pub commit_lost_unseen: f64,
    /// A commit lands, then its answer is lost: unknown outcome, applied.
    pub commit_lands_unseen: f64,
    /// A commit's answer is lost and it lands later (if its version still
    /// matches then).
    pub commit_lands_late: f64,
    /// A fence's write gets no answer; it landed or not.
    pub fence_lost: f64,
    /// An ask cannot be routed (a full shard): answered `429`.
    pub route_fails: f64,
    /// Process crashes during the run.
    pub crashes: u32,
    /// Times the store is down (50 ms to 1.5 s each): everything refused.
    pub outages: u32,
    /// After an event, the actor is considered for passivation.
    pub passivate: f64,
    /// Times the operator changes the runtime's tunables during the run.
    pub reloads: u32,
}

impl Faults {
    /// Faults drawn from the seed: some runs calm, some hostile.
    pub fn random(rng: &mut ChaCha8Rng) -> Self {
        let mut p = |max: f64| {
            if rng.random_bool(0.3) {
                0.0
            } else {
                rng.random_range(0.0..max)
            }
        };
        Self {
            read_fails: p(0.05),
            commit_fails: p(0.05),
            commit_lost_unseen: p(0.05),
            commit_lands_unseen: p(0.05),
            commit_lands_late: p(0.05),
            fence_lost: p(0.2),
            route_fails: p(0.05),
            crashes: rng.random_range(0..=2),
            outages: rng.random_range(0..=2),
            passivate: rng.random_range(0.0..0.2),
            // Drawn by the caller, apart (see `Simulation::reload`).
            reloads: 0,
        }
    }
}

/// The run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// How long clients send and faults happen, in simulated time.
    pub active: Duration,
    /// How long, after that, everything has to settle.
    pub settle: Duration,
    pub faults: Faults,
    /// Keep a readable trace of every event (for replaying a seed).
    pub trace: bool,
}

/// What clients can do and see: the workload's side of the simulation.
pub struct Clients<'a> {
    rng: &'a mut ChaCha8Rng,
    now: Duration,
    open: bool,
    next: &'a mut RequestId,
    sends: &'a mut Vec<(Duration, RequestId, Request)>,
}

impl Clients<'_> {
    /// Sends `request` after `delay`; `None` once clients have stopped
    /// (the active part of the run is over).
    pub fn send(&mut self, delay: Duration, request: Request) -> Option<RequestId> {
        if !self.open {
            return None;
        }
        let id = *self.next;
        *self.next += 1;
        self.sends.push((self.now + delay, id, request));
        Some(id)
    }

    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        self.rng
    }

    /// Simulated time since the run began.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Whether clients may still send.
    pub fn open(&self) -> bool {
        self.open
    }
}

/// A kind's clients and the invariants its author states.
pub trait Workload {
    /// Sends the first requests.
    fn start(&mut self, clients: &mut Clients<'_>);

    /// Request `id` got its answer (or lost its connection).
    fn told(&mut self, clients: &mut Clients<'_>, id: RequestId, told: &Told);

    /// Checks what is durable. `quiescent`: faults have stopped, every
    /// request has been answered and nothing is left to do, so everything
    /// promised must hold.
    ///
    /// # Errors
    /// What is broken, for the failure report.
    fn check(&self, store: &Durable, quiescent: bool) -> Result<(), String>;
}

/// What a run did, for the report of many runs.
#[derive(Debug, Default, Clone)]
pub struct Coverage {
    pub events: u64,
    pub requests: u64,
    pub commits: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub phases: BTreeMap<&'static str, u64>,
    pub crashes: u64,
    pub passivations: u64,
    /// The most messages, and the most parked callers, one activation held.
    pub held: (usize, usize),
    /// Ask retries spread past their backoff's base.
    pub spread: u64,
    /// Panics the runtime logged (counted by the workload's test).
    pub panics_logged: u64,
    /// Simulated time the run took.
    pub simulated: Duration,
}

impl Coverage {
    pub fn add(&mut self, other: &Coverage) {
        self.events += other.events;
        self.requests += other.requests;
        self.commits += other.commits;
        self.crashes += other.crashes;
        self.passivations += other.passivations;
        self.spread += other.spread;
        self.panics_logged += other.panics_logged;
        self.held.0 = self.held.0.max(other.held.0);
        self.held.1 = self.held.1.max(other.held.1);
        self.simulated += other.simulated;
        for (k, v) in &other.faults {
            *self.faults.entry(k).or_default() += v;
        }
        for (k, v) in &other.phases {
            *self.phases.entry(k).or_default() += v;
        }
    }
}

/// A run that broke an invariant.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub at: Duration,
    pub what: String,
    /// The last events before the failure, when tracing.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} failed at {:?}: {}",
            self.seed, self.at, self.what
        )?;
        writeln!(f, "replay: SIM_SEED={} SIM_TRACE=1", self.seed)?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}
