//! Converging the kernel's sets: over nfnetlink ([`sync_sets`]: one dump, then ADT
//! batches), or with the `ipset` tool ([`sync_sets_with_tool`]: one `ipset save`, then
//! at most one `ipset restore`), whatever the number of entries.

use std::collections::{BTreeMap, BTreeSet};

use super::model::SetSpec;
use super::netlink::IpsetSocket;
use super::plan::{plan_sets, ObservedSet, SetOp};
use super::text::{parse_save, render_restore};
use crate::cmd::run;
use crate::Result;

/// The `ipset` program.
pub const IPSET: &str = "ipset";

/// What one [`sync_sets`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Sets created (temporary sets for regrowing included).
    pub created: usize,
    /// Members added.
    pub added: usize,
    /// Members deleted.
    pub deleted: usize,
    /// Sets swapped in after a regrow.
    pub swapped: usize,
    /// Whether anything was written (false when nothing differed).
    pub changed: bool,
}

impl SyncReport {
    fn log(&self) {
        tracing::info!(
            created = self.created,
            added = self.added,
            deleted = self.deleted,
            swapped = self.swapped,
            "ipsets converged"
        );
    }

    fn of(ops: &[SetOp]) -> SyncReport {
        let mut r = SyncReport {
            changed: !ops.is_empty(),
            ..SyncReport::default()
        };
        for op in ops {
            match op {
                SetOp::Create(_) => r.created += 1,
                SetOp::Add(..) => r.added += 1,
                SetOp::Del(..) => r.deleted += 1,
                SetOp::Swap(..) => r.swapped += 1,
                SetOp::Destroy(_) => {}
            }
        }
        r
    }
}

/// Reads every set in the kernel (members only for the sets named in `wanted`) with
/// one `ipset save`.
///
/// # Errors
/// When `ipset save` fails or prints something unexpected.
pub fn observe_with_tool(wanted: &BTreeSet<&str>) -> Result<BTreeMap<String, ObservedSet>> {
    let saved = run(IPSET, &["save"], None)?;
    parse_save(&saved, |name| wanted.contains(name))
}

/// Makes the kernel's sets equal `desired` (see [`plan_sets`]) over nfnetlink: one
/// list dump, the diff, then the changes (adds and deletes in ADT batches), or nothing
/// when nothing differs. Sets not in `desired` are left alone. Opens its socket in the
/// calling thread's network namespace.
///
/// # Errors
/// When the socket cannot be opened or the dump fails, or the kernel refuses a change
/// (the changes before it stay done).
pub fn sync_sets(desired: &[SetSpec]) -> Result<SyncReport> {
    let wanted: BTreeSet<&str> = desired.iter().map(SetSpec::name).collect();
    let mut socket = IpsetSocket::open()?;
    let observed = socket.list(&|name| wanted.contains(name))?;
    let ops = plan_sets(desired, &observed);
    let report = SyncReport::of(&ops);
    if ops.is_empty() {
        return Ok(report);
    }
    socket.apply(&ops)?;
    report.log();
    Ok(report)
}

/// [`sync_sets`] through the `ipset` tool: one `ipset save`, the diff, then one
/// `ipset -exist restore` carrying every change, or none when nothing differs.
///
/// # Errors
/// When `ipset` cannot be run, or the kernel refuses a change (`ipset restore` stops at
/// the first failing line; the error carries its message).
pub fn sync_sets_with_tool(desired: &[SetSpec]) -> Result<SyncReport> {
    let wanted: BTreeSet<&str> = desired.iter().map(SetSpec::name).collect();
    let observed = observe_with_tool(&wanted)?;
    let ops = plan_sets(desired, &observed);
    let report = SyncReport::of(&ops);
    if ops.is_empty() {
        return Ok(report);
    }
    run(IPSET, &["-exist", "restore"], Some(&render_restore(&ops)))?;
    report.log();
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
