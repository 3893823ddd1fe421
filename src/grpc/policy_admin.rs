//! `corsd.v1.PolicyAdmin` over policy files (DESIGN.md section 17): each
//! tenant's policy read, replaced, created, deleted and edited entry by
//! entry, with the editor `corsd entries` uses ([`crate::edit`]), under
//! optimistic concurrency (`expected_version`). A write returns once the
//! reloader has put its version in force here; every write and every
//! refusal is audited.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::Store;
use super::admin::{AdminGate, Caller};
use super::pb;
use super::stubs::policy_admin_server::PolicyAdmin;
use crate::core::{Policy, is_tenant_name};
use crate::edit::{self, EditError, Edited, Refused};
use crate::observe::audit::{AuditLog, Audited, result_name};
use crate::policy_file::{self, Outcome};

mod place;
use place::Place;

/// How long a write waits for its version to be in force.
const IN_FORCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the policies are kept.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// `--policy FILE`: the one tenant, `""`.
    File(PathBuf),
    /// `--policy-dir DIR`: `DIR/NAME.toml` for tenant `NAME`.
    Dir(PathBuf),
    /// `--policy-etcd`: the key `PREFIX + NAME` for tenant `NAME`.
    Etcd(crate::etcd::Etcd),
}

/// The `corsd.v1.PolicyAdmin` service.
#[derive(Debug, Clone)]
pub struct PolicyAdminService {
    store: Arc<Store>,
    source: PolicySource,
    admin: AdminGate,
    audit: AuditLog,
    /// Whether a gate open to everyone admits writes: only on a local
    /// address (loopback, a Unix socket).
    open_writes: bool,
}

/// What a write did: the versions before and after.
type Versions = (String, String);

impl PolicyAdminService {
    /// The service over `source`, whose policies `store` holds in force.
    pub fn new(store: Arc<Store>, source: PolicySource, admin: AdminGate, audit: AuditLog) -> Self {
        PolicyAdminService {
            store,
            source,
            admin,
            audit,
            open_writes: true,
        }
    }

    /// The same service, refusing writes from anyone when no credential is
    /// configured unless `local` (the server listens on a local address).
    pub fn listening_locally(mut self, local: bool) -> Self {
        self.open_writes = local;
        self
    }

    /// Admits a write about `tenant`.
    fn admit_write<T>(&self, request: &Request<T>, tenant: &str) -> Result<Caller, Status> {
        match self.admin.admit_for(request, tenant)? {
            Caller::Anyone if !self.open_writes => Err(Status::permission_denied(
                "PolicyAdmin writes on a non-local address need a credential: \
                 --admin-token-file, --admin-san or --tenant-token-dir",
            )),
            caller => Ok(caller),
        }
    }

    /// Where `tenant`'s policy is kept, or why there is no such place.
    fn place_of(&self, tenant: &str) -> Result<Place, Status> {
        let not_a_name = || {
            Status::invalid_argument(format!(
                "`{tenant}` is not a tenant name: 1-63 of a-z, 0-9 and -, not starting or ending with -"
            ))
        };
        match &self.source {
            PolicySource::File(file) if tenant.is_empty() => Ok(Place::File(file.clone())),
            PolicySource::File(_) => Err(Status::not_found(format!(
                "no tenant `{tenant}`: this server serves one policy (tenant \"\")"
            ))),
            PolicySource::Dir(dir) if is_tenant_name(tenant) => Ok(Place::File(dir.join(format!("{tenant}.toml")))),
            PolicySource::Etcd(etcd) if is_tenant_name(tenant) => Ok(Place::Etcd(
                etcd.clone(),
                tenant.to_owned(),
                tokio::runtime::Handle::current(),
            )),
            PolicySource::Dir(_) | PolicySource::Etcd(_) => Err(not_a_name()),
        }
    }

