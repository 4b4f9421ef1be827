//! One activation: an actix actor hosting one (kind, id) and its state.
//!
//! # Layout
//! - this file: the actor, its [`Phase`] and its message loop: receive,
//!   look up the idempotency record and the fact the command needs, handle,
//!   apply the step;
//! - [`batch`]: group commit, first level: what handled messages wait for;
//! - [`flush`]: turning the batch into one commit and answering after it;
//! - [`recovery`]: loading, fencing, restarting from durable state, and
//!   passivating once nothing is left to do;
//! - [`asks`]: effects, asks to other actors with retry, tagged with the
//!   epoch of the state that made them.
//!
//! Replies leave only after the changes before them are durable; if a
//! commit fails they get `503` and the state is reloaded, so an actor never
//! keeps what it did not persist.

mod asks;
mod batch;
mod flush;
mod recovery;

use std::any::Any;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use lru::LruCache;
use opentelemetry::trace::TraceContextExt as _;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use troupe_actors::{Address, Behavior, Env, ErrorCode, ReplyPlan, Step};

use super::idempotency::{IdempotencyRecord, IdempotencyRequest};
use super::shard::{Retired, SlotStatus};
use super::supervision::{Supervision, SupervisionEvent};
use super::{stats, Answer, Envelope, Runtime};
use batch::Batcher;

/// What a shard delivers to an activation. Messages travel unboxed: a
/// box would cost an allocation per message, and `Passivate` is rare.
#[allow(clippy::large_enum_variant)]
pub enum Delivery {
    Message(Envelope),
    /// Stop: the shard saw the activation idle and removed it.
    Passivate,
}

impl Message for Delivery {
    type Result = ();
}

type ReplyTx = oneshot::Sender<Answer>;

/// Who waits for a handled message: the reply, the client's idempotency
/// request, the deadline, and the command when it may park.
type Caller<C> = (ReplyTx, Option<IdempotencyRequest>, Instant, Option<C>);

/// The answer to a message whose stored record cannot be decoded.
fn unreadable(what: &str, e: &serde_json::Error) -> Answer {
    Answer::error(ErrorCode::Internal, format!("unreadable {what}: {e}"))
}

/// The answer to a caller whose work was lost before it became durable.
fn lost() -> Answer {
    Answer::error(
        ErrorCode::Unavailable,
        "the work this request started was lost before it was durable; retry",
    )
}

/// Where an activation stands; exactly one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No usable state in memory: not loaded yet, or thrown away after a
    /// failed commit. `fence`: a commit's outcome is unknown, and the next
    /// load must settle it before trusting what it reads.
    Unloaded { fence: bool },
    /// A load is under way (the mailbox waits).
    Loading,
    /// After a crash: the state is thrown away and reloads once the
    /// restart backoff has passed (the mailbox waits).
    Restarting { fence: bool },
    /// The state is the durable one plus the open batch.
    Ready,
    /// A handler panicked: once the batch is flushed, the state is thrown
    /// away and reloaded after `backoff`.
    Crashed { backoff: Duration },
}

impl Phase {
    fn is_loaded(self) -> bool {
        matches!(self, Self::Ready | Self::Crashed { .. })
    }
}

/// A caller waiting for the behaviour to settle (a transfer's `start`),
/// with the command it sent.
struct Parked<C> {
    reply: ReplyTx,
    replayed: bool,
    deadline: Instant,
    command: Option<C>,
}

/// What an activation remembers of recent keyed lookups, as the bytes
/// the store holds: a few hundred bytes an entry where the decoded JSON
/// took several times that (every map entry its own allocation), for a
/// parse of those bytes on a hit.
struct Caches {
    idempotency: LruCache<String, Box<[u8]>>,
    facts: LruCache<String, Box<[u8]>>,
}

