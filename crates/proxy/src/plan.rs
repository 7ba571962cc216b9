//! The diff: desired state against the observed kernel state, as the fewest operations.
//!
//! A virtual service whose scheduler, flags or persistence differ is updated in place;
//! a destination whose weight, forwarding method or thresholds differ is updated in
//! place; nothing is ever deleted and re-added when an update does. Only what kipvs owns
//! ([`crate::ownership`]) is changed or deleted. Leaving destinations go through
//! graceful termination ([`crate::graceful`]).

use std::net::IpAddr;

use kipvs_ipvs::{Destination, Protocol, Service as IpvsService, ServiceKey};

use crate::config::Config;
use crate::desired::{Desired, Touched};
use crate::graceful::{Decision, Drain, Moment};
use crate::ipset::Entry;
use crate::iptables::IptablesInputs;
use crate::model::Node;
use crate::observed::{normalize, KernelState, Observed};
use crate::translate::Owner;

/// One IPVS operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpvsOp {
    /// Create a virtual service (`IPVS_CMD_NEW_SERVICE`).
    AddService {
        /// Who it is for.
        owner: Owner,
        /// The service.
        service: IpvsService,
    },
    /// Change a virtual service's scheduler, flags or persistence in place
    /// (`IPVS_CMD_SET_SERVICE`).
    UpdateService {
        /// Who it is for.
        owner: Owner,
        /// The service as it should be.
        service: IpvsService,
    },
    /// Delete a virtual service kipvs owns and no Service wants, with its destinations
    /// (`IPVS_CMD_DEL_SERVICE`).
    DeleteService {
        /// The service.
        key: ServiceKey,
    },
    /// Add a destination (`IPVS_CMD_NEW_DEST`).
    AddDestination {
        /// Who its virtual service is for.
        owner: Owner,
        /// Its virtual service.
        service: ServiceKey,
        /// The destination.
        destination: Destination,
    },
    /// Change a destination's weight, forwarding or thresholds in place
    /// (`IPVS_CMD_SET_DEST`); weight 0 starts draining it.
    UpdateDestination {
        /// Who its virtual service is for.
        owner: Owner,
        /// Its virtual service.
        service: ServiceKey,
        /// The destination as it should be.
        destination: Destination,
    },
    /// Delete a destination (`IPVS_CMD_DEL_DEST`).
    DeleteDestination {
        /// Who its virtual service is for.
        owner: Owner,
        /// Its virtual service.
        service: ServiceKey,
        /// The destination as the kernel holds it.
        destination: Destination,
    },
}

impl IpvsOp {
    /// The Service port the operation is for; `None` for deleting a virtual service no
    /// Service wants.
    pub fn owner(&self) -> Option<&Owner> {
        match self {
            IpvsOp::AddService { owner, .. }
            | IpvsOp::UpdateService { owner, .. }
            | IpvsOp::AddDestination { owner, .. }
            | IpvsOp::UpdateDestination { owner, .. }
            | IpvsOp::DeleteDestination { owner, .. } => Some(owner),
            IpvsOp::DeleteService { .. } => None,
        }
    }

    /// The virtual service the operation is on.
    pub fn key(&self) -> &ServiceKey {
        match self {
            IpvsOp::AddService { service, .. } | IpvsOp::UpdateService { service, .. } => {
                &service.key
            }
            IpvsOp::DeleteService { key } => key,
            IpvsOp::AddDestination { service, .. }
            | IpvsOp::UpdateDestination { service, .. }
            | IpvsOp::DeleteDestination { service, .. } => service,
        }
    }
}

/// Stale conntrack entries to flush: those to `addr:port` over `protocol` (UDP or SCTP),
/// and when `destination` is given, only those NATed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConntrackFlush {
    /// Protocol.
    pub protocol: Protocol,
    /// Virtual address.
    pub addr: IpAddr,
    /// Virtual port.
    pub port: u16,
    /// The real server the entries point at, or `None` for all of the virtual service's.
    pub destination: Option<IpAddr>,
}

