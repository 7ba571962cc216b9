//! The input: what the iptables layer needs to know, in kube-proxy's terms.

use std::collections::BTreeSet;

use ipnet::IpNet;
use kipvs_ipvs::Family;
use kipvs_proxy::translate::NoNodeAccess;
use kipvs_proxy::{FamilyRules, SetKind};

use crate::ipset::KubeSets;
use crate::{Error, Result};

/// The bit of the packet mark that asks for masquerade (`iptables.masqueradeBit`,
/// default 14: mark `0x4000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasqueradeBit(u8);

impl MasqueradeBit {
    /// kube-proxy's default, 14.
    pub const DEFAULT: MasqueradeBit = MasqueradeBit(14);

    /// A bit from 0 to 31.
    ///
    /// # Errors
    /// When `bit` is above 31.
    pub fn new(bit: u8) -> Result<MasqueradeBit> {
        if bit > 31 {
            return Err(Error::Invalid {
                what: "masqueradeBit",
                detail: format!("{bit} (0 to 31)"),
            });
        }
        Ok(MasqueradeBit(bit))
    }

    /// The mark value, as `iptables-save` prints it (`0x4000`).
    pub fn mark(self) -> String {
        format!("{:#x}", 1u32 << self.0)
    }
}

impl Default for MasqueradeBit {
    fn default() -> Self {
        MasqueradeBit::DEFAULT
    }
}

/// How traffic from pods on this node is told apart from other traffic
/// (`detectLocalMode`). Traffic to a ClusterIP that is *not* local is masqueraded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalDetector {
    /// No detection: node-originated traffic with a VIP source is masqueraded instead
    /// (kube-proxy's behaviour without a clusterCIDR).
    #[default]
    None,
    /// Local = source inside this CIDR (`ClusterCIDR` with `clusterCIDR`, or `NodeCIDR`
    /// with the node's pod CIDR), of this family.
    Cidr(IpNet),
    /// Local = arriving on this bridge (`BridgeInterface`).
    BridgeInterface(String),
    /// Local = arriving on an interface whose name starts with this (`InterfaceNamePrefix`).
    InterfaceNamePrefix(String),
}

impl LocalDetector {
    /// The match that selects *non-local* traffic, as `iptables-save` prints it.
    pub(crate) fn if_not_local(&self) -> Option<String> {
        match self {
            LocalDetector::None => None,
            LocalDetector::Cidr(net) => Some(format!("! -s {}", net.trunc())),
            LocalDetector::BridgeInterface(name) => Some(format!("! -i {name}")),
            LocalDetector::InterfaceNamePrefix(prefix) => Some(format!("! -i {prefix}+")),
        }
    }
}

/// The configuration-derived part of [`RuleSpec`], the same on every sync.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleConfig {
    /// The masquerade mark bit.
    pub masquerade_bit: MasqueradeBit,
    /// `iptables.masqueradeAll`: masquerade all traffic to ClusterIPs.
    pub masquerade_all: bool,
    /// How local traffic is detected (for this family).
    pub local_detector: LocalDetector,
    /// Whether `MASQUERADE --random-fully` is available (iptables >= 1.6.2; see
    /// [`super::Backend::random_fully`]).
    pub random_fully: bool,
}

/// Everything the iptables layer of one address family renders from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// The family (`iptables` or `ip6tables`).
    pub family: Family,
    /// From the configuration.
    pub config: RuleConfig,
    /// The kube-proxy sets that have members: rules matching an empty set are left out,
    /// as kube-proxy does.
    pub nonempty: BTreeSet<SetKind>,
    /// LoadBalancer ports the node must not reach (`KUBE-IPVS-OUT-FILTER`: kube-proxy
    /// drops node traffic to LoadBalancers whose source ranges exclude the node,
    /// #119656). Those of another family are ignored.
    pub no_node_access: BTreeSet<NoNodeAccess>,
}

impl RuleSpec {
    /// The spec for these sets (their family and which are non-empty) and configuration.
    pub fn new(sets: &KubeSets, config: RuleConfig) -> RuleSpec {
        RuleSpec {
            family: sets.family(),
            config,
            nonempty: SetKind::ALL
                .into_iter()
                .filter(|s| !sets.is_empty(*s))
                .collect(),
            no_node_access: BTreeSet::new(),
        }
    }

    /// The spec for the core's inputs of one family ([`kipvs_proxy::Desired::iptables`])
    /// and this configuration. Sets of another family in `rules` are ignored.
    pub fn from_rules(rules: &FamilyRules, config: RuleConfig) -> RuleSpec {
        RuleSpec {
            family: rules.family,
            config,
            nonempty: rules
                .nonempty_sets
                .iter()
                .filter(|name| name.family == rules.family)
                .map(|name| name.kind)
                .collect(),
            no_node_access: rules.no_node_access.iter().copied().collect(),
        }
    }

    pub(crate) fn has(&self, set: SetKind) -> bool {
        self.nonempty.contains(&set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_bits_become_marks() {
        assert_eq!(MasqueradeBit::DEFAULT.mark(), "0x4000");
        assert_eq!(MasqueradeBit::new(0).unwrap().mark(), "0x1");
        assert_eq!(MasqueradeBit::new(31).unwrap().mark(), "0x80000000");
        assert!(MasqueradeBit::new(32).is_err());
    }

    #[test]
    fn local_detectors_render_the_non_local_match() {
        let cidr = LocalDetector::Cidr("10.244.1.7/16".parse().unwrap());
        assert_eq!(cidr.if_not_local().unwrap(), "! -s 10.244.0.0/16");
        let prefix = LocalDetector::InterfaceNamePrefix("veth".into());
        assert_eq!(prefix.if_not_local().unwrap(), "! -i veth+");
        assert_eq!(LocalDetector::None.if_not_local(), None);
    }

    #[test]
    fn specs_take_the_cores_family_rules() {
        use kipvs_ipvs::Protocol;
        use kipvs_proxy::SetName;
        let lb = NoNodeAccess {
            addr: "203.0.113.10".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        };
        let rules = FamilyRules {
            family: Family::V4,
            nonempty_sets: vec![
                SetName::new(SetKind::ClusterIp, Family::V4),
                SetName::new(SetKind::LoopBack, Family::V6),
            ],
            no_node_access: vec![lb],
            node_pod_cidr: None,
        };
        let spec = RuleSpec::from_rules(&rules, RuleConfig::default());
        assert_eq!(spec.family, Family::V4);
        assert_eq!(spec.nonempty, [SetKind::ClusterIp].into());
        assert_eq!(spec.no_node_access, [lb].into());
    }
}
