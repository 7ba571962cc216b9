//! Reading `iptables-save` and deciding what `iptables-restore --noflush` must be told
//! (pure).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::render::{jumps, Ruleset, Table, OWN_CHAINS};
use crate::{Error, Result};

/// The chains of the tables kipvs writes to, as `iptables-save` printed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// For each table, every chain (built-in ones included) with its rules, each without
    /// the `-A CHAIN ` prefix.
    pub tables: BTreeMap<Table, BTreeMap<String, Vec<String>>>,
}

impl Observed {
    /// The rules of `chain` in `table`, `None` when the chain does not exist.
    pub fn chain(&self, table: Table, chain: &str) -> Option<&Vec<String>> {
        self.tables.get(&table)?.get(chain)
    }
}

/// Parses `iptables-save` output, keeping the `nat` and `filter` tables.
///
/// # Errors
/// When a rule names a chain that was not declared, or a line is not understood.
pub fn parse_save(text: &str) -> Result<Observed> {
    let mut observed = Observed::default();
    let mut table: Option<Table> = None;
    let mut skipping = false;
    for (n, line) in text.lines().enumerate() {
        let bad = || Error::Parse {
            what: "iptables-save",
            line: n + 1,
            text: line.to_owned(),
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            table = match name {
                "nat" => Some(Table::Nat),
                "filter" => Some(Table::Filter),
                _ => None,
            };
            skipping = table.is_none();
            if let Some(t) = table {
                observed.tables.entry(t).or_default();
            }
            continue;
        }
        if line == "COMMIT" {
            table = None;
            skipping = false;
            continue;
        }
        if skipping {
            continue;
        }
        let t = table.ok_or_else(bad)?;
        let chains = observed.tables.entry(t).or_default();
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_ascii_whitespace().next().ok_or_else(bad)?;
            chains.entry(name.to_owned()).or_default();
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, rest) = rule.split_once(' ').unwrap_or((rule, ""));
            chains
                .get_mut(chain)
                .ok_or_else(bad)?
                .push(rest.trim().to_owned());
        } else {
            return Err(bad());
        }
    }
    Ok(observed)
}

/// The `iptables-restore --noflush` input that makes the kernel hold `desired`, or
/// `None` when it already does.
///
/// A table is rewritten only when one of kipvs' chains in it differs (or is missing) or
/// one of its jumps is missing: every kipvs chain of that table is declared (which, with
/// `--noflush`, flushes it) and refilled, and missing jumps are inserted at the top of
/// their built-in chains. Other chains and rules are never named.
pub fn restore_input(desired: &Ruleset, observed: &Observed) -> Option<String> {
    let mut out = String::new();
    for table in Table::ALL {
        let chains: Vec<_> = desired.chains.iter().filter(|c| c.table == table).collect();
        let missing_jumps: Vec<_> = desired
            .jumps
            .iter()
            .filter(|j| j.table == table)
            .filter(|j| {
                !observed
                    .chain(table, j.from)
                    .is_some_and(|r| r.contains(&j.rule))
            })
            .collect();
        let chains_differ = chains
            .iter()
            .any(|c| observed.chain(table, c.name) != Some(&c.rules));
        if !chains_differ && missing_jumps.is_empty() {
            continue;
        }
        // Writing to a String cannot fail.
        let _ = writeln!(out, "*{table}");
        for c in &chains {
            let _ = writeln!(out, ":{} - [0:0]", c.name);
        }
        for c in &chains {
            for rule in &c.rules {
                let _ = writeln!(out, "-A {} {rule}", c.name);
            }
        }
        for j in missing_jumps {
            let _ = writeln!(out, "-I {} 1 {}", j.from, j.rule);
        }
        out.push_str("COMMIT\n");
    }
    (!out.is_empty()).then_some(out)
}

/// Whether `rule` jumps (or goes) to `chain`.
fn targets(rule: &str, chain: &str) -> bool {
    let mut words = rule.split_ascii_whitespace();
    while let Some(w) = words.next() {
        if (w == "-j" || w == "-g") && words.next() == Some(chain) {
            return true;
        }
    }
    false
}