/// Everything to do to bring the kernel to the desired state, in the order to do it:
/// ipset members first (they are kipvs' record of what it owns), then addresses, then
/// IPVS, then removals, then conntrack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// 1. ipset members to add.
    pub set_adds: Vec<Entry>,
    /// 2. Addresses to bind on kube-ipvs0.
    pub binds: Vec<IpAddr>,
    /// 3. IPVS operations, in order.
    pub ipvs: Vec<IpvsOp>,
    /// 4. Addresses to remove from kube-ipvs0.
    pub unbinds: Vec<IpAddr>,
    /// 5. ipset members to delete.
    pub set_deletes: Vec<Entry>,
    /// 6. Conntrack entries to flush.
    pub conntrack: Vec<ConntrackFlush>,
    /// New inputs for the iptables rules, when they may have changed.
    pub iptables: Option<IptablesInputs>,
    /// When to plan again at the latest: the first draining destination's timeout.
    pub next_check: Option<Moment>,
}

impl Plan {
    /// Number of kernel operations (ipset, address, IPVS and conntrack).
    pub fn len(&self) -> usize {
        self.set_adds.len()
            + self.binds.len()
            + self.ipvs.len()
            + self.unbinds.len()
            + self.set_deletes.len()
            + self.conntrack.len()
    }

    /// Whether there is no kernel operation (iptables inputs aside).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The node and configuration ownership and planning depend on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub node: &'a Node,
    pub config: &'a Config,
    /// Whether the kernel state's connection counts come from a dump just taken; when
    /// not, they are treated as unknown, so no destination is deleted on old counts.
    pub fresh_counters: bool,
}

/// Plans the whole node: every wanted and every observed object.
///
/// `drain` remembers draining destinations between calls; `now` is the current moment.
pub fn plan(
    desired: &Desired,
    observed: &Observed,
    node: &Node,
    config: &Config,
    drain: &mut Drain,
    now: Moment,
) -> Plan {
    let kernel = KernelState::from_observed(observed, config);
    let scope = Scope {
        node,
        config,
        fresh_counters: true,
    };
    plan_full(desired, &kernel, scope, drain, now)
}

/// Plans the removal of everything kipvs owns (`kipvs cleanup`): every virtual service
/// on kube-ipvs0 or recorded in the `KUBE-*` sets, every kube-ipvs0 address and every
/// member of those sets. Foreign services stay. Running it on its own result plans
/// nothing.
pub fn cleanup(observed: &Observed, node: &Node, config: &Config) -> Plan {
    let mut drain = Drain::new(Some(std::time::Duration::ZERO));
    let mut plan = plan(
        &Desired::new(),
        observed,
        node,
        config,
        &mut drain,
        Moment::default(),
    );
    plan.iptables = None;
    plan
}

/// Plans everything against an indexed kernel state.
pub(crate) fn plan_full(
    desired: &Desired,
    kernel: &KernelState,
    scope: Scope<'_>,
    drain: &mut Drain,
    now: Moment,
) -> Plan {
    let mut touched = Touched {
        keys: desired
            .keys()
            .chain(kernel.services.keys())
            .copied()
            .collect(),
        addresses: desired
            .addresses()
            .chain(kernel.addresses.iter())
            .copied()
            .collect(),
        members: desired
            .members()
            .chain(kernel.members.iter())
            .copied()
            .collect(),
        iptables: true,
        owners: true,
    };
    touched.normalize();
    let mut plan = Plan::default();
    // An empty kernel needs one operation per service and per destination: reserve it
    // at once rather than copying the list as it grows.
    if kernel.services.is_empty() {
        let dests: usize = desired
            .virtual_services()
            .map(|v| v.destinations.len())
            .sum();
        plan.ipvs.reserve_exact(desired.len() + dests);
    }
    if scope.fresh_counters {
        drain.checked(now);
    }
    plan_into(desired, kernel, &touched, scope, drain, now, &mut plan);
    // Forget destinations that were draining but are gone (deleted by hand, or their
    // service with them) or wanted again.
    drain.retain(|key, addr, port| {
        let in_kernel = kernel.services.get(key).is_some_and(|s| {
            s.dests
                .binary_search_by_key(&(*addr, port), |d| d.dest.id())
                .is_ok()
        });
        let wanted = desired
            .virtual_service(key)
            .is_some_and(|v| v.destinations.iter().any(|d| d.id() == (*addr, port)));
        in_kernel && !wanted
    });
    plan.next_check = drain.next_deadline();
    plan
}

