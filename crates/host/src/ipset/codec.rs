//! The ipset netlink protocol (nfnetlink subsystem 6): building requests and decoding
//! dumps, with no socket (see [`super::netlink`] for that). Numbers mirror
//! `include/uapi/linux/netfilter/ipset/ip_set.h`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use kipvs_ipvs::Family;
use kipvs_proxy::{Member, SetType};

use super::plan::{ObservedSet, SetHeader};
use crate::nfnetlink::{
    self, attrs, be_u16, be_u32, find, from_ipproto, ipproto, NFGENMSG_LEN, NFPROTO_IPV4,
    NFPROTO_IPV6, NFPROTO_UNSPEC, NLA_F_NET_BYTEORDER,
};

/// `NFNL_SUBSYS_IPSET`.
pub const SUBSYS_IPSET: u16 = 6;
/// `IPSET_PROTOCOL`: the protocol version spoken.
pub const PROTOCOL: u8 = 7;

/// `IPSET_CMD_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Cmd {
    /// Create a set.
    Create = 2,
    /// Destroy a set.
    Destroy = 3,
    /// Swap two sets.
    Swap = 6,
    /// List sets (dump).
    List = 7,
    /// Add members.
    Add = 9,
    /// Delete members.
    Del = 10,
    /// Ask for a type's supported revisions.
    Type = 13,
}

// Top-level attributes (IPSET_ATTR_*).
const ATTR_PROTOCOL: u16 = 1;
const ATTR_SETNAME: u16 = 2;
const ATTR_TYPENAME: u16 = 3;
const ATTR_SETNAME2: u16 = 3;
const ATTR_REVISION: u16 = 4;
const ATTR_FAMILY: u16 = 5;
const ATTR_DATA: u16 = 7;
const ATTR_ADT: u16 = 8;
const ATTR_LINENO: u16 = 9;
// Data attributes (IPSET_ATTR_* inside DATA).
const ATTR_IP: u16 = 1;
const ATTR_PORT: u16 = 4;
const ATTR_PORT_TO: u16 = 5;
const ATTR_PROTO: u16 = 7;
const ATTR_HASHSIZE: u16 = 18;
const ATTR_MAXELEM: u16 = 19;
const ATTR_ELEMENTS: u16 = 24;
const ATTR_IP2: u16 = 20;
const ATTR_CIDR2: u16 = 21;
// Inside ATTR_IP / ATTR_IP2.
const ATTR_IPADDR_IPV4: u16 = 1;
const ATTR_IPADDR_IPV6: u16 = 2;

/// One ipset request being built: an nfnetlink request of subsystem 6 that starts
/// with the protocol attribute (the kernel refuses any message without it).
#[derive(Debug, Clone)]
pub struct Request {
    msg: nfnetlink::Request,
}

impl Request {
    /// A request for `cmd` carrying the protocol attribute; `seq` numbers it.
    pub fn new(cmd: Cmd, flags: u16, seq: u32) -> Request {
        // nfgenmsg's family is AF_INET for every ipset command: the set's own family
        // travels in ATTR_FAMILY.
        let mut msg = nfnetlink::Request::new(SUBSYS_IPSET, cmd as u16, flags, seq, NFPROTO_IPV4);
        msg.put(ATTR_PROTOCOL, &[PROTOCOL]);
        Request { msg }
    }

    /// The bytes so far (the length field is set by [`Request::finish`]).
    pub fn len(&self) -> usize {
        self.msg.len()
    }

    /// Whether only the headers are there.
    pub fn is_empty(&self) -> bool {
        self.msg.is_empty()
    }

    fn put_str(&mut self, ty: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.msg.put(ty, &v);
    }

    fn put_ip(&mut self, ty: u16, ip: IpAddr) {
        self.msg.begin(ty);
        match ip {
            IpAddr::V4(v4) => self
                .msg
                .put(ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, &v4.octets()),
            IpAddr::V6(v6) => self
                .msg
                .put(ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER, &v6.octets()),
        }
        self.msg.end();
    }

    fn put_port(&mut self, ty: u16, port: u16) {
        self.msg.put(ty | NLA_F_NET_BYTEORDER, &port.to_be_bytes());
    }

    /// Names the set the command applies to.
    pub fn set_name(mut self, name: &str) -> Request {
        self.put_str(ATTR_SETNAME, name);
        self
    }

    /// Names the second set (for swap).
    pub fn set_name2(mut self, name: &str) -> Request {
        self.put_str(ATTR_SETNAME2, name);
        self
    }

    /// Type and family, for a TYPE query.
    pub fn type_query(mut self, set_type: SetType, family: Family) -> Request {
        self.put_str(ATTR_TYPENAME, set_type.as_str());
        self.msg.put(ATTR_FAMILY, &[nfproto(set_type, family)]);
        self
    }

