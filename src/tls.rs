//! HTTPS on the listeners (`server.tls`), with rustls.
//!
//! The certificate chain and key are read at start (a pair that does not
//! load stops start-up) and again whenever their directory changes, so a
//! renewed certificate (certbot, cert-manager) is served to the next
//! handshake without a restart; connections already open keep theirs. A
//! new pair that does not load, or whose key is not the certificate's,
//! is logged and counted, and the pair in force stays: a half-written
//! renewal never takes the service down. TLS 1.2 and 1.3 only, with
//! rustls's safe defaults.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::IntCounterVec;
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
    #[error("server.tls: {0}")]
    Config(rustls::Error),
}

/// The certificate served to every handshake, swapped whole on a reload.
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
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
        Ok(Self {
            current: ArcSwap::from_pointee(pair),
            cert_file,
            key_file,
            provider,
        })
    }

    /// Re-reads both files; on an error the pair in force stays.
    ///
    /// # Errors
    /// As [`Certificates::load`].
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = read_pair(&self.cert_file, &self.key_file, &self.provider)?;
        self.current.store(Arc::new(pair));
        Ok(())
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
        reloads: IntCounterVec,
    ) -> notify::Result<notify::RecommendedWatcher> {
        let certificates = self.clone();
        let dirs = [
            crate::watch::parent_dir(&self.cert_file),
            crate::watch::parent_dir(&self.key_file),
        ];
        crate::watch::dirs(background, dirs, move || match certificates.reload() {
            Ok(()) => {
                tracing::info!(file = %certificates.cert_file.display(), "TLS certificate reloaded");
                reloads.with_label_values(&["applied"]).inc();
            }
            Err(e) => {
                tracing::error!(error.message = %e, "TLS certificate not reloaded; the one in force stays");
                reloads.with_label_values(&["rejected"]).inc();
            }
        })
    }
}

fn read_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        path: cert_file.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE block in PEM".into()));
    }
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
    match pair.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(pair)
        }
        Err(e) => Err(TlsError::Mismatch(e)),
    }
}
