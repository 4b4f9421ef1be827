//! JWTs from an organisation's identity provider (`auth.jwt`).
//!
//! A token is trusted when its signature verifies with the configured key
//! (an HS256 secret, or an RSA or EC public key in PEM), its `iss` and
//! `aud` are the configured ones, and the clock is between its `nbf` and
//! `exp` (both with `leeway_s` of skew; `exp`, `iss` and `aud` must be
//! present). The algorithms accepted follow from the key, never from the
//! token's header, so an RSA public key cannot be replayed as an HMAC
//! secret. Scopes come from the standard `scope` claim (space-separated)
//! and from `scp` (Okta's list, Entra ID's string), joined; scopes troupe
//! does not know, such as `openid`, are ignored. With `ids_claim` set,
//! that claim is the token's id prefix, as a key's `ids`.
//!
//! The public key file may hold several keys (PEM blocks one after the
//! other): a token passes if one of them verifies it, so a provider's key
//! rotation is done in two edits (add the new key, later remove the old
//! one) with no token refused between. The file is re-read when it
//! changes; a file that does not parse keeps the keys in force.

use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lru::LruCache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use thread_local::ThreadLocal;

use super::Scope;
use crate::settings::JwtSettings;

/// One key and the checks a token must pass with it.
struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

/// Verifies the identity provider's tokens.
pub struct Jwt {
    /// Every key in force; replaced whole on a reload.
    verifiers: ArcSwap<Vec<Verifier>>,
    /// Bumped by each reload: remembered tokens of an older one are
    /// verified again.
    generation: AtomicU64,
    /// Verified tokens by their digest, per worker thread (no lock).
    cache: ThreadLocal<RefCell<LruCache<[u8; 32], Remembered>>>,
    settings: JwtSettings,
}

/// A verified token, good until `exp` (plus the leeway).
struct Remembered {
    claims: Claims,
    exp: u64,
    generation: u64,
}

/// What a verified token grants.
#[derive(Debug, Clone)]
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

/// Why the JWT settings or key file give no verifier.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Settings that cannot verify safely ([`JwtSettings::problem`]).
    #[error("{key}: {reason}")]
    Settings {
        key: &'static str,
        reason: &'static str,
    },
    #[error("auth.jwt.hs256_secret: {0}")]
    Secret(jsonwebtoken::errors::Error),
    #[error("auth.jwt.public_key_file {path}: {problem}")]
    KeyFile { path: String, problem: String },
}

