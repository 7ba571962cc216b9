//! The conntrack table over ctnetlink (nfnetlink subsystem 1): a dump of one address
//! family's entries and the deletion of single entries, for kube-proxy's conntrack
//! reconciler (which entries go is decided in [`kipvs_proxy::conntrack`]).
//!
//! Requests are built and dumps decoded by pure functions ([`dump_request`],
//! [`delete_request`], [`decode_flow`]); [`ConntrackSocket`] sends them. Numbers mirror
//! `include/uapi/linux/netfilter/nfnetlink_conntrack.h`; the framing is [`crate::nfnetlink`]'s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use kipvs_ipvs::{Family, Protocol};
use kipvs_proxy::Flow;

use crate::nfnetlink::{
    self, be_u16, find, from_ipproto, ipproto, nfproto, NfnetlinkSocket, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use crate::Result;

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

const ENOENT: i32 = 2;

/// One ctnetlink request being built (subsystem 1, `nfgenmsg` naming the table's
/// family).
struct Request(nfnetlink::Request);

impl Request {
    fn new(msg: u16, flags: u16, seq: u32, family: Family) -> Request {
        Request(nfnetlink::Request::new(
            SUBSYS_CTNETLINK,
            msg,
            flags,
            seq,
            nfproto(family),
        ))
    }

    fn put(&mut self, ty: u16, value: &[u8]) {
        self.0.put(ty, value);
    }

    fn begin(&mut self, ty: u16) {
        self.0.begin(ty);
    }

    fn end(&mut self) {
        self.0.end();
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

    fn finish(self) -> Vec<u8> {
        self.0.finish()
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

/// How a kernel error reads: ctnetlink has no codes of its own, so the errno's words.
fn errno_words(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// An nfnetlink socket for the conntrack table, bound to the calling thread's network
/// namespace.
#[derive(Debug)]
pub struct ConntrackSocket {
    socket: NfnetlinkSocket,
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
        Ok(ConntrackSocket {
            socket: NfnetlinkSocket::open()?,
        })
    }

    /// Every entry of `family`'s table.
    ///
    /// # Errors
    /// When the dump cannot be sent or the kernel refuses it.
    pub fn list(&mut self, family: Family) -> Result<Dump> {
        let seq = self.socket.next_seq();
        let req = dump_request(family, seq);
        let mut flows = Vec::new();
        let object = format!("the {family:?} conntrack table");
        let each = |payload: &[u8]| flows.extend(decode_flow(payload));
        let interrupted = self
            .socket
            .exchange(&req, seq, "dump", &object, errno_words, each)?;
        Ok(Dump { flows, interrupted })
    }

    /// Deletes one entry; `false` when it was already gone.
    ///
    /// # Errors
    /// When the kernel refuses the deletion for another reason.
    pub fn delete(&mut self, flow: &Flow) -> Result<bool> {
        let seq = self.socket.next_seq();
        let Some(req) = delete_request(flow, seq) else {
            return Ok(false);
        };
        let object = format!(
            "conntrack entry {} -> {} (reply from {})",
            flow.orig_src, flow.orig_dst, flow.reply_src
        );
        match self
            .socket
            .exchange(&req, seq, "delete", &object, errno_words, |_| {})
        {
            Ok(_) => Ok(true),
            Err(err) if err.errno() == Some(ENOENT) => Ok(false),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnetlink::messages;

    /// A flow of `protocol` with its original and reply `[source, destination]`.
    fn flow(protocol: Protocol, orig: [&str; 2], reply: [&str; 2], zone: u16) -> Flow {
        Flow {
            protocol: Some(protocol),
            orig_src: orig[0].parse().unwrap(),
            orig_dst: orig[1].parse().unwrap(),
            reply_src: reply[0].parse().unwrap(),
            reply_dst: reply[1].parse().unwrap(),
            zone,
        }
    }

    fn udp() -> Flow {
        flow(
            Protocol::Udp,
            ["10.0.0.1:40000", "10.96.0.10:53"],
            ["10.244.1.2:5353", "10.0.0.1:40000"],
            7,
        )
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
            flow(
                Protocol::Tcp,
                ["[fd00::1]:1234", "[fd00:10::10]:80"],
                ["[fd00:244::2]:8080", "[fd00::1]:1234"],
                0,
            ),
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
