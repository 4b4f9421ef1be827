//! A disk that hangs or fails under the running binary: `strace` attaches
//! to the service once it is ready and injects the fault into its next
//! journal sync (`-e inject=...`), so start-up runs on a sound disk and the
//! fault lands on the write a request makes.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::helpers::{json_of, open_at, Child};

/// `strace` attached to every thread of a running service, injecting
/// `rule` into the syncs of the store's journal file only (`-P`: not
/// `troupe.acked`'s, which the writer syncs after some replies). strace
/// counts `when=` per thread, and only the writer thread syncs the
/// journal. Detaches (the service goes on) when dropped.
struct Injected(tokio::process::Child);

impl Injected {
    async fn attach(service: &Child, data: &Path, rule: &str) -> Self {
        let pid = service.pid().as_raw();
        let journal = std::fs::read_dir(data.join("troupe.fjall"))
            .expect("the store's directory")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
            .max()
            .and_then(|p| p.canonicalize().ok())
            .expect("a journal file");
        let strace = tokio::process::Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "trace=fsync,fdatasync",
            ])
            .args(["-e", rule, "-P"])
            .arg(&journal)
            .args(["-p", &pid.to_string()])
            .spawn()
            .expect("strace starts");
        // Attached once every thread names a tracer.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_traced(pid) {
            assert!(Instant::now() < deadline, "strace did not attach to {pid}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self(strace)
    }
}

impl Drop for Injected {
    fn drop(&mut self) {
        // SIGINT: strace detaches and lets a delayed call finish.
        if let Some(pid) = self.0.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGINT,
            );
        }
    }
}

fn all_traced(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        std::fs::read_to_string(task.path().join("status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .is_some_and(|t| t.trim() != "0")
        })
    })
}

async fn deposit(
    client: &Client,
    base: &str,
    id: &str,
    key: &str,
    amount: u64,
) -> (StatusCode, Value) {
    let r = client
        .post(format!("{base}/v1/accounts/{id}/deposits"))
        .header("Idempotency-Key", key)
        .header("X-Request-Timeout", "30000")
        .json(&json!({ "amount": amount }))
        .send()
        .await
        .expect("a reply");
    let status = r.status();
    (status, json_of(r).await)
}

async fn readyz(client: &Client, base: &str) -> (StatusCode, Value) {
    let r = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("a reply");
    let status = r.status();
    (status, json_of(r).await)
}

async fn balance(client: &Client, base: &str, id: &str) -> i64 {
    let r = client
        .get(format!("{base}/v1/accounts/{id}"))
        .send()
        .await
        .expect("a reply");
    assert_eq!(r.status(), StatusCode::OK);
    json_of(r).await["balance"].as_i64().expect("a balance")
}

async fn start(dir: &Path) -> Child {
    Child::start(dir, &[("TROUPE__RUNTIME__MAX_TIMEOUT_MS", "30000")]).await
}

/// A journal sync that hangs for 13 s (a disk stalled, fjall's writes
/// stalled behind a lagging flush): `/readyz` says the writer is stuck once
/// it has been writing one batch for 10 s, the deposit waiting on it is
/// answered only when the sync returns, and the service is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_sync_that_hangs_makes_the_service_not_ready_until_it_returns() {
    let dir = TempDir::new().unwrap();
    let service = start(dir.path()).await;
    let (client, base) = (Client::new(), service.address.clone());
    open_at(&client, &base, "a").await;

    let strace = Injected::attach(
        &service,
        dir.path(),
        "inject=fsync,fdatasync:delay_enter=13000000:when=1",
    )
    .await;
    let began = Instant::now();
    let held = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move { deposit(&client, &base, "a", "k1", 250).await }
    });

    // Ready for the first 10 s of the stall, then not.
    let stuck = loop {
        let (status, body) = readyz(&client, &base).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break body;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            !held.is_finished(),
            "the deposit was answered during the stall"
        );
        assert!(
            began.elapsed() < Duration::from_secs(13),
            "never reported not ready while the sync hung"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        began.elapsed() >= Duration::from_secs(10),
        "not ready before the stuck limit: {:?}",
        began.elapsed()
    );
    assert_eq!(stuck["error"]["code"], "unavailable", "{stuck}");
    let message = stuck["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("writing one batch"), "{stuck}");
    assert!(
        !held.is_finished(),
        "the deposit was answered before its sync returned"
    );

    let (status, body) = held.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        began.elapsed() >= Duration::from_secs(13),
        "answered before the sync returned"
    );
    // The writer clears its mark once it has recorded the batch, just
    // after the replies: ready again within moments.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = readyz(&client, &base).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still not ready 5 s after the sync returned: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(balance(&client, &base, "a").await, 250);
    drop(strace);
}

/// A journal sync that fails (EIO): the deposit is not acknowledged, the
/// store refuses writes from then on and `/readyz` says so; after a
/// restart, retries with the same keys apply each deposit exactly once and
/// every acknowledged one is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_journal_sync_is_not_acknowledged_and_stops_writes_until_a_restart() {
    let dir = TempDir::new().unwrap();
    let mut service = start(dir.path()).await;
    let (client, mut base) = (Client::new(), service.address.clone());
    open_at(&client, &base, "a").await;
    let (status, body) = deposit(&client, &base, "a", "k0", 100).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let strace = Injected::attach(
        &service,
        dir.path(),
        "inject=fsync,fdatasync:error=EIO:when=1",
    )
    .await;
    let (status, body) = deposit(&client, &base, "a", "k1", 20).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let (status, body) = readyz(&client, &base).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("refuses writes until a restart"), "{body}");
    // Only the first sync failed; the store still refuses: what it wrote
    // after a failed sync is not known to be on disk.
    let (status, body) = deposit(&client, &base, "a", "k2", 3).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    drop(strace);
    let (status, body) = deposit(&client, &base, "a", "k3", 4000).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    let _ = service.process.start_kill();
    service.exit().await;
    let service = start(dir.path()).await;
    base = service.address.clone();
    let at_restart = balance(&client, &base, "a").await;
    // k1's outcome was unknown: it reached the journal or it did not. The
    // refused ones did not.
    assert!(at_restart == 100 || at_restart == 120, "{at_restart}");
    for (key, amount) in [("k0", 100), ("k1", 20), ("k2", 3), ("k3", 4000)] {
        let (status, body) = deposit(&client, &base, "a", key, amount).await;
        assert_eq!(status, StatusCode::OK, "{key}: {body}");
    }
    assert_eq!(balance(&client, &base, "a").await, 4123);
}
