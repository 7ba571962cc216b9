//! Feeding the core: cluster events from a source become upserts and removals on the
//! [`Proxier`], with the bookkeeping the loop needs (which Services changed, which
//! warnings to report, this node's facts).
//!
//! A `*Reset` is diffed against what is known by name: objects absent from the new
//! listing are removed, the rest upserted. Nothing here touches the kernel.

use std::collections::BTreeSet;
use std::time::SystemTime;

use kipvs_ipvs::Family;
use kipvs_kube::convert::{self, NodeInfo};
use kipvs_kube::source::{ClusterEvent, ObjectKey};
use kipvs_kube::watch::HEADLESS_LABEL;
use kipvs_proxy::{EndpointSlice, Proxier, Service, ServiceName, SliceName, Warning};

/// What one event changed, for logs, metrics, Events and health.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// Services created, changed or removed (an identical copy, as a relist or a
    /// re-read state file brings, is no change).
    pub service_changes: u64,
    /// EndpointSlices created, changed or removed (likewise).
    pub slice_changes: u64,
    /// What the changed EndpointSlices say of when their change was triggered, in order,
    /// for the network programming latency.
    pub triggers: Vec<Trigger>,
    /// Objects refused whole (no name, FQDN slices, ...), with the reason.
    pub refused: Vec<String>,
    /// Warnings on Services that were (re)applied: bad annotations and values that
    /// fell back to defaults. Reported as log lines and Kubernetes Events.
    pub warnings: Vec<(ServiceName, Warning)>,
    /// Services applied without any warning, or removed: what was reported about them
    /// is over, so a later recurrence is reported again.
    pub cleared: Vec<ServiceName>,
    /// This node's facts changed (or arrived for the first time).
    pub node: Option<NodeInfo>,
    /// The source could not read the cluster; nothing else changed.
    pub degraded: Option<String>,
}

/// A changed EndpointSlice's bearing on kube-proxy's network programming latency, which
/// is measured per Service and family from the slices' trigger times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// The slice's Service.
    pub service: ServiceName,
    /// The slice's address family.
    pub family: Family,
    /// The slice's `endpoints.kubernetes.io/last-change-trigger-time`. `None`: the slice
    /// was removed, whose annotation (kube-proxy says) dates from its last update, not
    /// from the deletion: the times of this Service and family not yet programmed are
    /// dropped, as kube-proxy drops them.
    pub time: Option<SystemTime>,
}

impl Applied {
    /// Whether the core has something new to plan.
    pub fn changed(&self) -> bool {
        self.service_changes > 0 || self.slice_changes > 0 || self.node.is_some()
    }
}

/// What the loop knows of the cluster, by name, to turn resets into removals.
#[derive(Debug, Default)]
pub struct ClusterView {
    node_name: String,
    services: BTreeSet<ObjectKey>,
    slices: BTreeSet<ObjectKey>,
    /// This node's facts as last reported, so an unchanged Node is no news.
    node: Option<NodeInfo>,
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

impl ClusterView {
    /// A view for the node named `node_name` (Node events for other nodes are ignored).
    pub fn new(node_name: impl Into<String>) -> Self {
        ClusterView {
            node_name: node_name.into(),
            ..ClusterView::default()
        }
    }

    /// Applies one event to the core.
    pub fn apply(&mut self, proxier: &mut Proxier, event: ClusterEvent) -> Applied {
        let mut applied = Applied::default();
        match event {
            ClusterEvent::ServicesReset(list) => {
                let fresh: BTreeSet<ObjectKey> = list.iter().map(|s| key(&s.metadata)).collect();
                for gone in self.services.difference(&fresh) {
                    let name = ServiceName::new(&gone.namespace, &gone.name);
                    proxier.remove_service(&name);
                    applied.cleared.push(name);
                    applied.service_changes += 1;
                }
                self.services.clear();
                for svc in &list {
                    self.upsert_service(proxier, svc, &mut applied);
                }
            }
            ClusterEvent::ServiceApplied(svc) => self.upsert_service(proxier, &svc, &mut applied),
            ClusterEvent::ServiceDeleted(gone) => {
                if self.services.remove(&gone) {
                    let name = ServiceName::new(&gone.namespace, &gone.name);
                    proxier.remove_service(&name);
                    applied.cleared.push(name);
                    applied.service_changes += 1;
                }
            }
            ClusterEvent::SlicesReset(list) => {
                let fresh: BTreeSet<ObjectKey> = list.iter().map(|s| key(&s.metadata)).collect();
                for gone in self.slices.difference(&fresh) {
                    Self::remove_slice(proxier, gone, &mut applied);
                }
                self.slices.clear();
                for slice in &list {
                    self.upsert_slice(proxier, slice, &mut applied);
                }
            }
            ClusterEvent::SliceApplied(slice) => self.upsert_slice(proxier, &slice, &mut applied),
            ClusterEvent::SliceDeleted(gone) => {
                if self.slices.remove(&gone) {
                    Self::remove_slice(proxier, &gone, &mut applied);
                }
            }
            ClusterEvent::NodeApplied(node) => {
                let info = convert::node(&node);
                if info.name == self.node_name && self.node.as_ref() != Some(&info) {
                    self.node = Some(info.clone());
                    applied.node = Some(info);
                }
            }
            ClusterEvent::Degraded(why) => applied.degraded = Some(why),
        }
        applied
    }

