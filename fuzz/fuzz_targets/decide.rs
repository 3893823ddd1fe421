//! Any request against a fixed policy: deciding never panics, and an allowed
//! request always echoes its own `Origin`, never another.
#![no_main]

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use corsd::core::{HeaderName, Policy, Request, Verdict, decide};
use libfuzzer_sys::fuzz_target;

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    let text = b"[cors]\nallow_methods = [\"*\"]\nallow_headers = [\"*\"]\n[scope]\nhosts = [\"api.example.com\"]\n\
paths = [\"/v1\"]\n[[entries]]\norigin = \"https://*.example.com\"\n[[entries]]\norigin = \"http://localhost:3000\"\n";
    Policy::compile("fuzz.toml", text)
        .expect("the fuzz policy compiles")
        .policy
});

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    origin: Option<&'a str>,
    method: &'a str,
    request_method: Option<&'a str>,
    request_headers: Vec<&'a str>,
    private_network: bool,
    scheme: &'a str,
    authority: &'a str,
    path: &'a str,
}

fuzz_target!(|input: Input<'_>| {
    let request = Request {
        origin: input.origin,
        several_origins: false,
        method: input.method,
        request_method: input.request_method,
        request_headers: &input.request_headers,
        request_private_network: input.private_network,
        scheme: input.scheme,
        authority: input.authority,
        path: input.path,
    };
    let decision = decide(&POLICY, &request);
    if decision.verdict == Verdict::Allow {
        let echoed = decision
            .response_headers
            .iter()
            .find(|h| h.name == HeaderName::AllowOrigin);
        assert_eq!(echoed.map(|h| &*h.value), input.origin);
    }
});
