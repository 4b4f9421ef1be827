//! The remote configuration layer: every key under `remote.etcd.prefix` in
//! etcd v3, named by the setting's dotted path
//! (`/troupe/production/log.filter` = `info,troupe=debug`), overrides the
//! file and environment layers.
//!
//! At start the values are read once, before anything else (each endpoint
//! in turn, each bounded by twice `remote.etcd.connect_timeout_ms`); if etcd
//! cannot be reached, or its values are invalid, the service starts on its
//! local layers and says so. A background task then watches the prefix and
//! applies changes like a file reload; when etcd is lost it keeps the last
//! good values and reconnects with exponential backoff. Nothing here runs
//! on a request's path.
//!
//! etcd is reached over plain gRPC, so it may not set what decides where
//! the ledger's data goes or whom the service trusts (the settings table's
//! `remote` column): those
//! come only from files, the environment and flags.

//!
//! The etcd client is behind the `etcd` cargo feature (it needs `protoc` to
//! build); a binary built without it warns when endpoints are configured.

use crate::settings::{Settings, SettingsError, Sources};

/// Whether etcd may set `key`: only a setting the table names, exactly,
/// and marks settable (not the store, the remote layer itself, the
/// listening address and its certificate, the trace collector, nor who may
/// call the API). Anything else is ignored, so no spelling the
/// configuration library would also accept (`remote.etcd.endpoints[0]`)
/// reaches a setting etcd may not set.
pub fn settable_remotely(key: &str) -> bool {
    crate::settings::table::lookup(key).is_some_and(|s| s.remote)
}

/// Why the remote layer could not be read at start.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("etcd unreachable ({0})")]
    Unreachable(String),
    #[error("remote.etcd.endpoints is set but this binary was built without the etcd feature")]
    NotBuilt,
}

/// What start-up got from the remote layer. Read before logging is set up
/// (the remote layer may set `log.filter`), so logged afterwards by
/// [`AtStart::log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtStart {
    /// No endpoints configured.
    Off,
    /// The keys read under the prefix.
    Read { keys: usize, prefix: String },
    /// Not read: why. The service starts on its local layers.
    Unavailable(String),
    /// Read, but the values are invalid: the error. The service starts on
    /// its local layers.
    Rejected(String),
}

impl AtStart {
    pub fn log(&self) {
        match self {
            Self::Off => {}
            Self::Read { keys, prefix } => {
                tracing::info!(keys, %prefix, "read remote configuration from etcd");
            }
            Self::Unavailable(why) => tracing::warn!(
                reason = %why,
                "starting on local configuration without the etcd layer; retrying in the background"
            ),
            Self::Rejected(error) => tracing::error!(
                error.message = %error,
                "the etcd layer is invalid; starting on local configuration"
            ),
        }
    }

    /// For `troupe config`, which has no logger.
    pub fn note(&self) -> Option<String> {
        match self {
            Self::Off | Self::Read { .. } => None,
            Self::Unavailable(why) => Some(format!("note: {why}; showing the local layers only")),
            Self::Rejected(error) => Some(format!(
                "note: the etcd layer is invalid ({error}); showing the local layers only"
            )),
        }
    }
}

/// The settings to start with: the local layers, then the remote layer
/// read once (bounded by `remote.etcd.connect_timeout_ms`) when etcd is
/// configured and answers. Returns the sources with the remote values in,
/// for the reloader and `troupe config`.
///
/// # Errors
/// When a local layer, or a value read from etcd, is invalid (the error
/// names the key, the value and the layer).
pub async fn resolve(mut sources: Sources) -> Result<(Settings, Sources, AtStart), SettingsError> {
    let local = Settings::load(&sources)?;
    match fetch(&local).await {
        Ok(None) => Ok((local, sources, AtStart::Off)),
        Ok(Some(values)) => {
            let at_start = AtStart::Read {
                keys: values.len(),
                prefix: local.remote.etcd.prefix.clone(),
            };
            sources.remote = values;
            match Settings::load(&sources) {
                Ok(settings) => Ok((settings, sources, at_start)),
                // As a reload would: a bad remote value is refused, and
                // every instance must not crash-loop on one bad write.
                Err(e) => {
                    sources.remote = Vec::new();
                    Ok((local, sources, AtStart::Rejected(format!("etcd: {e}"))))
                }
            }
        }
        Err(why) => Ok((local, sources, AtStart::Unavailable(why.to_string()))),
    }
}

