//! Data written by earlier versions that this one must not misread.
//!
//! Transfers left in flight by the saga before the two-step protocol
//! deduplicated their legs with idempotency keys; this version deduplicates
//! them with facts, so resuming such a transfer could apply a leg twice or
//! lose a refund. They are never resumed (see
//! `TransferState::is_legacy_in_flight`), and the service refuses to start
//! while the store holds any, saying what to do. When the store cannot be
//! read at start (Redis down), the check runs before unfinished work is
//! resumed, once the store answers; finding any then keeps the service
//! not ready (`/readyz` 503) with the same message in the log.
//!
//! "Earlier version" means main up to 3905f75. Several instances sharing a
//! Redis must all be upgraded together: an old instance still running can
//! start transfers this check has not seen.

use troupe_actors::transfer::TransferState;
use troupe_actors::Kind;

use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "{count} transfer(s) were left in flight by a version before the two-step transfer \
         protocol (first: {first}); this version cannot resume them safely. Start the previous \
         version on this data until no transfer is pending (it finishes them by itself; the \
         store's pending set is empty), then start this one"
    )]
    LegacyTransfers { count: usize, first: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Refuses a store holding legacy transfers in flight.
///
/// # Errors
/// [`UpgradeError::LegacyTransfers`] naming them; a store error when the
/// pending set cannot be read (the caller decides whether that may wait).
pub async fn check(store: &dyn Store) -> Result<(), UpgradeError> {
    let prefix = format!("{}/", Kind::Transfer);
    let mut legacy = Vec::new();
    for actor in store.pending().await? {
        if !actor.starts_with(&prefix) {
            continue;
        }
        let Some(snapshot) = store.load(&actor).await? else {
            continue;
        };
        // One unreadable record must not hide the others.
        match serde_json::from_slice::<Option<TransferState>>(&snapshot.state) {
            Ok(state)
                if state
                    .as_ref()
                    .is_some_and(TransferState::is_legacy_in_flight) =>
            {
                legacy.push(actor);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(actor = %actor, error.message = %e, "unreadable pending transfer")
            }
        }
    }
    match legacy.first() {
        None => Ok(()),
        Some(first) => Err(UpgradeError::LegacyTransfers {
            count: legacy.len(),
            first: first.clone(),
        }),
    }
}
