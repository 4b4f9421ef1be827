//! The transfer: moves an amount between two accounts, all or nothing, even
//! across crashes, in at most two sequential durable steps.
//!
//! ```text
//! start ──> [transfer record: pending ∥ debit at `from`] ──> credit at `to` ──> completed (answered)
//!              │ refused: failed                                │ refused
//!              v                                                v
//!            failed <────────────── refund at `from` <──────────┘
//! ```
//!
//! The transfer actor coordinates. Its pending record and the debit are
//! written in parallel: the runtime sends every ask as soon as a step is
//! handled and hands its answer back only once that step is durable, so the
//! credit is never asked for by a transfer whose record could be lost.
//!
//! Exactly-once holds by construction, never by retention:
//! - each leg is applied at most once per transfer id by the account
//!   itself, which records it in the same commit as the movement (see
//!   `account::legs`); a leg asked twice, late, or after any outage
//!   answers as the first time;
//! - the debit puts the transfer in the source account's outbox. If the
//!   process dies before the transfer's own record is durable, the account
//!   hands the transfer back on restart ([`Command::Adopt`]);
//! - a leg's answer is handled only in the phase that asked for it.
//!
//! Between legs the phase is held in memory only: resuming from the durable
//! record asks the debit again, which answers from the account's record
//! without moving money. The caller of a completed transfer is answered as
//! soon as the credit is durable, before the transfer's own record: resuming
//! reaches `completed` again from durable facts alone. Failures are
//! answered only once recorded, since a resume could otherwise still succeed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::account::{self, Account};
use crate::command::AnyCommand;
use crate::domain::{ActorId, Amount, Currency, ParseError};
use crate::kind::Kind;
use crate::payload::{payload, MessageSpec};
use crate::protocol::{Address, Behavior, Effect, Env, ErrorCode, Outcome, Rejection, Reply, Step};

/// The transfer kind.
pub struct Transfer;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Start {
        from: ActorId,
        to: ActorId,
        amount: Amount,
    },
    Get,
    /// From the source account after a restart: it debited this transfer
    /// and has not heard that it settled. Internal: no client can send it.
    Adopt {
        from: ActorId,
        to: ActorId,
        amount: Amount,
    },
}

impl Command {
    /// The message's name, as in URLs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start { .. } => "start",
            Self::Get => "get",
            Self::Adopt { .. } => "adopt",
        }
    }
}

/// `start`: the transfer's id is the actor's id.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartPayload {
    #[schema(value_type = String)]
    pub from: ActorId,
    #[schema(value_type = String)]
    pub to: ActorId,
    #[schema(value_type = u64, minimum = 1, maximum = 1_000_000_000_000_000_u64)]
    pub amount: Amount,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Completed,
    Failed,
}

/// Where a pending transfer stands: the leg it waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Written by versions before the debit carried the transfer; resumed
    /// as a debit (nothing was debited in that phase).
    CheckTarget,
    Debit,
    Credit {
        currency: Currency,
    },
    Refund {
        reason: ErrorCode,
    },
}