#[cfg(not(feature = "etcd"))]
mod disabled {
    use crate::background::Background;
    use crate::reload::Reloader;
    use crate::settings::Settings;

    /// Without the `etcd` feature there is no remote layer.
    ///
    /// # Errors
    /// When endpoints are configured all the same.
    pub async fn fetch(
        settings: &Settings,
    ) -> Result<Option<Vec<(String, String)>>, super::FetchError> {
        if settings.remote.etcd.endpoints.is_empty() {
            return Ok(None);
        }
        Err(super::FetchError::NotBuilt)
    }

    pub fn spawn(_background: &Background, _settings: &Settings, _reloader: Reloader) {}
}

#[cfg(not(feature = "etcd"))]
pub use disabled::{fetch, spawn};

#[cfg(feature = "etcd")]
pub use enabled::{fetch, spawn};

#[cfg(feature = "etcd")]
mod enabled {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use backon::{BackoffBuilder, ExponentialBuilder};
    use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};

    use crate::background::Background;
    use crate::reload::Reloader;
    use crate::settings::Settings;

    type Values = BTreeMap<String, String>;

    fn options(settings: &Settings) -> ConnectOptions {
        let timeout = Duration::from_millis(settings.remote.etcd.connect_timeout_ms);
        // Keep-alive: a member that dies silently while watched is noticed
        // and the watch moves on; without a leader it answers nothing.
        ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(5), timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true)
    }

    /// The settings' dotted key of an etcd key under `prefix`; `None` for
    /// keys outside it and for keys etcd may not set.
    fn setting_key(prefix: &str, key: &str) -> Option<String> {
        let name = key.strip_prefix(prefix)?.trim_start_matches('/');
        if name.is_empty() {
            return None;
        }
        if !super::settable_remotely(name) {
            tracing::warn!(key = %name, "ignoring a setting etcd may not set");
            return None;
        }
        Some(name.to_owned())
    }

    /// Connects to the first endpoint that answers a read of `prefix`, in
    /// order. One endpoint at a time: etcd-client's balanced channel fails
    /// every request while any one endpoint is down
    /// (etcdv3/etcd-client#39), and a cluster with a member down must
    /// still configure us.
    async fn read_any(
        endpoints: &[String],
        prefix: &str,
        connect: &ConnectOptions,
        per_endpoint: Duration,
    ) -> Result<(Client, Values, i64), etcd_client::Error> {
        let mut last = etcd_client::Error::InvalidArgs("no etcd endpoints".into());
        for endpoint in endpoints {
            let attempt = async {
                let mut client = Client::connect([endpoint], Some(connect.clone())).await?;
                let (values, revision) = read(&mut client, prefix).await?;
                Ok::<_, etcd_client::Error>((client, values, revision))
            };
            let shown = crate::settings::redact("remote.etcd.endpoints", endpoint);
            match tokio::time::timeout(per_endpoint, attempt).await {
                Ok(Ok(found)) => return Ok(found),
                Ok(Err(e)) => {
                    tracing::debug!(endpoint = %shown, error.message = %e, "etcd endpoint did not answer; trying the next");
                    last = e;
                }
                Err(_) => {
                    tracing::debug!(endpoint = %shown, ?per_endpoint, "etcd endpoint did not answer in time; trying the next");
                    last = etcd_client::Error::IoError(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{shown} did not answer within {per_endpoint:?}"),
                    ));
                }
            }
        }
        Err(last)
    }

    /// Connect, then read: each bounded by the connect timeout.
    fn per_endpoint(settings: &Settings) -> Duration {
        Duration::from_millis(settings.remote.etcd.connect_timeout_ms.saturating_mul(2))
    }

    async fn read(client: &mut Client, prefix: &str) -> Result<(Values, i64), etcd_client::Error> {
        let response = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let values = response
            .kvs()
            .iter()
            .filter_map(|kv| {
                Some((
                    setting_key(prefix, kv.key_str().ok()?)?,
                    kv.value_str().ok()?.to_owned(),
                ))
            })
            .collect();
        Ok((values, revision))
    }

    /// Reads the remote layer once, for start-up. `Ok(None)` when etcd is
    /// not configured.
    ///
    /// # Errors
    /// Why etcd could not be read in time (the service then starts on its
    /// local layers and the background task keeps trying).
    pub async fn fetch(
        settings: &Settings,
    ) -> Result<Option<Vec<(String, String)>>, super::FetchError> {
        let etcd = &settings.remote.etcd;
        if etcd.endpoints.is_empty() {
            return Ok(None);
        }
        let connect = options(settings);
        match read_any(
            &etcd.endpoints,
            &etcd.prefix,
            &connect,
            per_endpoint(settings),
        )
        .await
        {
            Ok((_, values, _)) => Ok(Some(values.into_iter().collect())),
            Err(e) => Err(super::FetchError::Unreachable(e.to_string())),
        }
    }

    /// Follows the prefix in the background when etcd is configured.
    pub fn spawn(background: &Background, settings: &Settings, reloader: Reloader) {
        let etcd = settings.remote.etcd.clone();
        if etcd.endpoints.is_empty() {
            return;
        }
        let connect = (options(settings), per_endpoint(settings));
        background.spawn(async move {
            let mut backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .without_max_times()
                .build();
            loop {
                let started = tokio::time::Instant::now();
                let e = follow(&etcd.endpoints, &etcd.prefix, connect.clone(), &reloader).await;
                // A session that lasted resets the backoff.
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(200))
                        .with_max_delay(Duration::from_secs(5))
                        .with_jitter()
                        .without_max_times()
                        .build();
                }
                let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error.message = %e, ?wait, "lost etcd; keeping the last good remote values and reconnecting");
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// One session: read the prefix, then apply every change until the watch
    /// breaks. Returns why it ended.
    async fn follow(
        endpoints: &[String],
        prefix: &str,
        (connect, per_endpoint): (ConnectOptions, Duration),
        reloader: &Reloader,
    ) -> etcd_client::Error {
        let session = async {
            let (mut client, mut values, revision) =
                read_any(endpoints, prefix, &connect, per_endpoint).await?;
            reloader.set_remote(values.clone().into_iter().collect());
            let watch = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let mut stream = client.watch(prefix, Some(watch)).await?;
            while let Some(response) = stream.message().await? {
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Some(key) = kv.key_str().ok().and_then(|k| setting_key(prefix, k)) else {
                        continue;
                    };
                    match event.event_type() {
                        EventType::Put => {
                            values.insert(key, kv.value_str().unwrap_or_default().to_owned());
                        }
                        EventType::Delete => {
                            values.remove(&key);
                        }
                    }
                }
                reloader.set_remote(values.clone().into_iter().collect());
            }
            Err::<(), _>(etcd_client::Error::WatchError("the watch ended".into()))
        };
        match session.await {
            Ok(()) => etcd_client::Error::WatchError("the watch ended".into()),
            Err(e) => e,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::setting_key;

        #[test]
        fn etcd_keys_map_to_dotted_settings() {
            assert_eq!(
                setting_key("/troupe/prod/", "/troupe/prod/log.filter").as_deref(),
                Some("log.filter")
            );
            assert_eq!(
                setting_key("/troupe/prod", "/troupe/prod/log.filter").as_deref(),
                Some("log.filter")
            );
            assert_eq!(setting_key("/troupe/prod/", "/troupe/prod/"), None);
            assert_eq!(setting_key("/troupe/prod/", "/other/x"), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::settable_remotely;

    #[test]
    fn etcd_cannot_set_whom_the_service_trusts() {
        for key in [
            "auth.enabled",
            "auth.keys_file",
            "auth.jwt.issuer",
            "auth.jwt.public_key_file",
            "server.tls.cert_file",
            "server.bind",
            "store.path",
            "telemetry.otlp.endpoint",
        ] {
            assert!(!settable_remotely(key), "{key}");
        }
        for key in ["log.filter", "runtime.mailbox_capacity", "server.port"] {
            assert!(settable_remotely(key), "{key}");
        }
        // Another spelling of a setting etcd may not set, or no setting.
        for key in [
            "remote.etcd.endpoints[0]",
            "auth",
            "store",
            "Log.filter",
            "log.filter.x",
            "runtime.supervision",
        ] {
            assert!(!settable_remotely(key), "{key}");
        }
    }
}
