//! Turning the open batch into one commit, and answering after it.

use actix::prelude::*;
use opentelemetry::trace::TraceContextExt as _;
use serde_json::{json, Value};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use troupe_actors::{Behavior, ErrorCode, Reply};

use super::batch::Batch;
use super::{Activation, Phase};
use crate::runtime::{stats, Answer};
use crate::store::StoreError;

/// Raw journal rows read for one `entries` message.
type Page = Result<Vec<Vec<u8>>, StoreError>;

impl<B: Behavior> Activation<B> {
    /// Flushes once the mailbox is drained: actix polls spawned futures
    /// after the mailbox, so everything already waiting joins this batch.
    pub(super) fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        let crashed = matches!(self.phase, Phase::Crashed { .. });
        if self.batch.flush_scheduled || (self.batch.is_empty() && !crashed) {
            return;
        }
        self.batch.flush_scheduled = true;
        ctx.spawn(fut::ready(()).map(|(), act: &mut Self, ctx| act.flush(ctx)));
    }

    /// A lazy change joins the next commit, or is written on its own
    /// after `runtime.retry_interval_ms` if nothing else commits by then.
    pub(super) fn persist_lazily(&mut self, ctx: &mut Context<Self>) {
        if self.lazy {
            return;
        }
        self.lazy = true;
        let epoch = self.epoch.get();
        let wait = self.runtime.options().retry_interval;
        ctx.run_later(wait, move |act, ctx| {
            if act.lazy && act.epoch.get() == epoch && act.phase == Phase::Ready {
                act.take_lazy();
                act.schedule_flush(ctx);
            }
        });
    }

    /// Moves a lazy change into the open batch.
    fn take_lazy(&mut self) {
        if !self.lazy {
            return;
        }
        self.lazy = false;
        let batch = self.batch.open();
        if !batch.dirty {
            batch.dirty = true;
            self.version += 1;
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.batch.flush_scheduled = false;
        if self.batch.get_mut().is_some_and(|b| b.writes()) {
            self.take_lazy();
        }
        let generation = self.batch.open_generation;
        self.batch.open_generation += 1;
        let mut batch = self.batch.take();
        let versions = (self.batch.durable_version, self.version);
        let pending = B::is_pending(&self.state);
        let commit = match batch.commit(self.address.to_string(), &self.state, versions, pending) {
            Ok(commit) => commit,
            Err(e) => {
                // Never acknowledge what could not be written as it is.
                let error = StoreError::Corrupt(format!("cannot serialise {}: {e}", self.address));
                tracing::error!(actor = %self.address, error.message = %error, "commit refused");
                return self.flushed(batch, generation, Err(error), ctx);
            }
        };
        let pages: Vec<(u64, u32)> = batch
            .journal
            .iter()
            .map(|(_, after, limit)| (*after, *limit))
            .collect();
        let store = self.runtime.store().clone();
        let key = self.address.to_string();
        let messages = batch.replies.len() + batch.journal.len();
        if commit.is_some() {
            stats::batch(u32::try_from(messages).unwrap_or(u32::MAX));
        }
        let span = match (&commit, batch.span.take()) {
            (Some(c), Some(parent)) if parent.context().span().span_context().is_sampled() => {
                tracing::debug_span!(parent: &parent, "store.commit", store.backend = store.backend(), batch.messages = messages, batch.entries = c.entries.len())
            }
            _ => tracing::Span::none(),
        };
        let version = self.version;
        let work = async move {
            if let Some(commit) = commit {
                store.commit(commit).await?;
            }
            let mut read = Vec::with_capacity(pages.len());
            for (after, limit) in pages {
                read.push(store.entries(&key, after, limit.saturating_add(1)).await);
            }
            Ok::<_, StoreError>((version, read))
        }
        .instrument(span);
        ctx.wait(work.into_actor(self).map(move |result, act, ctx| {
            act.flushed(batch, generation, result, ctx);
            act.settle_down(ctx);
        }));
    }

    fn flushed(
        &mut self,
        batch: Batch,
        generation: u64,
        result: Result<(u64, Vec<Page>), StoreError>,
        ctx: &mut Context<Self>,
    ) {
        match result {
            Ok((version, pages)) => {
                self.batch.durable_version = version;
                self.batch.durable_generation = generation;
                for (reply, answer) in batch.replies {
                    self.respond(reply, answer);
                }
                for ((reply, _, limit), page) in batch.journal.into_iter().zip(pages) {
                    let answer = match page {
                        Ok(rows) => Answer::new(Ok(Reply::ok(journal_page(rows, limit)))),
                        Err(e) => unavailable(&e),
                    };
                    self.respond(reply, answer);
                }
                if let Some(outcome) = batch.settle {
                    for parked in std::mem::take(&mut self.parked) {
                        let answer = Answer {
                            outcome: outcome.clone(),
                            replayed: parked.replayed,
                        };
                        self.respond(parked.reply, answer);
                    }
                }
                if let Phase::Crashed { backoff } = self.phase {
                    self.restart_after(backoff, false, ctx);
                } else {
                    self.release_answers(ctx);
                }
            }
            Err(e) => {
                tracing::warn!(actor = %self.address, error.message = %e, "commit failed; reloading durable state");
                for (reply, _) in batch.replies {
                    self.respond(reply, unavailable(&e));
                }
                for (reply, _, _) in batch.journal {
                    self.respond(reply, unavailable(&e));
                }
                // Parked callers stay: the reloaded state resumes their work.
                // The commit may still land (a timed-out Redis call): fence it off.
                let fence = matches!(e, StoreError::Unavailable(_));
                match self.phase {
                    Phase::Crashed { backoff } => self.restart_after(backoff, fence, ctx),
                    _ => {
                        self.unload(fence);
                        self.load(None, ctx);
                    }
                }
            }
        }
    }
}

/// `{"entries": [...], "next": seq-or-null}` from `limit + 1` rows.
fn journal_page(rows: Vec<Vec<u8>>, limit: u32) -> Value {
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

/// The answer to a message whose store work failed: `500` for data that
/// cannot be read or written as it is, else `503`.
pub(super) fn unavailable(e: &StoreError) -> Answer {
    match e {
        StoreError::Corrupt(_) => Answer::error(ErrorCode::Internal, e.to_string()),
        StoreError::Conflict { .. } => Answer::error(ErrorCode::Unavailable, format!("{e}; retry")),
        StoreError::Unavailable(_) => {
            Answer::error(ErrorCode::Unavailable, format!("{e}; retry later"))
        }
    }
}
