//! Tenants: one policy per organisation, and which of them decides a request
//! (DESIGN.md section 8).
//!
//! [`TenantSet::select`] is one pure function of the name the gateway gave
//! and the target host: the named tenant; else the one tenant whose
//! `scope.hosts` lists the host; else none (out of scope). A name with no
//! policy and a host listed by several tenants are outcomes, not errors: the
//! caller denies them. Selecting costs one hash lookup whatever the tenant
//! count (two for a host given with capitals), and allocates nothing. With a single policy (`--policy
//! FILE`) the set holds one default tenant named `""` that decides every
//! request that names no tenant, so everything behaves as without tenants.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;

use super::decide::{Decision, Parsed, Reason, Request, Target, decide_for_target, without_policy};
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

/// The tenants listing one scope host: how many, and the slot of the one
/// when there is exactly one (a shared host is listed by several, and then
/// no one decides).
#[derive(Debug, Clone, Copy)]
struct Owners {
    count: usize,
    sole: Option<usize>,
}

/// Which slot each tenant name and each scope host leads to.
#[derive(Debug, Clone, Default)]
struct Index {
    names: HashMap<Arc<str>, usize, RandomState>,
    /// A host listed by one tenant leads straight to it, so selecting by
    /// host is one lookup.
    hosts: HashMap<Arc<str>, Owners, RandomState>,
    /// Slots of removed tenants, which added ones take first.
    free: Vec<usize>,
}

/// A tenant's name and what the caller keeps for it; `None` once removed.
type Slot<T> = Option<(Arc<str>, Arc<T>)>;

/// The policies in force, by tenant name, and the index of their scope hosts.
///
/// `T` is what the caller keeps per tenant (the server keeps a snapshot with
/// its load time); it lends its [`Policy`] through `AsRef`.
///
/// Replacing one tenant's policy costs the same whatever the tenant count:
/// the tenants sit in a persistent vector, where a change copies one path
/// of the tree and shares the rest, and the index of names and hosts is
/// shared by the two sets. Adding or removing a tenant, or changing its
/// scope hosts, also copies the index (pointers and counts, no policy).
#[derive(Debug)]
pub struct TenantSet<T> {
    index: Arc<Index>,
    slots: imbl::Vector<Slot<T>>,
    /// The tenant `""` of single mode, which decides unnamed requests.
    default: Option<Arc<T>>,
}

impl<T> Clone for TenantSet<T> {
    fn clone(&self) -> Self {
        TenantSet {
            index: Arc::clone(&self.index),
            slots: self.slots.clone(),
            default: self.default.clone(),
        }
    }
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

    /// A set of named tenants (directory mode); none is the default. A
    /// name given twice keeps its last tenant.
    pub fn from_tenants(tenants: impl IntoIterator<Item = (Arc<str>, Arc<T>)>) -> Self {
        let mut set = TenantSet {
            index: Arc::default(),
            slots: imbl::Vector::new(),
            default: None,
        };
        for (name, tenant) in tenants {
            if set.index.names.contains_key(&name) {
                set.set(&name, Some(tenant));
            } else {
                set.insert(name, tenant);
            }
        }
        set
    }

    /// The same set with `name`'s tenant replaced, added (`Some`) or removed
    /// (`None`). The other tenants' policies are shared, not copied.
    pub fn with(&self, name: &str, tenant: Option<Arc<T>>) -> Self {
        let mut set = self.clone();
        set.set(name, tenant);
        set
    }

    /// The same set with every change of `changes` made: one copy of the
    /// index and of the changed paths of the tree, however many tenants
    /// change (a directory's batch).
    pub fn with_all(&self, changes: impl IntoIterator<Item = (Arc<str>, Option<Arc<T>>)>) -> Self {
        let mut set = self.clone();
        for (name, tenant) in changes {
            set.set(&name, tenant);
        }
        set
    }