    fn upsert_service(
        &mut self,
        proxier: &mut Proxier,
        svc: &k8s_openapi::api::core::v1::Service,
        applied: &mut Applied,
    ) {
        let object = key(&svc.metadata);
        match Service::try_new(convert::service(svc)) {
            Ok(service) => {
                if service.warnings.is_empty() {
                    applied.cleared.push(service.name.clone());
                }
                applied.warnings.extend(
                    service
                        .warnings
                        .iter()
                        .map(|w| (service.name.clone(), w.clone())),
                );
                if proxier.upsert_service(service) {
                    applied.service_changes += 1;
                }
                self.services.insert(object);
            }
            Err(refused) => {
                // A Service the core cannot take is as good as absent: if an earlier
                // version was programmed, it goes.
                if self.services.remove(&object) {
                    proxier.remove_service(&ServiceName::new(&object.namespace, &object.name));
                    applied.service_changes += 1;
                }
                applied.refused.push(refused.to_string());
            }
        }
    }

    fn upsert_slice(
        &mut self,
        proxier: &mut Proxier,
        slice: &k8s_openapi::api::discovery::v1::EndpointSlice,
        applied: &mut Applied,
    ) {
        let object = key(&slice.metadata);
        // A headless Service's slice: left out, as the watch's label selector leaves it
        // out (a state file holds it all the same).
        let headless = slice
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(HEADLESS_LABEL));
        if headless {
            if self.slices.remove(&object) {
                Self::remove_slice(proxier, &object, applied);
            }
            return;
        }
        let time = convert::last_change_trigger_time(slice);
        match EndpointSlice::try_new(convert::endpoint_slice(slice)) {
            Ok(slice) => {
                let (service, family) = (slice.service.clone(), slice.family);
                if proxier.upsert_slice(slice) {
                    applied.slice_changes += 1;
                    if let Some(time) = time {
                        applied.triggers.push(Trigger {
                            service,
                            family,
                            time: Some(time),
                        });
                    }
                }
                self.slices.insert(object);
            }
            Err(refused) => {
                if self.slices.remove(&object) {
                    Self::remove_slice(proxier, &object, applied);
                }
                applied.refused.push(refused.to_string());
            }
        }
    }

