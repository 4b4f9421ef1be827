//! The kinds of actor, a closed set: adding a kind and forgetting a place
//! that routes kinds (the runtime's shard, the command parser, the
//! catalogue, [`Kind::ALL`]) is a compile error, never a message that
//! silently reaches another kind or a kind the API does not know.

use std::fmt;

use serde::Serialize;
use strum::{EnumCount, EnumIter};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, EnumCount, EnumIter,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Account,
    Transfer,
}

impl Kind {
    /// Every kind, in catalogue order. Its length is the number of
    /// variants, so a new kind missing here does not compile; a test checks
    /// none is listed twice.
    pub const ALL: [Kind; Kind::COUNT] = [Kind::Account, Kind::Transfer];

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

#[cfg(test)]
mod tests {
    use strum::IntoEnumIterator;

    use super::Kind;

    #[test]
    fn all_lists_every_kind_once_and_names_parse_back() {
        let every: Vec<Kind> = Kind::iter().collect();
        let mut all = Kind::ALL.to_vec();
        all.sort();
        assert_eq!(all, every);
        for kind in Kind::iter() {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        assert_eq!(Kind::parse("Account"), None);
    }
}
