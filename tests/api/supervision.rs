//! A panicking actor is contained, restarted from its durable state, and
//! given up on past the restart intensity. The `crash` message exists only
//! in test builds (the `fault-injection` feature of troupe-actors).

use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use tempfile::TempDir;

use crate::helpers::{assert_error, json_of, spawn_app, spawn_app_with};

#[actix_rt::test]
async fn a_panic_answers_500_and_the_actor_restarts_from_durable_state() {
    let app = spawn_app().await;
    app.open("victim").await;
    app.deposit("victim", 42).await;
    let others: Vec<String> = (0..20).map(|i| format!("bystander-{i}")).collect();
    for id in &others {
        app.open(id).await;
    }

    let crash = app.post("/v1/actors/account/victim/crash", json!({}));
    let bystanders = join_all(others.iter().map(|id| app.deposit(id, 1)));
    let (crash, bystanders) = futures_util::join!(crash, bystanders);

    assert_error(crash, StatusCode::INTERNAL_SERVER_ERROR, "internal").await;
    assert!(
        bystanders.iter().all(|r| r.status() == StatusCode::OK),
        "other actors noticed the crash"
    );
    let after = json_of(app.get("/v1/accounts/victim").await).await;
    assert_eq!(
        (after["balance"].clone(), after["version"].clone()),
        (json!(42), json!(2))
    );
    assert_eq!(
        json_of(app.deposit("victim", 1).await).await["balance"],
        json!(43)
    );
}

#[actix_rt::test]
async fn past_the_restart_intensity_the_actor_answers_503_until_the_window_passes() {
    let app = spawn_app_with(TempDir::new().unwrap(), |s| {
        s.runtime.supervision.max_restarts = 2;
        s.runtime.supervision.window_ms = 1500;
        s.runtime.supervision.backoff_ms = 1;
    })
    .await;
    app.open("fragile").await;
    for _ in 0..3 {
        let r = app
            .post("/v1/actors/account/fragile/crash", json!({}))
            .await;
        assert_error(r, StatusCode::INTERNAL_SERVER_ERROR, "internal").await;
    }
    let refused = app.get("/v1/accounts/fragile").await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_error(refused, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    app.wait_metric(r#"troupe_actor_failures_total{kind="account"}"#, |n| {
        n == 1.0
    })
    .await;

    // Once the window has passed it serves again.
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..250 {
        status = app.get("/v1/accounts/fragile").await.status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, StatusCode::OK);
}

struct Fragile;
impl Actor for Fragile {
    type Context = Context<Self>;
}
#[derive(Message)]
#[rtype(result = "()")]
struct Boom;
#[derive(Message)]
#[rtype(result = "()")]
struct Ping;
impl Handler<Ping> for Fragile {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}
impl Handler<Boom> for Fragile {
    type Result = ();
    fn handle(&mut self, _: Boom, _: &mut Context<Self>) {
        panic!("boom");
    }
}

/// Why the runtime catches panics itself: with actix alone, a handler's
/// panic drops the actor and its mailbox, and nothing restarts it.
#[actix_rt::test]
async fn actix_alone_loses_an_actor_whose_handler_panics() {
    let arbiter = Arbiter::new();
    let addr = Fragile::start_in_arbiter(&arbiter.handle(), |_| Fragile);
    assert!(addr.send(Ping).await.is_ok());
    assert!(
        addr.send(Boom).await.is_err(),
        "the panicking message gets no answer"
    );
    assert!(
        addr.send(Ping).await.is_err(),
        "and nothing restarted the actor"
    );
    arbiter.stop();
}
