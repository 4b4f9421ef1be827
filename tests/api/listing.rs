//! Listing actors over real HTTP (`GET /v1/actors/{kind}`): pages in
//! ascending order until `next` is null, a prefix, bad inputs refused in
//! the error shape, the same listing after a restart with every actor
//! passivated, on the embedded store and on a real Redis (including actors
//! an earlier version stored before the index existed), a prefix-limited
//! key seeing only its own ids, and `troupe actors list` against a
//! running server.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::auth::{key, write_keys};
use crate::helpers::{assert_error, eventually, json_of, spawn_app_with, TestApp};
use crate::redis_server::RedisServer;

/// Opens accounts `acc-000` .. and a few others, and one transfer.
async fn populate(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids: Vec<String> = (0..n).map(|i| format!("acc-{i:03}")).collect();
    ids.extend(["Zed", "acc.x", "acc:y", "b"].map(String::from));
    for id in &ids {
        app.open(id).await;
    }
    app.deposit("acc-000", 10).await;
    let transfer = app
        .post(
            "/v1/transfers",
            json!({"id": "t-1", "from": "acc-000", "to": "acc-001", "amount": 1}),
        )
        .await;
    assert!(transfer.status().is_success(), "{}", transfer.status());
    ids.sort_unstable();
    ids
}

/// Every id of `kind` through pages of `limit`, and how many pages.
async fn all_pages(app: &TestApp, kind: &str, query: &str, limit: u32) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/v1/actors/{kind}?limit={limit}{query}");
        if let Some(after) = &after {
            path.push_str(&format!("&after={after}"));
        }
        let response = app.get(&path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let page = json_of(response).await;
        let got: Vec<String> = page["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_str().expect("an id").to_owned())
            .collect();
        assert!(got.len() <= limit as usize, "a page holds at most limit");
        pages += 1;
        ids.extend(got.iter().cloned());
        match &page["next"] {
            Value::Null => return (ids, pages),
            Value::String(next) => {
                assert_eq!(Some(next), got.last(), "next is the page's last id");
                after = Some(next.clone());
            }
            other => panic!("next is {other}"),
        }
        assert!(pages < 100, "the listing does not end");
    }
}

async fn lists_every_actor_in_pages_and_after_a_restart(
    app: TestApp,
    restart: impl AsyncFnOnce(TestApp) -> TestApp,
) {
    let ids = populate(&app, 23).await;
    let (listed, pages) = all_pages(&app, "account", "", 10).await;
    assert_eq!(listed, ids, "every account, ascending, once");
    assert_eq!(pages, 3);
    let (prefixed, _) = all_pages(&app, "account", "&prefix=acc-01", 4).await;
    let expected: Vec<String> = (10..20).map(|i| format!("acc-{i:03}")).collect();
    assert_eq!(prefixed, expected);
    let (transfers, _) = all_pages(&app, "transfer", "", 1000).await;
    assert_eq!(transfers, ["t-1"]);
    // A full last page still says there is none after it.
    let exact = json_of(app.get("/v1/actors/account?prefix=acc-00&limit=10").await).await;
    assert_eq!(exact["ids"].as_array().map(Vec::len), Some(10));
    assert_eq!(exact["next"], Value::Null);
    let default = json_of(app.get("/v1/actors/account").await).await;
    assert_eq!(default["ids"].as_array().map(Vec::len), Some(ids.len()));

    let app = restart(app).await;
    let (listed, _) = all_pages(&app, "account", "", 1000).await;
    assert_eq!(
        listed, ids,
        "listed from the store after a restart, no actor active"
    );
}

#[actix_rt::test]
async fn the_embedded_store_lists_every_actor_in_pages_and_after_a_restart() {
    let app = spawn_app_with(TempDir::new().unwrap(), |_| {}).await;
    lists_every_actor_in_pages_and_after_a_restart(app, async |app: TestApp| {
        let dir = app.stop().await;
        spawn_app_with(dir, |_| {}).await
    })
    .await;
}

#[actix_rt::test]
async fn the_redis_store_lists_every_actor_in_pages_and_after_a_restart() {
    let redis = RedisServer::start();
    let app = spawn_app_with(TempDir::new().unwrap(), |s| redis.configure(s)).await;
    lists_every_actor_in_pages_and_after_a_restart(app, async |app: TestApp| {
        let dir = app.stop().await;
        spawn_app_with(dir, |s| redis.configure(s)).await
    })
    .await;
}

