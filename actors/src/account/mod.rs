//! The account: a balance in one currency, an overdraft limit and a journal
//! of entries with gapless sequence numbers.
//!
//! The state kept in memory is a few scalars; entries are handed to the
//! runtime as part of each change and read back from the store, so an
//! account's footprint does not grow with its history.

mod legs;
mod messages;
mod views;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use legs::{fact_key, LegFact, Role};
pub use messages::{
    AmountPayload, Command, Empty, EntriesPayload, OpenPayload, DEFAULT_PAGE, MAX_PAGE,
};
pub use views::{AccountView, EntriesPage, Movement};

use crate::command::AnyCommand;
use crate::domain::{ActorId, Amount, Currency, ParseError};
use crate::kind::Kind;
use crate::payload::{payload, MessageSpec};
use crate::protocol::{Behavior, Effect, Env, ErrorCode, Outcome, Rejection, Reply, Step};

/// Credits are refused once a balance would pass this; it leaves room for
/// refunds (at most 10^15 each) to always succeed without overflowing `i64`.
pub const MAX_BALANCE: i64 = 4_000_000_000_000_000_000;

/// The account kind.
pub struct Account;

/// An opened account. `None` (the default state) is an account never opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    pub currency: Currency,
    pub overdraft_limit: u64,
    pub balance: i64,
    /// Sequence number of the newest entry; 0 before the first.
    pub last_seq: u64,
    /// Transfers this account debited whose transfer actor has not yet
    /// confirmed them settled. After a crash the account hands each one to
    /// its transfer actor again, so no debit is left without its credit or
    /// refund even if the transfer actor never persisted anything.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outbox: BTreeMap<ActorId, Outbound>,
}

/// A debited transfer in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound {
    pub to: ActorId,
    pub amount: Amount,
    /// The debit's entry.
    pub seq: u64,
}

/// What moved the balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Deposit,
    Withdrawal,
    TransferDebit,
    TransferCredit,
    Refund,
}

/// One line of the journal, as API.md describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// Gapless, from 1.
    pub seq: u64,
    pub kind: EntryKind,
    pub amount: u64,
    pub balance_after: i64,
    /// The transfer that made this entry, for transfer legs and refunds.
    #[schema(value_type = Option<String>)]
    pub transfer_id: Option<ActorId>,
    pub at: DateTime<Utc>,
}

impl Behavior for Account {
    const KIND: Kind = Kind::Account;
    type State = Option<AccountState>;
    type Command = Command;

    fn messages() -> Vec<MessageSpec> {
        let mut messages = vec![
            MessageSpec::new::<OpenPayload>(
                "open",
                "Open the account (idempotent for equal settings)",
            ),
            MessageSpec::new::<AmountPayload>("deposit", "Add money"),
            MessageSpec::new::<AmountPayload>(
                "withdraw",
                "Take money out, within the overdraft limit",
            ),
            MessageSpec::new::<Empty>("get", "The account's balance, settings and version"),
            MessageSpec::new::<EntriesPayload>("entries", "A page of the journal, oldest first"),
        ];
        if cfg!(feature = "fault-injection") {
            messages.push(MessageSpec::new::<Empty>(
                "crash",
                "Panic (test builds only)",
            ));
        }
        messages
    }

    fn parse(message: &str, body: Value) -> Result<Option<Command>, ParseError> {
        Ok(Some(match message {
            "open" => payload::<OpenPayload>(body)?.into_command()?,
            "deposit" => Command::Deposit {
                amount: payload::<AmountPayload>(body)?.amount,
            },
            "withdraw" => Command::Withdraw {
                amount: payload::<AmountPayload>(body)?.amount,
            },
            "get" => {
                payload::<Empty>(body)?;
                Command::Get
            }
            "entries" => payload::<EntriesPayload>(body)?.into_command()?,
            #[cfg(feature = "fault-injection")]
            "crash" => Command::Crash,
            _ => return Ok(None),
        }))
    }

