//! One activation: an actix actor hosting one (kind, id) and its state.
//!
//! Group commit, first level: messages are handled one at a time, but their
//! changes, replies and idempotency records collect in a [`Batch`]. Once
//! the mailbox holds nothing more (actix polls spawned futures only after
//! draining the mailbox), the batch becomes one store commit, awaited with
//! `ctx.wait` so no message is handled while it is being made durable.
//! Replies leave only after the commit succeeds; if it fails they get `503`
//! and the state is reloaded, so the actor never keeps what it did not
//! persist.

use std::any::Any;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use backon::{ExponentialBuilder, Retryable};
use lru::LruCache;
use opentelemetry::trace::TraceContextExt as _;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use troupe_actors::{Address, Behavior, Effect, Env, ErrorCode, Outcome, ReplyPlan, Step};

use super::idempotency::{IdempotencyRecord, IdempotencyRequest};
use super::shard::SlotStatus;
use super::supervision::{Supervision, SupervisionEvent};
use super::{stats, Answer, Envelope, Runtime};
use crate::store::{Commit, IdempotencyWrite, Snapshot, StoreError};

/// What a shard delivers to an activation.
pub enum Delivery {
    Message(Envelope),
    /// Stop: the shard saw the activation idle and removed it.
    Passivate,
}

impl Message for Delivery {
    type Result = ();
}

type ReplyTx = oneshot::Sender<Answer>;

/// How often an activation with unfinished work retries loading its state
/// while the store is unavailable.
const LOAD_RETRY: Duration = Duration::from_millis(500);
/// Conflicting writes a fence tolerates before giving up (another instance
/// writing the same actor all the time).
const FENCE_ATTEMPTS: usize = 3;
/// Raw journal rows read for one `entries` message.
type Page = Result<Vec<Vec<u8>>, StoreError>;

/// Everything handled since the last commit.
#[derive(Default)]
struct Batch {
    dirty: bool,
    entries: Vec<(u64, Vec<u8>)>,
    idempotency: Vec<(String, IdempotencyRecord)>,
    replies: Vec<(ReplyTx, Answer)>,
    journal: Vec<(ReplyTx, u64, u32)>,
    settle: Option<Outcome>,
    effect: Option<(Effect, tracing::Span)>,
    /// The span of the first message: the commit is recorded as its child.
    span: Option<tracing::Span>,
}

impl Batch {
    fn writes(&self) -> bool {
        self.dirty || !self.idempotency.is_empty()
    }

    fn is_empty(&self) -> bool {
        !self.writes()
            && self.replies.is_empty()
            && self.journal.is_empty()
            && self.settle.is_none()
            && self.effect.is_none()
    }
}

pub struct Activation<B: Behavior> {
    address: Address,
    runtime: Runtime,
    status: Rc<SlotStatus>,
    state: B::State,
    /// Version of `state`, counting changes not yet durable.
    version: u64,
    durable_version: u64,
    loaded: bool,
    /// Boxed and absent between batches: an idle activation stays small.
    batch: Option<Box<Batch>>,
    flush_scheduled: bool,
    /// Callers answered when the behaviour settles (a transfer's `start`).
    parked: Vec<(ReplyTx, bool)>,
    idempotency: Option<Box<LruCache<String, IdempotencyRecord>>>,
    supervision: Option<Box<Supervision>>,
    /// A restart to perform, after this backoff, once the batch is flushed.
    restart: Option<Duration>,
    /// A commit's outcome is unknown: the next load must fence it off.
    fence: bool,
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
    }
}

