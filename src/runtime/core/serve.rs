//! A message's way in and its step's way out.
//!
//! In: the deadline, then the idempotency record of a client's key, then
//! the fact the command needs, each looked for in one order by
//! [`Core::recall`]: the open batch, the caches, the store. Only the store
//! is I/O; while it reads, the core serves nothing else, so nothing can
//! write the key meanwhile. Out: the step's change joins the open batch,
//! its effects leave at once, and its caller is answered once everything
//! handled before the answer is durable.

use std::panic::{catch_unwind, AssertUnwindSafe};

use opentelemetry::trace::TraceContextExt as _;
use serde_json::Value;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use troupe_actors::{Behavior, Env, ErrorCode, Rejection, ReplyPlan, Step};

use super::{unavailable, Core, Incoming, LookupKey, Now, Parked, Phase, Timer};
use crate::runtime::idempotency::{IdempotencyRecord, IdempotencyRequest};
use crate::runtime::{stats, Answer};
use crate::store::StoreError;

/// What a step's caller is: how to answer it, its idempotency request,
/// its deadline and its command when it may park.
pub(super) struct Caller<C, R> {
    pub reply: R,
    pub idempotency: Option<IdempotencyRequest>,
    pub deadline: std::time::Instant,
    pub command: Option<C>,
}

/// What [`Core::recall`] found.
enum Recall {
    Found(Vec<u8>),
    /// Neither the open batch nor the caches know: ask the store.
    Unknown,
}

fn unreadable(what: &str, e: &serde_json::Error) -> Answer {
    Answer::error(ErrorCode::Corrupt, format!("unreadable {what}: {e}"))
}

impl<B: Behavior, R> Core<B, R> {
    /// A message arrived.
    pub fn handle_message(&mut self, now: Now, incoming: Incoming<B::Command, R>) {
        if let Some(supervision) = &mut self.supervision {
            if supervision.failed(now.at) {
                let message = format!("{} is failing repeatedly; retry later", self.address);
                return self.respond(
                    incoming.reply,
                    Answer::error(ErrorCode::Unavailable, message),
                );
            }
        }
        match self.phase {
            // Nothing waits while the core is ready (`pump` saw to it).
            Phase::Ready => self.serve(now, incoming),
            _ if self.queue.len() >= self.options.mailbox_capacity => {
                let message = format!("the mailbox of {} is full; retry later", self.address);
                self.respond(
                    incoming.reply,
                    Answer::error(ErrorCode::Overloaded, message),
                );
            }
            Phase::Unloaded { .. } => {
                self.queue.push_back(incoming);
                self.load();
            }
            _ => self.queue.push_back(incoming),
        }
        self.after(now);
    }