    fn handle(state: &Self::State, command: Command, env: &Env) -> Step<Self::State> {
        let Some(account) = state else {
            return match command {
                Command::Open {
                    currency,
                    overdraft_limit,
                } => {
                    let opened = AccountState {
                        currency,
                        overdraft_limit,
                        balance: 0,
                        last_seq: 0,
                        outbox: BTreeMap::new(),
                    };
                    let view = view(&opened, env, env.version + 1);
                    Step::reply(Ok(Reply::created(view))).with_change(Some(opened), Vec::new())
                }
                Command::TransferDebit { .. } | Command::TransferCredit { .. } => Step::reject(
                    ErrorCode::AccountNotFound,
                    format!("account {} does not exist", env.id),
                ),
                // Nothing was ever debited here: nothing to give back or settle.
                Command::Refund { .. } | Command::Settle { .. } => {
                    Step::reply(Ok(Reply::ok(json!({}))))
                }
                _ => Step::reject(
                    ErrorCode::NotFound,
                    format!("account {} does not exist", env.id),
                ),
            };
        };
        match command {
            Command::Open {
                currency,
                overdraft_limit,
            } => {
                if account.currency == currency && account.overdraft_limit == overdraft_limit {
                    Step::reply(Ok(Reply::ok(view(account, env, env.version))))
                } else {
                    Step::reject(
                        ErrorCode::AlreadyExists,
                        format!("account {} already exists with other settings", env.id),
                    )
                }
            }
            Command::Get => Step::reply(Ok(Reply::ok(view(account, env, env.version)))),
            Command::Entries { after, limit } => Step {
                reply: crate::protocol::ReplyPlan::Journal { after, limit },
                ..Step::reply(Ok(Reply::ok(Value::Null)))
            },
            Command::Deposit { amount } => credit(account, env, amount, EntryKind::Deposit, None),
            Command::Withdraw { amount } => {
                debit(account, env, amount, EntryKind::Withdrawal, None)
            }
            Command::TransferDebit {
                transfer,
                to,
                amount,
            } => legs::debit(account, env, transfer, to, amount),
            Command::TransferCredit {
                transfer,
                from,
                amount,
                currency,
            } => legs::credit(account, env, transfer, from, amount, currency),
            Command::Refund {
                transfer,
                amount,
                reason,
            } => legs::refund(account, env, transfer, amount, reason),
            Command::Settle { transfer } => legs::settle(account, transfer),
            #[cfg(feature = "fault-injection")]
            Command::Crash => panic!("fault injection: account {} was asked to crash", env.id),
        }
    }

    fn message_name(command: &Command) -> &'static str {
        command.name()
    }

    fn fact_key(command: &Command) -> Option<String> {
        match command {
            Command::TransferDebit { transfer, .. }
            | Command::TransferCredit { transfer, .. }
            | Command::Refund { transfer, .. } => Some(fact_key(transfer)),
            _ => None,
        }
    }

    fn on_effect(state: &Self::State, tag: &str, outcome: Outcome, env: &Env) -> Step<Self::State> {
        match state {
            Some(account) => legs::on_adopt(account, env, tag, outcome),
            None => Step::parked(),
        }
    }

    fn resume(state: &Self::State, env: &Env) -> Vec<Effect> {
        state
            .as_ref()
            .map(|account| legs::resume(account, env))
            .unwrap_or_default()
    }

    fn is_pending(state: &Self::State) -> bool {
        state.as_ref().is_some_and(|a| !a.outbox.is_empty())
    }

    fn is_resident(state: &Self::State) -> bool {
        state.is_some()
    }

    fn into_any(command: Command) -> AnyCommand {
        AnyCommand::Account(command)
    }

    fn from_any(command: AnyCommand) -> Option<Command> {
        match command {
            AnyCommand::Account(c) => Some(c),
            _ => None,
        }
    }
}