    /// The body of a CREATE.
    pub fn create(mut self, header: &SetHeader, revision: u8) -> Request {
        self.put_str(ATTR_SETNAME, &header.name);
        self.put_str(ATTR_TYPENAME, header.set_type.as_str());
        self.msg.put(ATTR_REVISION, &[revision]);
        self.msg
            .put(ATTR_FAMILY, &[nfproto(header.set_type, header.family)]);
        self.msg.begin(ATTR_DATA);
        if header.set_type == SetType::BitmapPort {
            self.put_port(ATTR_PORT, 0);
            self.put_port(ATTR_PORT_TO, u16::MAX);
        } else {
            self.msg.put(
                ATTR_HASHSIZE | NLA_F_NET_BYTEORDER,
                &header.hashsize.to_be_bytes(),
            );
            self.msg.put(
                ATTR_MAXELEM | NLA_F_NET_BYTEORDER,
                &header.maxelem.to_be_bytes(),
            );
        }
        self.msg.end();
        self
    }

    /// Opens the ADT container of an ADD or DEL (the kernel wants a line number beside
    /// it, where it reports which member failed).
    pub fn begin_adt(mut self) -> Request {
        self.msg.put(ATTR_LINENO, &0u32.to_ne_bytes());
        self.msg.begin(ATTR_ADT);
        self
    }

    /// Appends one member to an open ADT container.
    pub fn entry(&mut self, member: &Member) {
        self.msg.begin(ATTR_DATA);
        match *member {
            Member::Ip(ip) => self.put_ip(ATTR_IP, ip),
            Member::IpPort { ip, protocol, port } => {
                self.put_ip(ATTR_IP, ip);
                self.put_port(ATTR_PORT, port);
                self.msg.put(ATTR_PROTO, &[ipproto(protocol)]);
            }
            Member::IpPortIp {
                ip,
                protocol,
                port,
                ip2,
            } => {
                self.put_ip(ATTR_IP, ip);
                self.put_port(ATTR_PORT, port);
                self.msg.put(ATTR_PROTO, &[ipproto(protocol)]);
                self.put_ip(ATTR_IP2, ip2);
            }
            Member::IpPortNet {
                ip,
                protocol,
                port,
                net,
            } => {
                self.put_ip(ATTR_IP, ip);
                self.put_port(ATTR_PORT, port);
                self.msg.put(ATTR_PROTO, &[ipproto(protocol)]);
                self.put_ip(ATTR_IP2, net.addr());
                self.msg.put(ATTR_CIDR2, &[net.prefix_len()]);
            }
            Member::Port(port) => self.put_port(ATTR_PORT, port),
        }
        self.msg.end();
    }

    /// Closes open containers and sets the length: the bytes to send.
    pub fn finish(self) -> Vec<u8> {
        self.msg.finish()
    }
}

fn nfproto(set_type: SetType, family: Family) -> u8 {
    if set_type.has_family() {
        nfnetlink::nfproto(family)
    } else {
        NFPROTO_UNSPEC
    }
}

fn c_string(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v.split(|b| *b == 0).next()?).ok()
}

fn ip(v: &[u8]) -> Option<IpAddr> {
    let (ty, value) = attrs(v).next()?;
    match ty {
        ATTR_IPADDR_IPV4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?))),
        ATTR_IPADDR_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(value).ok()?,
        ))),
        _ => None,
    }
}

/// Decodes one DATA member of a set of `set_type`.
pub fn decode_entry(set_type: SetType, data: &[u8]) -> Option<Member> {
    let protocol = || from_ipproto(*find(data, ATTR_PROTO)?.first()?);
    let port = || be_u16(find(data, ATTR_PORT)?);
    let ip1 = || ip(find(data, ATTR_IP)?);
    let ip2 = || ip(find(data, ATTR_IP2)?);
    Some(match set_type {
        SetType::HashIp => Member::Ip(ip1()?),
        SetType::HashIpPort => Member::IpPort {
            ip: ip1()?,
            protocol: protocol()?,
            port: port()?,
        },
        SetType::HashIpPortIp => Member::IpPortIp {
            ip: ip1()?,
            protocol: protocol()?,
            port: port()?,
            ip2: ip2()?,
        },
        SetType::HashIpPortNet => {
            let addr = ip2()?;
            let prefix = match find(data, ATTR_CIDR2).and_then(|v| v.first().copied()) {
                Some(p) => p,
                None => IpNet::from(addr).max_prefix_len(),
            };
            Member::IpPortNet {
                ip: ip1()?,
                protocol: protocol()?,
                port: port()?,
                net: IpNet::new(addr, prefix).ok()?.trunc(),
            }
        }
        SetType::BitmapPort => Member::Port(port()?),
    })
}