impl Phase {
    /// The tag of the phase's ask: an answer with another tag is stale.
    fn tag(&self) -> &'static str {
        match self {
            Self::CheckTarget | Self::Debit => "debit",
            Self::Credit { .. } => "credit",
            Self::Refund { .. } => "refund",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferState {
    pub from: ActorId,
    pub to: ActorId,
    pub amount: Amount,
    pub status: Status,
    pub phase: Option<Phase>,
    pub reason: Option<ErrorCode>,
    pub created_at: DateTime<Utc>,
    /// The protocol that wrote the record: [`PROTOCOL`]; 0 for records of
    /// the saga before it, whose legs were deduplicated by idempotency keys
    /// and cannot be resumed safely by this one.
    #[serde(default)]
    pub protocol: u32,
}

/// The transfer protocol this version writes: debit carrying the intent,
/// legs deduplicated by facts.
pub const PROTOCOL: u32 = 2;

impl TransferState {
    /// A pending record of the older saga that may have applied a leg:
    /// this version does not resume it (see `troupe::upgrade`).
    pub fn is_legacy_in_flight(&self) -> bool {
        self.protocol < PROTOCOL
            && self.status == Status::Pending
            && !matches!(self.phase, None | Some(Phase::CheckTarget))
    }

    fn is(&self, from: &ActorId, to: &ActorId, amount: Amount) -> bool {
        self.from == *from && self.to == *to && self.amount == amount
    }
}

type TransferStep = Step<Option<TransferState>>;

impl Behavior for Transfer {
    const KIND: Kind = Kind::Transfer;
    type State = Option<TransferState>;
    type Command = Command;

    fn messages() -> Vec<MessageSpec> {
        vec![
            MessageSpec::new::<StartPayload>(
                "start",
                "Move money; replays for the same body, 422 idempotency_key_reused for another",
            ),
            MessageSpec::new::<account::Empty>("get", "The transfer and its status"),
        ]
    }

    fn parse(message: &str, body: Value) -> Result<Option<Command>, ParseError> {
        Ok(Some(match message {
            "start" => {
                let p: StartPayload = payload(body)?;
                Command::Start {
                    from: p.from,
                    to: p.to,
                    amount: p.amount,
                }
            }
            "get" => {
                payload::<account::Empty>(body)?;
                Command::Get
            }
            _ => return Ok(None),
        }))
    }

    fn handle(state: &Self::State, command: Command, env: &Env) -> TransferStep {
        match (state, command) {
            (None, Command::Get) => Step::reject(
                ErrorCode::NotFound,
                format!("transfer {} does not exist", env.id),
            ),
            (Some(t), Command::Get) => Step::reply(Ok(Reply::ok(view(t, env)))),
            (None, Command::Start { from, to, amount }) => begin(from, to, amount, env),
            (None, Command::Adopt { from, to, amount }) => {
                let step = begin(from, to, amount, env);
                let answer = match &step.change {
                    Some(c) => c.state.as_ref().map(|t| view(t, env)).unwrap_or_default(),
                    None => Value::Null,
                };
                step.answering(Ok(Reply::ok(answer)))
            }
            (Some(t), Command::Start { from, to, amount }) => {
                if !t.is(&from, &to, amount) {
                    return reused(env);
                }
                match t.status {
                    Status::Pending => Step::parked().replayed(),
                    Status::Completed | Status::Failed => Step::reply(outcome(t, env)).replayed(),
                }
            }
            (Some(t), Command::Adopt { from, to, amount }) => {
                if t.is(&from, &to, amount) {
                    Step::reply(Ok(Reply::ok(view(t, env))))
                } else {
                    reused(env)
                }
            }
        }
    }

    fn on_effect(state: &Self::State, tag: &str, result: Outcome, env: &Env) -> TransferStep {
        let Some(t) = state else {
            return Step::parked();
        };
        let Some(phase) = &t.phase else {
            return Step::parked();
        };
        if tag != phase.tag() {
            // An answer to an ask of another phase (or the settle notice).
            return Step::parked();
        }
        match (phase, result) {
            (Phase::CheckTarget | Phase::Debit, Ok(reply)) => {
                let currency = reply
                    .body
                    .get("currency")
                    .cloned()
                    .and_then(|c| serde_json::from_value::<Currency>(c).ok());
                match currency {
                    Some(currency) => next_leg(t, Phase::Credit { currency }, env),
                    // Debited, but the answer is not understood: give it back.
                    None => next_leg(
                        t,
                        Phase::Refund {
                            reason: ErrorCode::Internal,
                        },
                        env,
                    ),
                }
            }
            (Phase::CheckTarget | Phase::Debit, Err(r)) => finish(t, Err(r.code), env),
            (Phase::Credit { .. }, Ok(_)) => {
                let step = finish(t, Ok(()), env);
                let settle = Effect {
                    target: Address::new(Account::KIND, t.from.clone()),
                    command: AnyCommand::Account(account::Command::Settle {
                        transfer: env.id.clone(),
                    }),
                    tag: "settle".into(),
                };
                step.with_effect(settle)
            }
            (Phase::Credit { .. }, Err(r)) => next_leg(t, Phase::Refund { reason: r.code }, env),
            (Phase::Refund { reason }, Ok(_)) => finish(t, Err(*reason), env),
            // A refund is never refused; should one be, the transfer stays
            // pending and asks again when it is next resumed.
            (Phase::Refund { .. }, Err(_)) => Step::parked(),
        }
    }

    fn resume(state: &Self::State, env: &Env) -> Vec<Effect> {
        state
            .as_ref()
            .filter(|t| t.status == Status::Pending && !t.is_legacy_in_flight())
            .and_then(|t| leg(t, env))
            .into_iter()
            .collect()
    }

    fn is_pending(state: &Self::State) -> bool {
        matches!(state, Some(t) if t.status == Status::Pending)
    }

    fn is_resident(state: &Self::State) -> bool {
        Self::is_pending(state)
    }

    fn in_progress(state: &Self::State, env: &Env) -> Option<Outcome> {
        state
            .as_ref()
            .filter(|t| t.status == Status::Pending)
            .map(|t| Ok(Reply::accepted(view(t, env))))
    }

    fn keyed_by_id(command: &Command) -> bool {
        matches!(command, Command::Start { .. })
    }

    fn may_park(command: &Command) -> bool {
        matches!(command, Command::Start { .. })
    }

    fn message_name(command: &Command) -> &'static str {
        command.name()
    }

    fn into_any(command: Command) -> AnyCommand {
        AnyCommand::Transfer(command)
    }

    fn from_any(command: AnyCommand) -> Option<Command> {
        match command {
            AnyCommand::Transfer(c) => Some(c),
            _ => None,
        }
    }
}

fn reused(env: &Env) -> TransferStep {
    Step::reject(
        ErrorCode::IdempotencyKeyReused,
        format!("transfer {} already exists with another body", env.id),
    )
}

/// A new transfer: its pending record, written in parallel with the debit.
fn begin(from: ActorId, to: ActorId, amount: Amount, env: &Env) -> TransferStep {
    let mut t = TransferState {
        from,
        to,
        amount,
        status: Status::Pending,
        phase: Some(Phase::Debit),
        reason: None,
        created_at: env.now,
        protocol: PROTOCOL,
    };
    if t.from == t.to {
        t.status = Status::Failed;
        t.phase = None;
        t.reason = Some(ErrorCode::SameAccount);
        return Step::reply(outcome(&t, env)).with_change(Some(t), Vec::new());
    }
    let effect = leg(&t, env);
    let mut step = Step::parked().with_change(Some(t), Vec::new());
    step.effects.extend(effect);
    step
}

/// Moves to the next leg in memory and asks for it.
fn next_leg(t: &TransferState, phase: Phase, env: &Env) -> TransferStep {
    let mut t = t.clone();
    t.phase = Some(phase);
    let effect = leg(&t, env);
    let mut step = Step::parked().with_memo(Some(t));
    step.effects.extend(effect);
    step
}

/// Settles the transfer: completed answers at once, failed once durable.
fn finish(t: &TransferState, result: Result<(), ErrorCode>, env: &Env) -> TransferStep {
    let mut t = t.clone();
    t.phase = None;
    match result {
        Ok(()) => t.status = Status::Completed,
        Err(reason) => {
            t.status = Status::Failed;
            t.reason = Some(reason);
        }
    }
    let settled = outcome(&t, env);
    let step = Step::parked().with_change(Some(t), Vec::new());
    if result.is_ok() {
        step.settling_early(settled)
    } else {
        step.settling(settled)
    }
}

/// The ask for the leg of the transfer's current phase.
fn leg(t: &TransferState, env: &Env) -> Option<Effect> {
    let transfer = env.id.clone();
    let phase = t.phase.as_ref()?;
    let (target, command) = match phase {
        Phase::CheckTarget | Phase::Debit => (
            &t.from,
            account::Command::TransferDebit {
                transfer,
                to: t.to.clone(),
                amount: t.amount,
            },
        ),
        Phase::Credit { currency } => (
            &t.to,
            account::Command::TransferCredit {
                transfer,
                from: t.from.clone(),
                amount: t.amount,
                currency: *currency,
            },
        ),
        Phase::Refund { reason } => (
            &t.from,
            account::Command::Refund {
                transfer,
                amount: t.amount,
                reason: *reason,
            },
        ),
    };
    Some(Effect {
        target: Address::new(Account::KIND, target.clone()),
        command: AnyCommand::Account(command),
        tag: phase.tag().into(),
    })
}

/// A transfer: `POST /v1/transfers`, `GET /v1/transfers/{id}`, and the
/// fields of a failed transfer's `422`. Serialises the replies and
/// describes them in the OpenAPI document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransferView {
    #[schema(value_type = String, example = "t-1")]
    pub id: ActorId,
    #[schema(value_type = String)]
    pub from: ActorId,
    #[schema(value_type = String)]
    pub to: ActorId,
    #[schema(value_type = u64, minimum = 1, maximum = 1_000_000_000_000_000_u64)]
    pub amount: Amount,
    pub status: Status,
    /// Why a failed transfer failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ErrorCode>,
    pub created_at: DateTime<Utc>,
}

/// The transfer as API.md shows it.
pub fn view(t: &TransferState, env: &Env) -> Value {
    let view = TransferView {
        id: env.id.clone(),
        from: t.from.clone(),
        to: t.to.clone(),
        amount: t.amount,
        status: t.status,
        reason: t.reason,
        created_at: t.created_at,
    };
    // Plain data: serialising it cannot fail.
    serde_json::to_value(view).unwrap_or(Value::Null)
}

/// The answer to `start` for a settled transfer: `201` or `422`.
fn outcome(t: &TransferState, env: &Env) -> Outcome {
    match (t.status, t.reason) {
        (Status::Failed, reason) => {
            let code = reason.unwrap_or(ErrorCode::Internal);
            Err(Rejection::new(
                code,
                format!("transfer {} failed: {}", env.id, code.as_str()),
            )
            .with_details(view(t, env)))
        }
        _ => Ok(Reply::created(view(t, env))),
    }
}

#[cfg(test)]
mod tests;
