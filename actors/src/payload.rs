//! How a message's JSON payload becomes a typed command: strict parsing,
//! and the catalogue entry that documents each message.

use serde::Serialize;
use serde_json::Value;

use crate::domain::ParseError;

/// One message of a kind, as listed by `GET /v1/actors`.
#[derive(Debug, Clone, Serialize)]
pub struct MessageSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// JSON Schema of the payload.
    pub payload: Value,
}

impl MessageSpec {
    pub fn new<T: utoipa::PartialSchema>(name: &'static str, description: &'static str) -> Self {
        let payload = serde_json::to_value(T::schema()).unwrap_or(Value::Null);
        Self {
            name,
            description,
            payload,
        }
    }
}

/// Deserialises a payload strictly: `null` stands for `{}`, unknown fields
/// and wrong types are refused with serde's message.
///
/// # Errors
/// When the payload does not match `T`.
pub fn payload<T: serde::de::DeserializeOwned>(payload: Value) -> Result<T, ParseError> {
    let payload = match payload {
        Value::Null => Value::Object(Default::default()),
        object @ Value::Object(_) => object,
        // serde would read a struct from an array too; payloads are objects.
        other => {
            return Err(ParseError::new(format!(
                "the payload must be a JSON object, got {other}"
            )));
        }
    };
    serde_json::from_value(payload).map_err(|e| ParseError::new(e.to_string()))
}