impl<B: Behavior> Activation<B> {
    /// Starts an activation on the current arbiter.
    pub fn spawn(
        address: Address,
        runtime: Runtime,
        status: Rc<SlotStatus>,
    ) -> Recipient<Delivery> {
        let capacity = runtime.options().mailbox_capacity;
        Activation::<B>::create(move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            Self {
                address,
                runtime,
                status,
                state: B::State::default(),
                version: 0,
                durable_version: 0,
                loaded: false,
                batch: None,
                flush_scheduled: false,
                parked: Vec::new(),
                idempotency: None,
                supervision: None,
                restart: None,
                fence: false,
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
        if self.supervision.as_mut().is_some_and(|s| s.failed(now)) {
            let message = format!("{} is failing repeatedly; retry later", self.address);
            return self.respond(
                envelope.reply,
                Answer::error(ErrorCode::Unavailable, message),
            );
        }
        if !self.loaded {
            return self.load(Some(envelope), ctx);
        }
        let Some(request) = envelope.idempotency.clone() else {
            return self.process(envelope, ctx);
        };
        if let Some(record) = self.cached_record(&request.key) {
            return self.replay(envelope, &request, record);
        }
        let store = self.runtime.store().clone();
        let (actor, key) = (self.address.to_string(), request.key.clone());
        let lookup = async move { store.idempotency(&actor, &key).await };
        ctx.wait(
            lookup
                .into_actor(self)
                .map(move |found, act, ctx| match found {
                    Ok(None) => act.process(envelope, ctx),
                    Ok(Some(bytes)) => match serde_json::from_slice::<IdempotencyRecord>(&bytes) {
                        Ok(record) => {
                            act.cache().put(request.key.clone(), record.clone());
                            act.replay(envelope, &request, record);
                        }
                        Err(e) => act.respond(
                            envelope.reply,
                            Answer::error(
                                ErrorCode::Internal,
                                format!("unreadable idempotency record: {e}"),
                            ),
                        ),
                    },
                    Err(e) => act.respond(envelope.reply, unavailable(&e)),
                }),
        );
    }

    fn batch(&mut self) -> &mut Batch {
        self.batch.get_or_insert_with(Box::default)
    }

    fn cached_record(&mut self, key: &str) -> Option<IdempotencyRecord> {
        let batched = self
            .batch
            .as_ref()
            .and_then(|b| b.idempotency.iter().find(|(k, _)| k == key));
        if let Some((_, r)) = batched {
            return Some(r.clone());
        }
        self.idempotency.as_mut()?.get(key).cloned()
    }

    fn cache(&mut self) -> &mut LruCache<String, IdempotencyRecord> {
        let size = NonZeroUsize::new(self.runtime.options().idempotency_cache)
            .unwrap_or(NonZeroUsize::MIN);
        self.idempotency
            .get_or_insert_with(|| Box::new(LruCache::new(size)))
    }

    fn replay(
        &mut self,
        envelope: Envelope,
        request: &IdempotencyRequest,
        record: IdempotencyRecord,
    ) {
        let answer = if record.fingerprint == request.fingerprint {
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
        self.answer(envelope.reply, answer);
    }

    fn env(&self) -> Env {
        Env {
            id: self.address.id.clone(),
            now: chrono::Utc::now(),
            version: self.version,
        }
    }

    fn process(&mut self, envelope: Envelope, ctx: &mut Context<Self>) {
        let Some(command) = B::from_any(envelope.command) else {
            return self.respond(
                envelope.reply,
                Answer::error(ErrorCode::Internal, "message routed to the wrong kind"),
            );
        };
        let env = self.env();
        let name = B::message_name(&command);
        // Log lines written while handling carry the request's ids.
        let _request = envelope.span.enter();
        // Spans below an unsampled request would be built and thrown away.
        let sampled = envelope.span.context().span().span_context().is_sampled();
        let _span = if !sampled {
            tracing::Span::none()
        } else {
            tracing::debug_span!(
                parent: &envelope.span,
                "actor.handle",
                actor.kind = B::KIND,
                actor.id = %self.address.id,
                actor.message = name,
                mailbox.wait_us = envelope.sent_at.elapsed().as_micros() as u64,
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
                self.apply(step, Some((envelope.reply, envelope.idempotency)), ctx);
            }
            Err(panic) => {
                stats::message(B::KIND, name, ErrorCode::Internal.as_str());
                self.crashed(Some(envelope.reply), panic.as_ref(), ctx);
            }
        }
    }

    fn apply(
        &mut self,
        step: Step<B::State>,
        caller: Option<(ReplyTx, Option<IdempotencyRequest>)>,
        ctx: &mut Context<Self>,
    ) {
        if let Some(change) = step.change {
            self.state = change.state;
            self.version += 1;
            self.batch().dirty = true;
            for (seq, entry) in change.entries {
                self.batch()
                    .entries
                    .push((seq, entry.to_string().into_bytes()));
            }
        }
        if let Some(effect) = step.effects.into_iter().next() {
            // The effect's asks join the trace of the message that caused it.
            self.batch().effect = Some((effect, tracing::Span::current()));
        }
        if let Some(outcome) = step.settle {
            self.batch().settle = Some(outcome);
        }
        if let Some((reply, idempotency)) = caller {
            match step.reply {
                ReplyPlan::Now(outcome) => {
                    if let Some(request) = idempotency {
                        let record = IdempotencyRecord {
                            fingerprint: request.fingerprint,
                            outcome: outcome.clone(),
                        };
                        self.cache().put(request.key.clone(), record.clone());
                        self.batch().idempotency.push((request.key, record));
                    }
                    self.answer(
                        reply,
                        Answer {
                            outcome,
                            replayed: step.replayed,
                        },
                    );
                }
                ReplyPlan::Park => self.parked.push((reply, step.replayed)),
                ReplyPlan::Journal { after, limit } => {
                    self.batch().journal.push((reply, after, limit))
                }
            }
        }
        // The commit is recorded under the first message that writes. Reads
        // allocate no batch, and an idle actor keeps no request's span alive.
        if let Some(batch) = self.batch.as_deref_mut() {
            if batch.writes() && batch.span.is_none() {
                batch.span = Some(tracing::Span::current());
            }
        }
        self.schedule_flush(ctx);
    }

    /// Answers at once when nothing before it waits to be durable, else
    /// after the batch's commit.
    fn answer(&mut self, reply: ReplyTx, answer: Answer) {
        let waiting = self
            .batch
            .as_ref()
            .is_some_and(|b| b.writes() || !b.replies.is_empty());
        if waiting || self.flush_scheduled {
            self.batch().replies.push((reply, answer));
        } else {
            self.respond(reply, answer);
        }
    }

    fn respond(&self, reply: ReplyTx, answer: Answer) {
        let _ = reply.send(answer);
        self.status.done();
    }

    /// Flushes once the mailbox is drained: actix polls spawned futures
    /// after the mailbox, so everything already waiting joins this batch.
    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        let empty = self.batch.as_ref().is_none_or(|b| b.is_empty());
        if self.flush_scheduled || (empty && self.restart.is_none()) {
            return;
        }
        self.flush_scheduled = true;
        ctx.spawn(fut::ready(()).map(|(), act: &mut Self, ctx| act.flush(ctx)));
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        let mut batch = self.batch.take().map(|b| *b).unwrap_or_default();
        let commit = batch.writes().then(|| Commit {
            actor: self.address.to_string(),
            expected_version: self.durable_version,
            version: self.version,
            state: batch
                .dirty
                .then(|| serde_json::to_vec(&self.state).unwrap_or_default()),
            entries: std::mem::take(&mut batch.entries),
            idempotency: batch
                .idempotency
                .drain(..)
                .map(|(key, record)| IdempotencyWrite {
                    key,
                    value: serde_json::to_vec(&record).unwrap_or_default(),
                })
                .collect(),
            pending: B::is_pending(&self.state),
        });
        let pages: Vec<(u64, u32)> = batch
            .journal
            .iter()
            .map(|(_, after, limit)| (*after, *limit))
            .collect();
        let store = self.runtime.store().clone();
        let key = self.address.to_string();
        let version = self.version;
        let messages = batch.replies.len() + batch.journal.len();
        if commit.is_some() {
            stats::batch(u32::try_from(messages).unwrap_or(u32::MAX));
        }
        let span = match (&commit, batch.span.take()) {
            (Some(c), Some(parent)) if parent.context().span().span_context().is_sampled() => {
                tracing::debug_span!(parent: &parent, "store.commit", store.backend = store.backend(), batch.messages = messages, batch.entries = c.entries.len())
            }
            _ => tracing::Span::none(),
        };
        let work = async move {
            if let Some(commit) = commit {
                store.commit(commit).await?;
            }
            let mut read = Vec::with_capacity(pages.len());
            for (after, limit) in pages {
                read.push(store.entries(&key, after, limit.saturating_add(1)).await);
            }
            Ok::<_, StoreError>(read)
        }
        .instrument(span);
        ctx.wait(
            work.into_actor(self)
                .map(move |result, act, ctx| act.flushed(batch, version, result, ctx)),
        );
    }

    fn flushed(
        &mut self,
        batch: Batch,
        version: u64,
        result: Result<Vec<Page>, StoreError>,
        ctx: &mut Context<Self>,
    ) {
        match result {
            Ok(pages) => {
                self.durable_version = version;
                for (reply, answer) in batch.replies {
                    self.respond(reply, answer);
                }
                for ((reply, _, limit), page) in batch.journal.into_iter().zip(pages) {
                    let answer = match page {
                        Ok(rows) => {
                            Answer::new(Ok(troupe_actors::Reply::ok(journal_page(rows, limit))))
                        }
                        Err(e) => unavailable(&e),
                    };
                    self.respond(reply, answer);
                }
                if let Some(outcome) = batch.settle {
                    for (reply, replayed) in std::mem::take(&mut self.parked) {
                        self.respond(
                            reply,
                            Answer {
                                outcome: outcome.clone(),
                                replayed,
                            },
                        );
                    }
                }
                if let Some((effect, span)) = batch.effect {
                    self.run_effect(effect, span, ctx);
                }
            }
            Err(e) => {
                tracing::warn!(actor = %self.address, error.message = %e, "commit failed; reloading durable state");
                for (reply, _) in batch.replies {
                    self.respond(reply, unavailable(&e));
                }
                for (reply, _, _) in batch.journal {
                    self.respond(reply, unavailable(&e));
                }
                self.loaded = false;
                self.idempotency = None;
                // The commit may still land (a timed-out Redis call): fence it off.
                self.fence |= matches!(e, StoreError::Unavailable(_));
                if self.restart.is_none() {
                    self.load(None, ctx);
                }
            }
        }
        if let Some(backoff) = self.restart.take() {
            self.restart_after(backoff, ctx);
        }
    }

    /// Loads durable state, then handles `then` if it was waiting for it.
    fn load(&mut self, then: Option<Envelope>, ctx: &mut Context<Self>) {
        self.status.busy.set(true);
        let store = self.runtime.store().clone();
        let key = self.address.to_string();
        let fence = self.fence;
        let work = async move {
            let mut loaded = decode::<B>(store.load(&key).await?)?;
            if fence {
                loaded = write_fence::<B>(&*store, &key, loaded).await?;
            }
            Ok::<_, StoreError>(loaded)
        };
        ctx.wait(work.into_actor(self).map(move |loaded, act, ctx| {
            act.status.busy.set(false);
            match loaded {
                Ok((state, version)) => {
                    act.fence = false;
                    act.state = state;
                    act.version = version;
                    act.durable_version = version;
                    act.loaded = true;
                    act.idempotency = None;
                    if let Some(effect) = B::resume(&act.state, &act.env()) {
                        act.run_effect(effect, tracing::Span::none(), ctx);
                    }
                }
                Err(e) => {
                    tracing::warn!(actor = %act.address, error.message = %e, "loading state failed");
                    // Unfinished work must not wait for a client to come by:
                    // keep trying (and stay active) until the store answers.
                    if B::is_pending(&act.state) || !act.parked.is_empty() {
                        act.status.busy.set(true);
                        ctx.run_later(LOAD_RETRY, |act, ctx| {
                            if !act.loaded {
                                act.load(None, ctx);
                            }
                        });
                    }
                }
            }
            if let Some(envelope) = then {
                if act.loaded {
                    act.receive(envelope, ctx);
                } else {
                    act.respond(
                        envelope.reply,
                        Answer::error(
                            ErrorCode::Unavailable,
                            "the store is unavailable; retry later",
                        ),
                    );
                }
            }
        }));
    }

    /// Runs an ask to another actor, retrying transient failures with
    /// exponential backoff, and feeds the outcome back to the behaviour.
    fn run_effect(&mut self, effect: Effect, span: tracing::Span, ctx: &mut Context<Self>) {
        self.status.busy.set(true);
        let runtime = self.runtime.clone();
        let timeout = runtime.options().effect_timeout;
        let Effect {
            target,
            command,
            idempotency_key,
        } = effect;
        let idempotency = idempotency_key.map(|key| IdempotencyRequest::internal(key, &command));
        let attempt = move || {
            let (runtime, target, command, idempotency) = (
                runtime.clone(),
                target.clone(),
                command.clone(),
                idempotency.clone(),
            );
            async move {
                let deadline = Instant::now() + timeout;
                let answer = runtime.ask(target, command, deadline, idempotency).await;
                match &answer.outcome {
                    Err(r) if r.code.is_transient() => Err(answer),
                    _ => Ok(answer),
                }
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times();
        let work = attempt.retry(backoff).notify(|answer: &Answer, wait| {
            tracing::debug!(outcome = ?answer.outcome, ?wait, "actor-to-actor ask failed; retrying");
        });
        let origin = span.clone();
        ctx.spawn(
            work.instrument(span)
                .into_actor(self)
                .map(move |answer, act, ctx| {
                    let _entered = origin.enter();
                    act.status.busy.set(false);
                    let outcome = match answer {
                        Ok(a) | Err(a) => a.outcome,
                    };
                    act.effect_done(outcome, ctx);
                }),
        );
    }

    fn effect_done(&mut self, outcome: Outcome, ctx: &mut Context<Self>) {
        if !self.loaded || self.restart.is_some() {
            // The state this effect belonged to was reloaded; resumption re-asks.
            return;
        }
        let env = self.env();
        match catch_unwind(AssertUnwindSafe(|| {
            B::on_effect(&self.state, outcome, &env)
        })) {
            Ok(step) => self.apply(step, None, ctx),
            Err(panic) => self.crashed(None, panic.as_ref(), ctx),
        }
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
        self.restart = Some(match event {
            SupervisionEvent::Restarting { backoff, .. } => {
                stats::restarted(B::KIND);
                backoff
            }
            SupervisionEvent::GaveUp { .. } => {
                stats::failed(B::KIND);
                Duration::ZERO
            }
        });
        self.status.busy.set(true);
        self.schedule_flush(ctx);
    }

    fn restart_after(&mut self, backoff: Duration, ctx: &mut Context<Self>) {
        self.loaded = false;
        ctx.wait(
            fut::wrap_future::<_, Self>(tokio::time::sleep(backoff))
                .map(|(), act, ctx| act.load(None, ctx)),
        );
    }
}

/// After a commit whose outcome is unknown (sent, then the connection
/// timed out), a read alone cannot tell whether that commit will still
/// land. Writing back what was read at `version + 1` settles it: if the
/// late commit lands first, this write conflicts and the state is read
/// again; if this write lands first, the late commit's compare-and-set can
/// no longer succeed. Either way the state held in memory is the one that
/// stays in the store.
async fn write_fence<B: Behavior>(
    store: &dyn crate::store::Store,
    key: &str,
    mut loaded: (B::State, u64),
) -> Result<(B::State, u64), StoreError> {
    for _ in 0..FENCE_ATTEMPTS {
        let (state, version) = loaded;
        let fence = Commit {
            actor: key.to_owned(),
            expected_version: version,
            version: version + 1,
            state: Some(serde_json::to_vec(&state).unwrap_or_default()),
            pending: B::is_pending(&state),
            ..Commit::default()
        };
        match store.commit(fence).await {
            Ok(()) => return Ok((state, version + 1)),
            Err(StoreError::Conflict { .. }) => loaded = decode::<B>(store.load(key).await?)?,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable(format!(
        "{key} keeps changing under its fence; retry later"
    )))
}

fn decode<B: Behavior>(snapshot: Option<Snapshot>) -> Result<(B::State, u64), StoreError> {
    match snapshot {
        None => Ok((B::State::default(), 0)),
        Some(s) => serde_json::from_slice(&s.state)
            .map(|state| (state, s.version))
            .map_err(|e| StoreError::Corrupt(format!("state of version {}: {e}", s.version))),
    }
}

/// `{"entries": [...], "next": seq-or-null}` from `limit + 1` rows.
fn journal_page(rows: Vec<Vec<u8>>, limit: u32) -> Value {
    let mut entries: Vec<Value> = rows
        .iter()
        .filter_map(|r| serde_json::from_slice(r).ok())
        .collect();
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let next = if more {
        entries
            .last()
            .and_then(|e| e.get("seq"))
            .cloned()
            .unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    json!({ "entries": entries, "next": next })
}

fn unavailable(e: &StoreError) -> Answer {
    let message = match e {
        StoreError::Conflict { .. } => format!("{e}; retry"),
        _ => format!("{e}; retry later"),
    };
    Answer::error(ErrorCode::Unavailable, message)
}
