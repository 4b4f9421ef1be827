//! "Durable before reply" at the system-call level: the service's binary
//! runs under `strace`, and the order of its journal writes, fsyncs and
//! response writes is read back. (A SIGKILL never loses the page cache, so
//! no crash test would notice a missing fsync; this one does.)

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use tempfile::TempDir;

use crate::helpers::Child;

/// The service under `strace -f`, killed with it.
struct Traced {
    child: Child,
    strace: nix::unistd::Pid,
    trace: PathBuf,
    /// Lines of the trace written while starting.
    start_lines: usize,
    dir: TempDir,
}

impl Traced {
    async fn start(calls: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new().unwrap();
        let trace = dir.path().join("syscalls");
        let data = dir.path().join("data");
        let trace_arg = trace.display().to_string();
        let mut args = vec!["strace", "-f", "-qq", "-e", calls, "-o", &trace_arg];
        args.extend_from_slice(extra);
        let child = Child::start_under(&args, &data, &[]).await;
        let start_lines = std::fs::read_to_string(&trace)
            .unwrap_or_default()
            .lines()
            .count();
        Self {
            strace: child.pid(),
            child,
            trace,
            start_lines,
            dir,
        }
    }

    /// The lines traced since start-up, each split into thread id and call.
    fn calls(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.trace)
            .unwrap()
            .lines()
            .skip(self.start_lines)
            .filter_map(|line| {
                let (tid, call) = line.split_once(' ')?;
                Some((tid.to_owned(), call.trim_start().to_owned()))
            })
            .collect()
    }
}

