//! API keys over real HTTP: every route with no token, a wrong token, a
//! token lacking the route's scope and one holding it; id prefixes,
//! including both accounts of a transfer; a revoked key stops working
//! without a restart; production refuses to start without keys; no token
//! ever reaches a log line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::helpers::{config_dir, spawn_app_with, Child, TestApp};
use crate::jwt;

/// A `[[key]]` block for `token`.
pub(crate) fn key(name: &str, token: &str, scopes: &[&str], ids: Option<&str>) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
    let ids = ids.map(|p| format!("ids = {p:?}\n")).unwrap_or_default();
    format!(
        "[[key]]\nname = {name:?}\nsha256 = {:?}\nscopes = [{}]\n{ids}\n",
        troupe::auth::digest_hex(token),
        scopes.join(", ")
    )
}

const ALL: [&str; 4] = ["ledger:read", "ledger:write", "actors:send", "ops:read"];

/// One key per scope (named as the scope), one with every scope, one
/// limited to ids starting with `pay-`.
fn keys() -> String {
    let mut text = String::new();
    for scope in ALL {
        text.push_str(&key(scope, &token_for(scope), &[scope], None));
    }
    text.push_str(&key("all", "t-all", &ALL, None));
    text.push_str(&key("pay", "t-pay", &ALL, Some("pay-")));
    text
}

fn token_for(scope: &str) -> String {
    format!("t-{}", scope.replace(':', "-"))
}

