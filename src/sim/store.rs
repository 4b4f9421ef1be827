//! The simulated store: what is durable, kept in ordered maps so that a
//! run depends on nothing but its seed.
//!
//! It keeps the [`crate::store::Store`] contract: a commit applies
//! atomically and only if the stored version is the one it expects; a
//! commit with no state writes records and facts under the same check;
//! facts never expire; the pending set follows each commit's flag. What
//! the real stores add (expiry of idempotency records, listing) plays no
//! part in the runtime's decisions and is left out.

use std::collections::{BTreeMap, BTreeSet};

use crate::store::{Commit, Snapshot, StoreError};

/// Everything durable, by actor (`kind/id`).
#[derive(Debug, Default, Clone)]
pub struct Durable {
    pub states: BTreeMap<String, (u64, Vec<u8>)>,
    pub entries: BTreeMap<String, BTreeMap<u64, Vec<u8>>>,
    pub idempotency: BTreeMap<(String, String), Vec<u8>>,
    pub facts: BTreeMap<(String, String), Vec<u8>>,
    pub pending: BTreeSet<String>,
    /// Commits applied, for the report.
    pub commits: u64,
}

impl Durable {
    pub fn load(&self, actor: &str) -> Option<Snapshot> {
        self.states.get(actor).map(|(version, state)| Snapshot {
            version: *version,
            state: state.clone(),
        })
    }

    pub fn version(&self, actor: &str) -> u64 {
        self.states.get(actor).map_or(0, |(v, _)| *v)
    }

    /// Applies `commit` if the stored version is the one it expects.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when it is not; nothing is applied then.
    pub fn apply(&mut self, commit: &Commit) -> Result<(), StoreError> {
        let found = self.version(&commit.actor);
        if found != commit.expected_version {
            return Err(StoreError::Conflict {
                actor: commit.actor.clone(),
                expected: commit.expected_version,
                found,
            });
        }
        let actor = &commit.actor;
        if let Some(state) = &commit.state {
            self.states
                .insert(actor.clone(), (commit.version, state.clone()));
            if commit.pending {
                self.pending.insert(actor.clone());
            } else {
                self.pending.remove(actor);
            }
        }
        let entries = self.entries.entry(actor.clone()).or_default();
        for (seq, entry) in &commit.entries {
            entries.insert(*seq, entry.clone());
        }
        for write in &commit.idempotency {
            self.idempotency
                .insert((actor.clone(), write.key.clone()), write.value.clone());
        }
        for (key, fact) in &commit.facts {
            self.facts
                .insert((actor.clone(), key.clone()), fact.clone());
        }
        self.commits += 1;
        Ok(())
    }

    /// Reads the state and writes it back at the next version, so that a
    /// commit sent before can no longer land: what the service's fenced
    /// load does, as one atomic step. `default` is the kind's default
    /// state, serialised. Returns the snapshot found.
    pub fn fence(&mut self, actor: &str, default: &[u8]) -> Option<Snapshot> {
        let found = self.load(actor);
        let (version, state) = match &found {
            Some(s) => (s.version, s.state.clone()),
            None => (0, default.to_vec()),
        };
        let fence = Commit {
            actor: actor.to_owned(),
            expected_version: version,
            version: version + 1,
            state: Some(state),
            pending: self.pending.contains(actor),
            fence: true,
            ..Commit::default()
        };
        // Read and written in one step: it cannot conflict.
        let _ = self.apply(&fence);
        found
    }

    /// Journal rows above `after`, at most `limit`.
    pub fn page(&self, actor: &str, after: u64, limit: u32) -> Vec<Vec<u8>> {
        self.entries
            .get(actor)
            .map(|rows| {
                rows.range(after + 1..)
                    .take(limit as usize)
                    .map(|(_, row)| row.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}
