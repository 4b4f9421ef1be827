//! The configuration layers, lowest to highest precedence, and where each
//! effective value came from.
//!
//! Each layer is built on its own and then merged in order, so the origin
//! of every key is known: `troupe config` prints it, and a value out of
//! range names the layer that set it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use config::{Config, ConfigError, Environment, File, FileFormat, Source, Value, ValueKind};

use super::table::{self, defaults_toml};
use super::{Settings, SettingsError, Sources};

impl Sources {
    pub(super) fn environment(&self) -> String {
        self.env.clone().unwrap_or_else(|| "development".into())
    }

    fn dir(&self) -> PathBuf {
        self.config_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("config"))
    }

    /// Every layer, named, lowest precedence first.
    pub(super) fn layers(&self) -> Result<Vec<(String, Config)>, ConfigError> {
        let dir = self.dir();
        let mut layers = vec![(
            "defaults (built in)".to_owned(),
            Config::builder()
                .add_source(File::from_str(&defaults_toml(), FileFormat::Toml))
                .build()?,
        )];
        for name in ["default".to_owned(), self.environment(), "local".to_owned()] {
            let path = dir.join(format!("{name}.toml"));
            let file = File::from(path.clone())
                .format(FileFormat::Toml)
                .required(false);
            layers.push((
                path.display().to_string(),
                Config::builder().add_source(file).build()?,
            ));
        }
        // List settings take the comma-separated form:
        // TROUPE__REMOTE__ETCD__ENDPOINTS=http://a:2379,http://b:2379
        let mut env = Environment::with_prefix("TROUPE")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for key in table::list_keys() {
            env = env.with_list_parse_key(key);
        }
        let env = env.source(self.environment.clone());
        layers.push((
            "environment (TROUPE__*)".to_owned(),
            Config::builder().add_source(env).build()?,
        ));
        for (name, pairs) in [("etcd", &self.remote), ("flags", &self.overrides)] {
            let mut builder = Config::builder();
            for (key, value) in pairs {
                builder = builder.set_override(key.as_str(), value.as_str())?;
            }
            layers.push((name.to_owned(), builder.build()?));
        }
        Ok(layers)
    }
}

/// Which layer set each dotted key last.
#[derive(Debug, Clone, Default)]
pub struct Origins(BTreeMap<String, String>);

impl Origins {
    pub(super) fn of(layers: &[(String, Config)]) -> Self {
        let mut origins = BTreeMap::new();
        for (name, layer) in layers {
            let mut keys = BTreeMap::new();
            if let Ok(table) = layer.collect() {
                flatten("", Value::new(None, ValueKind::Table(table)), &mut keys);
            }
            for key in keys.into_keys() {
                origins.insert(key, name.clone());
            }
        }
        Self(origins)
    }

    pub fn layer(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

fn flatten(prefix: &str, value: Value, out: &mut BTreeMap<String, String>) {
    match value.kind {
        ValueKind::Table(table) => {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), value.to_string());
        }
    }
}

/// The effective settings as `(key, value, layer)`, secrets redacted.
///
/// # Errors
/// When the settings do not load.
pub fn describe(sources: &Sources) -> Result<Vec<(String, String, String)>, SettingsError> {
    let (settings, origins) = Settings::load_with_origins(sources)?;
    Ok(settings
        .flattened()
        .into_iter()
        .map(|(key, value)| {
            let layer = origins
                .layer(&key)
                .unwrap_or("defaults (built in)")
                .to_owned();
            let value = redact(&key, &value);
            (key, value, layer)
        })
        .collect())
}

/// Hides secrets: the whole value of a setting the table marks secret, and
/// the password part of URLs in any other (`redis://user:secret@host` ->
/// `redis://user:***@host`).
pub fn redact(key: &str, value: &str) -> String {
    if table::lookup(key).is_some_and(|s| s.secret) {
        return "***".into();
    }
    if value.contains("://") {
        return redact_urls(value);
    }
    value.to_owned()
}

/// The password of every URL in `value` (a list holds several) replaced
/// by `***`.
fn redact_urls(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', quote, comma or space.
        let end = tail.find(['/', '"', ',', ' ', ']']).unwrap_or(tail.len());
        let (authority, after) = tail.split_at(end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                if userinfo.contains(':') {
                    out.push_str(&format!("{user}:***@{host}"));
                } else {
                    out.push_str(authority);
                }
            }
            None => out.push_str(authority),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

impl Settings {
    /// Every setting as a dotted key and its value's text.
    pub fn flattened(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Ok(json) = serde_json::to_value(self) {
            flatten_json("", &json, &mut out);
        }
        out
    }
}

fn flatten_json(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_json(&key, v, out);
            }
        }
        serde_json::Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;
    use crate::settings::{table, Settings, Sources};

    /// Every list setting takes the comma-separated environment form: a
    /// list setting the table does not call a list fails here.
    #[test]
    fn every_list_setting_has_the_environment_form() {
        let sources = Sources {
            environment: Some(Default::default()),
            ..Sources::default()
        };
        let settings = Settings::load(&sources).unwrap();
        // Flattened, a list is its JSON text.
        let lists: Vec<String> = settings
            .flattened()
            .into_iter()
            .filter(|(_, v)| v.starts_with('['))
            .map(|(k, _)| k)
            .collect();
        assert!(!lists.is_empty());
        for key in lists {
            assert!(
                table::list_keys().any(|k| k == key),
                "{key} is a list setting"
            );
        }
        let mut environment = std::collections::HashMap::new();
        environment.insert(
            "TROUPE__REMOTE__ETCD__ENDPOINTS".to_owned(),
            "http://a:2379".to_owned(),
        );
        let one = Settings::load(&Sources {
            environment: Some(environment),
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(one.remote.etcd.endpoints, ["http://a:2379"]);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("store.redis.url", "redis://u:pw@h:6379"),
            "redis://u:***@h:6379"
        );
        assert_eq!(
            redact("store.redis.url", "redis://h:6379"),
            "redis://h:6379"
        );
        assert_eq!(redact("auth.jwt.hs256_secret", "x"), "***");
        assert_eq!(redact("auth.jwt.issuer", "x"), "x");
        assert_eq!(
            redact(
                "remote.etcd.endpoints",
                r#"["http://a:pa@h1:2379","http://h2:2379","http://b:pb@h3/x"]"#
            ),
            r#"["http://a:***@h1:2379","http://h2:2379","http://b:***@h3/x"]"#
        );
    }
}
