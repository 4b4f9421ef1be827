//! Loading durable state, restarting after a panic, and what becomes of
//! the callers parked on work when the state they waited on is reloaded.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use troupe_actors::{Behavior, ErrorCode, ReplyPlan};

use super::batch::Sealed;
use super::serve::Caller;
use super::{Action, Core, Loaded, Now, Phase, Timer};
use crate::runtime::supervision::SupervisionEvent;
use crate::runtime::{stats, Answer};
use crate::store::StoreError;

/// The answer to a caller whose message was handled from a state thrown
/// away before its change was durable.
fn lost() -> Answer {
    Answer::error(
        ErrorCode::Unavailable,
        "the work this request started was lost before it was durable; retry",
    )
}

impl<B: Behavior, R> Core<B, R> {
    /// Starts loading, fencing first when a commit's outcome is unknown.
    pub(super) fn load(&mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Ready);
        let doubt = match phase {
            Phase::Unloaded { doubt } | Phase::Restarting { doubt } => doubt,
            other => {
                self.phase = other;
                return;
            }
        };
        self.emit(Action::Load {
            fence: doubt.is_some(),
        });
        self.phase = Phase::Loading { doubt };
    }

    /// The store answered the load.
    pub fn handle_loaded(&mut self, now: Now, loaded: Result<Loaded<B::State>, StoreError>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Ready);
        let Phase::Loading { doubt } = phase else {
            self.phase = phase;
            return;
        };
        match loaded {
            Ok(Loaded {
                state,
                version,
                found,
                digest,
            }) => {
                self.durable_pending = B::is_pending(&state);
                self.state = state;
                self.version = version;
                self.durable_version = version;
                self.epoch = self.epoch.wrapping_add(1);
                self.caches = None;
                self.asks.clear();
                if let Some(doubt) = doubt {
                    self.settle_doubt(doubt, found, digest);
                }
                // The work the loaded state holds resumes first, so that a
                // parked caller's command finds it going on rather than
                // starting it a second time beside it.
                let resumed = B::resume(&self.state, &self.env(now, None));
                self.ask_all(now, resumed);
                let other_writer = std::mem::take(&mut self.conflicted);
                self.reconcile_parked(now, other_writer);
                self.pump(now);
            }
            Err(e) => {
                tracing::warn!(actor = %self.address, error.message = %e, "loading state failed");
                // What pins an unloaded actor (see `is_pinned`).
                let retry = doubt.is_some() || self.durable_pending || !self.parked.is_empty();
                self.phase = Phase::Unloaded { doubt };
                for incoming in std::mem::take(&mut self.queue) {
                    let message = "the store is unavailable; retry later";
                    self.respond(
                        incoming.reply,
                        Answer::error(ErrorCode::Unavailable, message),
                    );
                }
                // Parked callers past their deadline are not kept waiting
                // for a store that does not answer.
                self.expire_parked(now);
                // Unfinished work, parked callers and a commit of unknown
                // outcome must not wait for a client to come by.
                if retry {
                    self.timer(now.at + self.options.retry_interval, Timer::Reload);
                }
            }
        }
        self.after(now);
    }

    /// Throws the in-memory state away (keeping it only to remember
    /// whether it had unfinished work): answers to asks made from it are
    /// dropped from now on, and what the open batch held was never durable.
    pub(super) fn unload(&mut self, doubt: Option<Sealed<R>>) {
        if let Some(batch) = self.open.take() {
            for held in batch.replies {
                self.respond(held.to, lost());
            }
            for (reply, _, _) in batch.journal {
                self.respond(reply, lost());
            }
        }
        self.phase = Phase::Unloaded { doubt };
        // A lazy change is redone by resuming (that is what makes it lazy).
        self.lazy = false;
        self.caches = None;
        self.asks.clear();
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// Throws the state away and reloads it once `backoff` has passed.
    pub(super) fn restart_after(&mut self, now: Now, backoff: Duration, doubt: Option<Sealed<R>>) {
        self.unload(doubt);
        let Phase::Unloaded { doubt } = std::mem::replace(&mut self.phase, Phase::Ready) else {
            return;
        };
        self.phase = Phase::Restarting { doubt };
        self.timer(now.at + backoff, Timer::Restart);
    }

    /// Contains a panic: the message that caused it gets `500`, what the
    /// batch already holds is still committed, then the state is reloaded.
    pub(super) fn crashed(
        &mut self,
        now: Now,
        caller: Option<(R, std::time::Instant)>,
        cause: &str,
    ) {
        let policy = self.options.restart;
        let event = self
            .supervision
            .get_or_insert_with(Box::default)
            .on_panic(now.at, &policy);
        tracing::error!(actor = %self.address, error.message = %cause, event = ?event, "actor panicked");
        if let Some((reply, deadline)) = caller {
            let message = format!(
                "{} crashed while handling this message; it restarts from its last durable state",
                self.address
            );
            self.answer(reply, Answer::error(ErrorCode::Internal, message), deadline);
        }
        let backoff = match event {
            SupervisionEvent::Restarting { backoff, .. } => {
                stats::restarted(B::KIND);
                backoff
            }
            // Refusing messages for a window, it reloads after the longest
            // backoff: a state that panics at once is not reloaded in a loop.
            SupervisionEvent::GaveUp { .. } => {
                stats::failed(B::KIND);
                policy.max_backoff
            }
        };
        if self.open.is_some() {
            self.flush(now, Some(backoff));
        } else {
            self.restart_after(now, backoff, None);
        }
    }

    /// After a reload, hands every parked caller's command to the reloaded
    /// state again. A command that finds its work settled is answered, one
    /// that finds it pending stays parked, and one that finds nothing (the
    /// work's own record was never durable, though what it asked of others
    /// may have been) starts it again for the caller who is still waiting:
    /// what it asked of others is deduplicated there, so nothing is done
    /// twice, and nothing the caller was promised is left half done.
    ///
    /// Re-handled, a command that finds its own work looks like a replay:
    /// it is one only when the reload followed a version conflict, whose
    /// work is another writer's. After a refused commit or a fence, the
    /// work found is the caller's own (the simulator found a transfer sent
    /// once told it was replayed after a refused commit).
    fn reconcile_parked(&mut self, now: Now, other_writer: bool) {
        let env = self.env(now, None);
        for mut parked in std::mem::take(&mut self.parked) {
            let Some(command) = parked.command.take() else {
                self.respond(parked.reply, lost());
                continue;
            };
            let kept = command.clone();
            let state = &self.state;
            let step = match catch_unwind(AssertUnwindSafe(|| B::handle(state, command, &env))) {
                Ok(step) => step,
                Err(_) => {
                    self.respond(parked.reply, lost());
                    continue;
                }
            };
            if step.change.is_some() || !step.effects.is_empty() {
                let caller = Caller {
                    reply: parked.reply,
                    idempotency: None,
                    deadline: parked.deadline,
                    command: Some(kept),
                };
                self.apply(now, step, Some(caller));
                continue;
            }
            parked.replayed |= step.replayed && other_writer;
            match step.reply {
                ReplyPlan::Now(outcome) => {
                    let answer = Answer {
                        outcome,
                        replayed: parked.replayed,
                    };
                    self.respond(parked.reply, answer);
                }
                ReplyPlan::Park => {
                    parked.command = Some(kept);
                    self.parked.push(parked);
                }
                ReplyPlan::Journal { .. } => self.respond(parked.reply, lost()),
            }
        }
    }
}
