//! The desired state of the whole node: every Service's share, merged.
//!
//! [`Desired`] holds each Service's [`ServiceState`] and keeps, beside it, who claims
//! each virtual service key, and reference counts for kube-ipvs0 addresses and ipset
//! members (several Services may share an ExternalIP). Replacing one Service's share
//! reports exactly which keys, addresses and members may have changed ([`Touched`]), so
//! the planner can look at those alone.
//!
//! When two Services claim the same virtual service (the same ExternalIP and port, say),
//! the one whose `namespace/name` sorts first gets it, and the other gets a warning.

use std::net::IpAddr;
use std::sync::Arc;

use kipvs_ipvs::{Family, ServiceKey};

use crate::config::Config;
use crate::hash::HashMap;
use crate::ipset::{Entry, SetName};
use crate::iptables::{FamilyRules, IptablesInputs};
use crate::model::{Node, ServiceName};
use crate::translate::{HealthCheck, NoNodeAccess, ServiceState, Traffic, VirtualService};
use crate::warning::{Reason, Warning};

/// What may have changed when one Service's share was replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Virtual service keys whose desired content may differ.
    pub keys: Vec<ServiceKey>,
    /// kube-ipvs0 addresses that may have become wanted or unwanted.
    pub addresses: Vec<IpAddr>,
    /// ipset members that may have become wanted or unwanted.
    pub members: Vec<Entry>,
    /// Whether the iptables inputs may differ.
    pub iptables: bool,
    /// Whether some key's owning Service port may differ (a key gained or lost its
    /// winner, or the winner's port was renamed); endpoint changes leave it false.
    pub owners: bool,
}

impl Touched {
    /// Adds another change to this one.
    pub fn merge(&mut self, other: Touched) {
        self.keys.extend(other.keys);
        self.addresses.extend(other.addresses);
        self.members.extend(other.members);
        self.iptables |= other.iptables;
        self.owners |= other.owners;
    }

    /// Sorts and removes duplicates.
    pub fn normalize(&mut self) {
        self.keys.sort_unstable();
        self.keys.dedup();
        self.addresses.sort_unstable();
        self.addresses.dedup();
        self.members.sort_unstable();
        self.members.dedup();
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.addresses.is_empty()
            && self.members.is_empty()
            && !self.iptables
    }
}

/// The desired state of the node.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    services: HashMap<ServiceName, ServiceState>,
    claims: HashMap<ServiceKey, Vec<Arc<ServiceName>>>,
    addresses: HashMap<IpAddr, u32>,
    members: HashMap<Entry, u32>,
    set_sizes: HashMap<SetName, usize>,
    no_node_access: HashMap<NoNodeAccess, u32>,
}

fn find(state: &ServiceState, key: &ServiceKey) -> Option<usize> {
    state
        .virtual_services
        .iter()
        .position(|v| v.service.key == *key)
}

impl Desired {
    /// An empty desired state: nothing wanted.
    pub fn new() -> Self {
        Desired::default()
    }

    /// Builds the desired state from every Service's share at once.
    pub fn from_states(states: impl IntoIterator<Item = ServiceState>) -> Self {
        let mut d = Desired::new();
        for s in states {
            d.insert(s);
        }
        d
    }

    /// Sets one Service's share, replacing its previous one. Returns what may have changed.
    pub fn insert(&mut self, state: ServiceState) -> Touched {
        let old = self.services.remove(&state.name);
        let touched = self.account(old.as_ref(), Some(&state), &state.name);
        self.services.insert(state.name.clone(), state);
        touched
    }

    /// Removes one Service's share. Returns what may have changed.
    pub fn remove(&mut self, name: &ServiceName) -> Touched {
        match self.services.remove(name) {
            Some(old) => self.account(Some(&old), None, name),
            None => Touched::default(),
        }
    }

