//! What every operation shares, added to the document from one place:
//! its path parameters with their constraints, the headers troupe reads
//! and writes, and the error answers the layers around a handler give
//! (a bad path, query or body, a body too large or not JSON, a full
//! mailbox, a store away, a deadline, an internal error). The handlers'
//! annotations declare only what is their own: bodies, successes and the
//! business errors.

use serde_json::{json, Map, Value};
use troupe_actors::Kind;

/// An id's constraints (API.md: 1 to 128 characters of `[A-Za-z0-9._:-]`).
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// An error answer an operation can give beyond its own.
struct Common {
    status: &'static str,
    description: &'static str,
}

const BAD_REQUEST: Common = Common {
    status: "400",
    description: "invalid_request: a path, query or body that does not parse or is out of range (the message says which)",
};
const TOO_LARGE: Common = Common {
    status: "413",
    description: "payload_too_large: a body over server.max_body_bytes",
};
const NOT_JSON: Common = Common {
    status: "415",
    description: "unsupported_media_type: a body that is not application/json",
};
const OVERLOADED: Common = Common {
    status: "429",
    description:
        "overloaded: the actor's mailbox or the runtime is full; retry after Retry-After seconds",
};
const INTERNAL: Common = Common {
    status: "500",
    description:
        "internal: a bug; the answer's request_id and trace_id find it in the logs and traces. corrupt: the actor's stored data is damaged; it is refused (and named by /readyz) until repaired, and the rest is served",
};
const UNAVAILABLE: Common = Common {
    status: "503",
    description: "unavailable: the store cannot be reached, the actor is restarting too often, or the server is draining; retry after Retry-After seconds",
};
const DEADLINE: Common = Common {
    status: "504",
    description: "deadline_exceeded: the deadline (X-Request-Timeout or runtime.default_timeout_ms) passed first; a write may still have happened: retry with the same Idempotency-Key",
};

/// What an idempotency key is scoped to and how long it lasts.
const IDEMPOTENCY: &str = "1 to 128 visible ASCII characters. Scoped to the actor the request \
addresses (an account for deposits and withdrawals; the transfer's id for transfers): the same \
key with the same body answers the first response again, with Idempotent-Replayed: true; with \
another body it is 422 idempotency_key_reused. Kept at least store.idempotency_retention_s \
(24 hours by default).";

/// Adds what every operation shares to a document (as JSON).
pub fn complete(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (_method, operation) in item.iter_mut() {
            if let Some(operation) = operation.as_object_mut() {
                complete_operation(path, operation);
            }
        }
    }
}

