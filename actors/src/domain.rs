//! Validated value types. Once a value of one of these types exists it is
//! valid: constructors are the only way in, and they reject bad input with a
//! [`ParseError`] whose message is fit for an API client.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest amount a single operation may move: 10^15 minor units.
pub const MAX_AMOUNT: u64 = 1_000_000_000_000_000;
/// Ids are 1 to this many characters long.
pub const MAX_ID_LEN: usize = 128;

/// Why a value was refused. The message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// An account, transfer or actor id: 1 to 128 characters of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ActorId(String);

impl ActorId {
    /// # Errors
    /// When the id is empty, longer than 128 characters or has a character
    /// outside `[A-Za-z0-9._:-]`.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ParseError> {
        let raw = raw.into();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
        if raw.is_empty() || raw.len() > MAX_ID_LEN || !raw.chars().all(valid_char) {
            return Err(ParseError::new(format!(
                "invalid id {:?}: ids are 1 to {MAX_ID_LEN} characters of [A-Za-z0-9._:-]",
                truncate(&raw)
            )));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ActorId {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<ActorId> for String {
    fn from(id: ActorId) -> Self {
        id.0
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A positive amount of minor units, at most [`MAX_AMOUNT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Amount(u64);

impl Amount {
    /// # Errors
    /// When the amount is 0 or above 10^15.
    pub fn new(value: u64) -> Result<Self, ParseError> {
        if value == 0 || value > MAX_AMOUNT {
            return Err(ParseError::new(format!(
                "amount must be an integer from 1 to {MAX_AMOUNT}, got {value}"
            )));
        }
        Ok(Self(value))
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The amount as a signed balance delta; always exact since it is at most 10^15.
    pub fn signed(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

impl TryFrom<u64> for Amount {
    type Error = ParseError;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Amount> for u64 {
    fn from(a: Amount) -> Self {
        a.0
    }
}

/// An ISO 4217-shaped currency code: three upper-case ASCII letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub const USD: Currency = Currency(*b"USD");

    /// # Errors
    /// When the code is not three upper-case ASCII letters.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => Ok(Self([*a, *b, *c])),
            _ => Err(ParseError::new(format!(
                "invalid currency {:?}: expected three upper-case letters such as \"EUR\"",
                truncate(raw)
            ))),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl Default for Currency {
    fn default() -> Self {
        Self::USD
    }
}

impl TryFrom<String> for Currency {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Keeps echoed input short in error messages.
fn truncate(raw: &str) -> String {
    raw.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_documented_alphabet_and_nothing_else() {
        assert!(ActorId::parse("a-Z_0.9:x").is_ok());
        assert!(ActorId::parse("x".repeat(128)).is_ok());
        assert!(ActorId::parse("x".repeat(129)).is_err());
        assert!(ActorId::parse("").is_err());
        assert!(ActorId::parse("a/b").is_err());
        assert!(ActorId::parse("é").is_err());
    }

    #[test]
    fn amounts_are_bounded_on_both_sides() {
        assert!(Amount::new(0).is_err());
        assert!(Amount::new(1).is_ok());
        assert!(Amount::new(MAX_AMOUNT).is_ok());
        assert!(Amount::new(MAX_AMOUNT + 1).is_err());
    }

    #[test]
    fn currencies_are_three_upper_case_letters() {
        assert_eq!(
            Currency::parse("EUR").map(|c| c.to_string()),
            Ok("EUR".into())
        );
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("EURO").is_err());
    }
}
