//! Live configuration: watch the config directory (and the remote layer),
//! re-read every layer on a change, validate, and apply what can change
//! while running.
//!
//! Applied at run time: `log.filter`, `telemetry.otlp.sampling_ratio` and
//! every `runtime.*` key (timeouts, mailbox capacity for new activations,
//! idle passivation, supervision limits, idempotency cache). Everything
//! else (bind address, store, ...) is reported as needing a restart and
//! left as it runs. An invalid new configuration is rejected with an error
//! log and nothing changes. Running components read settings through
//! shared handles (`ArcSwap`), never by re-parsing on the hot path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus::IntCounterVec;

use crate::runtime::Runtime;
use crate::settings::{Settings, Sources};
use crate::telemetry::{set_sampling_ratio, FilterSetter};

/// Whether the settings table says `key` is applied while running.
fn reloadable(key: &str) -> bool {
    crate::settings::table::lookup(key).is_some_and(|s| s.reload)
}

/// What the reloader changes, and where it reads its layers.
#[derive(Clone)]
pub struct Reloader {
    sources: Arc<Mutex<Sources>>,
    current: Arc<ArcSwap<Settings>>,
    runtime: Runtime,
    log_filter: Option<FilterSetter>,
    reloads: IntCounterVec,
}

impl Reloader {
    pub fn new(
        sources: Sources,
        current: Arc<ArcSwap<Settings>>,
        runtime: Runtime,
        log_filter: Option<FilterSetter>,
        reloads: IntCounterVec,
    ) -> Self {
        Self {
            sources: Arc::new(Mutex::new(sources)),
            current,
            runtime,
            log_filter,
            reloads,
        }
    }

    /// Replaces the remote layer's values (from etcd) and reloads.
    pub fn set_remote(&self, remote: Vec<(String, String)>) {
        if let Ok(mut sources) = self.sources.lock() {
            sources.remote = remote;
        }
        self.reload("etcd");
    }

    /// Re-reads every layer and applies what changed.
    pub fn reload(&self, cause: &str) {
        let sources = match self.sources.lock() {
            Ok(s) => s.clone(),
            Err(_) => return,
        };
        let new = match Settings::load(&sources) {
            Ok(new) => new,
            Err(e) => {
                self.reloads.with_label_values(&["rejected"]).inc();
                tracing::error!(cause, error.message = %e, "configuration rejected; the running settings stay");
                return;
            }
        };
        let old = self.current.load_full();
        let (before, after) = (old.flattened(), new.flattened());
        let changed: Vec<&String> = after
            .keys()
            .filter(|k| before.get(*k) != after.get(*k))
            .collect();
        if changed.is_empty() {
            return;
        }
        let (applied, restart): (Vec<&String>, Vec<&String>) =
            changed.into_iter().partition(|k| reloadable(k));
        let mut running = (*old).clone();
        if applied.iter().any(|k| k.as_str() == "log.filter") {
            if let Some(set) = &self.log_filter {
                if let Err(e) = set(&new.log.filter) {
                    self.reloads.with_label_values(&["rejected"]).inc();
                    tracing::error!(cause, error.message = %e, "log filter rejected; the running settings stay");
                    return;
                }
            }
            running.log.filter = new.log.filter.clone();
        }
        if applied
            .iter()
            .any(|k| k.starts_with("telemetry.otlp.sampling_ratio"))
        {
            set_sampling_ratio(new.telemetry.otlp.sampling_ratio);
            running.telemetry.otlp.sampling_ratio = new.telemetry.otlp.sampling_ratio;
        }
        if applied.iter().any(|k| k.starts_with("runtime.")) {
            self.runtime.set_options(new.runtime_options());
            running.runtime = new.runtime.clone();
        }
        self.current.store(Arc::new(running));
        self.reloads.with_label_values(&["applied"]).inc();
        let describe = |keys: &[&String]| -> String {
            keys.iter()
                .map(|k| {
                    let value = after.get(*k).map_or("", String::as_str);
                    format!("{k}={}", crate::settings::redact(k, value))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !applied.is_empty() {
            tracing::info!(cause, changed = %describe(&applied), "configuration reloaded");
        }
        if !restart.is_empty() {
            tracing::warn!(cause, changed = %describe(&restart), "configuration changes need a restart; not applied");
        }
    }

    /// Watches the config directory and reloads on every change. The
    /// watcher lives as long as the returned guard.
    ///
    /// # Errors
    /// When the directory cannot be watched.
    pub fn watch(
        &self,
        background: &crate::background::Background,
        dir: PathBuf,
    ) -> notify::Result<notify::RecommendedWatcher> {
        let reloader = self.clone();
        let watcher = crate::watch::dirs(background, [dir.clone()], move || {
            reloader.reload("file");
        })?;
        tracing::info!(dir = %dir.display(), "watching the configuration");
        Ok(watcher)
    }
}

/// The running settings as `key -> value`, secrets redacted, for `/config`.
pub fn redacted(settings: &Settings) -> BTreeMap<String, String> {
    settings
        .flattened()
        .into_iter()
        .map(|(k, v)| {
            let v = crate::settings::redact(&k, &v);
            (k, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::reloadable;

    #[test]
    fn only_run_time_keys_are_reloadable() {
        assert!(reloadable("log.filter"));
        assert!(reloadable("runtime.default_timeout_ms"));
        assert!(reloadable("runtime.supervision.max_restarts"));
        assert!(reloadable("telemetry.otlp.sampling_ratio"));
        assert!(!reloadable("server.port"));
        assert!(!reloadable("store.backend"));
        assert!(!reloadable("log.format"));
        assert!(!reloadable("runtime"));
    }

    /// What the table calls live is what `Reloader::reload` applies: a
    /// key marked live with nothing applying it would be logged as
    /// reloaded and ignored.
    #[test]
    fn every_live_setting_is_applied() {
        for setting in crate::settings::table::SETTINGS {
            let applied = setting.key == "log.filter"
                || setting.key == "telemetry.otlp.sampling_ratio"
                || setting.key.starts_with("runtime.");
            assert_eq!(setting.reload, applied, "{}", setting.key);
        }
    }
}
