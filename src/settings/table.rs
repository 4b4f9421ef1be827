//! Every setting, declared once: its dotted key, type and range, default,
//! description, and how it may change (reloaded live, set from etcd, a list
//! in the environment, a secret).
//!
//! Everything else reads this table: the compiled-in defaults and
//! `config/default.toml` ([`defaults_toml`]), validation of ranges and
//! choices, live reload (`crate::reload`), what etcd may set
//! (`crate::remote`), the environment's list form, redaction in logs,
//! `/config` and `troupe config`, and the configuration reference in the
//! book ([`reference_markdown`]). Tests keep the typed [`super::Settings`]
//! and the files generated from the table in step with it.

use std::fmt::Write as _;

/// What values a setting takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Type {
    Bool,
    /// A whole number in `min..=max`; `note` explains the bound.
    Int {
        min: u64,
        max: u64,
        note: &'static str,
    },
    /// A number in `min..=max`.
    Float {
        min: f64,
        max: f64,
    },
    /// Free text.
    Text,
    /// A file or directory path; empty for none where the description says so.
    Path,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// A list of text; comma-separated in the environment.
    List,
}

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The dotted path, e.g. `server.port`.
    pub key: &'static str,
    pub ty: Type,
    /// The default as a TOML value (`8080`, `"info"`, `[]`).
    pub default: &'static str,
    /// What it does, in sentences.
    pub doc: &'static str,
    /// Applied while running, without a restart.
    pub reload: bool,
    /// etcd (the remote layer) may set it. Whatever decides where the
    /// ledger's data goes or whom the service trusts may not be.
    pub remote: bool,
    /// Never shown: logs, `/config` and `troupe config` print `***`.
    pub secret: bool,
}

const ANY: u64 = u64::MAX;

const fn int(min: u64, max: u64) -> Type {
    Type::Int { min, max, note: "" }
}

/// A setting changed only by a restart, settable from etcd.
const fn host(key: &'static str, ty: Type, default: &'static str, doc: &'static str) -> Setting {
    Setting {
        key,
        ty,
        default,
        doc,
        reload: false,
        remote: true,
        secret: false,
    }
}

/// A setting only files, the environment and flags may set.
const fn local(key: &'static str, ty: Type, default: &'static str, doc: &'static str) -> Setting {
    Setting {
        remote: false,
        ..host(key, ty, default, doc)
    }
}

/// A setting applied while running.
const fn live(key: &'static str, ty: Type, default: &'static str, doc: &'static str) -> Setting {
    Setting {
        reload: true,
        ..host(key, ty, default, doc)
    }
}

