//! Effects: asks to other actors, retried while they fail transiently.
//!
//! An ask leaves as soon as the step that made it is handled, in parallel
//! with that step's commit: a transfer's pending record and its debit are
//! written at the same time. Its answer is handled only once that commit is
//! durable: every ask records the batch generation it needs, and an answer
//! that arrives earlier waits (in `deferred`) until that generation's commit
//! succeeds. Every ask also carries the epoch of the state that made it; an
//! answer that comes back after the state was thrown away or reloaded is
//! stale and dropped, and no attempt of a stale ask is sent any more.

use std::panic::{catch_unwind, AssertUnwindSafe};

use actix::prelude::*;
use backon::{ExponentialBuilder, Retryable};
use tokio::time::Instant;
use tracing::Instrument;
use troupe_actors::{Behavior, Effect, Outcome};

use super::{Activation, Phase};
use crate::runtime::Answer;

fn transient(answer: &Answer) -> bool {
    matches!(&answer.outcome, Err(r) if r.code.is_transient())
}

impl<B: Behavior> Activation<B> {
    /// Sends every effect now.
    pub(super) fn ask_all(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            self.ask(effect, ctx);
        }
    }

    fn ask(&mut self, effect: Effect, ctx: &mut Context<Self>) {
        let Effect {
            target,
            command,
            tag,
        } = effect;
        let options = self.runtime.options();
        let (timeout, min, max) = (
            options.effect_timeout,
            options.ask_min_backoff,
            options.ask_max_backoff,
        );
        // The first attempt is routed right away, before this step's commit.
        let deadline = Instant::now() + timeout;
        let first = self
            .runtime
            .dispatch(target.clone(), command.clone(), deadline, None);
        let runtime = self.runtime.clone();
        let epoch = self.epoch.get();
        let needs = self.batch.needed_for_ask();
        let live = self.epoch.clone();
        let still_live = live.clone();
        let work = async move {
            let answer = match first {
                Ok(rx) => runtime.await_answer(rx, deadline).await,
                Err(answer) => answer,
            };
            if !transient(&answer) {
                return answer;
            }
            let attempt = || {
                let (runtime, target, command) = (runtime.clone(), target.clone(), command.clone());
                let stale = still_live.get() != epoch;
                async move {
                    if stale {
                        // The state that made this ask is gone: send nothing.
                        return Ok(Answer::error(
                            troupe_actors::ErrorCode::Unavailable,
                            "stale ask",
                        ));
                    }
                    let deadline = Instant::now() + timeout;
                    let answer = runtime.ask_internal(target, command, deadline).await;
                    if transient(&answer) {
                        Err(answer)
                    } else {
                        Ok(answer)
                    }
                }
            };
            let backoff = ExponentialBuilder::default()
                .with_min_delay(min)
                .with_max_delay(max)
                .with_jitter()
                .without_max_times();
            tokio::time::sleep(min).await;
            let retried = attempt
                .retry(backoff)
                // An ask of a state since thrown away is not retried.
                .when(move |_| live.get() == epoch)
                .notify(|answer: &Answer, wait| {
                    tracing::debug!(outcome = ?answer.outcome, ?wait, "actor-to-actor ask failed; retrying");
                })
                .await;
            match retried {
                Ok(answer) | Err(answer) => answer,
            }
        };
        self.asks_in_flight += 1;
        let span = tracing::Span::current();
        let origin = span.clone();
        ctx.spawn(
            work.instrument(span)
                .into_actor(self)
                .map(move |answer, act, ctx| {
                    let _entered = origin.enter();
                    act.asks_in_flight -= 1;
                    if act.epoch.get() == epoch && act.phase == Phase::Ready {
                        if act.batch.durable_generation >= needs {
                            act.answered(&tag, answer.outcome, ctx);
                        } else {
                            act.deferred.push((tag, answer.outcome, needs));
                        }
                    }
                    act.settle_down(ctx);
                    act.recheck_later(ctx);
                }),
        );
    }

    /// Hands over the deferred answers whose step is now durable.
    pub(super) fn release_answers(&mut self, ctx: &mut Context<Self>) {
        let durable = self.batch.durable_generation;
        if self.deferred.iter().all(|(_, _, needs)| *needs > durable) {
            return;
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|(_, _, needs)| *needs <= durable);
        self.deferred = waiting;
        for (tag, outcome, _) in ready {
            if self.phase == Phase::Ready {
                self.answered(&tag, outcome, ctx);
            }
        }
    }

    fn answered(&mut self, tag: &str, outcome: Outcome, ctx: &mut Context<Self>) {
        let env = self.env(None);
        match catch_unwind(AssertUnwindSafe(|| {
            B::on_effect(&self.state, tag, outcome, &env)
        })) {
            Ok(step) => self.apply(step, None, ctx),
            Err(panic) => self.crashed(None, panic.as_ref(), ctx),
        }
    }

    /// Unfinished work that nothing is driving (every ask answered, yet
    /// the state is still pending) is resumed again after a while, for as
    /// long as it stays unfinished: it is never dropped.
    pub(super) fn recheck_later(&mut self, ctx: &mut Context<Self>) {
        if self.recheck_scheduled || self.asks_in_flight > 0 || !B::is_pending(&self.state) {
            return;
        }
        self.recheck_scheduled = true;
        let epoch = self.epoch.get();
        let wait = self.runtime.options().retry_interval;
        ctx.run_later(wait, move |act, ctx| {
            act.recheck_scheduled = false;
            let idle = act.asks_in_flight == 0 && act.batch.is_empty();
            if act.epoch.get() == epoch && act.phase == Phase::Ready && idle {
                let resumed = B::resume(&act.state, &act.env(None));
                act.ask_all(resumed, ctx);
                act.recheck_later(ctx);
            }
        });
    }
}
