//! Stop the server, start it on the same data directory: every acknowledged
//! change is there.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{all_entries, json_of, spawn_app, spawn_app_with};

#[actix_rt::test]
async fn every_acknowledged_change_survives_a_restart() {
    let app = spawn_app().await;
    app.put(
        "/v1/accounts/a",
        json!({"currency": "EUR", "overdraft_limit": 10}),
    )
    .await;
    app.put("/v1/accounts/b", json!({"currency": "EUR"})).await;
    for amount in [100, 200, 300] {
        assert_eq!(app.deposit("a", amount).await.status(), StatusCode::OK);
    }
    let keyed = json_of(
        app.post_with_key("/v1/accounts/b/deposits", "once", json!({"amount": 5}))
            .await,
    )
    .await;
    let t = app
        .post(
            "/v1/transfers",
            json!({"id": "t-r", "from": "a", "to": "b", "amount": 250}),
        )
        .await;
    assert_eq!(t.status(), StatusCode::CREATED);
    let entries_a = all_entries(&app.client, &app.address, "a").await;
    let dir = app.stop().await;

    let app = spawn_app_with(dir, |_| {}).await;
    let a = json_of(app.get("/v1/accounts/a").await).await;
    assert_eq!(
        a,
        // Versions count commits: open, three deposits, the transfer's debit
        // (the settle that empties a's outbox waits for a's next commit).
        json!({"id": "a", "currency": "EUR", "balance": 350, "overdraft_limit": 10, "version": 5})
    );
    assert_eq!(app.balance("b").await, 255);
    assert_eq!(all_entries(&app.client, &app.address, "a").await, entries_a);
    assert_eq!(
        json_of(app.get("/v1/transfers/t-r").await).await["status"],
        json!("completed")
    );
    let replay = app
        .post_with_key("/v1/accounts/b/deposits", "once", json!({"amount": 5}))
        .await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(replay).await, keyed);
    assert_eq!(app.balance("b").await, 255);
}
