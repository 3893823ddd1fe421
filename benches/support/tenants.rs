//! The tenant sets the tenant benchmarks decide with: tenants of 20 entries
//! each (half exact, half wildcards), every one in effect on its own host
//! and on a shared API host.

use std::sync::Arc;

use corsd::core::{Policy, Request, TenantSet};

/// Tenant `i`'s policy file.
pub fn tenant_text(i: usize) -> String {
    let mut text = format!("label = \"org-{i}\"\n[scope]\nhosts = [\"org-{i}.my.example.com\", \"api.example.com\"]\n");
    for e in 0..20 {
        if e % 2 == 0 {
            text.push_str(&format!("[[entries]]\norigin = \"https://app-{e}.org-{i}.example\"\n"));
        } else {
            text.push_str(&format!("[[entries]]\norigin = \"https://*.p{e}.org-{i}.example\"\n"));
        }
    }
    text
}

/// What a set keeps per tenant: here the policy alone.
pub struct Held(pub Policy);

impl AsRef<Policy> for Held {
    fn as_ref(&self) -> &Policy {
        &self.0
    }
}

/// Tenant `i`'s policy, compiled.
pub fn compile(i: usize) -> Policy {
    Policy::compile("t", tenant_text(i).as_bytes())
        .expect("a valid policy")
        .policy
}

/// A set of `n` tenants, `org-0` to `org-{n-1}`.
pub fn set_of(n: usize) -> TenantSet<Held> {
    TenantSet::from_tenants((0..n).map(|i| (Arc::from(format!("org-{i}")), Arc::new(Held(compile(i))))))
}

/// An allowed request from tenant 7's exact entry to `authority`.
pub fn request(authority: &str) -> Request<'_> {
    Request {
        authority,
        path: "/services/data",
        ..Request::get("https://app-4.org-7.example")
    }
}