    /// Replaces, adds (`Some`) or removes (`None`) `name`'s tenant in place.
    fn set(&mut self, name: &str, tenant: Option<Arc<T>>) {
        let Some((name, slot)) = self.index.names.get_key_value(name).map(|(n, &s)| (Arc::clone(n), s)) else {
            if let Some(new) = tenant {
                self.insert(Arc::from(name), new);
            }
            return;
        };
        let Some(old) = self.tenant_in(slot).map(|(_, old)| Arc::clone(old)) else {
            return;
        };
        match tenant {
            Some(new) => {
                if !(*old).as_ref().scope_hosts().eq((*new).as_ref().scope_hosts()) {
                    let index = Arc::make_mut(&mut self.index);
                    let old_hosts = hosts(&old);
                    index.unlist(&old_hosts, slot);
                    index.list(&hosts(&new), slot);
                    index.resolve_sole(&old_hosts, slot, &self.slots);
                }
                if name.is_empty() && self.default.is_some() {
                    self.default = Some(Arc::clone(&new));
                }
                self.put(slot, Some((name, new)));
            }
            None => {
                let index = Arc::make_mut(&mut self.index);
                index.names.remove(&name);
                let old_hosts = hosts(&old);
                index.unlist(&old_hosts, slot);
                index.resolve_sole(&old_hosts, slot, &self.slots);
                index.free.push(slot);
                if name.is_empty() {
                    self.default = None;
                }
                self.put(slot, None);
            }
        }
    }

    fn insert(&mut self, name: Arc<str>, tenant: Arc<T>) {
        let index = Arc::make_mut(&mut self.index);
        let slot = index.free.pop().unwrap_or(self.slots.len());
        index.list(&hosts(&tenant), slot);
        index.names.insert(Arc::clone(&name), slot);
        if slot == self.slots.len() {
            self.slots.push_back(Some((name, tenant)));
        } else {
            self.put(slot, Some((name, tenant)));
        }
    }

    fn put(&mut self, slot: usize, value: Slot<T>) {
        if let Some(place) = self.slots.get_mut(slot) {
            *place = value;
        }
    }

    fn tenant_in(&self, slot: usize) -> Option<(&Arc<str>, &Arc<T>)> {
        self.slots.get(slot)?.as_ref().map(|(name, tenant)| (name, tenant))
    }

    /// Chooses the tenant that decides a request to `host` (the target's
    /// authority or host, any case, maybe with a port and a trailing dot),
    /// naming `named` (empty: none named).
    pub fn select<'s>(&'s self, named: &str, host: &str) -> Selection<'s, T> {
        self.select_for_target(named, Target::of(host).host_or(host))
    }

    /// [`TenantSet::select`] for a target host already split from its port.
    fn select_for_target<'s>(&'s self, named: &str, host: &str) -> Selection<'s, T> {
        let found = |slot: usize| match self.tenant_in(slot) {
            Some((name, tenant)) => Selection::Tenant(name, &**tenant),
            None => Selection::None,
        };
        if !named.is_empty() {
            return match self.index.names.get(named) {
                Some(&slot) => match found(slot) {
                    Selection::None => Selection::Unknown,
                    selected => selected,
                },
                None => Selection::Unknown,
            };
        }
        if let Some(default) = &self.default {
            return Selection::Tenant("", default);
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        // Hosts are indexed in lowercase, as gateways mostly pass them: the
        // host as given is looked up first, and lowercased only if missed.
        let owners = self.index.hosts.get(host).or_else(|| {
            if !host.bytes().any(|b| b.is_ascii_uppercase()) {
                return None;
            }
            let mut buffer = [0u8; MAX_HOST_LEN];
            let lower = buffer.get_mut(..host.len())?;
            lower.copy_from_slice(host.as_bytes());
            lower.make_ascii_lowercase();
            std::str::from_utf8(lower).ok().and_then(|h| self.index.hosts.get(h))
        });
        match owners {
            Some(Owners {
                count: 1,
                sole: Some(slot),
            }) => found(*slot),
            Some(Owners { count, .. }) if *count > 1 => Selection::Ambiguous,
            _ => Selection::None,
        }
    }

    /// One tenant by name.
    pub fn get(&self, name: &str) -> Option<&Arc<T>> {
        self.tenant_in(*self.index.names.get(name)?).map(|(_, tenant)| tenant)
    }

    /// The tenants, in name order.
    pub fn sorted(&self) -> Vec<(&str, &Arc<T>)> {
        let mut all: Vec<(&str, &Arc<T>)> = self
            .index
            .names
            .values()
            .filter_map(|&slot| self.tenant_in(slot))
            .map(|(name, tenant)| (&**name, tenant))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// How many tenants there are.
    pub fn len(&self) -> usize {
        self.index.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.index.names.is_empty()
    }
}

/// A tenant's scope hosts.
fn hosts<T: AsRef<Policy>>(tenant: &Arc<T>) -> Vec<&str> {
    (**tenant).as_ref().scope_hosts().collect()
}

