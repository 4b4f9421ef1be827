use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_error, json_of, spawn_app};

#[actix_rt::test]
async fn the_catalog_lists_kinds_messages_and_payload_schemas() {
    let app = spawn_app().await;
    let body = json_of(app.get("/v1/actors").await).await;
    let kinds = body["kinds"].as_array().unwrap();
    let account = kinds
        .iter()
        .find(|k| k["kind"] == json!("account"))
        .expect("account kind");
    let names: Vec<_> = account["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    for name in ["open", "deposit", "withdraw", "get", "entries"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let deposit = account["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == json!("deposit"))
        .unwrap();
    assert!(
        deposit["payload"]["properties"]["amount"].is_object(),
        "{deposit}"
    );
    assert!(kinds.iter().any(|k| k["kind"] == json!("transfer")));
}

#[actix_rt::test]
async fn actor_messages_behave_like_the_rest_routes() {
    let app = spawn_app().await;
    let r = app
        .post("/v1/actors/account/x/open", json!({"currency": "EUR"}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["reply"]["currency"], json!("EUR"));
    let r = json_of(
        app.post("/v1/actors/account/x/deposit", json!({"amount": 7}))
            .await,
    )
    .await;
    assert_eq!(r["reply"]["balance"], json!(7));
    assert_eq!(app.balance("x").await, 7);

    let state = json_of(app.get("/v1/actors/account/x").await).await;
    assert_eq!(state["reply"]["balance"], json!(7));

    let r = app
        .post("/v1/actors/account/x/withdraw", json!({"amount": 8}))
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds").await;
}

#[actix_rt::test]
async fn unknown_kinds_and_messages_are_404_and_internal_messages_are_not_exposed() {
    let app = spawn_app().await;
    assert_error(
        app.post("/v1/actors/robot/x/open", json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get("/v1/actors/robot/x").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.post("/v1/actors/account/x/fly", json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let leg = json!({"transfer": "t", "amount": 5, "currency": "USD"});
    assert_error(
        app.post("/v1/actors/account/x/transfer_credit", leg).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get("/v1/actors/account/never").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}
