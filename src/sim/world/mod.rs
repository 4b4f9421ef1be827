//! The simulated world: one event queue ordered by simulated time, the
//! activations of one simulated process, the store, the network between
//! them, crashes and restarts.
//!
//! # Layout
//! - this file: the world, its events and the loop that takes them in
//!   order;
//! - `drive`: what the simulated host of one activation does, as the actix
//!   activation does it (tickets, the drained event, actions, passivation);
//! - `io`: the simulated store's answers and faults, crashes and restarts.

mod drive;
mod io;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use troupe_actors::{Address, AnyCommand, Behavior, ErrorCode, Kind};

use super::host::{Host, Hosted};
use super::store::Durable;
use super::{Clients, Config, Coverage, Failure, ReplyTo, Request, RequestId, Told, Workload};
use crate::runtime::core::{AskId, LookupKey, Now, Timer};
use crate::runtime::{Answer, IdempotencyRequest, RuntimeOptions};
use crate::store::Commit;

type Factory = fn(Address, Arc<RuntimeOptions>, Now) -> Box<dyn Hosted>;

/// One activation of the simulated process.
struct Slot {
    host: Box<dyn Hosted>,
    incarnation: u64,
    drain_queued: bool,
    /// Messages this activation took and has not answered yet.
    taken: usize,
    /// Each ask still unanswered: the attempts sent (to check its
    /// backoff) and what it asks of whom (to find one asked twice at once).
    asks: BTreeMap<AskId, (u32, String)>,
    /// The tunables this activation was given (at its start or last load).
    options: Arc<RuntimeOptions>,
    /// After a panic: the end of the restart's backoff, before which the
    /// activation must not load.
    backoff_until: Option<Instant>,
    /// A recheck timer is set and has not fired.
    recheck: bool,
}

/// Who has the last word on a message (see `runtime::Ticket`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ticket {
    Waiting,
    Taken,
    GivenUp,
}

struct Message {
    command: AnyCommand,
    reply: ReplyTo,
    idempotency: Option<IdempotencyRequest>,
    deadline: Duration,
    ticket: u64,
    sent_at: Duration,
}

/// How a commit's call to the store ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Lands,
    /// Refused before reaching the store: not applied, and known not to be.
    FailsUnsent,
    /// Sent, no answer, never lands.
    LostUnseen,
    LandsUnseen,
    LandsLate,
}

enum Io {
    Load {
        fence: bool,
    },
    Lookup(LookupKey),
    Commit {
        commit: Option<u64>,
        pages: Vec<(u64, u32)>,
        fate: Fate,
    },
}

enum Event {
    Send {
        id: RequestId,
        request: Request,
    },
    Deliver {
        process: u32,
        address: Address,
        message: Message,
    },
    Drained {
        actor: String,
        incarnation: u64,
    },
    Io {
        actor: String,
        incarnation: u64,
        io: Io,
    },
    Answer {
        actor: String,
        incarnation: u64,
        id: AskId,
        answer: Answer,
    },
    Timer {
        actor: String,
        incarnation: u64,
        timer: Timer,
    },
    GiveUp {
        process: u32,
        ticket: u64,
        reply: ReplyTo,
    },
    Told {
        id: RequestId,
        told: Told,
    },
    Late {
        commit: u64,
    },
    Passivate {
        actor: String,
        incarnation: u64,
    },
    Wake {
        process: u32,
        address: Address,
        attempt: u32,
    },
    Crash,
    Restart,
    /// The operator changes the runtime's tunables (a live reload).
    Reload,
}

