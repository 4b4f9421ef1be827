//! Configuration: layer precedence, errors that name the key, the value
//! and the layer, and live reload of a running server.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use troupe::settings::{Settings, SettingsError, Sources};

use crate::helpers::{json_of, spawn_app_reloading};

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn sources(dir: &Path, env: &str) -> Sources {
    Sources {
        config_dir: Some(dir.to_path_buf()),
        env: Some(env.into()),
        overrides: Vec::new(),
        remote: Vec::new(),
        // Never the process's: tests in one process must not see each other's.
        environment: Some(Default::default()),
    }
}

#[test]
fn each_layer_overrides_the_ones_below_and_is_named_as_the_origin() {
    let dir = TempDir::new().unwrap();
    write(
        dir.path(),
        "default.toml",
        "[server]\nport = 1111\n[runtime]\nmailbox_capacity = 10\nidle_timeout_ms = 1\n",
    );
    write(
        dir.path(),
        "staging.toml",
        "[server]\nport = 2222\n[runtime]\nidle_timeout_ms = 5\neffect_timeout_ms = 6\n",
    );
    write(dir.path(), "local.toml", "[runtime]\nidle_timeout_ms = 7\n");
    let mut s = sources(dir.path(), "staging");
    s.environment = Some(
        [(
            "TROUPE__RUNTIME__DEFAULT_TIMEOUT_MS".to_owned(),
            "1234".to_owned(),
        )]
        .into(),
    );
    s.remote = vec![
        ("runtime.max_timeout_ms".into(), "9999".into()),
        ("server.port".into(), "4444".into()),
    ];
    s.overrides = vec![("server.port".into(), "3333".into())];

    let (settings, origins) = Settings::load_with_origins(&s).unwrap();

    assert_eq!(settings.server.port, 3333);
    assert_eq!(origins.layer("server.port"), Some("flags"));
    assert_eq!(settings.runtime.max_timeout_ms, 9999);
    assert_eq!(origins.layer("runtime.max_timeout_ms"), Some("etcd"));
    assert_eq!(settings.runtime.default_timeout_ms, 1234);
    assert_eq!(
        origins.layer("runtime.default_timeout_ms"),
        Some("environment (TROUPE__*)")
    );
    assert_eq!(settings.runtime.idle_timeout_ms, 7);
    assert!(origins
        .layer("runtime.idle_timeout_ms")
        .is_some_and(|l| l.ends_with("local.toml")));
    assert_eq!(settings.runtime.effect_timeout_ms, 6);
    assert!(origins
        .layer("runtime.effect_timeout_ms")
        .is_some_and(|l| l.ends_with("staging.toml")));
    assert_eq!(settings.runtime.mailbox_capacity, 10);
    assert!(origins
        .layer("runtime.mailbox_capacity")
        .is_some_and(|l| l.ends_with("default.toml")));
    assert_eq!(
        origins.layer("store.max_batch"),
        Some("defaults (built in)")
    );
    assert_eq!(settings.environment, "staging");
}

