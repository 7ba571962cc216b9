//! The incremental engine: the cluster model, its desired state and the kernel state
//! kipvs believes in, kept together so that one change costs one Service's work.
//!
//! The binary feeds every watch event to a [`Proxier`] and calls [`Proxier::sync`],
//! which recomputes only the Services that changed and plans only their keys,
//! addresses and members against the kernel state it believes in. That belief is the
//! last dump plus every Plan since, assumed carried out: when an executor reports a
//! failure, or periodically, call [`Proxier::verify`] with a fresh dump, which also
//! recomputes every Service (a whole-cluster pass) and deletes drained destinations.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::config::Config;
use crate::desired::{Desired, Touched};
use crate::graceful::{Drain, Moment};
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
}

impl Proxier {
    /// An engine for `node` with `config`, knowing no Service and an empty kernel.
    /// Call [`Proxier::verify`] with a dump before the first [`Proxier::sync`].
    pub fn new(config: Config, node: Node) -> Self {
        let drain = Drain::new(config.drain_timeout);
        Proxier {
            config,
            node,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            desired: Desired::new(),
            kernel: KernelState::default(),
            drain,
            dirty: HashSet::new(),
            all_dirty: false,
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

    /// Adds or replaces a Service.
    pub fn upsert_service(&mut self, service: Service) {
        if self.services.get(&service.name) != Some(&service) {
            self.dirty.insert(service.name.clone());
            self.services.insert(service.name.clone(), service);
        }
    }

    /// Removes a Service.
    pub fn remove_service(&mut self, name: &ServiceName) {
        if self.services.remove(name).is_some() {
            self.dirty.insert(name.clone());
        }
    }

    /// Adds or replaces an EndpointSlice.
    pub fn upsert_slice(&mut self, slice: EndpointSlice) {
        if self.slices.get(&slice.name) == Some(&slice) {
            return;
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
    }

    /// Removes an EndpointSlice.
    pub fn remove_slice(&mut self, name: &SliceName) {
        if let Some(old) = self.slices.remove(name) {
            self.unlink(&old.service, name);
            self.dirty.insert(old.service);
        }
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
        let scope = Scope {
            node: &self.node,
            config: &self.config,
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
        self.kernel = KernelState::from_observed(observed);
        self.resync(now)
    }

    /// A whole-cluster pass against the kernel state kipvs believes in: what kube-proxy
    /// does for every change. Kept for comparison and for configuration changes.
    pub fn resync(&mut self, now: Moment) -> Plan {
        self.recompute_all();
        let scope = Scope {
            node: &self.node,
            config: &self.config,
        };
        let plan = plan_full(&self.desired, &self.kernel, scope, &mut self.drain, now);
        self.kernel.apply(&plan);
        plan
    }
}
