//! Code generation only: compiles `proto/corsd/v1/corsd.proto` with `protox`
//! (no system `protoc`) and keeps the file descriptor set for gRPC reflection,
//! beside the parts of `envoy-types`' own descriptor set that describe Envoy's
//! `Authorization` service and the filters native mode writes out.
//!
//! Two passes:
//! - `pb`: corsd's messages and its client, as the proto declares them.
//! - `stubs`: the server side of `corsd.v1.CorsPolicy` and of Envoy's
//!   `envoy.service.auth.v3.Authorization`, with no messages of their own.
//!   Their types come from `pb` and `envoy-types`, except the two hot calls,
//!   which take and return corsd's zero-copy wire forms (`src/grpc/wire.rs`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

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
/// `envoy-types` package ships (`src/generated/types.bin`).
fn envoy_descriptors(roots: &[&str]) -> Result<FileDescriptorSet, Box<dyn std::error::Error>> {
    let dir = envoy_types_dir()?;
    let bin = dir.join("src/generated/types.bin");
    println!("cargo:rerun-if-changed={}", bin.display());
    let all = FileDescriptorSet::decode(std::fs::read(&bin)?.as_slice())?;
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
            .ok_or_else(|| format!("{} lacks {name}", bin.display()))?;
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

/// Where cargo unpacked the `envoy-types` package: asked of `cargo metadata`
/// for this build's target.
fn envoy_types_dir() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .args(["metadata", "--format-version", "1", "--offline", "--manifest-path"])
        .arg(&manifest);
    if let Ok(target) = std::env::var("TARGET") {
        command.args(["--filter-platform", &target]);
    }
    let output = command.output()?;
    if !output.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    metadata
        .get("packages")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some("envoy-types"))
        .and_then(|p| p.get("manifest_path")?.as_str())
        .and_then(|m| Path::new(m).parent().map(Path::to_path_buf))
        .ok_or_else(|| "cargo metadata does not list envoy-types".into())
}
