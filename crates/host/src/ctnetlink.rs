//! The conntrack table over ctnetlink (nfnetlink subsystem 1): a dump of one address
//! family's entries and the deletion of single entries, for kube-proxy's conntrack
//! reconciler (which entries go is decided in [`kipvs_proxy::conntrack`]).
//!
//! Requests are built and dumps decoded by pure functions ([`dump_request`],
//! [`delete_request`], [`decode_flow`]); [`ConntrackSocket`] sends them. Numbers mirror
//! `include/uapi/linux/netfilter/nfnetlink_conntrack.h`. The netlink framing is the one
//! the ipset code speaks ([`crate::ipset::codec`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use kipvs_ipvs::{Family, Protocol};
use kipvs_proxy::Flow;

use crate::ipset::codec::{attrs, error_code, messages, NLMSG_DONE, NLMSG_ERROR};
use crate::{Error, Result};

/// `NFNL_SUBSYS_CTNETLINK`.
const SUBSYS_CTNETLINK: u16 = 1;
/// `IPCTNL_MSG_CT_GET`.
const MSG_GET: u16 = 1;
/// `IPCTNL_MSG_CT_DELETE`.
const MSG_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const NLA_F_NESTED: u16 = 0x8000;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// A dump whose table changed while it ran (the result may miss or repeat entries).
const NLM_F_DUMP_INTR: u16 = 0x10;
const ENOENT: i32 = 2;

fn af(family: Family) -> u8 {
    match family {
        Family::V4 => 2,
        Family::V6 => 10,
    }
}

fn ipproto(p: Protocol) -> u8 {
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

/// One request being built.
struct Request {
    buf: Vec<u8>,
    open: Vec<usize>,
}

impl Request {
    fn new(msg: u16, flags: u16, seq: u32, family: Family) -> Request {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&((SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, res_id 0.
        buf.extend_from_slice(&[af(family), 0, 0, 0]);
        Request {
            buf,
            open: Vec::new(),
        }
    }

    fn put(&mut self, ty: u16, value: &[u8]) {
        let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize((self.buf.len() + 3) & !3, 0);
    }

    fn begin(&mut self, ty: u16) {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    fn end(&mut self) {
        if let Some(start) = self.open.pop() {
            let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    fn tuple(&mut self, ty: u16, protocol: u8, src: SocketAddr, dst: SocketAddr) {
        self.begin(ty);
        self.begin(CTA_TUPLE_IP);
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.put(CTA_IP_V4_SRC, &s.octets());
                self.put(CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                self.put(CTA_IP_V6_SRC, &v6(s).octets());
                self.put(CTA_IP_V6_DST, &v6(d).octets());
            }
        }
        self.end();
        self.begin(CTA_TUPLE_PROTO);
        self.put(CTA_PROTO_NUM, &[protocol]);
        self.put(CTA_PROTO_SRC_PORT, &src.port().to_be_bytes());
        self.put(CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
        self.end();
        self.end();
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The request that dumps every entry of `family`.
pub fn dump_request(family: Family, seq: u32) -> Vec<u8> {
    Request::new(MSG_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, family).finish()
}

/// The request that deletes the entry `flow` (found by its original tuple and zone).
/// Only entries of a protocol kipvs knows can be named (the others are never stale).
pub fn delete_request(flow: &Flow, seq: u32) -> Option<Vec<u8>> {
    let protocol = ipproto(flow.protocol?);
    let family = Family::of(&flow.orig_dst.ip());
    let mut r = Request::new(MSG_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, family);
    r.tuple(CTA_TUPLE_ORIG, protocol, flow.orig_src, flow.orig_dst);
    if flow.zone != 0 {
        r.put(CTA_ZONE, &flow.zone.to_be_bytes());
    }
    Some(r.finish())
}

fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

fn be_u16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(0..2)?.try_into().ok()?))
}

/// A tuple: protocol (`None` when not one kipvs knows), source, destination.
fn decode_tuple(tuple: &[u8]) -> Option<(Option<Protocol>, SocketAddr, SocketAddr)> {
    let ip = find(tuple, CTA_TUPLE_IP)?;
    let octets4 = |ty| -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(find(ip, ty)?).ok()?,
        )))
    };
    let octets6 = |ty| -> Option<IpAddr> {
        Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(find(ip, ty)?).ok()?,
        )))
    };
    let (src, dst) = match (octets4(CTA_IP_V4_SRC), octets4(CTA_IP_V4_DST)) {
        (Some(s), Some(d)) => (s, d),
        _ => (octets6(CTA_IP_V6_SRC)?, octets6(CTA_IP_V6_DST)?),
    };
    let proto = find(tuple, CTA_TUPLE_PROTO)?;
    let protocol = from_ipproto(*find(proto, CTA_PROTO_NUM)?.first()?);
    let port = |ty| find(proto, ty).and_then(be_u16).unwrap_or(0);
    let (sport, dport) = if protocol.is_some() {
        (port(CTA_PROTO_SRC_PORT), port(CTA_PROTO_DST_PORT))
    } else {
        (0, 0)
    };
    Some((
        protocol,
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
    ))
}

