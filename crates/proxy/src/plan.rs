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
    let kernel = KernelState::from_observed(observed);
    plan_full(desired, &kernel, Scope { node, config }, drain, now)
}

/// Plans everything against an indexed kernel state.
pub(crate) fn plan_full(
    desired: &Desired,
    kernel: &KernelState,
    scope: Scope<'_>,
    drain: &mut Drain,
    now: Moment,
) -> Plan {
    let mut keys: Vec<ServiceKey> = desired
        .keys()
        .chain(kernel.services.keys())
        .copied()
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut addresses: Vec<IpAddr> = desired
        .addresses()
        .chain(kernel.addresses.iter())
        .copied()
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    let mut members: Vec<Entry> = desired
        .members()
        .chain(kernel.members.iter())
        .copied()
        .collect();
    members.sort_unstable();
    members.dedup();
    let touched = Touched {
        keys,
        addresses,
        members,
        iptables: true,
    };
    plan_touched(desired, kernel, &touched, scope, drain, now)
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
    for key in &touched.keys {
        plan_key(key, desired, kernel, scope, drain, now, &mut plan);
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
        plan.iptables = Some(desired.iptables(scope.config));
    }
    plan.next_check = drain.next_deadline();
    plan
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
            if kernel.owns(key, scope.node, scope.config) {
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
                        match drain.decide(id, protocol, b.dest.weight, b.counters, now) {
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
