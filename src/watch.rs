//! Files troupe re-reads when they change: the configuration directory,
//! the API keys file, the JWT public key, the TLS certificate and key.
//!
//! A directory is watched rather than the file, so that the ways files are
//! replaced in practice are all seen: written in place, renamed over (how
//! editors and `cp` then `mv` do it), or swapped as a symlinked directory
//! (how Kubernetes updates a mounted Secret: the file names never change,
//! a `..data` link does). Changes arriving close together are read once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::background::Background;

/// Changes arriving this close together are read once.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// The directory holding `file` (`.` for a bare file name).
pub fn parent_dir(file: &Path) -> PathBuf {
    file.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
        .to_path_buf()
}

/// Calls `changed` on the background arbiter, once per burst of changes,
/// whenever anything in one of `dirs` is created, written, renamed or
/// removed. The watch lasts as long as the returned watcher is kept.
///
/// # Errors
/// When a directory cannot be watched (it does not exist, or the
/// process's inotify limits are reached).
pub fn dirs(
    background: &Background,
    dirs: impl IntoIterator<Item = PathBuf>,
    changed: impl Fn() + 'static,
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            // A full channel already holds a pending call.
            let _ = tx.try_send(());
        }
    })?;
    let dirs: BTreeSet<PathBuf> = dirs.into_iter().collect();
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    background.spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            changed();
        }
    });
    Ok(watcher)
}
