//! corsd: a CORS policy decision point for API gateways.
//!
//! [`core`] decides; the rest of the crate serves those decisions over gRPC
//! (corsd's own API and Envoy's ext_authz), keeps the policy file in force,
//! and offers the `corsd` command line.

pub mod cli;
pub mod core;
pub mod edit;
pub mod etcd;
pub mod grpc;
pub mod listen;
pub mod memory;
pub mod native;
pub mod observe;
pub mod policy_file;
pub mod reload;
pub mod server;
pub mod store;
pub mod tls;
pub mod watch;
