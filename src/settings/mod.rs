//! Typed settings, layered with the `config` crate (lowest to highest):
//! `config/default.toml`, `config/{env}.toml`, `config/local.toml`,
//! environment variables `TROUPE__SECTION__KEY`, then command-line flags.
//!
//! The defaults are also compiled in, so the binary runs from any directory.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::Config;
use serde::Deserialize;

use crate::runtime::{RestartPolicy, RuntimeOptions};
use crate::store::{RedisOptions, StoreOptions};

mod layers;
pub mod table;

pub use layers::{describe, redact, Origins};

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub store: StoreSettings,
    pub runtime: RuntimeSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub remote: RemoteSettings,
    pub auth: AuthSettings,
    /// The environment the settings were loaded for (`--env`).
    #[serde(skip)]
    pub environment: String,
}

/// Who may call the API (`crate::auth`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Every route but health and the OpenAPI document needs a key.
    pub enabled: bool,
    /// The TOML file of keys (`[[key]]`: name, sha256, scopes, ids);
    /// empty for none. Reloaded when it changes.
    pub keys_file: String,
    /// Tokens from an identity provider, beside (or instead of) keys.
    pub jwt: JwtSettings,
}

/// JWTs from an identity provider (`crate::auth::jwt`): on when a secret
/// or a public key file is set.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry (one of, when it is a list).
    pub audience: String,
    /// HS256's shared secret, at least 32 bytes (better from
    /// `TROUPE__AUTH__JWT__HS256_SECRET` than from a file).
    pub hs256_secret: String,
    /// An RSA (RS256/384/512) or EC (ES256/384) public key in PEM;
    /// reloaded when it changes.
    pub public_key_file: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// A claim holding the token's id prefix (as a key's `ids`); tokens
    /// without it are refused. Empty: tokens are not limited by id.
    pub ids_claim: String,
    /// Verified tokens each worker remembers until their `exp` (0: every
    /// request verifies its token).
    pub cache_size: usize,
}

impl JwtSettings {
    /// An HS256 secret shorter than the hash is refused (RFC 7518, 3.2).
    pub const MIN_SECRET_BYTES: usize = 32;
    /// Clock skew, not a longer token life.
    pub const MAX_LEEWAY_S: u64 = 300;

    /// What is wrong with these settings, as (key, value shown, reason):
    /// a key needs an issuer and an audience, one key only, a secret as
    /// long as the hash, a small leeway, and no half configuration. Read
    /// by the settings' validation and again by the verifier, which tests
    /// and embedders may build from settings never validated.
    pub fn problem(&self) -> Option<(&'static str, String, &'static str)> {
        let named = !self.issuer.trim().is_empty() || !self.audience.trim().is_empty();
        if !self.is_configured() {
            return named.then(|| {
                (
                    "auth.jwt.issuer",
                    self.issuer.clone(),
                    "auth.jwt names an issuer or audience but no key: set hs256_secret or public_key_file",
                )
            });
        }
        if self.issuer.trim().is_empty() || self.audience.trim().is_empty() {
            return Some((
                "auth.jwt.audience",
                self.audience.clone(),
                "auth.jwt needs both issuer and audience when it has a key",
            ));
        }
        if !self.hs256_secret.is_empty() && !self.public_key_file.trim().is_empty() {
            return Some((
                "auth.jwt.public_key_file",
                self.public_key_file.clone(),
                "set auth.jwt.hs256_secret or auth.jwt.public_key_file, not both",
            ));
        }
        if !self.hs256_secret.is_empty() && self.hs256_secret.len() < Self::MIN_SECRET_BYTES {
            return Some((
                "auth.jwt.hs256_secret",
                "***".into(),
                "must be at least 32 bytes (RFC 7518: as long as the hash)",
            ));
        }
        if self.leeway_s > Self::MAX_LEEWAY_S {
            return Some((
                "auth.jwt.leeway_s",
                self.leeway_s.to_string(),
                "must be at most 300 (clock skew, not a longer token life)",
            ));
        }
        None
    }