/// Every setting, in the order of `config/default.toml`: a section's own
/// keys before its subsections'.
pub const SETTINGS: &[Setting] = &[
    // server
    local("server.bind", Type::Text, "\"127.0.0.1\"",
        "Address the main listener binds: an IP address or `localhost`. `0.0.0.0` serves every interface."),
    host("server.port", int(0, 65535), "8080",
        "Port of the main listener; 0 picks a free one (the log says which)."),
    host("server.workers", int(0, ANY), "0",
        "HTTP worker threads; 0 means one per core. Each worker also hosts one shard of the actors, so this is the actor runtime's thread count too."),
    host("server.max_body_bytes", int(1, ANY), "65536",
        "Largest request body accepted; a larger one is answered 413."),
    host("server.max_connections", int(1, ANY), "10000",
        "Open connections each worker serves at most (each holds a few KiB of buffers); past it the worker stops accepting until one closes, and new clients wait in the listen backlog."),
    host("server.ops_bind", Type::Text, "\"\"",
        "`host:port` of a second listener for `/metrics`, `/config` and health, so operators can keep them off the public network; they then answer 404 on the main port (health stays on both). Empty: one listener for all."),
    host("server.drain_delay_ms", int(0, ANY), "0",
        "On SIGTERM or SIGINT, keep serving with `/readyz` answering 503 this long, so load balancers stop sending before the listener closes."),
    host("server.shutdown_grace_ms", int(0, ANY), "10000",
        "Then stop accepting and give requests in flight this long to finish."),
    host("server.retry_after_s", int(0, ANY), "1",
        "`Retry-After` (seconds) on 429 and 503 answers."),
    local("server.tls.cert_file", Type::Path, "\"\"",
        "HTTPS on every listener (the operations one too) when this and `key_file` are set: the certificate chain in PEM, the server's own first. Re-read when it changes, so renewals need no restart; a pair that does not load keeps the running certificate. Empty: plain HTTP."),
    local("server.tls.key_file", Type::Path, "\"\"",
        "The certificate's private key in PEM (PKCS#8, PKCS#1 or SEC1); set together with `cert_file`."),
    // store
    local("store.backend", Type::Choice(&["embedded", "redis"]), "\"embedded\"",
        "`embedded`: fjall, an LSM store in `store.path`, no server needed. `redis`: the server at `store.redis.url`."),
    local("store.path", Type::Path, "\"./data\"",
        "Data directory of the embedded store. One running instance per directory."),
    local("store.max_batch", int(1, ANY), "1024",
        "Most actor commits one durable write takes (group commit)."),
    local("store.queue", int(1, ANY), "8192",
        "Commits queued for the writer before actors wait."),
    local("store.idempotency_retention_s", Type::Int { min: 0, max: 315_360_000, note: "ten years" }, "86400",
        "How long an idempotency key is remembered: a retry within it gets the first answer; after it the key is new again."),
    local("store.sweep_interval_s", int(1, ANY), "300",
        "How often the embedded store deletes expired idempotency records (Redis expires them itself)."),
    local("store.cache_mb", Type::Int { min: 0, max: 1 << 20, note: "1 TiB" }, "32",
        "Embedded: the block cache of recently read data, in MiB."),
    local("store.memtable_mb", int(1, 1024), "8",
        "Embedded: what each keyspace holds in memory before writing a sorted table, in MiB (up to four sealed ones may wait for the flush thread too). Fixed when the store is created: a later change is ignored."),
    local("store.redis.url", Type::Text, "\"redis://127.0.0.1:6379\"",
        "The Redis server, `redis://[user:password@]host:port[/db]` (plain TCP: the build has no TLS to Redis); the password is never shown."),
    local("store.redis.pool_size", int(1, ANY), "16",
        "Pooled connections to Redis."),
    local("store.redis.connect_timeout_ms", int(1, ANY), "1000",
        "Bound on connecting to Redis."),
    local("store.redis.command_timeout_ms", int(1, ANY), "1000",
        "Bound on every Redis command, and on the wait for a pooled connection."),
    local("store.redis.prefix", Type::Text, "\"troupe\"",
        "Prefix of every key, so several deployments can share one Redis. One running instance per prefix."),
    local("store.redis.lease_ms", int(100, 86_400_000), "10000",
        "The instance lease on the prefix: an instance serves only while it holds it, renewing it a third of this apart; at least four times `command_timeout_ms`. A second instance on the same prefix stays not ready until the first stops; after a crash, the next start waits up to this long."),
    // runtime
    live("runtime.mailbox_capacity", int(1, ANY), "1024",
        "Bounded mailbox of each actor; a full one answers 429. A change applies to actors activated after it."),
    live("runtime.shard_mailbox_capacity", int(1, ANY), "65536",
        "Bounded mailbox of each shard (the per-thread directory of actors). Running shards keep the capacity they started with: a change is accepted live and takes effect at the next start."),
    live("runtime.idle_timeout_ms", int(1, ANY), "60000",
        "Actors idle this long are passivated: their memory is released and the next message activates them from the store."),
    live("runtime.default_timeout_ms", int(1, ANY), "5000",
        "A request's deadline when it sends no `X-Request-Timeout`."),
    live("runtime.max_timeout_ms", int(0, ANY), "30000",
        "The cap on `X-Request-Timeout`; at least `default_timeout_ms`."),
    live("runtime.effect_timeout_ms", int(1, ANY), "2000",
        "Deadline of each attempt of an actor-to-actor ask (a transfer's legs)."),
    live("runtime.ask_min_backoff_ms", int(1, ANY), "5",
        "First backoff between attempts of an ask that failed transiently; asks for unfinished work are retried for as long as it takes."),
    live("runtime.ask_max_backoff_ms", int(1, ANY), "2000",
        "Largest backoff between attempts of an ask (raised to `ask_min_backoff_ms` when below it)."),
    live("runtime.retry_interval_ms", int(1, ANY), "1000",
        "How often unfinished work nothing is driving (a transfer whose last ask failed, an account's outbox after a restart) is resumed; also the pace of retried loads of an actor with unfinished work while the store is away."),
    live("runtime.max_activations", int(1, ANY), "50000",
        "Live actors across all shards. At the cap the least recently used idle ones are passivated; with none idle, new actors get 429."),
    live("runtime.wake_concurrency", int(1, ANY), "256",
        "After a restart, actors with unfinished work are woken this many at a time (beyond `max_activations`: unfinished work must not wait). Read at start."),
    live("runtime.idempotency_cache", int(0, ANY), "8",
        "Idempotency records and transfer facts each actor keeps in memory (about 250 bytes each); older ones are read from the store. A change applies to actors activated after it."),
    live("runtime.supervision.max_restarts", int(0, ANY), "5",
        "More than this many panics of one actor within `window_ms` and it answers 503 until the window has passed."),
    live("runtime.supervision.window_ms", int(1, ANY), "10000",
        "The window in which restarts are counted."),
    live("runtime.supervision.backoff_ms", int(0, ANY), "10",
        "Backoff before a restart; doubles per restart within the window."),
    live("runtime.supervision.max_backoff_ms", int(0, ANY), "1000",
        "Largest backoff before a restart."),
    // log
    live("log.filter", Type::Text, "\"info\"",
        "Which logs are written, in tracing's `EnvFilter` syntax, e.g. `info,troupe::store=debug`. `RUST_LOG` wins at start."),
    host("log.format", Type::Choice(&["pretty", "json"]), "\"pretty\"",
        "`pretty` for people, `json` (one object per line) for log collectors."),
    // telemetry
    host("telemetry.service_name", Type::Text, "\"troupe\"",
        "`service.name` of traces, unless `OTEL_SERVICE_NAME` is set."),
    host("telemetry.http_metrics", Type::Bool, "true",
        "Per-route request counters and latency histograms at `/metrics` (the runtime's own counters are always kept)."),
    local("telemetry.otlp.endpoint", Type::Text, "\"\"",
        "Where spans are exported over OTLP, e.g. `http://localhost:4317` (Jaeger's OTLP gRPC port). Empty: `OTEL_EXPORTER_OTLP_ENDPOINT`; export is off when both are empty."),
    host("telemetry.otlp.protocol", Type::Choice(&["", "grpc", "http/protobuf"]), "\"\"",
        "`grpc` or `http/protobuf`. Empty: `OTEL_EXPORTER_OTLP_PROTOCOL`, else `grpc`."),
    live("telemetry.otlp.sampling_ratio", Type::Float { min: 0.0, max: 1.0 }, "1.0",
        "Ratio of new traces sampled; a sampled caller is always followed. `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` take over when set."),
    host("telemetry.otlp.queue_size", int(0, ANY), "2048",
        "Spans waiting for export; beyond it they are dropped and counted, never waited for."),
    host("telemetry.otlp.export_timeout_ms", int(0, ANY), "5000",
        "Bound on one export."),
    // remote
    local("remote.etcd.endpoints", Type::List, "[]",
        "etcd v3 endpoints of the remote configuration layer, e.g. `[\"http://10.0.0.1:2379\"]`; in the environment `http://a:2379,http://b:2379`. Empty: no remote layer."),
    local("remote.etcd.prefix", Type::Text, "\"/troupe/\"",
        "Every key under it is a setting by dotted path, e.g. `/troupe/log.filter` = `info,troupe=debug`."),
    local("remote.etcd.connect_timeout_ms", int(1, ANY), "1000",
        "Bound on connecting to each endpoint."),
    // auth
    local("auth.enabled", Type::Bool, "false",
        "Every route but `/healthz`, `/readyz`, `/openapi.json` and `/docs` needs a credential (`Authorization: Bearer <token>`) with the route's scope. Production turns it on and refuses to start without a key."),
    local("auth.keys_file", Type::Path, "\"\"",
        "The TOML file of API keys (`[[key]]`: name, sha256, scopes, ids), made by `troupe keys new`; reloaded when it changes. Empty: none."),
    local("auth.jwt.issuer", Type::Text, "\"\"",
        "The `iss` every token from the identity provider must carry. Tokens are accepted beside the keys when `hs256_secret` or `public_key_file` is set."),
    local("auth.jwt.audience", Type::Text, "\"\"",
        "The `aud` every token must carry (one of, when it is a list)."),
    Setting {
        secret: true,
        ..local("auth.jwt.hs256_secret", Type::Text, "\"\"",
            "HS256's shared secret, at least 32 bytes; better from `TROUPE__AUTH__JWT__HS256_SECRET` than from a file.")
    },
    local("auth.jwt.public_key_file", Type::Path, "\"\"",
        "An RSA (RS256/384/512) or EC (ES256/384) public key in PEM, instead of a secret; reloaded when it changes."),
    local("auth.jwt.leeway_s", Type::Int { min: 0, max: 300, note: "clock skew, not a longer token life" }, "30",
        "Clock skew allowed on `exp` and `nbf`, in seconds."),
    local("auth.jwt.ids_claim", Type::Text, "\"\"",
        "A claim holding the token's id prefix, as a key's `ids`; tokens without it are refused. Empty: tokens are not limited by id."),
    local("auth.jwt.cache_size", int(0, ANY), "10000",
        "Verified tokens each worker remembers (by their SHA-256) until their `exp`, so a token is verified once; a reload of the keys forgets them. 0: verify every request."),
];

