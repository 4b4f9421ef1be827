//! Group commit, first level: what one activation has handled since its
//! last commit, and what each message sees of it.
//!
//! Messages are handled one at a time, but their changes, replies and
//! records collect in the open batch until the host says its mailbox is
//! drained; then the batch is sealed into one store commit. Replies leave
//! only after that commit is durable. A record or fact written by a message
//! of the open batch is what a later message of the same batch must see:
//! [`Batch::recall`] is the first place every lookup goes.

use serde::Serialize;
use troupe_actors::Outcome;

use crate::runtime::Answer;
use crate::store::{Commit, IdempotencyWrite};

/// What a keyed lookup reads: a client's idempotency record, or a fact the
/// actor stored (a transfer leg it applied).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LookupKey {
    Idempotency(String),
    Fact(String),
}

/// Everything handled since the last commit. `R` is how the host answers a
/// caller (a channel's sender in the service, a request number in the
/// simulator). A batch is made only to hold something: one that exists is
/// never empty, and wants its commit.
pub struct Batch<R> {
    /// The state changed and must be written.
    pub dirty: bool,
    pub entries: Vec<(u64, Vec<u8>)>,
    pub facts: Vec<(String, Vec<u8>)>,
    /// Idempotency records by key, serialised.
    pub idempotency: Vec<(String, Vec<u8>)>,
    /// A record that could not be serialised: the commit is refused.
    pub unserialisable: Option<serde_json::Error>,
    /// Answers that leave once the commit is durable.
    pub replies: Vec<Held<R>>,
    /// Journal pages to read once the commit is durable: (reply, after, limit).
    pub journal: Vec<(R, u64, u32)>,
    /// The outcome for every parked caller, once the commit is durable.
    pub settle: Option<Outcome>,
    /// The span of the first message that writes: the commit is its child.
    pub span: Option<tracing::Span>,
    /// The earliest deadline of the callers whose replies wait here.
    pub due: Option<std::time::Instant>,
}

impl<R> Default for Batch<R> {
    fn default() -> Self {
        Self {
            dirty: false,
            entries: Vec::new(),
            facts: Vec::new(),
            idempotency: Vec::new(),
            unserialisable: None,
            replies: Vec::new(),
            journal: Vec::new(),
            settle: None,
            span: None,
            due: None,
        }
    }
}

impl<R> Batch<R> {
    pub fn writes(&self) -> bool {
        self.dirty
            || !self.idempotency.is_empty()
            || !self.facts.is_empty()
            || self.unserialisable.is_some()
    }

    /// The newest value this batch wrote under `key`, if it wrote one.
    pub fn recall(&self, key: &LookupKey) -> Option<&[u8]> {
        let (written, wanted) = match key {
            LookupKey::Idempotency(k) => (&self.idempotency, k),
            LookupKey::Fact(k) => (&self.facts, k),
        };
        written
            .iter()
            .rev()
            .find(|(k, _)| k == wanted)
            .map(|(_, bytes)| bytes.as_slice())
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
            fence: false,
        }))
    }
}

/// An answer waiting for a commit, and the deadline of its caller.
pub struct Held<R> {
    pub to: R,
    pub answer: Answer,
    pub deadline: std::time::Instant,
}

/// A batch whose commit was sent: who waits for it, and what it makes
/// durable. Kept until the store answers, and past that while the answer
/// says the outcome is unknown (see [`super::Core`]'s fence).
pub struct Sealed<R> {
    /// The batch's number; asks made from its steps wait for it.
    pub generation: u64,
    /// The version the commit writes.
    pub version: u64,
    /// The digest of the state it writes ([`super::digest`]), if it writes
    /// one: what tells, after a fence, whether it landed.
    pub digest: Option<u64>,
    /// Whether the state it writes has unfinished work.
    pub pending: bool,
    pub replies: Vec<Held<R>>,
    pub journal: Vec<(R, u64, u32)>,
    pub settle: Option<Outcome>,
}
