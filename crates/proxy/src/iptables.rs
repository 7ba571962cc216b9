//! The inputs the iptables layer needs to write kube-proxy's ipvs-mode rules.
//!
//! The rules themselves are the host layer's business; the core says which sets have
//! members (kube-proxy writes a set's rules only when it does), the masquerade settings,
//! and the LoadBalancer IPs this node may not reach.

use ipnet::IpNet;
use kipvs_ipvs::Family;

use crate::ipset::SetName;
use crate::translate::NoNodeAccess;

/// What the iptables rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesInputs {
    /// Masquerade all Service traffic (`masqueradeAll`).
    pub masquerade_all: bool,
    /// The mark that asks for masquerade (`1 << masqueradeBit`).
    pub masquerade_mark: u32,
    /// Pod CIDRs: traffic to a ClusterIP from elsewhere is masqueraded.
    pub cluster_cidrs: Vec<IpNet>,
    /// Per address family.
    pub families: Vec<FamilyRules>,
}

/// The iptables inputs of one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyRules {
    /// The family (`iptables` or `ip6tables`).
    pub family: Family,
    /// Sets that have members, sorted.
    pub nonempty_sets: Vec<SetName>,
    /// LoadBalancer IP/ports this node may not reach (`KUBE-IPVS-OUT-FILTER`), sorted.
    pub no_node_access: Vec<NoNodeAccess>,
    /// This node's pod CIDR of the family, if known: what is local with
    /// `detectLocalMode: NodeCIDR` (kube-proxy takes the first of the family).
    pub node_pod_cidr: Option<IpNet>,
}
