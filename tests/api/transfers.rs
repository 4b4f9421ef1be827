use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{all_entries, assert_error, json_of, spawn_app, TestApp};

async fn funded(app: &TestApp, id: &str, currency: &str, amount: u64) {
    let r = app
        .put(&format!("/v1/accounts/{id}"), json!({"currency": currency}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    if amount > 0 {
        assert_eq!(app.deposit(id, amount).await.status(), StatusCode::OK);
    }
}

#[actix_rt::test]
async fn a_transfer_moves_money_and_both_journals_name_it() {
    let app = spawn_app().await;
    funded(&app, "a", "EUR", 100).await;
    funded(&app, "b", "EUR", 0).await;
    let r = app
        .post(
            "/v1/transfers",
            json!({"id": "t-1", "from": "a", "to": "b", "amount": 40}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body = json_of(r).await;
    assert_eq!(
        (
            body["id"].clone(),
            body["status"].clone(),
            body["amount"].clone()
        ),
        (json!("t-1"), json!("completed"), json!(40))
    );
    assert_eq!((app.balance("a").await, app.balance("b").await), (60, 40));

    let debit = all_entries(&app.client, &app.address, "a")
        .await
        .pop()
        .unwrap();
    let credit = all_entries(&app.client, &app.address, "b")
        .await
        .pop()
        .unwrap();
    assert_eq!(
        (debit["kind"].clone(), debit["transfer_id"].clone()),
        (json!("transfer_debit"), json!("t-1"))
    );
    assert_eq!(
        (credit["kind"].clone(), credit["transfer_id"].clone()),
        (json!("transfer_credit"), json!("t-1"))
    );

    let got = json_of(app.get("/v1/transfers/t-1").await).await;
    assert_eq!(got["status"], json!("completed"));
}

#[actix_rt::test]
async fn refused_transfers_are_422_with_the_failed_transfer_and_move_nothing() {
    let app = spawn_app().await;
    funded(&app, "a", "EUR", 100).await;
    funded(&app, "b", "EUR", 0).await;
    funded(&app, "usd", "USD", 0).await;
    let cases = [
        ("t-funds", "a", "b", 101, "insufficient_funds"),
        ("t-nofrom", "ghost", "b", 1, "account_not_found"),
        ("t-noto", "a", "ghost", 1, "account_not_found"),
        ("t-ccy", "a", "usd", 1, "currency_mismatch"),
        ("t-same", "a", "a", 1, "same_account"),
    ];
    for (id, from, to, amount, reason) in cases {
        let r = app
            .post(
                "/v1/transfers",
                json!({"id": id, "from": from, "to": to, "amount": amount}),
            )
            .await;
        let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, reason).await;
        assert_eq!(
            (body["status"].clone(), body["reason"].clone()),
            (json!("failed"), json!(reason)),
            "{id}"
        );
        let got = json_of(app.get(&format!("/v1/transfers/{id}")).await).await;
        assert_eq!(got["status"], json!("failed"));
    }
    assert_eq!(
        (
            app.balance("a").await,
            app.balance("b").await,
            app.balance("usd").await
        ),
        (100, 0, 0)
    );
}

#[actix_rt::test]
async fn an_unknown_transfer_is_404() {
    let app = spawn_app().await;
    assert_error(
        app.get("/v1/transfers/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[actix_rt::test]
async fn a_transfer_without_an_id_gets_one() {
    let app = spawn_app().await;
    funded(&app, "a", "USD", 10).await;
    funded(&app, "b", "USD", 0).await;
    let body = json_of(
        app.post(
            "/v1/transfers",
            json!({"from": "a", "to": "b", "amount": 10}),
        )
        .await,
    )
    .await;
    let id = body["id"].as_str().expect("an id").to_owned();
    let got = json_of(app.get(&format!("/v1/transfers/{id}")).await).await;
    assert_eq!(got["status"], json!("completed"));
}

#[actix_rt::test]
async fn a_bad_transfer_body_is_400() {
    let app = spawn_app().await;
    for body in [
        json!({"from": "a", "to": "b"}),
        json!({"from": "a", "to": "b", "amount": 0}),
        json!({"id": 5, "from": "a", "to": "b", "amount": 1}),
        json!({"from": "a", "to": "b", "amount": 1, "note": "x"}),
        json!([1]),
    ] {
        assert_error(
            app.post("/v1/transfers", body).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
}

/// Replies are the typed views the OpenAPI document describes: the same
/// types serialise them and name them in the document.
#[actix_rt::test]
async fn replies_are_the_views_the_openapi_document_names() {
    use troupe_actors::account::{AccountView, EntriesPage, Movement};
    use troupe_actors::transfer::TransferView;
    let app = spawn_app().await;
    funded(&app, "a", "EUR", 100).await;
    funded(&app, "b", "EUR", 0).await;
    let account: AccountView =
        serde_json::from_value(json_of(app.get("/v1/accounts/a").await).await).unwrap();
    assert_eq!(account.balance, 100);
    let moved: Movement = serde_json::from_value(json_of(app.deposit("a", 1).await).await).unwrap();
    assert_eq!((moved.balance, moved.entry.seq), (101, 2));
    let t = app
        .post(
            "/v1/transfers",
            json!({"id": "t-v", "from": "a", "to": "b", "amount": 1}),
        )
        .await;
    let t: TransferView = serde_json::from_value(json_of(t).await).unwrap();
    assert_eq!(t.id.as_str(), "t-v");
    let page: EntriesPage =
        serde_json::from_value(json_of(app.get("/v1/accounts/a/entries").await).await).unwrap();
    assert_eq!(page.entries.len(), 3);
    let doc = json_of(app.get("/openapi.json").await).await;
    for name in [
        "AccountView",
        "Movement",
        "Entry",
        "EntriesPage",
        "TransferView",
        "ErrorCode",
    ] {
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{name} is not in the document"
        );
    }
    let get = &doc["paths"]["/v1/accounts/{id}"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"]["$ref"];
    assert_eq!(get, &json!("#/components/schemas/AccountView"));
}

/// A settled transfer has nothing worth keeping: it leaves memory as soon
/// as it has answered, long before the idle timeout (a minute here).
#[actix_rt::test]
async fn a_settled_transfer_leaves_memory_at_once() {
    let app = spawn_app().await;
    funded(&app, "a", "USD", 100).await;
    funded(&app, "b", "USD", 0).await;
    let r = app
        .post(
            "/v1/transfers",
            json!({"id": "t-gone", "from": "a", "to": "b", "amount": 5}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    app.wait_metric(r#"troupe_actors_live{kind="transfer"}"#, |n| n == 0.0)
        .await;
    app.wait_metric(r#"troupe_actor_passivations_total{kind="transfer"}"#, |n| {
        n >= 1.0
    })
    .await;
}