    /// The store answered the lookup of the message at the head.
    pub fn handle_looked_up(&mut self, now: Now, found: Result<Option<Vec<u8>>, StoreError>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Ready);
        let Phase::LookingUp { incoming, key } = phase else {
            self.phase = phase;
            return;
        };
        match found {
            Err(e) => self.respond(incoming.reply, unavailable(&e)),
            Ok(found) => {
                if let Some(bytes) = &found {
                    let cached = bytes.clone().into_boxed_slice();
                    match &key {
                        LookupKey::Idempotency(k) => {
                            self.caches().idempotency.put(k.clone(), cached)
                        }
                        LookupKey::Fact(k) => self.caches().facts.put(k.clone(), cached),
                    };
                }
                self.resume_serving(now, incoming, &key, found);
            }
        }
        self.pump(now);
        self.after(now);
    }

    /// Serves waiting messages while the core is ready for them.
    pub(super) fn pump(&mut self, now: Now) {
        // First, while nothing new is in the open batch.
        self.expire_parked(now);
        self.release_answers(now);
        while matches!(self.phase, Phase::Ready) {
            let Some(incoming) = self.queue.pop_front() else {
                break;
            };
            self.serve(now, incoming);
        }
    }

    /// Serves one message from the start: its idempotency record first.
    fn serve(&mut self, now: Now, mut incoming: Incoming<B::Command, R>) {
        if now.at >= incoming.deadline {
            stats::deadline_dropped(B::KIND);
            let message = "the deadline passed while the message waited in the mailbox";
            return self.respond(
                incoming.reply,
                Answer::error(ErrorCode::DeadlineExceeded, message),
            );
        }
        // A command keyed by its actor's id (a transfer's start) binds its
        // body itself, durably: a client's key would be a second, weaker
        // binding that another body could take first.
        if B::keyed_by_id(&incoming.command) {
            incoming.idempotency = None;
        }
        match incoming.idempotency.as_ref().map(|r| r.key.clone()) {
            Some(key) => {
                let key = LookupKey::Idempotency(key);
                match self.recall(&key) {
                    Recall::Found(bytes) => self.resume_serving(now, incoming, &key, Some(bytes)),
                    Recall::Unknown => self.look_up(now, incoming, key),
                }
            }
            None => self.serve_fact(now, incoming),
        }
    }

    /// Goes on serving a message once `key` is known (`found`, or absent).
    fn resume_serving(
        &mut self,
        now: Now,
        incoming: Incoming<B::Command, R>,
        key: &LookupKey,
        found: Option<Vec<u8>>,
    ) {
        match (key, found) {
            (LookupKey::Idempotency(_), None) => self.serve_fact(now, incoming),
            (LookupKey::Idempotency(_), Some(bytes)) => {
                match serde_json::from_slice::<IdempotencyRecord>(&bytes) {
                    Ok(record) => self.replay(incoming, record),
                    Err(e) => self.respond(incoming.reply, unreadable("idempotency record", &e)),
                }
            }
            (LookupKey::Fact(_), None) => self.process(now, incoming, None),
            (LookupKey::Fact(k), Some(bytes)) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(fact) => self.process(now, incoming, Some(fact)),
                Err(e) => self.respond(incoming.reply, unreadable(&format!("fact {k}"), &e)),
            },
        }
    }

    /// The fact the command needs (a transfer leg's record), if any.
    fn serve_fact(&mut self, now: Now, incoming: Incoming<B::Command, R>) {
        let Some(key) = B::fact_key(&incoming.command).map(LookupKey::Fact) else {
            return self.process(now, incoming, None);
        };
        match self.recall(&key) {
            Recall::Found(bytes) => self.resume_serving(now, incoming, &key, Some(bytes)),
            Recall::Unknown => self.look_up(now, incoming, key),
        }
    }

    /// What this actor knows of `key` without the store: the open batch
    /// first (a copy of a message already handled and not yet durable),
    /// then the caches.
    fn recall(&mut self, key: &LookupKey) -> Recall {
        if let Some(bytes) = self.open.as_ref().and_then(|b| b.recall(key)) {
            return Recall::Found(bytes.to_vec());
        }
        let caches = self.caches();
        let cached = match key {
            LookupKey::Idempotency(k) => caches.idempotency.get(k),
            LookupKey::Fact(k) => caches.facts.get(k),
        };
        match cached {
            Some(bytes) => Recall::Found(bytes.to_vec()),
            None => Recall::Unknown,
        }
    }

    /// Asks the store for `key`. Lookups are made one at a time and the
    /// batch waits for the mailbox to drain, so a run of messages that
    /// each need one would hold the batch's callers past their deadlines:
    /// once one of them is past it, the batch is committed first and the
    /// message served again after.
    fn look_up(&mut self, now: Now, incoming: Incoming<B::Command, R>, key: LookupKey) {
        let overdue = self
            .open
            .as_ref()
            .and_then(|b| b.due)
            .is_some_and(|due| due <= now.at);
        if overdue {
            self.queue.push_front(incoming);
            return self.flush(now, None);
        }
        self.emit(super::Action::Lookup(key.clone()));
        self.phase = Phase::LookingUp { incoming, key };
    }

    fn replay(&mut self, incoming: Incoming<B::Command, R>, record: IdempotencyRecord) {
        let Some(request) = incoming.idempotency else {
            return;
        };
        let answer = if request.matches(&record) {
            Answer {
                outcome: record.outcome,
                replayed: true,
            }
        } else {
            let message = format!(
                "idempotency key {:?} was used with another request",
                request.key
            );
            Answer::error(ErrorCode::IdempotencyKeyReused, message)
        };
        self.answer(incoming.reply, answer, incoming.deadline);
    }

    pub(super) fn env(&self, now: Now, fact: Option<Value>) -> Env {
        Env {
            id: self.address.id.clone(),
            now: now.wall,
            version: self.version,
            fact,
        }
    }

    fn process(&mut self, now: Now, incoming: Incoming<B::Command, R>, fact: Option<Value>) {
        let Incoming {
            command,
            reply,
            idempotency,
            deadline,
            span,
            sent_at,
        } = incoming;
        let env = self.env(now, fact);
        let name = B::message_name(&command);
        let kept = B::may_park(&command).then(|| command.clone());
        // Log lines written while handling carry the request's ids.
        let _request = span.enter();
        // Spans below an unsampled request would be built and thrown away.
        let sampled = span.context().span().span_context().is_sampled();
        let _span = if sampled {
            tracing::debug_span!(
                parent: &span,
                "actor.handle",
                actor.kind = B::KIND.as_str(),
                actor.id = %self.address.id,
                actor.message = name,
                mailbox.wait_us = now.at.saturating_duration_since(sent_at).as_micros() as u64,
            )
        } else {
            tracing::Span::none()
        }
        .entered();
        let state = &self.state;
        match catch_unwind(AssertUnwindSafe(|| B::handle(state, command, &env))) {
            Ok(step) => {
                let outcome = match &step.reply {
                    ReplyPlan::Now(Err(r)) => r.code.as_str(),
                    _ => "ok",
                };
                stats::message(B::KIND, name, outcome);
                let caller = Caller {
                    reply,
                    idempotency,
                    deadline,
                    command: kept,
                };
                self.apply(now, step, Some(caller));
            }
            Err(panic) => {
                stats::message(B::KIND, name, ErrorCode::Internal.as_str());
                let cause = super::panic_message(panic.as_ref());
                self.crashed(now, Some((reply, deadline)), &cause);
            }
        }
    }

    /// Takes in what a handler decided: the change joins the batch, the
    /// effects are sent at once, the caller is answered, parked or queued.
    pub(super) fn apply(
        &mut self,
        now: Now,
        step: Step<B::State>,
        caller: Option<Caller<B::Command, R>>,
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
        if let Some(state) = lazy {
            self.state = state;
            self.persist_lazily(now);
        }
        if let Some(change) = change {
            self.state = change.state;
            self.version += 1;
            self.batch().dirty = true;
            for (seq, entry) in change.entries {
                let bytes = entry.to_string().into_bytes();
                self.batch().entries.push((seq, bytes));
            }
            for (key, fact) in change.facts {
                let bytes = fact.to_string().into_bytes();
                let cached = bytes.clone().into_boxed_slice();
                self.caches().facts.put(key.clone(), cached);
                self.batch().facts.push((key, bytes));
            }
        }
        // Asks leave now, in parallel with this step's commit; their answers
        // are handled only after it (see `asks`).
        self.ask_all(now, effects);
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
                self.batch().settle = Some(settle.outcome);
            }
        }
        if let Some(caller) = caller {
            self.plan(caller, plan, replayed);
        }
        // The commit is recorded under the first message that writes. Reads
        // allocate no batch, and an idle actor keeps no request's span alive.
        if let Some(batch) = self.open.as_deref_mut() {
            if batch.writes() && batch.span.is_none() {
                batch.span = Some(tracing::Span::current());
            }
        }
    }

    /// Answers, parks or queues a journal read for the step's caller.
    fn plan(&mut self, caller: Caller<B::Command, R>, plan: ReplyPlan, replayed: bool) {
        let Caller {
            reply,
            idempotency,
            deadline,
            command,
        } = caller;
        match plan {
            ReplyPlan::Now(outcome) => {
                if let Some(request) = idempotency {
                    let record = IdempotencyRecord {
                        fingerprint: request.fingerprint,
                        outcome: outcome.clone(),
                    };
                    match serde_json::to_vec(&record) {
                        Ok(bytes) => {
                            let cached = bytes.clone().into_boxed_slice();
                            self.caches().idempotency.put(request.key.clone(), cached);
                            self.batch().idempotency.push((request.key, bytes));
                        }
                        // Never acknowledged: the batch's commit is refused.
                        Err(e) => self.batch().unserialisable = Some(e),
                    }
                }
                self.answer(reply, Answer { outcome, replayed }, deadline);
            }
            ReplyPlan::Park => self.park(Parked {
                reply,
                replayed,
                deadline,
                command,
            }),
            ReplyPlan::Journal { after, limit } => {
                self.batch().journal.push((reply, after, limit));
            }
        }
    }

    /// Answers at once when nothing handled before waits to be durable,
    /// else with the open batch's commit. (A reply is held only behind a
    /// write, so a batch that holds replies writes: a journal read ahead
    /// changes nothing and holds nothing back.)
    pub(super) fn answer(&mut self, reply: R, answer: Answer, deadline: std::time::Instant) {
        match self.open.as_deref_mut() {
            Some(batch) if batch.writes() => {
                batch.due = Some(batch.due.map_or(deadline, |due| due.min(deadline)));
                batch.replies.push(super::batch::Held {
                    to: reply,
                    answer,
                    deadline,
                });
            }
            _ => self.respond(reply, answer),
        }
    }

    /// Parks a caller until the behaviour settles or its deadline passes.
    fn park(&mut self, parked: Parked<B::Command, R>) {
        // As many waiting callers as a mailbox holds messages, no more.
        if self.parked.len() >= self.options.mailbox_capacity {
            let message = format!("too many callers wait on {}; retry later", self.address);
            return self.respond(parked.reply, Answer::error(ErrorCode::Overloaded, message));
        }
        self.timer(parked.deadline, Timer::Parked);
        self.parked.push(parked);
    }

    /// Answers the parked callers whose deadline has passed. Once everything
    /// handled is durable, the work they wait for goes on without them
    /// (`202` with it, for a behaviour that says so); while a commit or a
    /// lookup is under way they wait for it (its end calls `pump`); and
    /// while the state cannot be loaded, what became of their work cannot
    /// be told.
    pub(super) fn expire_parked(&mut self, now: Now) {
        if self.parked.iter().all(|p| p.deadline > now.at) {
            return;
        }
        let told = match self.phase {
            Phase::Ready if self.open.is_none() => {
                B::in_progress(&self.state, &self.env(now, None)).unwrap_or_else(|| {
                    let message = "the deadline passed before the work finished; it goes on";
                    Err(Rejection::new(ErrorCode::DeadlineExceeded, message))
                })
            }
            Phase::Unloaded { .. } | Phase::Loading { .. } | Phase::Restarting { .. } => {
                super::commit::in_doubt().outcome
            }
            _ => return,
        };
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.deadline <= now.at);
        self.parked = waiting;
        for parked in expired {
            let answer = Answer {
                outcome: told.clone(),
                replayed: parked.replayed,
            };
            self.respond(parked.reply, answer);
        }
    }

    /// Takes in a step that answers no caller (an ask's answer); a handler
    /// that panicked goes to supervision.
    pub(super) fn handled(&mut self, now: Now, step: Result<Step<B::State>, String>) {
        match step {
            Ok(step) => self.apply(now, step, None),
            Err(cause) => self.crashed(now, None, &cause),
        }
    }
}
