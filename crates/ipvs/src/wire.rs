//! Netlink framing: messages, the generic netlink header and attributes (TLVs).
//!
//! Writing appends to a byte buffer, so a whole batch of requests is built in one
//! allocation. Reading borrows from the received datagram and checks every length
//! before using it: arbitrary, truncated or hostile bytes yield a [`DecodeError`], never
//! a panic, an out-of-bounds slice or an endless loop.
//!
//! Integers inside attributes are in host byte order unless the kernel says otherwise
//! (ports are big-endian); this module only deals with layout.

use crate::consts::{GENL_HDRLEN, NLA_F_NESTED, NLA_HDRLEN, NLA_TYPE_MASK, NLMSG_HDRLEN};

/// `NLMSG_ERROR`: an ACK (error 0) or an error report.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`: data lost.
pub const NLMSG_OVERRUN: u16 = 4;
/// `NLMSG_NOOP`: ignore.
pub const NLMSG_NOOP: u16 = 1;

/// Why received bytes could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A length field points outside the bytes that arrived.
    #[error("truncated {what}: needs {needed} bytes, {available} available")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes the length field asked for.
        needed: usize,
        /// Bytes actually there.
        available: usize,
    },
    /// A length field is smaller than the header it belongs to.
    #[error("{what} length {len} is shorter than its header")]
    BadLength {
        /// What was being read.
        what: &'static str,
        /// The length found.
        len: usize,
    },
    /// An attribute has the wrong size for its type.
    #[error("attribute {what} has {len} bytes, expected {expected}")]
    BadAttrSize {
        /// The attribute.
        what: &'static str,
        /// Its payload size.
        len: usize,
        /// What the kernel sends.
        expected: &'static str,
    },
    /// A required attribute is absent.
    #[error("missing attribute {0}")]
    Missing(&'static str),
    /// A value is outside what the kernel documents.
    #[error("invalid {what}: {value}")]
    Invalid {
        /// The attribute or field.
        what: &'static str,
        /// The value, as text.
        value: String,
    },
}

/// Shorthand for decoding results.
pub type DecodeResult<T> = Result<T, DecodeError>;

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends netlink messages to a buffer.
///
/// Lengths are patched in when a message or nested attribute ends. Requests built by this
/// crate are a few hundred bytes, far below the `u16` attribute length limit.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