/// The setting at `key`.
pub fn lookup(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// The dotted keys of the list settings.
pub fn list_keys() -> impl Iterator<Item = &'static str> {
    SETTINGS
        .iter()
        .filter(|s| s.ty == Type::List)
        .map(|s| s.key)
}

impl Setting {
    /// The environment variable that sets it: `TROUPE__SERVER__PORT`.
    pub fn env_var(&self) -> String {
        format!("TROUPE__{}", self.key.replace('.', "__").to_uppercase())
    }

    /// Why `value` (the effective value's text) is out of range, if it is.
    pub fn problem(&self, value: &str) -> Option<String> {
        match self.ty {
            Type::Int { min, max, note } => {
                let n: u64 = value.parse().ok()?;
                if (min..=max).contains(&n) {
                    return None;
                }
                let bound = match (min, max) {
                    (_, ANY) => format!("must be at least {min}"),
                    (0, _) => format!("must be at most {max}"),
                    _ => format!("must be between {min} and {max}"),
                };
                Some(if note.is_empty() {
                    bound
                } else {
                    format!("{bound} ({note})")
                })
            }
            Type::Float { min, max } => {
                let x: f64 = value.parse().ok()?;
                (!(min..=max).contains(&x))
                    .then(|| format!("must be between {min:.1} and {max:.1}"))
            }
            Type::Choice(words) => (!words.contains(&value)).then(|| {
                let named: Vec<String> = words
                    .iter()
                    .map(|w| {
                        if w.is_empty() {
                            "empty".to_owned()
                        } else {
                            (*w).to_owned()
                        }
                    })
                    .collect();
                format!("must be one of: {}", named.join(", "))
            }),
            Type::Bool | Type::Text | Type::Path | Type::List => None,
        }
    }

