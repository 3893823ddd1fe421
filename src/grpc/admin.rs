//! Admin calls (`ListEntries`, `ListTenants`) may be restricted (DESIGN.md
//! section 10):
//! - `--admin-san NAME`: over mTLS, a DNS or URI subject alternative name of
//!   the client's certificate equals one of the names (DNS names compared
//!   without regard to ASCII case). The subject's CN never counts.
//! - `--admin-token-file FILE`: the client sends `authorization: Bearer
//!   TOKEN` with the file's token. The file is read at each admin call, so a
//!   rotated token is in force at once; the comparison takes the same time
//!   wherever the tokens differ.
//!
//! With both, either one admits. Decisions and health stay open to every
//! client that passed the transport.

use std::path::PathBuf;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::listen::ConnectionInfo;

/// Who may make admin calls.
#[derive(Debug, Clone, Default)]
pub struct AdminGate {
    token_file: Option<PathBuf>,
    sans: Arc<[String]>,
}

impl AdminGate {
    /// Admin calls open to every client.
    pub fn open() -> Self {
        AdminGate::default()
    }

    /// Admin calls for clients presenting the token in `file`.
    pub fn token_file(file: PathBuf) -> Self {
        AdminGate {
            token_file: Some(file),
            ..AdminGate::default()
        }
    }

    /// Admin calls for clients whose certificate has one of `sans` (and,
    /// when `token_file` is given, for clients presenting its token).
    pub fn new(token_file: Option<PathBuf>, sans: Vec<String>) -> Self {
        AdminGate {
            token_file,
            sans: sans.into(),
        }
    }

    /// Whether admin calls are open to every client.
    pub fn is_open(&self) -> bool {
        self.token_file.is_none() && self.sans.is_empty()
    }

    /// Admits the call or answers `PERMISSION_DENIED`. A token file that
    /// cannot be read, or is empty, admits no one by token (fail closed).
    pub async fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.is_open() || self.san_admits(request) {
            return Ok(());
        }
        let Some(file) = &self.token_file else {
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
        let Ok(token) = tokio::fs::read_to_string(file).await else {
            return Err(Status::permission_denied(
                "the admin token file cannot be read; admin calls are refused",
            ));
        };
        let expected = token.trim();
        if expected.is_empty() {
            return Err(denied());
        }
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
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
