//! Talking to the kernel's ipset over nfnetlink: one socket, dumps to read, and
//! ADD/DEL in ADT batches (thousands of members per message) to write.

use std::collections::BTreeMap;

use super::codec::{self, Cmd, Request};
use kipvs_ipvs::Family;
use kipvs_proxy::{Member, SetType};

use super::errors::{self, SetClass};
use super::plan::{ObservedSet, SetOp};
use crate::nfnetlink::{NfnetlinkSocket, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use crate::{Error, Result};

/// How many bytes of members go in one ADD/DEL message (well under the socket buffer).
const BATCH_BYTES: usize = 48 * 1024;

/// An nfnetlink socket for ipset, bound to the calling thread's network namespace.
#[derive(Debug)]
pub struct IpsetSocket {
    socket: NfnetlinkSocket,
    revisions: BTreeMap<(SetType, Family), u8>,
}

impl IpsetSocket {
    /// Opens the socket.
    ///
    /// # Errors
    /// When the socket cannot be created or bound.
    pub fn open() -> Result<IpsetSocket> {
        Ok(IpsetSocket {
            socket: NfnetlinkSocket::open()?,
            revisions: BTreeMap::new(),
        })
    }

    /// Sends one request and collects the payloads answered to it, until its ACK, error
    /// or end of dump; an error is worded for a set of `class`.
    fn exchange(
        &mut self,
        bytes: &[u8],
        seq: u32,
        op: &'static str,
        object: &str,
        class: SetClass,
    ) -> Result<Vec<Vec<u8>>> {
        let mut replies = Vec::new();
        self.socket.exchange(
            bytes,
            seq,
            op,
            object,
            |errno| errors::message(errno, class),
            |payload| replies.push(payload.to_vec()),
        )?;
        Ok(replies)
    }

    /// Every set in the kernel, with members for the sets `wanted` names.
    ///
    /// # Errors
    /// When the dump fails or a member of a wanted set cannot be decoded.
    pub fn list(&mut self, wanted: &dyn Fn(&str) -> bool) -> Result<BTreeMap<String, ObservedSet>> {
        let seq = self.socket.next_seq();
        let req = Request::new(Cmd::List, NLM_F_REQUEST | NLM_F_DUMP, seq).finish();
        let replies = self.exchange(&req, seq, "list", "ipsets", SetClass::Unknown)?;
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
        let seq = self.socket.next_seq();
        let req = Request::new(Cmd::Type, NLM_F_REQUEST | NLM_F_ACK, seq)
            .type_query(set_type, family)
            .finish();
        let replies = self.exchange(
            &req,
            seq,
            "query type",
            set_type.as_str(),
            SetClass::Unknown,
        )?;
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
        class: SetClass,
        build: impl FnOnce(Request) -> Request,
        cmd: Cmd,
    ) -> Result<()> {
        let seq = self.socket.next_seq();
        let req = build(Request::new(cmd, NLM_F_REQUEST | NLM_F_ACK, seq)).finish();
        self.exchange(&req, seq, op, object, class).map(drop)
    }

    /// One set and its members, or `None` when no such set exists.
    ///
    /// # Errors
    /// When the dump fails or a member cannot be decoded.
    pub fn list_set(&mut self, name: &str) -> Result<Option<ObservedSet>> {
        let seq = self.socket.next_seq();
        let req = Request::new(Cmd::List, NLM_F_REQUEST | NLM_F_DUMP, seq)
            .set_name(name)
            .finish();
        let replies = match self.exchange(&req, seq, "list", name, SetClass::Unknown) {
            Ok(replies) => replies,
            Err(err) if err.errno().is_some_and(is_missing) => return Ok(None),
            Err(err) => return Err(err),
        };
        let mut sets = BTreeMap::new();
        for payload in &replies {
            codec::decode_list(payload, &mut sets, &|_| true).ok_or_else(|| Error::Parse {
                what: "ipset list dump",
                line: 0,
                text: format!("{} bytes", payload.len()),
            })?;
        }
        Ok(sets.remove(name))
    }

    /// Carries out `ops` in order; member lists go out as ADT batches of thousands of
    /// members per message. Adding a member already there, or deleting one already
    /// gone, is success.
    ///
    /// # Errors
    /// At the first operation the kernel refuses (the earlier ones stay done).
    pub fn apply(&mut self, ops: &[SetOp]) -> Result<()> {
        for op in ops {
            match op {
                SetOp::Create(h) => {
                    let revision = self.revision(h.set_type, h.family)?;
                    self.simple(
                        "create set",
                        &h.name,
                        SetClass::of_type_name(h.set_type.as_str()),
                        |r| r.create(h, revision),
                        Cmd::Create,
                    )?;
                }
                SetOp::Destroy(name) => {
                    self.simple(
                        "destroy set",
                        name,
                        SetClass::Unknown,
                        |r| r.set_name(name),
                        Cmd::Destroy,
                    )?;
                }
                SetOp::Swap(a, b) => {
                    self.simple(
                        "swap sets",
                        &format!("{a} and {b}"),
                        SetClass::Unknown,
                        |r| r.set_name(a).set_name2(b),
                        Cmd::Swap,
                    )?;
                }
                SetOp::Add(name, members) => {
                    self.members(Cmd::Add, "add members to", name, members)?;
                }
                SetOp::Del(name, members) => {
                    self.members(Cmd::Del, "delete members from", name, members)?;
                }
            }
        }
        Ok(())
    }

    /// Adds or deletes `members` of set `name`, [`BATCH_BYTES`] of them per message.
    fn members(
        &mut self,
        cmd: Cmd,
        op: &'static str,
        name: &str,
        members: &[Member],
    ) -> Result<()> {
        // bitmap:port holds ports; every other kipvs set is a hash.
        let class = if matches!(members.first(), Some(Member::Port(_))) {
            SetClass::Bitmap
        } else {
            SetClass::Hash
        };
        let mut rest = members;
        while !rest.is_empty() {
            let seq = self.socket.next_seq();
            // No NLM_F_EXCL: the kernel then treats existing (or missing) members as success.
            let mut req = Request::new(cmd, NLM_F_REQUEST | NLM_F_ACK, seq)
                .set_name(name)
                .begin_adt();
            let mut taken = 0;
            for member in rest {
                if req.len() >= BATCH_BYTES {
                    break;
                }
                req.entry(member);
                taken += 1;
            }
            rest = &rest[taken..];
            let bytes = req.finish();
            self.exchange(&bytes, seq, op, name, class)?;
        }
        Ok(())
    }
}

/// Whether an errno says the set does not exist.
fn is_missing(errno: i32) -> bool {
    errno == ERR_MISSING
}

/// `ENOENT`: the kernel's answer about a set that does not exist (ipset's own code
/// 4098 is `IPSET_ERR_FIND_TYPE`, a set type without a module, not a missing set).
pub const ERR_MISSING: i32 = 2;
/// `IPSET_ERR_HASH_FULL`: a hash set holds `maxelem` members already.
pub const ERR_FULL: i32 = errors::IPSET_ERR_TYPE_SPECIFIC;
