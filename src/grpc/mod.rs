//! The gRPC shells around the core: corsd's own `corsd.v1.CorsPolicy`, Envoy's
//! `envoy.service.auth.v3.Authorization`, standard health and reflection, all
//! on one port. Handlers load one policy snapshot per call and never block.

pub mod admin;
pub mod cors_policy;
pub mod decision;
pub mod ext_authz;
pub mod limits;
pub mod policy_admin;
pub mod wire;
pub mod xds;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::listen;
use crate::store::PolicyStore;

/// The policies in force as the gRPC API keeps them: each snapshot with its
/// prepared answer parts.
pub type Store = PolicyStore<cors_policy::Prepared>;

/// One tenant's policy in force, as [`Store`] holds it.
pub type Snapshot = crate::store::Snapshot<cors_policy::Prepared>;
use decision::DecisionPath;

/// Code generated from `proto/corsd/v1/corsd.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic, reason = "generated code")]
    tonic::include_proto!("corsd.v1");

    /// The encoded file descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("corsd_descriptor");

    /// Envoy's `envoy/service/auth/v3/external_auth.proto` and the files it
    /// imports, from the descriptor set `envoy-types` ships, for reflection.
    pub const ENVOY_AUTHZ_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("envoy_authz_descriptor");
}

/// The server side of `corsd.v1.CorsPolicy` and of Envoy's
/// `envoy.service.auth.v3.Authorization`, generated without messages of their
/// own: the hot calls take and return the [`wire`] forms (see `build.rs`).
pub mod stubs {
    #![allow(missing_docs, clippy::all, clippy::pedantic, reason = "generated code")]
    include!(concat!(env!("OUT_DIR"), "/stubs/corsd.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/stubs/envoy.service.auth.v3.rs"));
}

/// The largest request message corsd decodes by default: a legal CheckOrigin
/// request is far smaller; anything larger is refused before it is decoded.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What one client may ask of the server (DESIGN.md section 10), each a
/// `corsd serve` flag.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Streams (calls) open at once on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Bytes of HTTP/2 headers one call may send (HPACK-decoded).
    pub max_header_list_size: u32,
    /// How often an idle connection is pinged.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Bytes of one request message; larger ones are RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// Connections open at once; one more is closed as soon as accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_streams: 256,
            max_header_list_size: 16 * 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_message_bytes: MAX_MESSAGE_BYTES,
            max_connections: 10_000,
        }
    }
}

/// How the server is run besides its decisions: TLS, admin access and limits.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// TLS (and mTLS) for the port; plaintext when `None`.
    pub tls: Option<Arc<crate::tls::TlsConfig>>,
    /// Who may make admin calls.
    pub admin: admin::AdminGate,
    /// What one client may ask.
    pub limits: Limits,
    /// Also serve Envoy's ECDS with the native-mode RBAC filters (`--xds`).
    pub xds: bool,
    /// Which ext_authz answers carry `dynamic_metadata`.
    pub ext_authz_metadata: ext_authz::ExtAuthzMetadata,
    /// Serve `corsd.v1.PolicyAdmin` over these policy files, auditing into
    /// the log given; off when `None`.
    pub policy_admin: Option<(policy_admin::PolicySource, crate::observe::audit::AuditLog)>,
}

/// The names under which health is reported.
pub const HEALTH_SERVICES: [&str; 3] = ["", "corsd.v1.CorsPolicy", "envoy.service.auth.v3.Authorization"];

/// Sets every reported service to `status`.
pub async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for name in HEALTH_SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// The health service and its reporter, as `tonic_health` makes them.
pub type Health<H> = (HealthReporter, tonic_health::pb::health_server::HealthServer<H>);

/// Serves every corsd service on `listener` until `shutdown` completes, then
/// stops accepting and finishes the calls in flight. Every accepted
/// connection gets `TCP_NODELAY` and keepalive ([`listen::accept`]).
pub async fn serve(
    listener: TcpListener,
    store: Arc<Store>,
    health: Health<impl tonic_health::pb::health_server::Health>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    serve_counted(
        listen::Listener::Tcp(listener),
        DecisionPath::new(store),
        ServeOptions::default(),
        health,
        shutdown,
    )
    .await
}

/// [`serve`], deciding along `path` (which may count into metrics), with
/// `options` (TLS, admin access, limits), on a TCP or Unix listener.
pub async fn serve_counted(
    listener: listen::Listener,
    path: DecisionPath,
    options: ServeOptions,
    health: Health<impl tonic_health::pb::health_server::Health>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (reporter, health_service) = health;
    set_health(&reporter, ServingStatus::Serving).await;
    let limits = options.limits;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(pb::ENVOY_AUTHZ_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // Long-lived xDS streams end when shutdown begins, not at its timeout.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let xds = options.xds.then(|| {
        envoy_types::pb::envoy::service::extension::v3::extension_config_discovery_service_server::ExtensionConfigDiscoveryServiceServer::new(
            xds::ExtensionConfigs::new(std::sync::Arc::clone(path.store()), options.admin.clone(), stopping)
                .with_shadow(path.shadow().cloned()),
        )
    });
    let cors = stubs::cors_policy_server::CorsPolicyServer::new(
        cors_policy::CorsPolicyService::on_path(path.clone()).with_admin(options.admin.clone()),
    )
    .max_decoding_message_size(limits.max_message_bytes);
    let local = listener.is_local();
    let admin_api = options.policy_admin.map(|(source, audit)| {
        stubs::policy_admin_server::PolicyAdminServer::new(
            policy_admin::PolicyAdminService::new(
                std::sync::Arc::clone(path.store()),
                source,
                options.admin.clone(),
                audit,
            )
            .listening_locally(local),
        )
    });
    let authz = stubs::authorization_server::AuthorizationServer::new(
        ext_authz::AuthorizationService::on_path(path).with_metadata(options.ext_authz_metadata),
    )
    .max_decoding_message_size(limits.max_message_bytes);

    let router = Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_header_list_size(limits.max_header_list_size)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .layer(limits::resource_exhausted())
        .add_service(health_service)
        .add_service(cors)
        .add_service(authz)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_optional_service(xds)
        .add_optional_service(admin_api);
    let incoming = listen::accept(listener, options.tls, limits.max_connections);
    router.serve_with_incoming_shutdown(incoming, shutdown).await?;
    Ok(())
}
