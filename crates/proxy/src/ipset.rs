//! The ipsets kipvs fills, named and typed as kube-proxy's ipvs mode names them, and
//! their members.
//!
//! The iptables rules of the host layer match on these sets; the sets also serve as
//! kipvs' record, kept in the kernel, of the virtual services it programmed (see
//! [`crate::ownership`]). IPv6 sets are prefixed `KUBE-6-` instead of `KUBE-`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use kipvs_ipvs::{Family, Protocol};

/// The ipset types kipvs uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetType {
    /// `hash:ip`.
    HashIp,
    /// `hash:ip,port`.
    HashIpPort,
    /// `hash:ip,port,ip`.
    HashIpPortIp,
    /// `hash:ip,port,net`.
    HashIpPortNet,
    /// `bitmap:port` (range 0-65535).
    BitmapPort,
}

impl SetType {
    /// The type as `ipset create` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SetType::HashIp => "hash:ip",
            SetType::HashIpPort => "hash:ip,port",
            SetType::HashIpPortIp => "hash:ip,port,ip",
            SetType::HashIpPortNet => "hash:ip,port,net",
            SetType::BitmapPort => "bitmap:port",
        }
    }

    /// Reads a type as `ipset` names it; `None` for a type kipvs does not use.
    pub fn parse(s: &str) -> Option<SetType> {
        Some(match s {
            "hash:ip" => SetType::HashIp,
            "hash:ip,port" => SetType::HashIpPort,
            "hash:ip,port,ip" => SetType::HashIpPortIp,
            "hash:ip,port,net" => SetType::HashIpPortNet,
            "bitmap:port" => SetType::BitmapPort,
            _ => return None,
        })
    }

    /// Whether sets of this type have an address family (`bitmap:port` has none).
    pub fn has_family(self) -> bool {
        self != SetType::BitmapPort
    }
}

impl fmt::Display for SetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One of kube-proxy's ipsets, without its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    /// `KUBE-LOOP-BACK`: endpoint IP, port, endpoint IP (hairpin masquerade).
    LoopBack,
    /// `KUBE-CLUSTER-IP`: ClusterIP and port.
    ClusterIp,
    /// `KUBE-EXTERNAL-IP`: ExternalIP and port (Cluster policy).
    ExternalIp,
    /// `KUBE-EXTERNAL-IP-LOCAL`: ExternalIP and port (Local policy).
    ExternalIpLocal,
    /// `KUBE-LOAD-BALANCER`: LoadBalancer IP and port.
    LoadBalancer,
    /// `KUBE-LOAD-BALANCER-LOCAL`: LoadBalancer IP and port (Local policy).
    LoadBalancerLocal,
    /// `KUBE-LOAD-BALANCER-FW`: LoadBalancer IP and port with source ranges.
    LoadBalancerFw,
    /// `KUBE-LOAD-BALANCER-SOURCE-CIDR`: LoadBalancer IP, port, allowed source range.
    LoadBalancerSourceCidr,
    /// `KUBE-LOAD-BALANCER-SOURCE-IP`: LoadBalancer IP, port, allowed source IP.
    LoadBalancerSourceIp,
    /// `KUBE-NODE-PORT-TCP`: TCP node ports.
    NodePortTcp,
    /// `KUBE-NODE-PORT-LOCAL-TCP`: TCP node ports with Local policy.
    NodePortLocalTcp,
    /// `KUBE-NODE-PORT-UDP`: UDP node ports.
    NodePortUdp,
    /// `KUBE-NODE-PORT-LOCAL-UDP`: UDP node ports with Local policy.
    NodePortLocalUdp,
    /// `KUBE-NODE-PORT-SCTP-HASH`: node IP and SCTP node port.
    NodePortSctp,
    /// `KUBE-NODE-PORT-LOCAL-SCTP-HASH`: node IP and SCTP node port with Local policy.
    NodePortLocalSctp,
    /// `KUBE-HEALTH-CHECK-NODE-PORT`: health check node ports.
    HealthCheckNodePort,
    /// `KUBE-IPVS-IPS`: every address bound on kube-ipvs0.
    IpvsIps,
}

