//! A load of transfers and keyed deposits against a running service, and
//! the audit that proves nothing acknowledged was lost and no money was
//! created or destroyed, whatever failed in between.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{all_entries, replay_journal};

pub const ACCOUNTS: usize = 20;
pub const FUNDING: i64 = 1_000;

/// An acknowledged keyed deposit: account, key, amount, entry seq.
pub type Acked = (String, String, u64, u64);

/// Transfers started, with the status a client was told (`None`: no answer,
/// or an answer that promised nothing).
pub type Started = Vec<(String, Option<&'static str>)>;

pub struct Load {
    pub acked: Arc<Mutex<Vec<Acked>>>,
    pub started: Arc<Mutex<Started>>,
    /// Transfers answered with a status that is neither an outcome (201,
    /// 422) nor a server error: they count as answered, never completed.
    others: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How long a load client waits after a `429` or a `5xx` before its next
/// request: shorter than the `Retry-After` a real client would honour, so
/// the load goes on through short faults, but no spin of requests into an
/// outage.
const BACK_OFF: Duration = Duration::from_millis(20);

fn backs_off(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

pub async fn fund(client: &Client, base: &str) {
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
}

impl Load {
    /// Starts `workers` clients; each stops at [`Load::finish`] or when the
    /// server stops answering.
    pub fn start(client: &Client, base: &str, workers: u64) -> Self {
        Self::start_round(client, base, workers, 0)
    }

    /// As [`Load::start`], with ids and keys of their own for `round`.
    pub fn start_round(client: &Client, base: &str, workers: u64, round: u64) -> Self {
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
        let started: Arc<Mutex<Started>> = Arc::default();
        let others: Arc<AtomicUsize> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|worker| {
                let (client, base) = (client.clone(), base.to_owned());
                let (acked, started, stop) = (acked.clone(), started.clone(), stop.clone());
                let others = others.clone();
                tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(round * 1000 + worker);
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let ok = if n % 4 == 0 {
                            let account = format!("k-{}", rng.random_range(0..ACCOUNTS));
                            let (key, amount) = (format!("d-{round}-{worker}-{n}"), rng.random_range(1..100u64));
                            deposit(&client, &base, &account, &key, amount, &acked).await
                        } else {
                            let id = format!("x-{round}-{worker}-{n}");
                            let (from, to) = (rng.random_range(0..ACCOUNTS), rng.random_range(0..ACCOUNTS));
                            let body = json!({"id": id, "from": format!("k-{from}"), "to": format!("k-{to}"), "amount": rng.random_range(1..300)});
                            let sent = client.post(format!("{base}/v1/transfers")).json(&body).send().await;
                            let told = match &sent {
                                Ok(r) if r.status() == StatusCode::CREATED => Some("completed"),
                                Ok(r) if r.status() == StatusCode::UNPROCESSABLE_ENTITY => Some("failed"),
                                _ => None,
                            };
                            if let Ok(r) = &sent {
                                if told.is_none() && !r.status().is_server_error() {
                                    others.fetch_add(1, Ordering::Relaxed);
                                }
                                if backs_off(r.status()) {
                                    tokio::time::sleep(BACK_OFF).await;
                                }
                            }
                            started.lock().unwrap().push((id, told));
                            sent.is_ok()
                        };
                        if !ok {
                            return;
                        }
                    }
                })
            })
            .collect();
        Self {
            acked,
            started,
            others,
            stop,
            tasks,
        }
    }

    /// Waits until the load has had `deposits` deposits acknowledged and
    /// `transfers` transfers completed: the server is busy with real work
    /// (a fault injected now meets writes in flight). Panics after 60 s.
    pub async fn under_way(&self, deposits: usize, transfers: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let acked = self.acked.lock().unwrap().len();
            let completed = self
                .started
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, t)| *t == Some("completed"))
                .count();
            if acked >= deposits && completed >= transfers {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the load never got going: {acked} deposits, {completed} transfers"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn finish(self) -> (Vec<Acked>, Started) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let started = self.started.lock().unwrap().clone();
        assert!(
            acked.len() > 10 && started.len() > 10,
            "the load did too little"
        );
        let completed = started
            .iter()
            .filter(|(_, t)| *t == Some("completed"))
            .count();
        let answered = started.iter().filter(|(_, t)| t.is_some()).count()
            + self.others.load(Ordering::Relaxed);
        // Runs with faults (a kill, a Redis outage) leave some without an
        // answer, as many as the clients manage to send while it lasts, so
        // the share is taken of the transfers answered: a quarter of them
        // completing (the rest refused for funds) shows the load did real
        // work. The uncontended run in `concurrency.rs` requires most.
        assert!(
            completed * 4 > answered,
            "too few transfers completed: {completed} of {answered} answered ({} started)",
            started.len()
        );
        (acked, started)
    }
}

