//! What an account answers, as typed views: the same types serialise the
//! replies and describe them in the OpenAPI document, so the two cannot
//! drift apart.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::Entry;
use crate::domain::{ActorId, Currency};

/// An account: `GET /v1/accounts/{id}`, `PUT /v1/accounts/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccountView {
    #[schema(value_type = String, example = "alice")]
    pub id: ActorId,
    #[schema(value_type = String, example = "EUR")]
    pub currency: Currency,
    /// Minor units; below zero only within the overdraft limit.
    pub balance: i64,
    pub overdraft_limit: u64,
    /// Counts the account's durable changes.
    pub version: u64,
}

/// The answer to a deposit or a withdrawal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Movement {
    pub entry: Entry,
    pub balance: i64,
    pub version: u64,
}

/// A page of the journal, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EntriesPage {
    pub entries: Vec<Entry>,
    /// Pass as `after` for the next page; null on the last.
    pub next: Option<u64>,
}

/// A view as a reply body. Views are plain data: serialising one cannot fail.
pub(crate) fn body(view: &impl Serialize) -> Value {
    serde_json::to_value(view).unwrap_or(Value::Null)
}
