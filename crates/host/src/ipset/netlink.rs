//! Talking to the kernel's ipset over nfnetlink: one socket, dumps to read, and
//! ADD/DEL in ADT batches (thousands of members per message) to write.

use std::collections::BTreeMap;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use super::codec::{
    self, Cmd, Request, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use kipvs_ipvs::Family;
use kipvs_proxy::SetType;

use super::plan::{ObservedSet, SetOp};
use crate::{Error, Result};

/// How many bytes of members go in one ADD/DEL message (well under the socket buffer).
const BATCH_BYTES: usize = 48 * 1024;

/// An nfnetlink socket for ipset, bound to the calling thread's network namespace.
#[derive(Debug)]
pub struct IpsetSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    revisions: BTreeMap<(SetType, Family), u8>,
}

fn errno_message(errno: i32) -> String {
    // ipset's own codes (IPSET_ERR_*) start at 4096.
    match errno {
        4097 => "protocol error".to_owned(),
        4098 => "set does not exist".to_owned(),
        4099 => "set already exists with different parameters".to_owned(),
        4100 => "set type not supported".to_owned(),
        4102 => "set is in use by a kernel component".to_owned(),
        4103 => "sets are not compatible for swap".to_owned(),
        4353 => "set is full (maxelem reached)".to_owned(),
        e => std::io::Error::from_raw_os_error(e).to_string(),
    }
}

impl IpsetSocket {
    /// Opens the socket.
    ///
    /// # Errors
    /// When the socket cannot be created or bound.
    pub fn open() -> Result<IpsetSocket> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(Error::Socket)?;
        socket.bind_auto().map_err(Error::Socket)?;
        // Large dumps arrive faster with room to queue them; best effort.
        let _ = socket.set_rx_buf_sz(4 * 1024 * 1024);
        Ok(IpsetSocket {
            socket,
            seq: 0,
            buf: Vec::with_capacity(256 * 1024),
            revisions: BTreeMap::new(),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one request and collects the payloads answered to it, until its ACK, error
    /// or end of dump.
    fn exchange(
        &mut self,
        bytes: &[u8],
        seq: u32,
        op: &'static str,
        object: &str,
    ) -> Result<Vec<Vec<u8>>> {
        let fail = |errno: Option<i32>, message: String| Error::Netlink {
            op,
            object: object.to_owned(),
            errno,
            message,
        };
        self.socket
            .send(bytes, 0)
            .map_err(|e| fail(e.raw_os_error(), e.to_string()))?;
        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            self.socket
                .recv(&mut self.buf, 0)
                .map_err(|e| fail(e.raw_os_error(), e.to_string()))?;
            for msg in codec::messages(&self.buf) {
                if msg.seq != seq {
                    continue;
                }
                match msg.ty {
                    NLMSG_ERROR => {
                        return match codec::error_code(msg.payload) {
                            Some(0) => Ok(replies),
                            Some(errno) => Err(fail(Some(errno), errno_message(errno))),
                            None => Err(fail(None, "malformed error message".to_owned())),
                        }
                    }
                    NLMSG_DONE => return Ok(replies),
                    _ => replies.push(msg.payload.to_vec()),
                }
            }
        }
    }

    /// Every set in the kernel, with members for the sets `wanted` names.
    ///
    /// # Errors
    /// When the dump fails or a member of a wanted set cannot be decoded.
    pub fn list(&mut self, wanted: &dyn Fn(&str) -> bool) -> Result<BTreeMap<String, ObservedSet>> {
        let seq = self.next_seq();
        let req = Request::new(Cmd::List, NLM_F_REQUEST | NLM_F_DUMP, seq).finish();
        let replies = self.exchange(&req, seq, "list", "ipsets")?;
        let mut sets = BTreeMap::new();
        for payload in &replies {
            codec::decode_list(payload, &mut sets, wanted).ok_or_else(|| Error::Parse {
                what: "ipset list dump",
                line: 0,
                text: format!("{} bytes", payload.len()),
            })?;
        }
        Ok(sets)
    }

    /// The newest revision of `set_type` the kernel supports, for creating sets.
    fn revision(&mut self, set_type: SetType, family: Family) -> Result<u8> {
        if let Some(r) = self.revisions.get(&(set_type, family)) {
            return Ok(*r);
        }
        let seq = self.next_seq();
        let req = Request::new(Cmd::Type, NLM_F_REQUEST | NLM_F_ACK, seq)
            .type_query(set_type, family)
            .finish();
        let replies = self.exchange(&req, seq, "query type", set_type.as_str())?;
        let revision = replies
            .iter()
            .find_map(|p| codec::decode_type_revision(p))
            .ok_or_else(|| Error::Parse {
                what: "ipset type reply",
                line: 0,
                text: set_type.as_str().to_owned(),
            })?;
        self.revisions.insert((set_type, family), revision);
        Ok(revision)
    }

    fn simple(
        &mut self,
        op: &'static str,
        object: &str,
        build: impl FnOnce(Request) -> Request,
        cmd: Cmd,
    ) -> Result<()> {
        let seq = self.next_seq();
        let req = build(Request::new(cmd, NLM_F_REQUEST | NLM_F_ACK, seq)).finish();
        self.exchange(&req, seq, op, object).map(drop)
    }

    /// Carries out `ops` in order. Runs of adds (or deletes) to one set go out as ADT
    /// batches; adding a member already there, or deleting one already gone, is success.
    ///
    /// # Errors
    /// At the first operation the kernel refuses (the earlier ones stay done).
    pub fn apply(&mut self, ops: &[SetOp]) -> Result<()> {
        let mut i = 0;
        while i < ops.len() {
            match &ops[i] {
                SetOp::Create(h) => {
                    let revision = self.revision(h.set_type, h.family)?;
                    self.simple(
                        "create set",
                        &h.name,
                        |r| r.create(h, revision),
                        Cmd::Create,
                    )?;
                    i += 1;
                }
                SetOp::Destroy(name) => {
                    self.simple("destroy set", name, |r| r.set_name(name), Cmd::Destroy)?;
                    i += 1;
                }
                SetOp::Swap(a, b) => {
                    self.simple(
                        "swap sets",
                        &format!("{a} and {b}"),
                        |r| r.set_name(a).set_name2(b),
                        Cmd::Swap,
                    )?;
                    i += 1;
                }
                SetOp::Add(name, _) | SetOp::Del(name, _) => {
                    let add = matches!(ops[i], SetOp::Add(..));
                    let (cmd, op) = if add {
                        (Cmd::Add, "add members to")
                    } else {
                        (Cmd::Del, "delete members from")
                    };
                    let seq = self.next_seq();
                    // No NLM_F_EXCL: the kernel then treats existing (or missing) members as success.
                    let mut req = Request::new(cmd, NLM_F_REQUEST | NLM_F_ACK, seq)
                        .set_name(name)
                        .begin_adt();
                    while i < ops.len() && req.len() < BATCH_BYTES {
                        match &ops[i] {
                            SetOp::Add(n, e) if add && n == name => req.entry(e),
                            SetOp::Del(n, e) if !add && n == name => req.entry(e),
                            _ => break,
                        }
                        i += 1;
                    }
                    let bytes = req.finish();
                    self.exchange(&bytes, seq, op, name)?;
                }
            }
        }
        Ok(())
    }
}
