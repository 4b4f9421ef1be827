//! Idempotency records: what an actor keeps per `Idempotency-Key` so that a
//! retried request replays the first outcome instead of applying twice.
//!
//! The record is the request's fingerprint and the outcome. The fingerprint
//! is versioned (`v1:`) and covers the message name and the payload in a
//! canonical JSON encoding (object keys sorted at every depth, no
//! whitespace), so neither the client's formatting nor a change to how the
//! service prints or derives anything can make a legitimate retry look
//! like another request. Records are written in the same commit as the change
//! they answer for, so a key is never remembered without its effect, nor an
//! effect kept without its key.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use troupe_actors::Outcome;

/// A request's key and fingerprint, carried in its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRequest {
    pub key: String,
    pub fingerprint: String,
    /// The unversioned fingerprint of records written before `v1`, so a
    /// retry that spans the upgrade still replays.
    legacy: String,
}

impl IdempotencyRequest {
    /// For a client's request: the fingerprint covers the message and payload.
    pub fn new(key: String, message: &str, payload: &Value) -> Self {
        let mut canonical = Vec::new();
        write_canonical(payload, &mut canonical);
        Self {
            key,
            fingerprint: format!(
                "{FINGERPRINT_VERSION}:{}",
                fingerprint(&[message.as_bytes(), &canonical])
            ),
            legacy: fingerprint(&[message.as_bytes(), payload.to_string().as_bytes()]),
        }
    }

    /// Whether a stored record was made by this same request.
    pub fn matches(&self, record: &IdempotencyRecord) -> bool {
        record.fingerprint == self.fingerprint
            || (!record.fingerprint.contains(':') && record.fingerprint == self.legacy)
    }
}

/// Changes only with the canonical encoding; records of another version
/// never match.
const FINGERPRINT_VERSION: &str = "v1";

/// Canonical JSON: object keys sorted by their UTF-8 bytes at every depth,
/// no whitespace, strings and numbers as serde_json prints them.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(&map[key], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
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
    fn fingerprints_are_versioned_and_pinned_to_the_canonical_encoding() {
        let body = json!({"b": [1, {"y": true, "x": null}], "a": "é"});
        let mut canonical = Vec::new();
        write_canonical(&body, &mut canonical);
        assert_eq!(
            String::from_utf8(canonical).unwrap(),
            r#"{"a":"é","b":[1,{"x":null,"y":true}]}"#
        );
        // Pinned: a change here would refuse every retry stored before it.
        assert_eq!(
            IdempotencyRequest::new("k".into(), "deposit", &json!({"amount": 100})).fingerprint,
            "v1:dbc6a189c8aab40703b723c0f97d33c4e9aa3450534b23da52e332f1c15d3e11"
        );
    }

    #[test]
    fn records_of_the_previous_encoding_match_only_their_own_request() {
        let request = IdempotencyRequest::new("k".into(), "deposit", &json!({"amount": 5}));
        let other = IdempotencyRequest::new("k".into(), "deposit", &json!({"amount": 6}));
        let record = |fingerprint: &str| IdempotencyRecord {
            fingerprint: fingerprint.to_owned(),
            outcome: Ok(troupe_actors::Reply::ok(json!({}))),
        };
        // A record stored before versioning (no `v1:`) still replays...
        assert!(request.matches(&record(&request.legacy)));
        // ...but only for the request that made it.
        assert!(!request.matches(&record(&other.legacy)));
        assert!(request.matches(&record(&request.fingerprint)));
        assert!(!request.matches(&record(&other.fingerprint)));
        // A versioned record is never compared with the legacy encoding.
        assert!(!request.matches(&record(&format!("v0:{}", request.legacy))));
    }

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
