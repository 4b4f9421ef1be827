//! The account: a balance in one currency, an overdraft limit and a journal
//! of entries with gapless sequence numbers.
//!
//! The state kept in memory is a few scalars; entries are handed to the
//! runtime as part of each change and read back from the store, so an
//! account's footprint does not grow with its history.

mod messages;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use messages::{
    AmountPayload, Command, Empty, EntriesPayload, OpenPayload, DEFAULT_PAGE, MAX_PAGE,
};

use crate::domain::{ActorId, Amount, Currency, ParseError};
use crate::kinds::{payload, AnyCommand, MessageSpec};
use crate::protocol::{Behavior, Env, ErrorCode, Reply, Step};

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
}

/// What moved the balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Deposit,
    Withdrawal,
    TransferDebit,
    TransferCredit,
    Refund,
}

/// One line of the journal, as API.md describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub kind: EntryKind,
    pub amount: u64,
    pub balance_after: i64,
    pub transfer_id: Option<ActorId>,
    pub at: DateTime<Utc>,
}

impl Behavior for Account {
    const KIND: &'static str = "account";
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
                    };
                    let view = view(&opened, env, env.version + 1);
                    Step::reply(Ok(Reply::created(view))).with_change(Some(opened), Vec::new())
                }
                Command::TransferDebit { .. }
                | Command::TransferCredit { .. }
                | Command::Refund { .. } => Step::reject(
                    ErrorCode::AccountNotFound,
                    format!("account {} does not exist", env.id),
                ),
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
                amount,
                currency,
            } => {
                if account.currency != currency {
                    return currency_mismatch(account, currency);
                }
                debit(
                    account,
                    env,
                    amount,
                    EntryKind::TransferDebit,
                    Some(transfer),
                )
            }
            Command::TransferCredit {
                transfer,
                amount,
                currency,
            } => {
                if account.currency != currency {
                    return currency_mismatch(account, currency);
                }
                credit(
                    account,
                    env,
                    amount,
                    EntryKind::TransferCredit,
                    Some(transfer),
                )
            }
            Command::Refund { transfer, amount } => {
                // Never refused for the limit: the money left this account
                // moments ago, and MAX_BALANCE leaves room for it.
                let balance = account.balance.saturating_add(amount.signed());
                apply(
                    account,
                    env,
                    amount,
                    EntryKind::Refund,
                    Some(transfer),
                    balance,
                )
            }
            #[cfg(feature = "fault-injection")]
            Command::Crash => panic!("fault injection: account {} was asked to crash", env.id),
        }
    }

    fn message_name(command: &Command) -> &'static str {
        command.name()
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
    json!({
        "id": env.id,
        "currency": account.currency,
        "balance": account.balance,
        "overdraft_limit": account.overdraft_limit,
        "version": version,
    })
}

fn credit(
    account: &AccountState,
    env: &Env,
    amount: Amount,
    kind: EntryKind,
    transfer: Option<ActorId>,
) -> Step<Option<AccountState>> {
    match account
        .balance
        .checked_add(amount.signed())
        .filter(|b| *b <= MAX_BALANCE)
    {
        Some(balance) => apply(account, env, amount, kind, transfer, balance),
        None => Step::reject(
            ErrorCode::LimitExceeded,
            format!(
                "the balance of account {} would exceed {MAX_BALANCE}",
                env.id
            ),
        ),
    }
}

fn debit(
    account: &AccountState,
    env: &Env,
    amount: Amount,
    kind: EntryKind,
    transfer: Option<ActorId>,
) -> Step<Option<AccountState>> {
    let floor = -i64::try_from(account.overdraft_limit).unwrap_or(i64::MAX);
    match account.balance.checked_sub(amount.signed()).filter(|b| *b >= floor) {
        Some(balance) => apply(account, env, amount, kind, transfer, balance),
        None => Step::reject(
            ErrorCode::InsufficientFunds,
            format!(
                "account {} has a balance of {} and an overdraft limit of {}: {} cannot be taken out",
                env.id,
                account.balance,
                account.overdraft_limit,
                amount.get()
            ),
        ),
    }
}

fn currency_mismatch(account: &AccountState, asked: Currency) -> Step<Option<AccountState>> {
    Step::reject(
        ErrorCode::CurrencyMismatch,
        format!("the account holds {}, not {asked}", account.currency),
    )
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
    let seq = account.last_seq + 1;
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
    let entry = serde_json::to_value(&entry).unwrap_or(Value::Null);
    let body = json!({ "entry": entry, "balance": balance, "version": env.version + 1 });
    Step::reply(Ok(Reply::ok(body))).with_change(Some(next), vec![(seq, entry)])
}

#[cfg(test)]
mod tests;
