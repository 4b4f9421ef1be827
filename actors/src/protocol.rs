//! The contract between a behaviour (a kind of actor) and the runtime that
//! hosts it.
//!
//! A behaviour is a set of pure functions over its state. For every command
//! it returns a [`Step`]: how to answer the caller, which change to persist
//! and which effects (asks to other actors) to run. The runtime persists the
//! change before any reply leaves, runs effects with retries and deadlines,
//! and feeds each effect's outcome back through [`Behavior::on_effect`],
//! tagged with the name the behaviour gave the ask.
//!
//! Effects are sent as soon as the step is handled, in parallel with the
//! step's own commit, but their outcomes are handled only once that commit
//! is durable. So an effect must be safe to deliver more than once (the
//! target deduplicates it, see [`Behavior::fact_key`]), and whatever a
//! behaviour decides from an outcome rests on durable state.

use std::fmt::Debug;

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

use crate::command::AnyCommand;
use crate::domain::{ActorId, ParseError};
use crate::kind::Kind;
use crate::payload::MessageSpec;

/// The API's error codes, shared by the domain, the runtime and HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The actor's durable data is damaged (`500`): refused until it is
    /// repaired, while the rest is served.
    Corrupt,
    /// No, malformed or unknown credentials (`401`).
    Unauthorized,
    /// Credentials without the scope or the ids a request needs (`403`).
    Forbidden,
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
            Self::Corrupt => "corrupt",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
        }
    }

    /// Whether retrying the same message later may succeed: the runtime
    /// retries effects that fail this way and never those refused by a rule.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Overloaded
                | Self::Unavailable
                | Self::DeadlineExceeded
                | Self::Internal
                // Damage can be repaired: an effect waits for it, never
                // gives up as if a rule had refused it.
                | Self::Corrupt
        )
    }
}

/// Where an actor lives: its kind and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    pub kind: Kind,
    pub id: ActorId,
}

