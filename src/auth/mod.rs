//! Who may do what: bearer API keys and an identity provider's JWTs,
//! with scopes and id prefixes.
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
//!
//! With `auth.jwt` configured, a bearer token that is no key and has a
//! JWT's shape is verified as the identity provider's ([`jwt`]): its
//! `scope` claim grants the scopes, and each way it can fail (expired,
//! not yet valid, issuer, audience, signature, malformed) is a `401` with
//! its own reason. Its grants are counted under the key name `jwt`, and
//! logged with its subject.
//!
//! # Layout
//! `keys.rs` the keys file; `jwt.rs` token verification; `routes.rs`
//! which scope a request needs; here the middleware that decides.

mod jwt;
mod keys;
mod routes;

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use arc_swap::ArcSwap;
use prometheus::IntCounterVec;
use troupe_actors::ErrorCode;

pub use jwt::{looks_like_jwt, Jwt, Rejection};
pub use keys::{digest_hex, new_token, Key, KeyRing};
pub(crate) use routes::router_path;

use crate::background::Background;
use crate::http::ApiError;
use routes::{bearer, need, path_id, Need};

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

/// What the request was granted, for handlers that check ids in bodies.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The key's name, or `jwt` for an identity provider's token: the
    /// metrics' label (bounded: a token's subject never is one).
    pub key: String,
    /// Who, in logs and answers: the key's name, or `jwt:<sub>`.
    pub who: String,
    /// Only ids starting with this, when set.
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
    jwt: Option<Jwt>,
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
    /// A JWT that does not verify.
    Token(Rejection),
    Scope,
    Ids,
}

impl Denial {
    fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::Token(Rejection::Expired) => "jwt_expired",
            Self::Token(Rejection::NotYetValid) => "jwt_not_yet_valid",
            Self::Token(Rejection::Issuer) => "jwt_issuer",
            Self::Token(Rejection::Audience) => "jwt_audience",
            Self::Token(Rejection::Signature) => "jwt_signature",
            Self::Token(Rejection::Invalid) => "jwt_invalid",
            Self::Scope => "scope",
            Self::Ids => "ids",
        }
    }

    /// The answer's code and message; `who` is the key's name or the
    /// token's subject.
    fn answer(self, who: &str) -> (ErrorCode, String) {
        let unauthorized = |m: &str| (ErrorCode::Unauthorized, m.to_owned());
        match self {
            Self::Missing => {
                unauthorized("this route needs credentials: Authorization: Bearer <token>")
            }
            Self::Malformed => unauthorized("the Authorization header must be: Bearer <token>"),
            Self::UnknownKey => unauthorized("unknown API key"),
            Self::Token(Rejection::Expired) => unauthorized("the token has expired"),
            Self::Token(Rejection::NotYetValid) => unauthorized("the token is not valid yet"),
            Self::Token(Rejection::Issuer) => unauthorized("the token's issuer is not trusted"),
            Self::Token(Rejection::Audience) => unauthorized("the token is not for this service"),
            Self::Token(Rejection::Signature) => unauthorized("the token's signature is invalid"),
            Self::Token(Rejection::Invalid) => unauthorized(
                "the token is not a valid JWT for this service (claims exp, iss and aud are needed)",
            ),
            Self::Scope => (
                ErrorCode::Forbidden,
                format!("{who} lacks the scope this route needs"),
            ),
            Self::Ids => (
                ErrorCode::Forbidden,
                format!("{who} may not act on this id"),
            ),
        }
    }
}

impl Auth {
    pub fn new(enabled: bool, ring: KeyRing, jwt: Option<Jwt>, metrics: AuthMetrics) -> Self {
        metrics
            .keys
            .set(i64::try_from(ring.len()).unwrap_or(i64::MAX));
        Self {
            enabled,
            ring: ArcSwap::from_pointee(ring),
            jwt,
            metrics,
        }
    }