    /// Admits the caller for `tenant` (or audits the refusal), runs `write`
    /// off the async workers, waits for its version to be in force, and
    /// audits the outcome.
    ///
    /// It runs as a task of its own: a client that gives up waiting does
    /// not stop a write half-way, nor its audit line.
    async fn write<F>(
        &self,
        call: &'static str,
        caller: Result<Caller, Status>,
        tenant: &str,
        origin: Option<&str>,
        write: F,
    ) -> Result<String, Status>
    where
        F: FnOnce(&Caller, Place) -> Result<(Versions, Option<String>), Status> + Send + 'static,
    {
        let service = self.clone();
        let (tenant, origin) = (tenant.to_owned(), origin.map(str::to_owned));
        tokio::spawn(async move { service.write_now(call, caller, &tenant, origin.as_deref(), write).await })
            .await
            .unwrap_or_else(|e| Err(Status::internal(format!("the write failed: {e}"))))
    }

    async fn write_now<F>(
        &self,
        call: &'static str,
        caller: Result<Caller, Status>,
        tenant: &str,
        origin: Option<&str>,
        write: F,
    ) -> Result<String, Status>
    where
        F: FnOnce(&Caller, Place) -> Result<(Versions, Option<String>), Status> + Send + 'static,
    {
        let before = self
            .store
            .tenant(tenant)
            .map(|s| s.policy.version().to_owned())
            .unwrap_or_default();
        let (caller_name, outcome) = match caller {
            Err(denied) => ("none".to_owned(), Err(denied)),
            Ok(caller) => {
                let name = caller.audit_name();
                let outcome = match self.place_of(tenant) {
                    Err(e) => Err(e),
                    Ok(place) => tokio::task::spawn_blocking(move || write(&caller, place))
                        .await
                        .unwrap_or_else(|e| Err(Status::internal(format!("the write failed: {e}")))),
                };
                (name, outcome)
            }
        };
        let outcome = match outcome {
            Ok((versions, in_force)) => match self
                .in_force(tenant, in_force.as_deref(), &[&versions.0, &before])
                .await
            {
                Ok(()) => Ok(versions),
                Err(e) => Err((e, Some(versions))),
            },
            Err(e) => Err((e, None)),
        };
        let (old, new, result) = match &outcome {
            Ok((old, new)) => (old.as_str(), new.as_str(), Code::Ok),
            Err((e, versions)) => (
                versions.as_ref().map_or("", |v| v.0.as_str()),
                versions.as_ref().map_or("", |v| v.1.as_str()),
                e.code(),
            ),
        };
        self.audit.record(&Audited {
            caller: &caller_name,
            tenant,
            call,
            origin,
            old_version: old,
            new_version: new,
            result: result_name(result),
        });
        match outcome {
            Ok((_, new)) => Ok(new),
            Err((e, _)) => Err(e),
        }
    }

    /// An entry call: `change` applied, with `origin`, to `tenant`'s policy
    /// at `expected_version` (empty: as it is now).
    async fn edit_entry<C>(
        &self,
        call: &'static str,
        caller: Result<Caller, Status>,
        tenant: String,
        origin: String,
        expected_version: String,
        change: C,
    ) -> Result<String, Status>
    where
        C: Fn(&str, &Policy, &str) -> Result<String, Refused> + Send + 'static,
    {
        let (for_audit, tenant_name) = (origin.clone(), tenant.clone());
        self.write(call, caller, &tenant_name, Some(&for_audit), move |_, place| {
            let shown = place.shown(&tenant);
            match place.edit(&tenant, expected(&expected_version), |text, policy| {
                change(text, policy, &origin)
            }) {
                Ok(edited) => Ok((versions(&edited), Some(edited.new_version()))),
                Err(e) => Err(status_of(e, &shown, "origin")),
            }
        })
        .await
    }