/// Plans only what `touched` names.
pub(crate) fn plan_touched(
    desired: &Desired,
    kernel: &KernelState,
    touched: &Touched,
    scope: Scope<'_>,
    drain: &mut Drain,
    now: Moment,
) -> Plan {
    let mut plan = Plan::default();
    plan_into(desired, kernel, touched, scope, drain, now, &mut plan);
    plan
}

fn plan_into(
    desired: &Desired,
    kernel: &KernelState,
    touched: &Touched,
    scope: Scope<'_>,
    drain: &mut Drain,
    now: Moment,
    plan: &mut Plan,
) {
    for key in &touched.keys {
        plan_key(key, desired, kernel, scope, drain, now, plan);
    }
    for addr in &touched.addresses {
        match (desired.wants_address(addr), kernel.addresses.contains(addr)) {
            (true, false) => plan.binds.push(*addr),
            (false, true) => plan.unbinds.push(*addr),
            _ => {}
        }
    }
    for entry in &touched.members {
        match (desired.wants_member(entry), kernel.members.contains(entry)) {
            (true, false) => plan.set_adds.push(*entry),
            (false, true) => plan.set_deletes.push(*entry),
            _ => {}
        }
    }
    if touched.iptables {
        plan.iptables = Some(desired.iptables(scope.config, scope.node));
    }
    plan.next_check = drain.next_deadline();
}

fn flush(key: &ServiceKey, destination: Option<IpAddr>) -> Option<ConntrackFlush> {
    match *key {
        ServiceKey::Addr {
            protocol: protocol @ (Protocol::Udp | Protocol::Sctp),
            addr,
            port,
        } => Some(ConntrackFlush {
            protocol,
            addr,
            port,
            destination,
        }),
        _ => None,
    }
}

fn protocol_of(key: &ServiceKey) -> Protocol {
    match key {
        ServiceKey::Addr { protocol, .. } => *protocol,
        ServiceKey::Fwmark { .. } => Protocol::Tcp,
    }
}