    /// Counts and logs a refusal, and builds its answer; `grant` is what
    /// the credentials were, when they were valid.
    pub fn deny(
        &self,
        req: &actix_web::HttpRequest,
        grant: Option<&Grant>,
        why: Denial,
    ) -> ApiError {
        let (key, who) = grant.map_or(("none", "none"), |g| (g.key.as_str(), g.who.as_str()));
        self.metrics
            .denied
            .with_label_values(&[key, why.as_str()])
            .inc();
        match why {
            // Anyone can send these: a line each would let them fill the logs.
            Denial::Missing | Denial::Malformed | Denial::UnknownKey | Denial::Token(_) => {
                tracing::debug!(auth.key = who, auth.reason = why.as_str(), http.target = %req.path(), "request refused");
            }
            Denial::Scope | Denial::Ids => {
                tracing::info!(auth.key = who, auth.reason = why.as_str(), http.target = %req.path(), "request refused");
            }
        }
        let (code, message) = why.answer(who);
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
    pub fn watch_keys(
        self: &Arc<Self>,
        background: &Background,
        path: PathBuf,
    ) -> notify::Result<notify::RecommendedWatcher> {
        let auth = self.clone();
        let dir = crate::watch::parent_dir(&path);
        crate::watch::dirs(background, [dir], move || match KeyRing::load(&path) {
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
        })
    }

    /// Re-reads the JWT public key file whenever its directory changes
    /// (key rotation); a key that does not load leaves the one in force.
    /// `None` when no key file is configured.
    ///
    /// # Errors
    /// When the directory cannot be watched.
    pub fn watch_jwt_key(
        self: &Arc<Self>,
        background: &Background,
    ) -> Option<notify::Result<notify::RecommendedWatcher>> {
        let path = self.jwt.as_ref()?.key_file()?;
        let auth = self.clone();
        let dir = crate::watch::parent_dir(&path);
        Some(crate::watch::dirs(background, [dir], move || {
            let Some(jwt) = &auth.jwt else { return };
            match jwt.reload() {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "JWT public key reloaded");
                    auth.metrics
                        .reloads
                        .with_label_values(&["jwt_applied"])
                        .inc();
                }
                Err(e) => {
                    tracing::error!(error.message = %e, "JWT public key not reloaded; the key in force stays");
                    auth.metrics
                        .reloads
                        .with_label_values(&["jwt_rejected"])
                        .inc();
                }
            }
        }))
    }

    /// Who the credentials are: a key of the keys file, or a token the
    /// identity provider signed.
    fn authenticate(
        &self,
        req: &ServiceRequest,
        token: &str,
    ) -> Result<(Grant, Vec<Scope>), ApiError> {
        if let Some(key) = self.ring.load().find(token) {
            let grant = Grant {
                key: key.name.clone(),
                who: format!("key {}", key.name),
                ids: key.ids.clone(),
            };
            return Ok((grant, key.scopes.clone()));
        }
        let Some(jwt) = self.jwt.as_ref().filter(|_| looks_like_jwt(token)) else {
            return Err(self.deny(req.request(), None, Denial::UnknownKey));
        };
        match jwt.verify(token) {
            Ok(claims) => {
                let grant = Grant {
                    key: "jwt".to_owned(),
                    who: format!("token of {}", claims.subject),
                    ids: claims.ids,
                };
                Ok((grant, claims.scopes))
            }
            Err(why) => Err(self.deny(req.request(), None, Denial::Token(why))),
        }
    }
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
        None => return Err(auth.deny(req.request(), None, Denial::Missing)),
        Some(value) => match bearer(value) {
            Some(token) => token,
            None => return Err(auth.deny(req.request(), None, Denial::Malformed)),
        },
    };
    let (grant, scopes) = auth.authenticate(req, token)?;
    if let Need::Scope(scope) = need {
        if !scopes.contains(&scope) {
            return Err(auth.deny(req.request(), Some(&grant), Denial::Scope));
        }
    }
    if let Some(id) = path_id(&path) {
        if !grant.permits(&id) {
            return Err(auth.deny(req.request(), Some(&grant), Denial::Ids));
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
