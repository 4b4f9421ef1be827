//! The transfer: a saga that moves an amount between two accounts, all or
//! nothing, even across crashes.
//!
//! Its phases are persisted before each leg is asked for:
//!
//! ```text
//! start -> CheckTarget --to exists--> Debit --debited--> Credit --credited--> completed
//!              |                        |                   |
//!              +--refused-> failed <----+                   +--refused-> Refund --> failed
//! ```
//!
//! Each leg carries an idempotency key derived from the transfer id, so a leg
//! asked again after a crash applies once. On activation, a transfer found
//! in a pending phase asks for that phase's leg again ([`Behavior::resume`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::account::{self, Account};
use crate::domain::{ActorId, Amount, Currency, ParseError};
use crate::kinds::{payload, AnyCommand, MessageSpec};
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
}

impl Command {
    /// The message's name, as in URLs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start { .. } => "start",
            Self::Get => "get",
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    CheckTarget,
    Debit { currency: Currency },
    Credit { currency: Currency },
    Refund { reason: ErrorCode },
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
}

impl Behavior for Transfer {
    const KIND: &'static str = "transfer";
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

    fn handle(state: &Self::State, command: Command, env: &Env) -> Step<Self::State> {
        match (state, command) {
            (None, Command::Get) => Step::reject(
                ErrorCode::NotFound,
                format!("transfer {} does not exist", env.id),
            ),
            (Some(t), Command::Get) => Step::reply(Ok(Reply::ok(view(t, env)))),
            (None, Command::Start { from, to, amount }) => {
                let mut t = TransferState {
                    from,
                    to,
                    amount,
                    status: Status::Pending,
                    phase: Some(Phase::CheckTarget),
                    reason: None,
                    created_at: env.now,
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
            (Some(t), Command::Start { from, to, amount }) => {
                if t.from != from || t.to != to || t.amount != amount {
                    return Step::reject(
                        ErrorCode::IdempotencyKeyReused,
                        format!("transfer {} already exists with another body", env.id),
                    );
                }
                match t.status {
                    Status::Pending => Step::parked().replayed(),
                    Status::Completed | Status::Failed => Step::reply(outcome(t, env)).replayed(),
                }
            }
        }
    }

    fn on_effect(state: &Self::State, result: Outcome, env: &Env) -> Step<Self::State> {
        let Some(t) = state else {
            return Step::parked();
        };
        let Some(phase) = &t.phase else {
            return Step::parked();
        };
        let next = match (phase, result) {
            (Phase::CheckTarget, Ok(reply)) => {
                match reply
                    .body
                    .get("currency")
                    .cloned()
                    .map(serde_json::from_value::<Currency>)
                {
                    Some(Ok(currency)) => Next::Phase(Phase::Debit { currency }),
                    _ => Next::Fail(ErrorCode::Internal),
                }
            }
            (Phase::CheckTarget, Err(r)) if r.code == ErrorCode::NotFound => {
                Next::Fail(ErrorCode::AccountNotFound)
            }
            (Phase::Debit { currency }, Ok(_)) => Next::Phase(Phase::Credit {
                currency: *currency,
            }),
            (Phase::Credit { .. }, Ok(_)) => Next::Complete,
            (Phase::Credit { .. }, Err(r)) => Next::Phase(Phase::Refund { reason: r.code }),
            (Phase::Refund { reason }, _) => Next::Fail(*reason),
            (Phase::CheckTarget | Phase::Debit { .. }, Err(r)) => Next::Fail(r.code),
        };
        let mut t = t.clone();
        match next {
            Next::Phase(phase) => {
                t.phase = Some(phase);
                let effect = leg(&t, env);
                let mut step = Step::parked().with_change(Some(t), Vec::new());
                step.effects.extend(effect);
                step
            }
            Next::Complete | Next::Fail(_) => {
                t.phase = None;
                if let Next::Fail(reason) = next {
                    t.status = Status::Failed;
                    t.reason = Some(reason);
                } else {
                    t.status = Status::Completed;
                }
                let settled = outcome(&t, env);
                Step::parked()
                    .with_change(Some(t), Vec::new())
                    .settling(settled)
            }
        }
    }

    fn resume(state: &Self::State, env: &Env) -> Option<Effect> {
        state.as_ref().and_then(|t| leg(t, env))
    }

    fn is_pending(state: &Self::State) -> bool {
        matches!(state, Some(t) if t.status == Status::Pending)
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

enum Next {
    Phase(Phase),
    Complete,
    Fail(ErrorCode),
}

/// The ask for the leg of the transfer's current phase.
fn leg(t: &TransferState, env: &Env) -> Option<Effect> {
    let id = env.id.clone();
    let (target, command, step) = match t.phase.as_ref()? {
        Phase::CheckTarget => (&t.to, account::Command::Get, None),
        Phase::Debit { currency } => (
            &t.from,
            account::Command::TransferDebit {
                transfer: id,
                amount: t.amount,
                currency: *currency,
            },
            Some("debit"),
        ),
        Phase::Credit { currency } => (
            &t.to,
            account::Command::TransferCredit {
                transfer: id,
                amount: t.amount,
                currency: *currency,
            },
            Some("credit"),
        ),
        Phase::Refund { .. } => (
            &t.from,
            account::Command::Refund {
                transfer: id,
                amount: t.amount,
            },
            Some("refund"),
        ),
    };
    Some(Effect {
        target: Address::new(Account::KIND, target.clone()),
        command: AnyCommand::Account(command),
        idempotency_key: step.map(|s| format!("transfer:{}:{s}", env.id)),
    })
}

/// The transfer as API.md shows it.
pub fn view(t: &TransferState, env: &Env) -> Value {
    let mut v = json!({
        "id": env.id,
        "from": t.from,
        "to": t.to,
        "amount": t.amount,
        "status": t.status,
        "created_at": t.created_at,
    });
    if let Some(reason) = t.reason {
        v["reason"] = json!(reason);
    }
    v
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
