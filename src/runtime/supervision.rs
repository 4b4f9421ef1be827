//! Supervision of one activation: what happens after its handler panics.
//!
//! actix contains a panic only as far as the arbiter thread: the panicking
//! actor's future is dropped, its mailbox closes and every queued caller
//! loses its reply, and `actix::Supervisor` only restarts actors that stop,
//! not ones whose handler panicked. So the runtime catches the panic around
//! the behaviour call itself, answers that message `500 internal`, and
//! restarts the activation in place: its in-memory state is thrown away and
//! reloaded from the store after an exponential backoff, while its mailbox
//! (and every other actor on the thread) carries on. Past `max_restarts`
//! within `window` the actor gives up and answers `503` until the window has
//! passed.

use std::collections::VecDeque;
use std::time::Duration;

use std::time::Instant;

/// Restart limits, from `runtime.supervision` in the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub window: Duration,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

/// What happened to an activation, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupervisionEvent {
    /// Restarting from durable state once `backoff` has passed.
    Restarting { attempt: u32, backoff: Duration },
    /// Too many restarts: unavailable until `until`.
    GaveUp { until: Instant },
}

/// The restart history of one activation.
#[derive(Debug, Default)]
pub struct Supervision {
    restarts: VecDeque<Instant>,
    failed_until: Option<Instant>,
}

impl Supervision {
    /// Records a panic at `now` and decides what follows.
    pub fn on_panic(&mut self, now: Instant, policy: &RestartPolicy) -> SupervisionEvent {
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= policy.window)
        {
            self.restarts.pop_front();
        }
        self.restarts.push_back(now);
        let attempt = u32::try_from(self.restarts.len()).unwrap_or(u32::MAX);
        if attempt > policy.max_restarts {
            let until = now + policy.window;
            self.failed_until = Some(until);
            self.restarts.clear();
            return SupervisionEvent::GaveUp { until };
        }
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        let backoff = policy
            .backoff
            .saturating_mul(factor)
            .min(policy.max_backoff);
        SupervisionEvent::Restarting { attempt, backoff }
    }

    /// Whether the actor has given up and must refuse messages at `now`.
    pub fn failed(&mut self, now: Instant) -> bool {
        match self.failed_until {
            Some(until) if now < until => true,
            Some(_) => {
                self.failed_until = None;
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RestartPolicy = RestartPolicy {
        max_restarts: 3,
        window: Duration::from_secs(10),
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(25),
    };

    #[test]
    fn backoff_doubles_up_to_its_cap_then_the_actor_gives_up() {
        let mut s = Supervision::default();
        let now = Instant::now();
        let backoffs: Vec<_> = (0..3)
            .map(|_| match s.on_panic(now, &POLICY) {
                SupervisionEvent::Restarting { backoff, .. } => backoff.as_millis(),
                other => panic!("expected a restart, got {other:?}"),
            })
            .collect();
        assert_eq!(backoffs, vec![10, 20, 25]);
        assert!(matches!(
            s.on_panic(now, &POLICY),
            SupervisionEvent::GaveUp { .. }
        ));
        assert!(s.failed(now + Duration::from_secs(9)));
        assert!(!s.failed(now + Duration::from_secs(10)));
    }

    #[test]
    fn restarts_older_than_the_window_are_forgotten() {
        let mut s = Supervision::default();
        let start = Instant::now();
        for i in 0..10 {
            let at = start + POLICY.window * i;
            assert!(matches!(
                s.on_panic(at, &POLICY),
                SupervisionEvent::Restarting { attempt: 1, .. }
            ));
        }
    }
}
