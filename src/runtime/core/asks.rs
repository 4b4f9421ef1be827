//! Effects: asks to other actors, retried while they fail transiently.
//!
//! An ask leaves as soon as the step that made it is handled, in parallel
//! with that step's commit: a transfer's pending record and its debit are
//! written at the same time. Its answer is handled only once that commit is
//! durable: every ask records the batch generation it needs, and an answer
//! that arrives earlier waits until that generation's commit succeeds. An
//! ask lives in the table until answered; throwing the state away empties
//! the table, so an answer to an ask of a state since reloaded finds
//! nothing and is dropped, and its retries stop.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use troupe_actors::{Address, AnyCommand, Behavior, Effect, Outcome};

use super::{Action, AskId, Core, Now, Phase, Timer};
use crate::runtime::Answer;

/// One ask waiting for an answer that is not transient.
struct Ask {
    id: AskId,
    target: Address,
    command: AnyCommand,
    /// Which ask this is, for the behaviour.
    tag: String,
    /// The batch generation that must be durable before the answer counts.
    needs: u64,
    attempt: u32,
    /// The span of the step that asked: every attempt is its child.
    span: tracing::Span,
}

/// The asks of one activation.
#[derive(Default)]
pub(super) struct Asks {
    /// Never reset: an id names one ask for the core's whole life.
    next: AskId,
    in_flight: Vec<Ask>,
    /// Answers that arrived before the commit their ask waits for: the
    /// tag, the outcome, the generation, and the asking step's span.
    deferred: Vec<(String, Outcome, u64, tracing::Span)>,
}

impl Asks {
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.deferred.is_empty()
    }

    pub fn clear(&mut self) {
        self.in_flight.clear();
        self.deferred.clear();
    }
}

fn transient(answer: &Answer) -> bool {
    matches!(&answer.outcome, Err(r) if r.code.is_transient())
}

impl<B: Behavior, R> Core<B, R> {
    /// Sends every effect now.
    pub(super) fn ask_all(&mut self, now: Now, effects: Vec<Effect>) {
        let writes = self.open.as_ref().is_some_and(|b| b.writes());
        let needs = if writes {
            self.open_generation
        } else {
            self.durable_generation
        };
        for Effect {
            target,
            command,
            tag,
        } in effects
        {
            let id = self.asks.next;
            self.asks.next += 1;
            let deadline = now.at + self.options.effect_timeout;
            let span = tracing::Span::current();
            self.emit(Action::Ask {
                id,
                target: target.clone(),
                command: command.clone(),
                deadline,
                span: span.clone(),
            });
            self.asks.in_flight.push(Ask {
                id,
                target,
                command,
                tag,
                needs,
                attempt: 0,
                span,
            });
        }
    }

    /// An ask was answered (or failed to be delivered).
    pub fn handle_answer(&mut self, now: Now, id: AskId, answer: Answer) {
        if let Some(at) = self.asks.in_flight.iter().position(|a| a.id == id) {
            if transient(&answer) {
                let ask = &mut self.asks.in_flight[at];
                ask.attempt += 1;
                tracing::debug!(outcome = ?answer.outcome, attempt = ask.attempt, "actor-to-actor ask failed; retrying");
                let wait = backoff(
                    self.options.ask_min_backoff,
                    self.options.ask_max_backoff,
                    id,
                    ask.attempt,
                );
                self.timer(now.at + wait, Timer::Ask(id));
            } else {
                let ask = self.asks.in_flight.swap_remove(at);
                let deferred = (ask.tag, answer.outcome, ask.needs, ask.span);
                self.asks.deferred.push(deferred);
                self.release_answers(now);
            }
        }
        self.after(now);
    }

    /// The retry timer of an ask fired: send it again, if it still stands.
    pub(super) fn resend(&mut self, now: Now, id: AskId) {
        let Some(ask) = self.asks.in_flight.iter().find(|a| a.id == id) else {
            return;
        };
        let action = Action::Ask {
            id,
            target: ask.target.clone(),
            command: ask.command.clone(),
            deadline: now.at + self.options.effect_timeout,
            span: ask.span.clone(),
        };
        self.emit(action);
    }

    /// Hands the behaviour the answers whose step is now durable, while the
    /// core is ready to take a step.
    pub(super) fn release_answers(&mut self, now: Now) {
        let durable = self.durable_generation;
        while matches!(self.phase, Phase::Ready) {
            let Some(at) = self
                .asks
                .deferred
                .iter()
                .position(|(_, _, n, _)| *n <= durable)
            else {
                break;
            };
            let (tag, outcome, _, span) = self.asks.deferred.remove(at);
            // What the answer leads to (the next leg) joins the asker's trace.
            let _entered = span.enter();
            let env = self.env(now, None);
            let state = &self.state;
            let step = catch_unwind(AssertUnwindSafe(|| {
                B::on_effect(state, &tag, outcome, &env)
            }))
            .map_err(|panic| super::panic_message(panic.as_ref()));
            self.handled(now, step);
        }
    }

    /// Unfinished work that nothing is driving (every ask answered, yet
    /// the state is still pending) is resumed again after a while, for as
    /// long as it stays unfinished: it is never dropped.
    pub(super) fn arm_recheck(&mut self, now: Now) {
        let idle = self.asks.in_flight.is_empty();
        if self.recheck_armed
            || !idle
            || !matches!(self.phase, Phase::Ready)
            || !B::is_pending(&self.state)
        {
            return;
        }
        self.recheck_armed = true;
        let at = now.at + self.options.retry_interval;
        self.timer(at, Timer::Recheck { epoch: self.epoch });
    }

    pub(super) fn recheck_due(&mut self, now: Now, epoch: u32) {
        self.recheck_armed = false;
        let idle = self.asks.in_flight.is_empty() && self.open.is_none();
        if epoch == self.epoch && matches!(self.phase, Phase::Ready) && idle {
            let resumed = B::resume(&self.state, &self.env(now, None));
            self.ask_all(now, resumed);
        }
    }
}

/// The wait before attempt `attempt + 1` of ask `id`: doubling from `min`
/// up to `max`, spread by up to half again by the ask's id so that asks
/// failing together do not retry together.
fn backoff(min: Duration, max: Duration, id: AskId, attempt: u32) -> Duration {
    let base = min
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(max);
    let spread = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as u32; // 0..1024
    base + base / 2 * spread / 1024
}