#[actix_rt::test]
async fn bad_listing_requests_are_refused_in_the_error_shape() {
    let app = spawn_app_with(TempDir::new().unwrap(), |_| {}).await;
    app.open("a").await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "prefix=a/b",
        "prefix=%C3%A9",
        &format!("prefix={}", "p".repeat(129)),
        "after=",
        "after=a%20b",
        "colour=blue",
    ] {
        let r = app.get(&format!("/v1/actors/account?{query}")).await;
        assert_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    assert_error(
        app.get("/v1/actors/wallet").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let deleted = app
        .client
        .delete(app.url("/v1/actors/account"))
        .send()
        .await
        .unwrap();
    assert_error(
        deleted,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    let listed = json_of(app.get("/v1/actors/account?limit=1000").await).await;
    assert_eq!(listed["ids"], json!(["a"]));
}

/// Actors a version without the index stored in Redis (their state hash
/// only) are indexed at start-up, once; keys a client named that the scan
/// also matches (an idempotency record under the key `x}:state`) are not
/// actors and stay out.
#[actix_rt::test]
async fn actors_stored_before_the_redis_index_are_listed_after_an_upgrade() {
    let redis = RedisServer::start();
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    for actor in ["account/old-1", "account/old-2", "transfer/old-t"] {
        let key = format!("troupe:{{{actor}}}:state");
        let state = if actor.starts_with("account") {
            json!({"currency": "EUR", "balance": 0, "overdraft": 0, "seq": 0}).to_string()
        } else {
            json!({}).to_string()
        };
        let _: () = ::redis::cmd("HSET")
            .arg(&key)
            .arg("v")
            .arg(1)
            .arg("s")
            .arg(state)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    for junk in [
        "troupe:{account/old-1}:idem:x}:state",
        "troupe:{wallet/w}:state",
        "troupe:{account/bad id}:state",
    ] {
        let _: () = ::redis::cmd("SET")
            .arg(junk)
            .arg("{}")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let app = spawn_app_with(TempDir::new().unwrap(), |s| redis.configure(s)).await;
    let accounts = || async { json_of(app.get("/v1/actors/account").await).await["ids"].clone() };
    eventually(|| async { accounts().await.as_array().is_some_and(|a| a.len() == 2) }).await;
    assert_eq!(accounts().await, json!(["old-1", "old-2"]));
    let transfers = json_of(app.get("/v1/actors/transfer").await).await;
    assert_eq!(transfers["ids"], json!(["old-t"]));
    let marked: bool = ::redis::cmd("EXISTS")
        .arg("troupe:actors:indexed")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(marked, "the upgrade is done once");
    let kinds: Vec<String> = ::redis::cmd("KEYS")
        .arg("troupe:actors:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        kinds.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "troupe:actors:account".to_owned(),
            "troupe:actors:indexed".to_owned(),
            "troupe:actors:transfer".to_owned()
        ]),
        "no index for a kind that does not exist"
    );
}

#[actix_rt::test]
async fn a_key_limited_to_a_prefix_lists_only_its_own_ids() {
    let keys = TempDir::new().unwrap();
    let scopes = ["actors:send", "ledger:write"];
    let path = write_keys(
        keys.path(),
        &format!(
            "{}{}",
            key("all", "t-all", &scopes, None),
            key("pay", "t-pay", &scopes, Some("pay-"))
        ),
    );
    let file = path.display().to_string();
    let app = spawn_app_with(TempDir::new().unwrap(), move |s| {
        s.auth.enabled = true;
        s.auth.keys_file = file;
    })
    .await;
    for id in ["other", "pay-1", "pay-2", "pax"] {
        let r = app
            .client
            .put(app.url(&format!("/v1/accounts/{id}")))
            .bearer_auth("t-all")
            .json(&json!({"currency": "EUR"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let list = |query: &'static str, token: &'static str| {
        let app = &app;
        async move {
            app.client
                .get(app.url(&format!("/v1/actors/account{query}")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    let ids = |page: Value| page["ids"].clone();
    assert_eq!(
        ids(json_of(list("", "t-all").await).await),
        json!(["other", "pax", "pay-1", "pay-2"])
    );
    // No prefix, or a wider one, narrows to the key's own.
    for query in ["", "?prefix=pa", "?prefix=pay-"] {
        assert_eq!(
            ids(json_of(list(query, "t-pay").await).await),
            json!(["pay-1", "pay-2"]),
            "{query}"
        );
    }
    assert_eq!(
        ids(json_of(list("?prefix=pay-2", "t-pay").await).await),
        json!(["pay-2"])
    );
    assert_error(
        list("?prefix=ot", "t-pay").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

#[actix_rt::test]
async fn troupe_actors_list_prints_every_id_of_a_running_server() {
    let app = spawn_app_with(TempDir::new().unwrap(), |_| {}).await;
    let ids = populate(&app, 5).await;
    let run = |args: Vec<String>| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_troupe"))
            .args(args)
            .output()
            .await
            .expect("the troupe binary runs")
    };
    let base = |kind: &str| {
        vec![
            "actors".to_owned(),
            "list".to_owned(),
            "--kind".to_owned(),
            kind.to_owned(),
            "--url".to_owned(),
            app.address.clone(),
            // Pages of two: the client follows `next` to the end.
            "--page-size".to_owned(),
            "2".to_owned(),
        ]
    };
    let printed = run(base("account")).await;
    assert!(printed.status.success(), "{printed:?}");
    let lines: Vec<String> = String::from_utf8_lossy(&printed.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines, ids);
    let mut prefixed = base("account");
    prefixed.extend(["--prefix".to_owned(), "acc-00".to_owned()]);
    let printed = run(prefixed).await;
    assert!(printed.status.success(), "{printed:?}");
    let lines: Vec<String> = String::from_utf8_lossy(&printed.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines,
        ["acc-000", "acc-001", "acc-002", "acc-003", "acc-004"]
    );
    // An unknown kind: the server's answer, on stderr, and a failure.
    let printed = run(base("wallet")).await;
    assert!(!printed.status.success());
    let stderr = String::from_utf8_lossy(&printed.stderr);
    assert!(stderr.contains("not_found"), "{stderr}");
}
