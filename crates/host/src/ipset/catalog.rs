//! kube-proxy's ipsets: their names (`KUBE-…`, `KUBE-6-…` for IPv6), types and
//! comments, and [`KubeSets`], the members of each for one address family.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{Entry, SetKind, SetSpec, MAX_NAME_LEN};
use crate::{Error, Family, Result};

/// One of the ipsets kube-proxy's ipvs mode creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KubeSet {
    /// `KUBE-LOOP-BACK` (hash:ip,port,ip): `endpointIP,proto:port,endpointIP` of local
    /// endpoints, masqueraded so a pod can reach itself through its Service (hairpin).
    LoopBack,
    /// `KUBE-CLUSTER-IP` (hash:ip,port): every ClusterIP and port.
    ClusterIp,
    /// `KUBE-EXTERNAL-IP` (hash:ip,port): external IPs and ports.
    ExternalIp,
    /// `KUBE-EXTERNAL-IP-LOCAL` (hash:ip,port): external IPs with externalTrafficPolicy=Local.
    ExternalIpLocal,
    /// `KUBE-LOAD-BALANCER` (hash:ip,port): LoadBalancer ingress IPs and ports.
    LoadBalancer,
    /// `KUBE-LOAD-BALANCER-FW` (hash:ip,port): LoadBalancers with source ranges.
    LoadBalancerFw,
    /// `KUBE-LOAD-BALANCER-LOCAL` (hash:ip,port): LoadBalancers with Local traffic policy.
    LoadBalancerLocal,
    /// `KUBE-LOAD-BALANCER-SOURCE-IP` (hash:ip,port,ip): `lbIP,proto:port,sourceIP`
    /// allowed through the source-range firewall.
    LoadBalancerSourceIp,
    /// `KUBE-LOAD-BALANCER-SOURCE-CIDR` (hash:ip,port,net): `lbIP,proto:port,sourceCIDR`
    /// allowed through the source-range firewall.
    LoadBalancerSourceCidr,
    /// `KUBE-NODE-PORT-TCP` (bitmap:port).
    NodePortTcp,
    /// `KUBE-NODE-PORT-LOCAL-TCP` (bitmap:port): TCP node ports with Local policy.
    NodePortLocalTcp,
    /// `KUBE-NODE-PORT-UDP` (bitmap:port).
    NodePortUdp,
    /// `KUBE-NODE-PORT-LOCAL-UDP` (bitmap:port): UDP node ports with Local policy.
    NodePortLocalUdp,
    /// `KUBE-NODE-PORT-SCTP-HASH` (hash:ip,port): `nodeIP,sctp:port`.
    NodePortSctp,
    /// `KUBE-NODE-PORT-LOCAL-SCTP-HASH` (hash:ip,port): SCTP node ports with Local policy.
    NodePortLocalSctp,
    /// `KUBE-HEALTH-CHECK-NODE-PORT` (bitmap:port): health check node ports to accept.
    HealthCheckNodePort,
    /// `KUBE-IPVS-IPS` (hash:ip): every address bound to kube-ipvs0; new connections to
    /// them on ports that are not Services are rejected.
    IpvsIps,
}

impl KubeSet {
    /// Every set, in kube-proxy's order.
    pub const ALL: [KubeSet; 17] = [
        KubeSet::LoopBack,
        KubeSet::ClusterIp,
        KubeSet::ExternalIp,
        KubeSet::ExternalIpLocal,
        KubeSet::LoadBalancer,
        KubeSet::LoadBalancerFw,
        KubeSet::LoadBalancerLocal,
        KubeSet::LoadBalancerSourceIp,
        KubeSet::LoadBalancerSourceCidr,
        KubeSet::NodePortTcp,
        KubeSet::NodePortLocalTcp,
        KubeSet::NodePortUdp,
        KubeSet::NodePortLocalUdp,
        KubeSet::NodePortSctp,
        KubeSet::NodePortLocalSctp,
        KubeSet::HealthCheckNodePort,
        KubeSet::IpvsIps,
    ];

