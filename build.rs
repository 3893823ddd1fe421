//! Code generation only: compiles `proto/corsd/v1/corsd.proto` with `protox`
//! (no system `protoc`) and keeps the file descriptor set for gRPC reflection.
//!
//! Two passes:
//! - `pb`: corsd's messages and its client, as the proto declares them.
//! - `stubs`: the server side of `corsd.v1.CorsPolicy` and of Envoy's
//!   `envoy.service.auth.v3.Authorization`, with no messages of their own.
//!   Their types come from `pb` and `envoy-types`, except the two hot calls,
//!   which take and return corsd's zero-copy wire forms (`src/grpc/wire.rs`).

use std::path::PathBuf;

use prost_types::{FileDescriptorProto, MethodDescriptorProto, ServiceDescriptorProto};

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
    services_only.file.push(envoy_authorization());
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

/// Envoy's `Authorization` service: one method, `Check(CheckRequest) returns
/// (CheckResponse)`, as `envoy/service/auth/v3/external_auth.proto` declares it.
fn envoy_authorization() -> FileDescriptorProto {
    let package = "envoy.service.auth.v3";
    FileDescriptorProto {
        name: Some("envoy/service/auth/v3/external_auth.proto".into()),
        package: Some(package.into()),
        syntax: Some("proto3".into()),
        service: vec![ServiceDescriptorProto {
            name: Some("Authorization".into()),
            method: vec![MethodDescriptorProto {
                name: Some("Check".into()),
                input_type: Some(format!(".{package}.CheckRequest")),
                output_type: Some(format!(".{package}.CheckResponse")),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