pub struct Activation<B: Behavior> {
    address: Address,
    runtime: Runtime,
    status: Rc<SlotStatus>,
    shard: Recipient<Retired>,
    state: B::State,
    /// Version of `state`, counting changes not yet durable.
    version: u64,
    phase: Phase,
    batch: Batcher,
    parked: Vec<Parked<B::Command>>,
    caches: Option<Box<Caches>>,
    supervision: Option<Box<Supervision>>,
    /// Bumped whenever the state is thrown away or reloaded: answers to
    /// asks made under another epoch are stale and dropped.
    epoch: Rc<std::cell::Cell<u32>>,
    asks_in_flight: u32,
    /// Answers that arrived before the commit of the step that asked:
    /// (tag, outcome, generation that must be durable first).
    deferred: Vec<(String, troupe_actors::Outcome, u64)>,
    /// A timer will resume unfinished work that nothing drives.
    recheck_scheduled: bool,
    /// The state holds a lazy change not yet written (see `Step::lazy`).
    lazy: bool,
}

/// A message whose command is this kind's.
struct Incoming<C> {
    command: C,
    reply: ReplyTx,
    idempotency: Option<IdempotencyRequest>,
    span: tracing::Span,
    sent_at: Instant,
    deadline: Instant,
}

impl<B: Behavior> Actor for Activation<B> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load(None, ctx);
    }
}

impl<B: Behavior> Handler<Delivery> for Activation<B> {
    type Result = ();

    fn handle(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        match delivery {
            Delivery::Message(envelope) => self.receive(envelope, ctx),
            Delivery::Passivate => ctx.stop(),
        }
        self.settle_down(ctx);
    }
}