fn error_for(local: &str) -> String {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "local.toml", local);
    match Settings::load(&sources(dir.path(), "development")) {
        Ok(_) => panic!("{local:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_values_are_refused_with_the_key_the_value_and_the_layer() {
    let cases: [(&str, &[&str]); 9] = [
        (
            "[server]\nport = \"abc\"\n",
            &["server.port", "abc", "local.toml"],
        ),
        ("[server]\nport = 70000\n", &["server.port", "70000"]),
        (
            "[runtime]\nmailbox_capacity = 0\n",
            &["runtime.mailbox_capacity", "\"0\"", "local.toml"],
        ),
        (
            "[telemetry.otlp]\nsampling_ratio = 2.0\n",
            &["telemetry.otlp.sampling_ratio", "2", "local.toml"],
        ),
        (
            "[store]\nidempotency_retention_s = 315360001\n",
            &["store.idempotency_retention_s", "315360001", "ten years"],
        ),
        (
            "[store]\ncache_mb = 1048577\n",
            &["store.cache_mb", "1048577", "1 TiB"],
        ),
        (
            "[store]\nmemtable_mb = 0\n",
            &["store.memtable_mb", "between 1 and 1024"],
        ),
        ("[server]\ncolour = \"red\"\n", &["colour"]),
        ("[server\nport = 1\n", &["local.toml"]),
    ];
    for (local, needles) in cases {
        let message = error_for(local);
        for needle in needles {
            assert!(
                message.contains(needle),
                "{local:?}: {message:?} lacks {needle:?}"
            );
        }
    }
}

#[test]
fn a_bad_environment_variable_names_the_environment() {
    let dir = TempDir::new().unwrap();
    let mut s = sources(dir.path(), "development");
    s.environment = Some([("TROUPE__RUNTIME__MAX_TIMEOUT_MS".to_owned(), "1".to_owned())].into());
    let e = Settings::load(&s).unwrap_err();
    assert!(
        matches!(
            &e,
            SettingsError::Invalid {
                key: "runtime.max_timeout_ms",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("environment"), "{e}");
}

async fn config_of(app: &crate::helpers::TestApp) -> Value {
    json_of(app.get("/config").await).await
}

async fn eventually(app: &crate::helpers::TestApp, key: &str, value: &str) -> bool {
    for _ in 0..60 {
        if config_of(app).await[key] == Value::String(value.into()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[actix_rt::test]
async fn editing_a_file_reloads_the_running_server_and_invalid_edits_are_rejected() {
    let config = TempDir::new().unwrap();
    let mut s = sources(config.path(), "development");
    s.overrides = vec![
        ("server.port".into(), "0".into()),
        ("server.workers".into(), "2".into()),
    ];
    let app = spawn_app_reloading(TempDir::new().unwrap(), s).await;
    assert_eq!(
        config_of(&app).await["runtime.default_timeout_ms"],
        Value::String("5000".into())
    );

    write(
        config.path(),
        "local.toml",
        "[runtime]\ndefault_timeout_ms = 1234\n[log]\nfilter = \"warn\"\n[store]\nmax_batch = 7\n",
    );
    assert!(
        eventually(&app, "runtime.default_timeout_ms", "1234").await,
        "the default timeout did not change"
    );
    assert!(eventually(&app, "log.filter", "warn").await);
    assert_eq!(
        app.app_runtime.options().default_timeout,
        Duration::from_millis(1234)
    );
    assert!(app
        .metric(r#"troupe_config_reloads_total{result="applied"}"#)
        .await
        .is_some_and(|n| n >= 1.0));
    // A key that needs a restart is reported, not applied.
    assert_eq!(
        config_of(&app).await["store.max_batch"],
        Value::String("1024".into())
    );

    write(
        config.path(),
        "local.toml",
        "[runtime]\ndefault_timeout_ms = 1234\nmailbox_capacity = 0\n",
    );
    let mut rejected = false;
    for _ in 0..60 {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        if metrics.contains("troupe_config_reloads_total{result=\"rejected\"} 1") {
            rejected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rejected, "the invalid edit was not rejected");
    let running = config_of(&app).await;
    assert_eq!(
        running["runtime.mailbox_capacity"],
        Value::String("1024".into())
    );
    assert_eq!(
        running["runtime.default_timeout_ms"],
        Value::String("1234".into())
    );
    assert_eq!(app.app_runtime.options().mailbox_capacity, 1024);
}

/// A reload changes behaviour, not only `/config`: a shorter idle timeout
/// passivates, a smaller mailbox refuses bursts, and a supervision limit of
/// no restarts gives up on the first panic.
#[actix_rt::test]
async fn reloaded_runtime_settings_change_what_the_runtime_does() {
    let config = TempDir::new().unwrap();
    let mut s = sources(config.path(), "development");
    s.overrides = vec![
        ("server.port".into(), "0".into()),
        ("server.workers".into(), "2".into()),
    ];
    let app = spawn_app_reloading(TempDir::new().unwrap(), s).await;
    app.open("kept").await;
    // The default idle timeout is a minute: nothing leaves memory.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        app.metric(r#"troupe_actors_live{kind="account"}"#).await,
        Some(1.0)
    );

    write(
        config.path(),
        "local.toml",
        "[runtime]
idle_timeout_ms = 50
mailbox_capacity = 1
[runtime.supervision]
max_restarts = 0
",
    );
    assert!(eventually(&app, "runtime.supervision.max_restarts", "0").await);
    app.wait_metric(r#"troupe_actors_live{kind="account"}"#, |n| n == 0.0)
        .await;

    app.open("burst").await;
    let burst = futures_util::future::join_all((0..200).map(|_| app.deposit("burst", 1))).await;
    assert!(
        burst
            .iter()
            .any(|r| r.status() == StatusCode::TOO_MANY_REQUESTS),
        "a mailbox of one never overflowed"
    );

    app.open("fragile").await;
    let crash = app
        .post("/v1/actors/account/fragile/crash", serde_json::json!({}))
        .await;
    assert_eq!(crash.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        app.get("/v1/accounts/fragile").await.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "with no restarts allowed, the actor gives up at once"
    );
}

/// `troupe --version` names the version and the commit it was built from
/// (`unknown` outside a git checkout).
#[tokio::test]
async fn the_binary_names_its_version_and_commit() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_troupe"))
        .arg("--version")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // Outside a git checkout (a source archive) the commit is `unknown`.
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |out| String::from_utf8_lossy(&out.stdout)[..12].to_owned(),
        );
    assert_eq!(
        text.trim(),
        format!("troupe {} ({commit})", env!("CARGO_PKG_VERSION"))
    );
}

/// Through the binary, as an operator runs it: `troupe config` prints every
/// effective setting with the layer it came from, and a bad value stops
/// start-up with a message naming the key, the value and the layer, before
/// anything binds a port.
#[tokio::test]
async fn the_binary_prints_its_settings_and_refuses_a_bad_value() {
    let binary = env!("CARGO_BIN_EXE_troupe");
    let (status, text) =
        crate::helpers::troupe_config(&[("TROUPE__RUNTIME__IDLE_TIMEOUT_MS", "4321")]).await;
    assert!(status.success());
    assert!(
        text.lines()
            .any(|l| l == "runtime.idle_timeout_ms = 4321    # environment (TROUPE__*)"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("store.backend = embedded    # ")),
        "{text}"
    );

    let refused = tokio::process::Command::new(binary)
        .arg("--config-dir")
        .arg(crate::helpers::config_dir())
        .args(["--port", "0"])
        .env("TROUPE__RUNTIME__MAILBOX_CAPACITY", "0")
        .env("RUST_BACKTRACE", "0")
        .output();
    let refused = tokio::time::timeout(std::time::Duration::from_secs(30), refused)
        .await
        .expect("start-up stops instead of serving")
        .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("runtime.mailbox_capacity")
            && message.contains("\"0\"")
            && message.contains("environment"),
        "{message}"
    );
}

/// `log.filter` edited in a file reaches the running binary's logger: a
/// trace line the handler writes appears only after the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_log_filter_changes_what_the_binary_logs() {
    let config = crate::helpers::config_dir_copy();
    write(config.path(), "local.toml", "[log]\nfilter = \"info\"\n");
    let data = TempDir::new().unwrap();
    let child = crate::helpers::Child::start_in(data.path(), config.path(), &[]).await;
    let client = reqwest::Client::new();
    let sent_to = |id: &'static str| {
        move |l: &Value| l["target"] == "troupe::http" && l["fields"]["actor.id"] == id
    };
    let get = |id: &str| {
        client
            .get(format!("{}/v1/accounts/{id}", child.address))
            .send()
    };
    assert_eq!(get("before").await.unwrap().status(), StatusCode::NOT_FOUND);

    write(
        config.path(),
        "local.toml",
        "[log]\nfilter = \"info,troupe=trace\"\n",
    );
    let mut reloaded = false;
    for _ in 0..200 {
        let settings: Value = client
            .get(format!("{}/config", child.address))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if settings["log.filter"] == "info,troupe=trace" {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the file edit never reached /config");
    assert_eq!(get("after").await.unwrap().status(), StatusCode::NOT_FOUND);
    let (at, _) = child
        .wait_log(0, Duration::from_secs(10), sent_to("after"))
        .await;
    // Lines arrive in order: everything the first request logged is in.
    let output = child.output();
    let before: Vec<&str> = output.lines().take(at).collect();
    assert!(
        !before
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| sent_to("before")(&l)),
        "a trace line was written under the info filter"
    );
}

const JWT_SECRET: &str = "hunter3-hunter3-hunter3-hunter3-hunter3";

/// A password in a URL and the JWT secret never leave the process: not
/// through `GET /config`, not through `troupe config`.
#[actix_rt::test]
async fn passwords_are_redacted_in_config_output() {
    let url = "redis://user:hunter2@127.0.0.1:6390/0";
    let app = crate::helpers::spawn_app_with(TempDir::new().unwrap(), |s| {
        s.store.redis.url = url.into();
        s.auth.jwt.hs256_secret = JWT_SECRET.into();
    })
    .await;
    let shown = app.get("/config").await.text().await.unwrap();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains(JWT_SECRET), "{shown}");
    assert!(shown.contains("store.redis.url"), "{shown}");
    assert!(shown.contains("auth.jwt.hs256_secret"), "{shown}");

    let (status, text) = crate::helpers::troupe_config(&[
        ("TROUPE__STORE__REDIS__URL", url),
        ("TROUPE__AUTH__JWT__HS256_SECRET", JWT_SECRET),
        ("TROUPE__AUTH__JWT__ISSUER", "https://id.example.com/"),
        ("TROUPE__AUTH__JWT__AUDIENCE", "troupe"),
    ])
    .await;
    assert!(status.success());
    assert!(
        text.lines().any(|l| l.starts_with("store.redis.url = ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("auth.jwt.hs256_secret = ***")),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains(JWT_SECRET), "{text}");
}

/// A reload that changes secrets logs which keys need a restart, never
/// their values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_logs_changed_secrets_redacted() {
    let config = crate::helpers::config_dir_copy();
    let data = TempDir::new().unwrap();
    let child = crate::helpers::Child::start_in(data.path(), config.path(), &[]).await;
    write(
        config.path(),
        "local.toml",
        &format!(
            "[store.redis]\nurl = \"redis://user:hunter2@127.0.0.1:6390/0\"\n\n\
             [auth.jwt]\nissuer = \"https://id.example.com/\"\naudience = \"troupe\"\n\
             hs256_secret = \"{JWT_SECRET}\"\n"
        ),
    );
    let (_, line) = child
        .wait_log(0, Duration::from_secs(10), |l| {
            l["fields"]["message"] == "configuration changes need a restart; not applied"
        })
        .await;
    let changed = line["fields"]["changed"].as_str().unwrap_or_default();
    assert!(changed.contains("auth.jwt.hs256_secret=***"), "{line}");
    assert!(changed.contains("store.redis.url="), "{line}");
    let output = child.output();
    assert!(!output.contains("hunter2"), "the Redis password was logged");
    assert!(!output.contains(JWT_SECRET), "the JWT secret was logged");
}
