//! The ipset executor: kipvs' sets in the kernel, read in one dump, written in ADT
//! batches, and kept big enough for their members. `kipvs run` carries out the ipset
//! part of every Plan through [`IpsetExecutor`]; [`sync_sets`] (tests, benchmarks)
//! converges whole sets through the same executor.

use std::collections::{BTreeMap, BTreeSet};

use kipvs_ipvs::Family;
use kipvs_proxy::{Member, SetName};

use super::catalog::KubeSets;
use super::netlink::{IpsetSocket, ERR_FULL};
use super::plan::{may_shrink, must_grow, regrow_ops, temp_name, SetHeader, SetOp};
use crate::{Error, Result};

/// What an [`IpsetExecutor`] call (or [`sync_sets`]) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Sets created (the temporary sets of regrows not included).
    pub created: usize,
    /// Members added.
    pub added: usize,
    /// Members deleted.
    pub deleted: usize,
    /// Sets rebuilt at another size (grown or shrunk) and swapped in.
    pub swapped: usize,
    /// Whether anything was written (false when nothing differed).
    pub changed: bool,
}

impl SyncReport {
    fn merge(&mut self, other: &SyncReport) {
        self.created += other.created;
        self.added += other.added;
        self.deleted += other.deleted;
        self.swapped += other.swapped;
        self.changed |= other.changed;
    }
}

/// What the executor knows of a set's size: its `maxelem` (none for bitmaps) and how
/// many members it holds (exact after a read; between reads, the writes since are
/// counted, so it may run high, never low unless someone else deletes members).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size {
    maxelem: Option<u32>,
    entries: usize,
}

/// kipvs' ipsets (both families of kube-proxy's catalog) over one nfnetlink socket,
/// bound to the network namespace it was opened in.
///
/// A set that must hold more members than its `maxelem` is regrown: a temporary set
/// sized for them ([`super::sizing`]) is created and filled, swapped in (atomically:
/// iptables rules match the set by name and never see it half-filled or empty), and the
/// old contents destroyed. A set left four times larger than its members need is
/// rebuilt smaller the same way.
#[derive(Debug)]
pub struct IpsetExecutor {
    socket: IpsetSocket,
    sizes: BTreeMap<SetName, Size>,
}

/// Groups `entries` by set, keeping their order within each set.
fn by_set(entries: &[(SetName, Member)]) -> BTreeMap<SetName, Vec<Member>> {
    let mut sets: BTreeMap<SetName, Vec<Member>> = BTreeMap::new();
    for (set, member) in entries {
        sets.entry(*set).or_default().push(*member);
    }
    sets
}

impl IpsetExecutor {
    /// Opens the socket in the calling thread's network namespace.
    ///
    /// # Errors
    /// When the socket cannot be created or bound.
    pub fn open() -> Result<IpsetExecutor> {
        Ok(IpsetExecutor {
            socket: IpsetSocket::open()?,
            sizes: BTreeMap::new(),
        })
    }

    /// Creates every set of kube-proxy's catalog for `families` (those kipvs runs) that
    /// is missing, at kube-proxy's size; sets that exist are left as they are (never
    /// flushed), and sets of other families are not looked at. A temporary set left by
    /// an interrupted regrow is destroyed. Returns how many sets were created.
    ///
    /// # Errors
    /// When the sets cannot be listed or the kernel refuses a create.
    pub fn ensure_sets(&mut self, families: &[Family]) -> Result<usize> {
        let existing = self.socket.list(&|_| false)?;
        if existing.contains_key(&temp_name()) {
            self.socket.apply(&[SetOp::Destroy(temp_name())])?;
        }
        let mut created = 0;
        for set in SetName::all().filter(|s| families.contains(&s.family)) {
            match existing.get(&set.to_string()) {
                Some(found) => self.note(set, found.maxelem, found.entries),
                None => {
                    let header = SetHeader::of(set, 0);
                    self.socket.apply(&[SetOp::Create(header.clone())])?;
                    self.note(set, header.limit(), 0);
                    created += 1;
                }
            }
        }
        if created > 0 {
            tracing::info!(created, "ipsets created");
        }
        Ok(created)
    }