impl SetKind {
    /// Every set, in a fixed order.
    pub const ALL: [SetKind; 17] = [
        SetKind::LoopBack,
        SetKind::ClusterIp,
        SetKind::ExternalIp,
        SetKind::ExternalIpLocal,
        SetKind::LoadBalancer,
        SetKind::LoadBalancerLocal,
        SetKind::LoadBalancerFw,
        SetKind::LoadBalancerSourceCidr,
        SetKind::LoadBalancerSourceIp,
        SetKind::NodePortTcp,
        SetKind::NodePortLocalTcp,
        SetKind::NodePortUdp,
        SetKind::NodePortLocalUdp,
        SetKind::NodePortSctp,
        SetKind::NodePortLocalSctp,
        SetKind::HealthCheckNodePort,
        SetKind::IpvsIps,
    ];

    /// The name without the `KUBE-` / `KUBE-6-` prefix.
    pub fn base_name(self) -> &'static str {
        match self {
            SetKind::LoopBack => "LOOP-BACK",
            SetKind::ClusterIp => "CLUSTER-IP",
            SetKind::ExternalIp => "EXTERNAL-IP",
            SetKind::ExternalIpLocal => "EXTERNAL-IP-LOCAL",
            SetKind::LoadBalancer => "LOAD-BALANCER",
            SetKind::LoadBalancerLocal => "LOAD-BALANCER-LOCAL",
            SetKind::LoadBalancerFw => "LOAD-BALANCER-FW",
            SetKind::LoadBalancerSourceCidr => "LOAD-BALANCER-SOURCE-CIDR",
            SetKind::LoadBalancerSourceIp => "LOAD-BALANCER-SOURCE-IP",
            SetKind::NodePortTcp => "NODE-PORT-TCP",
            SetKind::NodePortLocalTcp => "NODE-PORT-LOCAL-TCP",
            SetKind::NodePortUdp => "NODE-PORT-UDP",
            SetKind::NodePortLocalUdp => "NODE-PORT-LOCAL-UDP",
            SetKind::NodePortSctp => "NODE-PORT-SCTP-HASH",
            SetKind::NodePortLocalSctp => "NODE-PORT-LOCAL-SCTP-HASH",
            SetKind::HealthCheckNodePort => "HEALTH-CHECK-NODE-PORT",
            SetKind::IpvsIps => "IPVS-IPS",
        }
    }

    /// The set's type.
    pub fn set_type(self) -> SetType {
        match self {
            SetKind::LoopBack | SetKind::LoadBalancerSourceIp => SetType::HashIpPortIp,
            SetKind::LoadBalancerSourceCidr => SetType::HashIpPortNet,
            SetKind::NodePortTcp
            | SetKind::NodePortLocalTcp
            | SetKind::NodePortUdp
            | SetKind::NodePortLocalUdp
            | SetKind::HealthCheckNodePort => SetType::BitmapPort,
            SetKind::IpvsIps => SetType::HashIp,
            SetKind::ClusterIp
            | SetKind::ExternalIp
            | SetKind::ExternalIpLocal
            | SetKind::LoadBalancer
            | SetKind::LoadBalancerLocal
            | SetKind::LoadBalancerFw
            | SetKind::NodePortSctp
            | SetKind::NodePortLocalSctp => SetType::HashIpPort,
        }
    }

    /// kube-proxy's comment for the set.
    pub fn comment(self) -> &'static str {
        match self {
            SetKind::LoopBack => "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
            SetKind::ClusterIp => "Kubernetes service cluster ip + port for masquerade purpose",
            SetKind::ExternalIp => "Kubernetes service external ip + port for masquerade and filter purpose",
            SetKind::ExternalIpLocal => "Kubernetes service external ip + port with externalTrafficPolicy=local",
            SetKind::LoadBalancer => "Kubernetes service lb portal",
            SetKind::LoadBalancerLocal => "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
            SetKind::LoadBalancerFw => "Kubernetes service load balancer ip + port for load balancer with sourceRange",
            SetKind::LoadBalancerSourceCidr => "Kubernetes service load balancer ip + port + source cidr for packet filter purpose",
            SetKind::LoadBalancerSourceIp => "Kubernetes service load balancer ip + port + source IP for packet filter purpose",
            SetKind::NodePortTcp => "Kubernetes nodeport TCP port for masquerade purpose",
            SetKind::NodePortLocalTcp => "Kubernetes nodeport TCP port with externalTrafficPolicy=local",
            SetKind::NodePortUdp => "Kubernetes nodeport UDP port for masquerade purpose",
            SetKind::NodePortLocalUdp => "Kubernetes nodeport UDP port with externalTrafficPolicy=local",
            SetKind::NodePortSctp => "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'",
            SetKind::NodePortLocalSctp => "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'",
            SetKind::HealthCheckNodePort => "Kubernetes health check node port",
            SetKind::IpvsIps => "Addresses on the ipvs interface",
        }
    }
}

