//! The kinds of actor, a closed set: adding a kind and forgetting a place
//! that routes kinds (the runtime's shard, the command parser, the
//! catalogue) is a compile error, never a message that silently reaches
//! another kind.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Account,
    Transfer,
}

impl Kind {
    /// Every kind, in catalogue order.
    pub const ALL: [Kind; 2] = [Kind::Account, Kind::Transfer];

    /// The name in addresses, URLs, spans and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Transfer => "transfer",
        }
    }

    /// The kind named `name`, if any.
    pub fn parse(name: &str) -> Option<Kind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