    /// Waits until `tenant`'s policy in force has `version` (`None`: until
    /// the tenant is gone).
    ///
    /// A write made just after this one can replace it before it is seen
    /// (a burst is swapped at once): once a version is in force that is
    /// none of `older` (the version this write replaced, and the one in
    /// force before it), this write is in force too, or behind a newer one.
    async fn in_force(&self, tenant: &str, version: Option<&str>, older: &[&str]) -> Result<(), Status> {
        let mut swaps = self.store.follow();
        let deadline = tokio::time::Instant::now() + IN_FORCE_TIMEOUT;
        loop {
            let now = self.store.tenant(tenant).map(|s| s.policy.version().to_owned());
            let superseded = version.is_some() && now.as_deref().is_some_and(|now| !older.contains(&now));
            if now.as_deref() == version || superseded {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, swaps.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Status::internal("the store is gone")),
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "written, but not in force within {} s (the reloader logs why)",
                        IN_FORCE_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }
}

/// `expected_version`, `None` when empty.
fn expected(version: &str) -> Option<&str> {
    (!version.is_empty()).then_some(version)
}

/// An editor's refusal as a status.
fn status_of(error: EditError, file: &str, field: &str) -> Status {
    let bad_request = |message: String, violations: Vec<String>| {
        let mut details = ErrorDetails::new();
        for violation in violations {
            details.add_bad_request_violation(field, violation);
        }
        Status::with_error_details(Code::InvalidArgument, message, details)
    };
    match error {
        EditError::Path(why) => Status::not_found(format!("{file}: {why}")),
        EditError::Unreadable(e) if e.kind() == io::ErrorKind::NotFound => {
            Status::not_found(format!("{file}: no such policy"))
        }
        EditError::Unreadable(e) => Status::unavailable(format!("{file}: {}", policy_file::unreadable_message(&e))),
        EditError::Lock(e) | EditError::Write(e) if read_only(&e) => {
            Status::failed_precondition(format!("{file}: the policy store is read-only: {e}"))
        }
        EditError::Lock(e) | EditError::Write(e) => Status::unavailable(format!("{file}: cannot write: {e}")),
        EditError::Unavailable(why) => Status::unavailable(format!("{file}: {why}")),
        EditError::NotText => Status::failed_precondition(format!("{file}: the stored policy is not UTF-8 text")),
        EditError::InvalidNow(error) => Status::failed_precondition(format!(
            "{file}: the stored policy is not valid; fix it with PutPolicy: {}",
            edit::error_lines(&error, file).join("; ")
        )),
        EditError::Changed { current } => Status::aborted(format!("{file}: the policy is at version {current}")),
        EditError::Refused(why) => {
            let message = format!("{file}: {why}");
            match why {
                Refused::BadOrigin(_) => bad_request(message.clone(), vec![message]),
                Refused::Duplicate(_) => Status::already_exists(message),
                Refused::Absent(_) => Status::not_found(message),
                Refused::Layout(_) => Status::failed_precondition(message),
            }
        }
        EditError::WouldBeInvalid(error) => {
            let lines = edit::error_lines(&error, file);
            bad_request(format!("{file}: the edit would make the policy invalid"), lines)
        }
    }
}

fn read_only(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied
    )
}

fn versions(edited: &Edited) -> Versions {
    (edited.old_version(), edited.new_version())
}

