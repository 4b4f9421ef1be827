use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_error, json_of, spawn_app};

#[actix_rt::test]
async fn the_same_key_and_body_replays_the_first_response() {
    let app = spawn_app().await;
    app.open("a").await;
    let first = app
        .post_with_key("/v1/accounts/a/deposits", "dep-1", json!({"amount": 5}))
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first = json_of(first).await;

    // Whitespace and key order do not make another body.
    let again = app
        .client
        .post(app.url("/v1/accounts/a/deposits"))
        .header("Idempotency-Key", "dep-1")
        .header("Content-Type", "application/json")
        .body("{ \"amount\" :  5 }")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(again).await, first);
    assert_eq!(app.balance("a").await, 5);
}

#[actix_rt::test]
async fn the_same_key_with_another_body_is_422_and_changes_nothing() {
    let app = spawn_app().await;
    app.open("a").await;
    app.post_with_key("/v1/accounts/a/deposits", "k", json!({"amount": 5}))
        .await;
    let r = app
        .post_with_key("/v1/accounts/a/deposits", "k", json!({"amount": 6}))
        .await;
    assert_error(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    let r = app
        .post_with_key("/v1/accounts/a/withdrawals", "k", json!({"amount": 5}))
        .await;
    assert_error(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.balance("a").await, 5);
}

#[actix_rt::test]
async fn refusals_are_replayed_too() {
    let app = spawn_app().await;
    app.open("a").await;
    let r = app
        .post_with_key("/v1/accounts/a/withdrawals", "w", json!({"amount": 5}))
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds").await;
    app.deposit("a", 10).await;
    let r = app
        .post_with_key("/v1/accounts/a/withdrawals", "w", json!({"amount": 5}))
        .await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds").await;
    assert_eq!(app.balance("a").await, 10);
}

#[actix_rt::test]
async fn keys_survive_passivation_because_they_live_in_the_store() {
    let app = crate::helpers::spawn_app_with(tempfile::TempDir::new().unwrap(), |s| {
        s.runtime.idle_timeout_ms = 50;
        s.runtime.idempotency_cache = 1;
    })
    .await;
    app.open("a").await;
    app.post_with_key("/v1/accounts/a/deposits", "old", json!({"amount": 5}))
        .await;
    app.post_with_key("/v1/accounts/a/deposits", "newer", json!({"amount": 7}))
        .await;
    // Passivated for real: its cache of keys is gone with it.
    app.wait_metric(r#"troupe_actor_passivations_total{kind="account"}"#, |n| {
        n >= 1.0
    })
    .await;
    app.wait_metric(r#"troupe_actors_live{kind="account"}"#, |n| n == 0.0)
        .await;
    let r = app
        .post_with_key("/v1/accounts/a/deposits", "old", json!({"amount": 5}))
        .await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(app.balance("a").await, 12);
}

#[actix_rt::test]
async fn a_transfer_id_is_its_idempotency_key() {
    let app = spawn_app().await;
    app.open("a").await;
    app.open("b").await;
    app.deposit("a", 100).await;
    let body = json!({"id": "t-9", "from": "a", "to": "b", "amount": 30});
    let first = app.post("/v1/transfers", body.clone()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let replay = app.post("/v1/transfers", body).await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let other = app
        .post(
            "/v1/transfers",
            json!({"id": "t-9", "from": "a", "to": "b", "amount": 31}),
        )
        .await;
    assert_error(
        other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!((app.balance("a").await, app.balance("b").await), (70, 30));
}

#[actix_rt::test]
async fn a_transfer_without_an_id_is_keyed_by_its_idempotency_key() {
    let app = spawn_app().await;
    app.open("a").await;
    app.open("b").await;
    app.deposit("a", 100).await;
    let body = json!({"from": "a", "to": "b", "amount": 30});
    let first = json_of(
        app.post_with_key("/v1/transfers", "pay-1", body.clone())
            .await,
    )
    .await;
    let replay = app.post_with_key("/v1/transfers", "pay-1", body).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(replay).await["id"], first["id"]);
    assert_eq!(app.balance("a").await, 70);
}

/// PUT ignores `Idempotency-Key`: a second PUT under the first one's key
/// is answered by the account as it is now (never a replay), and another
/// body under that key is not `idempotency_key_reused`.
#[actix_rt::test]
async fn put_ignores_the_idempotency_key() {
    let app = spawn_app().await;
    let put = |body: serde_json::Value| {
        app.client
            .put(app.url("/v1/accounts/p"))
            .header("Idempotency-Key", "open-p")
            .json(&body)
            .send()
    };
    assert_eq!(put(json!({})).await.unwrap().status(), StatusCode::CREATED);
    let again = put(json!({})).await.unwrap();
    assert!(again.headers().get("idempotent-replayed").is_none());
    assert_eq!(again.status(), StatusCode::OK);
    let other = put(json!({"overdraft_limit": 50})).await.unwrap();
    assert!(other.headers().get("idempotent-replayed").is_none());
    assert_error(other, StatusCode::CONFLICT, "already_exists").await;
}

/// A transfer with an `id` is that transfer whatever `Idempotency-Key`
/// says: another key does not start it twice, and its key does not bind
/// another transfer.
#[actix_rt::test]
async fn a_transfer_with_an_id_does_not_consult_the_idempotency_key() {
    let app = spawn_app().await;
    app.open("a").await;
    app.open("b").await;
    app.deposit("a", 100).await;
    let body = json!({"id": "t-id", "from": "a", "to": "b", "amount": 10});
    let first = app
        .post_with_key("/v1/transfers", "k-1", body.clone())
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let again = app.post_with_key("/v1/transfers", "k-2", body).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let other = app
        .post_with_key(
            "/v1/transfers",
            "k-1",
            json!({"id": "t-other", "from": "a", "to": "b", "amount": 5}),
        )
        .await;
    assert_eq!(other.status(), StatusCode::CREATED);
    assert!(other.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.balance("a").await, 85);
    assert_eq!(app.balance("b").await, 15);
}

/// Recent idempotency records are kept in the actor's memory: a retry
/// right after the first answer is replayed without asking the store.
#[actix_rt::test]
async fn a_prompt_retry_is_replayed_from_memory_without_a_store_lookup() {
    let app = spawn_app().await;
    app.open("a").await;
    let lookups =
        r#"troupe_store_operation_duration_seconds_count{backend="embedded",op="idempotency"}"#;
    let first = app
        .post_with_key("/v1/accounts/a/deposits", "mem-1", json!({"amount": 5}))
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    // A key never seen is looked up in the store once (it may have been
    // written before this activation).
    let before = app.wait_metric(lookups, |n| n >= 1.0).await;
    let again = app
        .post_with_key("/v1/accounts/a/deposits", "mem-1", json!({"amount": 5}))
        .await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    // A request that follows is measured after the replay; the lookup
    // count is unchanged.
    app.deposit("a", 1).await;
    assert_eq!(app.metric(lookups).await, Some(before));
    assert_eq!(app.balance("a").await, 6);
}
