//! The API keys file: named keys, each the SHA-256 of a token, its
//! scopes and an optional id prefix. The token itself is never stored.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Scope;

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
    pub scopes: Vec<Scope>,
    /// Only ids starting with this, when set.
    pub ids: Option<String>,
}

/// Why a keys file was refused. Any one problem refuses the whole file,
/// so a typo never leaves some keys in force and others not.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {problem}")]
    InFile {
        path: String,
        problem: Box<KeysError>,
    },
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("a key has an empty name")]
    EmptyName,
    #[error("key {0}: sha256 must be 64 hex digits")]
    Digest(String),
    #[error("key {name}: unknown scope {scope:?} (known: {known})")]
    UnknownScope {
        name: String,
        scope: String,
        known: String,
    },
    #[error("a key may not be named none (the metrics' label for no key)")]
    NamedNone,
    #[error("key {0}: ids is empty; leave it out for a key without a prefix")]
    EmptyIds(String),
    #[error("two keys are named {0}")]
    DuplicateName(String),
    #[error("key {0} has the digest of another key")]
    DuplicateDigest(String),
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
    pub fn load(path: &Path) -> Result<Self, KeysError> {
        let text = std::fs::read_to_string(path).map_err(|error| KeysError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse(&text).map_err(|problem| KeysError::InFile {
            path: path.display().to_string(),
            problem: Box::new(problem),
        })
    }

    /// # Errors
    /// As [`KeyRing::load`].
    pub fn parse(text: &str) -> Result<Self, KeysError> {
        let file: KeysFile = toml::from_str(text)?;
        let mut keys: Vec<Key> = Vec::with_capacity(file.key.len());
        for entry in file.key {
            let name = entry.name.trim().to_owned();
            if name.is_empty() {
                return Err(KeysError::EmptyName);
            }
            let digest =
                parse_digest(&entry.sha256).ok_or_else(|| KeysError::Digest(name.clone()))?;
            let scopes = entry
                .scopes
                .iter()
                .map(|s| {
                    Scope::parse(s).ok_or_else(|| KeysError::UnknownScope {
                        name: name.clone(),
                        scope: s.clone(),
                        known: Scope::ALL.map(Scope::as_str).join(", "),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if name == "none" {
                return Err(KeysError::NamedNone);
            }
            if entry.ids.as_deref() == Some("") {
                return Err(KeysError::EmptyIds(name));
            }
            if keys.iter().any(|k| k.name == name) {
                return Err(KeysError::DuplicateName(name));
            }
            if keys.iter().any(|k| k.digest == digest) {
                return Err(KeysError::DuplicateDigest(name));
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
    pub fn find(&self, token: &str) -> Option<&Key> {
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
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let signed = format!("+{}", &digest[1..]);
        assert!(KeyRing::parse(&ok.replace(&digest, &signed)).is_err());
        assert!(KeyRing::parse(&format!("{ok}{}", ok.replace("\"a\"", "\"b\""))).is_err());
        assert!(KeyRing::parse(&ok.replace("scopes", "ids = \"\"\nscopes")).is_err());
    }
}
