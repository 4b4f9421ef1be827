//! Who may do what: bearer API keys with scopes and id prefixes.
//!
//! A key is a random token the client sends as `Authorization: Bearer
//! <token>`; troupe keeps only its SHA-256, in a TOML file (`auth.keys_file`)
//! that is read at start and again whenever it changes:
//!
//! ```toml
//! [[key]]
//! name = "payments"                       # in logs and metrics, never the secret
//! sha256 = "<hex sha-256 of the token>"
//! scopes = ["ledger:read", "ledger:write"]
//! ids = "pay-"                            # optional: only ids starting with this
//! ```
//!
//! Every request but the open ones (`/healthz`, `/readyz`, `/openapi.json`)
//! needs a key when `auth.enabled`; the route decides the scope:
//! `ledger:read` (GET accounts, entries, transfers), `ledger:write` (the
//! other ledger routes), `actors:send` (`/v1/actors/...`), `ops:read`
//! (`/metrics`, `/config`). No or malformed credentials, or a token no key
//! has, answer `401` with `WWW-Authenticate: Bearer`; a key without the
//! scope, or an id outside its prefix, `403`. A transfer needs the prefix
//! on its own id and on both accounts (checked where its body is read).
//! Each refusal is counted by key name and reason and logged once, without
//! the token. The token's digest is compared with every key's in constant
//! time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use prometheus::IntCounterVec;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use troupe_actors::ErrorCode;

use crate::http::ops::{HEALTH, OPERATIONS};
use crate::http::ApiError;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    LedgerRead,
    LedgerWrite,
    ActorsSend,
    OpsRead,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Self::LedgerRead,
        Self::LedgerWrite,
        Self::ActorsSend,
        Self::OpsRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LedgerRead => "ledger:read",
            Self::LedgerWrite => "ledger:write",
            Self::ActorsSend => "actors:send",
            Self::OpsRead => "ops:read",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    sha256: String,
    scopes: Vec<String>,
    #[serde(default)]
    ids: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

/// One key as troupe holds it: its name, the token's digest, its grants.
#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    digest: [u8; 32],
    scopes: Vec<Scope>,
    /// Only ids starting with this, when set.
    pub ids: Option<String>,
}

