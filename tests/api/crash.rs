//! The service as a child process: SIGKILL during a load of transfers loses
//! no acknowledged write and leaves no transfer half done; SIGTERM drains.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use rand::{Rng, SeedableRng};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::helpers::{all_entries, free_port, replay_journal, Child};

const ACCOUNTS: usize = 20;
const FUNDING: i64 = 1_000;

/// An acknowledged keyed deposit: account, key, amount, entry seq.
type Acked = (String, String, u64, u64);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_write_and_resolves_every_transfer() {
    let dir = TempDir::new().unwrap();
    let port = free_port();
    let mut child = Child::start(dir.path(), port, &[]).await;
    let client = Client::new();
    let base = child.address.clone();
    for i in 0..ACCOUNTS {
        let r = client
            .put(format!("{base}/v1/accounts/k-{i}"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = client
            .post(format!("{base}/v1/accounts/k-{i}/deposits"))
            .json(&json!({"amount": FUNDING}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let started: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut load = Vec::new();
    for worker in 0..16u64 {
        let (client, base, acked, started) =
            (client.clone(), base.clone(), acked.clone(), started.clone());
        load.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker);
            for n in 0.. {
                if n % 4 == 0 {
                    let (account, key, amount) = (format!("k-{}", rng.random_range(0..ACCOUNTS)), format!("d-{worker}-{n}"), rng.random_range(1..100u64));
                    let sent = client
                        .post(format!("{base}/v1/accounts/{account}/deposits"))
                        .header("Idempotency-Key", &key)
                        .json(&json!({"amount": amount}))
                        .send()
                        .await;
                    let Ok(r) = sent else { return };
                    if r.status() == StatusCode::OK {
                        let Ok(body) = r.json::<Value>().await else { return };
                        let seq = body["entry"]["seq"].as_u64().unwrap();
                        acked.lock().unwrap().push((account, key, amount, seq));
                    }
                } else {
                    let id = format!("x-{worker}-{n}");
                    started.lock().unwrap().push(id.clone());
                    let body = json!({"id": id, "from": format!("k-{}", rng.random_range(0..ACCOUNTS)), "to": format!("k-{}", rng.random_range(0..ACCOUNTS)), "amount": rng.random_range(1..300)});
                    if client.post(format!("{base}/v1/transfers")).json(&body).send().await.is_err() {
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kill(child.pid(), Signal::SIGKILL).unwrap();
    child.process.wait().await.unwrap();
    for task in load {
        task.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let started = started.lock().unwrap().clone();
    assert!(
        acked.len() > 10 && started.len() > 10,
        "the load did too little before the kill"
    );

    let child = Child::start(dir.path(), port, &[]).await;
    let base = child.address.clone();

    // Every transfer ends completed or failed (or never existed), never pending.
    let mut statuses = HashMap::new();
    for id in &started {
        for attempt in 0.. {
            let r = client
                .get(format!("{base}/v1/transfers/{id}"))
                .send()
                .await
                .unwrap();
            if r.status() == StatusCode::NOT_FOUND {
                break;
            }
            let body: Value = r.json().await.unwrap();
            if body["status"] != json!("pending") {
                statuses.insert(id.clone(), body["status"].as_str().unwrap().to_owned());
                break;
            }
            assert!(
                attempt < 200,
                "transfer {id} is still pending after the restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Journals replay to balances, money is conserved, transfer legs pair up.
    let mut total = 0;
    let mut external = FUNDING * ACCOUNTS as i64;
    let mut legs: HashMap<String, (u32, u32, u32)> = HashMap::new();
    let mut journals = HashMap::new();
    for i in 0..ACCOUNTS {
        let id = format!("k-{i}");
        let entries = all_entries(&client, &base, &id).await;
        let balance: i64 = client
            .get(format!("{base}/v1/accounts/{id}"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["balance"]
            .as_i64()
            .unwrap();
        assert_eq!(replay_journal(&entries), balance, "{id}");
        total += balance;
        for e in entries.iter().skip(1) {
            let amount = e["amount"].as_i64().unwrap();
            match e["kind"].as_str().unwrap() {
                "deposit" => external += amount,
                "withdrawal" => external -= amount,
                kind => {
                    let leg = legs
                        .entry(e["transfer_id"].as_str().unwrap().to_owned())
                        .or_default();
                    match kind {
                        "transfer_debit" => leg.0 += 1,
                        "transfer_credit" => leg.1 += 1,
                        _ => leg.2 += 1,
                    }
                }
            }
        }
        journals.insert(id, entries);
    }
    assert_eq!(total, external, "money was created or destroyed");
    for (id, (debits, credits, refunds)) in &legs {
        match statuses.get(id).map(String::as_str) {
            Some("completed") => assert_eq!((*debits, *credits, *refunds), (1, 1, 0), "{id}"),
            Some("failed") => assert_eq!((*debits, *credits, *refunds), (1, 0, 1), "{id}"),
            other => panic!("transfer {id} moved money but is {other:?}"),
        }
    }

    // Every acknowledged deposit is in its journal and replays as such.
    for (account, key, amount, seq) in &acked {
        let entry = &journals[account][*seq as usize - 1];
        assert_eq!(
            (entry["kind"].as_str(), entry["amount"].as_u64()),
            (Some("deposit"), Some(*amount)),
            "{key}"
        );
        let r = client
            .post(format!("{base}/v1/accounts/{account}/deposits"))
            .header("Idempotency-Key", key)
            .json(&json!({"amount": amount}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["idempotent-replayed"], "true", "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readyz_503_then_exits_zero() {
    let dir = TempDir::new().unwrap();
    let port = free_port();
    let mut child = Child::start(
        dir.path(),
        port,
        &[("TROUPE__SERVER__DRAIN_DELAY_MS", "1500")],
    )
    .await;
    let client = Client::new();
    let r = client
        .put(format!("{}/v1/accounts/z", child.address))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    kill(child.pid(), Signal::SIGTERM).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = client
        .get(format!("{}/readyz", child.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.headers()["retry-after"], "1");
    let status = tokio::time::timeout(Duration::from_secs(15), child.process.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}
