//! Admin calls (`ListEntries`, `ListTenants`) may be restricted (DESIGN.md
//! section 10):
//! - `--admin-san NAME`: over mTLS, a DNS or URI subject alternative name of
//!   the client's certificate equals one of the names (DNS names compared
//!   without regard to ASCII case). The subject's CN never counts.
//! - `--admin-token-file FILE`: the client sends `authorization: Bearer
//!   TOKEN` (the scheme in any case, RFC 7235) with the file's token. The
//!   token is held in memory and swapped when [`crate::watch`] sees the file
//!   change, so no call reads the disk. The SHA-256 digests of the two tokens
//!   are compared in constant time: the time says neither where they differ
//!   nor how long the token is.
//!
//! With both, either one admits. Decisions and health stay open to every
//! client that passed the transport.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::listen::ConnectionInfo;

/// Who may make admin calls.
#[derive(Debug, Clone, Default)]
pub struct AdminGate {
    token: Option<Arc<Token>>,
    sans: Arc<[String]>,
}

/// The admin token as its file holds it now: its digest, or `None` when the
/// file cannot be read or holds no token (then no token admits).
#[derive(Debug)]
struct Token {
    file: PathBuf,
    digest: ArcSwapOption<[u8; 32]>,
}

impl Token {
    /// Reads `file` now and, within a tokio runtime, follows it.
    fn follow(file: PathBuf) -> Arc<Token> {
        let token = Arc::new(Token {
            digest: ArcSwapOption::from(read_token(&file).map(Arc::new)),
            file,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            match crate::watch::Watch::files(vec![token.file.clone()], Arc::default()) {
                Ok(mut watch) => {
                    let weak = Arc::downgrade(&token);
                    tokio::spawn(async move {
                        loop {
                            watch.next().await;
                            let Some(token) = weak.upgrade() else { return };
                            let file = token.file.clone();
                            let digest = tokio::task::spawn_blocking(move || read_token(&file))
                                .await
                                .ok()
                                .flatten();
                            if digest.is_none() {
                                tracing::warn!(file = %token.file.display(), "the admin token file cannot be read or is empty; admin calls by token are refused");
                            } else {
                                tracing::info!(file = %token.file.display(), "admin token reloaded");
                            }
                            token.digest.store(digest.map(Arc::new));
                        }
                    });
                }
                Err(e) => tracing::warn!(file = %token.file.display(), "cannot watch the admin token file: {e}"),
            }
        }
        token
    }
}

/// The digest of the token in `file` (surrounding whitespace ignored);
/// `None` when it cannot be read or is empty.
fn read_token(file: &std::path::Path) -> Option<[u8; 32]> {
    let (bytes, _) = crate::watch::read_stable(file).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| Sha256::digest(token.as_bytes()).into())
}

/// The token of an `authorization: Bearer TOKEN` value, the scheme matched
/// without regard to case.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl AdminGate {
    /// Admin calls open to every client.
    pub fn open() -> Self {
        AdminGate::default()
    }

    /// Admin calls for clients presenting the token in `file`.
    pub fn token_file(file: PathBuf) -> Self {
        AdminGate {
            token: Some(Token::follow(file)),
            ..AdminGate::default()
        }
    }

    /// Admin calls for clients whose certificate has one of `sans` (and,
    /// when `token_file` is given, for clients presenting its token).
    pub fn new(token_file: Option<PathBuf>, sans: Vec<String>) -> Self {
        AdminGate {
            token: token_file.map(Token::follow),
            sans: sans.into(),
        }
    }

    /// Whether admin calls are open to every client.
    pub fn is_open(&self) -> bool {
        self.token.is_none() && self.sans.is_empty()
    }

    /// Admits the call or answers `PERMISSION_DENIED`. A token file that
    /// cannot be read, or is empty, admits no one by token (fail closed).
    pub async fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.is_open() || self.san_admits(request) {
            return Ok(());
        }
        let Some(token) = &self.token else {
            return Err(Status::permission_denied(
                "admin calls need a client certificate with an admin SAN (--admin-san)",
            ));
        };
        let denied = || {
            Status::permission_denied(if self.sans.is_empty() {
                "admin calls need `authorization: Bearer TOKEN` with the admin token"
            } else {
                "admin calls need a client certificate with an admin SAN, or `authorization: Bearer TOKEN` with the admin token"
            })
        };
        let Some(expected) = token.digest.load_full() else {
            return Err(Status::permission_denied(
                "the admin token file cannot be read or is empty; admin calls are refused",
            ));
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .unwrap_or_default();
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        if bool::from(given.ct_eq(&*expected)) {
            Ok(())
        } else {
            Err(denied())
        }
    }

    /// Whether the client's certificate names one of the admin SANs.
    fn san_admits<T>(&self, request: &Request<T>) -> bool {
        if self.sans.is_empty() {
            return false;
        }
        let Some(own) = request
            .extensions()
            .get::<ConnectionInfo>()
            .and_then(|info| info.client_certs.as_deref())
            .and_then(<[_]>::first)
        else {
            return false;
        };
        let Ok((_, cert)) = X509Certificate::from_der(own) else {
            return false;
        };
        let Ok(Some(names)) = cert.subject_alternative_name() else {
            return false;
        };
        names.value.general_names.iter().any(|name| match name {
            GeneralName::DNSName(dns) => self.sans.iter().any(|san| san.eq_ignore_ascii_case(dns)),
            GeneralName::URI(uri) => self.sans.iter().any(|san| san == uri),
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn the_bearer_scheme_in_any_case() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }
}