#[tonic::async_trait]
impl PolicyAdmin for PolicyAdminService {
    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let tenant = request.get_ref().tenant.clone();
        if let Err(denied) = self.admin.admit_for(&request, &tenant) {
            self.audit.record(&Audited {
                caller: "none",
                tenant: &tenant,
                call: "GetPolicy",
                origin: None,
                old_version: "",
                new_version: "",
                result: result_name(denied.code()),
            });
            return Err(denied);
        }
        let place = self.place_of(&tenant)?;
        let shown = place.shown(&tenant);
        let read = tokio::task::spawn_blocking(move || place.read())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        match read {
            Ok(Some((text, _))) => Ok(Response::new(pb::GetPolicyResponse {
                version: Policy::version_of(text.as_bytes()),
                text,
            })),
            Ok(None) => Err(Status::not_found(format!("no tenant `{tenant}`"))),
            Err(e) => Err(status_of(e, &shown, "tenant")),
        }
    }

    async fn put_policy(
        &self,
        request: Request<pb::PutPolicyRequest>,
    ) -> Result<Response<pb::PutPolicyResponse>, Status> {
        let r = request.get_ref().clone();
        let caller = self.admit_write(&request, &r.tenant);
        let tenant = r.tenant.clone();
        let version = self
            .write("PutPolicy", caller, &tenant, None, move |caller, place| {
                let create = r.expected_version.is_empty();
                if create && caller.only_tenant().is_some() {
                    return Err(Status::permission_denied("a tenant's token cannot create its tenant"));
                }
                let shown = place.shown(&r.tenant);
                if let Outcome::Invalid(error) = policy_file::compile(&shown, r.text.as_bytes()) {
                    let mut details = ErrorDetails::new();
                    for line in edit::error_lines(&error, &shown) {
                        details.add_bad_request_violation("text", line);
                    }
                    let message = format!("{shown}: {} error(s): not a valid policy", error.error_count());
                    return Err(Status::with_error_details(Code::InvalidArgument, message, details));
                }
                let new = Policy::version_of(r.text.as_bytes());
                match place.put(&r.text, expected(&r.expected_version)) {
                    Ok(edited) => Ok((
                        (if create { String::new() } else { edited.old_version() }, new.clone()),
                        Some(new),
                    )),
                    Err(EditError::Changed { .. }) if create => Err(Status::already_exists(format!(
                        "tenant `{}` exists: give its expected_version to replace it",
                        r.tenant
                    ))),
                    Err(e) => Err(status_of(e, &shown, "text")),
                }
            })
            .await?;
        Ok(Response::new(pb::PutPolicyResponse { version }))
    }

    async fn delete_policy(
        &self,
        request: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        let r = request.get_ref().clone();
        let caller = self.admit_write(&request, &r.tenant);
        let single = matches!(self.source, PolicySource::File(_));
        let tenant = r.tenant.clone();
        self.write("DeletePolicy", caller, &tenant, None, move |caller, place| {
            if caller.only_tenant().is_some() {
                return Err(Status::permission_denied("a tenant's token cannot delete its tenant"));
            }
            if single {
                return Err(Status::failed_precondition(
                    "the one policy of --policy cannot be deleted",
                ));
            }
            let shown = place.shown(&r.tenant);
            match place.delete(expected(&r.expected_version)) {
                Ok(text) => Ok(((Policy::version_of(text.as_bytes()), String::new()), None)),
                Err(e) => Err(status_of(e, &shown, "tenant")),
            }
        })
        .await?;
        Ok(Response::new(pb::DeletePolicyResponse {}))
    }

    async fn add_entry(&self, request: Request<pb::AddEntryRequest>) -> Result<Response<pb::AddEntryResponse>, Status> {
        let r = request.get_ref().clone();
        let caller = self.admit_write(&request, &r.tenant);
        let note = (!r.note.is_empty()).then_some(r.note);
        let version = self
            .edit_entry(
                "AddEntry",
                caller,
                r.tenant,
                r.origin,
                r.expected_version,
                move |text, policy, origin| edit::add(text, policy, origin, note.as_deref()),
            )
            .await?;
        Ok(Response::new(pb::AddEntryResponse { version }))
    }

    async fn remove_entry(
        &self,
        request: Request<pb::RemoveEntryRequest>,
    ) -> Result<Response<pb::RemoveEntryResponse>, Status> {
        let r = request.get_ref().clone();
        let caller = self.admit_write(&request, &r.tenant);
        let version = self
            .edit_entry(
                "RemoveEntry",
                caller,
                r.tenant,
                r.origin,
                r.expected_version,
                edit::remove,
            )
            .await?;
        Ok(Response::new(pb::RemoveEntryResponse { version }))
    }
}
