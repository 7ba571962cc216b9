//! Plain types: set kinds, protocols, entries, and a desired set.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::{Error, Family, Result};

/// The longest set name the kernel accepts (`IPSET_MAXNAMELEN - 1`).
pub const MAX_NAME_LEN: usize = 31;

/// The ipset types kube-proxy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// `hash:ip`: an address.
    HashIp,
    /// `hash:ip,port`: an address, a protocol and a port.
    HashIpPort,
    /// `hash:ip,port,ip`: address, protocol, port and a second address.
    HashIpPortIp,
    /// `hash:ip,port,net`: address, protocol, port and a network.
    HashIpPortNet,
    /// `bitmap:port`: a port (0-65535), no protocol, no family.
    BitmapPort,
}

impl SetKind {
    /// The type as `ipset` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            SetKind::HashIp => "hash:ip",
            SetKind::HashIpPort => "hash:ip,port",
            SetKind::HashIpPortIp => "hash:ip,port,ip",
            SetKind::HashIpPortNet => "hash:ip,port,net",
            SetKind::BitmapPort => "bitmap:port",
        }
    }

    /// Parses an `ipset` type name; `None` for types kipvs does not use.
    pub fn parse(s: &str) -> Option<SetKind> {
        Some(match s {
            "hash:ip" => SetKind::HashIp,
            "hash:ip,port" => SetKind::HashIpPort,
            "hash:ip,port,ip" => SetKind::HashIpPortIp,
            "hash:ip,port,net" => SetKind::HashIpPortNet,
            "bitmap:port" => SetKind::BitmapPort,
            _ => return None,
        })
    }

    /// Whether sets of this kind have an address family (bitmaps do not).
    pub fn has_family(self) -> bool {
        self != SetKind::BitmapPort
    }
}

impl fmt::Display for SetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The transport protocol of an `ip,port` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The name `ipset` and `iptables` use (`tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Parses `tcp`, `udp` or `sctp`.
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return None,
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One member of a set. Its variant must match the set's [`SetKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entry {
    /// For `hash:ip`.
    Ip(IpAddr),
    /// For `hash:ip,port`: `10.96.0.1,tcp:443`.
    IpPort(IpAddr, Protocol, u16),
    /// For `hash:ip,port,ip`: `10.244.1.5,tcp:8080,10.244.1.5`.
    IpPortIp(IpAddr, Protocol, u16, IpAddr),
    /// For `hash:ip,port,net`: `203.0.113.7,tcp:80,198.51.100.0/24`. The network is
    /// kept truncated to its prefix, as the kernel stores it.
    IpPortNet(IpAddr, Protocol, u16, IpNet),
    /// For `bitmap:port`.
    Port(u16),
}

impl Entry {
    /// A `hash:ip,port,net` entry with the network truncated to its prefix.
    pub fn ip_port_net(ip: IpAddr, protocol: Protocol, port: u16, net: IpNet) -> Entry {
        Entry::IpPortNet(ip, protocol, port, net.trunc())
    }

    /// The set kind this entry belongs in.
    pub fn kind(&self) -> SetKind {
        match self {
            Entry::Ip(_) => SetKind::HashIp,
            Entry::IpPort(..) => SetKind::HashIpPort,
            Entry::IpPortIp(..) => SetKind::HashIpPortIp,
            Entry::IpPortNet(..) => SetKind::HashIpPortNet,
            Entry::Port(_) => SetKind::BitmapPort,
        }
    }

    /// Whether every address in the entry is of `family` (always true for ports).
    pub fn is_family(&self, family: Family) -> bool {
        let ok = |ip: &IpAddr| Family::of(*ip) == family;
        match self {
            Entry::Ip(a) | Entry::IpPort(a, ..) => ok(a),
            Entry::IpPortIp(a, _, _, b) => ok(a) && ok(b),
            Entry::IpPortNet(a, _, _, n) => ok(a) && ok(&n.addr()),
            Entry::Port(_) => true,
        }
    }

    /// Parses the entry as `ipset save` prints it, for a set of `kind`.
    pub fn parse(kind: SetKind, s: &str) -> Option<Entry> {
        fn proto_port(s: &str) -> Option<(Protocol, u16)> {
            let (proto, port) = s.split_once(':')?;
            Some((Protocol::parse(proto)?, port.parse().ok()?))
        }
        let mut parts = s.split(',');
        let entry = match kind {
            SetKind::BitmapPort => Entry::Port(s.parse().ok()?),
            SetKind::HashIp => Entry::Ip(parts.next()?.parse().ok()?),
            SetKind::HashIpPort => {
                let ip = parts.next()?.parse().ok()?;
                let (p, port) = proto_port(parts.next()?)?;
                Entry::IpPort(ip, p, port)
            }
            SetKind::HashIpPortIp => {
                let ip = parts.next()?.parse().ok()?;
                let (p, port) = proto_port(parts.next()?)?;
                Entry::IpPortIp(ip, p, port, parts.next()?.parse().ok()?)
            }
            SetKind::HashIpPortNet => {
                let ip = parts.next()?.parse().ok()?;
                let (p, port) = proto_port(parts.next()?)?;
                let net = parts.next()?;
                let net = match net.parse::<IpNet>() {
                    Ok(n) => n,
                    Err(_) => IpNet::from(net.parse::<IpAddr>().ok()?),
                };
                Entry::ip_port_net(ip, p, port, net)
            }
        };
        if kind != SetKind::BitmapPort && parts.next().is_some() {
            return None;
        }
        Some(entry)
    }
}

impl fmt::Display for Entry {
    /// The entry as `ipset` reads and prints it (a host network without its prefix).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Ip(a) => write!(f, "{a}"),
            Entry::IpPort(a, p, port) => write!(f, "{a},{p}:{port}"),
            Entry::IpPortIp(a, p, port, b) => write!(f, "{a},{p}:{port},{b}"),
            Entry::IpPortNet(a, p, port, n) => {
                if n.prefix_len() == n.max_prefix_len() {
                    write!(f, "{a},{p}:{port},{}", n.addr())
                } else {
                    write!(f, "{a},{p}:{port},{n}")
                }
            }
            Entry::Port(port) => write!(f, "{port}"),
        }
    }
}