impl Traced {
    /// Sends `signal` to the traced service (strace passes on none);
    /// whether it found the service to send it to.
    fn signal(&mut self, signal: nix::sys::signal::Signal) -> bool {
        // Once strace is reaped, its pid may name another process.
        if !matches!(self.child.process.try_wait(), Ok(None)) {
            return false;
        }
        let strace = self.strace;
        let traced = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse().ok())
            .map(nix::unistd::Pid::from_raw);
        traced.is_some_and(|pid| nix::sys::signal::kill(pid, signal).is_ok())
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        // strace does not kill what it traces when it is killed: kill the
        // traced service itself.
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Opens `accounts` accounts, then makes `per_account` deposits to each at
/// once, each of a different amount from 100,000 up; returns the amounts.
async fn deposits(base: &str, accounts: u64, per_account: u64) -> BTreeSet<u64> {
    let client = reqwest::Client::new();
    for a in 0..accounts {
        let r = client
            .put(format!("{base}/v1/accounts/d{a}"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let amounts: Vec<u64> = (0..accounts * per_account).map(|i| 100_000 + i).collect();
    join_all(amounts.iter().map(|amount| {
        let client = client.clone();
        async move {
            let r = client
                .post(format!(
                    "{base}/v1/accounts/d{}/deposits",
                    amount % accounts
                ))
                .json(&json!({ "amount": amount }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
    }))
    .await;
    amounts.into_iter().collect()
}

/// The amounts of `"amount":N` in a traced write (strace escapes quotes).
fn amounts(call: &str) -> Vec<u64> {
    call.split("amount\\\":")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_deposit_was_written_to_the_journal_and_synced_before_its_reply_left() {
    let traced = Traced::start(
        "trace=write,writev,pwrite64,sendto,sendmsg,fsync,fdatasync",
        // Whole buffers, file paths and socket ends on every descriptor.
        &["-s", "1048576", "-yy"],
    )
    .await;
    let sent = deposits(&traced.child.address, 6, 10).await;

    // Amounts appended to the journal and not yet synced; what each
    // thread's sync in progress covers; what is synced.
    let mut written = BTreeSet::new();
    let mut syncing: HashMap<String, BTreeSet<u64>> = HashMap::new();
    let mut synced = BTreeSet::new();
    let mut acknowledged = BTreeSet::new();
    for (tid, call) in traced.calls() {
        let is_sync = call.starts_with("fdatasync(") || call.starts_with("fsync(");
        if is_sync && call.contains(".jnl>") {
            if call.contains("<unfinished") {
                syncing.insert(tid, written.clone());
            } else if call.ends_with("= 0") {
                synced.extend(std::mem::take(&mut written));
            }
        } else if call.starts_with("<... fdatasync resumed>")
            || call.starts_with("<... fsync resumed>")
        {
            if let Some(covered) = syncing.remove(&tid) {
                if call.ends_with("= 0") {
                    written.retain(|a| !covered.contains(a));
                    synced.extend(covered);
                }
            }
        } else if call.contains(".jnl>") {
            written.extend(amounts(&call));
        } else if call.contains("TCP") {
            for amount in amounts(&call) {
                assert!(
                    synced.contains(&amount),
                    "the reply acknowledging {amount} left before the journal holding it was synced: {call}"
                );
                acknowledged.insert(amount);
            }
        }
    }
    assert_eq!(acknowledged, sent, "not every reply was seen leaving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fsync_while_serving_runs_on_the_store_writer_thread() {
    let traced = Traced::start("trace=fsync,fdatasync,sync_file_range,syncfs,sync", &[]).await;
    deposits(&traced.child.address, 8, 5).await;
    let mut syncs = 0;
    for (tid, call) in traced.calls() {
        if !call.starts_with('f') && !call.starts_with("sync") {
            continue;
        }
        // Thread names while the threads are alive: /proc/<tid>/comm.
        let name = std::fs::read_to_string(format!("/proc/{tid}/comm")).unwrap_or_default();
        assert_eq!(
            name.trim_end(),
            "troupe-store-wr",
            "{call} on thread {tid} ({name:?}), not the store writer"
        );
        syncs += 1;
    }
    assert!(syncs > 0, "no fsync observed while serving durable writes");
}

/// `troupe.acked` (the count of acknowledged batches) is written after
/// every batch but synced at most once a second: it costs one fsync a
/// second, not one per batch. And a burst followed by silence still has
/// its last count synced, about a second later, with nothing more
/// arriving: the count a power loss leaves lags by a second at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn troupe_acked_is_synced_at_most_once_a_second_and_after_a_burst() {
    let traced = Traced::start("trace=pwrite64,fsync,fdatasync", &["-yy"]).await;
    let started = std::time::Instant::now();
    deposits(&traced.child.address, 6, 10).await;
    let burst = started.elapsed().as_secs_f64();
    // Silence: no request at all, long enough for the sync that is due.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let calls: Vec<String> = traced
        .calls()
        .into_iter()
        .map(|(_, call)| call)
        .filter(|call| call.contains("troupe.acked>"))
        .collect();
    let is_sync = |c: &String| c.starts_with("fdatasync(") || c.starts_with("fsync(");
    let writes = calls.iter().filter(|c| c.starts_with("pwrite64(")).count();
    let syncs = calls.iter().filter(|c| is_sync(c)).count();
    assert!(writes > 1, "troupe.acked was written {writes} times");
    assert!(
        calls.last().is_some_and(is_sync),
        "the last count written was never synced: {:?}",
        &calls[calls.len().saturating_sub(3)..]
    );
    // At most one a second while the burst lasted, and the one after it.
    let most = 2 + burst.floor() as usize;
    assert!(
        syncs <= most,
        "troupe.acked was synced {syncs} times for a burst of {burst:.2} s ({writes} writes)"
    );
}

/// Once the store has created its files, start-up syncs the data
/// directory itself: the files' entries in it survive a power loss, not
/// only their contents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_syncs_the_data_directory_after_the_store_created_its_files() {
    let traced = Traced::start("trace=openat,fsync,fdatasync", &["-yy"]).await;
    // strace prints resolved paths.
    let data = traced.dir.path().canonicalize().unwrap().join("data");
    let directory = format!("<{}>", data.display());
    let trace = std::fs::read_to_string(&traced.trace).unwrap();
    let lines: Vec<&str> = trace.lines().collect();
    let created = lines
        .iter()
        .position(|l| l.contains("openat(") && l.contains("troupe.acked") && l.contains("O_CREAT"))
        .expect("troupe.acked created at start-up");
    let synced = lines
        .iter()
        .rposition(|l| l.contains("fsync(") && l.contains(&directory))
        .unwrap_or_else(|| panic!("no fsync of {} at start-up:\n{trace}", data.display()));
    assert!(
        synced > created,
        "the data directory was synced before troupe.acked was created in it"
    );
}

/// A graceful stop syncs `troupe.acked` after it was asked to stop: what
/// was acknowledged just before survives a power loss too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_syncs_troupe_acked() {
    let mut traced = Traced::start("trace=pwrite64,fsync,fdatasync", &["-yy"]).await;
    deposits(&traced.child.address, 1, 2).await;
    let before_stop = traced.calls().len();
    assert!(
        traced.signal(nix::sys::signal::Signal::SIGTERM),
        "no service under strace to stop"
    );
    let exited = tokio::time::timeout(std::time::Duration::from_secs(30), traced.child.exit())
        .await
        .expect("the service stops");
    assert!(exited.success());
    let synced = traced.calls()[before_stop..].iter().any(|(_, call)| {
        call.contains("troupe.acked>")
            && (call.starts_with("fdatasync(") || call.starts_with("fsync("))
    });
    assert!(synced, "troupe.acked was not synced on the way out");
}