impl Index {
    /// Counts `hosts` as listed by the tenant in `slot`.
    fn list(&mut self, hosts: &[&str], slot: usize) {
        for &host in hosts {
            let owners = self.hosts.entry(host.into()).or_insert(Owners { count: 0, sole: None });
            owners.count += 1;
            owners.sole = (owners.count == 1).then_some(slot);
        }
    }

    /// Takes the tenant in `slot` off the count of each of `hosts`.
    fn unlist(&mut self, hosts: &[&str], slot: usize) {
        for &host in hosts {
            let Some(owners) = self.hosts.get_mut(host) else {
                continue;
            };
            owners.count = owners.count.saturating_sub(1);
            if owners.count == 0 {
                self.hosts.remove(host);
            } else if owners.sole == Some(slot) || owners.count == 1 {
                owners.sole = None;
            }
        }
    }

    /// After the old version of the tenant in `slot` was unlisted from
    /// `hosts`: a host left with one owner leads to it. Finding it scans the
    /// tenants, which happens only when a host shared by exactly two tenants
    /// loses one.
    fn resolve_sole<T: AsRef<Policy>>(&mut self, hosts: &[&str], slot: usize, slots: &imbl::Vector<Slot<T>>) {
        for &host in hosts {
            if !self.hosts.get(host).is_some_and(|o| o.count == 1 && o.sole.is_none()) {
                continue;
            }
            let lists_host = |t: &Slot<T>| {
                t.as_ref()
                    .is_some_and(|(_, t)| (**t).as_ref().scope_hosts().any(|h| h == host))
            };
            let sole = slots
                .iter()
                .enumerate()
                .find_map(|(other, tenant)| (other != slot && lists_host(tenant)).then_some(other));
            if let Some(owners) = self.hosts.get_mut(host) {
                owners.sole = sole;
            }
        }
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
///
/// Inlined, so that the decision is written once, into the caller's frame
/// (as [`ResponseHeaders`](crate::core::decide) explains for `decide`).
#[inline(always)]
pub fn decide_for<'a, T: AsRef<Policy>, H: AsRef<str>>(
    tenants: &'a TenantSet<T>,
    named: &'a str,
    request: &Request<'a, H>,
) -> TenantDecision<'a, T> {
    decide_for_parsed(tenants, named, request, &Parsed::of(request))
}

/// [`decide_for`], with the parts of `request` that `parsed` holds read
/// once, for a second decision of the same request (`decide_parsed`).
#[inline(always)]
pub fn decide_for_parsed<'a, T: AsRef<Policy>, H: AsRef<str>>(
    tenants: &'a TenantSet<T>,
    named: &'a str,
    request: &Request<'a, H>,
    parsed: &Parsed<'a>,
) -> TenantDecision<'a, T> {
    let unselected = |tenant, reason| TenantDecision {
        tenant,
        decision: without_policy(reason, request),
        selected: None,
    };
    match tenants.select_for_target(named, parsed.target.host_or(request.authority)) {
        Selection::Tenant(tenant, selected) => TenantDecision {
            tenant,
            decision: decide_for_target(selected.as_ref(), request, parsed),
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
                for named in ["t0", "t1", "t2", "t3"] {
                    proptest::prop_assert_eq!(name(set.select(named, "a.example")), name(fresh.select(named, "a.example")), "{}", named);
                    let hosts_of = |s: &TenantSet<Held>| s.get(named).map(|t| t.0.scope_hosts().map(str::to_owned).collect::<Vec<_>>());
                    proptest::prop_assert_eq!(hosts_of(&set), hosts_of(&fresh), "{}", named);
                }
                let names = |s: &TenantSet<Held>| s.sorted().into_iter().map(|(n, _)| n.to_owned()).collect::<Vec<_>>();
                proptest::prop_assert_eq!(names(&set), names(&fresh));
                proptest::prop_assert_eq!(set.len(), current.len());
                // Removed tenants' slots are taken again: never more slots
                // than tenant names.
                proptest::prop_assert!(set.slots.len() <= 4, "{} slots", set.slots.len());
            }
        }
    }

    #[test]
    fn a_name_given_twice_keeps_its_last_tenant() {
        let set = TenantSet::from_tenants([
            ("acme".into(), tenant(&["old.example.com"])),
            ("acme".into(), tenant(&["new.example.com"])),
        ]);
        assert_eq!(set.len(), 1);
        assert_eq!(name(set.select("", "new.example.com")), "tenant acme");
        assert_eq!(name(set.select("", "old.example.com")), "none");
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
