use chrono::Utc;
use serde_json::json;

use super::*;
use crate::protocol::{Change, ReplyPlan, Status};

fn env(version: u64) -> Env {
    Env::new(ActorId::parse("acc-1").unwrap(), Utc::now(), version)
}

fn with_fact(version: u64, fact: Option<&Change<Option<AccountState>>>) -> Env {
    let mut env = env(version);
    env.fact = fact.and_then(|c| c.facts.first()).map(|(_, v)| v.clone());
    env
}

fn id(s: &str) -> ActorId {
    ActorId::parse(s).unwrap()
}

fn opened(balance: i64, overdraft_limit: u64) -> Option<AccountState> {
    Some(AccountState {
        currency: Currency::USD,
        overdraft_limit,
        balance,
        last_seq: 3,
        outbox: BTreeMap::new(),
    })
}

fn amount(v: u64) -> Amount {
    Amount::new(v).unwrap()
}

fn rejection_code(step: &Step<Option<AccountState>>) -> Option<ErrorCode> {
    match &step.reply {
        ReplyPlan::Now(Err(r)) => Some(r.code),
        _ => None,
    }
}

#[test]
fn open_creates_then_confirms_then_refuses_other_settings() {
    let open = |c: &str, o| Command::Open {
        currency: Currency::parse(c).unwrap(),
        overdraft_limit: o,
    };
    let step = Account::handle(&None, open("EUR", 5), &env(0));
    assert!(matches!(&step.reply, ReplyPlan::Now(Ok(r)) if r.status == Status::Created));
    let state = step.change.unwrap().state;

    let again = Account::handle(&state, open("EUR", 5), &env(1));
    assert!(matches!(&again.reply, ReplyPlan::Now(Ok(r)) if r.status == Status::Ok));
    assert!(again.change.is_none());

    let other = Account::handle(&state, open("USD", 5), &env(1));
    assert_eq!(rejection_code(&other), Some(ErrorCode::AlreadyExists));
}

#[test]
fn deposit_appends_an_entry_with_the_next_sequence_number() {
    let step = Account::handle(
        &opened(10, 0),
        Command::Deposit { amount: amount(5) },
        &env(4),
    );
    let change = step.change.expect("a deposit changes the state");
    assert_eq!(
        change.state.as_ref().map(|a| (a.balance, a.last_seq)),
        Some((15, 4))
    );
    assert_eq!(change.entries.len(), 1);
    assert_eq!(change.entries[0].0, 4);
    assert_eq!(change.entries[0].1["kind"], json!("deposit"));
    assert_eq!(change.entries[0].1["balance_after"], json!(15));
    assert!(matches!(&step.reply, ReplyPlan::Now(Ok(r)) if r.body["version"] == json!(5)));
}

#[test]
fn withdrawal_may_use_the_overdraft_but_not_more() {
    let within = Account::handle(
        &opened(10, 5),
        Command::Withdraw { amount: amount(15) },
        &env(1),
    );
    assert_eq!(within.change.unwrap().state.unwrap().balance, -5);

    let beyond = Account::handle(
        &opened(10, 5),
        Command::Withdraw { amount: amount(16) },
        &env(1),
    );
    assert_eq!(rejection_code(&beyond), Some(ErrorCode::InsufficientFunds));
    assert!(beyond.change.is_none());
}

#[test]
fn credit_past_the_balance_limit_is_refused() {
    let step = Account::handle(
        &opened(MAX_BALANCE, 0),
        Command::Deposit { amount: amount(1) },
        &env(1),
    );
    assert_eq!(rejection_code(&step), Some(ErrorCode::LimitExceeded));
    assert!(step.change.is_none());
}

#[test]
fn unopened_accounts_are_not_found_and_transfer_legs_say_account_not_found() {
    assert_eq!(
        rejection_code(&Account::handle(&None, Command::Get, &env(0))),
        Some(ErrorCode::NotFound)
    );
    let leg = Command::TransferCredit {
        transfer: ActorId::parse("t").unwrap(),
        from: id("a"),
        amount: amount(1),
        currency: Currency::USD,
    };
    assert_eq!(
        rejection_code(&Account::handle(&None, leg, &env(0))),
        Some(ErrorCode::AccountNotFound)
    );
}

#[test]
fn credits_check_the_currency() {
    let leg = Command::TransferCredit {
        transfer: id("t"),
        from: id("a"),
        amount: amount(1),
        currency: Currency::parse("EUR").unwrap(),
    };
    assert_eq!(
        rejection_code(&Account::handle(&opened(10, 0), leg, &env(1))),
        Some(ErrorCode::CurrencyMismatch)
    );
}

fn debit(to: &str, v: u64) -> Command {
    Command::TransferDebit {
        transfer: id("t"),
        to: id(to),
        amount: amount(v),
    }
}

