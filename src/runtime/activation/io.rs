//! The store work an activation carries out for its core: loading (with a
//! fence after a commit of unknown outcome) and committing (with the
//! journal pages read after it).

use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use troupe_actors::Behavior;

use crate::runtime::core::{digest, Loaded, Page};
use crate::store::{Commit, Snapshot, Store, StoreError};
use std::sync::Arc;

/// Conflicting writes a fence tolerates before giving up (another instance
/// writing the same actor all the time).
const FENCE_ATTEMPTS: usize = 3;

/// Loads `key`'s durable state; with `fence`, writes it back at the next
/// version first.
pub async fn load<B: Behavior>(
    store: Arc<dyn Store>,
    key: String,
    fence: bool,
) -> Result<Loaded<B::State>, StoreError> {
    let loaded = decode::<B>(store.load(&key).await?)?;
    if !fence {
        return Ok(loaded);
    }
    write_fence::<B>(&*store, &key, loaded).await
}

/// After a commit whose outcome is unknown (sent, then the connection
/// timed out), a read alone cannot tell whether that commit will still
/// land. Writing back what was read at `version + 1` settles it: if the
/// late commit lands first, this write conflicts and the state is read
/// again; if this write lands first, the late commit's compare-and-set can
/// no longer succeed. Either way the version found before the fence tells
/// whether the late commit landed, and the state held in memory is the one
/// that stays in the store.
async fn write_fence<B: Behavior>(
    store: &dyn Store,
    key: &str,
    mut loaded: Loaded<B::State>,
) -> Result<Loaded<B::State>, StoreError> {
    for _ in 0..FENCE_ATTEMPTS {
        let Loaded {
            state,
            version,
            digest,
            ..
        } = loaded;
        let bytes = serde_json::to_vec(&state)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialise {key}: {e}")))?;
        let fence = Commit {
            actor: key.to_owned(),
            expected_version: version,
            version: version + 1,
            state: Some(bytes),
            pending: B::is_pending(&state),
            fence: true,
            ..Commit::default()
        };
        match store.commit(fence).await {
            Ok(()) => {
                return Ok(Loaded {
                    state,
                    version: version + 1,
                    found: version,
                    digest,
                })
            }
            Err(StoreError::Conflict { .. }) => loaded = decode::<B>(store.load(key).await?)?,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable(format!(
        "{key} keeps changing under its fence; retry later"
    )))
}

/// The state a snapshot holds, with its version and digest.
fn decode<B: Behavior>(snapshot: Option<Snapshot>) -> Result<Loaded<B::State>, StoreError> {
    let Some(s) = snapshot else {
        return Ok(Loaded {
            state: B::State::default(),
            version: 0,
            found: 0,
            digest: None,
        });
    };
    let state = serde_json::from_slice(&s.state)
        .map_err(|e| StoreError::Corrupt(format!("state of version {}: {e}", s.version)))?;
    Ok(Loaded {
        state,
        version: s.version,
        found: s.version,
        digest: Some(digest(&s.state)),
    })
}

/// Makes `commit` durable, then reads the journal pages asked for
/// (`limit + 1` rows each, to tell whether a next page exists).
pub async fn commit(
    store: Arc<dyn Store>,
    key: String,
    commit: Option<Commit>,
    pages: Vec<(u64, u32)>,
    parent: Option<tracing::Span>,
    messages: usize,
) -> Result<Vec<Page>, StoreError> {
    let span = match (&commit, parent) {
        (Some(c), Some(parent)) if parent.context().span().span_context().is_sampled() => {
            tracing::debug_span!(parent: &parent, "store.commit", store.backend = store.backend(), batch.messages = messages, batch.entries = c.entries.len())
        }
        _ => tracing::Span::none(),
    };
    async move {
        if let Some(commit) = commit {
            store.commit(commit).await?;
        }
        let mut read = Vec::with_capacity(pages.len());
        for (after, limit) in pages {
            read.push(store.entries(&key, after, limit.saturating_add(1)).await);
        }
        Ok(read)
    }
    .instrument(span)
    .await
}