/// An ipset: its kind and family. Displays as its kernel name (`KUBE-CLUSTER-IP`,
/// `KUBE-6-CLUSTER-IP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetName {
    /// Which set.
    pub kind: SetKind,
    /// Which family (`hash:*` sets are created with `family inet` / `inet6`).
    pub family: Family,
}

impl SetName {
    /// The set of `kind` for `family`.
    pub fn new(kind: SetKind, family: Family) -> Self {
        SetName { kind, family }
    }

    /// Every set kipvs owns, both families.
    pub fn all() -> impl Iterator<Item = SetName> {
        [Family::V4, Family::V6]
            .into_iter()
            .flat_map(|f| SetKind::ALL.into_iter().map(move |k| SetName::new(k, f)))
    }

    /// Longest set name the kernel accepts (`IPSET_MAXNAMELEN` is 32 with the NUL).
    pub const MAX_LEN: usize = 31;

    /// Recognises one of kipvs' set names; `None` for any other name.
    pub fn parse(name: &str) -> Option<SetName> {
        SetName::all().find(|set| set.to_string() == name)
    }
}

impl fmt::Display for SetName {
    /// kube-proxy's names: `KUBE-<BASE>` for IPv4 and `KUBE-6-<BASE>` for IPv6, the
    /// latter cut to the kernel's 31 characters as kube-proxy cuts it
    /// (`KUBE-6-LOAD-BALANCER-SOURCE-CID`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.family {
            Family::V4 => write!(f, "KUBE-{}", self.kind.base_name()),
            Family::V6 => {
                let name = format!("KUBE-6-{}", self.kind.base_name());
                f.write_str(name.get(..SetName::MAX_LEN).unwrap_or(&name))
            }
        }
    }
}

/// A member of a set, shaped by the set's type. Displays as `ipset add` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    /// `hash:ip`: `10.96.0.1`.
    Ip(IpAddr),
    /// `bitmap:port`: `30080`.
    Port(u16),
    /// `hash:ip,port`: `10.96.0.1,tcp:80`.
    IpPort {
        /// Address.
        ip: IpAddr,
        /// Protocol.
        protocol: Protocol,
        /// Port.
        port: u16,
    },
    /// `hash:ip,port,ip`: `10.244.0.5,tcp:8080,10.244.0.5`.
    IpPortIp {
        /// Address.
        ip: IpAddr,
        /// Protocol.
        protocol: Protocol,
        /// Port.
        port: u16,
        /// Second address.
        ip2: IpAddr,
    },
    /// `hash:ip,port,net`: `203.0.113.7,tcp:443,198.51.100.0/24`.
    IpPortNet {
        /// Address.
        ip: IpAddr,
        /// Protocol.
        protocol: Protocol,
        /// Port.
        port: u16,
        /// Network.
        net: IpNet,
    },
}

