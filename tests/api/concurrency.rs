//! 2,000 concurrent random transfers among 50 accounts, mixed with deposits
//! and withdrawals: money is conserved and every journal replays.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{all_entries, replay_journal, spawn_app, TestApp};

const ACCOUNTS: usize = 50;
const OPERATIONS: usize = 2000;
const FUNDING: i64 = 10_000;

enum Op {
    Transfer(String, usize, usize, u64),
    Deposit(usize, u64),
    Withdraw(usize, u64),
}

#[actix_rt::test]
async fn concurrent_transfers_conserve_money_and_journals_replay() {
    let app = spawn_app().await;
    run(&app).await;
}

pub async fn run(app: &TestApp) {
    for i in 0..ACCOUNTS {
        app.open(&format!("c-{i}")).await;
        assert_eq!(
            app.deposit(&format!("c-{i}"), FUNDING as u64)
                .await
                .status(),
            StatusCode::OK
        );
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let ops: Vec<Op> = (0..OPERATIONS)
        .map(|n| match rng.random_range(0..10) {
            0 => Op::Deposit(rng.random_range(0..ACCOUNTS), rng.random_range(1..500)),
            1 => Op::Withdraw(rng.random_range(0..ACCOUNTS), rng.random_range(1..500)),
            _ => Op::Transfer(
                format!("ct-{n}"),
                rng.random_range(0..ACCOUNTS),
                rng.random_range(0..ACCOUNTS),
                rng.random_range(1..3000),
            ),
        })
        .collect();
    let transfer_ids: Vec<String> = ops
        .iter()
        .filter_map(|o| {
            if let Op::Transfer(id, ..) = o {
                Some(id.clone())
            } else {
                None
            }
        })
        .collect();

    let told = std::sync::Mutex::new(Vec::new());
    let told_ref = &told;
    let external: i64 = stream::iter(ops)
        .map(|op| async move {
            match op {
                Op::Deposit(a, amount) => {
                    let r = app.deposit(&format!("c-{a}"), amount).await;
                    if r.status() == StatusCode::OK { amount as i64 } else { 0 }
                }
                Op::Withdraw(a, amount) => {
                    let r = app.post(&format!("/v1/accounts/c-{a}/withdrawals"), json!({"amount": amount})).await;
                    { let st = r.status(); if !matches!(st, StatusCode::OK | StatusCode::UNPROCESSABLE_ENTITY) { panic!("{st} {}", r.text().await.unwrap_or_default()); } }
                    if r.status() == StatusCode::OK { -(amount as i64) } else { 0 }
                }
                Op::Transfer(id, from, to, amount) => {
                    let body = json!({"id": id, "from": format!("c-{from}"), "to": format!("c-{to}"), "amount": amount});
                    let r = app.post("/v1/transfers", body).await;
                    let st = r.status();
                    if !matches!(st, StatusCode::CREATED | StatusCode::UNPROCESSABLE_ENTITY | StatusCode::GATEWAY_TIMEOUT) {
                        panic!("transfer answered {st} {}", r.text().await.unwrap_or_default());
                    }
                    told_ref.lock().unwrap().push((id, st));
                    0
                }
            }
        })
        .buffer_unordered(64)
        .fold(0i64, |acc, x| async move { acc + x })
        .await;

    wait_settled(app, &transfer_ids).await;
    let told = told.into_inner().unwrap();
    let answered = told
        .iter()
        .filter(|(_, s)| *s != StatusCode::GATEWAY_TIMEOUT)
        .count();
    assert!(
        answered * 10 >= told.len() * 9,
        "only {answered} of {} transfers were answered in time",
        told.len()
    );
    let completed = told
        .iter()
        .filter(|(_, s)| *s == StatusCode::CREATED)
        .count();
    assert!(
        completed * 2 >= told.len(),
        "only {completed} of {} transfers completed",
        told.len()
    );
    for (id, status) in &told {
        let got = app.get(&format!("/v1/transfers/{id}")).await;
        let body: Value = got.json().await.unwrap();
        let expected = match *status {
            StatusCode::CREATED => "completed",
            StatusCode::UNPROCESSABLE_ENTITY => "failed",
            _ => continue,
        };
        assert_eq!(
            body["status"],
            json!(expected),
            "transfer {id} was answered {status}"
        );
    }
    let mut total = 0;
    for i in 0..ACCOUNTS {
        let id = format!("c-{i}");
        let balance = app.balance(&id).await;
        assert!(balance >= 0, "{id} broke its overdraft limit: {balance}");
        assert_eq!(
            replay_journal(&all_entries(&app.client, &app.address, &id).await),
            balance,
            "{id}"
        );
        total += balance;
    }
    assert_eq!(total, FUNDING * ACCOUNTS as i64 + external);
}

/// Waits until no transfer is pending.
pub async fn wait_settled(app: &TestApp, ids: &[String]) {
    for id in ids {
        for attempt in 0.. {
            let r = app.get(&format!("/v1/transfers/{id}")).await;
            let body: Value = r.json().await.unwrap();
            if body["status"] != json!("pending") {
                break;
            }
            assert!(attempt < 200, "transfer {id} stays pending");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