    fn type_name(&self) -> String {
        match self.ty {
            Type::Bool => "bool".into(),
            Type::Int { min, max, .. } => match (min, max) {
                (0, ANY) => "integer".into(),
                (_, ANY) => format!("integer ≥ {min}"),
                _ => format!("integer {min}–{max}"),
            },
            Type::Float { min, max } => format!("number {min:.1}–{max:.1}"),
            Type::Text => "text".into(),
            Type::Path => "path".into(),
            Type::Choice(words) => words
                .iter()
                .map(|w| {
                    if w.is_empty() {
                        "empty".to_owned()
                    } else {
                        format!("`{w}`")
                    }
                })
                .collect::<Vec<_>>()
                .join(" or "),
            Type::List => "list of text".into(),
        }
    }
}

/// `config/default.toml`, and the defaults compiled into the binary.
pub fn defaults_toml() -> String {
    let mut out = String::from(
        "# troupe's defaults, generated from the settings table (src/settings/table.rs):\n\
         # `troupe config defaults` prints this file. Every key can be overridden by\n\
         # config/{env}.toml, config/local.toml, environment variables\n\
         # (TROUPE__SECTION__KEY), etcd where allowed, and flags.\n",
    );
    let mut section = "";
    for s in SETTINGS {
        let (table, name) = s.key.rsplit_once('.').unwrap_or(("", s.key));
        if table != section {
            section = table;
            let _ = write!(out, "\n[{table}]\n");
        }
        let mut doc = s.doc.replace('`', "");
        if s.reload {
            doc.push_str(" Reloaded live.");
        }
        if !s.remote {
            doc.push_str(" Not from etcd.");
        }
        if s.secret {
            doc.push_str(" Secret.");
        }
        for line in wrap(&doc, 76) {
            let _ = writeln!(out, "# {line}");
        }
        let _ = writeln!(out, "{name} = {}", s.default);
    }
    out
}

