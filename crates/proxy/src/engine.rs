//! The incremental engine: the cluster model, its desired state and the kernel state
//! kipvs believes in, kept together so that one change costs one Service's work.
//!
//! The binary feeds every watch event to a [`Proxier`] and calls [`Proxier::sync`],
//! which recomputes only the Services that changed and plans only their keys,
//! addresses and members against the kernel state it believes in. That belief is the
//! last dump plus every Plan since, assumed carried out: when an executor reports a
//! failure, or periodically, call [`Proxier::verify`] with a fresh dump, which also
//! recomputes every Service (a whole-cluster pass) and deletes drained destinations.

use std::collections::BTreeSet;

use kipvs_ipvs::Family;

use crate::config::Config;
use crate::conntrack::{serves_udp, Frontends};
use crate::desired::{Desired, Touched};
use crate::graceful::{Drain, Moment};
use crate::hash::{HashMap, HashSet};
use crate::model::{EndpointSlice, Node, Service, ServiceName, SliceName};
use crate::observed::{KernelState, Observed};
use crate::plan::{plan_full, plan_touched, Plan, Scope};
use crate::translate::translate;
use crate::warning::Warning;

/// The cluster model and what follows from it, updated one event at a time.
#[derive(Debug, Clone)]
pub struct Proxier {
    config: Config,
    node: Node,
    services: HashMap<ServiceName, Service>,
    slices: HashMap<SliceName, EndpointSlice>,
    slices_by_service: HashMap<ServiceName, BTreeSet<SliceName>>,
    desired: Desired,
    kernel: KernelState,
    drain: Drain,
    dirty: HashSet<ServiceName>,
    all_dirty: bool,
    owners_generation: u64,
    conntrack_due: BTreeSet<Family>,
}

