//! Data written by earlier versions that this one must not misread.
//!
//! Transfers left in flight by the saga before the two-step protocol
//! deduplicated their legs with idempotency keys; this version deduplicates
//! them with facts, so resuming such a transfer could apply a leg twice or
//! lose a refund. They are never resumed (see
//! `TransferState::is_legacy_in_flight`), and the service refuses to start
//! while the store holds any, saying what to do.

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
        let state: Option<TransferState> = serde_json::from_slice(&snapshot.state)
            .map_err(|e| StoreError::Corrupt(format!("state of {actor}: {e}")))?;
        if state.is_some_and(|t| t.is_legacy_in_flight()) {
            legacy.push(actor);
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
