//! # troupe-actors
//!
//! The business actors of troupe: their state, the messages they accept and
//! the pure logic that handles them. Nothing here performs I/O: the runtime in
//! the `troupe` crate loads state, delivers messages, persists the changes a
//! handler asks for and executes the effects (asks to other actors) it
//! returns. That keeps every rule of the ledger testable without a server.
//!
//! # Layout
//!
//! - [`domain`]: validated newtypes shared by every kind (`ActorId`, `Amount`,
//!   `Currency`), parsed once at the edge.
//! - [`protocol`]: the contract between a behaviour and the runtime hosting
//!   it: [`protocol::Behavior`], [`protocol::Step`], replies and rejections.
//! - [`account`]: balances, overdraft limits and the entry journal.
//! - [`transfer`]: the saga moving money between two accounts.
//! - [`kind`]: the closed set of kinds; [`command`]: the command enum the
//!   runtime routes; [`payload`]: strict payload parsing;
//! - [`kinds`]: the catalogue: a typed command from a kind, a message name
//!   and a JSON payload, and every kind's messages.
#![forbid(unsafe_code)]

pub mod account;
pub mod command;
pub mod domain;
pub mod kind;
pub mod kinds;
pub mod payload;
pub mod protocol;
pub mod transfer;

pub use command::AnyCommand;
pub use domain::{ActorId, Amount, Currency, ParseError};
pub use kind::Kind;
pub use kinds::KindSpec;
pub use payload::MessageSpec;
pub use protocol::{
    Address, Behavior, Change, Effect, Env, ErrorCode, Outcome, Rejection, Reply, ReplyPlan,
    Settle, Status, Step,
};
