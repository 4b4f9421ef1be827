//! Sealing the open batch into one commit, and what its outcome means for
//! the callers waiting on it.
//!
//! A commit that succeeded answers its callers. One the store refused
//! (a version conflict, bytes it cannot take) changed nothing: its callers
//! get `503` and the state reloads. One whose outcome is unknown (the
//! connection timed out after sending it) may still land: its callers wait
//! while the reload writes a fence at the next version, after which it can
//! no longer land, and the version found tells whether it did. Callers are
//! then answered with what is durable: their answers if it landed, `503`
//! if it did not.

use std::time::Duration;

use troupe_actors::{Behavior, ErrorCode, Reply};

use super::batch::Sealed;
use super::{unavailable, Action, Core, Now, Page, Phase, Timer};
use crate::runtime::{stats, Answer};
use crate::store::StoreError;

/// The answer to a caller whose change the store neither confirmed nor
/// refused, when the store cannot be asked again in time.
pub(super) fn in_doubt() -> Answer {
    Answer::error(
        ErrorCode::Unavailable,
        "the store did not confirm this change and cannot be asked yet: it may have been applied; \
         retry with the same Idempotency-Key to learn its outcome",
    )
}

/// The answer to a caller whose message was handled but whose change was
/// never made durable, and now never will be.
pub(super) fn not_applied() -> Answer {
    Answer::error(
        ErrorCode::Unavailable,
        "the change was not made durable and will not be; retry",
    )
}

impl<B: Behavior, R> Core<B, R> {
    /// The host's mailbox holds nothing more: the open batch becomes one
    /// commit, so everything that was waiting shares it.
    pub fn handle_drained(&mut self, now: Now) {
        if self.wants_flush() {
            self.flush(now, None);
        }
        self.after(now);
    }

    /// The store answered the commit in flight (and read its pages).
    pub fn handle_committed(&mut self, now: Now, result: Result<Vec<Page>, StoreError>) {
        self.committed(now, result);
        self.after(now);
    }

    /// Seals the open batch into one commit; after a panic, `restart`
    /// follows it.
    pub(super) fn flush(&mut self, now: Now, restart: Option<Duration>) {
        // A lazy change rides along with any commit that writes.
        if self.open.as_ref().is_some_and(|b| b.writes()) {
            self.take_lazy();
        }
        let mut batch = self.open.take().map(|b| *b).unwrap_or_default();
        let generation = self.open_generation;
        self.open_generation += 1;
        let versions = (self.durable_version, self.version);
        let pending = B::is_pending(&self.state);
        let pages = batch.journal.iter().map(|(_, a, l)| (*a, *l)).collect();
        let messages = batch.replies.len() + batch.journal.len();
        let span = batch.span.take();
        let commit = batch.commit(self.address.to_string(), &self.state, versions, pending);
        let digest = match &commit {
            Ok(Some(c)) => c.state.as_deref().map(super::digest),
            _ => None,
        };
        self.phase = Phase::Committing {
            sealed: Sealed {
                generation,
                version: self.version,
                digest,
                pending,
                replies: batch.replies,
                journal: batch.journal,
                settle: batch.settle,
            },
            restart,
        };
        match commit {
            Ok(commit) => {
                if commit.is_some() {
                    stats::batch(u32::try_from(messages).unwrap_or(u32::MAX));
                }
                self.emit(Action::Commit {
                    commit,
                    pages,
                    span,
                    messages,
                });
            }
            Err(e) => {
                // Never acknowledge what could not be written as it is.
                let error = StoreError::Corrupt(format!("cannot serialise {}: {e}", self.address));
                tracing::error!(actor = %self.address, error.message = %error, "commit refused");
                self.committed(now, Err(error));
            }
        }
    }