/// Decodes one entry of a dump (the payload after the netlink header); `None` when it is
/// not one.
pub fn decode_flow(payload: &[u8]) -> Option<Flow> {
    let body = payload.get(4..)?;
    let (protocol, orig_src, orig_dst) = decode_tuple(find(body, CTA_TUPLE_ORIG)?)?;
    let (_, reply_src, reply_dst) = decode_tuple(find(body, CTA_TUPLE_REPLY)?)?;
    let zone = find(body, CTA_ZONE).and_then(be_u16).unwrap_or(0);
    Some(Flow {
        protocol,
        orig_src,
        orig_dst,
        reply_src,
        reply_dst,
        zone,
    })
}

/// An nfnetlink socket for the conntrack table, bound to the calling thread's network
/// namespace.
#[derive(Debug)]
pub struct ConntrackSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// What a dump read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    /// The entries.
    pub flows: Vec<Flow>,
    /// The table changed while it was read: some entries may be missing (kube-proxy
    /// goes on with such a partial result, and so does the reconciler).
    pub interrupted: bool,
}

impl ConntrackSocket {
    /// Opens the socket.
    ///
    /// # Errors
    /// When the socket cannot be created or bound.
    pub fn open() -> Result<ConntrackSocket> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(Error::Socket)?;
        socket.bind_auto().map_err(Error::Socket)?;
        let _ = socket.set_rx_buf_sz(4 * 1024 * 1024);
        Ok(ConntrackSocket {
            socket,
            seq: 0,
            buf: Vec::with_capacity(256 * 1024),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `bytes` and hands each payload answered to `seq` to `each`, until the ACK,
    /// error or end of dump; returns whether a message carried `NLM_F_DUMP_INTR`.
    fn exchange(
        &mut self,
        bytes: &[u8],
        seq: u32,
        op: &'static str,
        object: &str,
        mut each: impl FnMut(&[u8]),
    ) -> Result<bool> {
        let fail = |errno: Option<i32>, message: String| Error::Netlink {
            op,
            object: object.to_owned(),
            errno,
            message,
        };
        self.socket
            .send(bytes, 0)
            .map_err(|e| fail(e.raw_os_error(), e.to_string()))?;
        let mut interrupted = false;
        loop {
            self.buf.clear();
            self.socket
                .recv(&mut self.buf, 0)
                .map_err(|e| fail(e.raw_os_error(), e.to_string()))?;
            for msg in messages(&self.buf) {
                if msg.seq != seq {
                    continue;
                }
                interrupted |= msg.flags & NLM_F_DUMP_INTR != 0;
                match msg.ty {
                    NLMSG_ERROR => {
                        return match error_code(msg.payload) {
                            Some(0) => Ok(interrupted),
                            Some(errno) => Err(fail(
                                Some(errno),
                                std::io::Error::from_raw_os_error(errno).to_string(),
                            )),
                            None => Err(fail(None, "malformed error message".to_owned())),
                        }
                    }
                    NLMSG_DONE => return Ok(interrupted),
                    _ => each(msg.payload),
                }
            }
        }
    }

    /// Every entry of `family`'s table.
    ///
    /// # Errors
    /// When the dump cannot be sent or the kernel refuses it.
    pub fn list(&mut self, family: Family) -> Result<Dump> {
        let seq = self.next_seq();
        let req = dump_request(family, seq);
        let mut flows = Vec::new();
        let object = format!("the {family:?} conntrack table");
        let interrupted = self.exchange(&req, seq, "dump", &object, |payload| {
            flows.extend(decode_flow(payload));
        })?;
        Ok(Dump { flows, interrupted })
    }

    /// Deletes one entry; `false` when it was already gone.
    ///
    /// # Errors
    /// When the kernel refuses the deletion for another reason.
    pub fn delete(&mut self, flow: &Flow) -> Result<bool> {
        let seq = self.next_seq();
        let Some(req) = delete_request(flow, seq) else {
            return Ok(false);
        };
        let object = format!(
            "conntrack entry {} -> {} (reply from {})",
            flow.orig_src, flow.orig_dst, flow.reply_src
        );
        match self.exchange(&req, seq, "delete", &object, |_| {}) {
            Ok(_) => Ok(true),
            Err(err) if err.errno() == Some(ENOENT) => Ok(false),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp() -> Flow {
        Flow {
            protocol: Some(Protocol::Udp),
            orig_src: "10.0.0.1:40000".parse().unwrap(),
            orig_dst: "10.96.0.10:53".parse().unwrap(),
            reply_src: "10.244.1.2:5353".parse().unwrap(),
            reply_dst: "10.0.0.1:40000".parse().unwrap(),
            zone: 7,
        }
    }

    /// A dump entry as the kernel writes it: nfgenmsg, both tuples, the zone, and an
    /// attribute the decoder does not read (CTA_TIMEOUT).
    fn entry(flow: &Flow) -> Vec<u8> {
        let mut r = Request::new(0, 0, 1, Family::of(&flow.orig_dst.ip()));
        let p = ipproto(flow.protocol.unwrap());
        r.tuple(CTA_TUPLE_ORIG, p, flow.orig_src, flow.orig_dst);
        r.tuple(CTA_TUPLE_REPLY, p, flow.reply_src, flow.reply_dst);
        r.put(7, &30u32.to_be_bytes());
        r.put(CTA_ZONE, &flow.zone.to_be_bytes());
        r.finish()
    }

    #[test]
    fn dump_entries_decode_to_both_tuples_and_the_zone() {
        for flow in [
            udp(),
            Flow {
                protocol: Some(Protocol::Tcp),
                orig_src: "[fd00::1]:1234".parse().unwrap(),
                orig_dst: "[fd00:10::10]:80".parse().unwrap(),
                reply_src: "[fd00:244::2]:8080".parse().unwrap(),
                reply_dst: "[fd00::1]:1234".parse().unwrap(),
                zone: 0,
            },
        ] {
            let bytes = entry(&flow);
            let msgs = messages(&bytes);
            assert_eq!(msgs.len(), 1);
            assert_eq!(decode_flow(msgs[0].payload), Some(flow));
        }
    }

    #[test]
    fn a_delete_names_the_original_tuple_and_the_zone() {
        let bytes = delete_request(&udp(), 9).unwrap();
        let msgs = messages(&bytes);
        assert_eq!(msgs[0].ty, (1 << 8) | 2);
        assert_eq!(msgs[0].flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(msgs[0].seq, 9);
        assert_eq!(msgs[0].payload[0], 2, "AF_INET");
        let body = &msgs[0].payload[4..];
        let (protocol, src, dst) = decode_tuple(find(body, CTA_TUPLE_ORIG).unwrap()).unwrap();
        assert_eq!(
            (protocol, src, dst),
            (Some(Protocol::Udp), udp().orig_src, udp().orig_dst)
        );
        assert_eq!(find(body, CTA_ZONE).and_then(be_u16), Some(7));
        assert!(find(body, CTA_TUPLE_REPLY).is_none());
        let icmp = Flow {
            protocol: None,
            ..udp()
        };
        assert_eq!(delete_request(&icmp, 1), None);
    }

    #[test]
    fn a_dump_asks_for_one_family() {
        let bytes = dump_request(Family::V6, 3);
        let msgs = messages(&bytes);
        assert_eq!(msgs[0].ty, (1 << 8) | 1);
        assert_eq!(msgs[0].flags, NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(msgs[0].payload, &[10, 0, 0, 0]);
    }
}