/// The `iptables-restore --noflush` input that removes what kipvs installed: its jumps
/// from the built-in chains, then its chains (flushed, then deleted). A kipvs chain that
/// a foreign rule still jumps to is flushed but kept, so the restore cannot fail on it.
/// `None` when nothing of kipvs' is left.
pub fn cleanup_input(observed: &Observed) -> Option<String> {
    let jumps = jumps();
    let mut out = String::new();
    for table in Table::ALL {
        let Some(chains) = observed.tables.get(&table) else {
            continue;
        };
        let own: Vec<&str> = OWN_CHAINS
            .iter()
            .filter(|(t, name)| *t == table && chains.contains_key(*name))
            .map(|(_, name)| *name)
            .collect();
        let present_jumps: Vec<_> = jumps
            .iter()
            .filter(|j| j.table == table)
            .filter(|j| {
                observed
                    .chain(table, j.from)
                    .is_some_and(|r| r.contains(&j.rule))
            })
            .collect();
        if own.is_empty() && present_jumps.is_empty() {
            continue;
        }
        let is_own = |name: &str| own.contains(&name);
        let _ = writeln!(out, "*{table}");
        for name in &own {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        for j in &present_jumps {
            let _ = writeln!(out, "-D {} {}", j.from, j.rule);
        }
        for name in &own {
            let foreign_reference = chains.iter().any(|(chain, rules)| {
                !is_own(chain)
                    && rules.iter().any(|r| {
                        targets(r, name)
                            && !present_jumps
                                .iter()
                                .any(|j| j.from == chain && &j.rule == r)
                    })
            });
            if foreign_reference {
                tracing::warn!(%table, chain = name, "a foreign rule jumps to this chain; flushed, not deleted");
            } else {
                let _ = writeln!(out, "-X {name}");
            }
        }
        out.push_str("COMMIT\n");
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipset::KubeSets;
    use crate::iptables::render::render;
    use crate::iptables::{RuleConfig, RuleSpec};
    use kipvs_ipvs::Family;

    fn desired() -> Ruleset {
        render(&RuleSpec::new(
            &KubeSets::new(Family::V4),
            RuleConfig::default(),
        ))
    }

    /// What `iptables-save` prints for a ruleset applied to an empty namespace.
    fn as_saved(set: &Ruleset) -> String {
        let mut out = String::from("# Generated by iptables-save v1.8.9 (nf_tables)\n");
        for table in Table::ALL {
            out.push_str(&format!("*{table}\n"));
            let builtins: &[&str] = match table {
                Table::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
                Table::Filter => &["INPUT", "FORWARD", "OUTPUT"],
            };
            for b in builtins {
                out.push_str(&format!(":{b} ACCEPT [0:0]\n"));
            }
            for c in set.chains.iter().filter(|c| c.table == table) {
                out.push_str(&format!(":{} - [0:0]\n", c.name));
            }
            for j in set.jumps.iter().filter(|j| j.table == table) {
                out.push_str(&format!("-A {} {}\n", j.from, j.rule));
            }
            for c in set.chains.iter().filter(|c| c.table == table) {
                for r in &c.rules {
                    out.push_str(&format!("-A {} {r}\n", c.name));
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }

    #[test]
    fn an_empty_kernel_gets_every_chain_and_jump() {
        let input = restore_input(&desired(), &Observed::default()).unwrap();
        assert!(input.starts_with("*nat\n:KUBE-SERVICES - [0:0]\n"));
        assert!(input.contains(
            "-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert_eq!(input.matches("COMMIT").count(), 2);
    }

    #[test]
    fn a_kernel_that_matches_needs_no_restore() {
        let set = desired();
        let observed = parse_save(&as_saved(&set)).unwrap();
        assert_eq!(restore_input(&set, &observed), None);
    }

    #[test]
    fn only_the_table_that_differs_is_rewritten() {
        let set = desired();
        let mut observed = parse_save(&as_saved(&set)).unwrap();
        observed
            .tables
            .get_mut(&Table::Filter)
            .unwrap()
            .get_mut("KUBE-FORWARD")
            .unwrap()
            .pop();
        let input = restore_input(&set, &observed).unwrap();
        assert!(input.starts_with("*filter\n"), "{input}");
        assert!(!input.contains("*nat"));
        assert!(!input.contains("-I "), "jumps are all there: {input}");
    }

    #[test]
    fn foreign_chains_and_rules_are_never_named() {
        let set = desired();
        let mut saved = as_saved(&set);
        saved = saved.replace("*filter\n", "*filter\n:FOREIGN - [0:0]\n");
        saved = saved.replace(
            ":FOREIGN - [0:0]\n",
            ":FOREIGN - [0:0]\n-A FOREIGN -j ACCEPT\n",
        );
        let mut observed = parse_save(&saved).unwrap();
        observed
            .tables
            .get_mut(&Table::Nat)
            .unwrap()
            .remove("KUBE-MARK-MASQ");
        let input = restore_input(&set, &observed).unwrap();
        assert!(!input.contains("FOREIGN"));
        let cleanup = cleanup_input(&observed).unwrap();
        assert!(!cleanup.contains("FOREIGN"), "{cleanup}");
    }

    #[test]
    fn cleanup_removes_jumps_then_chains_and_keeps_chains_foreign_rules_use() {
        let set = desired();
        let saved = as_saved(&set).replace(
            ":KUBE-FORWARD - [0:0]\n",
            ":KUBE-FORWARD - [0:0]\n:FOREIGN - [0:0]\n",
        ) + "*filter\n-A FOREIGN -j KUBE-FORWARD\nCOMMIT\n";
        let observed = parse_save(&saved).unwrap();
        let input = cleanup_input(&observed).unwrap();
        assert!(input.contains(
            "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert!(input.contains("-X KUBE-SERVICES\n"));
        assert!(!input.contains("-X KUBE-FORWARD\n"), "{input}");
        assert!(input.contains(":KUBE-FORWARD - [0:0]\n"));
        assert_eq!(cleanup_input(&Observed::default()), None);
    }
}
