use chrono::Utc;
use serde_json::json;

use super::*;
use crate::protocol::ReplyPlan;

fn env(version: u64) -> Env {
    Env {
        id: ActorId::parse("t-1").unwrap(),
        now: Utc::now(),
        version,
    }
}

fn start(from: &str, to: &str, amount: u64) -> Command {
    Command::Start {
        from: ActorId::parse(from).unwrap(),
        to: ActorId::parse(to).unwrap(),
        amount: Amount::new(amount).unwrap(),
    }
}

fn account_reply(body: Value) -> Outcome {
    Ok(Reply::ok(body))
}

#[test]
fn start_persists_pending_and_asks_for_the_target_first() {
    let step = Transfer::handle(&None, start("a", "b", 5), &env(0));
    assert_eq!(step.reply, ReplyPlan::Park);
    let state = step.change.unwrap().state.unwrap();
    assert_eq!(state.phase, Some(Phase::CheckTarget));
    assert_eq!(step.effects.len(), 1);
    assert_eq!(step.effects[0].target.id.as_str(), "b");
    assert!(step.effects[0].idempotency_key.is_none());
}

#[test]
fn a_transfer_to_the_same_account_fails_at_once() {
    let step = Transfer::handle(&None, start("a", "a", 5), &env(0));
    assert!(matches!(&step.reply, ReplyPlan::Now(Err(r)) if r.code == ErrorCode::SameAccount));
    assert_eq!(step.change.unwrap().state.unwrap().status, Status::Failed);
}

#[test]
fn the_happy_path_debits_then_credits_then_completes() {
    let s0 = Transfer::handle(&None, start("a", "b", 5), &env(0))
        .change
        .unwrap()
        .state;
    let s1 = Transfer::on_effect(&s0, account_reply(json!({"currency": "EUR"})), &env(1));
    let key = s1.effects[0].idempotency_key.clone();
    assert_eq!(key.as_deref(), Some("transfer:t-1:debit"));
    let s1 = s1.change.unwrap().state;
    let s2 = Transfer::on_effect(&s1, account_reply(json!({})), &env(2));
    assert_eq!(
        s2.effects[0].idempotency_key.as_deref(),
        Some("transfer:t-1:credit")
    );
    let s2 = s2.change.unwrap().state;
    let done = Transfer::on_effect(&s2, account_reply(json!({})), &env(3));
    assert!(matches!(&done.settle, Some(Ok(r)) if r.body["status"] == json!("completed")));
    assert!(!Transfer::is_pending(&done.change.unwrap().state));
}

#[test]
fn a_refused_credit_is_refunded_before_the_transfer_fails() {
    let s = Some(TransferState {
        from: ActorId::parse("a").unwrap(),
        to: ActorId::parse("b").unwrap(),
        amount: Amount::new(5).unwrap(),
        status: Status::Pending,
        phase: Some(Phase::Credit {
            currency: Currency::USD,
        }),
        reason: None,
        created_at: Utc::now(),
    });
    let refused = Err(Rejection::new(ErrorCode::LimitExceeded, "full"));
    let step = Transfer::on_effect(&s, refused, &env(3));
    assert_eq!(
        step.effects[0].idempotency_key.as_deref(),
        Some("transfer:t-1:refund")
    );
    let s = step.change.unwrap().state;
    let done = Transfer::on_effect(&s, account_reply(json!({})), &env(4));
    assert!(matches!(&done.settle, Some(Err(r)) if r.code == ErrorCode::LimitExceeded));
}

#[test]
fn the_same_id_with_another_body_is_refused_and_the_same_body_replays() {
    let s = Transfer::handle(&None, start("a", "b", 5), &env(0))
        .change
        .unwrap()
        .state;
    let other = Transfer::handle(&s, start("a", "b", 6), &env(1));
    assert!(
        matches!(&other.reply, ReplyPlan::Now(Err(r)) if r.code == ErrorCode::IdempotencyKeyReused)
    );
    let same = Transfer::handle(&s, start("a", "b", 5), &env(1));
    assert!(same.replayed);
    assert_eq!(same.reply, ReplyPlan::Park);
}

#[test]
fn a_pending_transfer_resumes_its_current_leg() {
    let s = Transfer::handle(&None, start("a", "b", 5), &env(0))
        .change
        .unwrap()
        .state;
    assert!(Transfer::is_pending(&s));
    let effect = Transfer::resume(&s, &env(1)).expect("a pending transfer resumes");
    assert_eq!(effect.target.id.as_str(), "b");
}
