//! `decide` does not allocate for an allowed actual request, a denied
//! request, or an allowed preflight without requested headers (counted with
//! a counting global allocator, per thread).

use corsd::core::{Policy, Request, Verdict, decide};

const POLICY: &str = r#"
[cors]
allow_headers = ["content-type", "x-requested-with"]
expose_headers = ["x-request-id"]
allow_private_network = true
[scope]
hosts = ["api.example.com"]
paths = ["/services/data"]
[[entries]]
origin = "https://app.example.org"
[[entries]]
origin = "https://*.example.com"
"#;

fn request<'a>(
    origin: &'a str,
    method: &'a str,
    request_method: Option<&'a str>,
    headers: &'a [&'a str],
) -> Request<'a> {
    Request {
        origin: Some(origin),
        several_origins: false,
        method,
        request_method,
        request_headers: headers,
        request_private_network: true,
        scheme: "https",
        authority: "API.example.com:443",
        path: "/services/data/v60.0/query?q=1",
    }
}

fn assert_no_allocation(policy: &Policy, request: &Request<'_>, want: Verdict) {
    let mut verdict = None;
    let info = allocation_counter::measure(|| {
        let decision = decide(policy, request);
        verdict = Some(decision.verdict);
    });
    assert_eq!(verdict, Some(want), "{request:?}");
    assert_eq!(info.count_total, 0, "{request:?} allocated {} times", info.count_total);
}

#[test]
fn deciding_does_not_allocate() {
    let policy = Policy::compile("p", POLICY.as_bytes()).unwrap().policy;
    assert_no_allocation(
        &policy,
        &request("https://app.example.org", "GET", None, &[]),
        Verdict::Allow,
    );
    assert_no_allocation(
        &policy,
        &request("https://a.b.example.com", "POST", None, &[]),
        Verdict::Allow,
    );
    assert_no_allocation(&policy, &request("https://evil.net", "GET", None, &[]), Verdict::Deny);
    assert_no_allocation(&policy, &request("null", "GET", None, &[]), Verdict::Deny);
    assert_no_allocation(
        &policy,
        &request("https://a.com, https://b.com", "GET", None, &[]),
        Verdict::Deny,
    );
    assert_no_allocation(
        &policy,
        &request("https://x.example.com", "OPTIONS", Some("PUT"), &[]),
        Verdict::Allow,
    );
    assert_no_allocation(
        &policy,
        &request("https://evil.net", "OPTIONS", Some("PUT"), &[]),
        Verdict::Deny,
    );
    // Listed headers are answered with the value built at compile time.
    let headers = ["content-type, X-Requested-With"];
    assert_no_allocation(
        &policy,
        &request("https://x.example.com", "OPTIONS", Some("PUT"), &headers),
        Verdict::Allow,
    );
    let hostile = ["x-secret"; 5000];
    assert_no_allocation(
        &policy,
        &request("https://x.example.com", "OPTIONS", Some("PUT"), &hostile),
        Verdict::Deny,
    );
}

#[test]
fn the_counter_counts() {
    let info = allocation_counter::measure(|| {
        std::hint::black_box(vec![1u8; 16]);
    });
    assert!(info.count_total > 0, "the counting allocator is not in place");
}