impl Event {
    fn name(&self) -> String {
        match self {
            Self::Send { id, request } => {
                format!("send #{id} {} {}", request.address, request.command.name())
            }
            Self::Deliver {
                address, message, ..
            } => format!(
                "deliver {} to {address} for {:?}",
                message.command.name(),
                message.reply
            ),
            Self::Drained { actor, .. } => format!("drained {actor}"),
            Self::Io { actor, io, .. } => match io {
                Io::Load { fence } => format!("load {actor} fence={fence}"),
                Io::Lookup(key) => format!("lookup {actor} {key:?}"),
                Io::Commit { fate, .. } => format!("commit {actor} {fate:?}"),
            },
            Self::Answer {
                actor, id, answer, ..
            } => format!(
                "answer ask {id} of {actor}: {:?}",
                answer
                    .outcome
                    .as_ref()
                    .map(|r| r.status)
                    .map_err(|r| r.code)
            ),
            Self::Timer { actor, timer, .. } => format!("timer {timer:?} of {actor}"),
            Self::GiveUp { reply, .. } => format!("deadline of {reply:?}"),
            Self::Told { id, told } => format!(
                "told #{id}: {:?}",
                match told {
                    Told::Answer(a) => format!(
                        "{:?}",
                        a.outcome.as_ref().map(|r| r.status).map_err(|r| r.code)
                    ),
                    Told::Lost => "lost".into(),
                }
            ),
            Self::Late { commit } => format!("late commit {commit}"),
            Self::Passivate { actor, .. } => format!("passivate {actor}"),
            Self::Wake {
                address, attempt, ..
            } => format!("wake {address} #{attempt}"),
            Self::Crash => "CRASH".into(),
            Self::Restart => "RESTART".into(),
            Self::Reload => "RELOAD".into(),
        }
    }
}

/// A simulated process, its store, its clients and the seed that rules them.
pub struct Simulation<W: Workload> {
    config: Config,
    rng: ChaCha8Rng,
    /// Draws the operator's reloads, apart from everything else.
    reload_rng: ChaCha8Rng,
    base: Instant,
    now: Duration,
    queue: BTreeMap<(Duration, u64), Event>,
    seq: u64,
    kinds: Vec<(Kind, Factory)>,
    hosts: BTreeMap<String, Slot>,
    store: Durable,
    /// Commits sent to the store and not yet decided.
    sent: BTreeMap<u64, Commit>,
    tickets: BTreeMap<u64, Ticket>,
    next_ticket: u64,
    /// Client requests not yet answered, by when they were sent.
    requests: BTreeMap<RequestId, Duration>,
    options: Arc<RuntimeOptions>,
    incarnations: u64,
    process: u32,
    up: bool,
    coverage: Coverage,
    workload: W,
    next_request: RequestId,
    trace: VecDeque<String>,
    /// When the store is down: every call refused.
    outages: Vec<(Duration, Duration)>,
}

/// The tunables of the simulated runtime: the service's defaults, with
/// short intervals so that retries and rechecks happen often.
pub fn options() -> RuntimeOptions {
    use crate::runtime::RestartPolicy;
    RuntimeOptions {
        // Small, so that full mailboxes and parked callers hit the bound.
        mailbox_capacity: 16,
        shard_mailbox_capacity: 1024,
        idle_timeout: Duration::from_secs(1),
        default_timeout: Duration::from_millis(500),
        max_timeout: Duration::from_secs(5),
        effect_timeout: Duration::from_millis(200),
        ask_min_backoff: Duration::from_millis(5),
        ask_max_backoff: Duration::from_millis(100),
        retry_interval: Duration::from_millis(100),
        max_activations: 10_000,
        wake_concurrency: 16,
        restart: RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(1),
            backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
        },
        idempotency_cache: 2,
    }
}