/// Every key of the keys file.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    /// Reads and checks a keys file.
    ///
    /// # Errors
    /// An unreadable file, bad TOML, a digest that is not 64 hex digits,
    /// an unknown scope, a duplicate name or digest: the message says which.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// # Errors
    /// As [`KeyRing::load`].
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: KeysFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut keys: Vec<Key> = Vec::with_capacity(file.key.len());
        for entry in file.key {
            let name = entry.name.trim().to_owned();
            if name.is_empty() {
                return Err("a key has an empty name".into());
            }
            let digest = parse_digest(&entry.sha256)
                .ok_or_else(|| format!("key {name}: sha256 must be 64 hex digits"))?;
            let scopes = entry
                .scopes
                .iter()
                .map(|s| {
                    Scope::parse(s).ok_or_else(|| {
                        format!(
                            "key {name}: unknown scope {s:?} (known: {})",
                            Scope::ALL.map(Scope::as_str).join(", ")
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if name == "none" {
                return Err("a key may not be named none (the metrics' label for no key)".into());
            }
            if entry.ids.as_deref() == Some("") {
                return Err(format!(
                    "key {name}: ids is empty; leave it out for a key without a prefix"
                ));
            }
            if keys.iter().any(|k| k.name == name) {
                return Err(format!("two keys are named {name}"));
            }
            if keys.iter().any(|k| k.digest == digest) {
                return Err(format!("key {name} has the digest of another key"));
            }
            keys.push(Key {
                name,
                digest,
                scopes,
                ids: entry.ids,
            });
        }
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key whose token this is: every key's digest is compared, in
    /// constant time, whatever matched before.
    fn find(&self, token: &str) -> Option<&Key> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The hex SHA-256 of a token, as the keys file holds it.
pub fn digest_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh random token: `trp_` and 64 hex digits (256 bits from the
/// operating system's generator).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("trp_{hex}")
}

/// What the request was granted, for handlers that check ids in bodies.
#[derive(Debug, Clone)]
pub struct Grant {
    pub key: String,
    pub ids: Option<String>,
}

impl Grant {
    pub fn permits(&self, id: &str) -> bool {
        self.ids
            .as_deref()
            .is_none_or(|prefix| id.starts_with(prefix))
    }
}

/// The authenticator every worker shares.
pub struct Auth {
    enabled: bool,
    ring: ArcSwap<KeyRing>,
    metrics: AuthMetrics,
}

/// What the authenticator reports in `/metrics`.
pub struct AuthMetrics {
    /// Refusals by key name and reason.
    pub denied: IntCounterVec,
    /// Keys in force.
    pub keys: prometheus::IntGauge,
    /// Reloads of the keys file by result.
    pub reloads: IntCounterVec,
}

/// Why a request was refused, as counted.
#[derive(Debug, Clone, Copy)]
pub enum Denial {
    Missing,
    Malformed,
    UnknownKey,
    Scope,
    Ids,
}

impl Denial {
    fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::Scope => "scope",
            Self::Ids => "ids",
        }
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Open,
    Scope(Scope),
    /// A path no route has: answered 404 before any credentials.
    Unknown,
}

impl Auth {
    pub fn new(enabled: bool, ring: KeyRing, metrics: AuthMetrics) -> Self {
        metrics
            .keys
            .set(i64::try_from(ring.len()).unwrap_or(i64::MAX));
        Self {
            enabled,
            ring: ArcSwap::from_pointee(ring),
            metrics,
        }
    }

    /// Counts and logs a refusal, and builds its answer.
    pub fn deny(&self, req: &actix_web::HttpRequest, key: &str, why: Denial) -> ApiError {
        self.metrics
            .denied
            .with_label_values(&[key, why.as_str()])
            .inc();
        match why {
            // Anyone can send these: a line each would let them fill the logs.
            Denial::Missing | Denial::Malformed | Denial::UnknownKey => {
                tracing::debug!(auth.key = key, auth.reason = why.as_str(), http.target = %req.path(), "request refused");
            }
            Denial::Scope | Denial::Ids => {
                tracing::info!(auth.key = key, auth.reason = why.as_str(), http.target = %req.path(), "request refused");
            }
        }
        let (code, message) = match why {
            Denial::Missing => (
                ErrorCode::Unauthorized,
                "this route needs an API key: Authorization: Bearer <token>".to_owned(),
            ),
            Denial::Malformed => (
                ErrorCode::Unauthorized,
                "the Authorization header must be: Bearer <token>".to_owned(),
            ),
            Denial::UnknownKey => (ErrorCode::Unauthorized, "unknown API key".to_owned()),
            Denial::Scope => (
                ErrorCode::Forbidden,
                format!("key {key} lacks the scope this route needs"),
            ),
            Denial::Ids => (
                ErrorCode::Forbidden,
                format!("key {key} may not act on this id"),
            ),
        };
        ApiError::for_request(req, code, message)
    }

    fn replace(&self, ring: KeyRing, result: &str) {
        self.metrics
            .keys
            .set(i64::try_from(ring.len()).unwrap_or(i64::MAX));
        self.metrics.reloads.with_label_values(&[result]).inc();
        self.ring.store(Arc::new(ring));
    }

    /// Re-reads the keys file whenever its directory changes; a file that
    /// does not parse leaves the keys in force (and logs why).
    ///
    /// # Errors
    /// When the directory cannot be watched.
    pub fn watch(
        self: &Arc<Self>,
        background: &crate::background::Background,
        path: PathBuf,
    ) -> notify::Result<notify::RecommendedWatcher> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.try_send(());
                }
            })?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."))
            .to_path_buf();
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let auth = self.clone();
        background.spawn(async move {
            while rx.recv().await.is_some() {
                tokio::time::sleep(Duration::from_millis(150)).await;
                while rx.try_recv().is_ok() {}
                match KeyRing::load(&path) {
                    Ok(ring) => {
                        tracing::info!(keys = ring.len(), "API keys reloaded");
                        auth.replace(ring, "applied");
                    }
                    // Deleting the file revokes every key.
                    Err(_) if !path.exists() => {
                        tracing::warn!(file = %path.display(), "the keys file is gone: no API key is accepted");
                        auth.replace(KeyRing::default(), "gone");
                    }
                    Err(e) => {
                        tracing::error!(error.message = %e, "API keys not reloaded; the previous keys stay in force");
                        auth.metrics.reloads.with_label_values(&["rejected"]).inc();
                    }
                }
            }
        });
        Ok(watcher)
    }
}