/// Folds one LIST dump message into `sets` (a set's members may span messages);
/// members are kept only for sets `wanted` says yes to.
pub fn decode_list(
    payload: &[u8],
    sets: &mut std::collections::BTreeMap<String, ObservedSet>,
    wanted: &dyn Fn(&str) -> bool,
) -> Option<()> {
    let body = payload.get(NFGENMSG_LEN..)?;
    let name = c_string(find(body, ATTR_SETNAME)?)?.to_owned();
    let set_type = find(body, ATTR_TYPENAME)
        .and_then(c_string)
        .and_then(SetType::parse);
    let family = match find(body, ATTR_FAMILY).and_then(|v| v.first().copied()) {
        Some(NFPROTO_IPV4) => Some(Family::V4),
        Some(NFPROTO_IPV6) => Some(Family::V6),
        _ => None,
    };
    let header = find(body, ATTR_DATA);
    let maxelem = header.and_then(|d| find(d, ATTR_MAXELEM)).and_then(be_u32);
    let entries = header.and_then(|d| find(d, ATTR_ELEMENTS)).and_then(be_u32);
    let set = sets.entry(name.clone()).or_insert_with(|| ObservedSet {
        set_type,
        family,
        maxelem,
        entries: 0,
        members: Default::default(),
    });
    if set.maxelem.is_none() {
        set.maxelem = maxelem;
    }
    if let Some(entries) = entries {
        set.entries = usize::try_from(entries).unwrap_or(usize::MAX);
    }
    if let (Some(set_type), true, Some(adt)) = (set.set_type, wanted(&name), find(body, ATTR_ADT)) {
        for (ty, data) in attrs(adt) {
            if ty == ATTR_DATA {
                set.members.insert(decode_entry(set_type, data)?);
            }
        }
    }
    Some(())
}

/// The highest revision in a TYPE reply.
pub fn decode_type_revision(payload: &[u8]) -> Option<u8> {
    find(payload.get(NFGENMSG_LEN..)?, ATTR_REVISION)?
        .first()
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnetlink::{NLMSG_HDRLEN, NLM_F_ACK, NLM_F_REQUEST};
    use kipvs_ipvs::Protocol;

    #[test]
    fn add_requests_nest_members_in_an_adt_container_in_network_order() {
        let ip: IpAddr = "10.96.0.1".parse().unwrap();
        let mut r = Request::new(Cmd::Add, NLM_F_REQUEST | NLM_F_ACK, 7)
            .set_name("S")
            .begin_adt();
        let member = Member::IpPort {
            ip,
            protocol: Protocol::Tcp,
            port: 443,
        };
        r.entry(&member);
        let bytes = r.finish();
        assert_eq!(
            usize::try_from(u32::from_ne_bytes(bytes[0..4].try_into().unwrap())).unwrap(),
            bytes.len()
        );
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), (6 << 8) | 9);
        let body = &bytes[NLMSG_HDRLEN + NFGENMSG_LEN..];
        let top: Vec<_> = attrs(body).map(|(t, _)| t).collect();
        assert_eq!(
            top,
            vec![ATTR_PROTOCOL, ATTR_SETNAME, ATTR_LINENO, ATTR_ADT]
        );
        let adt = find(body, ATTR_ADT).unwrap();
        let (ty, data) = attrs(adt).next().unwrap();
        assert_eq!(ty, ATTR_DATA);
        assert_eq!(be_u16(find(data, ATTR_PORT).unwrap()), Some(443));
        assert_eq!(decode_entry(SetType::HashIpPort, data), Some(member));
    }

    #[test]
    fn every_member_type_decodes_back_to_itself() {
        let a: IpAddr = "fd00::1".parse().unwrap();
        let b: IpAddr = "10.0.0.1".parse().unwrap();
        for member in [
            Member::Ip(a),
            Member::IpPort {
                ip: b,
                protocol: Protocol::Udp,
                port: 53,
            },
            Member::IpPortIp {
                ip: b,
                protocol: Protocol::Sctp,
                port: 80,
                ip2: b,
            },
            Member::IpPortNet {
                ip: a,
                protocol: Protocol::Udp,
                port: 53,
                net: "fd00:1::/64".parse().unwrap(),
            },
            Member::IpPortNet {
                ip: b,
                protocol: Protocol::Tcp,
                port: 80,
                net: "10.1.2.3/32".parse().unwrap(),
            },
            Member::Port(30080),
        ] {
            let mut r = Request::new(Cmd::Add, 0, 1).begin_adt();
            r.entry(&member);
            let bytes = r.finish();
            let body = &bytes[NLMSG_HDRLEN + NFGENMSG_LEN..];
            let (_, data) = attrs(find(body, ATTR_ADT).unwrap()).next().unwrap();
            assert_eq!(decode_entry(member.set_type(), data), Some(member));
        }
    }
}
