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
//! - [`kinds`]: the catalogue of kinds and the typed command enum the runtime
//!   routes, built from the message name and JSON payload.
#![forbid(unsafe_code)]

pub mod account;
pub mod domain;
pub mod kinds;
pub mod protocol;
pub mod transfer;

pub use domain::{ActorId, Amount, Currency, ParseError};
pub use kinds::{AnyCommand, KindSpec, MessageSpec};
pub use protocol::{
    Address, Behavior, Change, Effect, Env, ErrorCode, Outcome, Rejection, Reply, ReplyPlan,
    Settle, Status, Step,
};