    /// Whether a key is configured, and so tokens are accepted.
    pub fn is_configured(&self) -> bool {
        !self.hs256_secret.is_empty() || !self.public_key_file.trim().is_empty()
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSettings {
    pub etcd: EtcdSettings,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSettings {
    /// Empty: no remote layer.
    pub endpoints: Vec<String>,
    /// Keys under it are settings by dotted path, e.g. `/troupe/production/log.filter`.
    pub prefix: String,
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `service.name`, unless `OTEL_SERVICE_NAME` is set.
    pub service_name: String,
    /// Per-request HTTP metrics (the runtime's own counters are always kept).
    pub http_metrics: bool,
    pub otlp: OtlpSettings,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSettings {
    /// Where spans go; empty means `OTEL_EXPORTER_OTLP_ENDPOINT`, and export
    /// is off when both are empty.
    pub endpoint: String,
    /// `grpc` or `http/protobuf`; empty means `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// else `grpc`.
    pub protocol: String,
    /// Parent-based ratio of new traces sampled, unless `OTEL_TRACES_SAMPLER` is set.
    pub sampling_ratio: f64,
    /// Spans queued for export; past it they are dropped (and counted).
    pub queue_size: usize,
    pub export_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub bind: String,
    pub port: u16,
    pub workers: usize,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    /// `host:port` of a second listener for `/metrics`, `/config` and
    /// health, which then leave the main one (health stays on both);
    /// empty for none.
    pub ops_bind: String,
    pub tls: TlsSettings,
    pub drain_delay_ms: u64,
    pub shutdown_grace_ms: u64,
    pub retry_after_s: u64,
}

/// TLS on every listener (`crate::tls`): on when both files are set.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain in PEM, the server's own first.
    pub cert_file: String,
    /// Its private key in PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

impl TlsSettings {
    pub fn is_enabled(&self) -> bool {
        !self.cert_file.trim().is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    Embedded,
    Redis,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: StoreBackend,
    pub path: PathBuf,
    pub max_batch: usize,
    pub queue: usize,
    pub idempotency_retention_s: u64,
    pub sweep_interval_s: u64,
    pub cache_mb: u64,
    pub memtable_mb: u64,
    pub redis: RedisSettings,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: String,
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    pub command_timeout_ms: u64,
    pub prefix: String,
    pub lease_ms: u64,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    pub mailbox_capacity: usize,
    pub shard_mailbox_capacity: usize,
    pub idle_timeout_ms: u64,
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub effect_timeout_ms: u64,
    pub ask_min_backoff_ms: u64,
    pub ask_max_backoff_ms: u64,
    pub retry_interval_ms: u64,
    pub max_activations: usize,
    pub wake_concurrency: usize,
    pub idempotency_cache: usize,
    pub supervision: SupervisionSettings,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionSettings {
    pub max_restarts: u32,
    pub window_ms: u64,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub filter: String,
    pub format: LogFormat,
}

/// Where to find the layers.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Directory of `default.toml`, `{env}.toml` and `local.toml`.
    pub config_dir: Option<PathBuf>,
    /// `development` when `None`.
    pub env: Option<String>,
    /// `(dotted.key, value)` pairs from flags: the highest layer.
    pub overrides: Vec<(String, String)>,
    /// `(dotted.key, value)` pairs from the remote store (etcd), between
    /// the environment and the flags.
    pub remote: Vec<(String, String)>,
    /// The `TROUPE__*` variables to read; `None` reads the process
    /// environment. Tests pass theirs here rather than mutate the process's,
    /// which concurrent tests in one process would see.
    pub environment: Option<std::collections::HashMap<String, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {key} = {value:?} (from {layer}) is invalid: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: Cow<'static, str>,
        layer: String,
    },
}

impl Settings {
    /// Reads and validates every layer.
    ///
    /// # Errors
    /// When a file cannot be parsed, a value has the wrong type, or a value
    /// is out of range; the message names the key.
    pub fn load(sources: &Sources) -> Result<Self, SettingsError> {
        Self::load_with_origins(sources).map(|(settings, _)| settings)
    }

    /// Loads the settings and which layer each key came from.
    ///
    /// # Errors
    /// As [`Settings::load`]; a value out of range names its layer.
    pub fn load_with_origins(sources: &Sources) -> Result<(Self, Origins), SettingsError> {
        let layers = sources.layers()?;
        let origins = Origins::of(&layers);
        let mut builder = Config::builder();
        for (_, layer) in layers {
            builder = builder.add_source(layer);
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.environment = sources.environment();
        // The comma-separated environment form: " a, b," means [a, b].
        let endpoints = &mut settings.remote.etcd.endpoints;
        *endpoints = endpoints
            .iter()
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        if let Err(SettingsError::Invalid {
            key, value, reason, ..
        }) = settings.validate()
        {
            let layer = origins.layer(key).unwrap_or("defaults").to_owned();
            return Err(SettingsError::Invalid {
                key,
                value,
                reason,
                layer,
            });
        }
        Ok((settings, origins))
    }

    /// Every value against its range or choices in the settings table,
    /// then the rules that tie settings together.
    fn validate(&self) -> Result<(), SettingsError> {
        let flat = self.flattened();
        for setting in table::SETTINGS {
            let Some(value) = flat.get(setting.key) else {
                continue;
            };
            if let Some(reason) = setting.problem(value) {
                return Err(SettingsError::Invalid {
                    key: setting.key,
                    value: value.clone(),
                    reason: reason.into(),
                    layer: String::new(),
                });
            }
        }
        // A renewal may wait a command timeout: the lease outlasts several.
        let redis = &self.store.redis;
        if redis.lease_ms < redis.command_timeout_ms.saturating_mul(4) {
            return Err(SettingsError::Invalid {
                key: "store.redis.lease_ms",
                value: redis.lease_ms.to_string(),
                layer: String::new(),
                reason: "must be at least 4 times store.redis.command_timeout_ms (a renewal may wait that long)".into(),
            });
        }
        if self.runtime.max_timeout_ms < self.runtime.default_timeout_ms {
            return Err(SettingsError::Invalid {
                key: "runtime.max_timeout_ms",
                value: self.runtime.max_timeout_ms.to_string(),
                layer: String::new(),
                reason: "must not be below runtime.default_timeout_ms".into(),
            });
        }
        let tls = &self.server.tls;
        if tls.cert_file.trim().is_empty() != tls.key_file.trim().is_empty() {
            return Err(SettingsError::Invalid {
                key: "server.tls.key_file",
                value: tls.key_file.clone(),
                layer: String::new(),
                reason: "server.tls.cert_file and server.tls.key_file are set together".into(),
            });
        }
        self.validate_jwt()?;
        if self.server.bind.parse::<std::net::IpAddr>().is_err() && self.server.bind != "localhost"
        {
            return Err(SettingsError::Invalid {
                key: "server.bind",
                value: self.server.bind.clone(),
                layer: String::new(),
                reason: "must be an IP address".into(),
            });
        }
        Ok(())
    }

    /// `auth.jwt`, as [`JwtSettings::problem`] reads it.
    fn validate_jwt(&self) -> Result<(), SettingsError> {
        match self.auth.jwt.problem() {
            None => Ok(()),
            Some((key, value, reason)) => Err(SettingsError::Invalid {
                key,
                value,
                layer: String::new(),
                reason: reason.into(),
            }),
        }
    }

    pub fn runtime_options(&self) -> RuntimeOptions {
        let r = &self.runtime;
        let s = &r.supervision;
        RuntimeOptions {
            mailbox_capacity: r.mailbox_capacity,
            shard_mailbox_capacity: r.shard_mailbox_capacity,
            idle_timeout: Duration::from_millis(r.idle_timeout_ms),
            default_timeout: Duration::from_millis(r.default_timeout_ms),
            max_timeout: Duration::from_millis(r.max_timeout_ms),
            effect_timeout: Duration::from_millis(r.effect_timeout_ms),
            ask_min_backoff: Duration::from_millis(r.ask_min_backoff_ms),
            ask_max_backoff: Duration::from_millis(r.ask_max_backoff_ms.max(r.ask_min_backoff_ms)),
            retry_interval: Duration::from_millis(r.retry_interval_ms),
            max_activations: r.max_activations,
            wake_concurrency: r.wake_concurrency,
            idempotency_cache: r.idempotency_cache,
            restart: RestartPolicy {
                max_restarts: s.max_restarts,
                window: Duration::from_millis(s.window_ms),
                backoff: Duration::from_millis(s.backoff_ms),
                max_backoff: Duration::from_millis(s.max_backoff_ms),
            },
        }
    }

    pub fn redis_options(&self) -> RedisOptions {
        let r = &self.store.redis;
        RedisOptions {
            url: r.url.clone(),
            pool_size: r.pool_size,
            connect_timeout: Duration::from_millis(r.connect_timeout_ms),
            command_timeout: Duration::from_millis(r.command_timeout_ms),
            prefix: r.prefix.clone(),
        }
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            idempotency_retention: Duration::from_secs(self.store.idempotency_retention_s),
            max_batch: self.store.max_batch,
            queue: self.store.queue,
            cache_bytes: self.store.cache_mb << 20,
            memtable_bytes: self.store.memtable_mb << 20,
        }
    }

    /// Threads for HTTP workers and for actor shards: 0 means one per core.
    pub fn threads(configured: usize) -> usize {
        if configured > 0 {
            configured
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.store.path
    }
}

#[cfg(test)]
mod tests {
    use super::{JwtSettings, Settings, SettingsError, Sources};

    /// The defaults with `pairs` set as flags would set them.
    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::load(&Sources {
            environment: Some(Default::default()),
            config_dir: Some("/nonexistent".into()),
            overrides: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Sources::default()
        })
    }

    fn refused(pairs: &[(&str, &str)]) -> String {
        match load(pairs) {
            Ok(_) => panic!("{pairs:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// The rules that tie settings together accept their bound and refuse
    /// one past it.
    #[test]
    fn rules_between_settings_accept_their_bound() {
        let lease = |ms: &'static str| {
            [
                ("store.redis.command_timeout_ms", "250"),
                ("store.redis.lease_ms", ms),
            ]
        };
        assert!(load(&lease("1000")).is_ok(), "four command timeouts");
        assert!(refused(&lease("999")).contains("store.redis.lease_ms"));
        let timeouts = |max: &'static str| {
            [
                ("runtime.default_timeout_ms", "3000"),
                ("runtime.max_timeout_ms", max),
            ]
        };
        assert!(
            load(&timeouts("3000")).is_ok(),
            "a cap equal to the default"
        );
        assert!(refused(&timeouts("2999")).contains("runtime.max_timeout_ms"));
        for bind in ["localhost", "::1", "0.0.0.0"] {
            assert!(load(&[("server.bind", bind)]).is_ok(), "{bind}");
        }
        assert!(refused(&[("server.bind", "example.com")]).contains("server.bind"));
    }

    /// What the JWT verifier checks of settings never validated: a secret
    /// as long as the hash, a leeway of five minutes at most.
    #[test]
    fn jwt_settings_accept_their_bounds() {
        let mut jwt = JwtSettings {
            issuer: "https://id.example".into(),
            audience: "troupe".into(),
            hs256_secret: "s".repeat(JwtSettings::MIN_SECRET_BYTES),
            public_key_file: String::new(),
            leeway_s: JwtSettings::MAX_LEEWAY_S,
            ids_claim: String::new(),
            cache_size: 0,
        };
        assert!(jwt.problem().is_none());
        jwt.hs256_secret.pop();
        assert_eq!(jwt.problem().map(|p| p.0), Some("auth.jwt.hs256_secret"));
        jwt.hs256_secret.push('s');
        jwt.leeway_s += 1;
        assert_eq!(jwt.problem().map(|p| p.0), Some("auth.jwt.leeway_s"));
    }
}
