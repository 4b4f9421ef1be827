//! Recovery: loading durable state, fencing off a commit of unknown
//! outcome, restarting after a panic, retrying unfinished work, and
//! passivating an activation that has nothing left to do.

use std::time::Duration;

use actix::prelude::*;
use troupe_actors::{Behavior, ErrorCode};

use super::{Activation, Phase};
use crate::runtime::shard::Retired;
use crate::runtime::{Answer, Envelope};
use crate::store::{Commit, Snapshot, Store, StoreError};

/// Conflicting writes a fence tolerates before giving up (another instance
/// writing the same actor all the time).
const FENCE_ATTEMPTS: usize = 3;

impl<B: Behavior> Activation<B> {
    /// Loads durable state, then handles `then` if it was waiting for it.
    pub(super) fn load(&mut self, then: Option<Envelope>, ctx: &mut Context<Self>) {
        let fence = matches!(
            self.phase,
            Phase::Unloaded { fence: true } | Phase::Restarting { fence: true }
        );
        self.phase = Phase::Loading;
        self.sync_status();
        let store = self.runtime.store().clone();
        let key = self.address.to_string();
        let work = async move {
            let mut loaded = decode::<B>(store.load(&key).await?)?;
            if fence {
                loaded = write_fence::<B>(&*store, &key, loaded).await?;
            }
            Ok::<_, StoreError>(loaded)
        };
        ctx.wait(work.into_actor(self).map(move |loaded, act, ctx| {
            match loaded {
                Ok((state, version)) => {
                    act.state = state;
                    act.version = version;
                    act.batch.durable_version = version;
                    act.phase = Phase::Ready;
                    act.bump_epoch();
                    act.caches = None;
                    act.reconcile_parked(fence);
                    let resumed = B::resume(&act.state, &act.env(None));
                    act.ask_all(resumed, ctx);
                    act.recheck_later(ctx);
                }
                Err(e) => {
                    tracing::warn!(actor = %act.address, error.message = %e, "loading state failed");
                    act.phase = Phase::Unloaded { fence };
                    // Unfinished work, and a commit of unknown outcome still
                    // to fence off, must not wait for a client to come by:
                    // keep trying (and stay active) until the store answers.
                    if fence || B::is_pending(&act.state) || !act.parked.is_empty() {
                        let retry = act.runtime.options().retry_interval;
                        ctx.run_later(retry, |act, ctx| {
                            if matches!(act.phase, Phase::Unloaded { .. }) {
                                act.load(None, ctx);
                            }
                        });
                    }
                }
            }
            if let Some(envelope) = then {
                if act.phase.is_loaded() {
                    act.receive(envelope, ctx);
                } else {
                    act.respond(
                        envelope.reply,
                        Answer::error(
                            ErrorCode::Unavailable,
                            "the store is unavailable; retry later",
                        ),
                    );
                }
            }
            act.settle_down(ctx);
        }));
    }

    /// Throws the in-memory state away; answers to asks made from it are
    /// dropped from now on. The state is kept only to remember whether it
    /// had unfinished work.
    pub(super) fn unload(&mut self, fence: bool) {
        self.phase = Phase::Unloaded { fence };
        // A lazy change is redone by resuming (that is what makes it lazy).
        self.lazy = false;
        self.caches = None;
        self.deferred.clear();
        self.bump_epoch();
    }

    pub(super) fn bump_epoch(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
    }

    pub(super) fn restart_after(
        &mut self,
        backoff: Duration,
        fence: bool,
        ctx: &mut Context<Self>,
    ) {
        self.unload(fence);
        self.phase = Phase::Restarting { fence };
        ctx.wait(
            fut::wrap_future::<_, Self>(tokio::time::sleep(backoff))
                .map(|(), act, ctx| act.load(None, ctx)),
        );
    }

    /// Whether anything keeps this activation busy: a load, a batch, an
    /// ask, a parked caller, or unfinished work in its state.
    fn is_pinned(&self) -> bool {
        match self.phase {
            Phase::Loading | Phase::Restarting { .. } | Phase::Crashed { .. } => true,
            // A commit of unknown outcome is fenced off by this activation:
            // a new one would not know it has to.
            Phase::Unloaded { fence: true } => true,
            Phase::Unloaded { .. } | Phase::Ready => {
                self.batch.flush_scheduled
                    || self.lazy
                    || !self.batch.is_empty()
                    || self.asks_in_flight > 0
                    || !self.deferred.is_empty()
                    || !self.parked.is_empty()
                    || B::is_pending(&self.state)
            }
        }
    }

    fn sync_status(&self) {
        self.status.pinned.set(self.is_pinned());
    }

    /// Called after every event: publishes whether the activation is
    /// pinned, and stops it at once when it is idle and worth nothing in
    /// memory (an account never opened, a settled transfer, a state the
    /// store could not load): such actors never wait for the idle timeout.
    pub(super) fn settle_down(&mut self, ctx: &mut Context<Self>) {
        if self.phase == Phase::Ready {
            self.recheck_later(ctx);
        }
        let pinned = self.is_pinned();
        self.status.pinned.set(pinned);
        if pinned || self.status.inflight.get() > 0 || ctx.state() != ActorState::Running {
            return;
        }
        let worthless = match self.phase {
            Phase::Ready => !B::is_resident(&self.state),
            _ => true,
        };
        if worthless {
            self.status.retired.set(true);
            ctx.stop();
            let _ = self.shard.try_send(Retired {
                address: self.address.clone(),
            });
        }
    }
}

/// After a commit whose outcome is unknown (sent, then the connection
/// timed out), a read alone cannot tell whether that commit will still
/// land. Writing back what was read at `version + 1` settles it: if the
/// late commit lands first, this write conflicts and the state is read
/// again; if this write lands first, the late commit's compare-and-set can
/// no longer succeed. Either way the state held in memory is the one that
/// stays in the store.
async fn write_fence<B: Behavior>(
    store: &dyn Store,
    key: &str,
    mut loaded: (B::State, u64),
) -> Result<(B::State, u64), StoreError> {
    for _ in 0..FENCE_ATTEMPTS {
        let (state, version) = loaded;
        let bytes = serde_json::to_vec(&state)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialise {key}: {e}")))?;
        let fence = Commit {
            actor: key.to_owned(),
            expected_version: version,
            version: version + 1,
            state: Some(bytes),
            pending: B::is_pending(&state),
            ..Commit::default()
        };
        match store.commit(fence).await {
            Ok(()) => return Ok((state, version + 1)),
            Err(StoreError::Conflict { .. }) => loaded = decode::<B>(store.load(key).await?)?,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable(format!(
        "{key} keeps changing under its fence; retry later"
    )))
}

fn decode<B: Behavior>(snapshot: Option<Snapshot>) -> Result<(B::State, u64), StoreError> {
    match snapshot {
        None => Ok((B::State::default(), 0)),
        Some(s) => serde_json::from_slice(&s.state)
            .map(|state| (state, s.version))
            .map_err(|e| StoreError::Corrupt(format!("state of version {}: {e}", s.version))),
    }
}
