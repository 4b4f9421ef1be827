use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{all_entries, assert_error, json_of, replay_journal, spawn_app};

#[actix_rt::test]
async fn put_creates_then_confirms_then_conflicts_on_other_settings() {
    let app = spawn_app().await;
    let created = app
        .put(
            "/v1/accounts/acc-1",
            json!({"currency": "EUR", "overdraft_limit": 50}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let body = json_of(created).await;
    assert_eq!(
        body,
        json!({"id": "acc-1", "currency": "EUR", "balance": 0, "overdraft_limit": 50, "version": 1})
    );

    let again = app
        .put(
            "/v1/accounts/acc-1",
            json!({"currency": "EUR", "overdraft_limit": 50}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(json_of(again).await, body);

    let other = app
        .put("/v1/accounts/acc-1", json!({"currency": "USD"}))
        .await;
    assert_error(other, StatusCode::CONFLICT, "already_exists").await;
}

#[actix_rt::test]
async fn put_without_a_body_opens_a_usd_account_without_overdraft() {
    let app = spawn_app().await;
    let r = app
        .client
        .put(app.url("/v1/accounts/plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let body = json_of(r).await;
    assert_eq!(
        (body["currency"].clone(), body["overdraft_limit"].clone()),
        (json!("USD"), json!(0))
    );
}

#[actix_rt::test]
async fn get_of_an_unknown_account_is_404() {
    let app = spawn_app().await;
    assert_error(
        app.get("/v1/accounts/nobody").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[actix_rt::test]
async fn deposits_and_withdrawals_move_the_balance_and_the_journal() {
    let app = spawn_app().await;
    app.open("a").await;
    let d = json_of(app.deposit("a", 1000).await).await;
    assert_eq!(d["balance"], json!(1000));
    assert_eq!(d["version"], json!(2));
    assert_eq!(d["entry"]["seq"], json!(1));
    assert_eq!(d["entry"]["kind"], json!("deposit"));
    assert!(d["entry"]["at"]
        .as_str()
        .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()));

    let w = app
        .post("/v1/accounts/a/withdrawals", json!({"amount": 300}))
        .await;
    assert_eq!(w.status(), StatusCode::OK);
    let w = json_of(w).await;
    assert_eq!(
        (w["balance"].clone(), w["entry"]["kind"].clone()),
        (json!(700), json!("withdrawal"))
    );

    let entries = all_entries(&app.client, &app.address, "a").await;
    assert_eq!(entries.len(), 2);
    assert_eq!(replay_journal(&entries), app.balance("a").await);
}

#[actix_rt::test]
async fn a_withdrawal_beyond_the_overdraft_limit_is_422_and_changes_nothing() {
    let app = spawn_app().await;
    app.put("/v1/accounts/a", json!({"overdraft_limit": 100}))
        .await;
    app.deposit("a", 50).await;
    let ok = app
        .post("/v1/accounts/a/withdrawals", json!({"amount": 150}))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(app.balance("a").await, -100);

    let refused = app
        .post("/v1/accounts/a/withdrawals", json!({"amount": 1}))
        .await;
    assert_error(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    )
    .await;
    assert_eq!(app.balance("a").await, -100);
    assert_eq!(all_entries(&app.client, &app.address, "a").await.len(), 2);
}

#[actix_rt::test]
async fn a_deposit_that_would_pass_the_balance_limit_is_limit_exceeded() {
    let app = spawn_app().await;
    app.open("rich").await;
    // 4,000 deposits of 10^15 reach the limit of 4 * 10^18 exactly.
    let statuses: Vec<StatusCode> = futures_util::stream::iter(0..4010)
        .map(|_| async { app.deposit("rich", 1_000_000_000_000_000).await.status() })
        .buffer_unordered(64)
        .collect()
        .await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 4000);
    assert!(statuses
        .iter()
        .all(|s| matches!(*s, StatusCode::OK | StatusCode::UNPROCESSABLE_ENTITY)));
    assert_eq!(app.balance("rich").await, 4_000_000_000_000_000_000);
    let refused = app.deposit("rich", 1).await;
    assert_error(refused, StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded").await;
}

#[actix_rt::test]
async fn entries_are_paged_oldest_first_with_a_next_cursor() {
    let app = spawn_app().await;
    app.open("a").await;
    for amount in 1..=5 {
        app.deposit("a", amount).await;
    }
    let page = json_of(app.get("/v1/accounts/a/entries?limit=2").await).await;
    let seqs: Vec<_> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!((seqs, page["next"].clone()), (vec![1, 2], json!(2)));

    let last = json_of(app.get("/v1/accounts/a/entries?after=4&limit=2").await).await;
    assert_eq!(last["entries"].as_array().unwrap().len(), 1);
    assert_eq!(last["next"], json!(null));
    // A page that ends exactly at the last entry has no next page either.
    let exact = json_of(app.get("/v1/accounts/a/entries?after=3&limit=2").await).await;
    let seqs: Vec<_> = exact["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![4, 5]);
    assert_eq!(exact["next"], json!(null));

    let default = json_of(app.get("/v1/accounts/a/entries").await).await;
    assert_eq!(default["entries"].as_array().unwrap().len(), 5);
}

#[actix_rt::test]
async fn entries_refuse_a_limit_out_of_range_and_unknown_accounts() {
    let app = spawn_app().await;
    app.open("a").await;
    for query in ["limit=0", "limit=1001", "after=-1", "limit=x", "colour=red"] {
        let r = app.get(&format!("/v1/accounts/a/entries?{query}")).await;
        assert_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    assert_error(
        app.get("/v1/accounts/ghost/entries").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}
