//! The contract between a behaviour (a kind of actor) and the runtime that
//! hosts it.
//!
//! A behaviour is a set of pure functions over its state. For every command
//! it returns a [`Step`]: how to answer the caller, which change to persist
//! and which effects (asks to other actors) to run. The runtime persists the
//! change before any reply leaves, runs effects with retries and deadlines,
//! and feeds each effect's outcome back through [`Behavior::on_effect`].

use std::fmt::Debug;

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{ActorId, ParseError};
use crate::kinds::{AnyCommand, MessageSpec};

/// The API's error codes, shared by the domain, the runtime and HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    NotFound,
    MethodNotAllowed,
    AlreadyExists,
    PayloadTooLarge,
    UnsupportedMediaType,
    InsufficientFunds,
    CurrencyMismatch,
    SameAccount,
    LimitExceeded,
    IdempotencyKeyReused,
    AccountNotFound,
    Overloaded,
    Unavailable,
    DeadlineExceeded,
    Internal,
}

impl ErrorCode {
    /// The wire name, as in API.md.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::AlreadyExists => "already_exists",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InsufficientFunds => "insufficient_funds",
            Self::CurrencyMismatch => "currency_mismatch",
            Self::SameAccount => "same_account",
            Self::LimitExceeded => "limit_exceeded",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::AccountNotFound => "account_not_found",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Internal => "internal",
        }
    }

    /// Whether retrying the same message later may succeed: the runtime
    /// retries effects that fail this way and never those refused by a rule.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Overloaded | Self::Unavailable | Self::DeadlineExceeded | Self::Internal
        )
    }
}

/// Where an actor lives: its kind and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    pub kind: &'static str,
    pub id: ActorId,
}

impl Address {
    pub fn new(kind: &'static str, id: ActorId) -> Self {
        Self { kind, id }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

/// How a successful reply maps onto HTTP: `200` or `201`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Created,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub status: Status,
    pub body: Value,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self {
            status: Status::Ok,
            body,
        }
    }
    pub fn created(body: Value) -> Self {
        Self {
            status: Status::Created,
            body,
        }
    }
}

/// A refusal: the code, a message for humans and, for some codes, the
/// resource as it stands (a failed transfer carries the transfer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

pub type Outcome = Result<Reply, Rejection>;

/// How the caller of a command is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyPlan {
    /// With this outcome, as soon as the step's change is durable.
    Now(Outcome),
    /// Later, with the outcome of a future step's [`Step::settle`].
    Park,
    /// With a page of the actor's journal read from the store: entries with
    /// a sequence number above `after`, at most `limit` of them.
    Journal { after: u64, limit: u32 },
}

/// State to persist, with the journal entries appended by this step.
#[derive(Debug, Clone, PartialEq)]
pub struct Change<S> {
    pub state: S,
    pub entries: Vec<(u64, Value)>,
}

/// An ask to another actor, run by the runtime after the step is durable.
#[derive(Debug)]
pub struct Effect {
    pub target: Address,
    pub command: AnyCommand,
    /// Makes a retried effect apply at most once at the target.
    pub idempotency_key: Option<String>,
}

/// What a behaviour asks of the runtime after handling one command.
#[derive(Debug)]
pub struct Step<S> {
    pub reply: ReplyPlan,
    pub change: Option<Change<S>>,
    pub effects: Vec<Effect>,
    /// Answers every parked caller.
    pub settle: Option<Outcome>,
    /// The reply repeats an earlier outcome (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

impl<S> Step<S> {
    pub fn reply(outcome: Outcome) -> Self {
        Self {
            reply: ReplyPlan::Now(outcome),
            change: None,
            effects: Vec::new(),
            settle: None,
            replayed: false,
        }
    }
    pub fn reject(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::reply(Err(Rejection::new(code, message)))
    }
    pub fn with_change(mut self, state: S, entries: Vec<(u64, Value)>) -> Self {
        self.change = Some(Change { state, entries });
        self
    }
    pub fn with_effect(mut self, effect: Effect) -> Self {
        self.effects.push(effect);
        self
    }
    pub fn parked() -> Self {
        Self {
            reply: ReplyPlan::Park,
            ..Self::reply(Ok(Reply::ok(Value::Null)))
        }
    }
    pub fn settling(mut self, outcome: Outcome) -> Self {
        self.settle = Some(outcome);
        self
    }
    pub fn replayed(mut self) -> Self {
        self.replayed = true;
        self
    }
}

/// What a handler may know of the world: who it is, the time, and the
/// version its state has now (a change makes it `version + 1`).
#[derive(Debug, Clone)]
pub struct Env {
    pub id: ActorId,
    pub now: DateTime<Utc>,
    pub version: u64,
}

/// A kind of actor: pure functions over its state.
pub trait Behavior: 'static {
    /// The kind's name in addresses and URLs.
    const KIND: &'static str;
    type State: Serialize + DeserializeOwned + Default + Clone + Debug + Send + Unpin + 'static;
    type Command: Debug + Send + 'static;

    /// The messages clients may send, with their payload schemas.
    fn messages() -> Vec<MessageSpec>;

    /// Builds a command from a message name and its JSON payload.
    ///
    /// # Errors
    /// `Ok(None)` for an unknown message name; `Err` for a bad payload.
    fn parse(message: &str, payload: Value) -> Result<Option<Self::Command>, ParseError>;

    /// The command's message name, for spans and metrics.
    fn message_name(command: &Self::Command) -> &'static str;

    /// Handles one command.
    fn handle(state: &Self::State, command: Self::Command, env: &Env) -> Step<Self::State>;

    /// Handles the outcome of the effect the actor is waiting for. A
    /// behaviour keeps at most one effect in flight.
    fn on_effect(state: &Self::State, outcome: Outcome, env: &Env) -> Step<Self::State> {
        let _ = (state, outcome, env);
        Step::parked()
    }

    /// The effect to run again after an activation finds unfinished work in
    /// its durable state (a transfer interrupted by a crash).
    fn resume(state: &Self::State, env: &Env) -> Option<Effect> {
        let _ = (state, env);
        None
    }

    /// Whether the state has unfinished work: such an actor is listed for
    /// resumption at start-up and is not passivated.
    fn is_pending(state: &Self::State) -> bool {
        let _ = state;
        false
    }

    fn into_any(command: Self::Command) -> AnyCommand;
    fn from_any(command: AnyCommand) -> Option<Self::Command>;
}
