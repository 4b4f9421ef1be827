//! Group commit, first level: what one activation has handled since its
//! last commit.
//!
//! Messages are handled one at a time, but their changes, replies and
//! records collect here. Once the mailbox holds nothing more (actix polls
//! spawned futures only after draining the mailbox) the batch becomes one
//! store commit, awaited with `ctx.wait` so that nothing else is handled
//! while it is being made durable. Replies leave only after the commit.

use serde::Serialize;
use troupe_actors::Outcome;

use super::super::Answer;
use super::ReplyTx;
use crate::store::{Commit, IdempotencyWrite};

/// Everything handled since the last commit.
#[derive(Default)]
pub struct Batch {
    /// The state changed and must be written.
    pub dirty: bool,
    pub entries: Vec<(u64, Vec<u8>)>,
    pub facts: Vec<(String, Vec<u8>)>,
    /// Idempotency records by key, serialised.
    pub idempotency: Vec<(String, Vec<u8>)>,
    /// A record that could not be serialised: the commit is refused.
    pub unserialisable: Option<serde_json::Error>,
    /// Answers that leave once the commit is durable.
    pub replies: Vec<(ReplyTx, Answer)>,
    /// Journal pages to read once the commit is durable: (reply, after, limit).
    pub journal: Vec<(ReplyTx, u64, u32)>,
    /// The outcome for every parked caller, once the commit is durable.
    pub settle: Option<Outcome>,
    /// The span of the first message that writes: the commit is its child.
    pub span: Option<tracing::Span>,
}

impl Batch {
    pub fn writes(&self) -> bool {
        self.dirty
            || !self.idempotency.is_empty()
            || !self.facts.is_empty()
            || self.unserialisable.is_some()
    }

    pub fn is_empty(&self) -> bool {
        !self.writes()
            && self.replies.is_empty()
            && self.journal.is_empty()
            && self.settle.is_none()
    }

    /// The store commit of this batch, if it writes anything.
    ///
    /// # Errors
    /// When the state or a record cannot be serialised: the batch must then
    /// fail, never be acknowledged with something else written.
    pub fn commit(
        &mut self,
        actor: String,
        state: &impl Serialize,
        versions: (u64, u64),
        pending: bool,
    ) -> Result<Option<Commit>, serde_json::Error> {
        if let Some(e) = self.unserialisable.take() {
            return Err(e);
        }
        if !self.writes() {
            return Ok(None);
        }
        let (expected_version, version) = versions;
        let state = if self.dirty {
            Some(serde_json::to_vec(state)?)
        } else {
            None
        };
        let idempotency = self
            .idempotency
            .drain(..)
            .map(|(key, value)| IdempotencyWrite { key, value })
            .collect();
        Ok(Some(Commit {
            actor,
            expected_version,
            version,
            state,
            entries: std::mem::take(&mut self.entries),
            idempotency,
            facts: std::mem::take(&mut self.facts),
            pending,
        }))
    }
}

/// The open batch of an activation and where its commits stand.
pub struct Batcher {
    /// Boxed and absent between batches: an idle activation stays small.
    open: Option<Box<Batch>>,
    /// A flush is spawned and will take the open batch.
    pub flush_scheduled: bool,
    /// The version the store holds for this actor.
    pub durable_version: u64,
    /// Numbers the open batch; the next flush commits this generation.
    pub open_generation: u64,
    /// The last generation whose commit is durable.
    pub durable_generation: u64,
}

impl Default for Batcher {
    fn default() -> Self {
        Self {
            open: None,
            flush_scheduled: false,
            durable_version: 0,
            open_generation: 1,
            durable_generation: 0,
        }
    }
}

impl Batcher {
    /// The generation that must be durable before an answer to an ask made
    /// now may be handled: the open batch's when it holds anything to
    /// write or a flush is pending, else the last durable one.
    pub fn needed_for_ask(&self) -> u64 {
        let writes = self.open.as_ref().is_some_and(|b| b.writes());
        if writes || self.flush_scheduled {
            self.open_generation
        } else {
            self.durable_generation
        }
    }

    pub fn open(&mut self) -> &mut Batch {
        self.open.get_or_insert_with(Box::default)
    }

    pub fn get_mut(&mut self) -> Option<&mut Batch> {
        self.open.as_deref_mut()
    }

    pub fn take(&mut self) -> Batch {
        self.open.take().map(|b| *b).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.open.as_ref().is_none_or(|b| b.is_empty())
    }

    /// Whether a reply must wait for the open batch's commit: something
    /// handled before it is not durable yet.
    pub fn holds_replies(&self) -> bool {
        self.flush_scheduled
            || self
                .open
                .as_ref()
                .is_some_and(|b| b.writes() || !b.replies.is_empty())
    }
}
