//! The catalogue of actor kinds and the command enum the runtime routes.
//!
//! Adding a kind means: a module with a [`Behavior`] implementation, a
//! variant in [`AnyCommand`], and a line in [`parse`] and [`catalog`].

use serde::Serialize;
use serde_json::Value;

use crate::account::{self, Account};
use crate::domain::ParseError;
use crate::protocol::Behavior;
use crate::transfer::{self, Transfer};

/// A command for any kind, as it travels through the runtime.
#[derive(Debug, Clone)]
pub enum AnyCommand {
    Account(account::Command),
    Transfer(transfer::Command),
}

impl AnyCommand {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Account(_) => Account::KIND,
            Self::Transfer(_) => Transfer::KIND,
        }
    }

    /// The message's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Account(c) => c.name(),
            Self::Transfer(c) => c.name(),
        }
    }
}

/// One message of a kind, as listed by `GET /v1/actors`.
#[derive(Debug, Clone, Serialize)]
pub struct MessageSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// JSON Schema of the payload.
    pub payload: Value,
}

impl MessageSpec {
    pub fn new<T: utoipa::PartialSchema>(name: &'static str, description: &'static str) -> Self {
        let payload = serde_json::to_value(T::schema()).unwrap_or(Value::Null);
        Self {
            name,
            description,
            payload,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KindSpec {
    pub kind: &'static str,
    pub messages: Vec<MessageSpec>,
}

/// Why a message could not be turned into a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseFailure {
    #[error("no actor kind {0:?}")]
    UnknownKind(String),
    #[error("actor kind {kind:?} has no message {message:?}")]
    UnknownMessage { kind: &'static str, message: String },
    #[error(transparent)]
    Invalid(#[from] ParseError),
}

/// The kind names, for routing a kind string to its `'static` name.
pub const KINDS: [&str; 2] = [Account::KIND, Transfer::KIND];

/// Resolves a kind name from a URL.
pub fn kind(name: &str) -> Option<&'static str> {
    KINDS.into_iter().find(|k| *k == name)
}

/// Builds a typed command from a kind name, a message name and a payload.
///
/// # Errors
/// [`ParseFailure`] for an unknown kind or message, or a bad payload.
pub fn parse(kind: &str, message: &str, payload: Value) -> Result<AnyCommand, ParseFailure> {
    fn typed<B: Behavior>(message: &str, payload: Value) -> Result<AnyCommand, ParseFailure> {
        match B::parse(message, payload)? {
            Some(command) => Ok(B::into_any(command)),
            None => Err(ParseFailure::UnknownMessage {
                kind: B::KIND,
                message: message.into(),
            }),
        }
    }
    match kind {
        Account::KIND => typed::<Account>(message, payload),
        Transfer::KIND => typed::<Transfer>(message, payload),
        other => Err(ParseFailure::UnknownKind(other.into())),
    }
}

/// Every kind with its messages and their payload schemas.
pub fn catalog() -> Vec<KindSpec> {
    vec![
        KindSpec {
            kind: Account::KIND,
            messages: Account::messages(),
        },
        KindSpec {
            kind: Transfer::KIND,
            messages: Transfer::messages(),
        },
    ]
}

/// Deserialises a payload strictly: `null` stands for `{}`, unknown fields
/// and wrong types are refused with serde's message.
///
/// # Errors
/// When the payload does not match `T`.
pub fn payload<T: serde::de::DeserializeOwned>(payload: Value) -> Result<T, ParseError> {
    let payload = match payload {
        Value::Null => Value::Object(Default::default()),
        object @ Value::Object(_) => object,
        // serde would read a struct from an array too; payloads are objects.
        other => {
            return Err(ParseError::new(format!(
                "the payload must be a JSON object, got {other}"
            )));
        }
    };
    serde_json::from_value(payload).map_err(|e| ParseError::new(e.to_string()))
}
