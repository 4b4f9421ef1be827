//! The command enum the runtime routes: one variant per kind.

use crate::account;
use crate::kind::Kind;
use crate::transfer;

/// A command for any kind, as it travels through the runtime.
#[derive(Debug, Clone)]
pub enum AnyCommand {
    Account(account::Command),
    Transfer(transfer::Command),
}

impl AnyCommand {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Account(_) => Kind::Account,
            Self::Transfer(_) => Kind::Transfer,
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
