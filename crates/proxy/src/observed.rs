//! The observed kernel state, and the planner's index of it.
//!
//! [`Observed`] is what the executors dump: the IPVS table, the addresses on kube-ipvs0
//! and the members of kipvs' ipsets. [`apply`] carries out a [`Plan`] on an `Observed`
//! the way the kernel would (a pure simulation, for tests and dry runs).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kipvs_ipvs::{
    ConnCounters, Destination, DestinationEntry, Service as IpvsService, ServiceEntry, ServiceKey,
    Stats, Table,
};

use crate::config::Config;
use crate::desired::Desired;
use crate::hash::{HashMap, HashSet};
use crate::ipset::{Entry, Member, SetName};
use crate::model::Node;
use crate::ownership;
use crate::plan::{IpvsOp, Plan};

/// The kernel state kipvs reads back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The IPVS table (every virtual service, foreign ones included).
    pub table: Table,
    /// Addresses bound on kube-ipvs0.
    pub addresses: BTreeSet<IpAddr>,
    /// Members of kipvs' ipsets (`KUBE-*`, `KUBE-6-*`); sets kipvs does not know are
    /// left out.
    pub ipsets: BTreeMap<SetName, BTreeSet<Member>>,
}

impl Observed {
    /// Whether kipvs owns the virtual service at `key` by this observation alone (see
    /// [`crate::ownership`]); `kipvs cleanup` deletes exactly these.
    pub fn owns(&self, key: &ServiceKey, node: &Node, config: &Config) -> bool {
        self.owns_for(key, &Desired::new(), node, config)
    }

    /// Whether the planner treats the virtual service at `key` as kipvs' when planning
    /// `desired` against this observation: wanted, or owned by the addresses and records
    /// observed or about to be added (see [`crate::ownership`]).
    pub fn owns_for(
        &self,
        key: &ServiceKey,
        desired: &Desired,
        node: &Node,
        config: &Config,
    ) -> bool {
        desired.virtual_service(key).is_some()
            || ownership::owns(
                key,
                |a| self.addresses.contains(a) || desired.wants_address(a),
                |e| {
                    desired.wants_member(e)
                        || self.ipsets.get(&e.0).is_some_and(|s| s.contains(&e.1))
                },
                node,
                config,
            )
    }
}

/// Makes `flags.persistent` and `persistence` agree: persistence is what counts.
pub(crate) fn normalize(mut s: IpvsService) -> IpvsService {
    s.flags.persistent = s.persistence.is_some();
    s
}

/// A destination as the planner knows it: configuration and, when a dump has shown
/// them since the last change, its connection counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KDest {
    pub dest: Destination,
    pub counters: Option<ConnCounters>,
}

/// A virtual service as the planner knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KService {
    pub service: IpvsService,
    /// Sorted by `(addr, port)`.
    pub dests: Vec<KDest>,
}

/// The planner's index of the kernel state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KernelState {
    pub services: HashMap<ServiceKey, KService>,
    pub addresses: HashSet<IpAddr>,
    pub members: HashSet<Entry>,
}

impl KernelState {
    /// The planner's index of `o`, restricted to the address families `config` runs:
    /// the virtual services, kube-ipvs0 addresses and set members of a family kipvs
    /// does not run are not its business (kube-proxy's single-stack proxier leaves the
    /// other family alone), so nothing is planned on them.
    pub fn from_observed(o: &Observed, config: &Config) -> Self {
        let services = o
            .table
            .services
            .iter()
            .filter(|e| config.handles(e.service.key.family()))
            .map(|e| {
                let mut dests: Vec<KDest> = e
                    .destinations
                    .iter()
                    .map(|d| KDest {
                        dest: d.destination.clone(),
                        counters: Some(d.counters),
                    })
                    .collect();
                dests.sort_unstable_by_key(|d| d.dest.id());
                dests.dedup_by_key(|d| d.dest.id());
                (
                    e.service.key,
                    KService {
                        service: normalize(e.service.clone()),
                        dests,
                    },
                )
            })
            .collect();
        let members = o
            .ipsets
            .iter()
            .filter(|(set, _)| config.handles(set.family))
            .flat_map(|(set, ms)| ms.iter().map(move |m| (*set, *m)))
            .collect();
        KernelState {
            services,
            addresses: o
                .addresses
                .iter()
                .filter(|a| config.handles(kipvs_ipvs::Family::of(a)))
                .copied()
                .collect(),
            members,
        }
    }