fn plan_key(
    key: &ServiceKey,
    desired: &Desired,
    kernel: &KernelState,
    scope: Scope<'_>,
    drain: &mut Drain,
    now: Moment,
    plan: &mut Plan,
) {
    let want = desired.virtual_service(key);
    let have = kernel.services.get(key);
    match (want, have) {
        (None, None) => {}
        (None, Some(_)) => {
            let owned = crate::ownership::owns(
                key,
                |a| kernel.addresses.contains(a) || desired.wants_address(a),
                |e| kernel.members.contains(e) || desired.wants_member(e),
                scope.node,
                scope.config,
            );
            if owned {
                plan.ipvs.push(IpvsOp::DeleteService { key: *key });
                drain.forget_service(key);
                plan.conntrack.extend(flush(key, None));
            }
        }
        (Some(w), None) => {
            plan.ipvs.push(IpvsOp::AddService {
                owner: w.owner.clone(),
                service: w.service.clone(),
            });
            for d in &w.destinations {
                plan.ipvs.push(IpvsOp::AddDestination {
                    owner: w.owner.clone(),
                    service: *key,
                    destination: d.clone(),
                });
            }
        }
        (Some(w), Some(h)) => {
            let wanted = normalize(w.service.clone());
            if wanted != h.service {
                plan.ipvs.push(IpvsOp::UpdateService {
                    owner: w.owner.clone(),
                    service: wanted,
                });
            }
            let protocol = protocol_of(key);
            let had_usable = h.dests.iter().any(|d| d.dest.weight > 0);
            let (mut i, mut j) = (0, 0);
            let (ws, hs) = (&w.destinations, &h.dests);
            while i < ws.len() || j < hs.len() {
                let order = match (ws.get(i), hs.get(j)) {
                    (Some(a), Some(b)) => a.id().cmp(&b.dest.id()),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, _) => std::cmp::Ordering::Greater,
                };
                match order {
                    std::cmp::Ordering::Equal => {
                        let (a, b) = (&ws[i], &hs[j]);
                        drain.forget(&(*key, a.addr, a.port));
                        if *a != b.dest {
                            plan.ipvs.push(IpvsOp::UpdateDestination {
                                owner: w.owner.clone(),
                                service: *key,
                                destination: a.clone(),
                            });
                        }
                        i += 1;
                        j += 1;
                    }
                    std::cmp::Ordering::Less => {
                        plan.ipvs.push(IpvsOp::AddDestination {
                            owner: w.owner.clone(),
                            service: *key,
                            destination: ws[i].clone(),
                        });
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        let b = &hs[j];
                        let id = (*key, b.dest.addr, b.dest.port);
                        let counters = b.counters.filter(|_| scope.fresh_counters);
                        match drain.decide(id, protocol, b.dest.weight, counters, now) {
                            Decision::Keep => {}
                            Decision::Quiesce => plan.ipvs.push(IpvsOp::UpdateDestination {
                                owner: w.owner.clone(),
                                service: *key,
                                destination: Destination {
                                    weight: 0,
                                    ..b.dest.clone()
                                },
                            }),
                            Decision::Delete | Decision::DeleteAndFlush => {
                                plan.ipvs.push(IpvsOp::DeleteDestination {
                                    owner: w.owner.clone(),
                                    service: *key,
                                    destination: b.dest.clone(),
                                });
                                if protocol != Protocol::Tcp {
                                    plan.conntrack.extend(flush(key, Some(b.dest.addr)));
                                }
                            }
                        }
                        j += 1;
                    }
                }
            }
            if !had_usable && !ws.is_empty() {
                plan.conntrack.extend(flush(key, None));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kipvs_ipvs::{ConnCounters, Scheduler};

    use super::*;
    use crate::ipset::{Member, SetKind, SetName};
    use crate::model::{RawService, Service};
    use crate::observed::apply;
    use crate::testutil::*;
    use crate::translate::translate;

    struct World {
        services: Vec<Service>,
        slices: Vec<crate::model::EndpointSlice>,
        observed: Observed,
        drain: Drain,
        config: Config,
        node: Node,
    }

    impl World {
        fn new() -> Self {
            World {
                services: vec![],
                slices: vec![],
                observed: Observed::default(),
                drain: Drain::new(Some(Duration::from_secs(600))),
                config: Config::default(),
                node: node(),
            }
        }

        fn with_service(mut self, raw: RawService) -> Self {
            self.services.push(service(raw));
            self
        }

        fn with_endpoints(mut self, svc: &str, eps: &[&str]) -> Self {
            let raw = raw_slice(svc, "1", eps.iter().map(|a| endpoint(a, "b")).collect());
            self.slices.push(slice(raw));
            self
        }

        fn desired(&self) -> Desired {
            let refs: Vec<&crate::model::EndpointSlice> = self.slices.iter().collect();
            Desired::from_states(
                self.services
                    .iter()
                    .filter_map(|s| translate(s, &refs, &self.node, &self.config)),
            )
        }

        fn plan_at(&mut self, secs: u64) -> Plan {
            let d = self.desired();
            plan(
                &d,
                &self.observed,
                &self.node,
                &self.config,
                &mut self.drain,
                Moment::from_secs(secs),
            )
        }

        /// Plans and applies; returns the plan.
        fn step(&mut self, secs: u64) -> Plan {
            let p = self.plan_at(secs);
            apply(&p, &mut self.observed);
            p
        }

        fn set_counters(&mut self, key: &ServiceKey, addr: &str, active: u32) {
            for s in &mut self.observed.table.services {
                if s.service.key == *key {
                    for d in &mut s.destinations {
                        if d.destination.addr == ip(addr) {
                            d.counters = ConnCounters {
                                active,
                                inactive: 0,
                                persistent: 0,
                            };
                        }
                    }
                }
            }
        }

        fn weights(&self, key: &ServiceKey) -> Vec<(String, u32)> {
            let mut v: Vec<(String, u32)> = self
                .observed
                .table
                .services
                .iter()
                .filter(|s| s.service.key == *key)
                .flat_map(|s| s.destinations.iter())
                .map(|d| (d.destination.addr.to_string(), d.destination.weight))
                .collect();
            v.sort();
            v
        }
    }

    fn web() -> World {
        World::new()
            .with_service(raw_service("web", "10.96.0.10"))
            .with_endpoints("web", &["10.244.1.5", "10.244.2.5"])
    }

    fn names(p: &Plan) -> Vec<String> {
        p.ipvs
            .iter()
            .map(|op| match op {
                IpvsOp::AddService { service, .. } => format!("add {}", service.key),
                IpvsOp::UpdateService { service, .. } => format!("update {}", service.key),
                IpvsOp::DeleteService { key } => format!("delete {key}"),
                IpvsOp::AddDestination { destination, .. } => {
                    format!("add dest {}", destination.addr)
                }
                IpvsOp::UpdateDestination { destination, .. } => {
                    format!("weight {} {}", destination.addr, destination.weight)
                }
                IpvsOp::DeleteDestination { destination, .. } => {
                    format!("delete dest {}", destination.addr)
                }
            })
            .collect()
    }

    #[test]
    fn an_empty_kernel_gets_the_service_then_its_destinations_and_records_first() {
        let mut w = web();
        let p = w.step(0);
        assert_eq!(
            names(&p),
            vec![
                "add TCP 10.96.0.10:80",
                "add dest 10.244.1.5",
                "add dest 10.244.2.5"
            ]
        );
        assert_eq!(p.binds, vec![ip("10.96.0.10")]);
        assert_eq!(p.set_adds.len(), 2);
        assert!(p.iptables.is_some());
        assert!(
            w.plan_at(1).is_empty(),
            "planning again finds nothing to do"
        );
    }

    #[test]
    fn a_scheduler_change_updates_the_service_in_place() {
        let mut w = web();
        w.step(0);
        w.config.scheduler = Scheduler::WeightedLeastConnection;
        let p = w.step(1);
        assert_eq!(names(&p), vec!["update TCP 10.96.0.10:80"]);
    }

    #[test]
    fn an_affinity_change_updates_the_service_in_place() {
        let mut w = web();
        w.step(0);
        let mut raw = raw_service("web", "10.96.0.10");
        raw.session_affinity = Some("ClientIP".into());
        w.services = vec![service(raw)];
        let p = w.step(1);
        assert_eq!(names(&p), vec!["update TCP 10.96.0.10:80"]);
        assert!(w.plan_at(2).is_empty());
    }

    #[test]
    fn a_wrong_weight_is_updated_in_place() {
        let mut w = web();
        w.step(0);
        w.observed.table.services[0].destinations[0]
            .destination
            .weight = 7;
        let p = w.step(1);
        assert_eq!(p.ipvs.len(), 1);
        assert!(names(&p)[0].ends_with(" 1"));
    }

    #[test]
    fn a_leaving_tcp_destination_drains_at_weight_zero_until_its_connections_end() {
        let mut w = web();
        w.step(0);
        let k = tcp("10.96.0.10", 80);
        w.set_counters(&k, "10.244.2.5", 3);
        w.slices = vec![slice(raw_slice(
            "web",
            "1",
            vec![endpoint("10.244.1.5", "b")],
        ))];
        let p = w.step(10);
        assert_eq!(names(&p), vec!["weight 10.244.2.5 0"]);
        assert!(p.conntrack.is_empty());
        // Looked at again a minute after these counts, as kube-proxy checks.
        assert_eq!(p.next_check, Some(Moment::from_secs(70)));
        assert!(w.step(20).is_empty(), "still busy: keep draining");
        w.set_counters(&k, "10.244.2.5", 0);
        assert_eq!(names(&w.step(30)), vec!["delete dest 10.244.2.5"]);
        assert_eq!(w.weights(&k), vec![("10.244.1.5".into(), 1)]);
    }

    #[test]
    fn a_draining_destination_is_deleted_after_the_timeout_even_when_busy() {
        let mut w = web();
        w.step(0);
        let k = tcp("10.96.0.10", 80);
        w.set_counters(&k, "10.244.2.5", 3);
        w.slices = vec![slice(raw_slice(
            "web",
            "1",
            vec![endpoint("10.244.1.5", "b")],
        ))];
        w.step(10);
        assert!(w.step(609).is_empty());
        assert_eq!(names(&w.step(610)), vec!["delete dest 10.244.2.5"]);
    }

    #[test]
    fn by_default_a_busy_draining_destination_is_never_deleted() {
        let mut w = web();
        w.drain = Drain::new(Config::default().drain_timeout);
        w.step(0);
        let k = tcp("10.96.0.10", 80);
        w.set_counters(&k, "10.244.2.5", 3);
        w.slices = vec![slice(raw_slice(
            "web",
            "1",
            vec![endpoint("10.244.1.5", "b")],
        ))];
        w.step(10);
        let a_month = 30 * 24 * 3600;
        let p = w.step(a_month);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.next_check, Some(Moment::from_secs(a_month + 60)));
        assert_eq!(w.weights(&k).len(), 2);
    }

    #[test]
    fn a_leaving_destination_a_fresh_dump_shows_idle_is_deleted_at_once() {
        let mut w = web();
        w.step(0);
        w.slices = vec![slice(raw_slice(
            "web",
            "1",
            vec![endpoint("10.244.1.5", "b")],
        ))];
        assert_eq!(names(&w.step(10)), vec!["delete dest 10.244.2.5"]);
    }

    #[test]
    fn a_leaving_udp_destination_is_deleted_at_once_and_its_conntrack_flushed() {
        let mut raw = raw_service("dns", "10.96.0.53");
        raw.ports = vec![port("http", "UDP", 53, None)];
        let mut s = raw_slice(
            "dns",
            "1",
            vec![endpoint("10.244.1.5", "b"), endpoint("10.244.2.5", "b")],
        );
        s.ports[0].protocol = Some("UDP".into());
        let mut w = World::new().with_service(raw);
        w.slices.push(slice(s.clone()));
        w.step(0);
        s.endpoints.pop();
        w.slices = vec![slice(s)];
        let p = w.step(1);
        assert_eq!(names(&p), vec!["delete dest 10.244.2.5"]);
        assert_eq!(
            p.conntrack,
            vec![ConntrackFlush {
                protocol: Protocol::Udp,
                addr: ip("10.96.0.53"),
                port: 53,
                destination: Some(ip("10.244.2.5"))
            }]
        );
    }

    #[test]
    fn a_draining_destination_deleted_by_hand_is_forgotten_by_the_next_full_pass() {
        let mut w = web();
        w.step(0);
        let k = tcp("10.96.0.10", 80);
        w.set_counters(&k, "10.244.2.5", 3);
        w.slices = vec![slice(raw_slice(
            "web",
            "1",
            vec![endpoint("10.244.1.5", "b")],
        ))];
        w.step(10);
        assert_eq!(w.drain.len(), 1);
        w.observed.table.services[0]
            .destinations
            .retain(|d| d.destination.addr != ip("10.244.2.5"));
        let p = w.step(20);
        assert!(p.is_empty());
        assert!(w.drain.is_empty());
        assert_eq!(p.next_check, None);
    }

    #[test]
    fn a_returning_endpoint_gets_its_weight_back_and_stops_draining() {
        let mut w = web();
        w.step(0);
        let k = tcp("10.96.0.10", 80);
        w.set_counters(&k, "10.244.2.5", 3);
        let all = w.slices.clone();
        w.slices = vec![slice(raw_slice(
            "web",
            "1",
            vec![endpoint("10.244.1.5", "b")],
        ))];
        w.step(10);
        assert_eq!(w.drain.len(), 1);
        w.slices = all;
        assert_eq!(names(&w.step(20)), vec!["weight 10.244.2.5 1"]);
        assert!(w.drain.is_empty());
        assert_eq!(w.plan_at(30).next_check, None);
    }

    #[test]
    fn weight_zero_destinations_found_after_a_restart_get_their_weight_back() {
        let mut w = web();
        let k = tcp("10.96.0.10", 80);
        w.step(0);
        for d in &mut w.observed.table.services[0].destinations {
            d.destination.weight = 0;
        }
        let mut fresh = Drain::new(Some(Duration::from_secs(600)));
        std::mem::swap(&mut w.drain, &mut fresh);
        let p = w.step(100);
        assert_eq!(
            names(&p),
            vec!["weight 10.244.1.5 1", "weight 10.244.2.5 1"]
        );
        assert_eq!(
            w.weights(&k),
            vec![("10.244.1.5".into(), 1), ("10.244.2.5".into(), 1)]
        );
    }

    #[test]
    fn stale_services_kipvs_owns_are_deleted_with_their_records_and_addresses() {
        let mut w = web();
        w.step(0);
        w.services.clear();
        let p = w.step(1);
        assert_eq!(names(&p), vec!["delete TCP 10.96.0.10:80"]);
        assert_eq!(p.unbinds, vec![ip("10.96.0.10")]);
        assert_eq!(p.set_deletes.len(), 2);
        assert_eq!(w.observed, Observed::default());
    }

    #[test]
    fn cleanup_removes_everything_kipvs_owns_and_nothing_else() {
        let mut w = web();
        w.step(0);
        let keepalived = kernel_service(
            tcp("192.168.1.200", 443),
            Scheduler::WeightedLeastConnection,
            &[],
        );
        w.observed.table.services.push(keepalived.clone());
        let p = cleanup(&w.observed, &w.node, &w.config);
        apply(&p, &mut w.observed);
        assert_eq!(w.observed.table.services, vec![keepalived]);
        assert!(w.observed.addresses.is_empty() && w.observed.ipsets.is_empty());
        assert!(cleanup(&w.observed, &w.node, &w.config).is_empty());
    }

    #[test]
    fn foreign_and_excluded_services_are_never_touched() {
        let mut w = web();
        let keepalived = kernel_service(
            tcp("192.168.1.200", 443),
            Scheduler::WeightedLeastConnection,
            &[("192.168.1.21", 443, 5, 0)],
        );
        let on_node = kernel_service(tcp("192.168.1.10", 8443), Scheduler::RoundRobin, &[]);
        let excluded = kernel_service(tcp("10.96.5.5", 80), Scheduler::RoundRobin, &[]);
        w.observed.table.services = vec![keepalived, on_node, excluded];
        w.observed.addresses.insert(ip("10.96.5.5"));
        w.config.exclude_cidrs = vec!["10.96.5.0/24".parse().unwrap()];
        let before = w.observed.table.services.clone();
        let p = w.step(0);
        assert!(p.ipvs.iter().all(|op| *op.key() == tcp("10.96.0.10", 80)));
        for s in &before {
            assert!(
                w.observed.table.services.contains(s),
                "{} was touched",
                s.service.key
            );
        }
    }

    #[test]
    fn a_wanted_service_in_exclude_cidrs_is_programmed_and_an_unwanted_one_left_alone() {
        let mut w = web();
        w.config.exclude_cidrs = vec!["10.96.0.0/16".parse().unwrap()];
        let stale = kernel_service(
            tcp("10.96.5.5", 80),
            Scheduler::RoundRobin,
            &[("10.244.9.9", 80, 1, 0)],
        );
        w.observed.table.services = vec![stale.clone()];
        w.observed.addresses.insert(ip("10.96.5.5"));
        let p = w.step(0);
        assert_eq!(
            w.weights(&tcp("10.96.0.10", 80)),
            vec![("10.244.1.5".to_owned(), 1), ("10.244.2.5".to_owned(), 1)]
        );
        assert!(w.observed.table.services.contains(&stale));
        // As kube-proxy: addresses no Service wants leave kube-ipvs0, excluded or not.
        assert_eq!(p.unbinds, vec![ip("10.96.5.5")]);
        assert!(w.step(1).is_empty());
    }

    #[test]
    fn a_stale_node_port_on_a_node_address_is_deleted_by_its_record() {
        let mut w = World::new();
        w.observed.table.services = vec![kernel_service(
            tcp("192.168.1.10", 30080),
            Scheduler::RoundRobin,
            &[],
        )];
        w.observed
            .ipsets
            .entry(SetName::new(SetKind::NodePortTcp, kipvs_ipvs::Family::V4))
            .or_default()
            .insert(Member::Port(30080));
        let p = w.step(0);
        assert_eq!(names(&p), vec!["delete TCP 192.168.1.10:30080"]);
        assert_eq!(p.set_deletes.len(), 1);
        assert_eq!(w.observed, Observed::default());
    }

    #[test]
    fn two_services_asking_for_one_address_and_port_go_to_the_first_by_name() {
        let mut a = raw_service("a", "10.96.0.1");
        a.external_ips = vec!["203.0.113.5".into()];
        let mut b = raw_service("b", "10.96.0.2");
        b.external_ips = vec!["203.0.113.5".into()];
        b.session_affinity = Some("ClientIP".into());
        let mut w = World::new().with_service(b).with_service(a);
        let d = w.desired();
        let shared = tcp("203.0.113.5", 80);
        assert_eq!(
            d.virtual_service(&shared).unwrap().owner.as_str(),
            "default/a:http"
        );
        let warnings = d.warnings(&crate::model::ServiceName::new("default", "b"));
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].reason, crate::warning::Reason::Conflict);
        w.step(0);
        w.services.retain(|s| s.name.name == "b");
        let p = w.step(1);
        assert!(
            names(&p).contains(&"update TCP 203.0.113.5:80".to_string()),
            "{:?}",
            names(&p)
        );
        assert!(!p.unbinds.contains(&ip("203.0.113.5")));
    }

    #[test]
    fn a_udp_service_that_gains_its_first_destination_flushes_its_conntrack() {
        let mut raw = raw_service("dns", "10.96.0.53");
        raw.ports = vec![port("http", "UDP", 53, None)];
        let mut w = World::new().with_service(raw);
        w.step(0);
        let mut s = raw_slice("dns", "1", vec![endpoint("10.244.1.5", "b")]);
        s.ports[0].protocol = Some("UDP".into());
        w.slices.push(slice(s));
        let p = w.step(1);
        assert_eq!(p.conntrack.len(), 1);
        assert_eq!(p.conntrack[0].destination, None);
    }
}