/// A set as it should be: its name, kind, family and every member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    name: String,
    kind: SetKind,
    family: Family,
    members: BTreeSet<Entry>,
}

impl SetSpec {
    /// A set with these members.
    ///
    /// # Errors
    /// When the name is empty, longer than [`MAX_NAME_LEN`] or not printable ASCII, or
    /// an entry is of another kind or family than the set.
    pub fn try_new(
        name: impl Into<String>,
        kind: SetKind,
        family: Family,
        members: BTreeSet<Entry>,
    ) -> Result<SetSpec> {
        let name = name.into();
        if name.is_empty()
            || name.len() > MAX_NAME_LEN
            || !name.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Error::Invalid {
                what: "ipset name",
                detail: format!("{name:?} (1 to {MAX_NAME_LEN} printable characters)"),
            });
        }
        if let Some(bad) = members
            .iter()
            .find(|e| e.kind() != kind || !e.is_family(family))
        {
            return Err(Error::Invalid {
                what: "ipset entry",
                detail: format!("{bad} does not fit {name} ({kind}, {family})"),
            });
        }
        Ok(SetSpec {
            name,
            kind,
            family,
            members,
        })
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The set's kind.
    pub fn kind(&self) -> SetKind {
        self.kind
    }

    /// The set's address family (meaningless for `bitmap:port`).
    pub fn family(&self) -> Family {
        self.family
    }

    /// The set's members.
    pub fn members(&self) -> &BTreeSet<Entry> {
        &self.members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_print_as_ipset_prints_them() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            Entry::IpPort(ip("10.96.0.1"), Protocol::Tcp, 443).to_string(),
            "10.96.0.1,tcp:443"
        );
        assert_eq!(
            Entry::IpPortIp(ip("fd00::5"), Protocol::Sctp, 80, ip("fd00::5")).to_string(),
            "fd00::5,sctp:80,fd00::5"
        );
        assert_eq!(
            Entry::ip_port_net(
                ip("1.2.3.4"),
                Protocol::Udp,
                53,
                "10.1.2.3/8".parse().unwrap()
            )
            .to_string(),
            "1.2.3.4,udp:53,10.0.0.0/8"
        );
        assert_eq!(
            Entry::ip_port_net(
                ip("1.2.3.4"),
                Protocol::Tcp,
                80,
                "10.1.2.3/32".parse().unwrap()
            )
            .to_string(),
            "1.2.3.4,tcp:80,10.1.2.3"
        );
        assert_eq!(Entry::Port(30080).to_string(), "30080");
    }

    #[test]
    fn entries_parse_back_from_what_they_print() {
        let cases = [
            (SetKind::HashIp, "fd00::1"),
            (SetKind::HashIpPort, "10.96.0.1,udp:53"),
            (SetKind::HashIpPortIp, "10.0.0.1,tcp:80,10.0.0.1"),
            (SetKind::HashIpPortNet, "1.2.3.4,tcp:80,10.0.0.0/8"),
            (SetKind::HashIpPortNet, "fd00::1,tcp:80,fd00::5"),
            (SetKind::BitmapPort, "30080"),
        ];
        for (kind, text) in cases {
            let entry = Entry::parse(kind, text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(entry.to_string(), text);
            assert_eq!(entry.kind(), kind);
        }
        assert_eq!(Entry::parse(SetKind::HashIpPort, "10.0.0.1,icmp:0"), None);
        assert_eq!(
            Entry::parse(SetKind::HashIpPort, "10.0.0.1,tcp:80,1.1.1.1"),
            None
        );
    }

    #[test]
    fn set_specs_refuse_entries_of_another_kind_or_family() {
        let v6 = Entry::IpPort("fd00::1".parse().unwrap(), Protocol::Tcp, 80);
        let err = SetSpec::try_new(
            "KUBE-CLUSTER-IP",
            SetKind::HashIpPort,
            Family::V4,
            [v6].into(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("fd00::1,tcp:80"), "{err}");
        let port = Entry::Port(80);
        assert!(SetSpec::try_new("X", SetKind::HashIpPort, Family::V4, [port].into()).is_err());
        assert!(SetSpec::try_new("X", SetKind::BitmapPort, Family::V6, [port].into()).is_ok());
        assert!(SetSpec::try_new("A".repeat(32), SetKind::HashIp, Family::V4, [].into()).is_err());
    }
}
