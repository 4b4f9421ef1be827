//! The catalogue of actor kinds: building a typed command from a kind, a
//! message name and a JSON payload, and listing every kind's messages.
//!
//! Adding a kind means: a module with a [`Behavior`] implementation, a
//! variant in [`Kind`] and in [`AnyCommand`]; the compiler then points at
//! every place that must learn it (`Kind::ALL`, `Kind::as_str`, [`parse`]
//! and [`catalog`] here, the runtime's shard).

use serde::Serialize;
use serde_json::Value;

use crate::account::Account;
use crate::command::AnyCommand;
use crate::domain::ParseError;
use crate::kind::Kind;
use crate::payload::MessageSpec;
use crate::protocol::Behavior;
use crate::transfer::Transfer;

#[derive(Debug, Clone, Serialize)]
pub struct KindSpec {
    pub kind: Kind,
    pub messages: Vec<MessageSpec>,
}

/// Why a message could not be turned into a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseFailure {
    #[error("actor kind {kind} has no message {message:?}")]
    UnknownMessage { kind: Kind, message: String },
    #[error(transparent)]
    Invalid(#[from] ParseError),
}

/// Builds a typed command from a kind name, a message name and a payload.
///
/// # Errors
/// [`ParseFailure`] for an unknown message or a bad payload.
pub fn parse(kind: Kind, message: &str, payload: Value) -> Result<AnyCommand, ParseFailure> {
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
        Kind::Account => typed::<Account>(message, payload),
        Kind::Transfer => typed::<Transfer>(message, payload),
    }
}

/// Every kind with its messages and their payload schemas, in
/// [`Kind::ALL`]'s order.
pub fn catalog() -> Vec<KindSpec> {
    Kind::ALL
        .into_iter()
        .map(|kind| KindSpec {
            kind,
            messages: match kind {
                Kind::Account => Account::messages(),
                Kind::Transfer => Transfer::messages(),
            },
        })
        .collect()
}
