//! The remote configuration layer: every key under `remote.etcd.prefix` in
//! etcd v3, named by the setting's dotted path
//! (`/troupe/production/log.filter` = `info,troupe=debug`), overrides the
//! file and environment layers.
//!
//! At start the values are read once (bounded by
//! `remote.etcd.connect_timeout_ms`); if etcd cannot be reached the service
//! starts on its local layers and says so. A background task then watches
//! the prefix and applies changes like a file reload; when etcd is lost it
//! keeps the last good values and reconnects with exponential backoff.
//! Nothing here runs on a request's path.

//!
//! The etcd client is behind the `etcd` cargo feature (it needs `protoc` to
//! build); a binary built without it warns when endpoints are configured.

#[cfg(not(feature = "etcd"))]
mod disabled {
    use crate::background::Background;
    use crate::reload::Reloader;
    use crate::settings::Settings;

    /// Without the `etcd` feature there is no remote layer.
    pub async fn fetch(settings: &Settings) -> Option<Vec<(String, String)>> {
        if !settings.remote.etcd.endpoints.is_empty() {
            tracing::warn!("remote.etcd.endpoints is set but this binary was built without the etcd feature; ignoring it");
        }
        None
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
        ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
    }

    /// The settings' dotted key of an etcd key under `prefix`.
    fn setting_key(prefix: &str, key: &str) -> Option<String> {
        let name = key.strip_prefix(prefix)?.trim_start_matches('/');
        (!name.is_empty()).then(|| name.to_owned())
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

    /// Reads the remote layer once, for start-up. `None` when etcd is not
    /// configured or cannot be reached in time (the service then starts on its
    /// local layers).
    pub async fn fetch(settings: &Settings) -> Option<Vec<(String, String)>> {
        let etcd = &settings.remote.etcd;
        if etcd.endpoints.is_empty() {
            return None;
        }
        let attempt = async {
            let mut client = Client::connect(&etcd.endpoints, Some(options(settings))).await?;
            read(&mut client, &etcd.prefix).await
        };
        let limit = Duration::from_millis(etcd.connect_timeout_ms.saturating_mul(2));
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok((values, _))) => {
                tracing::info!(keys = values.len(), prefix = %etcd.prefix, "read remote configuration from etcd");
                Some(values.into_iter().collect())
            }
            Ok(Err(e)) => {
                tracing::warn!(error.message = %e, "etcd unreachable at start; starting on local configuration and retrying in the background");
                None
            }
            Err(_) => {
                tracing::warn!("etcd did not answer in time; starting on local configuration and retrying in the background");
                None
            }
        }
    }

    /// Follows the prefix in the background when etcd is configured.
    pub fn spawn(background: &Background, settings: &Settings, reloader: Reloader) {
        let etcd = settings.remote.etcd.clone();
        if etcd.endpoints.is_empty() {
            return;
        }
        let connect = options(settings);
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
        connect: ConnectOptions,
        reloader: &Reloader,
    ) -> etcd_client::Error {
        let session = async {
            let mut client = Client::connect(endpoints, Some(connect)).await?;
            let (mut values, revision) = read(&mut client, prefix).await?;
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
