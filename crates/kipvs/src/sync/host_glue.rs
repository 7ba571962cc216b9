//! Translation between the core's ipset and iptables vocabulary and the host crate's.
//!
//! The two crates grew their own names for the same sets, members and families; until
//! they share one definition, this module maps them, and its tests prove the two
//! catalogs agree set for set.

use kipvs_host::ipset::{
    Entry as HostEntry, KubeSet, Protocol as HostProtocol, SetKind as HostType,
};
use kipvs_host::iptables::NoNodeAccess as HostNoNodeAccess;
use kipvs_host::Family as HostFamily;
use kipvs_ipvs::{Family, Protocol};
use kipvs_proxy::translate::NoNodeAccess;
use kipvs_proxy::{Member, SetName, SetType};

/// The host crate's family.
pub fn family(f: Family) -> HostFamily {
    match f {
        Family::V4 => HostFamily::V4,
        Family::V6 => HostFamily::V6,
    }
}

fn protocol(p: Protocol) -> HostProtocol {
    match p {
        Protocol::Tcp => HostProtocol::Tcp,
        Protocol::Udp => HostProtocol::Udp,
        Protocol::Sctp => HostProtocol::Sctp,
    }
}

fn core_protocol(p: HostProtocol) -> Protocol {
    match p {
        HostProtocol::Tcp => Protocol::Tcp,
        HostProtocol::Udp => Protocol::Udp,
        HostProtocol::Sctp => Protocol::Sctp,
    }
}

/// The host crate's set for a core set name (same kube-proxy name).
pub fn kube_set(name: SetName) -> Option<KubeSet> {
    let wanted = name.to_string();
    KubeSet::ALL
        .into_iter()
        .find(|set| set.name(family(name.family)) == wanted)
}

/// The host crate's set type for a core set type.
pub fn set_type(t: SetType) -> HostType {
    match t {
        SetType::HashIp => HostType::HashIp,
        SetType::HashIpPort => HostType::HashIpPort,
        SetType::HashIpPortIp => HostType::HashIpPortIp,
        SetType::HashIpPortNet => HostType::HashIpPortNet,
        SetType::BitmapPort => HostType::BitmapPort,
    }
}

/// A core member as the host crate writes it.
pub fn entry(member: Member) -> HostEntry {
    match member {
        Member::Ip(ip) => HostEntry::Ip(ip),
        Member::Port(port) => HostEntry::Port(port),
        Member::IpPort {
            ip,
            protocol: p,
            port,
        } => HostEntry::IpPort(ip, protocol(p), port),
        Member::IpPortIp {
            ip,
            protocol: p,
            port,
            ip2,
        } => HostEntry::IpPortIp(ip, protocol(p), port, ip2),
        Member::IpPortNet {
            ip,
            protocol: p,
            port,
            net,
        } => HostEntry::IpPortNet(ip, protocol(p), port, net),
    }
}

/// A host entry as the core reads it.
pub fn member(entry: &HostEntry) -> Member {
    match *entry {
        HostEntry::Ip(ip) => Member::Ip(ip),
        HostEntry::Port(port) => Member::Port(port),
        HostEntry::IpPort(ip, p, port) => Member::IpPort {
            ip,
            protocol: core_protocol(p),
            port,
        },
        HostEntry::IpPortIp(ip, p, port, ip2) => Member::IpPortIp {
            ip,
            protocol: core_protocol(p),
            port,
            ip2,
        },
        HostEntry::IpPortNet(ip, p, port, net) => Member::IpPortNet {
            ip,
            protocol: core_protocol(p),
            port,
            net,
        },
    }
}

/// A LoadBalancer port the node may not reach, as the host crate takes it.
pub fn no_node_access(n: &NoNodeAccess) -> HostNoNodeAccess {
    HostNoNodeAccess {
        ip: n.addr,
        protocol: protocol(n.protocol),
        port: n.port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_set_is_a_host_set_of_the_same_type() {
        for name in SetName::all() {
            let host = kube_set(name).unwrap_or_else(|| panic!("{name} unknown to the host crate"));
            assert_eq!(host.kind(), set_type(name.kind.set_type()), "{name}");
        }
        assert_eq!(SetName::all().count(), 2 * KubeSet::ALL.len());
    }

    #[test]
    fn members_survive_the_round_trip() {
        let members = [
            Member::Ip("10.96.0.1".parse().unwrap()),
            Member::Port(30080),
            Member::IpPort {
                ip: "fd00::1".parse().unwrap(),
                protocol: Protocol::Sctp,
                port: 9,
            },
            Member::IpPortIp {
                ip: "10.244.0.5".parse().unwrap(),
                protocol: Protocol::Udp,
                port: 53,
                ip2: "10.244.0.5".parse().unwrap(),
            },
            Member::IpPortNet {
                ip: "203.0.113.7".parse().unwrap(),
                protocol: Protocol::Tcp,
                port: 443,
                net: "198.51.100.0/24".parse().unwrap(),
            },
        ];
        for m in members {
            assert_eq!(member(&entry(m)), m);
        }
    }
}
