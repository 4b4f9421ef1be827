//! Which scope a request needs, read from the path as actix's router
//! decodes it, and the id in it that a key's prefix must cover.

use actix_web::http::{header, Method};

use super::Scope;
use crate::http::ops::{HEALTH, OPERATIONS};
use crate::http::{DOCS, DOCUMENT};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    Open,
    Scope(Scope),
    /// A path no route has: answered 404 before any credentials.
    Unknown,
}

/// The scope a request needs, from its method and the path as the router
/// sees it ([`router_path`]). A path no route has is refused outright,
/// never let through: the list here and the routes must agree, and a
/// route missing from it answers 404 rather than open.
pub(super) fn need(method: &Method, path: &str) -> Need {
    let docs = path == DOCS
        || path
            .strip_prefix(DOCS)
            .is_some_and(|rest| rest.starts_with('/'));
    if HEALTH.contains(&path) || path == DOCUMENT || docs {
        return Need::Open;
    }
    if OPERATIONS.contains(&path) {
        return Need::Scope(Scope::OpsRead);
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "actors", ..] => Need::Scope(Scope::ActorsSend),
        ["v1", "accounts" | "transfers", ..] => {
            if method == Method::GET || method == Method::HEAD {
                Need::Scope(Scope::LedgerRead)
            } else {
                Need::Scope(Scope::LedgerWrite)
            }
        }
        _ => Need::Unknown,
    }
}

/// The id in a router path that a key's prefix must cover: an account's,
/// a transfer's, an actor's; decoded as the handler's extractor decodes it.
pub(super) fn path_id(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "accounts" | "transfers", id, ..] => Some(decode(id, &[])),
        ["v1", "actors", _kind, id, ..] => Some(decode(id, &[])),
        _ => None,
    }
}

/// The path as actix's router matches it: every `%XX` decoded except `/`,
/// `%` and `+` (actix-router's `Url`), so `/v1/%61ccounts/x` is classified
/// as the `/v1/accounts/{id}` it is routed to.
pub(crate) fn router_path(path: &str) -> String {
    decode(path, b"/%+")
}

/// Percent-decodes `s`, leaving the bytes in `kept` encoded.
fn decode(s: &str, kept: &[u8]) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits exactly (`from_str_radix` would take a `+`).
            let digit = |j: usize| bytes.get(j).and_then(|b| char::from(*b).to_digit(16));
            if let (Some(high), Some(low)) = (digit(i + 1), digit(i + 2)) {
                let b = (high * 16 + low) as u8;
                if !kept.contains(&b) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The token of an `Authorization: Bearer <token>` header (the scheme's
/// name in any case).
pub(super) fn bearer(value: &header::HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_their_scopes() {
        assert_eq!(need(&Method::GET, "/healthz"), Need::Open);
        assert_eq!(need(&Method::GET, "/openapi.json"), Need::Open);
        assert_eq!(need(&Method::GET, "/docs"), Need::Open);
        assert_eq!(need(&Method::GET, "/docs/index.html"), Need::Open);
        assert_eq!(need(&Method::GET, "/docsx"), Need::Unknown);
        assert_eq!(need(&Method::GET, "/metrics"), Need::Scope(Scope::OpsRead));
        assert_eq!(
            need(&Method::GET, "/v1/accounts/a/entries"),
            Need::Scope(Scope::LedgerRead)
        );
        assert_eq!(
            need(&Method::PUT, "/v1/accounts/a"),
            Need::Scope(Scope::LedgerWrite)
        );
        assert_eq!(
            need(&Method::POST, "/v1/actors/account/a/get"),
            Need::Scope(Scope::ActorsSend)
        );
        assert_eq!(need(&Method::GET, "/elsewhere"), Need::Unknown);
        assert_eq!(
            path_id("/v1/accounts/pay-1/deposits").as_deref(),
            Some("pay-1")
        );
        assert_eq!(
            path_id("/v1/actors/account/pay-2/deposit").as_deref(),
            Some("pay-2")
        );
        assert_eq!(path_id("/v1/transfers"), None);
        // As the router decodes: a route's name in escapes is still that route.
        assert_eq!(router_path("/v1/%61ccounts/x"), "/v1/accounts/x");
        assert_eq!(router_path("/v1/accounts/a%2Fb"), "/v1/accounts/a%2Fb");
        assert_eq!(
            path_id(&router_path("/v1/accounts/%70ay-1")).as_deref(),
            Some("pay-1")
        );
    }

    #[test]
    fn only_two_hex_digits_are_an_escape_and_bearer_is_any_case() {
        assert_eq!(decode("pay%2D1", &[]), "pay-1");
        assert_eq!(decode("%+1x%zz%", &[]), "%+1x%zz%");
        let h = |v: &str| header::HeaderValue::from_str(v).unwrap();
        assert_eq!(bearer(&h("bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
    }
}