impl Proxier {
    /// An engine for `node` with `config`, knowing no Service and an empty kernel.
    /// Call [`Proxier::verify`] with a dump before the first [`Proxier::sync`].
    pub fn new(config: Config, node: Node) -> Self {
        let drain = Drain::new(config.drain_timeout);
        Proxier {
            config,
            node,
            services: HashMap::default(),
            slices: HashMap::default(),
            slices_by_service: HashMap::default(),
            desired: Desired::new(),
            kernel: KernelState::default(),
            drain,
            dirty: HashSet::default(),
            all_dirty: false,
            owners_generation: 0,
            conntrack_due: BTreeSet::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The desired state as of the last sync.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// A number that changes whenever the owning Service port of some wanted virtual
    /// service may have changed (a sync that added, removed or renamed one, and every
    /// whole-cluster pass), and only then: who records ownership (`kipvs run`'s owners
    /// file) rereads [`Desired`] only when it moved, not on every endpoint change.
    pub fn owners_generation(&self) -> u64 {
        self.owners_generation
    }

    /// Number of destinations draining at weight 0.
    pub fn draining(&self) -> usize {
        self.drain.len()
    }

    /// Whether a change awaits [`Proxier::sync`].
    pub fn is_dirty(&self) -> bool {
        self.all_dirty || !self.dirty.is_empty()
    }

    /// Replaces the configuration; every Service is recomputed at the next sync.
    pub fn set_config(&mut self, config: Config) {
        if config != self.config {
            self.drain.set_timeout(config.drain_timeout);
            self.config = config;
            self.all_dirty = true;
        }
    }

    /// Replaces this node's name, zone or addresses; every Service is recomputed.
    pub fn set_node(&mut self, node: Node) {
        if node != self.node {
            self.node = node;
            self.all_dirty = true;
        }
    }

    /// Adds or replaces a Service. Returns whether it changed anything (an identical
    /// Service, as a relist brings, does not).
    pub fn upsert_service(&mut self, service: Service) -> bool {
        if self.services.get(&service.name) == Some(&service) {
            return false;
        }
        self.dirty.insert(service.name.clone());
        self.services.insert(service.name.clone(), service);
        true
    }

    /// Removes a Service.
    pub fn remove_service(&mut self, name: &ServiceName) {
        if self.services.remove(name).is_some() {
            self.dirty.insert(name.clone());
        }
    }

    /// Adds or replaces an EndpointSlice. Returns whether it changed anything.
    pub fn upsert_slice(&mut self, slice: EndpointSlice) -> bool {
        if self.slices.get(&slice.name) == Some(&slice) {
            return false;
        }
        self.note_conntrack(&slice.service, slice.family, Some(&slice));
        if let Some(old) = self.slices.get(&slice.name) {
            let (service, family) = (old.service.clone(), old.family);
            self.note_conntrack(&service, family, None);
        }
        if let Some(old) = self.slices.get(&slice.name) {
            if old.service != slice.service {
                let old_service = old.service.clone();
                self.unlink(&old_service, &slice.name);
                self.dirty.insert(old_service);
            }
        }
        self.slices_by_service
            .entry(slice.service.clone())
            .or_default()
            .insert(slice.name.clone());
        self.dirty.insert(slice.service.clone());
        self.slices.insert(slice.name.clone(), slice);
        true
    }

    /// Removes an EndpointSlice.
    pub fn remove_slice(&mut self, name: &SliceName) -> Option<EndpointSlice> {
        let (service, family) = self
            .slices
            .get(name)
            .map(|s| (s.service.clone(), s.family))?;
        self.note_conntrack(&service, family, None);
        let old = self.slices.remove(name)?;
        self.unlink(&old.service, name);
        self.dirty.insert(old.service.clone());
        Some(old)
    }

    /// Before a change to `service`'s slices of `family` (`new` being the slice that
    /// comes in, if any): marks the family for the conntrack reconciler when, before or
    /// after the change, one of them has a UDP port and an endpoint, as kube-proxy's
    /// `ConntrackCleanupRequired` decides.
    fn note_conntrack(
        &mut self,
        service: &ServiceName,
        family: Family,
        new: Option<&EndpointSlice>,
    ) {
        if self.conntrack_due.contains(&family) {
            return;
        }
        let due = self
            .slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|s| self.slices.get(s))
            .chain(new)
            .any(|s| s.family == family && s.service == *service && serves_udp(s));
        if due {
            self.conntrack_due.insert(family);
        }
    }

    /// The families whose conntrack tables the reconciler should go through after the
    /// next pass that succeeds (see [`crate::conntrack`]); each stays due until
    /// [`Proxier::conntrack_done`].
    pub fn conntrack_due(&self) -> Vec<Family> {
        self.conntrack_due.iter().copied().collect()
    }

    /// The reconciler went through `family`'s table.
    pub fn conntrack_done(&mut self, family: Family) {
        self.conntrack_due.remove(&family);
    }

    /// The UDP frontends of `family` and their serving endpoints, from every Service and
    /// slice known now, for the conntrack reconciler.
    pub fn conntrack_frontends(&self, family: Family) -> Frontends {
        Frontends::new(
            self.services.values(),
            |service| {
                self.slices_by_service
                    .get(&service.name)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| self.slices.get(s))
            },
            family,
        )
    }

    fn unlink(&mut self, service: &ServiceName, slice: &SliceName) {
        if let Some(set) = self.slices_by_service.get_mut(service) {
            set.remove(slice);
            if set.is_empty() {
                self.slices_by_service.remove(service);
            }
        }
    }

    /// The warnings of one Service (input, translation and conflicts).
    pub fn warnings(&self, name: &ServiceName) -> Vec<Warning> {
        self.desired.warnings(name)
    }

