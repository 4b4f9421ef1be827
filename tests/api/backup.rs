//! The backup and restore procedures of the book's Storage chapter
//! (`docs/src/operations/storage.md`, "Backup and restore"), run as an
//! operator runs them: the same commands, in the same order, against the
//! binary and a real redis-server. A restore brings back exactly what was
//! acknowledged before the backup, idempotency keys included, and keeps
//! what it replaced.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::helpers::{spawn_app_with, Child};
use crate::redis_server::RedisServer;

/// Runs `script` under `sh -e` with `vars` set; panics with its output
/// when it fails.
fn sh(script: &str, vars: &[(&str, &Path)]) -> String {
    let mut command = Command::new("sh");
    command.arg("-ec").arg(script);
    for (name, path) in vars {
        command.env(name, path);
    }
    command.env("TROUPE", env!("CARGO_BIN_EXE_troupe"));
    let out = command.output().expect("sh runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script}\n{text}");
    text
}

async fn deposit(client: &Client, base: &str, id: &str, key: &str, amount: u64) -> Value {
    let r = client
        .post(format!("{base}/v1/accounts/{id}/deposits"))
        .header("Idempotency-Key", key)
        .json(&json!({ "amount": amount }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn balance(client: &Client, base: &str, id: &str) -> Value {
    let r = client
        .get(format!("{base}/v1/accounts/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["balance"].clone()
}

/// alice's deposit of `amount` under the idempotency key `key`: its answer.
async fn keyed_deposit(app: &crate::helpers::TestApp, key: &str, amount: u64) -> Value {
    let r = app
        .post_with_key(
            "/v1/accounts/alice/deposits",
            key,
            json!({ "amount": amount }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Polls `/readyz` until it answers 200, for a few seconds at most.
async fn until_ready(app: &crate::helpers::TestApp) {
    let mut ready = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        ready = app.get("/readyz").await.status();
        if ready == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, StatusCode::OK);
}

/// SIGTERM, and wait until the process has exited (step 1 of both
/// procedures).
async fn stop(mut child: Child) {
    nix::sys::signal::kill(child.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.exit())
        .await
        .expect("troupe stops on SIGTERM");
    assert!(status.success(), "{}", child.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_backup_of_the_embedded_store_restores_what_was_acknowledged_before_it() {
    let root = TempDir::new().unwrap();
    let data = root.path().join("data");
    let backup = root.path().join("backup");
    let archive = root.path().join("backup.tar");
    std::fs::create_dir(&data).unwrap();
    let client = Client::new();

    let child = Child::start(&data, &[]).await;
    let base = child.address.clone();
    let opened = client
        .put(format!("{base}/v1/accounts/alice"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), StatusCode::CREATED);
    let first = deposit(&client, &base, "alice", "before", 100).await;

    // Backup: stop, copy, (start), verify the copy, pack it.
    stop(child).await;
    sh(
        r#"cp -a "$DATA" "$BACKUP""#,
        &[("DATA", &data), ("BACKUP", &backup)],
    );
    let child = Child::start(&data, &[]).await;
    let base = child.address.clone();
    let verified = sh(
        r#""$TROUPE" store verify "$BACKUP""#,
        &[("BACKUP", &backup)],
    );
    assert!(verified.contains("intact"), "{verified}");
    sh(
        r#"tar --sparse -C "$BACKUP" -cf "$ARCHIVE" ."#,
        &[("BACKUP", &backup), ("ARCHIVE", &archive)],
    );

    // Acknowledged after the backup: lost by the restore.
    deposit(&client, &base, "alice", "after", 50).await;
    assert_eq!(balance(&client, &base, "alice").await, json!(150));

    // Restore: stop, move aside, unpack, verify, start.
    stop(child).await;
    let replaced = root.path().join("data.replaced");
    sh(
        r#"mv "$DATA" "$REPLACED"
mkdir -m 0700 "$DATA"
tar -C "$DATA" -xpf "$ARCHIVE"
"$TROUPE" store verify "$DATA""#,
        &[
            ("DATA", &data),
            ("REPLACED", &replaced),
            ("ARCHIVE", &archive),
        ],
    );
    let child = Child::start(&data, &[]).await;
    let base = child.address.clone();
    assert_eq!(balance(&client, &base, "alice").await, json!(100));
    // The key acknowledged before the backup is remembered: a retry gets
    // the first answer, not a second deposit.
    assert_eq!(deposit(&client, &base, "alice", "before", 100).await, first);
    assert_eq!(balance(&client, &base, "alice").await, json!(100));
    stop(child).await;

    // What the restore replaced is kept, intact, with its later deposit.
    let kept = sh(
        r#""$TROUPE" store verify "$REPLACED""#,
        &[("REPLACED", &replaced)],
    );
    assert!(kept.contains("intact"), "{kept}");
    let child = Child::start(&replaced, &[]).await;
    assert_eq!(balance(&client, &child.address, "alice").await, json!(150));
}

#[actix_rt::test]
async fn an_rdb_backup_of_redis_restores_what_was_acknowledged_before_it() {
    let dir = TempDir::new().unwrap();
    let mut redis = RedisServer::start_durable(dir.path());
    let backups = TempDir::new().unwrap();
    let backup = backups.path().join("redis.rdb");
    let configure = |url: String| {
        move |s: &mut troupe::settings::Settings| {
            s.store.backend = troupe::settings::StoreBackend::Redis;
            s.store.redis.url = url;
            s.store.redis.command_timeout_ms = 200;
            s.store.redis.lease_ms = 1_000;
        }
    };
    let app = spawn_app_with(TempDir::new().unwrap(), configure(redis.url())).await;
    app.open("alice").await;
    let first = keyed_deposit(&app, "before", 100).await;

    // Backup, troupe running: BGSAVE, wait for LASTSAVE to move, copy the file.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let before: i64 = redis::cmd("LASTSAVE").query_async(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let _: String = redis::cmd("BGSAVE")
        .arg("SCHEDULE")
        .query_async(&mut conn)
        .await
        .unwrap();
    for _ in 0..100 {
        let now: i64 = redis::cmd("LASTSAVE").query_async(&mut conn).await.unwrap();
        if now > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let config: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("dbfilename")
        .query_async(&mut conn)
        .await
        .unwrap();
    std::fs::copy(dir.path().join(&config[1]), &backup).expect("the snapshot was written");

    // Acknowledged after the backup: lost by the restore.
    keyed_deposit(&app, "after", 50).await;

    // Restore: stop troupe, stop Redis, move its files aside, put the RDB
    // in place, start Redis with AOF off, turn AOF on and wait for its
    // rewrite, start troupe.
    app.stop().await;
    drop(conn);
    redis.kill();
    sh(
        r#"mv "$DIR/appendonlydir" "$DIR/appendonlydir.replaced"
if [ -e "$DIR/dump.rdb" ]; then mv "$DIR/dump.rdb" "$DIR/dump.rdb.replaced"; fi
cp "$BACKUP" "$DIR/dump.rdb""#,
        &[("DIR", dir.path()), ("BACKUP", &backup)],
    );
    redis.set_appendonly(false);
    redis.restart();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: i64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert!(keys > 0, "the backup's keys are loaded");
    let _: String = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("yes")
        .query_async(&mut conn)
        .await
        .unwrap();
    for _ in 0..200 {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut conn)
            .await
            .unwrap();
        if info.contains("aof_rewrite_in_progress:0")
            && info.contains("aof_rewrite_scheduled:0")
            && info.contains("aof_last_bgrewrite_status:ok")
            && info.contains("aof_enabled:1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The backup holds the lease of the instance that ran then: it has
    // expired, or expires within its length, and the new one takes it.
    let app = spawn_app_with(TempDir::new().unwrap(), configure(redis.url())).await;
    until_ready(&app).await;
    assert_eq!(
        balance(&app.client, &app.address, "alice").await,
        json!(100)
    );
    let replayed = keyed_deposit(&app, "before", 100).await;
    assert_eq!(replayed, first);
    // And the restored data survives a restart of Redis on its new AOF.
    app.stop().await;
    redis.set_appendonly(true);
    redis.restart();
    let app = spawn_app_with(TempDir::new().unwrap(), configure(redis.url())).await;
    until_ready(&app).await;
    assert_eq!(
        balance(&app.client, &app.address, "alice").await,
        json!(100)
    );
}
