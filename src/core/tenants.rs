//! Tenants: one policy per organisation, and which of them decides a request
//! (DESIGN.md section 8).
//!
//! [`TenantSet::select`] is one pure function of the name the gateway gave
//! and the target host: the named tenant; else the one tenant whose
//! `scope.hosts` lists the host; else none (out of scope). A name with no
//! policy and a host listed by several tenants are outcomes, not errors: the
//! caller denies them. Selecting costs at most one hash lookup, whatever the
//! tenant count, and allocates nothing. With a single policy (`--policy
//! FILE`) the set holds one default tenant named `""` that decides every
//! request that names no tenant, so everything behaves as without tenants.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;

use super::decide::{Decision, Reason, Request, decide, without_policy};
use super::origin::MAX_HOST_LEN;
use super::policy::Policy;

/// Longest tenant name.
pub const MAX_TENANT_NAME_LEN: usize = 63;

/// Whether `name` is a tenant name: `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn is_tenant_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    matches!(bytes.first(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.len() <= MAX_TENANT_NAME_LEN
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The tenants listing one scope host: how many, and the one when there is
/// exactly one (a shared host is listed by several, and then no one decides).
#[derive(Debug)]
struct Owners<T> {
    count: usize,
    sole: Option<(Arc<str>, Arc<T>)>,
}

impl<T> Clone for Owners<T> {
    fn clone(&self) -> Self {
        Owners {
            count: self.count,
            sole: self.sole.clone(),
        }
    }
}

/// The policies in force, by tenant name, and the index of their scope hosts.
///
/// `T` is what the caller keeps per tenant (the server keeps a snapshot with
/// its load time); it lends its [`Policy`] through `AsRef`.
#[derive(Debug)]
pub struct TenantSet<T> {
    tenants: HashMap<Arc<str>, Arc<T>, RandomState>,
    /// Each scope host and who lists it: a host listed by one tenant leads
    /// straight to it, so selecting by host is one lookup.
    hosts: HashMap<Arc<str>, Owners<T>, RandomState>,
    /// The tenant `""` of single mode, which decides unnamed requests.
    default: Option<Arc<T>>,
}

/// What [`TenantSet::select`] found.
#[derive(Debug)]
pub enum Selection<'s, T> {
    /// This tenant decides.
    Tenant(&'s str, &'s T),
    /// The gateway named a tenant that has no policy: deny.
    Unknown,
    /// Several tenants list the target host and none was named: deny.
    Ambiguous,
    /// No tenant covers the target: out of scope, forward untouched.
    None,
}

impl<T: AsRef<Policy>> TenantSet<T> {
    /// Single mode: one tenant, named `""`, deciding every unnamed request.
    pub fn single(tenant: Arc<T>) -> Self {
        let mut set = TenantSet::from_tenants(std::iter::once((Arc::<str>::from(""), Arc::clone(&tenant))));
        set.default = Some(tenant);
        set
    }

    /// A set of named tenants (directory mode); none is the default.
    pub fn from_tenants(tenants: impl IntoIterator<Item = (Arc<str>, Arc<T>)>) -> Self {
        let mut set = TenantSet {
            tenants: HashMap::default(),
            hosts: HashMap::default(),
            default: None,
        };
        for (name, tenant) in tenants {
            set.insert(name, tenant);
        }
        set
    }

    /// The same set with `name`'s tenant replaced, added (`Some`) or removed
    /// (`None`). The other tenants' policies are shared, not copied: the two
    /// maps are cloned (pointers only) and the changed tenant's hosts updated.
    pub fn with(&self, name: &str, tenant: Option<Arc<T>>) -> Self {
        let mut set = TenantSet {
            tenants: self.tenants.clone(),
            hosts: self.hosts.clone(),
            default: self.default.clone(),
        };
        let name: Arc<str> = match self.tenants.get_key_value(name) {
            Some((known, _)) => Arc::clone(known),
            None => Arc::from(name),
        };
        let old = set.tenants.remove(&name);
        match (&old, tenant) {
            (Some(old), Some(new)) => {
                // The hosts both versions list keep their count; only the
                // tenant they lead to changes.
                for host in (**old).as_ref().scope_hosts() {
                    set.unlist(host, &name);
                }
                set.list(&name, &new);
                set.resolve_sole(&name, old);
                if name.is_empty() && set.default.is_some() {
                    set.default = Some(Arc::clone(&new));
                }
                set.tenants.insert(name, new);
            }
            (Some(old), None) => {
                for host in (**old).as_ref().scope_hosts() {
                    set.unlist(host, &name);
                }
                set.resolve_sole(&name, old);
                if name.is_empty() {
                    set.default = None;
                }
            }
            (None, Some(new)) => set.insert(name, new),
            (None, None) => {}
        }
        set
    }

