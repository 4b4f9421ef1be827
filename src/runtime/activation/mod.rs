//! One activation: the actix actor that hosts a [`Core`] and carries out
//! what it decides. Every decision (what a message sees, when a batch is
//! committed, who is answered what, when to retry) is the core's; this
//! file only turns its actions into store calls, asks, replies and timers,
//! and their results back into events.
//!
//! Loads, lookups and commits run with `ctx.wait`: the mailbox waits
//! meanwhile, so messages pile up there and join the next batch. actix
//! polls spawned futures only once the mailbox is drained, which is when
//! the core hears [`Core::handle_drained`] and seals its batch.

mod io;

use std::rc::Rc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::Instrument;
use troupe_actors::{Address, Behavior, ErrorCode};

use super::core::{Action, Core, Incoming, LookupKey, Now};
use super::slot::{Retired, SlotStatus};
use super::{stats, Answer, Envelope, Runtime};

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

fn now() -> Now {
    Now {
        at: Instant::now(),
        wall: chrono::Utc::now(),
    }
}

pub struct Activation<B: Behavior> {
    core: Core<B, ReplyTx>,
    runtime: Runtime,
    status: Rc<SlotStatus>,
    shard: Recipient<Retired>,
    /// A drained event waits behind the mailbox.
    drain_queued: bool,
}

impl<B: Behavior> Actor for Activation<B> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.core.start(now());
        self.drive(ctx);
    }
}

impl<B: Behavior> Handler<Delivery> for Activation<B> {
    type Result = ();

    fn handle(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        match delivery {
            Delivery::Message(envelope) => self.receive(envelope),
            Delivery::Passivate => ctx.stop(),
        }
        self.drive(ctx);
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
        let options = runtime.options();
        let capacity = options.mailbox_capacity;
        Activation::<B>::create(move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            Self {
                core: Core::new(address, options),
                runtime,
                status,
                shard,
                drain_queued: false,
            }
        })
        .recipient()
    }

    fn receive(&mut self, envelope: Envelope) {
        // The caller stopped waiting at its deadline before the message was
        // taken, and was told it was dropped unprocessed: so it is.
        if !envelope.ticket.take() {
            stats::deadline_dropped(B::KIND);
            return self.status.done();
        }
        // Work nobody waits for any more (the client hung up) is not done.
        if envelope.abandoned() {
            stats::abandoned_dropped(B::KIND);
            let answer = Answer::error(ErrorCode::DeadlineExceeded, "the caller is gone");
            return self.reply(envelope.reply, answer);
        }
        let Some(command) = B::from_any(envelope.command) else {
            let answer = Answer::error(ErrorCode::Internal, "message routed to the wrong kind");
            return self.reply(envelope.reply, answer);
        };
        let incoming = Incoming {
            command,
            reply: envelope.reply,
            idempotency: envelope.idempotency,
            deadline: envelope.deadline.into_std(),
            span: envelope.span,
            sent_at: envelope.sent_at.into_std(),
        };
        self.core.handle_message(now(), incoming);
    }

    fn reply(&self, to: ReplyTx, answer: Answer) {
        let _ = to.send(answer);
        self.status.done();
    }

    /// Carries out everything the core asked for, then publishes whether
    /// the activation may be passivated.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Reply { to, answer } => self.reply(to, answer),
                Action::Load { fence } => self.load(fence, ctx),
                Action::Lookup(key) => self.look_up(key, ctx),
                Action::Commit {
                    commit,
                    pages,
                    span,
                    messages,
                } => {
                    let store = self.runtime.store().clone();
                    let work = io::commit(store, self.key(), commit, pages, span, messages);
                    ctx.wait(work.into_actor(self).map(|result, act, ctx| {
                        act.core.handle_committed(now(), result);
                        act.drive(ctx);
                    }));
                }
                Action::Ask {
                    id,
                    target,
                    command,
                    deadline,
                    span,
                } => {
                    // The message carries the asking step's span: the
                    // leg is handled as its child.
                    let entered = span.enter();
                    let dispatched = self.runtime.dispatch(
                        target,
                        command,
                        tokio::time::Instant::from_std(deadline),
                        None,
                    );
                    drop(entered);
                    let runtime = self.runtime.clone();
                    let work = async move {
                        match dispatched {
                            Ok(pending) => runtime.await_answer(pending, deadline.into()).await,
                            Err(answer) => answer,
                        }
                    };
                    ctx.spawn(work.instrument(span).into_actor(self).map(
                        move |answer, act, ctx| {
                            act.core.handle_answer(now(), id, answer);
                            act.drive(ctx);
                        },
                    ));
                }
                Action::Timer { at, timer } => {
                    let wait = at.saturating_duration_since(Instant::now());
                    ctx.run_later(wait, move |act, ctx| {
                        act.core.handle_timer(now(), timer);
                        act.drive(ctx);
                    });
                }
            }
        }
        if self.core.wants_flush() && !self.drain_queued {
            self.drain_queued = true;
            ctx.spawn(fut::ready(()).map(|(), act: &mut Self, ctx| {
                act.drain_queued = false;
                act.core.handle_drained(now());
                act.drive(ctx);
            }));
        }
        self.settle_down(ctx);
    }

    fn load(&mut self, fence: bool, ctx: &mut Context<Self>) {
        let work = io::load::<B>(self.runtime.store().clone(), self.key(), fence);
        ctx.wait(work.into_actor(self).map(|loaded, act, ctx| {
            act.core.set_options(act.runtime.options());
            act.core.handle_loaded(now(), loaded);
            act.drive(ctx);
        }));
    }

    fn look_up(&mut self, key: LookupKey, ctx: &mut Context<Self>) {
        let store = self.runtime.store().clone();
        let actor = self.key();
        let work = async move {
            match key {
                LookupKey::Idempotency(k) => store.idempotency(&actor, &k).await,
                LookupKey::Fact(k) => store.fact(&actor, &k).await,
            }
        };
        ctx.wait(work.into_actor(self).map(|found, act, ctx| {
            act.core.handle_looked_up(now(), found);
            act.drive(ctx);
        }));
    }

    fn key(&self) -> String {
        self.core.address().to_string()
    }

    /// Publishes whether the activation is pinned, and stops it at once
    /// when it is idle and worth nothing in memory (an account never
    /// opened, a settled transfer, a state the store could not load): such
    /// actors never wait for the idle timeout.
    fn settle_down(&mut self, ctx: &mut Context<Self>) {
        // A queued drained event needs no pin of its own: the core wants a
        // flush only with an open batch, which pins it.
        let pinned = self.core.is_pinned();
        self.status.pinned.set(pinned);
        if pinned || self.status.inflight.get() > 0 || ctx.state() != ActorState::Running {
            return;
        }
        if !self.core.is_resident() {
            self.status.retired.set(true);
            ctx.stop();
            let _ = self.shard.try_send(Retired {
                address: self.core.address().clone(),
            });
        }
    }
}
