//! Carrying the rules out: one `iptables-save` to read, at most one
//! `iptables-restore --noflush` to write.

use super::backend::Backend;
use super::diff::{cleanup_input, parse_save, restore_input, Observed};
use super::render::render;
use super::spec::RuleSpec;
use crate::cmd::run;
use kipvs_ipvs::Family;

use crate::Result;

/// One family's iptables (`iptables` or `ip6tables`) on one backend.
#[derive(Debug, Clone)]
pub struct Iptables {
    family: Family,
    command: String,
    save: String,
    restore: String,
}

impl Iptables {
    /// The tools of `backend` for `family`.
    pub fn new(backend: Backend, family: Family) -> Iptables {
        Iptables {
            family,
            command: backend.program(family, ""),
            save: backend.program(family, "save"),
            restore: backend.program(family, "restore"),
        }
    }

    /// The family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Whether this family's iptables works on the node: kube-proxy's `Present()`,
    /// which lists the `nat` table's `POSTROUTING` chain (`ip6tables -w 5 -S POSTROUTING
    /// -t nat`). kube-proxy runs a family only where this succeeds.
    ///
    /// # Errors
    /// When the program is missing or cannot list the chain (no `nat` table: the
    /// kernel's modules are missing, or IPv6 is disabled at boot).
    pub fn present(&self) -> Result<()> {
        run(
            &self.command,
            &["-w", "5", "-S", "POSTROUTING", "-t", "nat"],
            None,
        )
        .map(|_| ())
    }

    /// Reads the `nat` and `filter` tables with one `iptables-save`.
    ///
    /// # Errors
    /// When `iptables-save` fails or prints something unexpected.
    pub fn observe(&self) -> Result<Observed> {
        parse_save(&run(&self.save, &[], None)?)
    }

    /// Makes the kernel hold the ruleset of `spec`: reads the tables, and only when
    /// something differs runs one `iptables-restore --noflush` (see
    /// [`super::restore_input`]). Returns whether it ran. The ipsets the rules match must
    /// exist first (sync the sets before the rules).
    ///
    /// # Errors
    /// When reading fails, or `iptables-restore` refuses the input (its stderr says
    /// which line).
    pub fn sync(&self, spec: &RuleSpec) -> Result<bool> {
        let desired = render(spec);
        let Some(input) = restore_input(&desired, &self.observe()?) else {
            return Ok(false);
        };
        run(&self.restore, &["--noflush", "--counters"], Some(&input))?;
        tracing::info!(family = ?self.family, "iptables rules written");
        Ok(true)
    }

    /// Removes kipvs' jumps and chains (see [`super::cleanup_input`]); returns whether
    /// anything was left to remove.
    ///
    /// # Errors
    /// When reading fails or `iptables-restore` refuses.
    pub fn cleanup(&self) -> Result<bool> {
        let Some(input) = cleanup_input(&self.observe()?) else {
            return Ok(false);
        };
        run(&self.restore, &["--noflush"], Some(&input))?;
        tracing::info!(family = ?self.family, "iptables rules removed");
        Ok(true)
    }
}