impl<B: Behavior> Activation<B> {
    /// Starts an activation on the current arbiter.
    pub fn spawn(
        address: Address,
        runtime: Runtime,
        status: Rc<SlotStatus>,
        shard: Recipient<Retired>,
    ) -> Recipient<Delivery> {
        let capacity = runtime.options().mailbox_capacity;
        Activation::<B>::create(move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            Self {
                address,
                runtime,
                status,
                shard,
                state: B::State::default(),
                version: 0,
                phase: Phase::Unloaded { fence: false },
                batch: Batcher::default(),
                parked: Vec::new(),
                caches: None,
                supervision: None,
                epoch: Rc::default(),
                asks_in_flight: 0,
                deferred: Vec::new(),
                recheck_scheduled: false,
                lazy: false,
            }
        })
        .recipient()
    }

    fn receive(&mut self, envelope: Envelope, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if now >= envelope.deadline {
            stats::deadline_dropped(B::KIND);
            return self.respond(
                envelope.reply,
                Answer::error(
                    ErrorCode::DeadlineExceeded,
                    "the deadline passed while the message waited in the mailbox",
                ),
            );
        }
        // Work nobody waits for any more is not done.
        if envelope.abandoned() {
            stats::abandoned_dropped(B::KIND);
            return self.respond(
                envelope.reply,
                Answer::error(ErrorCode::DeadlineExceeded, "the caller is gone"),
            );
        }
        if self.supervision.as_mut().is_some_and(|s| s.failed(now)) {
            let message = format!("{} is failing repeatedly; retry later", self.address);
            return self.respond(
                envelope.reply,
                Answer::error(ErrorCode::Unavailable, message),
            );
        }
        if !self.phase.is_loaded() {
            return self.load(Some(envelope), ctx);
        }
        let Some(command) = B::from_any(envelope.command) else {
            return self.respond(
                envelope.reply,
                Answer::error(ErrorCode::Internal, "message routed to the wrong kind"),
            );
        };
        // A command keyed by its actor's id (a transfer's start) binds its
        // body itself, durably: a client's key would be a second, weaker
        // binding that another body could take first.
        let idempotency = envelope.idempotency.filter(|_| !B::keyed_by_id(&command));
        let incoming = Incoming {
            command,
            reply: envelope.reply,
            idempotency,
            span: envelope.span,
            sent_at: envelope.sent_at,
            deadline: envelope.deadline,
        };
        let Some(request) = incoming.idempotency.clone() else {
            return self.look_up_fact(incoming, ctx);
        };
        let cached = self.caches.as_mut().and_then(|c| {
            c.idempotency
                .get(&request.key)
                .map(|bytes| serde_json::from_slice::<IdempotencyRecord>(bytes))
        });
        if let Some(decoded) = cached {
            return match decoded {
                Ok(record) => self.replay(incoming.reply, &request, record),
                Err(e) => self.respond(incoming.reply, unreadable("idempotency record", &e)),
            };
        }
        let store = self.runtime.store().clone();
        let (actor, key) = (self.address.to_string(), request.key.clone());
        let lookup = async move { store.idempotency(&actor, &key).await };
        ctx.wait(lookup.into_actor(self).map(move |found, act, ctx| {
            match found {
                Ok(None) => act.look_up_fact(incoming, ctx),
                Ok(Some(bytes)) => match serde_json::from_slice::<IdempotencyRecord>(&bytes) {
                    Ok(record) => {
                        act.caches()
                            .idempotency
                            .put(request.key.clone(), bytes.into_boxed_slice());
                        act.replay(incoming.reply, &request, record);
                    }
                    Err(e) => act.respond(incoming.reply, unreadable("idempotency record", &e)),
                },
                Err(e) => act.respond(incoming.reply, flush::unavailable(&e)),
            }
            act.settle_down(ctx);
        }));
    }

    /// Reads the fact the command needs (a transfer leg's record), from
    /// memory when this activation wrote or read it, else from the store.
    fn look_up_fact(&mut self, incoming: Incoming<B::Command>, ctx: &mut Context<Self>) {
        let Some(key) = B::fact_key(&incoming.command) else {
            return self.process(incoming, None, ctx);
        };
        let cached = self.caches.as_mut().and_then(|c| {
            c.facts
                .get(&key)
                .map(|bytes| serde_json::from_slice::<Value>(bytes))
        });
        if let Some(decoded) = cached {
            return match decoded {
                Ok(fact) => self.process(incoming, Some(fact), ctx),
                Err(e) => self.respond(incoming.reply, unreadable(&format!("fact {key}"), &e)),
            };
        }
        let store = self.runtime.store().clone();
        let actor = self.address.to_string();
        let lookup = async move { store.fact(&actor, &key).await.map(|f| (key, f)) };
        ctx.wait(lookup.into_actor(self).map(move |found, act, ctx| {
            match found {
                Ok((_, None)) => act.process(incoming, None, ctx),
                Ok((key, Some(bytes))) => match serde_json::from_slice::<Value>(&bytes) {
                    Ok(fact) => {
                        act.caches().facts.put(key, bytes.into_boxed_slice());
                        act.process(incoming, Some(fact), ctx);
                    }
                    Err(e) => {
                        act.respond(incoming.reply, unreadable(&format!("fact {key}"), &e));
                    }
                },
                Err(e) => act.respond(incoming.reply, flush::unavailable(&e)),
            }
            act.settle_down(ctx);
        }));
    }

    fn caches(&mut self) -> &mut Caches {
        let size = NonZeroUsize::new(self.runtime.options().idempotency_cache)
            .unwrap_or(NonZeroUsize::MIN);
        self.caches.get_or_insert_with(|| {
            Box::new(Caches {
                idempotency: LruCache::new(size),
                facts: LruCache::new(size),
            })
        })
    }

    fn replay(&mut self, reply: ReplyTx, request: &IdempotencyRequest, record: IdempotencyRecord) {
        let answer = if request.matches(&record) {
            Answer {
                outcome: record.outcome,
                replayed: true,
            }
        } else {
            Answer::error(
                ErrorCode::IdempotencyKeyReused,
                format!(
                    "idempotency key {:?} was used with another request",
                    request.key
                ),
            )
        };
        self.answer(reply, answer);
    }

    fn env(&self, fact: Option<Value>) -> Env {
        Env {
            id: self.address.id.clone(),
            now: chrono::Utc::now(),
            version: self.version,
            fact,
        }
    }

    fn process(
        &mut self,
        incoming: Incoming<B::Command>,
        fact: Option<Value>,
        ctx: &mut Context<Self>,
    ) {
        let Incoming {
            command,
            reply,
            idempotency,
            span,
            sent_at,
            deadline,
        } = incoming;
        let env = self.env(fact);
        let name = B::message_name(&command);
        let kept = B::may_park(&command).then(|| command.clone());
        // Log lines written while handling carry the request's ids.
        let _request = span.enter();
        // Spans below an unsampled request would be built and thrown away.
        let sampled = span.context().span().span_context().is_sampled();
        let _span = if !sampled {
            tracing::Span::none()
        } else {
            tracing::debug_span!(
                parent: &span,
                "actor.handle",
                actor.kind = B::KIND.as_str(),
                actor.id = %self.address.id,
                actor.message = name,
                mailbox.wait_us = sent_at.elapsed().as_micros() as u64,
            )
        }
        .entered();
        match catch_unwind(AssertUnwindSafe(|| B::handle(&self.state, command, &env))) {
            Ok(step) => {
                let outcome = match &step.reply {
                    ReplyPlan::Now(Err(r)) => r.code.as_str(),
                    _ => "ok",
                };
                stats::message(B::KIND, name, outcome);
                self.apply(step, Some((reply, idempotency, deadline, kept)), ctx);
            }
            Err(panic) => {
                stats::message(B::KIND, name, ErrorCode::Internal.as_str());
                self.crashed(Some(reply), panic.as_ref(), ctx);
            }
        }
    }

    /// Takes in what a handler decided: the change joins the batch, the
    /// effects are sent at once, the caller is answered, parked or queued.
    fn apply(
        &mut self,
        step: Step<B::State>,
        caller: Option<Caller<B::Command>>,
        ctx: &mut Context<Self>,
    ) {
        let Step {
            reply: plan,
            change,
            effects,
            settle,
            replayed,
            memo,
            lazy,
        } = step;
        if let Some(state) = memo {
            self.state = state;
        }
        debug_assert!(
            lazy.is_none() || change.is_none(),
            "a step is either lazy or a change"
        );
        if let Some(state) = lazy {
            self.state = state;
            self.persist_lazily(ctx);
        }
        if let Some(change) = change {
            self.state = change.state;
            self.version += 1;
            self.batch.open().dirty = true;
            for (seq, entry) in change.entries {
                let bytes = entry.to_string().into_bytes();
                self.batch.open().entries.push((seq, bytes));
            }
            for (key, fact) in change.facts {
                let bytes = fact.to_string().into_bytes();
                self.caches()
                    .facts
                    .put(key.clone(), bytes.clone().into_boxed_slice());
                self.batch.open().facts.push((key, bytes));
            }
        }
        // Asks leave now, in parallel with this step's commit; their answers
        // are handled only after it (see `asks`).
        self.ask_all(effects, ctx);
        if let Some(settle) = settle {
            if settle.early {
                for parked in std::mem::take(&mut self.parked) {
                    let answer = Answer {
                        outcome: settle.outcome.clone(),
                        replayed: parked.replayed,
                    };
                    self.respond(parked.reply, answer);
                }
            } else {
                self.batch.open().settle = Some(settle.outcome);
            }
        }
        if let Some((reply, idempotency, deadline, command)) = caller {
            match plan {
                ReplyPlan::Now(outcome) => {
                    if let Some(request) = idempotency {
                        let record = IdempotencyRecord {
                            fingerprint: request.fingerprint,
                            outcome: outcome.clone(),
                        };
                        match serde_json::to_vec(&record) {
                            Ok(bytes) => {
                                self.caches()
                                    .idempotency
                                    .put(request.key.clone(), bytes.clone().into_boxed_slice());
                                self.batch.open().idempotency.push((request.key, bytes));
                            }
                            // Never acknowledged: the batch's commit is refused.
                            Err(e) => self.batch.open().unserialisable = Some(e),
                        }
                    }
                    self.answer(reply, Answer { outcome, replayed });
                }
                ReplyPlan::Park => self.park(
                    Parked {
                        reply,
                        replayed,
                        deadline,
                        command,
                    },
                    ctx,
                ),
                ReplyPlan::Journal { after, limit } => {
                    self.batch.open().journal.push((reply, after, limit));
                }
            }
        }
        // The commit is recorded under the first message that writes. Reads
        // allocate no batch, and an idle actor keeps no request's span alive.
        if let Some(batch) = self.batch.get_mut() {
            if batch.writes() && batch.span.is_none() {
                batch.span = Some(tracing::Span::current());
            }
        }
        self.schedule_flush(ctx);
    }

    /// Parks a caller until the behaviour settles or its deadline passes,
    /// whichever comes first: a caller gone is answered `504` and forgotten.
    fn park(&mut self, parked: Parked<B::Command>, ctx: &mut Context<Self>) {
        // As many waiting callers as a mailbox holds messages, no more.
        if self.parked.len() >= self.runtime.options().mailbox_capacity {
            return self.respond(
                parked.reply,
                Answer::error(
                    ErrorCode::Overloaded,
                    format!("too many callers wait on {}; retry later", self.address),
                ),
            );
        }
        let wait = parked.deadline.saturating_duration_since(Instant::now());
        self.parked.push(parked);
        ctx.run_later(wait, |act, ctx| {
            let now = Instant::now();
            let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut act.parked)
                .into_iter()
                .partition(|p| p.deadline <= now || p.reply.is_closed());
            act.parked = waiting;
            for parked in expired {
                act.respond(
                    parked.reply,
                    Answer::error(
                        ErrorCode::DeadlineExceeded,
                        "the deadline passed before the work finished; it goes on",
                    ),
                );
            }
            act.settle_down(ctx);
        });
    }

    /// After a reload, hands every parked caller's command to the reloaded
    /// state again and answers what it says: the settled outcome, a refusal
    /// when the id now holds another body, or stays parked while its work
    /// is still pending. A command that would start work anew (the work it
    /// parked on was lost before it was durable) is answered `503`: the
    /// client retries, with whatever body it means.
    ///
    /// `fenced`: the reload followed a commit of unknown outcome, so work
    /// found in the reloaded state may be a parked caller's own (its commit
    /// landed); after a conflict, another writer's.
    fn reconcile_parked(&mut self, fenced: bool) {
        let env = self.env(None);
        for mut parked in std::mem::take(&mut self.parked) {
            let Some(command) = parked.command.clone() else {
                self.respond(parked.reply, lost());
                continue;
            };
            let step = catch_unwind(AssertUnwindSafe(|| B::handle(&self.state, command, &env)));
            match step {
                Ok(step) if step.change.is_none() && step.effects.is_empty() => {
                    // Re-handled, a command that finds its own work looks
                    // like a replay: it is one only if another request
                    // did that work.
                    parked.replayed |= step.replayed && !fenced;
                    match step.reply {
                        ReplyPlan::Now(outcome) => self.respond(
                            parked.reply,
                            Answer {
                                outcome,
                                replayed: parked.replayed,
                            },
                        ),
                        ReplyPlan::Park => self.parked.push(parked),
                        ReplyPlan::Journal { .. } => self.respond(parked.reply, lost()),
                    }
                }
                _ => self.respond(parked.reply, lost()),
            }
        }
    }

    /// Answers at once when nothing before it waits to be durable, else
    /// after the batch's commit.
    fn answer(&mut self, reply: ReplyTx, answer: Answer) {
        if self.batch.holds_replies() {
            self.batch.open().replies.push((reply, answer));
        } else {
            self.respond(reply, answer);
        }
    }

    fn respond(&self, reply: ReplyTx, answer: Answer) {
        let _ = reply.send(answer);
        self.status.done();
    }

    /// Contains a panic: the message that caused it gets `500`, what the
    /// batch already holds is still committed, then the state is reloaded.
    fn crashed(
        &mut self,
        reply: Option<ReplyTx>,
        panic: &(dyn Any + Send),
        ctx: &mut Context<Self>,
    ) {
        let cause = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let policy = self.runtime.options().restart;
        let event = self
            .supervision
            .get_or_insert_with(Box::default)
            .on_panic(Instant::now(), &policy);
        tracing::error!(actor = %self.address, error.message = %cause, event = ?event, "actor panicked");
        if let Some(reply) = reply {
            let message = format!(
                "{} crashed while handling this message; it restarts from its last durable state",
                self.address
            );
            self.answer(reply, Answer::error(ErrorCode::Internal, message));
        }
        let backoff = match event {
            SupervisionEvent::Restarting { backoff, .. } => {
                stats::restarted(B::KIND);
                backoff
            }
            SupervisionEvent::GaveUp { .. } => {
                stats::failed(B::KIND);
                Duration::ZERO
            }
        };
        self.phase = Phase::Crashed { backoff };
        self.schedule_flush(ctx);
    }
}
