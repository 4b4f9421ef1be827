//! Hosting the core of any behaviour behind one object-safe trait, so that
//! one simulation runs actors of every kind it was given.

use troupe_actors::{AnyCommand, Behavior, ErrorCode};

use super::ReplyTo;
use crate::runtime::core::{digest, Action, AskId, Core, Incoming, Loaded, Now, Page, Timer};
use crate::runtime::{Answer, RuntimeOptions};
use crate::store::{Snapshot, StoreError};
use std::sync::Arc;

/// A core, whatever its behaviour.
pub trait Hosted {
    /// Hands a message over; a message of another kind is answered at once.
    fn message(&mut self, now: Now, incoming: Incoming<AnyCommand, ReplyTo>);
    fn drained(&mut self, now: Now);
    /// The store's answer to a load: the snapshot found, and whether a
    /// fence was written over it.
    fn loaded(&mut self, now: Now, found: Result<(Option<Snapshot>, bool), StoreError>);
    fn looked_up(&mut self, now: Now, found: Result<Option<Vec<u8>>, StoreError>);
    fn committed(&mut self, now: Now, result: Result<Vec<Page>, StoreError>);
    fn answer(&mut self, now: Now, id: AskId, answer: Answer);
    fn timer(&mut self, now: Now, timer: Timer);
    fn set_options(&mut self, options: Arc<RuntimeOptions>);
    fn poll_action(&mut self) -> Option<Action<ReplyTo>>;
    fn is_pinned(&self) -> bool;
    fn is_resident(&self) -> bool;
    /// Whether the kind says its state is worth keeping in memory (asked
    /// of the behaviour itself, to check what the core decides).
    fn worth_keeping(&self) -> bool;
    /// Whether the kind says its state has unfinished work.
    fn unfinished(&self) -> bool;
    fn wants_flush(&self) -> bool;
    /// The kind's default state, serialised (what a fence writes for an
    /// actor never stored).
    fn default_state(&self) -> Vec<u8>;
    /// Where the core stands, for the coverage report.
    fn phase(&self) -> &'static str;
    /// Messages waiting and callers parked, for the memory bound.
    fn held(&self) -> (usize, usize);
}

pub struct Host<B: Behavior> {
    core: Core<B, ReplyTo>,
    /// Answers to messages of another kind, handed out before the core's.
    refused: Vec<(ReplyTo, Answer)>,
}

impl<B: Behavior> Host<B> {
    pub fn boxed(
        address: troupe_actors::Address,
        options: Arc<RuntimeOptions>,
        now: Now,
    ) -> Box<dyn Hosted> {
        let mut core = Core::new(address, options);
        core.start(now);
        Box::new(Self {
            core,
            refused: Vec::new(),
        })
    }
}

impl<B: Behavior> Hosted for Host<B> {
    fn message(&mut self, now: Now, incoming: Incoming<AnyCommand, ReplyTo>) {
        match incoming.try_map(B::from_any) {
            Ok(incoming) => self.core.handle_message(now, incoming),
            Err(reply) => self.refused.push((
                reply,
                Answer::error(ErrorCode::Internal, "message routed to the wrong kind"),
            )),
        }
    }

    fn drained(&mut self, now: Now) {
        self.core.handle_drained(now);
    }

    fn loaded(&mut self, now: Now, found: Result<(Option<Snapshot>, bool), StoreError>) {
        let loaded = found.and_then(|(snapshot, fenced)| {
            let (state, found, digest) = match snapshot {
                None => (B::State::default(), 0, None),
                Some(s) => serde_json::from_slice(&s.state)
                    .map(|state| (state, s.version, Some(digest(&s.state))))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            };
            let version = if fenced { found + 1 } else { found };
            Ok(Loaded {
                state,
                version,
                found,
                digest,
            })
        });
        self.core.handle_loaded(now, loaded);
    }

    fn looked_up(&mut self, now: Now, found: Result<Option<Vec<u8>>, StoreError>) {
        self.core.handle_looked_up(now, found);
    }

    fn committed(&mut self, now: Now, result: Result<Vec<Page>, StoreError>) {
        self.core.handle_committed(now, result);
    }

    fn answer(&mut self, now: Now, id: AskId, answer: Answer) {
        self.core.handle_answer(now, id, answer);
    }

    fn timer(&mut self, now: Now, timer: Timer) {
        self.core.handle_timer(now, timer);
    }

    fn set_options(&mut self, options: Arc<RuntimeOptions>) {
        self.core.set_options(options);
    }

    fn poll_action(&mut self) -> Option<Action<ReplyTo>> {
        if let Some((to, answer)) = self.refused.pop() {
            return Some(Action::Reply { to, answer });
        }
        self.core.poll_action()
    }

    fn is_pinned(&self) -> bool {
        self.core.is_pinned()
    }

    fn is_resident(&self) -> bool {
        self.core.is_resident()
    }

    fn worth_keeping(&self) -> bool {
        B::is_resident(self.core.state())
    }

    fn unfinished(&self) -> bool {
        B::is_pending(self.core.state())
    }

    fn wants_flush(&self) -> bool {
        self.core.wants_flush()
    }

    fn default_state(&self) -> Vec<u8> {
        serde_json::to_vec(&B::State::default()).unwrap_or_default()
    }

    fn phase(&self) -> &'static str {
        self.core.phase_name()
    }

    fn held(&self) -> (usize, usize) {
        self.core.held()
    }
}
