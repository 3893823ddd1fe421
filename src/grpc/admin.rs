//! Admin calls (`ListEntries`, `ListTenants`) may be restricted
//! (`--admin-token-file`, DESIGN.md section 10): the client must send
//! `authorization: Bearer TOKEN` with the file's token. The file is read at
//! each admin call, so a rotated token is in force at once; the comparison
//! takes the same time wherever the tokens differ. Decisions and health
//! stay open to every client.

use std::path::PathBuf;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// Who may make admin calls.
#[derive(Debug, Clone, Default)]
pub struct AdminGate {
    token_file: Option<PathBuf>,
}

impl AdminGate {
    /// Admin calls open to every client.
    pub fn open() -> Self {
        AdminGate::default()
    }

    /// Admin calls for clients presenting the token in `file`.
    pub fn token_file(file: PathBuf) -> Self {
        AdminGate { token_file: Some(file) }
    }

    /// Admits the call or answers `PERMISSION_DENIED`. A token file that
    /// cannot be read, or is empty, admits no one (fail closed).
    pub async fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(file) = &self.token_file else {
            return Ok(());
        };
        let denied =
            || Status::permission_denied("admin calls need `authorization: Bearer TOKEN` with the admin token");
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
}
