//! Idempotency records: what an actor keeps per `Idempotency-Key` so that a
//! retried request replays the first outcome instead of applying twice.
//!
//! The record is the request's fingerprint (SHA-256 of the message name and
//! its canonical JSON payload, so whitespace and key order do not matter)
//! and the outcome. Records are written in the same commit as the change
//! they answer for, so a key is never remembered without its effect, nor an
//! effect kept without its key.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use troupe_actors::Outcome;

/// A request's key and fingerprint, carried in its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRequest {
    pub key: String,
    pub fingerprint: String,
}

impl IdempotencyRequest {
    /// For a client's request: the fingerprint covers the message and payload.
    pub fn new(key: String, message: &str, payload: &serde_json::Value) -> Self {
        Self {
            key,
            fingerprint: fingerprint(&[message.as_bytes(), payload.to_string().as_bytes()]),
        }
    }

    /// For an internal leg, whose command is fixed by its key.
    pub fn internal(key: String, command: &impl std::fmt::Debug) -> Self {
        Self {
            key,
            fingerprint: fingerprint(&[format!("{command:?}").as_bytes()]),
        }
    }
}

/// What the store keeps under a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub fingerprint: String,
    pub outcome: Outcome,
}

fn fingerprint(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fingerprints_ignore_key_order_and_differ_by_message() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b": 1, "a": 2}"#).unwrap();
        let b = json!({"a": 2, "b": 1});
        let fa = IdempotencyRequest::new("k".into(), "deposit", &a).fingerprint;
        assert_eq!(
            fa,
            IdempotencyRequest::new("k".into(), "deposit", &b).fingerprint
        );
        assert_ne!(
            fa,
            IdempotencyRequest::new("k".into(), "withdraw", &b).fingerprint
        );
    }
}
