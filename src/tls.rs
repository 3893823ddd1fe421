//! TLS for the gRPC port (DESIGN.md section 10): `--tls-cert` and `--tls-key`
//! (PEM), and with `--tls-client-ca` clients must present a certificate that
//! chains to that CA (mTLS). TLS 1.2 and 1.3 only, ALPN `h2`.
//!
//! The files are polled every [`POLL`]: when any of them changes, a whole new
//! server configuration is built from all three and used by every handshake
//! after that. A configuration that cannot be built (a file half written, a
//! key that does not match its certificate, a CA file with no certificate)
//! keeps the one in force and is logged once. A certificate and key renamed
//! over one after the other thus switch when the second lands, and open
//! connections keep the session they have.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tracing::{info, warn};

/// How often the certificate files are looked at.
pub const POLL: Duration = Duration::from_millis(250);

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
    /// The files as they were just before the configuration in force was
    /// read: a change after that is seen by the watch.
    loaded_from: Fingerprint,
}

impl TlsConfig {
    /// Loads the files, or says why they cannot be served.
    pub fn load(files: TlsFiles) -> Result<Arc<TlsConfig>, String> {
        let loaded_from = fingerprint(&files);
        let config = build(&files)?;
        Ok(Arc::new(TlsConfig {
            files,
            current: ArcSwap::from(config),
            loaded_from,
        }))
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Watches the files until `self` is the last reference left, swapping
    /// in each new configuration that builds.
    pub fn watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen = weak.upgrade().map(|tls| tls.loaded_from.clone());
            let mut ticks = tokio::time::interval(POLL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(tls) = weak.upgrade() else { return };
                let files = tls.files.clone();
                let now = fingerprint(&files);
                if Some(&now) == seen.as_ref() {
                    continue;
                }
                seen = Some(now);
                // Reading and parsing is file work: off the runtime's threads.
                match tokio::task::spawn_blocking(move || build(&files)).await {
                    Ok(Ok(config)) => {
                        tls.current.store(config);
                        info!(cert = %tls.files.cert.display(), "TLS certificate reloaded: new handshakes use it");
                    }
                    Ok(Err(why)) => warn!("TLS files changed but cannot be used; keeping the ones in force: {why}"),
                    Err(e) => warn!("TLS reload failed: {e}"),
                }
            }
        });
    }
}

/// What is looked at to notice a change: each file's identity, size and
/// modification time (following symlinks, as a mounted Secret swaps them).
type Fingerprint = Vec<Option<(u64, u64, u64, Option<SystemTime>)>>;

fn fingerprint(files: &TlsFiles) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|path| {
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.len(), m.modified().ok()))
        })
        .collect()
}

/// The server configuration the three files make.
fn build(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&files.cert)?;
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
    Ok(Arc::new(config))
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