impl<W: Workload> Simulation<W> {
    pub fn new(config: Config, workload: W) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let reload_rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x7e10_ad00);
        Self {
            config,
            rng,
            reload_rng,
            base: Instant::now(),
            now: Duration::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            kinds: Vec::new(),
            hosts: BTreeMap::new(),
            store: Durable::default(),
            sent: BTreeMap::new(),
            tickets: BTreeMap::new(),
            next_ticket: 0,
            requests: BTreeMap::new(),
            options: Arc::new(options()),
            incarnations: 0,
            process: 0,
            up: true,
            coverage: Coverage::default(),
            workload,
            next_request: 0,
            trace: VecDeque::new(),
            outages: Vec::new(),
        }
    }

    /// Hosts actors of behaviour `B` with the real core.
    #[must_use]
    pub fn host<B: Behavior>(mut self) -> Self {
        self.kinds.push((B::KIND, Host::<B>::boxed));
        self
    }

    /// Replaces the runtime's tunables.
    #[must_use]
    pub fn with_options(mut self, options: RuntimeOptions) -> Self {
        self.options = Arc::new(options);
        self
    }

    /// Runs until everything has settled.
    ///
    /// # Errors
    /// The first invariant broken, with the seed that replays it.
    pub fn run(mut self) -> Result<(Coverage, W), Failure> {
        self.clients(|w, c| w.start(c));
        for _ in 0..self.config.faults.crashes {
            let at = self.rng.random_range(Duration::ZERO..self.config.active);
            self.schedule_at(at, Event::Crash);
        }
        for _ in 0..self.config.faults.outages {
            let from = self.rng.random_range(Duration::ZERO..self.config.active);
            let lasts = Duration::from_millis(self.rng.random_range(50..1_500));
            self.outages.push((from, from + lasts));
        }
        for _ in 0..self.config.faults.reloads {
            let at = self
                .reload_rng
                .random_range(Duration::ZERO..self.config.active);
            self.schedule_at(at, Event::Reload);
        }
        let limit = self.config.active + self.config.settle;
        let mut checked = 0u64;
        while let Some(((at, _), event)) = self.queue.pop_first() {
            if at > limit {
                self.queue.insert((at, 0), event);
                return Err(self.fail(format!("not settled after {limit:?}: {}", self.leftovers())));
            }
            self.now = at;
            self.coverage.events += 1;
            if self.config.trace {
                let line = format!("{:>10.3?} {}", at, event.name());
                self.trace.push_back(line);
            }
            self.handle(event)?;
            if self.coverage.events - checked >= 256 {
                checked = self.coverage.events;
                self.workload
                    .check(&self.store, false)
                    .map_err(|e| self.fail(e))?;
            }
        }
        self.coverage.simulated = self.now;
        self.coverage.commits = self.store.commits;
        if !self.requests.is_empty()
            || !self.store.pending.is_empty()
            || self
                .hosts
                .values()
                .any(|s| s.host.is_pinned() || s.taken > 0)
        {
            return Err(self.fail(format!("stopped with work left: {}", self.leftovers())));
        }
        // Memory: what the kind says is not worth keeping (a settled
        // transfer, an account never opened) has left once idle, and what
        // is worth keeping was loaded.
        let kept = self
            .hosts
            .iter()
            .filter(|(_, s)| !s.host.worth_keeping())
            .map(|(a, _)| a.clone())
            .take(5)
            .collect::<Vec<_>>();
        if !kept.is_empty() {
            return Err(self.fail(format!("kept in memory, idle and not worth it: {kept:?}")));
        }
        self.workload
            .check(&self.store, true)
            .map_err(|e| self.fail(e))?;
        Ok((self.coverage, self.workload))
    }

    fn leftovers(&self) -> String {
        let pinned: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, s)| s.host.is_pinned())
            .map(|(a, s)| format!("{a} ({})", s.host.phase()))
            .take(5)
            .collect();
        format!(
            "{} requests unanswered, pending in the store: {:?}, pinned: {pinned:?}",
            self.requests.len(),
            self.store.pending.iter().take(5).collect::<Vec<_>>()
        )
    }

    fn fail(&self, what: String) -> Failure {
        Failure {
            seed: self.config.seed,
            at: self.now,
            what,
            trace: self.trace.iter().cloned().collect(),
        }
    }

    fn faulty(&self) -> bool {
        self.now < self.config.active
    }

    /// Whether the store is down now: it answers nothing but refusals.
    fn outage(&self) -> bool {
        self.outages
            .iter()
            .any(|(from, to)| (*from..*to).contains(&self.now))
    }

    fn chance(&mut self, p: f64) -> bool {
        self.faulty() && p > 0.0 && self.rng.random_bool(p.min(1.0))
    }

    fn schedule_at(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), event);
    }

    fn schedule(&mut self, delay: Duration, event: Event) {
        self.schedule_at(self.now + delay, event);
    }

    /// Network delay: mostly well under a millisecond, sometimes more.
    fn hop(&mut self) -> Duration {
        if self.rng.random_bool(0.05) {
            Duration::from_micros(self.rng.random_range(1_000..20_000))
        } else {
            Duration::from_micros(self.rng.random_range(0..500))
        }
    }

    /// Store latency: an fsync or a round trip, sometimes a stall.
    fn disk(&mut self) -> Duration {
        if self.rng.random_bool(0.03) {
            Duration::from_micros(self.rng.random_range(10_000..300_000))
        } else {
            Duration::from_micros(self.rng.random_range(50..3_000))
        }
    }

    fn now_of(&self) -> Now {
        let wall = chrono::DateTime::from_timestamp(1_750_000_000, 0).unwrap_or_default()
            + chrono::Duration::from_std(self.now).unwrap_or_default();
        Now {
            at: self.base + self.now,
            wall,
        }
    }

    fn clients(&mut self, act: impl FnOnce(&mut W, &mut Clients<'_>)) {
        let mut sends = Vec::new();
        let mut clients = Clients {
            rng: &mut self.rng,
            now: self.now,
            open: self.now < self.config.active,
            next: &mut self.next_request,
            sends: &mut sends,
        };
        act(&mut self.workload, &mut clients);
        for (at, id, request) in sends {
            self.coverage.requests += 1;
            self.schedule_at(at, Event::Send { id, request });
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), Failure> {
        match event {
            Event::Send { id, request } => self.send(id, request),
            Event::Deliver {
                process,
                address,
                message,
            } => {
                if process == self.process && self.up {
                    self.deliver(address, message)?;
                }
            }
            Event::Drained { actor, incarnation } => {
                let now = self.now_of();
                if let Some(slot) = self.slot(&actor, incarnation) {
                    slot.drain_queued = false;
                    slot.host.drained(now);
                    self.drive(&actor)?;
                }
            }
            Event::Io {
                actor,
                incarnation,
                io,
            } => self.io_done(actor, incarnation, io)?,
            Event::Answer {
                actor,
                incarnation,
                id,
                answer,
            } => {
                let now = self.now_of();
                if let Some(slot) = self.slot(&actor, incarnation) {
                    if !matches!(&answer.outcome, Err(r) if r.code.is_transient()) {
                        slot.asks.remove(&id);
                    }
                    slot.host.answer(now, id, answer);
                    self.drive(&actor)?;
                }
            }
            Event::Timer {
                actor,
                incarnation,
                timer,
            } => {
                let now = self.now_of();
                if let Some(slot) = self.slot(&actor, incarnation) {
                    if matches!(timer, Timer::Recheck { .. }) {
                        slot.recheck = false;
                    }
                    slot.host.timer(now, timer);
                    self.drive(&actor)?;
                }
            }
            Event::GiveUp {
                process,
                ticket,
                reply,
            } => {
                if process == self.process && self.tickets.get(&ticket) == Some(&Ticket::Waiting) {
                    self.tickets.insert(ticket, Ticket::GivenUp);
                    let answer = Answer::error(ErrorCode::DeadlineExceeded, "the deadline passed");
                    self.reply(reply, answer);
                }
            }
            Event::Told { id, told } => {
                if self.requests.remove(&id).is_some() {
                    self.clients(|w, c| w.told(c, id, &told));
                }
            }
            Event::Late { commit } => {
                if let Some(commit) = self.sent.remove(&commit) {
                    let _ = self.store.apply(&commit);
                }
            }
            Event::Passivate { actor, incarnation } => {
                let idle = self
                    .slot(&actor, incarnation)
                    .is_some_and(|s| !s.host.is_pinned());
                if idle {
                    self.passivate(&actor)?;
                }
            }
            Event::Wake {
                process,
                address,
                attempt,
            } => {
                if process == self.process && self.up {
                    self.wake(address, attempt);
                }
            }
            Event::Crash => self.crash(),
            Event::Restart => self.restart(),
            Event::Reload => self.reload(),
        }
        Ok(())
    }

    fn slot(&mut self, actor: &str, incarnation: u64) -> Option<&mut Slot> {
        self.hosts
            .get_mut(actor)
            .filter(|s| s.incarnation == incarnation)
    }
}
