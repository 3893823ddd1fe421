//! Any bytes as a `CheckOrigin` request and as an ext_authz `Check` request:
//! reading and answering never panic, and every answer is a message that the
//! generated types read and write back to the same bytes.
#![no_main]

use std::sync::LazyLock;

use corsd::grpc::cors_policy::CorsPolicyService;
use corsd::grpc::ext_authz::AuthorizationService;
use corsd::grpc::pb::CheckOriginResponse;
use corsd::grpc::wire::{AuthzCall, CheckOriginCall};
use corsd::store::PolicyStore;
use envoy_types::ext_authz::v3::pb::CheckResponse;
use libfuzzer_sys::fuzz_target;
use prost::Message;

static SERVICES: LazyLock<(CorsPolicyService, AuthorizationService)> = LazyLock::new(|| {
    let text = "[cors]\nallow_methods = [\"*\"]\nallow_headers = [\"*\"]\nallow_credentials = true\n\
[[entries]]\norigin = \"https://*.example.com\"\n[[entries]]\norigin = \"http://localhost:3000\"\n";
    let store = PolicyStore::for_test(text).expect("the fuzz policy compiles");
    (CorsPolicyService::new(store.clone()), AuthorizationService::new(store))
});

fuzz_target!(|bytes: &[u8]| {
    let (cors, authz) = &*SERVICES;
    if let Ok(Ok(answer)) = CheckOriginCall::decode(bytes).map(|call| cors.answer(&call)) {
        let read = CheckOriginResponse::decode(answer.as_bytes()).expect("a CheckOriginResponse");
        assert_eq!(read.encode_to_vec(), answer.as_bytes());
    }
    if let Ok(Ok(answer)) = AuthzCall::decode(bytes).map(|call| authz.answer(&call)) {
        let read = CheckResponse::decode(answer.as_bytes()).expect("a CheckResponse");
        assert_eq!(read.encode_to_vec(), answer.as_bytes());
    }
});