/// Writes `text` as `dir/keys.toml` (whole, then renamed into place).
pub(crate) fn write_keys(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("keys.toml");
    // Written whole, then renamed: the watcher never reads half a file.
    let tmp = dir.join("keys.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

async fn app(keys_dir: &TempDir, text: &str) -> TestApp {
    let path = write_keys(keys_dir.path(), text);
    spawn_app_with(TempDir::new().unwrap(), move |s| {
        s.auth.enabled = true;
        s.auth.keys_file = path.display().to_string();
    })
    .await
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request")
}

/// `GET /v1/accounts/a` with this `Authorization` header, as sent.
async fn with_authorization(app: &TestApp, value: &str) -> reqwest::Response {
    app.client
        .get(app.url("/v1/accounts/a"))
        .header("Authorization", value)
        .send()
        .await
        .expect("request")
}

async fn code_of(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("a JSON error body");
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[actix_rt::test]
async fn every_route_needs_its_scope_and_nothing_else_will_do() {
    let keys_dir = TempDir::new().unwrap();
    let app = app(&keys_dir, &keys()).await;
    let routes: Vec<(Method, &str, Option<Value>, &str)> = vec![
        (Method::GET, "/v1/accounts/a", None, "ledger:read"),
        (Method::GET, "/v1/accounts/a/entries", None, "ledger:read"),
        (Method::GET, "/v1/transfers/t", None, "ledger:read"),
        (
            Method::PUT,
            "/v1/accounts/a",
            Some(json!({"currency": "EUR"})),
            "ledger:write",
        ),
        (
            Method::POST,
            "/v1/accounts/a/deposits",
            Some(json!({"amount": 5})),
            "ledger:write",
        ),
        (
            Method::POST,
            "/v1/accounts/a/withdrawals",
            Some(json!({"amount": 1})),
            "ledger:write",
        ),
        (
            Method::POST,
            "/v1/transfers",
            Some(json!({"id": "t", "from": "a", "to": "b", "amount": 1})),
            "ledger:write",
        ),
        (Method::GET, "/v1/actors", None, "actors:send"),
        (Method::GET, "/v1/actors/account/a", None, "actors:send"),
        (
            Method::POST,
            "/v1/actors/account/a/get",
            Some(json!({})),
            "actors:send",
        ),
        (Method::GET, "/metrics", None, "ops:read"),
        (Method::GET, "/config", None, "ops:read"),
    ];
    for (method, path, body, scope) in routes {
        let what = format!("{method} {path}");
        let send = |token: Option<String>| {
            let (app, method, body) = (&app, method.clone(), body.clone());
            async move { call(app, method, path, body, token.as_deref()).await }
        };
        let none = send(None).await;
        assert_eq!(
            none.status(),
            StatusCode::UNAUTHORIZED,
            "{what} without a token"
        );
        let challenge = none
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok());
        assert!(
            challenge.is_some_and(|c| c.starts_with("Bearer")),
            "{what}: {challenge:?}"
        );
        assert_eq!(code_of(none).await, "unauthorized");

        let wrong = send(Some("t-nobody".into())).await;
        assert_eq!(
            wrong.status(),
            StatusCode::UNAUTHORIZED,
            "{what} with an unknown token"
        );

        for other in ALL.iter().filter(|s| **s != scope) {
            let lacking = send(Some(token_for(other))).await;
            assert_eq!(
                lacking.status(),
                StatusCode::FORBIDDEN,
                "{what} with only {other}"
            );
            assert_eq!(code_of(lacking).await, "forbidden");
        }

        let holding = send(Some(token_for(scope))).await;
        let status = holding.status();
        assert!(
            status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
            "{what} with {scope}: {status}"
        );
    }
    // A route's name in percent-escapes is still that route, as the
    // router sees it: no other key reaches it that way.
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/%61ccounts/a/withdrawals",
            Some(json!({"amount": 1})),
        ),
        (Method::PUT, "/v1/%61ccounts/x", Some(json!({}))),
        (
            Method::POST,
            "/v1/%74ransfers",
            Some(json!({"id": "t9", "from": "a", "to": "b", "amount": 1})),
        ),
        (
            Method::POST,
            "/v1/%61ctors/account/a/withdraw",
            Some(json!({"amount": 1})),
        ),
    ] {
        let r = call(
            &app,
            method.clone(),
            path,
            body,
            Some(&token_for("ops:read")),
        )
        .await;
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} with only ops:read"
        );
    }
    let r = call(
        &app,
        Method::GET,
        "/%6detrics",
        None,
        Some(&token_for("ledger:read")),
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "/metrics spelt in escapes"
    );
    // A path no route has is refused before any credentials, never let through.
    for token in [None, Some("t-all")] {
        let r = call(&app, Method::GET, "/v2/accounts/a", None, token).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    // A malformed header is not a token; the scheme's name is any case.
    let basic = with_authorization(&app, "Basic dDp0").await;
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    assert!(
        basic.headers().contains_key("x-request-id"),
        "refusals carry the request id"
    );
    let lower = with_authorization(&app, "bearer t-all").await;
    assert_eq!(lower.status(), StatusCode::OK, "account a was opened above");
    // Health and the API's description stay open.
    for path in [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/docs/",
        "/docs/swagger-ui.css",
    ] {
        assert_eq!(
            call(&app, Method::GET, path, None, None).await.status(),
            StatusCode::OK,
            "{path}"
        );
    }
    // Refusals are counted by key and reason.
    let metrics = call(&app, Method::GET, "/metrics", None, Some("t-all"))
        .await
        .text()
        .await
        .unwrap();
    for series in [
        r#"troupe_auth_denied_total{key="none",reason="missing"}"#,
        r#"troupe_auth_denied_total{key="none",reason="unknown_key"}"#,
        r#"troupe_auth_denied_total{key="none",reason="malformed"}"#,
        r#"troupe_auth_denied_total{key="ops:read",reason="scope"}"#,
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
}

#[actix_rt::test]
async fn a_key_limited_to_a_prefix_moves_money_only_between_its_own_accounts() {
    let keys_dir = TempDir::new().unwrap();
    let app = app(&keys_dir, &keys()).await;
    let put = |id: &'static str, token: &'static str| {
        let app = &app;
        async move {
            call(
                app,
                Method::PUT,
                &format!("/v1/accounts/{id}"),
                Some(json!({"currency": "EUR"})),
                Some(token),
            )
            .await
            .status()
        }
    };
    assert_eq!(put("pay-1", "t-pay").await, StatusCode::CREATED);
    assert_eq!(put("pay-2", "t-pay").await, StatusCode::CREATED);
    assert_eq!(put("other", "t-pay").await, StatusCode::FORBIDDEN);
    assert_eq!(
        call(&app, Method::GET, "/v1/accounts/other", None, Some("t-all"))
            .await
            .status(),
        StatusCode::NOT_FOUND,
        "a refused request changed nothing"
    );
    assert_eq!(put("other", "t-all").await, StatusCode::CREATED);
    for (id, token) in [("pay-1", "t-pay"), ("other", "t-all")] {
        let r = call(
            &app,
            Method::POST,
            &format!("/v1/accounts/{id}/deposits"),
            Some(json!({"amount": 100})),
            Some(token),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Ids are checked as the handler decodes them.
    assert_eq!(
        call(
            &app,
            Method::GET,
            "/v1/accounts/%70ay-1",
            None,
            Some("t-pay")
        )
        .await
        .status(),
        StatusCode::OK
    );
    assert_eq!(
        call(
            &app,
            Method::GET,
            "/v1/accounts/%6Fther",
            None,
            Some("t-pay")
        )
        .await
        .status(),
        StatusCode::FORBIDDEN
    );
    let transfer = |body: Value| {
        let app = &app;
        async move {
            call(
                app,
                Method::POST,
                "/v1/transfers",
                Some(body),
                Some("t-pay"),
            )
            .await
            .status()
        }
    };
    // Out of another's account, into another's account, under another id.
    assert_eq!(
        transfer(json!({"id": "pay-t1", "from": "other", "to": "pay-1", "amount": 7})).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        transfer(json!({"id": "pay-t2", "from": "pay-1", "to": "other", "amount": 7})).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        transfer(json!({"id": "t3", "from": "pay-1", "to": "pay-2", "amount": 7})).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        transfer(json!({"from": "pay-1", "to": "pay-2", "amount": 7})).await,
        StatusCode::FORBIDDEN,
        "a generated id has no prefix"
    );
    // Nor through the actor API.
    let via_actors = call(
        &app,
        Method::POST,
        "/v1/actors/transfer/pay-t4/start",
        Some(json!({"from": "other", "to": "pay-1", "amount": 7})),
        Some("t-pay"),
    )
    .await;
    assert_eq!(via_actors.status(), StatusCode::FORBIDDEN);
    let balance = |id: &'static str| {
        let app = &app;
        async move {
            let body: Value = call(
                app,
                Method::GET,
                &format!("/v1/accounts/{id}"),
                None,
                Some("t-all"),
            )
            .await
            .json()
            .await
            .unwrap();
            body["balance"].as_i64().unwrap()
        }
    };
    assert_eq!(
        (balance("pay-1").await, balance("other").await),
        (100, 100),
        "refused transfers moved money"
    );
    assert_eq!(
        transfer(json!({"id": "pay-t5", "from": "pay-1", "to": "pay-2", "amount": 7})).await,
        StatusCode::CREATED
    );
    assert_eq!((balance("pay-1").await, balance("pay-2").await), (93, 7));
    let read = |path: &'static str, token: &'static str| {
        let app = &app;
        async move {
            call(app, Method::GET, path, None, Some(token))
                .await
                .status()
        }
    };
    assert_eq!(read("/v1/transfers/pay-t5", "t-pay").await, StatusCode::OK);
    // A transfer under a prefixed id between others' accounts stays theirs.
    assert_eq!(put("other-2", "t-all").await, StatusCode::CREATED);
    let theirs = json!({"id": "pay-theirs", "from": "other", "to": "other-2", "amount": 1});
    let made = call(
        &app,
        Method::POST,
        "/v1/transfers",
        Some(theirs),
        Some("t-all"),
    )
    .await;
    assert_eq!(made.status(), StatusCode::CREATED);
    for path in ["/v1/transfers/pay-theirs", "/v1/actors/transfer/pay-theirs"] {
        assert_eq!(read(path, "t-pay").await, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(read(path, "t-all").await, StatusCode::OK, "{path}");
    }
    let as_message = "/v1/actors/transfer/pay-theirs/get";
    for (token, expected) in [("t-pay", StatusCode::FORBIDDEN), ("t-all", StatusCode::OK)] {
        let r = call(&app, Method::POST, as_message, Some(json!({})), Some(token)).await;
        assert_eq!(r.status(), expected, "{as_message} with {token}");
    }
}

#[actix_rt::test]
async fn a_revoked_key_stops_working_without_a_restart() {
    let keys_dir = TempDir::new().unwrap();
    let app = app(&keys_dir, &keys()).await;
    assert_eq!(
        call(&app, Method::GET, "/v1/accounts/a", None, Some("t-all"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    // "all" revoked, a new key added.
    let mut text = keys().replace(&key("all", "t-all", &ALL, None), "");
    text.push_str(&key("fresh", "t-fresh", &["ledger:read"], None));
    write_keys(keys_dir.path(), &text);
    assert!(
        refused_within_5s(&app, "t-all").await,
        "the revoked key still works"
    );
    assert_eq!(
        call(&app, Method::GET, "/v1/accounts/a", None, Some("t-fresh"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    // A broken file leaves the keys in force.
    write_keys(keys_dir.path(), "[[key]]\nname = 1\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        call(&app, Method::GET, "/v1/accounts/a", None, Some("t-fresh"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    // Reloads are counted by result, and the keys in force shown: the
    // four single-scope keys, "pay" and "fresh".
    let metrics = call(&app, Method::GET, "/metrics", None, Some("t-ops-read"))
        .await
        .text()
        .await
        .unwrap();
    for (series, value) in [
        ("troupe_auth_keys ", 6.0),
        ("troupe_auth_key_reloads_total{result=\"applied\"} ", 1.0),
        ("troupe_auth_key_reloads_total{result=\"rejected\"} ", 1.0),
    ] {
        let found = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert!(found.is_some_and(|n| n >= value), "{series}: {found:?}");
    }
    // Deleting the file revokes every key.
    std::fs::remove_file(keys_dir.path().join("keys.toml")).unwrap();
    assert!(
        refused_within_5s(&app, "t-fresh").await,
        "a deleted keys file left its keys working"
    );
}

/// Whether `token` is refused (`401`) within 5 s: a reload takes effect.
async fn refused_within_5s(app: &TestApp, token: &str) -> bool {
    crate::helpers::eventually(|| async {
        let r = call(app, Method::GET, "/v1/accounts/a", None, Some(token)).await;
        r.status() == StatusCode::UNAUTHORIZED
    })
    .await
}

/// The OpenAPI document declares the bearer scheme on every operation but
/// health, with the 401 and 403 they can answer.
#[actix_rt::test]
async fn the_openapi_document_declares_the_bearer_scheme() {
    let app = crate::helpers::spawn_app().await;
    let doc: Value = call(&app, Method::GET, "/openapi.json", None, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "{doc}"
    );
    for (path, method) in [
        ("/v1/accounts/{id}", "get"),
        ("/v1/transfers", "post"),
        ("/metrics", "get"),
        ("/v1/actors/{kind}/{id}/{message}", "post"),
    ] {
        let op = &doc["paths"][path][method];
        assert_eq!(op["security"], json!([{"bearer": []}]), "{path} {method}");
        assert!(
            op["responses"]["401"].is_object() && op["responses"]["403"].is_object(),
            "{path} {method}"
        );
    }
    let health = &doc["paths"]["/healthz"]["get"];
    assert!(
        health.is_object() && health["security"].is_null(),
        "/healthz stays open: {health}"
    );
}

/// The binary in production: without a key it refuses to start and says
/// how to add one.
#[tokio::test]
async fn production_refuses_to_start_without_keys() {
    let data = TempDir::new().unwrap();
    for (keys_file, expected) in [(None, "auth.keys_file"), (Some(""), "troupe keys new")] {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_troupe"));
        command
            .args([
                "--port",
                "0",
                "--data-dir",
                &data.path().display().to_string(),
            ])
            .arg("--config-dir")
            .arg(config_dir())
            .env("TROUPE_ENV", "production")
            .env_remove("RUST_LOG");
        if let Some(file) = keys_file {
            command.env("TROUPE__AUTH__KEYS_FILE", file);
        }
        let out = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("it stops at once")
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "production started without keys: {printed}"
        );
        assert!(printed.contains(expected), "{expected:?} not in: {printed}");
    }
    // Turned off on purpose (the compose demo), it starts, and says so.
    let env = [
        ("TROUPE_ENV", "production"),
        ("TROUPE__AUTH__ENABLED", "false"),
    ];
    let child = Child::start(data.path(), &env).await;
    child
        .wait_log(0, Duration::from_secs(10), |l| {
            l.to_string()
                .contains("auth.enabled is false in production")
        })
        .await;
}

/// No token, valid or not, appears in any log line of a run that uses
/// them at `trace`.
#[tokio::test]
async fn no_token_reaches_the_logs() {
    let keys_dir = TempDir::new().unwrap();
    let path = write_keys(keys_dir.path(), &keys());
    let data = TempDir::new().unwrap();
    let child = Child::start(
        data.path(),
        &[
            ("TROUPE__AUTH__ENABLED", "true"),
            ("TROUPE__AUTH__KEYS_FILE", &path.display().to_string()),
            ("TROUPE__LOG__FILTER", "trace"),
            ("TROUPE__AUTH__JWT__ISSUER", jwt::ISSUER),
            ("TROUPE__AUTH__JWT__AUDIENCE", jwt::AUDIENCE),
            ("TROUPE__AUTH__JWT__HS256_SECRET", jwt::SECRET),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let valid = jwt::hs256(&jwt::claims("ledger:read"));
    let mut expired = jwt::claims("ledger:read ops:read");
    expired["exp"] = json!(jwt::now() - 3600);
    let expired = jwt::hs256(&expired);
    let jwts = [valid.as_str(), expired.as_str()];
    for token in ["t-all", "t-pay", "t-ops-read", "t-secret-nobody-has"]
        .into_iter()
        .chain(jwts)
    {
        for path in ["/v1/accounts/a", "/v1/accounts/other", "/metrics"] {
            let _ = client
                .get(format!("{}{path}", child.address))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
        }
    }
    let _ = client
        .get(format!("{}/v1/accounts/a", child.address))
        .header("Authorization", "Token t-malformed-secret")
        .send()
        .await
        .unwrap();
    let (_, refused) = child
        .wait_log(0, Duration::from_secs(10), |l| {
            l["fields"]["message"] == "request refused" || l["message"] == "request refused"
        })
        .await;
    assert!(
        refused.to_string().contains("unknown_key")
            || refused.to_string().contains("scope")
            || refused.to_string().contains("ids")
    );
    let logs = child.output();
    for secret in [
        "t-all",
        "t-pay",
        "t-ops-read",
        "t-secret-nobody-has",
        "t-malformed-secret",
    ] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
    }
    // A JWT's signature is what makes it a credential; the HS256 secret
    // signs them all.
    for token in jwts {
        let signature = token.rsplit('.').next().unwrap_or(token);
        assert!(!logs.contains(signature), "a JWT appears in the logs");
    }
    assert!(
        !logs.contains(jwt::SECRET),
        "the JWT secret appears in the logs"
    );
}