    fn insert(&mut self, name: Arc<str>, tenant: Arc<T>) {
        self.list(&name, &tenant);
        self.tenants.insert(name, tenant);
    }

    /// Counts `tenant`'s hosts as listed by `name`.
    fn list(&mut self, name: &Arc<str>, tenant: &Arc<T>) {
        for host in (**tenant).as_ref().scope_hosts() {
            let owners = self.hosts.entry(host.into()).or_insert(Owners { count: 0, sole: None });
            owners.count += 1;
            owners.sole = (owners.count == 1).then(|| (Arc::clone(name), Arc::clone(tenant)));
        }
    }

    /// Takes `name` off `host`'s count.
    fn unlist(&mut self, host: &str, name: &str) {
        let Some(owners) = self.hosts.get_mut(host) else {
            return;
        };
        owners.count = owners.count.saturating_sub(1);
        if owners.count == 0 {
            self.hosts.remove(host);
        } else if owners.sole.as_ref().is_some_and(|(sole, _)| **sole == *name) || owners.count == 1 {
            owners.sole = None;
        }
    }

    /// After `name`'s old version `old` was unlisted: a host left with one
    /// owner leads to it. Finding it scans the tenants, which happens only
    /// when a host shared by exactly two tenants loses one.
    fn resolve_sole(&mut self, name: &str, old: &Arc<T>) {
        for host in (**old).as_ref().scope_hosts() {
            let Some(owners) = self.hosts.get(host) else {
                continue;
            };
            if owners.count != 1 || owners.sole.is_some() {
                continue;
            }
            let sole = self
                .tenants
                .iter()
                .find(|(other, tenant)| ***other != *name && (***tenant).as_ref().scope_hosts().any(|h| h == host))
                .map(|(other, tenant)| (Arc::clone(other), Arc::clone(tenant)));
            if let Some(owners) = self.hosts.get_mut(host) {
                owners.sole = sole;
            }
        }
    }

    /// Chooses the tenant that decides a request to `host` (the target's
    /// authority or host, any case, maybe with a port and a trailing dot),
    /// naming `named` (empty: none named).
    pub fn select<'s>(&'s self, named: &str, host: &str) -> Selection<'s, T> {
        if !named.is_empty() {
            return match self.tenants.get_key_value(named) {
                Some((name, tenant)) => Selection::Tenant(name, tenant),
                None => Selection::Unknown,
            };
        }
        if let Some(default) = &self.default {
            return Selection::Tenant("", default);
        }
        let host = match super::origin::split_host_port(host) {
            Some((host, _)) => host,
            None => host,
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        let owners = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            let mut buffer = [0u8; MAX_HOST_LEN];
            let Some(lower) = buffer.get_mut(..host.len()) else {
                return Selection::None;
            };
            lower.copy_from_slice(host.as_bytes());
            lower.make_ascii_lowercase();
            std::str::from_utf8(lower).ok().and_then(|h| self.hosts.get(h))
        } else {
            self.hosts.get(host)
        };
        match owners {
            Some(Owners {
                count: 1,
                sole: Some((name, tenant)),
            }) => Selection::Tenant(name, tenant),
            Some(Owners { count, .. }) if *count > 1 => Selection::Ambiguous,
            _ => Selection::None,
        }
    }

    /// One tenant by name.
    pub fn get(&self, name: &str) -> Option<&Arc<T>> {
        self.tenants.get(name)
    }

    /// The tenants, in name order.
    pub fn sorted(&self) -> Vec<(&str, &Arc<T>)> {
        let mut all: Vec<(&str, &Arc<T>)> = self.tenants.iter().map(|(n, t)| (&**n, t)).collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// How many tenants there are.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

/// A decision and the tenant it was made for.
#[derive(Debug, Clone)]
pub struct TenantDecision<'a, T> {
    /// The tenant that decided; the name given when it is unknown; empty
    /// when none was selected (and in single mode).
    pub tenant: &'a str,
    /// The decision.
    pub decision: Decision<'a>,
    /// What the caller keeps for the tenant that decided, if one did.
    pub selected: Option<&'a T>,
}

