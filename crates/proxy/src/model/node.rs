//! This node: its name, zone and addresses.

use std::net::IpAddr;

use ipnet::IpNet;

/// The node kipvs runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// The node's name (matches `nodeName` of endpoints).
    pub name: String,
    /// Its zone (label `topology.kubernetes.io/zone`), if labelled.
    pub zone: Option<String>,
    /// Its local addresses, excluding those on kube-ipvs0: NodePorts listen on these
    /// (filtered by `nodePortAddresses`), and ExternalIPs / LoadBalancer IPs among them
    /// are not bound to kube-ipvs0.
    pub addresses: Vec<IpAddr>,
    /// Its pod CIDRs (`spec.podCIDRs`): traffic from them is local with
    /// `detectLocalMode: NodeCIDR`.
    pub pod_cidrs: Vec<IpNet>,
}

impl Node {
    /// A node with a name and no zone or addresses yet.
    pub fn new(name: impl Into<String>) -> Self {
        Node {
            name: name.into(),
            zone: None,
            addresses: Vec::new(),
            pod_cidrs: Vec::new(),
        }
    }

    /// The same node in `zone`.
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// The same node with these local addresses.
    pub fn with_addresses(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        self.addresses = addresses.into_iter().collect();
        self
    }

    /// The same node with these pod CIDRs.
    pub fn with_pod_cidrs(mut self, pod_cidrs: impl IntoIterator<Item = IpNet>) -> Self {
        self.pod_cidrs = pod_cidrs.into_iter().collect();
        self
    }

    /// Whether `addr` is one of this node's own addresses.
    pub fn has_address(&self, addr: &IpAddr) -> bool {
        self.addresses.contains(addr)
    }
}
