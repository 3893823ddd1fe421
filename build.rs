//! Code generation only: compiles `proto/corsd/v1/corsd.proto` with `protox`
//! (no system `protoc`) and keeps the file descriptor set for gRPC reflection,
//! beside the parts of Envoy's API that describe its `Authorization` service
//! and the filters native mode writes out (`proto/envoy/descriptors.bin`, kept
//! in the repository: the build reads no other package's files).
//!
//! Two passes:
//! - `pb`: corsd's messages and its client, as the proto declares them.
//! - `stubs`: the server side of `corsd.v1.CorsPolicy` and of Envoy's
//!   `envoy.service.auth.v3.Authorization`, with no messages of their own.
//!   Their types come from `pb` and `envoy-types`, except the two hot calls,
//!   which take and return corsd's zero-copy wire forms (`src/grpc/wire.rs`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

/// Envoy's API as far as corsd uses it: the descriptors `envoy-types` was
/// compiled from, trimmed to the files below and their imports, and kept in
/// the repository so the build needs nothing from another package.
const ENVOY_DESCRIPTORS: &str = "proto/envoy/descriptors.bin";

/// The file that declares Envoy's ext_authz service.
const ENVOY_AUTHZ_PROTO: &str = "envoy/service/auth/v3/external_auth.proto";

/// The files of every message native mode writes out as JSON or YAML
/// (`corsd envoy-config`), the types its `Any` fields hold included.
const ENVOY_NATIVE_PROTOS: [&str; 6] = [
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/cors/v3/cors.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/type/matcher/v3/http_inputs.proto",
    "envoy/config/rbac/v3/rbac.proto",
    "envoy/config/core/v3/extension.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/corsd/v1/corsd.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed={ENVOY_DESCRIPTORS}");

    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("corsd_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(descriptors.clone())?;

    // The part of etcd's API `--policy-etcd` uses: a client only.
    let etcd = "proto/etcd/etcdserverpb.proto";
    println!("cargo:rerun-if-changed={etcd}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(protox::compile([etcd], ["proto"])?)?;

    let mut services_only = descriptors;
    for file in &mut services_only.file {
        file.message_type.clear();
        file.enum_type.clear();
    }
    let envoy = envoy_descriptors(&[ENVOY_AUTHZ_PROTO])?;
    std::fs::write(out_dir.join("envoy_authz_descriptor.bin"), envoy.encode_to_vec())?;
    let native = envoy_descriptors(&ENVOY_NATIVE_PROTOS)?;
    std::fs::write(out_dir.join("envoy_native_descriptor.bin"), native.encode_to_vec())?;
    let mut authorization = envoy
        .file
        .iter()
        .find(|f| f.name() == ENVOY_AUTHZ_PROTO)
        .cloned()
        .ok_or("envoy-types' descriptor set lacks external_auth.proto")?;
    authorization.message_type.clear();
    authorization.enum_type.clear();
    services_only.file.push(authorization);
    let stubs = out_dir.join("stubs");
    std::fs::create_dir_all(&stubs)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(stubs)
        .extern_path(".corsd.v1", "crate::grpc::pb")
        .extern_path(".corsd.v1.CheckOriginRequest", "crate::grpc::wire::CheckOriginCall")
        .extern_path(".corsd.v1.CheckOriginResponse", "crate::grpc::wire::Encoded")
        .extern_path(".envoy.service.auth.v3.CheckRequest", "crate::grpc::wire::AuthzCall")
        .extern_path(".envoy.service.auth.v3.CheckResponse", "crate::grpc::wire::Encoded")
        .compile_fds(services_only)?;
    Ok(())
}

/// `roots` and every file they import, taken from the descriptor set the
/// repository keeps (`proto/envoy/descriptors.bin`, made from the one
/// `envoy-types` ships by `scripts/envoy-descriptors`).
fn envoy_descriptors(roots: &[&str]) -> Result<FileDescriptorSet, Box<dyn std::error::Error>> {
    let bin = Path::new(ENVOY_DESCRIPTORS);
    let all = FileDescriptorSet::decode(std::fs::read(bin)?.as_slice())?;
    let by_name: HashMap<&str, &FileDescriptorProto> = all.file.iter().map(|f| (f.name(), f)).collect();
    // Dependencies first, as a descriptor set lists them.
    let mut wanted = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack: Vec<(&str, bool)> = roots.iter().map(|r| (*r, false)).collect();
    while let Some((name, expanded)) = stack.pop() {
        if expanded {
            wanted.push(name);
            continue;
        }
        if !seen.insert(name) {
            continue;
        }
        let file = by_name
            .get(name)
            .ok_or_else(|| format!("{ENVOY_DESCRIPTORS} lacks {name}: run scripts/envoy-descriptors"))?;
        stack.push((name, true));
        stack.extend(file.dependency.iter().map(|d| (d.as_str(), false)));
    }
    Ok(FileDescriptorSet {
        file: wanted
            .iter()
            .filter_map(|n| by_name.get(n).map(|f| (*f).clone()))
            .collect(),
    })
}
