//! Bad input gets a clear error in the API's shape and changes nothing.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_error, spawn_app};

#[actix_rt::test]
async fn bad_deposit_bodies_are_400_and_change_nothing() {
    let app = spawn_app().await;
    app.open("a").await;
    app.deposit("a", 10).await;
    let bodies = [
        r#"{"amount": 1"#,
        r#"{"amount": 1.5}"#,
        r#"{"amount": "5"}"#,
        r#"{"amount": 0}"#,
        r#"{"amount": -3}"#,
        r#"{"amount": 1000000000000001}"#,
        r#"{"amount": 5, "memo": "x"}"#,
        r#"{}"#,
        r#"[5]"#,
        r#""5""#,
        r#"null"#,
    ];
    for body in bodies {
        let r = app
            .client
            .post(app.url("/v1/accounts/a/deposits"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let error = assert_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(
            !error["error"]["message"].as_str().unwrap().is_empty(),
            "{body}"
        );
    }
    assert_eq!(app.balance("a").await, 10);
}

#[actix_rt::test]
async fn bad_ids_are_400() {
    let app = spawn_app().await;
    let long = "x".repeat(129);
    for id in ["a%20b", "caf%C3%A9", "a$b", long.as_str()] {
        let r = app.put(&format!("/v1/accounts/{id}"), json!({})).await;
        assert_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let r = app
        .post(
            "/v1/transfers",
            json!({"id": "bad id", "from": "a", "to": "b", "amount": 1}),
        )
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = app
        .post(
            "/v1/transfers",
            json!({"from": "a/b", "to": "b", "amount": 1}),
        )
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
}

#[actix_rt::test]
async fn bad_account_settings_are_400() {
    let app = spawn_app().await;
    for body in [
        json!({"currency": "eur"}),
        json!({"currency": 5}),
        json!({"overdraft_limit": -1}),
        json!({"overdraft_limit": 1e3}),
    ] {
        let r = app.put("/v1/accounts/a", body).await;
        assert_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    assert_error(
        app.get("/v1/accounts/a").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[actix_rt::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    app.open("a").await;
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = app
            .client
            .post(app.url("/v1/accounts/a/deposits"))
            .header("Content-Type", content_type)
            .body(r#"{"amount": 5}"#)
            .send()
            .await
            .unwrap();
        assert_error(
            r,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }
    assert_eq!(app.balance("a").await, 0);
}

#[actix_rt::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app().await;
    app.open("a").await;
    let big = format!(r#"{{"amount": 5, "pad": "{}"}}"#, "x".repeat(70 * 1024));
    let r = app
        .client
        .post(app.url("/v1/accounts/a/deposits"))
        .header("Content-Type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert_eq!(app.balance("a").await, 0);
}

#[actix_rt::test]
async fn bad_headers_are_400() {
    let app = spawn_app().await;
    app.open("a").await;
    for (name, value) in [
        ("X-Request-Timeout", "soon"),
        ("X-Request-Timeout", "0"),
        ("Idempotency-Key", &"k".repeat(129)),
    ] {
        let r = app
            .client
            .post(app.url("/v1/accounts/a/deposits"))
            .header(name, value)
            .json(&json!({"amount": 5}))
            .send()
            .await
            .unwrap();
        assert_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    assert_eq!(app.balance("a").await, 0);
}

#[actix_rt::test]
async fn unknown_routes_are_404_and_wrong_methods_405_in_the_error_shape() {
    let app = spawn_app().await;
    assert_error(
        app.get("/v2/accounts/a").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let r = app
        .client
        .delete(app.url("/v1/accounts/a"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}

#[actix_rt::test]
async fn the_request_id_is_echoed_and_a_traceparent_sets_the_trace_id() {
    let app = spawn_app().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = app
        .client
        .get(app.url("/v1/accounts/none"))
        .header("X-Request-Id", "req-42")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-42");
    let body = assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(body["error"]["request_id"], json!("req-42"));
    assert_eq!(body["error"]["trace_id"], json!(trace));

    let generated = app.get("/healthz").await;
    assert!(generated
        .headers()
        .get("x-request-id")
        .is_some_and(|v| !v.is_empty()));
}
