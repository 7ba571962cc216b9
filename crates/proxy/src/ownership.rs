//! What kipvs owns in the kernel, and so may change or delete.
//!
//! IPVS has no field to say who created a virtual service, so kipvs keeps its record in
//! kernel objects that are its own and survive a restart:
//!
//! 1. **kube-ipvs0** is kipvs' interface: every address on it is kipvs', and so is every
//!    address-based virtual service on such an address (ClusterIPs, ExternalIPs and
//!    LoadBalancer IPs the node does not otherwise own).
//! 2. **The `KUBE-*` ipsets** are kipvs' sets: every member in them is kipvs', and a
//!    virtual service is kipvs' when its `(address, protocol, port)` is a member of
//!    `KUBE-CLUSTER-IP`, `KUBE-EXTERNAL-IP`, `KUBE-EXTERNAL-IP-LOCAL` or
//!    `KUBE-LOAD-BALANCER` (this covers ExternalIPs and LoadBalancer IPs that are node
//!    addresses), or when it sits on one of the node's addresses with a port that is a
//!    member of `KUBE-NODE-PORT-TCP` / `-UDP` (for SCTP: whose address and port are a
//!    member of `KUBE-NODE-PORT-SCTP-HASH`).
//! 3. **What the cluster asks for** now is kipvs' to create and keep equal to the
//!    desired state, whoever created it; and the addresses and records kipvs is about
//!    to add count as kipvs' already (rules 1 and 2 read the observed state and the
//!    desired state together), so a stale service on a VIP kipvs is about to bind goes
//!    in the same pass. An incremental pass looks only at the keys of the Services
//!    that changed; a service someone made by hand on an address that only now
//!    becomes kipvs' is removed by the next whole-cluster pass (verify).
//!
//! Never kipvs': firewall-mark services (kipvs creates none), anything whose address is
//! in `excludeCIDRs` that no Service asks for (kube-proxy's `cleanLegacyService` skips
//! those ranges; a Service inside them is still programmed, by rule 3), and any other
//! virtual service — such as keepalived's on its VRRP addresses or one made by hand with
//! ipvsadm. Destinations of a virtual service kipvs owns are all kipvs'.
//!
//! For the record to stay true across crashes, executors add ipset members before they
//! create virtual services and delete members only after deleting the services (the
//! [`crate::Plan`] fields are in that order).

use std::net::IpAddr;

use kipvs_ipvs::{Family, Protocol, ServiceKey};

use crate::config::Config;
use crate::ipset::{Entry, Member, SetKind, SetName};
use crate::model::Node;

/// The sets whose `ip,proto:port` members record kipvs' virtual services.
const RECORD_SETS: [SetKind; 4] = [
    SetKind::ClusterIp,
    SetKind::ExternalIp,
    SetKind::ExternalIpLocal,
    SetKind::LoadBalancer,
];

/// Whether kipvs owns the virtual service at `key`, given which addresses are bound on
/// kube-ipvs0 (`is_bound`) and which ipset members exist (`is_recorded`); never in
/// `excludeCIDRs`. Keys the cluster currently asks for are kipvs' too, excluded or not;
/// that is the planner's business, not this function's.
pub fn owns(
    key: &ServiceKey,
    is_bound: impl Fn(&IpAddr) -> bool,
    is_recorded: impl Fn(&Entry) -> bool,
    node: &Node,
    config: &Config,
) -> bool {
    let ServiceKey::Addr {
        protocol,
        addr,
        port,
    } = *key
    else {
        return false;
    };
    if config.is_excluded(&addr) {
        return false;
    }
    if is_bound(&addr) {
        return true;
    }
    let family = Family::of(&addr);
    let ip_port = Member::IpPort {
        ip: addr,
        protocol,
        port,
    };
    if RECORD_SETS
        .iter()
        .any(|k| is_recorded(&(SetName::new(*k, family), ip_port)))
    {
        return true;
    }
    if node.has_address(&addr) {
        let record = match protocol {
            Protocol::Tcp => (
                SetName::new(SetKind::NodePortTcp, family),
                Member::Port(port),
            ),
            Protocol::Udp => (
                SetName::new(SetKind::NodePortUdp, family),
                Member::Port(port),
            ),
            Protocol::Sctp => (SetName::new(SetKind::NodePortSctp, family), ip_port),
        };
        return is_recorded(&record);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn key(proto: Protocol, addr: &str, port: u16) -> ServiceKey {
        ServiceKey::Addr {
            protocol: proto,
            addr: addr.parse().unwrap(),
            port,
        }
    }

    struct World {
        bound: HashSet<IpAddr>,
        members: HashSet<Entry>,
        node: Node,
        config: Config,
    }

    impl World {
        fn new() -> Self {
            World {
                bound: ["10.96.0.1".parse().unwrap()].into_iter().collect(),
                members: [
                    (
                        SetName::new(SetKind::ExternalIp, Family::V4),
                        Member::IpPort {
                            ip: "192.168.1.10".parse().unwrap(),
                            protocol: Protocol::Tcp,
                            port: 80,
                        },
                    ),
                    (
                        SetName::new(SetKind::NodePortTcp, Family::V4),
                        Member::Port(30080),
                    ),
                ]
                .into_iter()
                .collect(),
                node: Node::new("a").with_addresses(["192.168.1.10".parse().unwrap()]),
                config: Config::default(),
            }
        }

        fn owns(&self, k: &ServiceKey) -> bool {
            owns(
                k,
                |a| self.bound.contains(a),
                |e| self.members.contains(e),
                &self.node,
                &self.config,
            )
        }
    }

    #[test]
    fn services_on_kube_ipvs0_addresses_are_kipvs() {
        let w = World::new();
        assert!(w.owns(&key(Protocol::Tcp, "10.96.0.1", 443)));
        assert!(w.owns(&key(Protocol::Udp, "10.96.0.1", 53)));
    }

    #[test]
    fn services_recorded_in_kipvs_ipsets_are_kipvs() {
        let w = World::new();
        assert!(w.owns(&key(Protocol::Tcp, "192.168.1.10", 80)));
        assert!(w.owns(&key(Protocol::Tcp, "192.168.1.10", 30080)));
    }

    #[test]
    fn foreign_services_are_never_kipvs() {
        let w = World::new();
        // keepalived on the node address, another port
        assert!(!w.owns(&key(Protocol::Tcp, "192.168.1.10", 443)));
        // a node-port number, but on an address that is not the node's
        assert!(!w.owns(&key(Protocol::Tcp, "192.168.1.99", 30080)));
        // a node-port number for another protocol
        assert!(!w.owns(&key(Protocol::Udp, "192.168.1.10", 30080)));
        assert!(!w.owns(&ServiceKey::Fwmark {
            family: Family::V4,
            mark: 1
        }));
    }

    #[test]
    fn excluded_cidrs_are_never_kipvs_even_on_kube_ipvs0() {
        let mut w = World::new();
        w.config.exclude_cidrs = vec!["10.96.0.0/24".parse().unwrap()];
        assert!(!w.owns(&key(Protocol::Tcp, "10.96.0.1", 443)));
    }
}
