//! JWTs from an organisation's identity provider (`auth.jwt`).
//!
//! A token is trusted when its signature verifies with the configured key
//! (an HS256 secret, or an RSA or EC public key in PEM), its `iss` and
//! `aud` are the configured ones, and the clock is between its `nbf` and
//! `exp` (both with `leeway_s` of skew; `exp`, `iss` and `aud` must be
//! present). The algorithms accepted follow from the key, never from the
//! token's header, so an RSA public key cannot be replayed as an HMAC
//! secret. Scopes come from the standard `scope` claim (space-separated;
//! scopes troupe does not know, such as `openid`, are ignored); with
//! `ids_claim` set, that claim is the token's id prefix, as a key's `ids`.
//! The public key file is re-read when it changes (key rotation); a file
//! that does not parse keeps the key in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::Scope;
use crate::settings::JwtSettings;

/// An HS256 secret shorter than the hash (RFC 7518, 3.2) is refused.
const MIN_SECRET_BYTES: usize = 32;

/// The key and the checks a token must pass; replaced whole on a reload.
struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

/// Verifies the identity provider's tokens.
pub struct Jwt {
    verifier: ArcSwap<Verifier>,
    settings: JwtSettings,
}

/// What a verified token grants.
#[derive(Debug)]
pub struct Claims {
    /// `sub`, for logs.
    pub subject: String,
    pub scopes: Vec<Scope>,
    pub ids: Option<String>,
}

/// Why a token was refused; each is counted under its own reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    Signature,
    /// Not a JWT, a claim missing or mistyped, an algorithm the key does
    /// not allow.
    Invalid,
}

/// Whether a bearer token has a JWT's shape (three dot-separated parts);
/// API keys never do.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

impl Jwt {
    /// The verifier `settings` describe, or `None` when they name no key.
    ///
    /// # Errors
    /// A key file that cannot be read or parsed, a secret too short, an
    /// issuer or audience missing: the message says which.
    pub fn from_settings(settings: &JwtSettings) -> Result<Option<Self>, String> {
        if !settings.is_configured() {
            return Ok(None);
        }
        if settings.issuer.trim().is_empty() || settings.audience.trim().is_empty() {
            return Err(
                "auth.jwt needs both issuer and audience: tokens minted for another service must not pass"
                    .into(),
            );
        }
        let verifier = build(settings)?;
        Ok(Some(Self {
            verifier: ArcSwap::from_pointee(verifier),
            settings: settings.clone(),
        }))
    }

    /// The public key file, when the key is one (to watch it).
    pub fn key_file(&self) -> Option<PathBuf> {
        match self.settings.public_key_file.trim() {
            "" => None,
            path => Some(PathBuf::from(path)),
        }
    }

    /// Re-reads the public key file; on an error the key in force stays.
    ///
    /// # Errors
    /// As [`Jwt::from_settings`].
    pub fn reload(&self) -> Result<(), String> {
        self.verifier.store(Arc::new(build(&self.settings)?));
        Ok(())
    }

    /// Verifies `token` and reads what it grants.
    ///
    /// # Errors
    /// The [`Rejection`] that applies first.
    pub fn verify(&self, token: &str) -> Result<Claims, Rejection> {
        let verifier = self.verifier.load();
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &verifier.key, &verifier.validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => Rejection::Expired,
                    ErrorKind::ImmatureSignature => Rejection::NotYetValid,
                    ErrorKind::InvalidIssuer => Rejection::Issuer,
                    ErrorKind::InvalidAudience => Rejection::Audience,
                    ErrorKind::InvalidSignature => Rejection::Signature,
                    _ => Rejection::Invalid,
                })?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        let scopes = match claims.get("scope") {
            None => Vec::new(),
            Some(Value::String(s)) => s.split_whitespace().filter_map(Scope::parse).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .filter_map(Scope::parse)
                .collect(),
            Some(_) => return Err(Rejection::Invalid),
        };
        let ids = match self.settings.ids_claim.trim() {
            "" => None,
            // A token without its prefix would be unrestricted: refused.
            claim => match claims.get(claim) {
                Some(Value::String(prefix)) if !prefix.is_empty() => Some(prefix.clone()),
                _ => return Err(Rejection::Invalid),
            },
        };
        Ok(Claims {
            subject,
            scopes,
            ids,
        })
    }
}

/// The key and the validation the settings describe.
fn build(settings: &JwtSettings) -> Result<Verifier, String> {
    let (key, algorithms) = match (
        settings.hs256_secret.as_str(),
        settings.public_key_file.trim(),
    ) {
        (secret, "") => {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "auth.jwt.hs256_secret must be at least {MIN_SECRET_BYTES} bytes"
                ));
            }
            let key = DecodingKey::from_secret(secret.as_bytes())
                .map_err(|e| format!("auth.jwt.hs256_secret: {e}"))?;
            (key, vec![Algorithm::HS256])
        }
        ("", path) => public_key(Path::new(path))?,
        _ => return Err("auth.jwt: set hs256_secret or public_key_file, not both".into()),
    };
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms;
    validation.leeway = settings.leeway_s;
    validation.validate_nbf = true;
    validation.set_issuer(&[settings.issuer.trim()]);
    validation.set_audience(&[settings.audience.trim()]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    Ok(Verifier { key, validation })
}

/// An RSA or EC public key in PEM, and the algorithms it verifies.
fn public_key(path: &Path) -> Result<(DecodingKey, Vec<Algorithm>), String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("auth.jwt.public_key_file {}: {e}", path.display()))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((
            key,
            vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
        ));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, vec![Algorithm::ES256, Algorithm::ES384]));
    }
    Err(format!(
        "auth.jwt.public_key_file {}: not an RSA or EC public key in PEM",
        path.display()
    ))
}