/// Where a message or nested attribute started, to patch its length at the end.
#[derive(Debug, Clone, Copy)]
#[must_use = "a started message or nest must be ended"]
pub struct Mark(usize);

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer::default()
    }

    /// The bytes written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Forgets everything written, keeping the allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Starts a generic netlink message: `nlmsghdr` then `genlmsghdr`.
    pub fn begin_genl(&mut self, family: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> Mark {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by end
        self.buf.extend_from_slice(&family.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        self.buf.extend_from_slice(&[cmd, version, 0, 0]);
        Mark(start)
    }

    /// Ends the message started at `mark`.
    pub fn end_msg(&mut self, mark: Mark) {
        let len = u32::try_from(self.buf.len() - mark.0).unwrap_or(u32::MAX);
        self.buf[mark.0..mark.0 + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Appends an attribute with the given payload, padded to 4 bytes.
    pub fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = u16::try_from(NLA_HDRLEN + payload.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    /// Appends a `u8` attribute.
    pub fn u8(&mut self, ty: u16, v: u8) {
        self.attr(ty, &[v]);
    }

    /// Appends a host-order `u16` attribute.
    pub fn u16(&mut self, ty: u16, v: u16) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// Appends a big-endian (network order) `u16` attribute, such as a port.
    pub fn be16(&mut self, ty: u16, v: u16) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// Appends a host-order `u32` attribute.
    pub fn u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// Appends a NUL-terminated string attribute.
    pub fn string(&mut self, ty: u16, s: &str) {
        let len = u16::try_from(NLA_HDRLEN + s.len() + 1).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// Starts a nested attribute (flagged `NLA_F_NESTED`, as libnl does).
    pub fn begin_nest(&mut self, ty: u16) -> Mark {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        Mark(start)
    }

    /// Ends the nested attribute started at `mark`.
    pub fn end_nest(&mut self, mark: Mark) {
        let len = u16::try_from(self.buf.len() - mark.0).unwrap_or(u16::MAX);
        self.buf[mark.0..mark.0 + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        let padded = align4(self.buf.len());
        self.buf.resize(padded, 0);
    }
}

/// One netlink message, borrowed from a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// `nlmsg_type`: a family id or `NLMSG_ERROR` / `NLMSG_DONE` / ...
    pub ty: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`: which request this answers.
    pub seq: u32,
    /// `nlmsg_pid`.
    pub pid: u32,
    /// Everything after the header.
    pub payload: &'a [u8],
}

/// Iterates over the messages of a datagram. Stops after the first framing error.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
    failed: bool,
}

/// The messages in `buf`, in order.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages {
        rest: buf,
        failed: false,
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = DecodeResult<Message<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let result = split_message(self.rest);
        match result {
            Ok((msg, rest)) => {
                self.rest = rest;
                Some(Ok(msg))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

fn split_message(buf: &[u8]) -> DecodeResult<(Message<'_>, &[u8])> {
    let header = buf.get(..NLMSG_HDRLEN).ok_or(DecodeError::Truncated {
        what: "netlink header",
        needed: NLMSG_HDRLEN,
        available: buf.len(),
    })?;
    let len = usize::try_from(u32::from_ne_bytes(array(&header[0..4]))).map_err(|_| {
        DecodeError::BadLength {
            what: "netlink message",
            len: usize::MAX,
        }
    })?;
    if len < NLMSG_HDRLEN {
        return Err(DecodeError::BadLength {
            what: "netlink message",
            len,
        });
    }
    let body = buf.get(NLMSG_HDRLEN..len).ok_or(DecodeError::Truncated {
        what: "netlink message",
        needed: len,
        available: buf.len(),
    })?;
    let msg = Message {
        ty: u16::from_ne_bytes(array(&header[4..6])),
        flags: u16::from_ne_bytes(array(&header[6..8])),
        seq: u32::from_ne_bytes(array(&header[8..12])),
        pid: u32::from_ne_bytes(array(&header[12..16])),
        payload: body,
    };
    let rest = buf.get(align4(len)..).unwrap_or(&[]);
    Ok((msg, rest))
}

/// Copies a slice the caller has already sized into an array.
fn array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = s.len().min(N);
    a[..n].copy_from_slice(&s[..n]);
    a
}

/// The error code of an `NLMSG_ERROR` payload (0 for an ACK, `-errno` otherwise).
pub fn error_code(payload: &[u8]) -> DecodeResult<i32> {
    let code = payload.get(..4).ok_or(DecodeError::Truncated {
        what: "netlink error",
        needed: 4,
        available: payload.len(),
    })?;
    Ok(i32::from_ne_bytes(array(code)))
}

/// The status of an `NLMSG_DONE` payload: 0, or `-errno` when the dump failed.
/// A DONE without payload counts as success.
pub fn done_code(payload: &[u8]) -> i32 {
    payload.get(..4).map_or(0, |c| i32::from_ne_bytes(array(c)))
}

/// A generic netlink payload: the command and the attributes after the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Genl<'a> {
    /// `genlmsghdr.cmd`.
    pub cmd: u8,
    /// `genlmsghdr.version`.
    pub version: u8,
    /// The top-level attributes.
    pub attrs: &'a [u8],
}

/// Splits a message payload into the generic netlink header and its attributes.
pub fn genl(payload: &[u8]) -> DecodeResult<Genl<'_>> {
    let header = payload.get(..GENL_HDRLEN).ok_or(DecodeError::Truncated {
        what: "generic netlink header",
        needed: GENL_HDRLEN,
        available: payload.len(),
    })?;
    Ok(Genl {
        cmd: header[0],
        version: header[1],
        attrs: payload.get(GENL_HDRLEN..).unwrap_or(&[]),
    })
}

/// Iterates over the attributes in a byte range. Stops after the first framing error.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
    failed: bool,
}

/// The attributes in `buf`, in order, as `(type without flag bits, payload)`.
pub fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs {
        rest: buf,
        failed: false,
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = DecodeResult<(u16, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        // Trailing bytes shorter than an attribute header are padding.
        if self.failed || self.rest.len() < NLA_HDRLEN {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes(array(&self.rest[0..2])));
        let ty = u16::from_ne_bytes(array(&self.rest[2..4])) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN {
            self.failed = true;
            return Some(Err(DecodeError::BadLength {
                what: "attribute",
                len,
            }));
        }
        let Some(payload) = self.rest.get(NLA_HDRLEN..len) else {
            self.failed = true;
            return Some(Err(DecodeError::Truncated {
                what: "attribute",
                needed: len,
                available: self.rest.len(),
            }));
        };
        self.rest = self.rest.get(align4(len)..).unwrap_or(&[]);
        Some(Ok((ty, payload)))
    }
}

/// Reads an exact-size integer attribute payload.
pub fn fixed<const N: usize>(what: &'static str, p: &[u8]) -> DecodeResult<[u8; N]> {
    if p.len() == N {
        Ok(array(p))
    } else {
        Err(DecodeError::BadAttrSize {
            what,
            len: p.len(),
            expected: match N {
                1 => "1 (u8)",
                2 => "2 (u16)",
                4 => "4 (u32)",
                8 => "8 (u64)",
                _ => "a fixed size",
            },
        })
    }
}

/// Reads a `u8` attribute.
pub fn get_u8(what: &'static str, p: &[u8]) -> DecodeResult<u8> {
    fixed::<1>(what, p).map(|a| a[0])
}

/// Reads a host-order `u16` attribute.
pub fn get_u16(what: &'static str, p: &[u8]) -> DecodeResult<u16> {
    fixed(what, p).map(u16::from_ne_bytes)
}

/// Reads a big-endian `u16` attribute (a port).
pub fn get_be16(what: &'static str, p: &[u8]) -> DecodeResult<u16> {
    fixed(what, p).map(u16::from_be_bytes)
}

/// Reads a host-order `u32` attribute.
pub fn get_u32(what: &'static str, p: &[u8]) -> DecodeResult<u32> {
    fixed(what, p).map(u32::from_ne_bytes)
}

/// Reads a counter that is a `u32` or a `u64` depending on the attribute set.
pub fn get_counter(what: &'static str, p: &[u8]) -> DecodeResult<u64> {
    match p.len() {
        4 => Ok(u64::from(u32::from_ne_bytes(array(p)))),
        8 => Ok(u64::from_ne_bytes(array(p))),
        len => Err(DecodeError::BadAttrSize {
            what,
            len,
            expected: "4 or 8",
        }),
    }
}

/// Reads a NUL-terminated (or unterminated) string attribute as UTF-8.
pub fn get_str<'a>(what: &'static str, p: &'a [u8]) -> DecodeResult<&'a str> {
    let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
    std::str::from_utf8(&p[..end]).map_err(|_| DecodeError::Invalid {
        what,
        value: format!("{:?}", String::from_utf8_lossy(&p[..end])),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_messages_read_back_with_their_attributes() {
        let mut w = Writer::new();
        let m = w.begin_genl(0x20, 0x5, 7, 1, 1);
        w.u16(1, 2);
        let n = w.begin_nest(2);
        w.string(6, "rr");
        w.be16(4, 80);
        w.end_nest(n);
        w.end_msg(m);
        let msgs: Vec<_> = messages(w.bytes()).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].ty, msgs[0].flags, msgs[0].seq), (0x20, 5, 7));
        let g = genl(msgs[0].payload).unwrap();
        assert_eq!((g.cmd, g.version), (1, 1));
        let top: Vec<_> = attrs(g.attrs).collect::<Result<_, _>>().unwrap();
        assert_eq!(top[0], (1, &2u16.to_ne_bytes()[..]));
        assert_eq!(top[1].0, 2, "the nested flag is masked off");
        let inner: Vec<_> = attrs(top[1].1).collect::<Result<_, _>>().unwrap();
        assert_eq!(get_str("name", inner[0].1).unwrap(), "rr");
        assert_eq!(get_be16("port", inner[1].1).unwrap(), 80);
    }

    #[test]
    fn a_message_length_below_the_header_is_an_error_not_a_loop() {
        let mut buf = vec![0u8; 32];
        buf[0] = 4;
        let items: Vec<_> = messages(&buf).collect();
        assert_eq!(items.len(), 1);
        assert!(items[0].is_err());
    }

    #[test]
    fn a_message_longer_than_the_datagram_is_truncated() {
        let mut buf = vec![0u8; 20];
        buf[0] = 64;
        assert!(matches!(
            messages(&buf).next(),
            Some(Err(DecodeError::Truncated { .. }))
        ));
    }

    #[test]
    fn attribute_lengths_are_checked() {
        assert!(matches!(
            attrs(&[2, 0, 1, 0]).next(),
            Some(Err(DecodeError::BadLength { .. }))
        ));
        assert!(matches!(
            attrs(&[9, 0, 1, 0, 1]).next(),
            Some(Err(DecodeError::Truncated { .. }))
        ));
        assert_eq!(attrs(&[1, 2]).count(), 0, "short tail is padding");
    }

    #[test]
    fn integer_attributes_must_have_their_size() {
        assert!(get_u32("x", &[1, 2]).is_err());
        assert_eq!(get_counter("x", &7u32.to_ne_bytes()).unwrap(), 7);
        assert_eq!(get_counter("x", &7u64.to_ne_bytes()).unwrap(), 7);
        assert!(get_counter("x", &[0; 5]).is_err());
    }
}
