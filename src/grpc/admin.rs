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
//! - `--tenant-token-dir DIR`: `DIR/NAME.token` holds the token of tenant
//!   `NAME`, which admits calls about that tenant alone (DESIGN.md section
//!   17); the directory is followed like the admin token file, and the
//!   tokens are held and compared as digests the same way.
//!
//! With several, any one admits. Decisions and health stay open to every
//! client that passed the transport.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
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
    tenant_tokens: Option<Arc<TenantTokens>>,
}

/// Who made an admin call, as the audit log names the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Admin calls are open to every client.
    Anyone,
    /// The admin token.
    AdminToken,
    /// A client certificate with this admin SAN.
    AdminSan(String),
    /// The token of this tenant.
    TenantToken(String),
}

impl Caller {
    /// `none`, `admin-token`, `admin-san:NAME` or `tenant-token:NAME`.
    pub fn audit_name(&self) -> String {
        match self {
            Caller::Anyone => "none".to_owned(),
            Caller::AdminToken => "admin-token".to_owned(),
            Caller::AdminSan(name) => format!("admin-san:{name}"),
            Caller::TenantToken(name) => format!("tenant-token:{name}"),
        }
    }

    /// The one tenant the caller may act on; `None`: every tenant.
    pub fn only_tenant(&self) -> Option<&str> {
        match self {
            Caller::TenantToken(name) => Some(name),
            _ => None,
        }
    }
}

/// Each tenant's token digest, from `DIR/NAME.token`, swapped whole when
/// the directory changes.
#[derive(Debug)]
struct TenantTokens {
    dir: PathBuf,
    digests: arc_swap::ArcSwap<HashMap<String, [u8; 32]>>,
}

impl TenantTokens {
    /// Reads `dir` now and, within a tokio runtime, follows it.
    fn follow(dir: PathBuf) -> Arc<TenantTokens> {
        let tokens = Arc::new(TenantTokens {
            digests: arc_swap::ArcSwap::from_pointee(read_tenant_tokens(&dir)),
            dir,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            match crate::watch::Watch::dir(tokens.dir.clone(), Arc::default()) {
                Ok(mut watch) => {
                    let weak = Arc::downgrade(&tokens);
                    tokio::spawn(async move {
                        loop {
                            watch.next().await;
                            let Some(tokens) = weak.upgrade() else { return };
                            let dir = tokens.dir.clone();
                            let read = tokio::task::spawn_blocking(move || read_tenant_tokens(&dir)).await;
                            if let Ok(read) = read {
                                tracing::info!(dir = %tokens.dir.display(), tenants = read.len(), "tenant tokens reloaded");
                                tokens.digests.store(Arc::new(read));
                            }
                        }
                    });
                }
                Err(e) => tracing::warn!(dir = %tokens.dir.display(), "cannot watch the tenant token directory: {e}"),
            }
        }
        tokens
    }

    /// The tenant whose token has the digest `given`, compared in constant
    /// time with each (`only`: with that tenant's alone).
    fn holder(&self, given: &[u8; 32], only: Option<&str>) -> Option<String> {
        let digests = self.digests.load();
        let mut found = None;
        for (name, digest) in digests.iter() {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            if bool::from(given.ct_eq(digest)) {
                found = Some(name.clone());
            }
        }
        found
    }
}

/// `DIR/NAME.token` for every tenant name `NAME`, as digests; unreadable or
/// empty files admit no one.
fn read_tenant_tokens(dir: &Path) -> HashMap<String, [u8; 32]> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "cannot read the tenant token directory; no tenant token admits");
        return HashMap::new();
    };
    listing
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            let name = path.file_name()?.to_str()?.strip_suffix(".token")?.to_owned();
            if !crate::core::is_tenant_name(&name) {
                return None;
            }
            Some((name, read_token(&path)?))
        })
        .collect()
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
            tenant_tokens: None,
        }
    }

    /// The same gate, also admitting `DIR/NAME.token`'s holder for tenant
    /// `NAME` alone.
    pub fn with_tenant_tokens(mut self, dir: Option<PathBuf>) -> Self {
        self.tenant_tokens = dir.map(TenantTokens::follow);
        self
    }

    /// Whether admin calls are open to every client.
    pub fn is_open(&self) -> bool {
        self.token.is_none() && self.sans.is_empty() && self.tenant_tokens.is_none()
    }

    /// Admits an admin call about every tenant, or answers
    /// `PERMISSION_DENIED`. A token file that cannot be read, or is empty,
    /// admits no one by token (fail closed).
    pub async fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.admin(request).map(|_| ())
    }

    /// Admits a call about `tenant`: an admin, or `tenant`'s own token.
    pub fn admit_for<T>(&self, request: &Request<T>, tenant: &str) -> Result<Caller, Status> {
        self.admin(request)
            .or_else(|denied| self.tenant_token(request, Some(tenant)).ok_or(denied))
    }

    /// Admits a call about some tenant: an admin (every tenant), or any
    /// tenant's token (that tenant alone, [`Caller::only_tenant`]).
    pub fn admit_any<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.admin(request)
            .or_else(|denied| self.tenant_token(request, None).ok_or(denied))
    }

    /// The tenant whose token the call carries (`only`: that tenant's).
    fn tenant_token<T>(&self, request: &Request<T>, only: Option<&str>) -> Option<Caller> {
        let tokens = self.tenant_tokens.as_ref()?;
        let given: [u8; 32] = Sha256::digest(given_token(request).as_bytes()).into();
        tokens.holder(&given, only).map(Caller::TenantToken)
    }

    /// Admits a caller with admin rights over every tenant.
    fn admin<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        if self.is_open() {
            return Ok(Caller::Anyone);
        }
        if let Some(san) = self.san_admits(request) {
            return Ok(Caller::AdminSan(san));
        }
        let Some(token) = &self.token else {
            return Err(Status::permission_denied(if self.sans.is_empty() {
                "admin calls need `authorization: Bearer TOKEN` with the tenant's token"
            } else {
                "admin calls need a client certificate with an admin SAN (--admin-san)"
            }));
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
        let given: [u8; 32] = Sha256::digest(given_token(request).as_bytes()).into();
        if bool::from(given.ct_eq(&*expected)) {
            Ok(Caller::AdminToken)
        } else {
            Err(denied())
        }
    }

    /// The admin SAN the client's certificate names, if it names one.
    fn san_admits<T>(&self, request: &Request<T>) -> Option<String> {
        if self.sans.is_empty() {
            return None;
        }
        let own = request
            .extensions()
            .get::<ConnectionInfo>()
            .and_then(|info| info.client_certs.as_deref())
            .and_then(<[_]>::first)?;
        let (_, cert) = X509Certificate::from_der(own).ok()?;
        let names = cert.subject_alternative_name().ok()??;
        names.value.general_names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => self.sans.iter().find(|san| san.eq_ignore_ascii_case(dns)).cloned(),
            GeneralName::URI(uri) => self.sans.iter().find(|san| san == uri).cloned(),
            _ => None,
        })
    }
}

/// The token of the call's `authorization: Bearer TOKEN`; empty without one.
fn given_token<T>(request: &Request<T>) -> &str {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .unwrap_or_default()
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
