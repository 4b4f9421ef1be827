//! Transfer legs at an account: the debit, the credit, the refund and the
//! settlement of one transfer, each applied at most once.
//!
//! A leg that moves money writes a [`LegFact`] under `transfer:{id}` in the
//! same commit as the movement. The runtime reads that fact before it hands
//! the account any later leg of the same transfer ([`Env::fact`]), so a leg
//! delivered twice, late, or after any outage answers as the first one did
//! and moves nothing. Facts never expire and live apart from clients'
//! idempotency keys: no request can forge one or collide with one.
//!
//! The debit also puts the transfer in the account's outbox. The transfer
//! actor takes it out ([`settle`]) once the transfer is settled; after a
//! crash the account hands every transfer still in its outbox back to its
//! transfer actor ([`resume`]), which finishes or refunds it.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{credited, debited, moved, next_seq, views, AccountState, EntryKind, Outbound};
use crate::command::AnyCommand;
use crate::domain::{ActorId, Amount, Currency};
use crate::protocol::{Address, Behavior, Effect, Env, ErrorCode, Outcome, Rejection, Reply, Step};
use crate::transfer::{self, Transfer};

type AccountStep = Step<Option<AccountState>>;

/// The part an account played in a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Debit,
    Credit,
}

/// What an account keeps about the one leg of a transfer it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegFact {
    pub role: Role,
    /// The other account of the transfer.
    pub counterparty: ActorId,
    pub amount: Amount,
    pub currency: Currency,
    /// The entry the leg appended.
    pub seq: u64,
    /// For a debit given back: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded: Option<ErrorCode>,
}

impl LegFact {
    fn answer(&self) -> Outcome {
        Ok(Reply::ok(
            json!({ "currency": self.currency, "seq": self.seq }),
        ))
    }

