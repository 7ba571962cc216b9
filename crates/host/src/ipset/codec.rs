//! The ipset netlink protocol (nfnetlink subsystem 6): building requests and decoding
//! dumps, with no socket (see [`super::netlink`] for that). Numbers mirror
//! `include/uapi/linux/netfilter/ipset/ip_set.h`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use kipvs_ipvs::{Family, Protocol};
use kipvs_proxy::{Member, SetType};

use super::plan::{ObservedSet, SetHeader};

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

const NLA_F_NESTED: u16 = 0x8000;
const NLA_F_NET_BYTEORDER: u16 = 0x4000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `NFPROTO_*`.
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// Netlink header flags.
pub const NLM_F_REQUEST: u16 = 0x1;
/// Ask for an acknowledgement.
pub const NLM_F_ACK: u16 = 0x4;
/// Dump.
pub const NLM_F_DUMP: u16 = 0x300;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// The protocol's number (`IPPROTO_*`), as ipset members and the `ipvs` match carry it.
pub(crate) fn ipproto(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn from_ipproto(n: u8) -> Option<Protocol> {
    match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

fn u32_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn u16_len(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// One request being built: netlink header, nfgenmsg, attributes.
#[derive(Debug, Clone)]
pub struct Request {
    buf: Vec<u8>,
    open: Vec<usize>,
}

impl Request {
    /// A request for `cmd` carrying the protocol attribute; `seq` numbers it.
    pub fn new(cmd: Cmd, flags: u16, seq: u32) -> Request {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0; 4]); // length, set in finish()
        buf.extend_from_slice(&((SUBSYS_IPSET << 8) | cmd as u16).to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family AF_INET, version 0, res_id 0.
        buf.extend_from_slice(&[2, 0, 0, 0]);
        let mut r = Request {
            buf,
            open: Vec::new(),
        };
        r.put(ATTR_PROTOCOL, &[PROTOCOL]);
        r
    }

    /// The bytes so far (the length field is set by [`Request::finish`]).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether only the headers are there.
    pub fn is_empty(&self) -> bool {
        self.buf.len() <= NLMSG_HDRLEN + NFGENMSG_LEN
    }

    fn put(&mut self, ty: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&u16_len(len).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align(self.buf.len()), 0);
    }

    fn put_str(&mut self, ty: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v);
    }

    fn begin(&mut self, ty: u16) {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    fn end(&mut self) {
        if let Some(start) = self.open.pop() {
            let len = u16_len(self.buf.len() - start);
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    fn put_ip(&mut self, ty: u16, ip: IpAddr) {
        self.begin(ty);
        match ip {
            IpAddr::V4(v4) => self.put(ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, &v4.octets()),
            IpAddr::V6(v6) => self.put(ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER, &v6.octets()),
        }
        self.end();
    }

    fn put_port(&mut self, ty: u16, port: u16) {
        self.put(ty | NLA_F_NET_BYTEORDER, &port.to_be_bytes());
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
        self.put(ATTR_FAMILY, &[nfproto(set_type, family)]);
        self
    }

    /// The body of a CREATE.
    pub fn create(mut self, header: &SetHeader, revision: u8) -> Request {
        self.put_str(ATTR_SETNAME, &header.name);
        self.put_str(ATTR_TYPENAME, header.set_type.as_str());
        self.put(ATTR_REVISION, &[revision]);
        self.put(ATTR_FAMILY, &[nfproto(header.set_type, header.family)]);
        self.begin(ATTR_DATA);
        if header.set_type == SetType::BitmapPort {
            self.put_port(ATTR_PORT, 0);
            self.put_port(ATTR_PORT_TO, u16::MAX);
        } else {
            self.put(
                ATTR_HASHSIZE | NLA_F_NET_BYTEORDER,
                &header.hashsize.to_be_bytes(),
            );
            self.put(
                ATTR_MAXELEM | NLA_F_NET_BYTEORDER,
                &header.maxelem.to_be_bytes(),
            );
        }
        self.end();
        self
    }

    /// Opens the ADT container of an ADD or DEL (the kernel wants a line number beside
    /// it, where it reports which member failed).
    pub fn begin_adt(mut self) -> Request {
        self.put(ATTR_LINENO, &0u32.to_ne_bytes());
        self.begin(ATTR_ADT);
        self
    }

    /// Appends one member to an open ADT container.
    pub fn entry(&mut self, member: &Member) {
        self.begin(ATTR_DATA);
        match *member {
            Member::Ip(ip) => self.put_ip(ATTR_IP, ip),
            Member::IpPort { ip, protocol, port } => {
                self.put_ip(ATTR_IP, ip);
                self.put_port(ATTR_PORT, port);
                self.put(ATTR_PROTO, &[ipproto(protocol)]);
            }
            Member::IpPortIp {
                ip,
                protocol,
                port,
                ip2,
            } => {
                self.put_ip(ATTR_IP, ip);
                self.put_port(ATTR_PORT, port);
                self.put(ATTR_PROTO, &[ipproto(protocol)]);
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
                self.put(ATTR_PROTO, &[ipproto(protocol)]);
                self.put_ip(ATTR_IP2, net.addr());
                self.put(ATTR_CIDR2, &[net.prefix_len()]);
            }
            Member::Port(port) => self.put_port(ATTR_PORT, port),
        }
        self.end();
    }

    /// Closes open containers and sets the length: the bytes to send.
    pub fn finish(mut self) -> Vec<u8> {
        while !self.open.is_empty() {
            self.end();
        }
        let len = u32_len(self.buf.len());
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn nfproto(set_type: SetType, family: Family) -> u8 {
    if !set_type.has_family() {
        return NFPROTO_UNSPEC;
    }
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

/// A netlink message read back: its type, flags, sequence number and payload.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// `nlmsg_type`.
    pub ty: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// Everything after the netlink header.
    pub payload: &'a [u8],
}

/// `NLMSG_ERROR`.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
pub const NLMSG_DONE: u16 = 3;

/// Splits a datagram into netlink messages (stops at the first malformed one).
pub fn messages(mut buf: &[u8]) -> Vec<Message<'_>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let Ok(len) = usize::try_from(len) else { break };
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        out.push(Message {
            ty: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = &buf[align(len).min(buf.len())..];
    }
    out
}

/// The errno of an `NLMSG_ERROR` payload (0 for an ACK), made positive.
pub fn error_code(payload: &[u8]) -> Option<i32> {
    let code = i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?);
    Some(-code)
}

/// Iterates `(type without flags, value)` over a run of attributes.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((ty, value))
    })
}

fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

fn c_string(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v.split(|b| *b == 0).next()?).ok()
}

fn be_u16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(0..2)?.try_into().ok()?))
}

fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(0..4)?.try_into().ok()?))
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