    /// Records that `plan` was carried out. Counts of changed destinations become
    /// unknown until the next dump.
    pub fn apply(&mut self, plan: &Plan) {
        let adds = plan
            .ipvs
            .iter()
            .filter(|op| matches!(op, IpvsOp::AddService { .. }))
            .count();
        self.services.reserve(adds);
        self.members.extend(plan.set_adds.iter().copied());
        self.addresses.extend(plan.binds.iter().copied());
        for op in &plan.ipvs {
            match op {
                IpvsOp::AddService { service, .. } | IpvsOp::UpdateService { service, .. } => {
                    let entry = self
                        .services
                        .entry(service.key)
                        .or_insert_with(|| KService {
                            service: service.clone(),
                            dests: Vec::new(),
                        });
                    entry.service = normalize(service.clone());
                }
                IpvsOp::DeleteService { key } => {
                    self.services.remove(key);
                }
                IpvsOp::AddDestination {
                    service,
                    destination,
                    ..
                }
                | IpvsOp::UpdateDestination {
                    service,
                    destination,
                    ..
                } => {
                    if let Some(s) = self.services.get_mut(service) {
                        let d = KDest {
                            dest: destination.clone(),
                            counters: None,
                        };
                        match s
                            .dests
                            .binary_search_by_key(&destination.id(), |d| d.dest.id())
                        {
                            Ok(i) => s.dests[i] = d,
                            Err(i) => s.dests.insert(i, d),
                        }
                    }
                }
                IpvsOp::DeleteDestination {
                    service,
                    destination,
                    ..
                } => {
                    if let Some(s) = self.services.get_mut(service) {
                        if let Ok(i) = s
                            .dests
                            .binary_search_by_key(&destination.id(), |d| d.dest.id())
                        {
                            s.dests.remove(i);
                        }
                    }
                }
            }
        }
        for a in &plan.unbinds {
            self.addresses.remove(a);
        }
        for e in &plan.set_deletes {
            self.members.remove(e);
        }
    }
}

/// Carries out `plan` on `observed` as the kernel would: a pure simulation.
///
/// New destinations start with no connections; changed ones keep their counts. Adding
/// what exists replaces it and deleting what is missing does nothing, so the result is
/// what a successful run of the executors leaves behind.
pub fn apply(plan: &Plan, observed: &mut Observed) {
    for (set, m) in &plan.set_adds {
        observed.ipsets.entry(*set).or_default().insert(*m);
    }
    observed.addresses.extend(plan.binds.iter().copied());

    let mut slots: Vec<Option<ServiceEntry>> = std::mem::take(&mut observed.table.services)
        .into_iter()
        .map(Some)
        .collect();
    let mut index: HashMap<ServiceKey, usize> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().map(|s| (s.service.key, i)))
        .collect();
    for op in &plan.ipvs {
        match op {
            IpvsOp::AddService { service, .. } | IpvsOp::UpdateService { service, .. } => {
                match index.get(&service.key).and_then(|i| slots[*i].as_mut()) {
                    Some(e) => e.service = service.clone(),
                    None => {
                        index.insert(service.key, slots.len());
                        slots.push(Some(ServiceEntry {
                            service: service.clone(),
                            stats: Stats::default(),
                            destinations: Vec::new(),
                        }));
                    }
                }
            }
            IpvsOp::DeleteService { key } => {
                if let Some(i) = index.remove(key) {
                    slots[i] = None;
                }
            }
            IpvsOp::AddDestination {
                service,
                destination,
                ..
            }
            | IpvsOp::UpdateDestination {
                service,
                destination,
                ..
            } => {
                if let Some(e) = index.get(service).and_then(|i| slots[*i].as_mut()) {
                    match e
                        .destinations
                        .iter_mut()
                        .find(|d| d.destination.id() == destination.id())
                    {
                        Some(d) => d.destination = destination.clone(),
                        None => e.destinations.insert(
                            0,
                            DestinationEntry {
                                destination: destination.clone(),
                                counters: ConnCounters::default(),
                                stats: Stats::default(),
                            },
                        ),
                    }
                }
            }
            IpvsOp::DeleteDestination {
                service,
                destination,
                ..
            } => {
                if let Some(e) = index.get(service).and_then(|i| slots[*i].as_mut()) {
                    e.destinations
                        .retain(|d| d.destination.id() != destination.id());
                }
            }
        }
    }
    observed.table.services = slots.into_iter().flatten().collect();

    for a in &plan.unbinds {
        observed.addresses.remove(a);
    }
    for (set, m) in &plan.set_deletes {
        if let Some(s) = observed.ipsets.get_mut(set) {
            s.remove(m);
            if s.is_empty() {
                observed.ipsets.remove(set);
            }
        }
    }
}