    fn note(&mut self, set: SetName, maxelem: Option<u32>, entries: usize) {
        self.sizes.insert(set, Size { maxelem, entries });
    }

    /// The members of every one of kipvs' sets in the kernel (one dump), by the core's
    /// set names; what it learns of their sizes drives the regrows that follow.
    ///
    /// # Errors
    /// When the dump fails or a member cannot be decoded.
    pub fn read(&mut self) -> Result<BTreeMap<SetName, BTreeSet<Member>>> {
        let listed = self.socket.list(&|name| SetName::parse(name).is_some())?;
        self.sizes.clear();
        let mut sets = BTreeMap::new();
        for (name, set) in listed {
            if let Some(name) = SetName::parse(&name) {
                self.note(name, set.maxelem, set.entries.max(set.members.len()));
                sets.insert(name, set.members);
            }
        }
        Ok(sets)
    }

    /// What is known of `set`'s size; a set the executor has not seen is looked up, and
    /// created (sized for `members`) when it does not exist.
    fn size(&mut self, set: SetName, members: usize, report: &mut SyncReport) -> Result<Size> {
        if let Some(size) = self.sizes.get(&set) {
            return Ok(*size);
        }
        let size = match self.socket.list_set(&set.to_string())? {
            Some(found) => Size {
                maxelem: found.maxelem,
                entries: found.entries.max(found.members.len()),
            },
            None => {
                let header = SetHeader::of(set, members);
                self.socket.apply(&[SetOp::Create(header.clone())])?;
                report.created += 1;
                report.changed = true;
                Size {
                    maxelem: header.limit(),
                    entries: 0,
                }
            }
        };
        self.sizes.insert(set, size);
        Ok(size)
    }

    /// Rebuilds `set` holding its members now in the kernel plus `adds`, sized for
    /// them, and swaps it in.
    fn regrow(&mut self, set: SetName, adds: &[Member], report: &mut SyncReport) -> Result<()> {
        let name = set.to_string();
        let current = self.socket.list_set(&name)?.ok_or_else(|| Error::Netlink {
            op: "regrow set",
            object: name.clone(),
            errno: Some(super::netlink::ERR_MISSING),
            message: "set does not exist".to_owned(),
        })?;
        let from = current.maxelem;
        let before = current.members.len();
        let mut members = current.members;
        members.extend(adds.iter().copied());
        let after = members.len();
        // A temporary set left by an interrupted regrow goes first.
        if self.socket.list_set(&temp_name())?.is_some() {
            self.socket.apply(&[SetOp::Destroy(temp_name())])?;
        }
        let maxelem = SetHeader::of(set, after).limit();
        self.socket
            .apply(&regrow_ops(set, members.into_iter().collect()))?;
        tracing::info!(set = %name, members = after, from_maxelem = ?from, to_maxelem = ?maxelem, "ipset rebuilt at a new size and swapped in");
        self.note(set, maxelem, after);
        report.added += after.saturating_sub(before);
        report.swapped += 1;
        report.changed = true;
        Ok(())
    }

    fn add_to(&mut self, set: SetName, adds: &[Member], report: &mut SyncReport) -> Result<()> {
        let size = self.size(set, adds.len(), report)?;
        if must_grow(size.maxelem, size.entries + adds.len()) {
            return self.regrow(set, adds, report);
        }
        match self
            .socket
            .apply(&[SetOp::Add(set.to_string(), adds.to_vec())])
        {
            Ok(()) => {}
            // Fuller than counted (someone else added members): regrow now.
            Err(err) if err.errno() == Some(ERR_FULL) => return self.regrow(set, adds, report),
            Err(err) => return Err(err),
        }
        self.note(set, size.maxelem, size.entries + adds.len());
        report.added += adds.len();
        report.changed = true;
        Ok(())
    }