impl Jwt {
    /// The verifier `settings` describe, or `None` when they name no key.
    ///
    /// # Errors
    /// A key file that cannot be read or parsed, a secret too short, an
    /// issuer or audience missing: the message says which.
    pub fn from_settings(settings: &JwtSettings) -> Result<Option<Self>, JwtError> {
        if !settings.is_configured() {
            return Ok(None);
        }
        if let Some((key, _, reason)) = settings.problem() {
            return Err(JwtError::Settings { key, reason });
        }
        let verifiers = build(settings)?;
        Ok(Some(Self {
            verifiers: ArcSwap::from_pointee(verifiers),
            generation: AtomicU64::new(0),
            cache: ThreadLocal::new(),
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
    pub fn reload(&self) -> Result<(), JwtError> {
        self.verifiers.store(Arc::new(build(&self.settings)?));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Verifies `token` and reads what it grants.
    ///
    /// # Errors
    /// The [`Rejection`] that applies first.
    pub fn verify(&self, token: &str) -> Result<Claims, Rejection> {
        let Some(size) = NonZeroUsize::new(self.settings.cache_size) else {
            return self.verify_uncached(token).map(|(claims, _)| claims);
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let generation = self.generation.load(Ordering::Acquire);
        let now = jsonwebtoken::get_current_timestamp();
        let cache = self.cache.get_or(|| RefCell::new(LruCache::new(size)));
        if let Ok(mut cache) = cache.try_borrow_mut() {
            if let Some(hit) = cache.get(&digest) {
                // Within its life as the validation reads it; an expired
                // one is verified again, to be refused for its reason.
                if hit.generation == generation
                    && now <= hit.exp.saturating_add(self.settings.leeway_s)
                {
                    return Ok(hit.claims.clone());
                }
            }
        }
        let (claims, exp) = self.verify_uncached(token)?;
        if let (Some(exp), Ok(mut cache)) = (exp, cache.try_borrow_mut()) {
            cache.put(
                digest,
                Remembered {
                    claims: claims.clone(),
                    exp,
                    generation,
                },
            );
        }
        Ok(claims)
    }

    /// Verifies `token` with the keys, and reads its grants and `exp`.
    fn verify_uncached(&self, token: &str) -> Result<(Claims, Option<u64>), Rejection> {
        let claims = self.decode(token)?;
        let exp = claims.get("exp").and_then(Value::as_u64);
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        let mut scopes = Vec::new();
        for claim in ["scope", "scp"] {
            match claims.get(claim) {
                None => {}
                Some(Value::String(s)) => {
                    scopes.extend(s.split_whitespace().filter_map(Scope::parse))
                }
                Some(Value::Array(items)) => scopes.extend(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .filter_map(Scope::parse),
                ),
                Some(_) => return Err(Rejection::Invalid),
            }
        }
        let ids = match self.settings.ids_claim.trim() {
            "" => None,
            // A token without its prefix would be unrestricted: refused.
            claim => match claims.get(claim) {
                Some(Value::String(prefix)) if !prefix.is_empty() => Some(prefix.clone()),
                _ => return Err(Rejection::Invalid),
            },
        };
        Ok((
            Claims {
                subject,
                scopes,
                ids,
            },
            exp,
        ))
    }

    /// The claims of a token one of the keys verifies. A key that does
    /// not verify the signature (or is of another family than the
    /// token's algorithm) passes the token to the next; any other failure
    /// is the token's, since the signature is checked before the claims.
    fn decode(&self, token: &str) -> Result<Map<String, Value>, Rejection> {
        let mut rejection = Rejection::Invalid;
        for verifier in self.verifiers.load().iter() {
            let decoded = jsonwebtoken::decode::<Map<String, Value>>(
                token,
                &verifier.key,
                &verifier.validation,
            );
            match decoded {
                Ok(data) => return Ok(data.claims),
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature => rejection = Rejection::Signature,
                    ErrorKind::InvalidAlgorithm => {}
                    ErrorKind::ExpiredSignature => return Err(Rejection::Expired),
                    ErrorKind::ImmatureSignature => return Err(Rejection::NotYetValid),
                    ErrorKind::InvalidIssuer => return Err(Rejection::Issuer),
                    ErrorKind::InvalidAudience => return Err(Rejection::Audience),
                    _ => return Err(Rejection::Invalid),
                },
            }
        }
        Err(rejection)
    }
}

/// The keys and the validation settings describe (checked by
/// [`JwtSettings::problem`]: exactly one of a secret and a key file).
fn build(settings: &JwtSettings) -> Result<Vec<Verifier>, JwtError> {
    let keys = if settings.hs256_secret.is_empty() {
        public_keys(Path::new(settings.public_key_file.trim()))?
    } else {
        let key =
            DecodingKey::from_secret(settings.hs256_secret.as_bytes()).map_err(JwtError::Secret)?;
        vec![(key, vec![Algorithm::HS256])]
    };
    Ok(keys
        .into_iter()
        .map(|(key, algorithms)| Verifier {
            key,
            validation: validation(settings, algorithms),
        })
        .collect())
}

fn validation(settings: &JwtSettings, algorithms: Vec<Algorithm>) -> Validation {
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms;
    validation.leeway = settings.leeway_s;
    validation.validate_nbf = true;
    validation.set_issuer(&[settings.issuer.trim()]);
    validation.set_audience(&[settings.audience.trim()]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation
}

/// Every RSA or EC public key of a PEM file, each with the algorithms it
/// verifies. A block that is no such key refuses the whole file.
fn public_keys(path: &Path) -> Result<Vec<(DecodingKey, Vec<Algorithm>)>, JwtError> {
    let failed = |problem: String| JwtError::KeyFile {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
    let blocks = pem::parse_many(&text).map_err(|e| failed(e.to_string()))?;
    if blocks.is_empty() {
        return Err(failed("no PEM block".into()));
    }
    blocks
        .iter()
        .enumerate()
        .map(|(i, block)| {
            let one = pem::encode(block);
            if let Ok(key) = DecodingKey::from_rsa_pem(one.as_bytes()) {
                return Ok((
                    key,
                    vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
                ));
            }
            if let Ok(key) = DecodingKey::from_ec_pem(one.as_bytes()) {
                return Ok((key, vec![Algorithm::ES256, Algorithm::ES384]));
            }
            Err(failed(format!(
                "block {} ({}) is not an RSA or EC public key",
                i + 1,
                block.tag()
            )))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_bundle_is_read() {
        let dir = tempfile::TempDir::new().unwrap();
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let ec = rcgen::KeyPair::generate().unwrap();
        let path = dir.path().join("idp.pem");
        let bundle = format!("{}{}", rsa.public_key_pem(), ec.public_key_pem());
        std::fs::write(&path, &bundle).unwrap();
        let keys = public_keys(&path).unwrap();
        assert_eq!(keys.len(), 2, "{bundle}");
        assert_eq!(keys[0].1[0], Algorithm::RS256);
        assert_eq!(keys[1].1[0], Algorithm::ES256);
        std::fs::write(&path, format!("{bundle}{}", ec.serialize_pem())).unwrap();
        assert!(public_keys(&path).is_err(), "a private key is refused");
    }
}