    fn account(
        &mut self,
        old: Option<&ServiceState>,
        new: Option<&ServiceState>,
        name: &ServiceName,
    ) -> Touched {
        let mut touched = Touched::default();
        let empty: &[VirtualService] = &[];
        let old_vs = old.map_or(empty, |s| &s.virtual_services);
        let new_vs = new.map_or(empty, |s| &s.virtual_services);

        for vs in old_vs {
            let key = vs.service.key;
            let still = new.and_then(|n| find(n, &key).map(|i| &n.virtual_services[i]));
            match still {
                Some(same) if same == vs => {}
                Some(same) => {
                    if self.winner(&key) == Some(name) {
                        touched.keys.push(key);
                        touched.owners |= same.owner != vs.owner;
                    }
                }
                None => {
                    let was_winner = self.winner(&key) == Some(name);
                    if let Some(list) = self.claims.get_mut(&key) {
                        list.retain(|n| **n != *name);
                        if list.is_empty() {
                            self.claims.remove(&key);
                        }
                    }
                    if was_winner {
                        touched.keys.push(key);
                        touched.owners = true;
                    }
                }
            }
        }
        let mut shared: Option<Arc<ServiceName>> = None;
        for vs in new_vs {
            let key = vs.service.key;
            if old.is_some_and(|o| find(o, &key).is_some()) {
                continue;
            }
            let list = self.claims.entry(key).or_default();
            if let Err(pos) = list.binary_search_by(|n| (**n).cmp(name)) {
                let arc = shared.get_or_insert_with(|| Arc::new(name.clone()));
                list.insert(pos, Arc::clone(arc));
            }
            if list.first().map(|n| &**n) == Some(name) {
                touched.keys.push(key);
                touched.owners = true;
            }
        }

        let old_addrs = old.map_or(&[][..], |s| &s.addresses[..]);
        let new_addrs = new.map_or(&[][..], |s| &s.addresses[..]);
        for a in only_in(old_addrs, new_addrs) {
            if decrement(&mut self.addresses, a) {
                touched.addresses.push(*a);
            }
        }
        for a in only_in(new_addrs, old_addrs) {
            if increment(&mut self.addresses, *a) {
                touched.addresses.push(*a);
            }
        }

        let old_members = old.map_or(&[][..], |s| &s.members[..]);
        let new_members = new.map_or(&[][..], |s| &s.members[..]);
        for m in only_in(old_members, new_members) {
            if decrement(&mut self.members, m) {
                touched.members.push(*m);
                let size = self.set_sizes.entry(m.0).or_default();
                *size = size.saturating_sub(1);
                touched.iptables |= *size == 0;
            }
        }
        for m in only_in(new_members, old_members) {
            if increment(&mut self.members, *m) {
                touched.members.push(*m);
                let size = self.set_sizes.entry(m.0).or_default();
                *size += 1;
                touched.iptables |= *size == 1;
            }
        }

        let old_nna = old.map_or(&[][..], |s| &s.no_node_access[..]);
        let new_nna = new.map_or(&[][..], |s| &s.no_node_access[..]);
        for n in only_in(old_nna, new_nna) {
            touched.iptables |= decrement(&mut self.no_node_access, n);
        }
        for n in only_in(new_nna, old_nna) {
            touched.iptables |= increment(&mut self.no_node_access, *n);
        }
        touched
    }

    fn winner(&self, key: &ServiceKey) -> Option<&ServiceName> {
        self.claims.get(key).and_then(|l| l.first()).map(|n| &**n)
    }

    /// The virtual service wanted at `key`, from the Service that wins it.
    pub fn virtual_service(&self, key: &ServiceKey) -> Option<&VirtualService> {
        let state = self.services.get(self.winner(key)?)?;
        find(state, key).map(|i| &state.virtual_services[i])
    }