/// The scope a request needs, from its method and the path as the router
/// sees it ([`router_path`]). A path no route has is refused outright,
/// never let through: the list here and the routes must agree, and a
/// route missing from it answers 404 rather than open.
fn need(method: &Method, path: &str) -> Need {
    if HEALTH.contains(&path) || path == "/openapi.json" {
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
fn path_id(path: &str) -> Option<String> {
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
fn bearer(value: &header::HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Decides a request: the grant it goes on with, or the refusal.
fn decide(auth: &Auth, req: &ServiceRequest) -> Result<Option<Grant>, ApiError> {
    if !auth.enabled {
        return Ok(None);
    }
    let path = router_path(req.path());
    let need = need(req.method(), &path);
    match need {
        Need::Open => return Ok(None),
        Need::Unknown => {
            return Err(ApiError::for_request(
                req.request(),
                ErrorCode::NotFound,
                format!("no route for {} {}", req.method(), req.path()),
            ))
        }
        Need::Scope(_) => {}
    }
    let token = match req.headers().get(header::AUTHORIZATION) {
        None => return Err(auth.deny(req.request(), "none", Denial::Missing)),
        Some(value) => match bearer(value) {
            Some(token) => token,
            None => return Err(auth.deny(req.request(), "none", Denial::Malformed)),
        },
    };
    let ring = auth.ring.load();
    let Some(key) = ring.find(token) else {
        return Err(auth.deny(req.request(), "none", Denial::UnknownKey));
    };
    if let Need::Scope(scope) = need {
        if !key.scopes.contains(&scope) {
            return Err(auth.deny(req.request(), &key.name, Denial::Scope));
        }
    }
    let grant = Grant {
        key: key.name.clone(),
        ids: key.ids.clone(),
    };
    if let Some(id) = path_id(&path) {
        if !grant.permits(&id) {
            return Err(auth.deny(req.request(), &key.name, Denial::Ids));
        }
    }
    Ok(Some(grant))
}

/// The middleware: authenticates, authorises by route, and leaves the
/// [`Grant`] in the request's extensions. Refusals are answers, not
/// errors, so the middlewares around it (request ids) still see them.
pub async fn check(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(auth) = req.app_data::<web::Data<Auth>>().cloned() else {
        // Installed without its keys: refuse rather than run open.
        let error = ApiError::for_request(
            req.request(),
            ErrorCode::Internal,
            "authentication is not configured",
        );
        return Ok(req.error_response(error).map_into_right_body());
    };
    match decide(&auth, &req) {
        Ok(grant) => {
            if let Some(grant) = grant {
                req.extensions_mut().insert(grant);
            }
            next.call(req)
                .await
                .map(ServiceResponse::map_into_left_body)
        }
        Err(error) => Ok(req.error_response(error).map_into_right_body()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_their_scopes() {
        assert_eq!(need(&Method::GET, "/healthz"), Need::Open);
        assert_eq!(need(&Method::GET, "/openapi.json"), Need::Open);
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
    fn a_keys_file_is_checked() {
        let digest = digest_hex("t");
        let ok =
            format!("[[key]]\nname = \"a\"\nsha256 = \"{digest}\"\nscopes = [\"ledger:read\"]\n");
        let ring = KeyRing::parse(&ok).unwrap();
        assert_eq!(ring.find("t").map(|k| k.name.as_str()), Some("a"));
        assert!(ring.find("u").is_none());
        assert!(KeyRing::parse(&ok.replace("ledger:read", "ledger:all")).is_err());
        assert!(KeyRing::parse(&ok.replace(&digest, "abc")).is_err());
        assert!(KeyRing::parse(&format!("{ok}{}", ok.replace("\"a\"", "\"b\""))).is_err());
        assert_eq!(decode("pay%2D1", &[]), "pay-1");
        assert_eq!(
            decode("%+1x%zz%", &[]),
            "%+1x%zz%",
            "only two hex digits are an escape"
        );
        assert!(KeyRing::parse(&ok.replace("scopes", "ids = \"\"\nscopes")).is_err());
        let h = |v: &str| header::HeaderValue::from_str(v).unwrap();
        assert_eq!(bearer(&h("bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
    }
}
