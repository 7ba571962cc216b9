//! The configuration the core uses: the parts of KubeProxyConfiguration that decide the
//! desired state.
//!
//! The binary loads and validates the configuration file; every field here is already
//! typed, so the core trusts it.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use kipvs_ipvs::{Family, Scheduler};

use crate::annotations::SchedulerFlags;

/// The configuration of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Scheduler of Services without a scheduler annotation (`ipvs.scheduler`, `rr`).
    pub scheduler: Scheduler,
    /// Flags for the default scheduler when a Service's annotations give none. `None`
    /// means kube-proxy's behaviour: `mh` gets `mh-port`, others nothing.
    pub scheduler_flags: Option<SchedulerFlags>,
    /// Virtual services whose address falls in one of these are never deleted or
    /// changed unless a Service asks for them (`ipvs.excludeCIDRs`, as kube-proxy's
    /// `cleanLegacyService` skips them); Services inside are programmed as usual.
    pub exclude_cidrs: Vec<IpNet>,
    /// Node addresses NodePorts listen on (`nodePortAddresses`); a family without any
    /// of these (all of them, when empty) listens on every address of that family.
    pub node_port_addresses: Vec<IpNet>,
    /// Masquerade all traffic to Services (`iptables.masqueradeAll`).
    pub masquerade_all: bool,
    /// Bit of the packet mark that asks for masquerade (`iptables.masqueradeBit`, 14).
    pub masquerade_bit: u8,
    /// Pod CIDRs (`clusterCIDR`, comma-separated there): traffic from elsewhere to a
    /// ClusterIP is masqueraded.
    pub cluster_cidrs: Vec<IpNet>,
    /// Address families kipvs programs.
    pub families: Vec<Family>,
    /// How long a leaving TCP destination may drain at weight 0 before it is deleted
    /// even with connections left. `None` (the default, kube-proxy's behaviour): until
    /// its connections end, however long that takes.
    pub drain_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scheduler: Scheduler::RoundRobin,
            scheduler_flags: None,
            exclude_cidrs: Vec::new(),
            node_port_addresses: Vec::new(),
            masquerade_all: false,
            masquerade_bit: 14,
            cluster_cidrs: Vec::new(),
            families: vec![Family::V4, Family::V6],
            drain_timeout: None,
        }
    }
}

impl Config {
    /// Whether `addr` is in one of the excluded CIDRs.
    pub fn is_excluded(&self, addr: &IpAddr) -> bool {
        self.exclude_cidrs.iter().any(|net| net.contains(addr))
    }

    /// Whether kipvs programs this address family.
    pub fn handles(&self, family: Family) -> bool {
        self.families.contains(&family)
    }

    /// The packet mark that asks for masquerade (`1 << masqueradeBit`, bit 14 when the
    /// bit is out of range).
    pub fn masquerade_mark(&self) -> u32 {
        1u32.checked_shl(u32::from(self.masquerade_bit))
            .filter(|_| self.masquerade_bit < 32)
            .unwrap_or(1 << 14)
    }

    /// Whether NodePorts listen on `addr`, one of the node's addresses. Per address
    /// family, as kube-proxy reads `nodePortAddresses`: a family none of its CIDRs is of
    /// listens everywhere, as if the list were empty (`[192.168.1.0/24]` restricts IPv4
    /// and leaves IPv6 NodePorts on every IPv6 address). Loopback and IPv6 link-local
    /// addresses never match, whatever `nodePortAddresses` says: the real kube-proxy
    /// (1.37.2, ipvs mode) leaves them out of the node addresses when a family is not
    /// restricted (`isValidForSet`) and drops loopback ones from what a narrower list
    /// selects; seen in the test VM too (`tests/peer/migration`: no virtual server on
    /// 127.0.0.1).
    pub fn is_node_port_address(&self, addr: &IpAddr) -> bool {
        if let IpAddr::V6(v6) = addr {
            if v6.segments()[0] & 0xffc0 == 0xfe80 {
                return false;
            }
        }
        if addr.is_loopback() {
            return false;
        }
        let mut of_family = self
            .node_port_addresses
            .iter()
            .filter(|n| n.addr().is_ipv4() == addr.is_ipv4())
            .peekable();
        of_family.peek().is_none() || of_family.any(|n| n.contains(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ports_listen_on_every_address_but_loopback_unless_restricted() {
        let mut c = Config::default();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        let eth: IpAddr = "192.168.1.10".parse().unwrap();
        let ll: IpAddr = "fe80::1".parse().unwrap();
        assert!(!c.is_node_port_address(&lo));
        assert!(!c.is_node_port_address(&lo6));
        assert!(c.is_node_port_address(&eth));
        assert!(!c.is_node_port_address(&ll));
        c.node_port_addresses = vec![
            "192.168.1.0/24".parse().unwrap(),
            "127.0.0.0/8".parse().unwrap(),
        ];
        assert!(!c.is_node_port_address(&lo));
        assert!(c.is_node_port_address(&eth));
        // Only IPv4 CIDRs: IPv6 NodePorts stay on every IPv6 address, as in kube-proxy.
        let eth6: IpAddr = "fd00::10".parse().unwrap();
        assert!(c.is_node_port_address(&eth6));
        c.node_port_addresses.push("fd00:1::/64".parse().unwrap());
        assert!(!c.is_node_port_address(&eth6));
        assert!(c.is_node_port_address(&"fd00:1::10".parse().unwrap()));
        // excludeCIDRs only protects unwanted virtual services from deletion.
        c.exclude_cidrs = vec!["192.168.1.10/32".parse().unwrap()];
        assert!(c.is_node_port_address(&eth));
    }

    #[test]
    fn the_masquerade_mark_follows_the_bit() {
        let mut c = Config::default();
        assert_eq!(c.masquerade_mark(), 0x4000);
        c.masquerade_bit = 40;
        assert_eq!(c.masquerade_mark(), 0x4000);
        c.masquerade_bit = 0;
        assert_eq!(c.masquerade_mark(), 1);
    }
}