#[test]
fn a_debit_records_its_fact_and_outbox_and_a_repeat_moves_nothing() {
    let first = Account::handle(&opened(10, 0), debit("b", 4), &env(1));
    let change = first.change.clone().expect("a change");
    let state = change.state.clone().unwrap();
    assert_eq!(state.balance, 6);
    assert_eq!(state.outbox[&id("t")].to, id("b"));
    assert_eq!(change.facts[0].0, "transfer:t");
    assert!(Account::is_pending(&change.state));
    // The same leg again, with the fact the runtime reads back.
    let again = Account::handle(&change.state, debit("b", 4), &with_fact(2, Some(&change)));
    assert!(again.change.is_none(), "a repeated debit moves nothing");
    assert_eq!(again.reply, first.reply);
    // Another body under the same transfer id is refused.
    let other = Account::handle(&change.state, debit("c", 4), &with_fact(2, Some(&change)));
    assert_eq!(
        rejection_code(&other),
        Some(ErrorCode::IdempotencyKeyReused)
    );
}

#[test]
fn a_refund_gives_back_once_and_only_what_was_debited() {
    let debited = Account::handle(&opened(10, 0), debit("b", 4), &env(1))
        .change
        .unwrap();
    let refund = || Command::Refund {
        transfer: id("t"),
        amount: amount(4),
        reason: ErrorCode::CurrencyMismatch,
    };
    let refunded = Account::handle(&debited.state, refund(), &with_fact(2, Some(&debited)))
        .change
        .expect("the refund moves money");
    let state = refunded.state.clone().unwrap();
    assert_eq!((state.balance, state.outbox.len()), (10, 0));
    let again = Account::handle(&refunded.state, refund(), &with_fact(3, Some(&refunded)));
    assert!(again.change.is_none(), "a second refund moves nothing");
    // A debit asked again after its refund answers with the refund's reason.
    let late = Account::handle(
        &refunded.state,
        debit("b", 4),
        &with_fact(3, Some(&refunded)),
    );
    assert_eq!(rejection_code(&late), Some(ErrorCode::CurrencyMismatch));
    // A refund for a transfer never debited here creates nothing.
    let unknown = Account::handle(&opened(10, 0), refund(), &env(1));
    assert!(unknown.change.is_none());
}

#[test]
fn after_a_restart_the_outbox_is_handed_back_and_settles() {
    let debited = Account::handle(&opened(10, 0), debit("b", 4), &env(1))
        .change
        .unwrap()
        .state;
    let effects = Account::resume(&debited, &env(2));
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].tag, "adopt:t");
    assert_eq!(effects[0].target.kind, Kind::Transfer);
    // The transfer says it is settled: the outbox empties.
    let done = Account::on_effect(
        &debited,
        "adopt:t",
        Ok(Reply::ok(json!({"status": "completed"}))),
        &env(2),
    );
    let state = done.lazy.unwrap().unwrap();
    assert!(state.outbox.is_empty());
    assert_eq!(state.balance, 6);
    // The transfer failed without refunding here (a debit delivered after
    // the transfer had failed on a refusal): the money comes back.
    let late = Account::on_effect(
        &debited,
        "adopt:t",
        Ok(Reply::ok(
            json!({"status": "failed", "reason": "insufficient_funds"}),
        )),
        &env(2),
    );
    let state = late.change.unwrap().state.unwrap();
    assert_eq!((state.balance, state.outbox.len()), (10, 0));
    // The id now names another transfer: the money comes back.
    let orphan = Account::on_effect(
        &debited,
        "adopt:t",
        Err(crate::protocol::Rejection::new(
            ErrorCode::IdempotencyKeyReused,
            "x",
        )),
        &env(2),
    );
    let state = orphan.change.unwrap().state.unwrap();
    assert_eq!((state.balance, state.outbox.len()), (10, 0));
}

#[test]
fn payloads_are_parsed_strictly() {
    assert!(Account::parse("deposit", json!({"amount": 1}))
        .unwrap()
        .is_some());
    assert!(Account::parse("deposit", json!({"amount": 0})).is_err());
    assert!(Account::parse("deposit", json!({"amount": 1.5})).is_err());
    assert!(Account::parse("deposit", json!({"amount": "1"})).is_err());
    assert!(Account::parse("deposit", json!({"amount": 1, "x": 1})).is_err());
    assert!(Account::parse("open", json!({"currency": "eur"})).is_err());
    assert!(Account::parse("open", json!(null)).unwrap().is_some());
    assert!(Account::parse("entries", json!({"limit": 1001})).is_err());
    assert!(Account::parse("transfer_debit", json!({}))
        .unwrap()
        .is_none());
}

#[test]
fn credits_leave_room_for_every_refund_the_outbox_may_bring() {
    let debited = Account::handle(&opened(MAX_BALANCE - 10, 0), debit("b", 1_000), &env(1))
        .change
        .unwrap()
        .state;
    // The balance is 1,000 lower, but that 1,000 may come back as a refund.
    let deposit = Command::Deposit { amount: amount(20) };
    assert_eq!(
        rejection_code(&Account::handle(&debited, deposit, &env(2))),
        Some(ErrorCode::LimitExceeded)
    );
}