    /// Recomputes one Service's share of the desired state.
    fn recompute(&mut self, name: &ServiceName) -> Touched {
        let state = self.services.get(name).and_then(|service| {
            let slices: Vec<&EndpointSlice> = self
                .slices_by_service
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|s| self.slices.get(s))
                .collect();
            translate(service, &slices, &self.node, &self.config)
        });
        match state {
            Some(state) => self.desired.insert(state),
            None => self.desired.remove(name),
        }
    }

    /// Recomputes every Service from scratch.
    fn recompute_all(&mut self) {
        let mut desired = Desired::new();
        for (name, service) in &self.services {
            let slices: Vec<&EndpointSlice> = self
                .slices_by_service
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|s| self.slices.get(s))
                .collect();
            if let Some(state) = translate(service, &slices, &self.node, &self.config) {
                desired.insert(state);
            }
        }
        self.desired = desired;
        self.dirty.clear();
        self.all_dirty = false;
    }

    /// Plans what changed since the last sync: only the changed Services' keys,
    /// addresses and members, against the kernel state kipvs believes in. The Plan is
    /// assumed carried out; if it fails in part, call [`Proxier::verify`].
    pub fn sync(&mut self, now: Moment) -> Plan {
        if self.all_dirty {
            return self.resync(now);
        }
        let mut touched = Touched::default();
        let mut dirty: Vec<ServiceName> = self.dirty.drain().collect();
        dirty.sort_unstable();
        for name in &dirty {
            let t = self.recompute(name);
            touched.merge(t);
        }
        touched.normalize();
        if touched.owners {
            self.owners_generation += 1;
        }
        let scope = Scope {
            node: &self.node,
            config: &self.config,
            fresh_counters: false,
        };
        let plan = plan_touched(
            &self.desired,
            &self.kernel,
            &touched,
            scope,
            &mut self.drain,
            now,
        );
        self.kernel.apply(&plan);
        plan
    }

    /// A whole-cluster pass against a fresh dump: recomputes every Service, plans every
    /// object, and repairs any drift. Use it at start, periodically, after a failed
    /// Plan, and to delete drained destinations (their connection counts come from the
    /// dump).
    pub fn verify(&mut self, observed: &Observed, now: Moment) -> Plan {
        self.kernel = KernelState::from_observed(observed, &self.config);
        self.full_pass(now, true)
    }

    /// A whole-cluster pass against the kernel state kipvs believes in: what kube-proxy
    /// does for every change. Kept for comparison and for configuration changes.
    pub fn resync(&mut self, now: Moment) -> Plan {
        self.full_pass(now, false)
    }

    fn full_pass(&mut self, now: Moment, fresh_counters: bool) -> Plan {
        self.recompute_all();
        self.owners_generation += 1;
        let scope = Scope {
            node: &self.node,
            config: &self.config,
            fresh_counters,
        };
        let plan = plan_full(&self.desired, &self.kernel, scope, &mut self.drain, now);
        self.kernel.apply(&plan);
        plan
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use kipvs_ipvs::Scheduler;

    use super::*;
    use crate::observed::apply;
    use crate::plan::IpvsOp;
    use crate::testutil::*;

    fn cluster(n: u8) -> (Proxier, Observed) {
        let mut p = Proxier::new(Config::default(), node());
        for i in 0..n {
            let name = format!("svc{i}");
            p.upsert_service(service(raw_service(&name, &format!("10.96.0.{i}"))));
            p.upsert_slice(slice(raw_slice(
                &name,
                "1",
                vec![
                    endpoint(&format!("10.244.{i}.1"), "b"),
                    endpoint(&format!("10.244.{i}.2"), "c"),
                ],
            )));
        }
        let mut observed = Observed::default();
        let plan = p.verify(&observed, Moment::from_secs(0));
        apply(&plan, &mut observed);
        (p, observed)
    }

    /// A dual-stack cluster programmed by a proxier running both families.
    fn dual_stack(config: Config) -> (Proxier, Observed) {
        let mut p = Proxier::new(config, node());
        let mut raw = raw_service("web", "10.96.0.10");
        raw.cluster_ips.push("fd00::10".into());
        raw.ports[0].node_port = Some(30080);
        p.upsert_service(service(raw));
        p.upsert_service(service(raw_service("v6only", "fd00::20")));
        p.upsert_slice(slice(raw_slice(
            "web",
            "4",
            vec![endpoint("10.244.1.5", "a")],
        )));
        p.upsert_slice(slice(raw_slice(
            "web",
            "6",
            vec![endpoint("fd00:244::5", "a")],
        )));
        p.upsert_slice(slice(raw_slice(
            "v6only",
            "6",
            vec![endpoint("fd00:244::6", "a")],
        )));
        let mut observed = Observed::default();
        let plan = p.verify(&observed, Moment::from_secs(0));
        apply(&plan, &mut observed);
        (p, observed)
    }

    #[test]
    fn a_proxier_without_ipv6_ignores_ipv6_services_and_leaves_the_kernels_ipv6_state_alone() {
        let v4 = Config {
            families: vec![kipvs_ipvs::Family::V4],
            ..Config::default()
        };
        // From scratch: the IPv4 half only, and rules for IPv4 only.
        let (mut p, observed) = dual_stack(v4.clone());
        let is_v6 = |a: &IpAddr| a.is_ipv6();
        assert!(observed
            .table
            .services
            .iter()
            .all(|s| s.service.key.family() == kipvs_ipvs::Family::V4));
        assert!(!observed.table.services.is_empty());
        assert!(!observed.addresses.iter().any(is_v6));
        assert!(observed
            .ipsets
            .keys()
            .all(|s| s.family == kipvs_ipvs::Family::V4));
        let plan = p.verify(&observed, Moment::from_secs(1));
        assert!(plan.is_empty(), "{plan:?}");
        let inputs = p.resync(Moment::from_secs(1)).iptables.expect("the rules");
        assert_eq!(
            inputs.families.iter().map(|f| f.family).collect::<Vec<_>>(),
            vec![kipvs_ipvs::Family::V4]
        );

        // A kernel a dual-stack run left: the IPv6 services, addresses and members stay
        // as they are (kube-proxy's IPv4-only proxier leaves the other family alone).
        let (_, dual) = dual_stack(Config::default());
        assert!(dual
            .table
            .services
            .iter()
            .any(|s| s.service.key.family() == kipvs_ipvs::Family::V6));
        let mut p = Proxier::new(v4, node());
        let mut raw = raw_service("web", "10.96.0.10");
        raw.cluster_ips.push("fd00::10".into());
        raw.ports[0].node_port = Some(30080);
        p.upsert_service(service(raw));
        p.upsert_slice(slice(raw_slice(
            "web",
            "4",
            vec![endpoint("10.244.1.5", "a")],
        )));
        let plan = p.verify(&dual, Moment::from_secs(1));
        assert!(
            plan.ipvs
                .iter()
                .all(|op| op.key().family() == kipvs_ipvs::Family::V4),
            "{plan:?}"
        );
        assert!(!plan.unbinds.iter().any(is_v6), "{plan:?}");
        assert!(!plan.binds.iter().any(is_v6), "{plan:?}");
        assert!(
            plan.set_deletes
                .iter()
                .chain(&plan.set_adds)
                .all(|(s, _)| s.family == kipvs_ipvs::Family::V4),
            "{plan:?}"
        );
        // The v6-only Service is gone from the cluster, and its IPv6 virtual service
        // stays in the kernel: not deleted by the IPv4-only proxier.
        assert!(
            !plan.ipvs.iter().any(|op| *op.key() == tcp("fd00::20", 80)),
            "{plan:?}"
        );
    }

    #[test]
    fn a_verify_with_no_drift_plans_nothing() {
        let (mut p, observed) = cluster(20);
        assert!(p.verify(&observed, Moment::from_secs(1)).is_empty());
        assert!(!p.is_dirty());
    }

    #[test]
    fn one_endpoint_change_recomputes_one_service_and_yields_only_its_operations() {
        let (mut p, _) = cluster(20);
        p.upsert_slice(slice(raw_slice(
            "svc7",
            "1",
            vec![endpoint("10.244.7.1", "b"), endpoint("10.244.7.3", "c")],
        )));
        let plan = p.sync(Moment::from_secs(1));
        assert_eq!(plan.len(), 2, "{plan:?}");
        assert!(plan.ipvs.iter().all(|op| *op.key() == tcp("10.96.0.7", 80)));
        assert!(plan.iptables.is_none());
        assert!(p.sync(Moment::from_secs(2)).is_empty());
    }

    #[test]
    fn a_new_pod_cidr_on_the_node_rewrites_the_iptables_rules_with_it() {
        let (mut p, _) = cluster(3);
        let cidr: ipnet::IpNet = "10.244.3.0/24".parse().unwrap();
        let node = p.node().clone().with_pod_cidrs([cidr]);
        p.set_node(node);
        let plan = p.sync(Moment::from_secs(1));
        let inputs = plan.iptables.expect("the iptables inputs");
        let v4 = inputs
            .families
            .iter()
            .find(|f| f.family == kipvs_ipvs::Family::V4)
            .unwrap();
        assert_eq!(v4.node_pod_cidr, Some(cidr));
        assert!(inputs
            .families
            .iter()
            .filter(|f| f.family == kipvs_ipvs::Family::V6)
            .all(|f| f.node_pod_cidr.is_none()));
    }

    #[test]
    fn owners_generation_moves_when_services_come_and_go_not_when_endpoints_do() {
        let (mut p, _) = cluster(3);
        let start = p.owners_generation();
        p.upsert_slice(slice(raw_slice(
            "svc1",
            "1",
            vec![endpoint("10.244.1.9", "b")],
        )));
        p.sync(Moment::from_secs(1));
        assert_eq!(p.owners_generation(), start, "an endpoint change");
        p.upsert_service(service(raw_service("svc9", "10.96.0.9")));
        p.sync(Moment::from_secs(2));
        let added = p.owners_generation();
        assert_ne!(added, start, "a new Service");
        p.remove_service(&crate::model::ServiceName::new("default", "svc9"));
        p.sync(Moment::from_secs(3));
        assert_ne!(p.owners_generation(), added, "a removed Service");
    }

    #[test]
    fn an_unchanged_update_is_no_change_at_all() {
        let (mut p, _) = cluster(3);
        p.upsert_service(service(raw_service("svc1", "10.96.0.1")));
        assert!(!p.is_dirty());
        assert!(p.sync(Moment::from_secs(1)).is_empty());
    }

    #[test]
    fn a_removed_service_is_deleted_with_its_address_and_records() {
        let (mut p, mut observed) = cluster(3);
        p.remove_service(&crate::model::ServiceName::new("default", "svc1"));
        let plan = p.sync(Moment::from_secs(1));
        assert_eq!(
            plan.ipvs,
            vec![IpvsOp::DeleteService {
                key: tcp("10.96.0.1", 80)
            }]
        );
        assert_eq!(plan.unbinds, vec![ip("10.96.0.1")]);
        assert_eq!(plan.set_deletes.len(), 2);
        apply(&plan, &mut observed);
        assert!(p.verify(&observed, Moment::from_secs(2)).is_empty());
    }

    #[test]
    fn a_slice_moving_to_another_service_updates_both() {
        let (mut p, _) = cluster(3);
        let mut moved = raw_slice("svc2", "1", vec![endpoint("10.244.1.1", "b")]);
        moved.name = "svc1-1".into();
        p.upsert_slice(slice(moved));
        let plan = p.sync(Moment::from_secs(1));
        let keys: std::collections::BTreeSet<_> = plan.ipvs.iter().map(|op| *op.key()).collect();
        assert_eq!(
            keys,
            [tcp("10.96.0.1", 80), tcp("10.96.0.2", 80)]
                .into_iter()
                .collect()
        );
    }

    #[test]
    fn a_configuration_change_recomputes_every_service() {
        let (mut p, _) = cluster(3);
        p.set_config(Config {
            scheduler: Scheduler::LeastConnection,
            ..Config::default()
        });
        let plan = p.sync(Moment::from_secs(1));
        assert_eq!(plan.ipvs.len(), 3);
        assert!(plan
            .ipvs
            .iter()
            .all(|op| matches!(op, IpvsOp::UpdateService { .. })));
    }

    /// `default/dns`: UDP `http` 53 on 10.96.0.53, slice port 5353.
    fn udp_cluster() -> Proxier {
        let mut p = Proxier::new(Config::default(), node());
        let mut raw = raw_service("dns", "10.96.0.53");
        raw.ports = vec![port("http", "UDP", 53, None)];
        p.upsert_service(service(raw));
        p
    }

    fn udp_slice(suffix: &str, endpoints: Vec<crate::model::RawEndpoint>) -> EndpointSlice {
        let mut raw = raw_slice("dns", suffix, endpoints);
        raw.address_type = "IPv4".into();
        raw.ports[0].protocol = Some("UDP".into());
        raw.ports[0].port = Some(5353);
        slice(raw)
    }

    #[test]
    fn udp_endpoint_changes_make_their_family_due_for_the_conntrack_reconciler() {
        use crate::conntrack::Flow;
        let mut p = udp_cluster();
        assert!(
            p.conntrack_due().is_empty(),
            "a Service alone is no trigger"
        );
        // An empty slice: no UDP endpoint before or after.
        p.upsert_slice(udp_slice("1", vec![]));
        assert!(p.conntrack_due().is_empty());
        p.upsert_slice(udp_slice("1", vec![endpoint("10.244.0.1", "b")]));
        assert_eq!(p.conntrack_due(), vec![Family::V4]);
        p.conntrack_done(Family::V4);
        // Another, empty slice of the same Service: the first one still counts.
        p.upsert_slice(udp_slice("2", vec![]));
        assert_eq!(p.conntrack_due(), vec![Family::V4]);
        p.conntrack_done(Family::V4);
        // The endpoint going away counts (it was there before).
        p.upsert_slice(udp_slice("1", vec![]));
        assert_eq!(p.conntrack_due(), vec![Family::V4]);
        p.conntrack_done(Family::V4);
        p.remove_slice(&SliceName::new("default", "dns-2"));
        assert!(
            p.conntrack_due().is_empty(),
            "nothing UDP left with endpoints"
        );
        // TCP slices never count.
        p.upsert_slice(slice(raw_slice(
            "web",
            "1",
            vec![endpoint("10.244.1.1", "b")],
        )));
        assert!(p.conntrack_due().is_empty());

        p.upsert_slice(udp_slice("1", vec![endpoint("10.244.0.2", "b")]));
        let frontends = p.conntrack_frontends(Family::V4);
        let flow = |reply: &str| Flow {
            protocol: Some(kipvs_ipvs::Protocol::Udp),
            orig_src: "10.0.0.1:4000".parse().unwrap(),
            orig_dst: "10.96.0.53:53".parse().unwrap(),
            reply_src: reply.parse().unwrap(),
            reply_dst: "10.0.0.1:4000".parse().unwrap(),
            zone: 0,
        };
        assert!(!frontends.is_stale(&flow("10.244.0.2:5353")));
        assert!(frontends.is_stale(&flow("10.244.0.1:5353")));
        assert!(p.conntrack_frontends(Family::V6).is_empty());
    }

    #[test]
    fn drift_is_repaired_by_verify() {
        let (mut p, mut observed) = cluster(3);
        observed.table.services.remove(0);
        observed.addresses.clear();
        let plan = p.verify(&observed, Moment::from_secs(1));
        assert_eq!(plan.binds.len(), 3);
        assert_eq!(plan.ipvs.len(), 3);
        apply(&plan, &mut observed);
        assert!(p.verify(&observed, Moment::from_secs(2)).is_empty());
    }
}