/// The account as API.md shows it.
fn view(account: &AccountState, env: &Env, version: u64) -> Value {
    views::body(&AccountView {
        id: env.id.clone(),
        currency: account.currency,
        balance: account.balance,
        overdraft_limit: account.overdraft_limit,
        version,
    })
}

/// The balance after putting `amount` in, or the refusal. The transfers
/// in the outbox count as if already refunded, so that refunds, which are
/// never refused, can never overflow.
fn credited(account: &AccountState, env: &Env, amount: Amount) -> Result<i64, Rejection> {
    let refundable = account
        .outbox
        .values()
        .fold(0i64, |sum, o| sum.saturating_add(o.amount.signed()));
    account
        .balance
        .checked_add(amount.signed())
        .filter(|b| b.saturating_add(refundable) <= MAX_BALANCE)
        .ok_or_else(|| {
            Rejection::new(
                ErrorCode::LimitExceeded,
                format!(
                    "the balance of account {} would exceed {MAX_BALANCE}",
                    env.id
                ),
            )
        })
}

/// The balance after taking `amount` out, or the refusal.
fn debited(account: &AccountState, env: &Env, amount: Amount) -> Result<i64, Rejection> {
    let floor = -i64::try_from(account.overdraft_limit).unwrap_or(i64::MAX);
    account
        .balance
        .checked_sub(amount.signed())
        .filter(|b| *b >= floor)
        .ok_or_else(|| {
            Rejection::new(
                ErrorCode::InsufficientFunds,
                format!(
                    "account {} has a balance of {} and an overdraft limit of {}: {} cannot be taken out",
                    env.id,
                    account.balance,
                    account.overdraft_limit,
                    amount.get()
                ),
            )
        })
}

fn credit(
    account: &AccountState,
    env: &Env,
    amount: Amount,
    kind: EntryKind,
    transfer: Option<ActorId>,
) -> Step<Option<AccountState>> {
    match credited(account, env, amount) {
        Ok(balance) => apply(account, env, amount, kind, transfer, balance),
        Err(refusal) => Step::reply(Err(refusal)),
    }
}

fn debit(
    account: &AccountState,
    env: &Env,
    amount: Amount,
    kind: EntryKind,
    transfer: Option<ActorId>,
) -> Step<Option<AccountState>> {
    match debited(account, env, amount) {
        Ok(balance) => apply(account, env, amount, kind, transfer, balance),
        Err(refusal) => Step::reply(Err(refusal)),
    }
}

/// Moves the balance, appends the entry and answers with both.
fn apply(
    account: &AccountState,
    env: &Env,
    amount: Amount,
    kind: EntryKind,
    transfer_id: Option<ActorId>,
    balance: i64,
) -> Step<Option<AccountState>> {
    let (next, entry) = moved(account, env, amount, kind, transfer_id, balance);
    let seq = entry.seq;
    let movement = Movement {
        entry,
        balance,
        version: env.version + 1,
    };
    let body = views::body(&movement);
    let entry = views::body(&movement.entry);
    Step::reply(Ok(Reply::ok(body))).with_change(Some(next), vec![(seq, entry)])
}

fn next_seq(account: &AccountState) -> u64 {
    account.last_seq + 1
}

/// The account after one movement, and the movement's journal entry.
fn moved(
    account: &AccountState,
    env: &Env,
    amount: Amount,
    kind: EntryKind,
    transfer_id: Option<ActorId>,
    balance: i64,
) -> (AccountState, Entry) {
    let seq = next_seq(account);
    let entry = Entry {
        seq,
        kind,
        amount: amount.get(),
        balance_after: balance,
        transfer_id,
        at: env.now,
    };
    let next = AccountState {
        balance,
        last_seq: seq,
        ..account.clone()
    };
    (next, entry)
}

#[cfg(test)]
mod tests;