/// Selects the tenant for `request` (named `named` by the gateway, or by the
/// target host) and decides with its policy.
pub fn decide_for<'a, T: AsRef<Policy>, H: AsRef<str>>(
    tenants: &'a TenantSet<T>,
    named: &'a str,
    request: &Request<'a, H>,
) -> TenantDecision<'a, T> {
    let unselected = |tenant, reason| TenantDecision {
        tenant,
        decision: without_policy(reason, request),
        selected: None,
    };
    match tenants.select(named, request.authority) {
        Selection::Tenant(tenant, selected) => TenantDecision {
            tenant,
            decision: decide(selected.as_ref(), request),
            selected: Some(selected),
        },
        Selection::Unknown => unselected(named, Reason::TenantUnknown),
        Selection::Ambiguous => unselected("", Reason::TenantAmbiguous),
        Selection::None => unselected("", Reason::OutOfScope),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Held(Policy);

    impl AsRef<Policy> for Held {
        fn as_ref(&self) -> &Policy {
            &self.0
        }
    }

    fn tenant(hosts: &[&str]) -> Arc<Held> {
        let list = hosts.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(", ");
        let text = format!("[scope]\nhosts = [{list}]\n");
        Arc::new(Held(Policy::compile("t.toml", text.as_bytes()).unwrap().policy))
    }

    fn name<T>(selection: Selection<'_, T>) -> String {
        match selection {
            Selection::Tenant(name, _) => format!("tenant {name}"),
            Selection::Unknown => "unknown".into(),
            Selection::Ambiguous => "ambiguous".into(),
            Selection::None => "none".into(),
        }
    }

    #[test]
    fn selects_in_the_order_of_the_contract() {
        let set = TenantSet::from_tenants([
            ("acme".into(), tenant(&["acme.my.example.com", "api.example.com"])),
            ("globex".into(), tenant(&["globex.my.example.com", "api.example.com"])),
            ("initech".into(), tenant(&[])),
        ]);
        assert_eq!(name(set.select("", "acme.my.example.com")), "tenant acme");
        assert_eq!(name(set.select("", "ACME.My.Example.com.:443")), "tenant acme");
        assert_eq!(name(set.select("", "api.example.com")), "ambiguous");
        assert_eq!(name(set.select("globex", "api.example.com")), "tenant globex");
        assert_eq!(name(set.select("initech", "anything.example")), "tenant initech");
        assert_eq!(name(set.select("", "initech.example")), "none");
        assert_eq!(name(set.select("nobody", "acme.my.example.com")), "unknown");
        assert_eq!(name(set.select("", "")), "none");
    }

    #[test]
    fn single_mode_decides_every_unnamed_request() {
        let set = TenantSet::single(tenant(&["api.example.com"]));
        assert_eq!(name(set.select("", "elsewhere.example")), "tenant ");
        assert_eq!(name(set.select("acme", "api.example.com")), "unknown");
    }

    #[test]
    fn replacing_one_tenant_keeps_the_others() {
        let acme = tenant(&["acme.example.com"]);
        let set = TenantSet::from_tenants([
            ("acme".into(), Arc::clone(&acme)),
            ("b".into(), tenant(&["b.example.com"])),
        ]);
        let next = set.with("b", Some(tenant(&["acme.example.com"])));
        assert!(Arc::ptr_eq(next.get("acme").unwrap(), &acme));
        assert_eq!(name(next.select("", "acme.example.com")), "ambiguous");
        let fewer = next.with("b", None);
        assert_eq!(fewer.len(), 1);
        assert_eq!(name(fewer.select("", "acme.example.com")), "tenant acme");
    }

    proptest::proptest! {
        /// Any sequence of one-tenant changes selects exactly what a set
        /// built from scratch with the same tenants selects.
        #[test]
        fn changes_select_as_a_fresh_build(ops in proptest::collection::vec((0usize..4, proptest::option::of(proptest::collection::vec(0usize..4, 0..3))), 1..12)) {
            let hosts = ["a.example", "b.example", "c.example", "d.example"];
            let mut current: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
            let mut set = TenantSet::from_tenants(std::iter::empty());
            for (tenant, listed) in ops {
                let tenant_name = format!("t{tenant}");
                match &listed {
                    Some(listed) => {
                        let mut listed = listed.clone();
                        listed.sort_unstable();
                        listed.dedup();
                        let names: Vec<&str> = listed.iter().map(|&i| hosts[i]).collect();
                        set = set.with(&tenant_name, Some(super::tests::tenant(&names)));
                        current.insert(tenant_name, listed);
                    }
                    None => {
                        set = set.with(&tenant_name, None);
                        current.remove(&tenant_name);
                    }
                }
                let fresh = TenantSet::from_tenants(current.iter().map(|(n, listed)| {
                    let names: Vec<&str> = listed.iter().map(|&i| hosts[i]).collect();
                    (Arc::from(n.as_str()), super::tests::tenant(&names))
                }));
                for host in hosts {
                    proptest::prop_assert_eq!(name(set.select("", host)), name(fresh.select("", host)), "{}", host);
                }
                proptest::prop_assert_eq!(set.len(), current.len());
            }
        }
    }

    #[test]
    fn tenant_names() {
        for good in ["a", "acme", "acme-prod", "a_b", "0", &"a".repeat(63)] {
            assert!(is_tenant_name(good), "{good}");
        }
        for bad in ["", "Acme", "-a", "_a", "..data", ".acme", "a.b", "a b", &"a".repeat(64)] {
            assert!(!is_tenant_name(bad), "{bad}");
        }
    }
}