    fn to_value(&self) -> Value {
        // Plain data: serialising it cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The key of the fact an account keeps about `transfer`.
pub fn fact_key(transfer: &ActorId) -> String {
    format!("transfer:{transfer}")
}

fn read_fact(env: &Env) -> Result<Option<LegFact>, Rejection> {
    env.fact
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| {
            Rejection::new(
                ErrorCode::Internal,
                format!("unreadable transfer record at account {}: {e}", env.id),
            )
        })
}

fn reused(env: &Env, transfer: &ActorId) -> AccountStep {
    Step::reject(
        ErrorCode::IdempotencyKeyReused,
        format!(
            "transfer {transfer} was applied to account {} with another body",
            env.id
        ),
    )
}

/// Takes `amount` out for `transfer` and puts the transfer in the outbox.
pub fn debit(
    account: &AccountState,
    env: &Env,
    transfer: ActorId,
    to: ActorId,
    amount: Amount,
) -> AccountStep {
    match read_fact(env) {
        Err(refusal) => Step::reply(Err(refusal)),
        Ok(Some(fact)) => {
            if fact.role != Role::Debit || fact.counterparty != to || fact.amount != amount {
                return reused(env, &transfer);
            }
            match fact.refunded {
                None => Step::reply(fact.answer()).replayed(),
                Some(reason) => Step::reject(
                    reason,
                    format!("transfer {transfer} was refunded to account {}", env.id),
                ),
            }
        }
        Ok(None) => match debited(account, env, amount) {
            Err(refusal) => Step::reply(Err(refusal)),
            Ok(balance) => {
                let seq = next_seq(account);
                let kind = EntryKind::TransferDebit;
                let (mut next, entry) =
                    moved(account, env, amount, kind, Some(transfer.clone()), balance);
                let fact = LegFact {
                    role: Role::Debit,
                    counterparty: to.clone(),
                    amount,
                    currency: account.currency,
                    seq,
                    refunded: None,
                };
                next.outbox
                    .insert(transfer.clone(), Outbound { to, amount, seq });
                Step::reply(fact.answer())
                    .with_change(Some(next), vec![(seq, views::body(&entry))])
                    .with_fact(fact_key(&transfer), fact.to_value())
            }
        },
    }
}

/// Puts `amount` in for `transfer`.
pub fn credit(
    account: &AccountState,
    env: &Env,
    transfer: ActorId,
    from: ActorId,
    amount: Amount,
    currency: Currency,
) -> AccountStep {
    match read_fact(env) {
        Err(refusal) => Step::reply(Err(refusal)),
        Ok(Some(fact)) => {
            if fact.role != Role::Credit || fact.counterparty != from || fact.amount != amount {
                return reused(env, &transfer);
            }
            Step::reply(fact.answer()).replayed()
        }
        Ok(None) if account.currency != currency => Step::reject(
            ErrorCode::CurrencyMismatch,
            format!("the account holds {}, not {currency}", account.currency),
        ),
        Ok(None) => match credited(account, env, amount) {
            Err(refusal) => Step::reply(Err(refusal)),
            Ok(balance) => {
                let seq = next_seq(account);
                let kind = EntryKind::TransferCredit;
                let (next, entry) =
                    moved(account, env, amount, kind, Some(transfer.clone()), balance);
                let fact = LegFact {
                    role: Role::Credit,
                    counterparty: from,
                    amount,
                    currency,
                    seq,
                    refunded: None,
                };
                Step::reply(fact.answer())
                    .with_change(Some(next), vec![(seq, views::body(&entry))])
                    .with_fact(fact_key(&transfer), fact.to_value())
            }
        },
    }
}

/// Gives back what this account's debit of `transfer` took out: once, and
/// only if that debit happened (anything else answers `ok` and moves
/// nothing, so a refund can never create money).
pub fn refund(
    account: &AccountState,
    env: &Env,
    transfer: ActorId,
    amount: Amount,
    reason: ErrorCode,
) -> AccountStep {
    match read_fact(env) {
        Err(refusal) => Step::reply(Err(refusal)),
        Ok(Some(fact)) if fact.role == Role::Debit && fact.amount == amount => {
            if fact.refunded.is_some() {
                return Step::reply(Ok(Reply::ok(json!({ "refunded": true })))).replayed();
            }
            give_back(account, env, &transfer, fact, reason)
                .answering(Ok(Reply::ok(json!({ "refunded": true }))))
        }
        Ok(_) => Step::reply(Ok(Reply::ok(json!({ "refunded": false })))),
    }
}

/// The refund entry, the fact marked refunded and the outbox cleared.
fn give_back(
    account: &AccountState,
    env: &Env,
    transfer: &ActorId,
    mut fact: LegFact,
    reason: ErrorCode,
) -> AccountStep {
    // Never refused for the limit: the money left this account before, and
    // MAX_BALANCE leaves room for it.
    let balance = account.balance.saturating_add(fact.amount.signed());
    let seq = next_seq(account);
    let kind = EntryKind::Refund;
    let (mut next, entry) = moved(
        account,
        env,
        fact.amount,
        kind,
        Some(transfer.clone()),
        balance,
    );
    next.outbox.remove(transfer);
    fact.refunded = Some(reason);
    Step::parked()
        .with_change(Some(next), vec![(seq, views::body(&entry))])
        .with_fact(fact_key(transfer), fact.to_value())
}

/// The transfer actor says `transfer` is settled: it leaves the outbox.
/// Lazily: written with the account's next commit, since a settle lost in
/// a crash is redone by handing the transfer back after the restart.
pub fn settle(account: &AccountState, transfer: ActorId) -> AccountStep {
    let done = Step::reply(Ok(Reply::ok(json!({}))));
    if !account.outbox.contains_key(&transfer) {
        return done;
    }
    let mut next = account.clone();
    next.outbox.remove(&transfer);
    done.with_lazy(Some(next))
}

/// After a restart: every transfer still in the outbox goes back to its
/// transfer actor, which adopts it if it lost it.
pub fn resume(account: &AccountState, env: &Env) -> Vec<Effect> {
    account
        .outbox
        .iter()
        .map(|(transfer, out)| Effect {
            target: Address::new(Transfer::KIND, transfer.clone()),
            command: AnyCommand::Transfer(transfer::Command::Adopt {
                from: env.id.clone(),
                to: out.to.clone(),
                amount: out.amount,
            }),
            tag: format!("adopt:{transfer}"),
        })
        .collect()
}

/// The transfer actor's answer to an adoption.
pub fn on_adopt(account: &AccountState, env: &Env, tag: &str, outcome: Outcome) -> AccountStep {
    let Some((transfer, out)) = tag
        .strip_prefix("adopt:")
        .and_then(|t| account.outbox.iter().find(|(id, _)| id.as_str() == t))
    else {
        return Step::parked();
    };
    let fact = LegFact {
        role: Role::Debit,
        counterparty: out.to.clone(),
        amount: out.amount,
        currency: account.currency,
        seq: out.seq,
        refunded: None,
    };
    match outcome {
        Ok(reply) => match reply.body.get("status").and_then(Value::as_str) {
            Some("completed") => settle(account, transfer.clone()),
            // Failed, yet still in the outbox: the transfer's refund never
            // came here (a debit delivered late, after the transfer had
            // already failed on a refusal). Give the money back.
            Some("failed") => {
                let reason = reply
                    .body
                    .get("reason")
                    .cloned()
                    .and_then(|r| serde_json::from_value(r).ok())
                    .unwrap_or(ErrorCode::Internal);
                give_back(account, env, transfer, fact, reason)
            }
            _ => Step::parked(),
        },
        // The id now names another transfer: this debit was never part of
        // anything a client was told about. Give the money back.
        Err(r) if r.code == ErrorCode::IdempotencyKeyReused => {
            give_back(account, env, transfer, fact, r.code)
        }
        Err(_) => Step::parked(),
    }
}
