//! Endpoint selection: which endpoints of a Service port this node sends traffic to.
//!
//! The rules are kube-proxy's (`CategorizeEndpoints`):
//! - Cluster traffic uses ready endpoints, narrowed by topology: when every ready
//!   endpoint carries node hints and one is hinted for this node, only those; else when
//!   every ready endpoint carries zone hints and one is hinted for this node's zone, only
//!   those; else all ready endpoints.
//! - When no endpoint is ready anywhere, serving-but-terminating endpoints are used.
//! - Local traffic uses this node's ready endpoints, or, when it has none, this node's
//!   serving-terminating endpoints.
//!
//! kipvs adds one rule: when `trafficDistribution` asks for closeness but no ready
//! endpoint carries any hint (a slice not written by the EndpointSlice controller, such
//! as a replayed state file), the endpoints' own `zone` / `nodeName` stand in for hints.

use crate::model::{Endpoint, Node, TrafficDistribution};

/// An endpoint of one Service port: the endpoint and the port it listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The endpoint.
    pub endpoint: &'a Endpoint,
    /// Its port for this Service port.
    pub port: u16,
}

impl Candidate<'_> {
    /// Whether the endpoint runs on `node`.
    pub fn is_local(&self, node: &Node) -> bool {
        self.endpoint.node.as_deref() == Some(node.name.as_str())
    }
}

/// The endpoints cluster-policy and local-policy traffic go to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection<'a> {
    /// For Cluster traffic policy.
    pub cluster: Vec<Candidate<'a>>,
    /// For Local traffic policy.
    pub local: Vec<Candidate<'a>>,
}

/// How cluster traffic is narrowed by topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// All ready endpoints.
    Any,
    /// Endpoints hinted for this node.
    NodeHints,
    /// Endpoints hinted for this node's zone.
    ZoneHints,
    /// Endpoints whose `nodeName` is this node.
    SameNode,
    /// Endpoints whose `zone` is this node's zone.
    SameZone,
}