    fn committed(&mut self, now: Now, result: Result<Vec<Page>, StoreError>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Ready);
        let Phase::Committing { sealed, restart } = phase else {
            self.phase = phase;
            return;
        };
        match result {
            Ok(pages) => {
                self.durable_version = sealed.version;
                if sealed.digest.is_some() {
                    self.durable_pending = sealed.pending;
                }
                self.durable_generation = sealed.generation;
                self.deliver(sealed, pages);
                match restart {
                    Some(backoff) => self.restart_after(now, backoff, None),
                    None => self.pump(now),
                }
            }
            Err(e) => {
                tracing::warn!(actor = %self.address, error.message = %e, "commit failed; reloading durable state");
                // A commit that got no answer may still land: its callers
                // wait for the fence to tell. Any other failure changed
                // nothing.
                let doubt = match e {
                    StoreError::Unknown(_) => Some(self.doubt(now, sealed, &e)),
                    StoreError::Unavailable(_)
                    | StoreError::Conflict { .. }
                    | StoreError::Corrupt(_) => {
                        self.conflicted = matches!(e, StoreError::Conflict { .. });
                        for held in sealed.replies {
                            self.respond(held.to, unavailable(&e));
                        }
                        for (reply, _, _) in sealed.journal {
                            self.respond(reply, unavailable(&e));
                        }
                        None
                    }
                };
                // Parked callers stay: the reloaded state resumes their work.
                match restart {
                    Some(backoff) => self.restart_after(now, backoff, doubt),
                    None => {
                        self.unload(doubt);
                        self.load();
                    }
                }
            }
        }
    }

    /// Answers a durable batch's callers: replies, journal pages, and the
    /// parked callers its settlement names.
    fn deliver(&mut self, sealed: Sealed<R>, pages: Vec<Page>) {
        for held in sealed.replies {
            self.respond(held.to, held.answer);
        }
        let mut pages = pages.into_iter();
        for (reply, _, limit) in sealed.journal {
            let answer = match pages.next() {
                Some(Ok(rows)) => Answer::new(Ok(Reply::ok(journal_page(rows, limit)))),
                Some(Err(e)) => unavailable(&e),
                None => unavailable(&StoreError::Unavailable("journal page not read".into())),
            };
            self.respond(reply, answer);
        }
        if let Some(outcome) = sealed.settle {
            for parked in std::mem::take(&mut self.parked) {
                let answer = Answer {
                    outcome: outcome.clone(),
                    replayed: parked.replayed,
                };
                self.respond(parked.reply, answer);
            }
        }
    }

    /// Keeps the callers of a commit whose outcome is unknown until the
    /// fence tells, each at least `runtime.retry_interval_ms` and at most
    /// until its own deadline, whichever is later: the store may answer
    /// again soon, and a caller told the outcome is better served than one
    /// told it is unknown. Journal reads, which change nothing, are answered
    /// at once.
    fn doubt(&mut self, now: Now, mut sealed: Sealed<R>, e: &StoreError) -> Sealed<R> {
        for (reply, _, _) in std::mem::take(&mut sealed.journal) {
            self.respond(reply, unavailable(e));
        }
        let grace = now.at + self.options.retry_interval;
        for mut held in std::mem::take(&mut sealed.replies) {
            held.deadline = held.deadline.max(grace);
            self.timer(held.deadline, Timer::Doubt);
            self.doubtful.push((sealed.generation, held));
        }
        sealed
    }

    /// The doubt timer fired: callers whose wait is over are told the
    /// outcome is unknown.
    pub(super) fn doubt_due(&mut self, now: Now) {
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.doubtful)
            .into_iter()
            .partition(|(_, h)| h.deadline <= now.at);
        self.doubtful = waiting;
        for (_, held) in due {
            self.respond(held.to, in_doubt());
        }
    }

    /// Settles a commit of unknown outcome once the fence has made it
    /// final, from what the fence found stored: its version and the digest
    /// of its state. The lost commit landed exactly when the state stored is
    /// the one it wrote, at its version or later: a version alone could be
    /// an earlier fence's own write (it copies the state it read, one
    /// version up), which the digest tells apart. A commit that wrote no
    /// state (records of refusals only) cannot be told: its callers wait out
    /// their deadline and hear that it may have been applied.
    pub(super) fn settle_doubt(&mut self, doubt: Sealed<R>, found: u64, found_digest: Option<u64>) {
        let Some(digest) = doubt.digest else {
            return;
        };
        let (own, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.doubtful)
            .into_iter()
            .partition(|(generation, _)| *generation == doubt.generation);
        self.doubtful = others;
        let landed = found >= doubt.version && found_digest == Some(digest);
        if landed {
            self.durable_generation = self.durable_generation.max(doubt.generation);
            let replies = own.into_iter().map(|(_, held)| held).collect();
            self.deliver(Sealed { replies, ..doubt }, Vec::new());
        } else {
            for (_, held) in own {
                self.respond(held.to, not_applied());
            }
        }
    }

    /// A lazy change joins the next commit, or is committed on its own
    /// after `runtime.retry_interval_ms` if nothing else commits by then.
    pub(super) fn persist_lazily(&mut self, now: Now) {
        if self.lazy {
            return;
        }
        self.lazy = true;
        let at = now.at + self.options.retry_interval;
        self.timer(at, Timer::Lazy { epoch: self.epoch });
    }

    /// The lazy timer fired: the change joins the open batch, unless the
    /// state it was made in has been thrown away since (which dropped it).
    pub(super) fn lazy_due(&mut self, epoch: u32) {
        if epoch == self.epoch {
            self.take_lazy();
        }
    }

    /// Moves a lazy change into the open batch.
    fn take_lazy(&mut self) {
        if !self.lazy {
            return;
        }
        self.lazy = false;
        let batch = self.batch();
        if !batch.dirty {
            batch.dirty = true;
            self.version += 1;
        }
    }
}

/// `{"entries": [...], "next": seq-or-null}` from `limit + 1` rows.
fn journal_page(rows: Vec<Vec<u8>>, limit: u32) -> serde_json::Value {
    use serde_json::{json, Value};
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
