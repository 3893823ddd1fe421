//! Minimised inputs the fuzz targets once crashed on (`fuzz/regressions/`),
//! replayed through the same code on every test run.

use std::path::Path;

use corsd::core::origin::parse_request_origin;
use corsd::core::{OriginPattern, Policy};
use corsd::grpc::Store;
use corsd::grpc::cors_policy::CorsPolicyService;
use corsd::grpc::ext_authz::AuthorizationService;
use corsd::grpc::pb::CheckOriginResponse;
use corsd::grpc::wire::{AuthzCall, CheckOriginCall};
use envoy_types::ext_authz::v3::pb::CheckResponse;
use prost::Message;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n != ".keep") {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

#[test]
fn fuzz_regressions_stay_fixed() {
    for (name, bytes) in inputs("request_origin") {
        println!("{name}");
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = parse_request_origin(text);
        }
    }
    for (name, bytes) in inputs("pattern") {
        println!("{name}");
        if let Ok(pattern) = String::from_utf8_lossy(&bytes).parse::<OriginPattern>() {
            assert_eq!(
                pattern.as_str().parse::<OriginPattern>().as_ref(),
                Ok(&pattern),
                "{name}"
            );
        }
    }
    for (name, bytes) in inputs("policy") {
        println!("{name}");
        let _ = Policy::compile("regression.toml", &bytes);
    }
    let store = Store::for_test("[[entries]]\norigin = \"https://*.example.com\"\n").unwrap();
    let (cors, authz) = (CorsPolicyService::new(store.clone()), AuthorizationService::new(store));
    for (name, bytes) in inputs("calls") {
        println!("{name}");
        if let Ok(Ok(answer)) = CheckOriginCall::decode(&bytes[..]).map(|call| cors.answer(&call)) {
            CheckOriginResponse::decode(answer.as_bytes()).unwrap();
        }
        if let Ok(Ok(answer)) = AuthzCall::decode(&bytes[..]).map(|call| authz.answer(&call)) {
            CheckResponse::decode(answer.as_bytes()).unwrap();
        }
    }
}
