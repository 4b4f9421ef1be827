use chrono::Utc;
use serde_json::json;

use super::*;
use crate::protocol::ReplyPlan;

fn env(version: u64) -> Env {
    Env::new(ActorId::parse("t-1").unwrap(), Utc::now(), version)
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

fn pending(step: &Step<Option<TransferState>>) -> Option<TransferState> {
    step.change
        .as_ref()
        .map(|c| c.state.clone())
        .or_else(|| step.memo.clone())
        .flatten()
}

#[test]
fn start_records_pending_and_asks_for_the_debit_in_the_same_step() {
    let step = Transfer::handle(&None, start("a", "b", 5), &env(0));
    assert_eq!(step.reply, ReplyPlan::Park);
    let state = step.change.unwrap().state.unwrap();
    assert_eq!(state.phase, Some(Phase::Debit));
    assert_eq!(step.effects.len(), 1);
    assert_eq!(step.effects[0].target.id.as_str(), "a");
    assert_eq!(step.effects[0].tag, "debit");
}

#[test]
fn a_transfer_to_the_same_account_fails_at_once() {
    let step = Transfer::handle(&None, start("a", "a", 5), &env(0));
    assert!(matches!(&step.reply, ReplyPlan::Now(Err(r)) if r.code == ErrorCode::SameAccount));
    assert_eq!(step.change.unwrap().state.unwrap().status, Status::Failed);
}

#[test]
fn the_happy_path_debits_credits_and_answers_before_its_own_commit() {
    let s0 = pending(&Transfer::handle(&None, start("a", "b", 5), &env(0)));
    let s1 = Transfer::on_effect(
        &s0,
        "debit",
        account_reply(json!({"currency": "EUR"})),
        &env(1),
    );
    assert!(s1.change.is_none(), "between legs nothing is written");
    assert_eq!(s1.effects[0].tag, "credit");
    assert_eq!(s1.effects[0].target.id.as_str(), "b");
    let s1 = pending(&s1);
    let done = Transfer::on_effect(&s1, "credit", account_reply(json!({})), &env(1));
    assert!(
        matches!(&done.settle, Some(s) if s.early && matches!(&s.outcome, Ok(r) if r.body["status"] == json!("completed")))
    );
    assert_eq!(
        done.effects[0].tag, "settle",
        "the source's outbox is cleared"
    );
    assert!(!Transfer::is_pending(&done.change.unwrap().state));
}

#[test]
fn a_refused_credit_is_refunded_and_the_failure_waits_for_its_commit() {
    let s0 = pending(&Transfer::handle(&None, start("a", "b", 5), &env(0)));
    let s1 = pending(&Transfer::on_effect(
        &s0,
        "debit",
        account_reply(json!({"currency": "USD"})),
        &env(1),
    ));
    let refused = Err(Rejection::new(ErrorCode::LimitExceeded, "full"));
    let step = Transfer::on_effect(&s1, "credit", refused, &env(1));
    assert_eq!(step.effects[0].tag, "refund");
    let s2 = pending(&step);
    let done = Transfer::on_effect(&s2, "refund", account_reply(json!({})), &env(1));
    assert!(
        matches!(&done.settle, Some(s) if !s.early && matches!(&s.outcome, Err(r) if r.code == ErrorCode::LimitExceeded))
    );
}

#[test]
fn answers_to_another_phase_are_ignored() {
    let s0 = pending(&Transfer::handle(&None, start("a", "b", 5), &env(0)));
    let s1 = pending(&Transfer::on_effect(
        &s0,
        "debit",
        account_reply(json!({"currency": "USD"})),
        &env(1),
    ));
    // A replayed debit answer arriving while the credit is in flight.
    let stale = Transfer::on_effect(
        &s1,
        "debit",
        account_reply(json!({"currency": "USD"})),
        &env(1),
    );
    assert!(stale.change.is_none() && stale.effects.is_empty() && stale.settle.is_none());
    let stale = Transfer::on_effect(&s1, "settle", account_reply(json!({})), &env(1));
    assert!(stale.change.is_none() && stale.effects.is_empty() && stale.settle.is_none());
}

#[test]
fn the_same_id_with_another_body_is_refused_and_the_same_body_replays() {
    let s = pending(&Transfer::handle(&None, start("a", "b", 5), &env(0)));
    let other = Transfer::handle(&s, start("a", "b", 6), &env(1));
    assert!(
        matches!(&other.reply, ReplyPlan::Now(Err(r)) if r.code == ErrorCode::IdempotencyKeyReused)
    );
    let same = Transfer::handle(&s, start("a", "b", 5), &env(1));
    assert!(same.replayed);
    assert_eq!(same.reply, ReplyPlan::Park);
}

#[test]
fn a_pending_transfer_resumes_with_the_debit_which_replays() {
    let s = pending(&Transfer::handle(&None, start("a", "b", 5), &env(0)));
    assert!(Transfer::is_pending(&s));
    let effects = Transfer::resume(&s, &env(1));
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].target.id.as_str(), "a");
    assert_eq!(effects[0].tag, "debit");
}

#[test]
fn an_orphaned_debit_is_adopted_once_and_another_body_is_refused() {
    let adopt = |amount| Command::Adopt {
        from: ActorId::parse("a").unwrap(),
        to: ActorId::parse("b").unwrap(),
        amount: Amount::new(amount).unwrap(),
    };
    let step = Transfer::handle(&None, adopt(5), &env(0));
    assert!(matches!(&step.reply, ReplyPlan::Now(Ok(r)) if r.body["status"] == json!("pending")));
    assert_eq!(step.effects[0].tag, "debit");
    let s = pending(&step);
    let again = Transfer::handle(&s, adopt(5), &env(1));
    assert!(again.change.is_none() && again.effects.is_empty());
    let other = Transfer::handle(&s, adopt(6), &env(1));
    assert!(
        matches!(&other.reply, ReplyPlan::Now(Err(r)) if r.code == ErrorCode::IdempotencyKeyReused)
    );
}

#[test]
fn settled_and_unknown_transfers_are_not_kept_in_memory() {
    assert!(!Transfer::is_resident(&None));
    let s = pending(&Transfer::handle(&None, start("a", "b", 5), &env(0)));
    assert!(Transfer::is_resident(&s));
    let failed = pending(&Transfer::on_effect(
        &s,
        "debit",
        Err(Rejection::new(ErrorCode::InsufficientFunds, "no")),
        &env(1),
    ));
    assert!(!Transfer::is_resident(&failed));
}

#[test]
fn a_legacy_transfer_past_its_first_leg_is_never_resumed() {
    let legacy: TransferState = serde_json::from_value(json!({
        "from": "a", "to": "b", "amount": 5, "status": "pending",
        "phase": {"phase": "credit", "currency": "USD"}, "reason": null,
        "created_at": "2026-01-01T00:00:00Z"
    }))
    .unwrap();
    assert!(legacy.is_legacy_in_flight());
    assert!(Transfer::resume(&Some(legacy), &env(1)).is_empty());
    let fresh = pending(&Transfer::handle(&None, start("a", "b", 5), &env(0))).unwrap();
    assert!(!fresh.is_legacy_in_flight());
}

#[test]
fn records_of_the_previous_saga_still_decode() {
    let old_debit: TransferState = serde_json::from_value(json!({
        "from": "a", "to": "b", "amount": 5, "status": "pending",
        "phase": {"phase": "debit", "currency": "EUR"}, "reason": null,
        "created_at": "2026-01-01T00:00:00Z"
    }))
    .unwrap();
    assert!(old_debit.is_legacy_in_flight());
}