/// A protocol as ipset and iptables spell it (`tcp`, `udp`, `sctp`).
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// Reads a protocol as ipset and iptables spell it; `None` for any other.
fn parse_protocol(s: &str) -> Option<Protocol> {
    Some(match s {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => return None,
    })
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::Ip(ip) => write!(f, "{ip}"),
            Member::Port(port) => write!(f, "{port}"),
            Member::IpPort { ip, protocol, port } => {
                write!(f, "{ip},{}:{port}", protocol_name(*protocol))
            }
            Member::IpPortIp {
                ip,
                protocol,
                port,
                ip2,
            } => write!(f, "{ip},{}:{port},{ip2}", protocol_name(*protocol)),
            Member::IpPortNet {
                ip,
                protocol,
                port,
                net,
            } => write!(f, "{ip},{}:{port},{net}", protocol_name(*protocol)),
        }
    }
}

/// A member that does not parse for its set type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ipset member {text:?} does not fit {set_type}")]
pub struct BadMember {
    /// The text given.
    pub text: String,
    /// The set type it was read for.
    pub set_type: &'static str,
}

impl Member {
    /// The set type this member belongs in.
    pub fn set_type(&self) -> SetType {
        match self {
            Member::Ip(_) => SetType::HashIp,
            Member::Port(_) => SetType::BitmapPort,
            Member::IpPort { .. } => SetType::HashIpPort,
            Member::IpPortIp { .. } => SetType::HashIpPortIp,
            Member::IpPortNet { .. } => SetType::HashIpPortNet,
        }
    }

    /// Whether every address in the member is of `family` (always true for a port).
    pub fn is_family(&self, family: Family) -> bool {
        let of = |ip: &IpAddr| Family::of(ip) == family;
        match self {
            Member::Ip(ip) | Member::IpPort { ip, .. } => of(ip),
            Member::IpPortIp { ip, ip2, .. } => of(ip) && of(ip2),
            Member::IpPortNet { ip, net, .. } => of(ip) && of(&net.addr()),
            Member::Port(_) => true,
        }
    }

    /// Reads a member as `ipset list` prints it, for a set of type `set_type`.
    ///
    /// Fails when the text does not have the shape of the type.
    pub fn parse(set_type: SetType, text: &str) -> Result<Member, BadMember> {
        let bad = || BadMember {
            text: text.to_owned(),
            set_type: set_type.as_str(),
        };
        let parts: Vec<&str> = text.trim().split(',').collect();
        let proto_port = |s: &str| -> Option<(Protocol, u16)> {
            let (proto, port) = s.split_once(':')?;
            Some((parse_protocol(proto)?, port.parse().ok()?))
        };
        let member = match (set_type, parts.as_slice()) {
            (SetType::HashIp, [ip]) => Member::Ip(ip.parse().map_err(|_| bad())?),
            (SetType::BitmapPort, [port]) => {
                let port = port.rsplit(':').next().unwrap_or(port);
                Member::Port(port.parse().map_err(|_| bad())?)
            }
            (SetType::HashIpPort, [ip, pp]) => {
                let (protocol, port) = proto_port(pp).ok_or_else(bad)?;
                Member::IpPort {
                    ip: ip.parse().map_err(|_| bad())?,
                    protocol,
                    port,
                }
            }
            (SetType::HashIpPortIp, [ip, pp, ip2]) => {
                let (protocol, port) = proto_port(pp).ok_or_else(bad)?;
                Member::IpPortIp {
                    ip: ip.parse().map_err(|_| bad())?,
                    protocol,
                    port,
                    ip2: ip2.parse().map_err(|_| bad())?,
                }
            }
            (SetType::HashIpPortNet, [ip, pp, net]) => {
                let (protocol, port) = proto_port(pp).ok_or_else(bad)?;
                let net = IpNet::from_str(net)
                    .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| bad())?;
                Member::IpPortNet {
                    ip: ip.parse().map_err(|_| bad())?,
                    protocol,
                    port,
                    net,
                }
            }
            _ => return Err(bad()),
        };
        Ok(member)
    }
}