    fn delete_from(
        &mut self,
        set: SetName,
        dels: &[Member],
        report: &mut SyncReport,
    ) -> Result<()> {
        let size = self.size(set, 0, report)?;
        self.socket
            .apply(&[SetOp::Del(set.to_string(), dels.to_vec())])?;
        let entries = size.entries.saturating_sub(dels.len());
        self.note(set, size.maxelem, entries);
        report.deleted += dels.len();
        report.changed = true;
        if may_shrink(size.maxelem, entries) {
            self.regrow(set, &[], report)?;
        }
        Ok(())
    }

    /// Adds `entries` (the core's `(set, member)` pairs), set by set in ADT batches. A
    /// set that would hold more than its `maxelem` is regrown first (see
    /// [`IpsetExecutor`]); a missing set is created, sized for its members.
    ///
    /// # Errors
    /// The first set the kernel refused; every other set is still written.
    pub fn add(&mut self, entries: &[(SetName, Member)]) -> Result<SyncReport> {
        self.each_set(entries, Self::add_to)
    }

    /// Deletes `entries`, set by set in ADT batches; a set left four times larger than
    /// its members need is rebuilt smaller.
    ///
    /// # Errors
    /// The first set the kernel refused; every other set is still written.
    pub fn delete(&mut self, entries: &[(SetName, Member)]) -> Result<SyncReport> {
        self.each_set(entries, Self::delete_from)
    }

    fn each_set(
        &mut self,
        entries: &[(SetName, Member)],
        write: fn(&mut Self, SetName, &[Member], &mut SyncReport) -> Result<()>,
    ) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let mut first_error = None;
        for (set, members) in by_set(entries) {
            if let Err(err) = write(self, set, &members, &mut report) {
                // What the kernel holds is no longer known: read it again when needed.
                self.sizes.remove(&set);
                first_error.get_or_insert(err);
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(report),
        }
    }
}

/// Makes the kernel's sets of `sets`' family equal `sets` (every set of the catalog,
/// empty ones included) through an [`IpsetExecutor`]: one dump, then the missing
/// members added and the stale ones deleted, regrowing what must be. Sets of the other
/// family and foreign sets are left alone. Opens its socket in the calling thread's
/// network namespace.
///
/// # Errors
/// When the socket cannot be opened or the dump fails, or the kernel refuses a change
/// (the changes before it stay done).
pub fn sync_sets(sets: &KubeSets) -> Result<SyncReport> {
    let mut executor = IpsetExecutor::open()?;
    let current = executor.read()?;
    let mut adds = Vec::new();
    let mut dels = Vec::new();
    let mut report = SyncReport::default();
    for (set, desired) in sets.sets() {
        let empty = BTreeSet::new();
        let have = match current.get(&set) {
            Some(have) => have,
            None => {
                // Created at its size at once, rather than regrown right after.
                let header = SetHeader::of(set, desired.len());
                executor.socket.apply(&[SetOp::Create(header.clone())])?;
                executor.note(set, header.limit(), 0);
                report.created += 1;
                report.changed = true;
                &empty
            }
        };
        adds.extend(desired.difference(have).map(|m| (set, *m)));
        dels.extend(have.difference(desired).map(|m| (set, *m)));
    }
    report.merge(&executor.add(&adds)?);
    report.merge(&executor.delete(&dels)?);
    if report.changed {
        tracing::info!(
            created = report.created,
            added = report.added,
            deleted = report.deleted,
            swapped = report.swapped,
            "ipsets converged"
        );
    }
    Ok(report)
}

/// Destroys those of `names` that exist; returns how many. Sets still referenced by
/// iptables rules cannot be destroyed: remove the rules first.
///
/// # Errors
/// When the socket cannot be opened or the kernel refuses (a set still in use).
pub fn destroy_sets(names: &[String]) -> Result<usize> {
    let mut socket = IpsetSocket::open()?;
    let existing = socket.list(&|_| false)?;
    let ops: Vec<SetOp> = names
        .iter()
        .filter(|n| existing.contains_key(n.as_str()))
        .map(|n| SetOp::Destroy(n.clone()))
        .collect();
    socket.apply(&ops)?;
    Ok(ops.len())
}