fn mode(
    candidates: &[Candidate<'_>],
    node: &Node,
    distribution: Option<TrafficDistribution>,
) -> Mode {
    let zone = node.zone.as_deref();
    let mut any_ready = false;
    let (mut all_node_hints, mut node_hinted) = (true, false);
    let (mut all_zone_hints, mut zone_hinted) = (true, false);
    let mut any_hint = false;
    let (mut on_node, mut in_zone) = (false, false);
    for c in candidates.iter().filter(|c| c.endpoint.conditions.ready) {
        let e = c.endpoint;
        any_ready = true;
        any_hint |= !e.node_hints.is_empty() || !e.zone_hints.is_empty();
        if e.node_hints.is_empty() {
            all_node_hints = false;
        } else if e.node_hints.contains(&node.name) {
            node_hinted = true;
        }
        if e.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if zone.is_some_and(|z| e.zone_hints.iter().any(|h| h == z)) {
            zone_hinted = true;
        }
        on_node |= c.is_local(node);
        in_zone |= zone.is_some() && e.zone.as_deref() == zone;
    }
    if !any_ready {
        return Mode::Any;
    }
    if all_node_hints && node_hinted {
        return Mode::NodeHints;
    }
    if all_zone_hints && zone_hinted {
        return Mode::ZoneHints;
    }
    if any_hint {
        return Mode::Any;
    }
    match distribution {
        Some(TrafficDistribution::PreferSameNode) if on_node => Mode::SameNode,
        Some(TrafficDistribution::PreferSameNode)
        | Some(TrafficDistribution::PreferClose)
        | Some(TrafficDistribution::PreferSameZone)
            if in_zone =>
        {
            Mode::SameZone
        }
        _ => Mode::Any,
    }
}

fn fits(c: &Candidate<'_>, mode: Mode, node: &Node) -> bool {
    let e = c.endpoint;
    match mode {
        Mode::Any => true,
        Mode::NodeHints => e.node_hints.contains(&node.name),
        Mode::ZoneHints => node
            .zone
            .as_deref()
            .is_some_and(|z| e.zone_hints.iter().any(|h| h == z)),
        Mode::SameNode => c.is_local(node),
        Mode::SameZone => node.zone.is_some() && e.zone == node.zone,
    }
}

/// Chooses the endpoints of one Service port for Cluster and Local traffic.
///
/// `candidates` are every endpoint of the port (any condition); the result keeps their
/// order.
pub fn select<'a>(
    candidates: &[Candidate<'a>],
    node: &Node,
    distribution: Option<TrafficDistribution>,
) -> Selection<'a> {
    let mode = mode(candidates, node, distribution);
    let mut cluster: Vec<Candidate<'a>> = candidates
        .iter()
        .filter(|c| c.endpoint.conditions.ready && fits(c, mode, node))
        .copied()
        .collect();
    if cluster.is_empty() {
        cluster = candidates
            .iter()
            .filter(|c| c.endpoint.conditions.serving_terminating())
            .copied()
            .collect();
    }
    let local_ready = candidates
        .iter()
        .any(|c| c.is_local(node) && c.endpoint.conditions.ready);
    let local = candidates
        .iter()
        .filter(|c| {
            c.is_local(node)
                && if local_ready {
                    c.endpoint.conditions.ready
                } else {
                    c.endpoint.conditions.serving_terminating()
                }
        })
        .copied()
        .collect();
    Selection { cluster, local }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Conditions;

    const READY: Conditions = Conditions {
        ready: true,
        serving: true,
        terminating: false,
    };
    const DRAINING: Conditions = Conditions {
        ready: false,
        serving: true,
        terminating: true,
    };
    const DEAD: Conditions = Conditions {
        ready: false,
        serving: false,
        terminating: true,
    };

    fn ep(last: u8, conditions: Conditions, node: &str, zone: &str) -> Endpoint {
        Endpoint {
            addr: std::net::IpAddr::from([10, 244, 0, last]),
            conditions,
            node: Some(node.to_owned()),
            zone: Some(zone.to_owned()),
            zone_hints: vec![],
            node_hints: vec![],
        }
    }

    fn hinted(mut e: Endpoint, zones: &[&str]) -> Endpoint {
        e.zone_hints = zones.iter().map(|z| (*z).to_owned()).collect();
        e
    }

    fn node() -> Node {
        Node::new("a").with_zone("z1")
    }

    fn lasts(cs: &[Candidate<'_>]) -> Vec<u8> {
        cs.iter()
            .map(|c| match c.endpoint.addr {
                std::net::IpAddr::V4(v4) => v4.octets()[3],
                std::net::IpAddr::V6(_) => 0,
            })
            .collect()
    }

    fn run(eps: &[Endpoint], distribution: Option<TrafficDistribution>) -> (Vec<u8>, Vec<u8>) {
        let cands: Vec<Candidate<'_>> = eps
            .iter()
            .map(|e| Candidate {
                endpoint: e,
                port: 80,
            })
            .collect();
        let s = select(&cands, &node(), distribution);
        (lasts(&s.cluster), lasts(&s.local))
    }

    #[test]
    fn cluster_traffic_uses_ready_endpoints_only() {
        let eps = [
            ep(1, READY, "a", "z1"),
            ep(2, DRAINING, "b", "z1"),
            ep(3, DEAD, "b", "z2"),
        ];
        assert_eq!(run(&eps, None), (vec![1], vec![1]));
    }

    #[test]
    fn serving_terminating_endpoints_are_used_when_none_is_ready() {
        let eps = [
            ep(2, DRAINING, "b", "z1"),
            ep(3, DEAD, "b", "z2"),
            ep(4, DRAINING, "a", "z1"),
        ];
        assert_eq!(run(&eps, None), (vec![2, 4], vec![4]));
    }

    #[test]
    fn local_traffic_falls_back_to_local_serving_terminating_endpoints() {
        let eps = [ep(1, READY, "b", "z1"), ep(4, DRAINING, "a", "z1")];
        assert_eq!(run(&eps, None), (vec![1], vec![4]));
    }

    #[test]
    fn zone_hints_narrow_cluster_traffic_to_this_zone() {
        let eps = [
            hinted(ep(1, READY, "a", "z1"), &["z1"]),
            hinted(ep(2, READY, "b", "z2"), &["z2"]),
        ];
        assert_eq!(run(&eps, None).0, vec![1]);
    }

    #[test]
    fn zone_hints_are_ignored_unless_every_ready_endpoint_has_one() {
        let eps = [
            hinted(ep(1, READY, "a", "z1"), &["z1"]),
            ep(2, READY, "b", "z2"),
        ];
        assert_eq!(run(&eps, None).0, vec![1, 2]);
    }

    #[test]
    fn zone_hints_are_ignored_when_none_is_for_this_zone() {
        let eps = [
            hinted(ep(1, READY, "a", "z3"), &["z3"]),
            hinted(ep(2, READY, "b", "z2"), &["z2"]),
        ];
        assert_eq!(run(&eps, None).0, vec![1, 2]);
    }

    #[test]
    fn node_hints_win_over_zone_hints() {
        let mut e1 = hinted(ep(1, READY, "a", "z1"), &["z1"]);
        e1.node_hints = vec!["a".into()];
        let mut e2 = hinted(ep(2, READY, "c", "z1"), &["z1"]);
        e2.node_hints = vec!["c".into()];
        assert_eq!(run(&[e1, e2], None).0, vec![1]);
    }

    #[test]
    fn prefer_close_without_hints_uses_the_endpoint_zones() {
        let eps = [ep(1, READY, "b", "z1"), ep(2, READY, "c", "z2")];
        assert_eq!(run(&eps, Some(TrafficDistribution::PreferClose)).0, vec![1]);
        assert_eq!(run(&eps, None).0, vec![1, 2]);
    }

    #[test]
    fn prefer_close_without_an_endpoint_in_this_zone_uses_all() {
        let eps = [ep(1, READY, "b", "z3"), ep(2, READY, "c", "z2")];
        assert_eq!(
            run(&eps, Some(TrafficDistribution::PreferClose)).0,
            vec![1, 2]
        );
    }

    #[test]
    fn prefer_same_node_without_hints_uses_this_node_then_this_zone() {
        let eps = [
            ep(1, READY, "a", "z1"),
            ep(2, READY, "b", "z1"),
            ep(3, READY, "c", "z2"),
        ];
        assert_eq!(
            run(&eps, Some(TrafficDistribution::PreferSameNode)).0,
            vec![1]
        );
        let eps = [ep(2, READY, "b", "z1"), ep(3, READY, "c", "z2")];
        assert_eq!(
            run(&eps, Some(TrafficDistribution::PreferSameNode)).0,
            vec![2]
        );
    }
}