    /// The IPv4 name (`KUBE-CLUSTER-IP`).
    pub fn base_name(self) -> &'static str {
        match self {
            KubeSet::LoopBack => "KUBE-LOOP-BACK",
            KubeSet::ClusterIp => "KUBE-CLUSTER-IP",
            KubeSet::ExternalIp => "KUBE-EXTERNAL-IP",
            KubeSet::ExternalIpLocal => "KUBE-EXTERNAL-IP-LOCAL",
            KubeSet::LoadBalancer => "KUBE-LOAD-BALANCER",
            KubeSet::LoadBalancerFw => "KUBE-LOAD-BALANCER-FW",
            KubeSet::LoadBalancerLocal => "KUBE-LOAD-BALANCER-LOCAL",
            KubeSet::LoadBalancerSourceIp => "KUBE-LOAD-BALANCER-SOURCE-IP",
            KubeSet::LoadBalancerSourceCidr => "KUBE-LOAD-BALANCER-SOURCE-CIDR",
            KubeSet::NodePortTcp => "KUBE-NODE-PORT-TCP",
            KubeSet::NodePortLocalTcp => "KUBE-NODE-PORT-LOCAL-TCP",
            KubeSet::NodePortUdp => "KUBE-NODE-PORT-UDP",
            KubeSet::NodePortLocalUdp => "KUBE-NODE-PORT-LOCAL-UDP",
            KubeSet::NodePortSctp => "KUBE-NODE-PORT-SCTP-HASH",
            KubeSet::NodePortLocalSctp => "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
            KubeSet::HealthCheckNodePort => "KUBE-HEALTH-CHECK-NODE-PORT",
            KubeSet::IpvsIps => "KUBE-IPVS-IPS",
        }
    }

    /// The name in `family`: IPv6 sets replace the `KUBE-` prefix with `KUBE-6-` and are
    /// cut to 31 characters, as kube-proxy does (`KUBE-6-LOAD-BALANCER-SOURCE-CID`).
    pub fn name(self, family: Family) -> String {
        let base = self.base_name();
        match family {
            Family::V4 => base.to_owned(),
            Family::V6 => {
                let mut name = base.replacen("KUBE-", "KUBE-6-", 1);
                name.truncate(MAX_NAME_LEN);
                name
            }
        }
    }

    /// The set's type.
    pub fn kind(self) -> SetKind {
        match self {
            KubeSet::LoopBack | KubeSet::LoadBalancerSourceIp => SetKind::HashIpPortIp,
            KubeSet::LoadBalancerSourceCidr => SetKind::HashIpPortNet,
            KubeSet::NodePortTcp
            | KubeSet::NodePortLocalTcp
            | KubeSet::NodePortUdp
            | KubeSet::NodePortLocalUdp
            | KubeSet::HealthCheckNodePort => SetKind::BitmapPort,
            KubeSet::IpvsIps => SetKind::HashIp,
            _ => SetKind::HashIpPort,
        }
    }

    /// kube-proxy's comment for the set, used on the iptables rules that match it.
    pub fn comment(self) -> &'static str {
        match self {
            KubeSet::LoopBack => {
                "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"
            }
            KubeSet::ClusterIp => "Kubernetes service cluster ip + port for masquerade purpose",
            KubeSet::ExternalIp => {
                "Kubernetes service external ip + port for masquerade and filter purpose"
            }
            KubeSet::ExternalIpLocal => {
                "Kubernetes service external ip + port with externalTrafficPolicy=local"
            }
            KubeSet::LoadBalancer => "Kubernetes service lb portal",
            KubeSet::LoadBalancerFw => {
                "Kubernetes service load balancer ip + port for load balancer with sourceRange"
            }
            KubeSet::LoadBalancerLocal => {
                "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"
            }
            KubeSet::LoadBalancerSourceIp => {
                "Kubernetes service load balancer ip + port + source IP for packet filter purpose"
            }
            KubeSet::LoadBalancerSourceCidr => {
                "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"
            }
            KubeSet::NodePortTcp => "Kubernetes nodeport TCP port for masquerade purpose",
            KubeSet::NodePortLocalTcp => {
                "Kubernetes nodeport TCP port with externalTrafficPolicy=local"
            }
            KubeSet::NodePortUdp => "Kubernetes nodeport UDP port for masquerade purpose",
            KubeSet::NodePortLocalUdp => {
                "Kubernetes nodeport UDP port with externalTrafficPolicy=local"
            }
            KubeSet::NodePortSctp => {
                "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"
            }
            KubeSet::NodePortLocalSctp => {
                "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"
            }
            KubeSet::HealthCheckNodePort => "Kubernetes health check node port",
            KubeSet::IpvsIps => "Addresses on the ipvs interface",
        }
    }
}

