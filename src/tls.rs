//! HTTPS on the listeners (`server.tls`), with rustls.
//!
//! The certificate chain and key are read at start (a pair that does not
//! load stops start-up) and again whenever their directory changes, so a
//! renewed certificate (certbot, cert-manager) is served to the next
//! handshake without a restart; connections already open keep theirs. A
//! new pair that does not load, or whose key is not the certificate's,
//! is logged and counted, and the pair in force stays: a half-written
//! renewal never takes the service down, and neither does an expired
//! certificate put back by mistake. `/metrics` shows when the certificate
//! in force expires. TLS 1.2 and 1.3 only, with rustls's safe defaults.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, IntGauge};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::background::Background;
use crate::settings::TlsSettings;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls.cert_file {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("server.tls.key_file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("server.tls: the private key does not belong to the certificate: {0}")]
    Mismatch(rustls::Error),
    #[error("server.tls.cert_file {path}: expired at {not_after} (Unix time)")]
    Expired { path: String, not_after: i64 },
    #[error("server.tls: {0}")]
    Config(rustls::Error),
}

/// What the TLS files report in `/metrics`.
pub struct TlsMetrics {
    /// Reloads by result.
    pub reloads: IntCounterVec,
    /// When the certificate in force expires, in Unix seconds.
    pub expiry: IntGauge,
}

/// A certificate chain and key that load, and when the chain's own
/// certificate expires.
struct Pair {
    key: CertifiedKey,
    not_after: i64,
}

/// The certificate served to every handshake, swapped whole on a reload.
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    /// When the certificate in force expires, in Unix seconds.
    not_after: std::sync::atomic::AtomicI64,
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificates {
    /// Loads the pair the settings name.
    ///
    /// # Errors
    /// A file that cannot be read, holds no certificate or no private key,
    /// or a key that is not the certificate's.
    pub fn load(settings: &TlsSettings) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cert_file = PathBuf::from(settings.cert_file.trim());
        let key_file = PathBuf::from(settings.key_file.trim());
        let pair = read_pair(&cert_file, &key_file, &provider)?;
        if pair.not_after < now() {
            // Served anyway: refusing to start would take down what an
            // expired certificate only degrades.
            tracing::warn!(file = %cert_file.display(), not_after = pair.not_after, "the TLS certificate has expired");
        }
        Ok(Self {
            current: ArcSwap::from_pointee(pair.key),
            not_after: pair.not_after.into(),
            cert_file,
            key_file,
            provider,
        })
    }

    /// Re-reads both files; on an error the pair in force stays.
    ///
    /// # Errors
    /// As [`Certificates::load`], and an expired certificate.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = read_pair(&self.cert_file, &self.key_file, &self.provider)?;
        if pair.not_after < now() {
            return Err(TlsError::Expired {
                path: self.cert_file.display().to_string(),
                not_after: pair.not_after,
            });
        }
        self.current.store(Arc::new(pair.key));
        self.not_after
            .store(pair.not_after, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// When the certificate in force expires, in Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The rustls configuration every listener serves with.
    ///
    /// # Errors
    /// When rustls refuses the protocol versions (never with its defaults).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        Ok(
            rustls::ServerConfig::builder_with_provider(self.provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(TlsError::Config)?
                .with_no_client_auth()
                .with_cert_resolver(self.clone()),
        )
    }

    /// Reloads the pair whenever a file in either directory changes.
    ///
    /// # Errors
    /// When a directory cannot be watched.
    pub fn watch(
        self: &Arc<Self>,
        background: &Background,
        metrics: TlsMetrics,
    ) -> notify::Result<notify::RecommendedWatcher> {
        metrics.expiry.set(self.not_after());
        let TlsMetrics { reloads, expiry } = metrics;
        let certificates = self.clone();
        let dirs = [
            crate::watch::parent_dir(&self.cert_file),
            crate::watch::parent_dir(&self.key_file),
        ];
        crate::watch::dirs(background, dirs, move || match certificates.reload() {
            Ok(()) => {
                tracing::info!(file = %certificates.cert_file.display(), not_after = certificates.not_after(), "TLS certificate reloaded");
                expiry.set(certificates.not_after());
                reloads.with_label_values(&["applied"]).inc();
            }
            Err(e) => {
                tracing::error!(error.message = %e, "TLS certificate not reloaded; the one in force stays");
                reloads.with_label_values(&["rejected"]).inc();
            }
        })
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn read_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Pair, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        path: cert_file.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    let Some(own) = chain.first() else {
        return Err(cert_error("no CERTIFICATE block in PEM".into()));
    };
    let not_after = x509_parser::parse_x509_certificate(own)
        .map_err(|e| cert_error(format!("not an X.509 certificate: {e}")))?
        .1
        .validity()
        .not_after
        .timestamp();
    let key_error = |reason: String| TlsError::Key {
        path: key_file.display().to_string(),
        reason,
    };
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| key_error(e.to_string()))?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(e.to_string()))?;
    let pair = CertifiedKey::new(chain, key);
    // aws-lc-rs knows every key's public half: "unknown" is a mismatch too.
    pair.keys_match().map_err(TlsError::Mismatch)?;
    Ok(Pair {
        key: pair,
        not_after,
    })
}
