//! TLS for the gRPC port (DESIGN.md section 10): `--tls-cert` and `--tls-key`
//! (PEM), and with `--tls-client-ca` clients must present a certificate that
//! chains to that CA (mTLS). TLS 1.2 and 1.3 only, ALPN `h2`.
//!
//! The files are followed by [`crate::watch`]: when any of them changes, a
//! whole new server configuration is built from all three and used by every
//! handshake after that. A configuration that cannot be built (a file half written, a
//! key that does not match its certificate, a CA file with no certificate)
//! keeps the one in force and is logged once. A certificate and key renamed
//! over one after the other thus switch when the second lands, and open
//! connections keep the session they have.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tracing::{info, warn};
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files TLS is served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA that client certificates must chain to; no client
    /// certificates are asked for without it.
    pub client_ca: Option<PathBuf>,
}

/// The server configuration in force, swapped when the files change.
#[derive(Debug)]
pub struct TlsConfig {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
    /// The notAfter of the certificate served now, as a Unix time.
    not_after: AtomicI64,
}

impl TlsConfig {
    /// Loads the files, or says why they cannot be served.
    pub fn load(files: TlsFiles) -> Result<Arc<TlsConfig>, String> {
        let (config, not_after) = build(&files)?;
        Ok(Arc::new(TlsConfig {
            files,
            current: ArcSwap::from(config),
            not_after: AtomicI64::new(not_after),
        }))
    }

    /// When the certificate served now expires, as a Unix time.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Follows the files until `self` is the last reference left, swapping
    /// in each new configuration that builds. The watch is made before this
    /// returns, so a change from now on is seen.
    pub fn watch(self: &Arc<Self>) {
        let paths = [
            Some(&self.files.cert),
            Some(&self.files.key),
            self.files.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        let mut watch = match crate::watch::Watch::files(paths, Arc::default()) {
            Ok(watch) => watch,
            Err(e) => {
                warn!("cannot watch the TLS files; a new certificate needs a restart: {e}");
                return;
            }
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                watch.next().await;
                let Some(tls) = weak.upgrade() else { return };
                let files = tls.files.clone();
                // Reading and parsing is file work: off the runtime's threads.
                match tokio::task::spawn_blocking(move || build(&files)).await {
                    Ok(Ok((config, not_after))) => {
                        tls.current.store(config);
                        tls.not_after.store(not_after, Ordering::Relaxed);
                        info!(cert = %tls.files.cert.display(), "TLS certificate reloaded: new handshakes use it");
                    }
                    Ok(Err(why)) => warn!("TLS files changed but cannot be used; keeping the ones in force: {why}"),
                    Err(e) => warn!("TLS reload failed: {e}"),
                }
            }
        });
    }
}

/// The server configuration the three files make, and the notAfter of the
/// server's certificate.
fn build(files: &TlsFiles) -> Result<(Arc<ServerConfig>, i64), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&files.cert)?;
    let not_after = chain
        .first()
        .and_then(|leaf| X509Certificate::from_der(leaf).ok())
        .map_or(0, |(_, cert)| cert.validity().not_after.timestamp());
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: no private key: {e}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "{} and {} do not make a certificate and its key: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), not_after))
}

/// Every certificate in a PEM file; at least one.
fn certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}
