//! The account's messages: the public ones clients send (`open`, `deposit`,
//! `withdraw`, `get`, `entries`) and the transfer legs only the transfer
//! actor sends through the runtime (no client can name them).

use serde::Deserialize;
use utoipa::ToSchema;

use crate::domain::{ActorId, Amount, Currency, ParseError, MAX_AMOUNT};
use crate::protocol::ErrorCode;

/// The most entries one page may hold.
pub const MAX_PAGE: u32 = 1000;
/// The page size when none is asked for.
pub const DEFAULT_PAGE: u32 = 100;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Opens the account, or confirms it exists with the same settings.
    Open {
        currency: Currency,
        overdraft_limit: u64,
    },
    Deposit {
        amount: Amount,
    },
    Withdraw {
        amount: Amount,
    },
    Get,
    Entries {
        after: u64,
        limit: u32,
    },
    /// Takes a transfer's amount out, refused like a withdrawal, and keeps
    /// the transfer in the account's outbox until it is settled. Applied at
    /// most once per transfer; a repeat answers as the first did.
    TransferDebit {
        transfer: ActorId,
        to: ActorId,
        amount: Amount,
    },
    /// Puts a transfer's amount in; `currency_mismatch` when the account's
    /// currency is not `currency`. Applied at most once per transfer.
    TransferCredit {
        transfer: ActorId,
        from: ActorId,
        amount: Amount,
        currency: Currency,
    },
    /// Gives back the amount this account's debit of `transfer` took out,
    /// once, and only if that debit was applied.
    Refund {
        transfer: ActorId,
        amount: Amount,
        reason: ErrorCode,
    },
    /// The transfer actor confirms `transfer` is settled: it leaves the outbox.
    Settle {
        transfer: ActorId,
    },
    /// Panics inside the handler; exists only for the supervision tests.
    #[cfg(feature = "fault-injection")]
    Crash,
}

impl Command {
    /// The message's name, as in URLs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Open { .. } => "open",
            Self::Deposit { .. } => "deposit",
            Self::Withdraw { .. } => "withdraw",
            Self::Get => "get",
            Self::Entries { .. } => "entries",
            Self::TransferDebit { .. } => "transfer_debit",
            Self::TransferCredit { .. } => "transfer_credit",
            Self::Refund { .. } => "refund",
            Self::Settle { .. } => "settle",
            #[cfg(feature = "fault-injection")]
            Self::Crash => "crash",
        }
    }
}

/// `open`: both fields optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenPayload {
    /// ISO 4217 code, `USD` by default.
    #[schema(example = "EUR")]
    pub currency: Option<String>,
    /// How far below zero the balance may go, in minor units; 0 by default.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_u64)]
    pub overdraft_limit: Option<u64>,
}

/// `deposit` and `withdraw`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmountPayload {
    /// Minor units, 1 to 10^15.
    #[schema(value_type = u64, minimum = 1, maximum = 1_000_000_000_000_000_u64)]
    pub amount: Amount,
}

/// `entries`: a page of the journal.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntriesPayload {
    /// Only entries with a greater sequence number; 0 by default.
    pub after: Option<u64>,
    /// 1 to 1000, 100 by default.
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// `get` takes nothing.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

impl OpenPayload {
    /// # Errors
    /// For a malformed currency or an overdraft limit above 10^15.
    pub fn into_command(self) -> Result<Command, ParseError> {
        let currency = match self.currency {
            Some(c) => Currency::parse(&c)?,
            None => Currency::default(),
        };
        let overdraft_limit = self.overdraft_limit.unwrap_or(0);
        if overdraft_limit > MAX_AMOUNT {
            return Err(ParseError::new(format!(
                "overdraft_limit must be an integer from 0 to {MAX_AMOUNT}, got {overdraft_limit}"
            )));
        }
        Ok(Command::Open {
            currency,
            overdraft_limit,
        })
    }
}

impl EntriesPayload {
    /// # Errors
    /// For a limit outside 1..=1000.
    pub fn into_command(self) -> Result<Command, ParseError> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ParseError::new(format!(
                "limit must be from 1 to {MAX_PAGE}, got {limit}"
            )));
        }
        Ok(Command::Entries {
            after: self.after.unwrap_or(0),
            limit,
        })
    }
}
