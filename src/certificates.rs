//! The TLS listeners' certificates: read from their files at start, and
//! again on every reload, served through a resolver whose key is swapped.
//!
//! Each TLS listener's acceptor is built once, with its [`ListenerCert`] as
//! the certificate resolver, so a new certificate needs no new listener.
//! A reload (SIGHUP, `POST /api/reload`, or `reload.watch`, which watches
//! these files too) reads every listener's files whole before anything
//! changes ([`Certificates::read_all`]): a certificate that does not load,
//! or whose key does not match it, rejects the reload with its path, and
//! the certificates in force stay. Then all are swapped at once
//! ([`Certificates::install`]). New handshakes get the new certificate;
//! established connections keep the one they were made with.
//!
//! What is in force (subject, expiry) is shown in `/api/stats` and exported
//! as `relay_edge_tls_certificate_expiry_seconds{listener}`; nothing here
//! ever prints a key.

use crate::config::model::{Listener, TlsFiles};
use arc_swap::ArcSwap;
use pingora_core::listeners::tls::TlsSettings;
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{CertificateDer, ClientHello, PrivateKeyDer, ResolvesServerCert};
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a listener's certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: {why}", path.display())]
    Unreadable { path: PathBuf, why: String },
    #[error("{}: the key does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: {why}", key.display())]
    BadKey { key: PathBuf, why: String },
}

/// A certificate chain and its key, as read from their files.
#[derive(Debug)]
pub struct Loaded {
    key: Arc<CertifiedKey>,
    /// The leaf certificate's subject, as `CN=…, O=…`.
    pub subject: String,
    /// Its `notAfter`, in seconds since the epoch.
    pub not_after: i64,
}

impl Loaded {
    /// Read and check `files`: the chain's leaf first, the key matching it.
    pub fn read(files: &TlsFiles) -> Result<Loaded, CertError> {
        let unreadable = |path: &Path, why: String| CertError::Unreadable {
            path: path.to_path_buf(),
            why,
        };
        let chain = CertificateDer::pem_file_iter(&files.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| unreadable(&files.cert, format!("cannot read a PEM certificate: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(unreadable(&files.cert, "holds no certificate".into()));
        };
        let (subject, not_after) = match x509_parser::parse_x509_certificate(leaf) {
            Ok((_, cert)) => (
                cert.subject().to_string(),
                cert.validity().not_after.timestamp(),
            ),
            Err(e) => {
                return Err(unreadable(
                    &files.cert,
                    format!("not an X.509 certificate: {e}"),
                ))
            }
        };
        // The key's own error text is never shown: only what went wrong.
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|_| CertError::BadKey {
            key: files.key.clone(),
            why: "cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1)".into(),
        })?;
        pingora_rustls::install_default_crypto_provider();
        let provider =
            pingora_rustls::CryptoProvider::get_default().ok_or_else(|| CertError::BadKey {
                key: files.key.clone(),
                why: "no TLS crypto provider".into(),
            })?;
        let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
            pingora_rustls::RusTlsError::InconsistentKeys(_) => CertError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            },
            _ => CertError::BadKey {
                key: files.key.clone(),
                why: "a private key of a kind that cannot sign TLS handshakes".into(),
            },
        })?;
        Ok(Loaded {
            key: Arc::new(key),
            subject,
            not_after,
        })
    }

    /// The same certificate chain as `other`?
    fn same_chain(&self, other: &Loaded) -> bool {
        self.key.cert == other.key.cert
    }
}

/// One TLS listener's certificate, swapped in place by a reload.
#[derive(Debug)]
pub struct ListenerCert {
    /// The listener's address, as configured.
    pub addr: String,
    pub files: TlsFiles,
    current: ArcSwap<Loaded>,
}

impl ListenerCert {
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for ListenerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

/// Every TLS listener's certificate.
#[derive(Debug, Default)]
pub struct Certificates {
    listeners: Vec<Arc<ListenerCert>>,
}

/// Certificates read for a reload, not yet in force.
pub struct ReadCertificates(Vec<Loaded>);

impl Certificates {
    /// Read the certificate of every TLS listener of `listeners`; the first
    /// that cannot be used stops the start.
    pub fn load(listeners: &[Listener]) -> Result<Certificates, (String, CertError)> {
        let mut out = Vec::new();
        for l in listeners {
            let Some(files) = &l.tls else { continue };
            let addr = l.addr.to_string();
            let loaded = Loaded::read(files).map_err(|e| (addr.clone(), e))?;
            out.push(Arc::new(ListenerCert {
                addr,
                files: files.clone(),
                current: ArcSwap::from_pointee(loaded),
            }));
        }
        Ok(Certificates { listeners: out })
    }

    /// The TLS settings of the listener at `addr` (`None`: not a TLS
    /// listener): no files, its [`ListenerCert`] as the resolver, so that a
    /// reload replaces the certificate in place.
    pub fn tls_settings(&self, addr: &str) -> Option<TlsSettings> {
        let cert = self.listeners.iter().find(|l| l.addr == addr)?.clone();
        let mut settings = TlsSettings::intermediate("", "").ok()?;
        settings.set_cert_resolver(cert);
        Some(settings)
    }

    pub fn all(&self) -> &[Arc<ListenerCert>] {
        &self.listeners
    }

    /// Every file a reload reads here (for `reload.watch`).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.listeners
            .iter()
            .flat_map(|l| [l.files.cert.as_path(), l.files.key.as_path()])
    }

    /// Read every listener's files again, whole: every error, each as a
    /// `listen[addr].tls: path: what` line, or all of them read.
    pub fn read_all(&self) -> Result<ReadCertificates, Vec<String>> {
        let mut read = Vec::new();
        let mut errors = Vec::new();
        for l in &self.listeners {
            match Loaded::read(&l.files) {
                Ok(loaded) => read.push(loaded),
                Err(e) => errors.push(format!("listen[{}].tls: {e}", l.addr)),
            }
        }
        if errors.is_empty() {
            Ok(ReadCertificates(read))
        } else {
            Err(errors)
        }
    }

    /// Put certificates read by [`Certificates::read_all`] in force; the
    /// addresses of the listeners whose certificate changed.
    pub fn install(&self, read: ReadCertificates) -> Vec<String> {
        let mut renewed = Vec::new();
        for (l, loaded) in self.listeners.iter().zip(read.0) {
            if !l.current.load().same_chain(&loaded) {
                renewed.push(l.addr.clone());
                log::info!(
                    "listener {}: certificate renewed ({}, valid until {})",
                    l.addr,
                    loaded.subject,
                    expiry_text(loaded.not_after)
                );
            }
            l.current.store(Arc::new(loaded));
        }
        renewed
    }
}

/// `notAfter` as RFC 3339 (UTC).
pub fn expiry_text(not_after: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(not_after.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}
