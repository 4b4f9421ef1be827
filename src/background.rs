//! Background tasks and the shutdown protocol they follow.
//!
//! Every task that outlives a request (the idempotency sweeper, the resume
//! of unfinished work at start-up and its per-actor wake-ups, the etcd
//! watch, the configuration file watch) is spawned through [`Background`]:
//! it observes one cancellation token and is tracked, so that shutdown can
//! cancel them all and wait until every one has stopped before the store
//! closes (mini-redis's shutdown, with tokio-util's `CancellationToken` and
//! `TaskTracker`).

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Background {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Background {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` on the current arbiter until it ends or shutdown begins.
    pub fn spawn<F: Future<Output = ()> + 'static>(&self, task: F) {
        let cancel = self.cancel.clone();
        actix_rt::spawn(self.tracker.track_future(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = task => {}
            }
        }));
    }

    /// Whether shutdown has begun.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// How many tasks are still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Cancels every task and waits until all of them have stopped.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}