async fn deposit(
    client: &Client,
    base: &str,
    account: &str,
    key: &str,
    amount: u64,
    acked: &Mutex<Vec<Acked>>,
) -> bool {
    let sent = client
        .post(format!("{base}/v1/accounts/{account}/deposits"))
        .header("Idempotency-Key", key)
        .json(&json!({"amount": amount}))
        .send()
        .await;
    let Ok(r) = sent else { return false };
    if backs_off(r.status()) {
        tokio::time::sleep(BACK_OFF).await;
    }
    if r.status() == StatusCode::OK {
        let Ok(body) = r.json::<Value>().await else {
            return false;
        };
        let seq = body["entry"]["seq"].as_u64().unwrap();
        acked
            .lock()
            .unwrap()
            .push((account.to_owned(), key.to_owned(), amount, seq));
    }
    true
}

/// Every transfer ends completed or failed (or never existed, if no client
/// was told anything of it); every transfer a client was told about ends
/// as it was told; journals replay to balances; money is conserved; legs
/// pair up; every acknowledged deposit is in its journal and replays under
/// its key.
pub async fn audit(
    client: &Client,
    base: &str,
    acked: &[Acked],
    started: &[(String, Option<&'static str>)],
) {
    let mut statuses = HashMap::new();
    for (id, told) in started {
        for attempt in 0.. {
            let r = client
                .get(format!("{base}/v1/transfers/{id}"))
                .send()
                .await
                .unwrap();
            if r.status() == StatusCode::NOT_FOUND {
                assert_eq!(
                    *told, None,
                    "transfer {id} was answered {told:?}, then vanished"
                );
                break;
            }
            let body: Value = r.json().await.unwrap();
            if r_status_settled(&body) {
                let status = body["status"].as_str().unwrap().to_owned();
                if let Some(told) = told {
                    assert_eq!(
                        status, *told,
                        "transfer {id} ended otherwise than its client was told"
                    );
                }
                statuses.insert(id.clone(), status);
                break;
            }
            assert!(attempt < 300, "transfer {id} stays {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let mut total = 0;
    let mut external = FUNDING * ACCOUNTS as i64;
    let mut legs: HashMap<String, (u32, u32, u32)> = HashMap::new();
    let mut journals = HashMap::new();
    for i in 0..ACCOUNTS {
        let id = format!("k-{i}");
        let entries = all_entries(client, base, &id).await;
        let account: Value = client
            .get(format!("{base}/v1/accounts/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let balance = account["balance"].as_i64().unwrap();
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
    for (id, legs) in &legs {
        match statuses.get(id).map(String::as_str) {
            Some("completed") => assert_eq!(*legs, (1, 1, 0), "{id}"),
            Some("failed") => assert_eq!(*legs, (1, 0, 1), "{id}"),
            other => panic!("transfer {id} moved money but is {other:?}"),
        }
    }

    for (account, key, amount, seq) in acked {
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

fn r_status_settled(body: &Value) -> bool {
    matches!(body["status"].as_str(), Some("completed" | "failed"))
}
