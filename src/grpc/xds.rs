//! `corsd serve --xds` (DESIGN.md section 13): Envoy's Extension Config
//! Discovery Service on corsd's own port, state of the world over a stream.
//! The resources are the RBAC filters native mode compiles
//! ([`crate::native::envoy::served_extension`]): `corsd-rbac` in single mode,
//! `corsd-rbac/NAME` for each tenant of a directory.
//!
//! A stream sends what Envoy asks for at once, and again after every swap
//! that changes it, versioned by the policy versions it holds. An ACK
//! changes nothing; a NACK is logged with Envoy's detail and the policy in
//! force stays what it is until the next swap.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::extension::v3::extension_config_discovery_service_server::ExtensionConfigDiscoveryService;
use envoy_types::util::pack_any;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::admin::AdminGate;
use super::{Snapshot, Store};
use crate::native::envoy::{RBAC_FILTER, served_extension};
use crate::store::PolicyStore;

/// The type of every resource served.
pub const TYPE_URL: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

/// ECDS over the policies in `store`.
#[derive(Debug, Clone)]
pub struct ExtensionConfigs {
    store: Arc<Store>,
    /// The candidates (`--shadow-policy`), served as each filter's shadow matcher.
    shadow: Option<Arc<PolicyStore>>,
    admin: AdminGate,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl ExtensionConfigs {
    /// Serves the policies of `store` to the clients `admin` admits (the
    /// filters hold the whole allowlist, as `ListEntries` does); streams end
    /// with UNAVAILABLE once `stopping` turns true, so Envoy moves on to
    /// another replica.
    pub fn new(store: Arc<Store>, admin: AdminGate, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        ExtensionConfigs {
            store,
            shadow: None,
            admin,
            stopping,
        }
    }

    /// The same service, each tenant's candidate in `shadow` served as its
    /// filter's shadow matcher.
    pub fn with_shadow(mut self, shadow: Option<Arc<PolicyStore>>) -> Self {
        self.shadow = shadow;
        self
    }

    /// The policies in force for `names`, each known one's tenant and
    /// snapshot; `*` (a wildcard subscription): every tenant's.
    fn snapshots(&self, names: &[String]) -> Vec<Served> {
        let candidate = |tenant: &str| self.shadow.as_ref().and_then(|s| s.tenant(tenant));
        if names.iter().any(|n| n == "*") {
            return self
                .store
                .tenants_full()
                .sorted()
                .into_iter()
                .map(|(name, snapshot)| (name.to_owned(), Arc::clone(snapshot), candidate(name)))
                .collect();
        }
        names
            .iter()
            .filter_map(|name| {
                let tenant = self.tenant_of(name)?;
                Some((tenant.to_owned(), self.store.tenant(tenant)?, candidate(tenant)))
            })
            .collect()
    }

    /// The version of what `names` stand for: their policy versions (one
    /// name: its policy's version), each with `+` and its candidate's.
    fn version(snapshots: &[Served]) -> String {
        let versions: Vec<String> = snapshots
            .iter()
            .map(|(_, s, candidate)| match candidate {
                Some(c) => format!("{}+{}", s.policy.version(), c.policy.version()),
                None => s.policy.version().to_owned(),
            })
            .collect();
        versions.join(",")
    }

    /// The response carrying `snapshots`' resources.
    fn response(snapshots: &[Served], nonce: u64) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: Self::version(snapshots),
            resources: snapshots
                .iter()
                .map(|(tenant, snapshot, candidate)| {
                    pack_any(served_extension(
                        &snapshot.policy,
                        candidate.as_ref().map(|c| &c.policy),
                        tenant,
                    ))
                })
                .collect(),
            type_url: TYPE_URL.to_owned(),
            nonce: nonce.to_string(),
            ..DiscoveryResponse::default()
        }
    }

    /// The tenant a resource name stands for, if it names one.
    fn tenant_of<'n>(&self, name: &'n str) -> Option<&'n str> {
        if name == RBAC_FILTER {
            return self.store.is_single().then_some("");
        }
        name.strip_prefix(RBAC_FILTER)?
            .strip_prefix('/')
            .filter(|_| !self.store.is_single())
    }
}

/// A tenant served: its name, its snapshot and its candidate's, if any.
type Served = (String, Arc<Snapshot>, Option<Arc<crate::store::Snapshot>>);

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExtensionConfigDiscoveryService for ExtensionConfigs {
    type StreamExtensionConfigsStream = Responses;
    type DeltaExtensionConfigsStream = DeltaResponses;

    async fn stream_extension_configs(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        self.admin.check(&request).await?;
        let mut requests = request.into_inner();
        let (send, receive) = tokio::sync::mpsc::channel(4);
        let service = self.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut swaps = service.store.follow();
            let mut candidate_swaps = service.shadow.as_ref().map(|s| s.follow());
            let mut wanted: Option<Vec<String>> = None;
            let mut sent_version: Option<String> = None;
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    request = requests.message() => match request {
                        Ok(Some(request)) => {
                            if let Some(error) = &request.error_detail {
                                warn!(
                                    resources = ?request.resource_names,
                                    nonce = %request.response_nonce,
                                    in_force = %request.version_info,
                                    "Envoy rejected the RBAC filter corsd sent (NACK): {}",
                                    error.message
                                );
                            }
                            let names = request.resource_names;
                            // A new subscription, or a new set of names: answer it.
                            if request.response_nonce.is_empty() || wanted.as_ref() != Some(&names) {
                                unknown_names(&service, &names);
                                wanted = Some(names);
                                sent_version = None;
                            }
                        }
                        Ok(None) | Err(_) => return,
                    },
                    changed = swaps.changed() => if changed.is_err() { return },
                    changed = async {
                        match &mut candidate_swaps {
                            Some(swaps) => swaps.changed().await,
                            None => std::future::pending().await,
                        }
                    } => if changed.is_err() { return },
                    () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                        let _ = send.send(Err(Status::unavailable("corsd is shutting down"))).await;
                        return;
                    }
                }
                let Some(names) = &wanted else { continue };
                let snapshots = service.snapshots(names);
                if sent_version.as_deref() == Some(ExtensionConfigs::version(&snapshots).as_str()) {
                    continue;
                }
                nonce += 1;
                let response = ExtensionConfigs::response(&snapshots, nonce);
                info!(resources = ?names, version = %response.version_info, "ECDS: sending the RBAC filter");
                sent_version = Some(response.version_info.clone());
                if send.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receive,
        ))))
    }

    async fn delta_extension_configs(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponses>, Status> {
        Err(Status::unimplemented(
            "corsd serves ECDS as state of the world: use api_type GRPC, not DELTA_GRPC",
        ))
    }

    async fn fetch_extension_configs(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        self.admin.check(&request).await?;
        let mut names = request.into_inner().resource_names;
        // A fetch naming nothing asks for everything.
        if names.is_empty() {
            names.push("*".to_owned());
        }
        Ok(Response::new(ExtensionConfigs::response(&self.snapshots(&names), 0)))
    }
}

fn unknown_names(service: &ExtensionConfigs, names: &[String]) {
    for name in names.iter().filter(|n| *n != "*") {
        if service.tenant_of(name).and_then(|t| service.store.tenant(t)).is_none() {
            warn!(
                resource = %name,
                "ECDS: no such resource (corsd-rbac in single mode, corsd-rbac/TENANT with --policy-dir)"
            );
        }
    }
}