/// The members of every kube-proxy set, for one address family: what the binary fills
/// from the proxy core's desired state, and what [`super::sync_sets`] and
/// [`crate::iptables::RuleSpec`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSets {
    family: Family,
    members: BTreeMap<KubeSet, BTreeSet<Entry>>,
}

impl KubeSets {
    /// Every set, empty.
    pub fn new(family: Family) -> KubeSets {
        KubeSets {
            family,
            members: BTreeMap::new(),
        }
    }

    /// The family these sets are for.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Adds `entry` to `set`.
    ///
    /// # Errors
    /// When the entry is of another kind than the set (an `ip,port` entry in a
    /// `bitmap:port` set) or of another address family.
    pub fn insert(&mut self, set: KubeSet, entry: Entry) -> Result<()> {
        if entry.kind() != set.kind() || !entry.is_family(self.family) {
            return Err(Error::Invalid {
                what: "ipset entry",
                detail: format!(
                    "{entry} does not fit {} ({}, {})",
                    set.name(self.family),
                    set.kind(),
                    self.family
                ),
            });
        }
        self.members.entry(set).or_default().insert(entry);
        Ok(())
    }

    /// The members of `set`.
    pub fn members(&self, set: KubeSet) -> impl Iterator<Item = &Entry> {
        self.members.get(&set).into_iter().flatten()
    }

    /// Whether `set` has no member (kube-proxy writes no iptables rule for an empty set).
    pub fn is_empty(&self, set: KubeSet) -> bool {
        self.members.get(&set).is_none_or(BTreeSet::is_empty)
    }

    /// Every kube-proxy set for this family, with its members (empty ones included:
    /// kube-proxy creates them all).
    pub fn specs(&self) -> Vec<SetSpec> {
        KubeSet::ALL
            .iter()
            .map(|&set| {
                let members = self.members.get(&set).cloned().unwrap_or_default();
                // Entries were checked on insert; names and kinds are constants.
                SetSpec::try_new(set.name(self.family), set.kind(), self.family, members)
                    .unwrap_or_else(|e| unreachable!("catalog set is valid: {e}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipset::Protocol;

    #[test]
    fn ipv6_names_use_the_kube_6_prefix_cut_to_31_characters() {
        assert_eq!(KubeSet::ClusterIp.name(Family::V6), "KUBE-6-CLUSTER-IP");
        assert_eq!(
            KubeSet::LoadBalancerSourceCidr.name(Family::V6),
            "KUBE-6-LOAD-BALANCER-SOURCE-CID"
        );
        assert_eq!(KubeSet::ClusterIp.name(Family::V4), "KUBE-CLUSTER-IP");
        for set in KubeSet::ALL {
            assert!(set.name(Family::V6).len() <= MAX_NAME_LEN);
        }
    }

    #[test]
    fn kube_sets_refuse_entries_that_do_not_fit() {
        let mut sets = KubeSets::new(Family::V4);
        let vip = "10.96.0.1".parse().unwrap();
        sets.insert(KubeSet::ClusterIp, Entry::IpPort(vip, Protocol::Tcp, 443))
            .unwrap();
        assert!(sets
            .insert(KubeSet::NodePortTcp, Entry::IpPort(vip, Protocol::Tcp, 1))
            .is_err());
        assert!(sets
            .insert(KubeSet::IpvsIps, Entry::Ip("fd00::1".parse().unwrap()))
            .is_err());
        let specs = sets.specs();
        assert_eq!(specs.len(), 17);
        assert!(!sets.is_empty(KubeSet::ClusterIp));
        assert!(sets.is_empty(KubeSet::LoopBack));
    }
}