fn complete_operation(path: &str, op: &mut Map<String, Value>) {
    // Everything that sends a message to an actor: the ledger and the
    // actor API's messages (not the catalog or the listing).
    let to_actor = path.starts_with("/v1/accounts")
        || path.starts_with("/v1/transfers")
        || path.matches('/').count() >= 4 && path.starts_with("/v1/actors/");
    let has_body = op.contains_key("requestBody");

    let params = op
        .entry("parameters")
        .or_insert_with(|| json!([]))
        .as_array_mut();
    let Some(params) = params else { return };
    for name in path_parameters(path) {
        let declared = params
            .iter()
            .any(|p| p["name"] == name && p["in"] == "path");
        if !declared {
            params.push(path_parameter(name));
        }
    }
    for p in params.iter_mut().filter(|p| p["name"] == "Idempotency-Key") {
        // The operation's own words first (a transfer's key is its id).
        let own = p["description"].as_str().map(str::to_owned);
        p["description"] = json!(match own {
            Some(own) if !own.is_empty() => format!("{own}. {IDEMPOTENCY}"),
            _ => IDEMPOTENCY.to_owned(),
        });
        p["schema"] = json!({"type": "string", "pattern": "^[\\x21-\\x7E]{1,128}$", "minLength": 1, "maxLength": 128});
        p["example"] = json!("dep-2026-12-06-0001");
    }
    let has_query = params.iter().any(|p| p["in"] == "query");
    let has_path = params.iter().any(|p| p["in"] == "path");
    let idempotent = params.iter().any(|p| p["name"] == "Idempotency-Key");
    params.push(header(
        "X-Request-Id",
        "Echoed on the answer; one is generated when absent or not 1 to 128 visible ASCII characters",
        json!({"type": "string", "pattern": "^[\\x21-\\x7E]{1,128}$"}),
    ));
    params.push(header(
        "tracestate",
        "W3C trace context, carried with traceparent",
        json!({"type": "string"}),
    ));
    params.push(header(
        "traceparent",
        "W3C trace context: the request's spans join the caller's trace, and error bodies carry its trace id",
        json!({"type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"}),
    ));
    // Read by every handler of the API (a bad value is 400); a deadline
    // where a message goes to an actor.
    if path.starts_with("/v1/") && path != "/v1/actors" {
        params.push(header(
            "X-Request-Timeout",
            "The request's deadline in milliseconds, capped by runtime.max_timeout_ms (runtime.default_timeout_ms when absent); not a positive integer: 400",
            json!({"type": "integer", "minimum": 1}),
        ));
    }
    if params.is_empty() {
        op.remove("parameters");
    }

    let mut common = vec![INTERNAL];
    // (Every operation reading X-Request-Timeout has one of these too.)
    if has_path || has_query || has_body {
        common.push(BAD_REQUEST);
    }
    if has_body {
        common.extend([TOO_LARGE, NOT_JSON]);
    }
    if to_actor {
        common.extend([OVERLOADED, UNAVAILABLE, DEADLINE]);
    } else if path.starts_with("/v1/actors/") {
        // The listing reads the store.
        common.push(UNAVAILABLE);
    }
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    for c in common {
        responses
            .entry(c.status)
            .or_insert_with(|| error_response(c.description));
    }
    for (status, response) in responses.iter_mut() {
        let Some(response) = response.as_object_mut() else {
            continue;
        };
        let headers = response
            .entry("headers")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        let Some(headers) = headers else { continue };
        headers.insert(
            "X-Request-Id".into(),
            json!({"description": "The request's id (the one sent, or a generated one)", "schema": {"type": "string"}}),
        );
        if status == "429" || status == "503" {
            headers.insert(
                "Retry-After".into(),
                json!({"description": "Seconds to wait before retrying (server.retry_after_s)", "schema": {"type": "integer", "minimum": 0}}),
            );
        }
        if idempotent && status.starts_with('2') {
            headers.insert(
                "Idempotent-Replayed".into(),
                json!({"description": "true when this answer replays the first one given for the Idempotency-Key", "schema": {"type": "string", "enum": ["true"]}}),
            );
        }
        if status == "401" {
            headers.insert(
                "WWW-Authenticate".into(),
                json!({"description": "Bearer realm=\"troupe\"", "schema": {"type": "string"}}),
            );
        }
    }
}

/// The `{name}`s of a path template.
fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

fn path_parameter(name: &str) -> Value {
    let (description, schema, example) = match name {
        "kind" => (
            "The actor kind",
            json!({"type": "string", "enum": Kind::ALL.map(Kind::as_str)}),
            json!("account"),
        ),
        "message" => (
            "The message's name (GET /v1/actors lists each kind's)",
            json!({"type": "string", "pattern": "^[a-z_]{1,64}$"}),
            json!("deposit"),
        ),
        _ => (
            "The actor's id: 1 to 128 characters of [A-Za-z0-9._:-]",
            json!({"type": "string", "pattern": ID_PATTERN, "minLength": 1, "maxLength": 128}),
            json!("alice"),
        ),
    };
    json!({
        "name": name,
        "in": "path",
        "required": true,
        "description": description,
        "schema": schema,
        "example": example,
    })
}

fn header(name: &str, description: &str, schema: Value) -> Value {
    json!({
        "name": name,
        "in": "header",
        "required": false,
        "description": description,
        "schema": schema,
    })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    })
}