impl Address {
    pub fn new(kind: Kind, id: ActorId) -> Self {
        Self { kind, id }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

/// How a successful reply maps onto HTTP: `200`, `201`, or `202` for work
/// accepted, durable, and still going on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Created,
    Accepted,
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
    pub fn accepted(body: Value) -> Self {
        Self {
            status: Status::Accepted,
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

/// State to persist, with the journal entries and facts written with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change<S> {
    pub state: S,
    pub entries: Vec<(u64, Value)>,
    /// Durable keyed facts, kept without expiry and read back through
    /// [`Env::fact`] (an account's record of the transfer legs it applied).
    pub facts: Vec<(String, Value)>,
}

/// An ask to another actor. Sent at once, retried while it fails
/// transiently; its outcome comes back through [`Behavior::on_effect`] with
/// `tag`, once the step that asked for it is durable.
#[derive(Debug)]
pub struct Effect {
    pub target: Address,
    pub command: AnyCommand,
    /// Which ask this is, for the behaviour: `debit`, `adopt:t-1`.
    pub tag: String,
}

/// When the parked callers of a step are answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Settle {
    pub outcome: Outcome,
    /// Answer before this step's own change is durable: the outcome is
    /// already fixed by durable facts elsewhere, and resuming from the last
    /// durable state reaches it again.
    pub early: bool,
}

/// What a behaviour asks of the runtime after handling one command.
#[derive(Debug)]
pub struct Step<S> {
    pub reply: ReplyPlan,
    pub change: Option<Change<S>>,
    pub effects: Vec<Effect>,
    /// Answers every parked caller.
    pub settle: Option<Settle>,
    /// The reply repeats an earlier outcome (`Idempotent-Replayed: true`).
    pub replayed: bool,
    /// A new state held in memory only: one that resuming from the durable
    /// state would recompute (a transfer's phase between two legs).
    pub memo: Option<S>,
    /// A new state persisted with the actor's next commit, or on its own
    /// after `runtime.retry_interval_ms` if none comes: for changes that
    /// resuming would redo if they were lost (a settled transfer leaving an
    /// account's outbox), so a hot actor pays no commit of their own.
    pub lazy: Option<S>,
}

impl<S> Step<S> {
    pub fn reply(outcome: Outcome) -> Self {
        Self {
            reply: ReplyPlan::Now(outcome),
            change: None,
            effects: Vec::new(),
            settle: None,
            replayed: false,
            memo: None,
            lazy: None,
        }
    }
    pub fn reject(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::reply(Err(Rejection::new(code, message)))
    }
    /// Replaces how the caller is answered.
    pub fn answering(mut self, outcome: Outcome) -> Self {
        self.reply = ReplyPlan::Now(outcome);
        self
    }
    pub fn with_change(mut self, state: S, entries: Vec<(u64, Value)>) -> Self {
        self.change = Some(Change {
            state,
            entries,
            facts: Vec::new(),
        });
        self
    }
    /// Adds a fact to the step's change; the step must have a change.
    pub fn with_fact(mut self, key: String, value: Value) -> Self {
        if let Some(change) = &mut self.change {
            change.facts.push((key, value));
        }
        self
    }
    pub fn with_memo(mut self, state: S) -> Self {
        self.memo = Some(state);
        self
    }
    pub fn with_lazy(mut self, state: S) -> Self {
        self.lazy = Some(state);
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
    /// Answers the parked callers once this step's change is durable.
    pub fn settling(mut self, outcome: Outcome) -> Self {
        self.settle = Some(Settle {
            outcome,
            early: false,
        });
        self
    }
    /// Answers the parked callers at once; see [`Settle::early`].
    pub fn settling_early(mut self, outcome: Outcome) -> Self {
        self.settle = Some(Settle {
            outcome,
            early: true,
        });
        self
    }
    pub fn replayed(mut self) -> Self {
        self.replayed = true;
        self
    }
}

/// What a handler may know of the world: who it is, the time, the
/// version its state has now (a change makes it `version + 1`) and the
/// durable fact stored under the command's [`Behavior::fact_key`], if any.
#[derive(Debug, Clone)]
pub struct Env {
    pub id: ActorId,
    pub now: DateTime<Utc>,
    pub version: u64,
    pub fact: Option<Value>,
}

impl Env {
    pub fn new(id: ActorId, now: DateTime<Utc>, version: u64) -> Self {
        Self {
            id,
            now,
            version,
            fact: None,
        }
    }
}

/// A kind of actor: pure functions over its state.
pub trait Behavior: 'static {
    /// The kind's name in addresses and URLs.
    const KIND: Kind;
    type State: Serialize + DeserializeOwned + Default + Clone + Debug + Send + Unpin + 'static;
    type Command: Debug + Clone + Send + Unpin + 'static;

    /// The messages clients may send, with their payload schemas.
    fn messages() -> Vec<MessageSpec>;

    /// Builds a command from a message name and its JSON payload.
    ///
    /// # Errors
    /// `Ok(None)` for an unknown message name; `Err` for a bad payload.
    fn parse(message: &str, payload: Value) -> Result<Option<Self::Command>, ParseError>;

    /// The command's message name, for spans and metrics.
    fn message_name(command: &Self::Command) -> &'static str;

    /// The key of the durable fact the runtime reads before handling
    /// `command` and hands over as [`Env::fact`]. Facts are written with
    /// the change they record ([`Step::with_fact`]) and never expire, so a
    /// command that must apply once (a transfer leg) stays deduplicated
    /// whatever time passes, unlike a client's idempotency key.
    fn fact_key(command: &Self::Command) -> Option<String> {
        let _ = command;
        None
    }

    /// Whether `command` is deduplicated by its actor's id alone (a
    /// transfer's `start`, whose id is its idempotency key): the runtime
    /// then ignores any client idempotency key sent with it.
    fn keyed_by_id(command: &Self::Command) -> bool {
        let _ = command;
        false
    }

    /// Whether handling `command` may park its caller. The runtime keeps
    /// such a command with its parked caller, so that after a reload it can
    /// hand it to the reloaded state again and answer what that state says
    /// (the settled outcome, another body's refusal), never an outcome
    /// computed for another request.
    fn may_park(command: &Self::Command) -> bool {
        let _ = command;
        false
    }

    /// Handles one command.
    fn handle(state: &Self::State, command: Self::Command, env: &Env) -> Step<Self::State>;

    /// Handles the outcome of the effect tagged `tag`. Outcomes of asks
    /// made before the state was last reloaded never arrive here.
    fn on_effect(state: &Self::State, tag: &str, outcome: Outcome, env: &Env) -> Step<Self::State> {
        let _ = (state, tag, outcome, env);
        Step::parked()
    }

    /// The effects to run again after an activation finds unfinished work
    /// in its durable state (a transfer interrupted by a crash).
    fn resume(state: &Self::State, env: &Env) -> Vec<Effect> {
        let _ = (state, env);
        Vec::new()
    }

    /// Whether the state has unfinished work: such an actor is listed for
    /// resumption at start-up and is never passivated.
    fn is_pending(state: &Self::State) -> bool {
        let _ = state;
        false
    }

    /// The answer to a caller parked on work that is durable and still
    /// going on when its deadline passes (a transfer between its legs:
    /// `202` with the transfer, pending). `None`: the runtime answers `504`,
    /// saying the work goes on.
    fn in_progress(state: &Self::State, env: &Env) -> Option<Outcome> {
        let _ = (state, env);
        None
    }

    /// Whether an idle activation is worth keeping in memory until the
    /// idle timeout. `false` (an account never opened, a settled transfer)
    /// passivates it as soon as it has nothing left to do.
    fn is_resident(state: &Self::State) -> bool {
        let _ = state;
        true
    }

    fn into_any(command: Self::Command) -> AnyCommand;
    fn from_any(command: AnyCommand) -> Option<Self::Command>;
}