    /// Every wanted virtual service key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.claims.keys()
    }

    /// Every wanted virtual service, one per key, in no particular order.
    pub fn virtual_services(&self) -> impl Iterator<Item = &VirtualService> {
        self.claims.keys().filter_map(|k| self.virtual_service(k))
    }

    /// Number of wanted virtual services.
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    /// Whether nothing is wanted.
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty() && self.addresses.is_empty() && self.members.is_empty()
    }

    /// Whether `addr` should be bound on kube-ipvs0.
    pub fn wants_address(&self, addr: &IpAddr) -> bool {
        self.addresses.contains_key(addr)
    }

    /// Every address to bind on kube-ipvs0.
    pub fn addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.addresses.keys()
    }

    /// Whether `entry` should be in its set.
    pub fn wants_member(&self, entry: &Entry) -> bool {
        self.members.contains_key(entry)
    }

    /// Every wanted ipset member.
    pub fn members(&self) -> impl Iterator<Item = &Entry> {
        self.members.keys()
    }

    /// One Service's share, if it has one.
    pub fn service(&self, name: &ServiceName) -> Option<&ServiceState> {
        self.services.get(name)
    }

    /// Every Service's share.
    pub fn services(&self) -> impl Iterator<Item = &ServiceState> {
        self.services.values()
    }

    /// The warnings of one Service: its input's, its translation's, and one per virtual
    /// service another Service won.
    pub fn warnings(&self, name: &ServiceName) -> Vec<Warning> {
        let Some(state) = self.services.get(name) else {
            return Vec::new();
        };
        let mut out = state.warnings.clone();
        for vs in &state.virtual_services {
            if let Some(winner) = self.winner(&vs.service.key).filter(|w| *w != name) {
                out.push(Warning::new(
                    &name.object_ref(),
                    Reason::Conflict,
                    format!(
                        "{} is also asked for by {winner}, which keeps it",
                        vs.service.key
                    ),
                ));
            }
        }
        out
    }

    /// How many Services have a Local-policy virtual service for `traffic` in `family`
    /// that fell back to every endpoint because this node has none of its own
    /// (kube-proxy's `sync_proxy_rules_no_local_endpoints_total`).
    pub fn without_local_endpoints(&self, traffic: Traffic, family: Family) -> usize {
        self.services
            .values()
            .filter(|s| s.no_local_endpoints.contains(&(family, traffic)))
            .count()
    }

    /// The health check servers to run: one per Local-policy Service with a health
    /// check node port.
    pub fn health_checks(&self) -> impl Iterator<Item = (&ServiceName, HealthCheck)> {
        self.services
            .values()
            .filter_map(|s| s.health_check.map(|h| (&s.name, h)))
    }

    /// What the iptables layer needs to write its rules on `node`.
    pub fn iptables(&self, config: &Config, node: &Node) -> IptablesInputs {
        let families = config
            .families
            .iter()
            .map(|&family| {
                let mut nonempty_sets: Vec<SetName> = self
                    .set_sizes
                    .iter()
                    .filter(|(s, n)| s.family == family && **n > 0)
                    .map(|(s, _)| *s)
                    .collect();
                nonempty_sets.sort_unstable();
                let mut no_node_access: Vec<NoNodeAccess> = self
                    .no_node_access
                    .keys()
                    .filter(|n| kipvs_ipvs::Family::of(&n.addr) == family)
                    .copied()
                    .collect();
                no_node_access.sort_unstable();
                FamilyRules {
                    family,
                    nonempty_sets,
                    no_node_access,
                    node_pod_cidr: node
                        .pod_cidrs
                        .iter()
                        .find(|c| kipvs_ipvs::Family::of(&c.addr()) == family)
                        .copied(),
                }
            })
            .collect();
        IptablesInputs {
            masquerade_all: config.masquerade_all,
            masquerade_mark: config.masquerade_mark(),
            cluster_cidrs: config.cluster_cidrs.clone(),
            families,
        }
    }
}

/// The items of `a` that are not in `b` (both without duplicates).
fn only_in<'a, T: Eq + std::hash::Hash>(a: &'a [T], b: &[T]) -> Vec<&'a T> {
    if b.is_empty() {
        a.iter().collect()
    } else if a.len().saturating_mul(b.len()) <= 4096 {
        a.iter().filter(|x| !b.contains(x)).collect()
    } else {
        let set: crate::hash::HashSet<&T> = b.iter().collect();
        a.iter().filter(|x| !set.contains(x)).collect()
    }
}

/// Counts one more reference; true when the count went from 0 to 1.
fn increment<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K) -> bool {
    let n = map.entry(key).or_insert(0);
    *n += 1;
    *n == 1
}

/// Counts one reference less; true when the count reached 0.
fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: &K) -> bool {
    match map.get_mut(key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            map.remove(key);
            true
        }
        None => false,
    }
}