/// One set and one of its members.
pub type Entry = (SetName, Member);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_names_fit_the_kernel_and_parse_back() {
        for set in SetName::all() {
            let name = set.to_string();
            assert!(
                name.len() <= SetName::MAX_LEN,
                "{name} is too long for ipset"
            );
            assert_eq!(SetName::parse(&name), Some(set), "{name}");
        }
        let cut = SetName::new(SetKind::LoadBalancerSourceCidr, Family::V6);
        assert_eq!(cut.to_string(), "KUBE-6-LOAD-BALANCER-SOURCE-CID");
        assert_eq!(SetName::parse("KUBE-FOO"), None);
    }

    #[test]
    fn set_names_follow_kube_proxy_with_a_kube_6_prefix_for_ipv6() {
        assert_eq!(
            SetName::new(SetKind::ClusterIp, Family::V4).to_string(),
            "KUBE-CLUSTER-IP"
        );
        assert_eq!(
            SetName::new(SetKind::ClusterIp, Family::V6).to_string(),
            "KUBE-6-CLUSTER-IP"
        );
        assert_eq!(
            SetName::new(SetKind::NodePortLocalSctp, Family::V4).to_string(),
            "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
        );
        for name in SetName::all() {
            assert_eq!(SetName::parse(&name.to_string()), Some(name));
        }
        assert_eq!(SetName::parse("KUBE-ROUTER-SERVICES"), None);
        assert_eq!(SetName::parse("cali40all-hosts"), None);
    }

    #[test]
    fn members_print_and_parse_as_ipset_spells_them() {
        let cases = [
            (SetType::HashIp, "10.96.0.1"),
            (SetType::BitmapPort, "30080"),
            (SetType::HashIpPort, "10.96.0.1,tcp:80"),
            (SetType::HashIpPort, "fd00::1,udp:53"),
            (SetType::HashIpPortIp, "10.244.0.5,sctp:8080,10.244.0.5"),
            (
                SetType::HashIpPortNet,
                "203.0.113.7,tcp:443,198.51.100.0/24",
            ),
        ];
        for (set_type, text) in cases {
            let m = Member::parse(set_type, text).unwrap();
            assert_eq!(m.to_string(), text);
        }
        assert!(Member::parse(SetType::HashIpPort, "10.96.0.1").is_err());
        assert!(Member::parse(SetType::HashIpPort, "10.96.0.1,icmp:0").is_err());
    }

    #[test]
    fn members_know_their_set_type_and_family() {
        for (set_type, text) in [
            (SetType::HashIp, "10.96.0.1"),
            (SetType::BitmapPort, "30080"),
            (SetType::HashIpPort, "fd00::1,udp:53"),
            (SetType::HashIpPortIp, "10.244.0.5,sctp:8080,10.244.0.5"),
            (SetType::HashIpPortNet, "fd00::7,tcp:443,fd00:1::/64"),
        ] {
            let m = Member::parse(set_type, text).unwrap();
            assert_eq!(m.set_type(), set_type, "{text}");
            assert_eq!(SetType::parse(&set_type.to_string()), Some(set_type));
        }
        let mixed = Member::parse(SetType::HashIpPortIp, "10.0.0.1,tcp:80,fd00::1").unwrap();
        assert!(!mixed.is_family(Family::V4) && !mixed.is_family(Family::V6));
        assert!(Member::Port(80).is_family(Family::V6));
        assert!(!SetType::BitmapPort.has_family());
        assert_eq!(SetType::parse("list:set"), None);
    }
}
