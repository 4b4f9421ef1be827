use chrono::Utc;
use serde_json::json;

use super::*;
use crate::protocol::{ReplyPlan, Status};

fn env(version: u64) -> Env {
    Env {
        id: ActorId::parse("acc-1").unwrap(),
        now: Utc::now(),
        version,
    }
}

fn opened(balance: i64, overdraft_limit: u64) -> Option<AccountState> {
    Some(AccountState {
        currency: Currency::USD,
        overdraft_limit,
        balance,
        last_seq: 3,
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
        amount: amount(1),
        currency: Currency::USD,
    };
    assert_eq!(
        rejection_code(&Account::handle(&None, leg, &env(0))),
        Some(ErrorCode::AccountNotFound)
    );
}

#[test]
fn transfer_legs_check_the_currency() {
    let leg = Command::TransferDebit {
        transfer: ActorId::parse("t").unwrap(),
        amount: amount(1),
        currency: Currency::parse("EUR").unwrap(),
    };
    assert_eq!(
        rejection_code(&Account::handle(&opened(10, 0), leg, &env(1))),
        Some(ErrorCode::CurrencyMismatch)
    );
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