/// The configuration reference in the book: one table of every setting.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "<!-- Generated from src/settings/table.rs by `troupe config reference`; \
         a test fails when it differs. -->\n\n\
         | Setting | Type | Default | Live | etcd | What it does |\n\
         | --- | --- | --- | :---: | :---: | --- |\n",
    );
    for s in SETTINGS {
        let mut doc = s.doc.to_owned();
        if s.secret {
            doc.push_str(" Secret: shown as `***`.");
        }
        let _ = writeln!(
            out,
            "| `{}`<br>`{}` | {} | `{}` | {} | {} | {} |",
            s.key,
            s.env_var(),
            s.type_name(),
            s.default,
            if s.reload { "yes" } else { "" },
            if s.remote { "yes" } else { "" },
            doc.replace('|', "\\|"),
        );
    }
    out
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Settings, Sources};

    fn defaults() -> Settings {
        Settings::load(&Sources {
            environment: Some(Default::default()),
            config_dir: Some(std::path::PathBuf::from("/nonexistent")),
            ..Sources::default()
        })
        .expect("the table's defaults load")
    }

    /// The typed settings and the table name the same keys: a field without
    /// a row fails to load (missing field), a row without a field too
    /// (unknown field), and this checks nothing was skipped.
    #[test]
    fn the_table_and_the_typed_settings_have_the_same_keys() {
        let flat = defaults().flattened();
        let keys: Vec<&str> = flat.keys().map(String::as_str).collect();
        let mut table: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        table.sort_unstable();
        assert_eq!(keys, table);
        for s in SETTINGS {
            assert!(
                s.problem(&flat[s.key]).is_none(),
                "{}'s default is out of its range",
                s.key
            );
            assert!(!s.doc.is_empty(), "{} has a description", s.key);
        }
    }

    /// Every section's keys are together, before its subsections: TOML
    /// cannot reopen a table.
    #[test]
    fn the_defaults_are_valid_toml() {
        let parsed: toml::Table = toml::from_str(&defaults_toml()).expect("valid TOML");
        assert_eq!(parsed["server"]["port"].as_integer(), Some(8080));
    }

    #[test]
    fn the_files_generated_from_the_table_are_current() {
        expect_test::expect_file!["../../config/default.toml"].assert_eq(&defaults_toml());
        expect_test::expect_file!["../../docs/src/operations/settings.md"]
            .assert_eq(&reference_markdown());
    }

    /// A setting named like a secret is marked one, so nothing prints it.
    #[test]
    fn settings_named_like_secrets_are_secret() {
        for s in SETTINGS {
            let last = s.key.rsplit('.').next().unwrap_or(s.key);
            if ["password", "secret", "token"]
                .iter()
                .any(|w| last.contains(w))
            {
                assert!(s.secret, "{} is a secret", s.key);
            }
        }
    }

    #[test]
    fn ranges_are_named_in_the_reason() {
        let port = lookup("server.port").unwrap();
        assert_eq!(port.problem("70000").unwrap(), "must be at most 65535");
        assert_eq!(
            lookup("store.memtable_mb").unwrap().problem("0").unwrap(),
            "must be between 1 and 1024"
        );
        assert_eq!(
            lookup("store.cache_mb")
                .unwrap()
                .problem("1048577")
                .unwrap(),
            "must be at most 1048576 (1 TiB)"
        );
        assert_eq!(
            lookup("store.queue").unwrap().problem("0").unwrap(),
            "must be at least 1"
        );
        assert!(lookup("store.queue").unwrap().problem("1").is_none());
        let ratio = lookup("telemetry.otlp.sampling_ratio").unwrap();
        assert!(ratio.problem("1").is_none() && ratio.problem("0").is_none());
        assert!(ratio.problem("1.01").is_some());
        let protocol = lookup("telemetry.otlp.protocol").unwrap();
        assert!(protocol.problem("").is_none());
        assert_eq!(
            protocol.problem("udp").unwrap(),
            "must be one of: empty, grpc, http/protobuf"
        );
        assert_eq!(
            lookup("server.port").unwrap().env_var(),
            "TROUPE__SERVER__PORT"
        );
    }
}