    fn remove_slice(proxier: &mut Proxier, object: &ObjectKey, applied: &mut Applied) {
        let name = SliceName::new(&object.namespace, &object.name);
        if let Some(old) = proxier.remove_slice(&name) {
            applied.triggers.push(Trigger {
                service: old.service,
                family: old.family,
                time: None,
            });
        }
        applied.slice_changes += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kipvs_kube::state_file;
    use kipvs_proxy::{Config, Moment, Node};

    fn example() -> state_file::ClusterState {
        state_file::parse(
            include_str!("../../../../examples/cluster.yaml"),
            "cluster.yaml",
        )
        .unwrap()
    }

    fn proxier() -> Proxier {
        Proxier::new(
            Config::default(),
            Node::new("node-a").with_addresses(["192.168.1.10".parse().unwrap()]),
        )
    }

    fn virtual_services(p: &mut Proxier) -> usize {
        let plan = p.resync(Moment::from_secs(0));
        let mut observed = kipvs_proxy::Observed::default();
        kipvs_proxy::apply(&plan, &mut observed);
        observed.table.services.len()
    }

    #[test]
    fn a_reset_upserts_everything_and_reports_changes() {
        let mut p = proxier();
        let mut view = ClusterView::new("node-a");
        let state = example();
        let applied = view.apply(&mut p, ClusterEvent::ServicesReset(state.services.clone()));
        assert_eq!(applied.service_changes, 3);
        let applied = view.apply(&mut p, ClusterEvent::SlicesReset(state.endpoint_slices));
        assert_eq!(applied.slice_changes, 3);
        // kubernetes:443, web:80 (ClusterIP + NodePort on 192.168.1.10), kube-dns UDP+TCP 53
        assert_eq!(virtual_services(&mut p), 5);
    }

    #[test]
    fn a_headless_services_slices_are_left_out_as_the_watch_leaves_them_out() {
        let mut p = proxier();
        let mut view = ClusterView::new("node-a");
        let state = example();
        view.apply(&mut p, ClusterEvent::ServicesReset(state.services));
        let mut slice = state.endpoint_slices[0].clone();
        let applied = view.apply(&mut p, ClusterEvent::SliceApplied(Box::new(slice.clone())));
        assert_eq!(applied.slice_changes, 1);
        slice
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(HEADLESS_LABEL.into(), String::new());
        let applied = view.apply(&mut p, ClusterEvent::SliceApplied(Box::new(slice.clone())));
        assert_eq!(applied.slice_changes, 1, "the labelled slice goes");
        let applied = view.apply(&mut p, ClusterEvent::SliceApplied(Box::new(slice)));
        assert!(!applied.changed(), "and stays out");
    }

    #[test]
    fn a_second_reset_removes_what_it_no_longer_lists() {
        let mut p = proxier();
        let mut view = ClusterView::new("node-a");
        let mut services = example().services;
        view.apply(&mut p, ClusterEvent::ServicesReset(services.clone()));
        services.retain(|s| s.metadata.name.as_deref() != Some("kube-dns"));
        let applied = view.apply(&mut p, ClusterEvent::ServicesReset(services));
        assert_eq!(
            applied.service_changes, 1,
            "one removal; the two unchanged Services are no change"
        );
        assert_eq!(virtual_services(&mut p), 3);
    }

    #[test]
    fn deletions_of_unknown_objects_change_nothing() {
        let mut p = proxier();
        let mut view = ClusterView::new("node-a");
        let applied = view.apply(
            &mut p,
            ClusterEvent::ServiceDeleted(ObjectKey {
                namespace: "x".into(),
                name: "y".into(),
            }),
        );
        assert!(!applied.changed());
    }

    #[test]
    fn bad_annotations_become_warnings_and_the_service_is_still_programmed() {
        let mut p = proxier();
        let mut view = ClusterView::new("node-a");
        let mut services = example().services;
        services[0]
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("ipvs.kipvs.io/scheduler".into(), "fastest".into());
        let applied = view.apply(&mut p, ClusterEvent::ServicesReset(services));
        assert_eq!(applied.warnings.len(), 1, "{:?}", applied.warnings);
        assert_eq!(
            applied.warnings[0].0,
            ServiceName::new("default", "kubernetes")
        );
        assert_eq!(virtual_services(&mut p), 5);
    }

    #[test]
    fn services_without_warnings_and_removed_services_are_cleared() {
        let mut p = proxier();
        let mut view = ClusterView::new("node-a");
        let mut services = example().services;
        let annotations = services[0]
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations.insert("ipvs.kipvs.io/scheduler".into(), "fastest".into());
        let kubernetes = ServiceName::new("default", "kubernetes");
        let applied = view.apply(&mut p, ClusterEvent::ServicesReset(services.clone()));
        assert_eq!(applied.cleared.len(), 2, "{:?}", applied.cleared);
        assert!(!applied.cleared.contains(&kubernetes));

        // The annotation is fixed: its warnings are over.
        let mut fixed = services[0].clone();
        fixed.metadata.annotations = None;
        let applied = view.apply(&mut p, ClusterEvent::ServiceApplied(Box::new(fixed)));
        assert_eq!(applied.cleared, vec![kubernetes.clone()]);

        // Deleted, by event or by a relist that no longer has it.
        let applied = view.apply(
            &mut p,
            ClusterEvent::ServiceDeleted(ObjectKey {
                namespace: "default".into(),
                name: "kubernetes".into(),
            }),
        );
        assert_eq!(applied.cleared, vec![kubernetes.clone()]);
        view.apply(&mut p, ClusterEvent::ServicesReset(services.clone()));
        services.remove(0);
        let applied = view.apply(&mut p, ClusterEvent::ServicesReset(services));
        assert!(
            applied.cleared.contains(&kubernetes),
            "{:?}",
            applied.cleared
        );
    }

    #[test]
    fn only_this_nodes_events_are_kept() {
        let mut p = proxier();
        let mut view = ClusterView::new("node-b");
        let node = example().nodes.remove(0);
        let applied = view.apply(&mut p, ClusterEvent::NodeApplied(Box::new(node.clone())));
        assert_eq!(applied.node, None);
        let mut view = ClusterView::new("node-a");
        let applied = view.apply(&mut p, ClusterEvent::NodeApplied(Box::new(node.clone())));
        assert_eq!(applied.node.map(|n| n.zone), Some(Some("zone-a".into())));
        let again = view.apply(&mut p, ClusterEvent::NodeApplied(Box::new(node)));
        assert!(!again.changed(), "an unchanged Node is no news");
    }

    #[test]
    fn a_degraded_source_changes_nothing() {
        let mut p = proxier();
        let mut view = ClusterView::new("node-a");
        view.apply(&mut p, ClusterEvent::ServicesReset(example().services));
        let applied = view.apply(&mut p, ClusterEvent::Degraded("API server gone".into()));
        assert!(!applied.changed());
        assert_eq!(applied.degraded.as_deref(), Some("API server gone"));
        assert_eq!(virtual_services(&mut p), 5);
    }
}
