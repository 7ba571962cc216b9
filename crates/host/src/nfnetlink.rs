//! nfnetlink (netfilter netlink, `NETLINK_NETFILTER`): the framing every netfilter
//! subsystem kipvs talks to shares, defined once. The ipset client ([`crate::ipset`],
//! subsystem 6) and the conntrack table ([`crate::ctnetlink`], subsystem 1) keep only
//! their own commands and attributes; the netlink header, the `nfgenmsg` header, the
//! (nested) attributes and one socket's send / ACK / dump loop are here.
//!
//! Building and splitting messages are pure ([`Request`], [`messages`], [`attrs`]);
//! [`NfnetlinkSocket`] sends them. Numbers mirror `include/uapi/linux/netlink.h` and
//! `include/uapi/linux/netfilter/nfnetlink.h`.

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use kipvs_ipvs::{Family, Protocol};

use crate::{Error, Result};

/// `NLM_F_REQUEST`: a request (the kernel drops messages without it).
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`: ask for an acknowledgement, so success is heard as well as failure.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`): every object, in as many messages as it
/// takes, ended by `NLMSG_DONE`.
pub const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_DUMP_INTR`: the table changed while the dump ran (the result may miss or
/// repeat entries).
pub const NLM_F_DUMP_INTR: u16 = 0x10;

/// `NLMSG_ERROR`: an ACK (error 0) or an error report.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub const NLMSG_DONE: u16 = 3;

/// `NLA_F_NESTED`: the attribute holds attributes.
pub const NLA_F_NESTED: u16 = 0x8000;
/// `NLA_F_NET_BYTEORDER`: the value is in network byte order (ipset insists on it).
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
/// The type bits of an attribute's type field, without the two flags above.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The netlink header's length (`struct nlmsghdr`).
pub const NLMSG_HDRLEN: usize = 16;
/// The `nfgenmsg` header's length: family, version, resource id.
pub const NFGENMSG_LEN: usize = 4;

/// `NFPROTO_UNSPEC`: a family-less object (ipset's `bitmap:port`).
pub const NFPROTO_UNSPEC: u8 = 0;
/// `NFPROTO_IPV4` (the same number as `AF_INET`).
pub const NFPROTO_IPV4: u8 = 2;
/// `NFPROTO_IPV6` (the same number as `AF_INET6`).
pub const NFPROTO_IPV6: u8 = 10;

/// The `NFPROTO_*` number of `family`, as `nfgenmsg` and ipset's family attribute carry
/// it.
pub fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

/// The protocol's number (`IPPROTO_*`), as ipset members, conntrack tuples and the
/// `ipvs` match carry it.
pub fn ipproto(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// The protocol of an `IPPROTO_*` number; `None` for one kipvs does not handle.
pub fn from_ipproto(n: u8) -> Option<Protocol> {
    match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

/// Netlink pads messages and attributes to four bytes.
fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// One request being built: netlink header, `nfgenmsg`, attributes (nested ones opened
/// with [`Request::begin`] and closed with [`Request::end`]).
#[derive(Debug, Clone)]
pub struct Request {
    buf: Vec<u8>,
    open: Vec<usize>,
}

impl Request {
    /// A request for message `msg` of nfnetlink subsystem `subsys`, with the netlink
    /// `flags`, numbered `seq`, whose `nfgenmsg` names `family` (an `NFPROTO_*`).
    pub fn new(subsys: u16, msg: u16, flags: u16, seq: u32, family: u8) -> Request {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0; 4]); // length, set in finish()
        buf.extend_from_slice(&((subsys << 8) | msg).to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0 (NFNETLINK_V0), res_id 0.
        buf.extend_from_slice(&[family, 0, 0, 0]);
        Request {
            buf,
            open: Vec::new(),
        }
    }

    /// The bytes so far (the length field is set by [`Request::finish`]).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether only the headers are there.
    pub fn is_empty(&self) -> bool {
        self.buf.len() <= NLMSG_HDRLEN + NFGENMSG_LEN
    }

    /// Appends attribute `ty` holding `value` (padded to four bytes).
    pub fn put(&mut self, ty: u16, value: &[u8]) {
        let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align(self.buf.len()), 0);
    }

    /// Opens nested attribute `ty`: what is put until the matching [`Request::end`]
    /// goes inside it.
    pub fn begin(&mut self, ty: u16) {
        self.open.push(self.buf.len());
        // The length is not known yet; end() writes it.
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    /// Closes the innermost open nested attribute (nothing when none is open).
    pub fn end(&mut self) {
        if let Some(start) = self.open.pop() {
            let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    /// Closes the nested attributes still open and sets the length: the bytes to send.
    pub fn finish(mut self) -> Vec<u8> {
        while !self.open.is_empty() {
            self.end();
        }
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
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
    /// Everything after the netlink header (`nfgenmsg` first, for nfnetlink's own).
    pub payload: &'a [u8],
}

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

/// The value of the first attribute `ty` in a run of attributes.
pub fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

/// A big-endian `u16` value (ports, conntrack zones).
pub fn be_u16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(0..2)?.try_into().ok()?))
}

/// A big-endian `u32` value (ipset's sizes and counts).
pub fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(0..4)?.try_into().ok()?))
}

/// An nfnetlink socket, bound to the calling thread's network namespace: the request /
/// answer loop every subsystem's client runs its messages through.
#[derive(Debug)]
pub struct NfnetlinkSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NfnetlinkSocket {
    /// Opens the socket.
    ///
    /// # Errors
    /// When the socket cannot be created or bound.
    pub fn open() -> Result<NfnetlinkSocket> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(Error::Socket)?;
        socket.bind_auto().map_err(Error::Socket)?;
        // Large dumps arrive faster with room to queue them; best effort.
        let _ = socket.set_rx_buf_sz(4 * 1024 * 1024);
        Ok(NfnetlinkSocket {
            socket,
            seq: 0,
            buf: Vec::with_capacity(256 * 1024),
        })
    }

    /// The sequence number for the next request (answers are matched to it).
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `bytes` (a request numbered `seq`) and hands the payload of each message
    /// answered to `seq` to `each`, until the ACK, the error or the end of a dump;
    /// returns whether a message carried `NLM_F_DUMP_INTR`. A kernel error is reported
    /// as `op` on `object`, in the words `describe` gives its errno (each subsystem
    /// knows its own codes).
    ///
    /// # Errors
    /// When the request cannot be sent or an answer read, or the kernel refuses it.
    pub fn exchange(
        &mut self,
        bytes: &[u8],
        seq: u32,
        op: &'static str,
        object: &str,
        describe: impl Fn(i32) -> String,
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
                // Answers to an earlier request that gave up (or notifications).
                if msg.seq != seq {
                    continue;
                }
                interrupted |= msg.flags & NLM_F_DUMP_INTR != 0;
                match msg.ty {
                    NLMSG_ERROR => {
                        return match error_code(msg.payload) {
                            Some(0) => Ok(interrupted),
                            Some(errno) => Err(fail(Some(errno), describe(errno))),
                            None => Err(fail(None, "malformed error message".to_owned())),
                        }
                    }
                    NLMSG_DONE => return Ok(interrupted),
                    _ => each(msg.payload),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_frames_headers_and_nested_attributes_that_split_back() {
        let mut r = Request::new(6, 9, NLM_F_REQUEST | NLM_F_ACK, 42, NFPROTO_IPV6);
        r.put(1, &[7]);
        r.begin(8);
        r.put(3 | NLA_F_NET_BYTEORDER, &443u16.to_be_bytes());
        // Left open: finish() closes it.
        let bytes = r.finish();
        assert_eq!(bytes.len() % 4, 0);
        let msgs = messages(&bytes);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].ty, (6 << 8) | 9);
        assert_eq!(msgs[0].flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(msgs[0].seq, 42);
        assert_eq!(msgs[0].payload.len(), bytes.len() - NLMSG_HDRLEN);
        assert_eq!(&msgs[0].payload[..NFGENMSG_LEN], &[10, 0, 0, 0]);
        let body = &msgs[0].payload[NFGENMSG_LEN..];
        let top: Vec<_> = attrs(body).map(|(t, _)| t).collect();
        assert_eq!(top, vec![1, 8], "types come back without their flags");
        assert_eq!(find(body, 1), Some(&[7][..]));
        let nested = find(body, 8).unwrap();
        assert_eq!(find(nested, 3).and_then(be_u16), Some(443));
        assert_eq!(find(body, 2), None);
    }

    #[test]
    fn an_error_payload_gives_a_positive_errno_and_an_ack_zero() {
        assert_eq!(error_code(&(-2i32).to_ne_bytes()), Some(2));
        assert_eq!(error_code(&0i32.to_ne_bytes()), Some(0));
        assert_eq!(error_code(&[0, 0]), None);
    }

    #[test]
    fn a_truncated_datagram_yields_only_its_whole_messages() {
        let mut two = Request::new(1, 1, NLM_F_REQUEST, 1, NFPROTO_IPV4).finish();
        two.extend(Request::new(1, 2, NLM_F_REQUEST, 2, NFPROTO_IPV4).finish());
        let cut = &two[..two.len() - 1];
        let seqs: Vec<_> = messages(cut).iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![1]);
    }

    #[test]
    fn protocol_numbers_round_trip() {
        for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            assert_eq!(from_ipproto(ipproto(p)), Some(p));
        }
        assert_eq!(from_ipproto(1), None, "ICMP");
    }
}
