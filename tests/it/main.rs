//! corsd's integration tests, one binary: the shared case tables run through
//! every layer (core, command line, gRPC), plus properties, allocation
//! counting, hot reload and the served process.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

mod browser;
mod cli;
mod common;
mod core_cases;
mod docs;
mod entries;
mod envoy;
mod envoy_mtls;
mod etcd_client;
mod etcd_store;
mod floods;
mod fuzz_regressions;
mod interop;
mod invalid_policies;
mod kubernetes;
mod layouts;
mod load_smoke;
mod metrics;
mod native;
mod native_shadow;
mod no_alloc;
mod ops_kit;
mod policy_admin;
mod properties;
mod reload;
mod replicas;
mod serve_process;
mod service;
mod shadow;
mod tenants;
mod tls;
mod transport;
mod usage;
mod wire;
