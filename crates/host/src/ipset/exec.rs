//! Converging the kernel's sets with the `ipset` tool: one `ipset save` to read them,
//! and at most one `ipset restore` to change them, whatever the number of entries.

use std::collections::{BTreeMap, BTreeSet};

use super::model::SetSpec;
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
    /// Whether `ipset restore` ran (false when nothing differed).
    pub restored: bool,
}

impl SyncReport {
    fn of(ops: &[SetOp]) -> SyncReport {
        let mut r = SyncReport {
            restored: !ops.is_empty(),
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
pub fn observe(wanted: &BTreeSet<&str>) -> Result<BTreeMap<String, ObservedSet>> {
    let saved = run(IPSET, &["save"], None)?;
    parse_save(&saved, |name| wanted.contains(name))
}

/// Makes the kernel's sets equal `desired` (see [`plan_sets`]): one `ipset save`, the
/// diff, then one `ipset -exist restore` carrying every change, or none when nothing
/// differs. Sets not in `desired` are left alone.
///
/// # Errors
/// When `ipset` cannot be run, or the kernel refuses a change (`ipset restore` stops at
/// the first failing line; the error carries its message).
pub fn sync_sets(desired: &[SetSpec]) -> Result<SyncReport> {
    let wanted: BTreeSet<&str> = desired.iter().map(SetSpec::name).collect();
    let observed = observe(&wanted)?;
    let ops = plan_sets(desired, &observed);
    let report = SyncReport::of(&ops);
    if ops.is_empty() {
        return Ok(report);
    }
    run(IPSET, &["-exist", "restore"], Some(&render_restore(&ops)))?;
    tracing::info!(
        created = report.created,
        added = report.added,
        deleted = report.deleted,
        swapped = report.swapped,
        "ipsets converged"
    );
    Ok(report)
}

/// Destroys those of `names` that exist, in one `ipset restore`; returns how many.
/// Sets still referenced by iptables rules cannot be destroyed: remove the rules first.
///
/// # Errors
/// When `ipset` cannot be run or the kernel refuses (a set still in use).
pub fn destroy_sets(names: &[String]) -> Result<usize> {
    let existing = observe(&BTreeSet::new())?;
    let ops: Vec<SetOp> = names
        .iter()
        .filter(|n| existing.contains_key(n.as_str()))
        .map(|n| SetOp::Destroy(n.clone()))
        .collect();
    if !ops.is_empty() {
        run(IPSET, &["restore"], Some(&render_restore(&ops)))?;
    }
    Ok(ops.len())
}
