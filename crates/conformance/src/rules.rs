//! The README's table of intended differences, read as rules.
//!
//! The table sits under the heading [`HEADING`]. Its column `Rule` holds what the
//! comparison may excuse for that row: one or more code spans, each one rule:
//! - `` `SECTION SIDE REGEX` ``: a line only one capture has. SECTION names a capture
//!   section (`metrics`, `iptables`, ...), SIDE the capture that has the line
//!   (`kube-proxy` or `kipvs`), and REGEX must match that whole line.
//! - `` `SECTION changed REGEX => REPLACEMENT` ``: a line kipvs writes differently. A line
//!   only kipvs' capture has, matched whole by REGEX, and rewritten with REPLACEMENT
//!   (`$1` for groups), equals a line only kube-proxy's capture has: both are explained,
//!   and nothing else is.
//!
//! A `|` inside a rule is written `\|`, as Markdown tables require. A row whose rule
//! cell holds no code span (`—`) describes a difference no capture shows (behaviour over
//! time, say): it explains nothing. Rules apply to every scenario alike; nothing here
//! knows scenario names.

use std::fmt;

use regex::Regex;

use crate::capture::Section;

/// The heading the table sits under, as the README writes it.
pub const HEADING: &str = "## Intended differences from kube-proxy";

/// Which capture holds a line the other lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// Only kube-proxy's node has it.
    KubeProxy,
    /// Only kipvs' node has it.
    Kipvs,
}

impl Side {
    /// The side's name, as rules spell it.
    pub fn name(self) -> &'static str {
        match self {
            Side::KubeProxy => "kube-proxy",
            Side::Kipvs => "kipvs",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a rule excuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleKind {
    /// A line only this side's capture has.
    Only(Side),
    /// A kipvs line that, rewritten with this replacement, is kube-proxy's line.
    Changed(String),
}

/// One machine-readable rule of a row.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The row's `What` cell, to say which row explained a difference.
    pub row: String,
    /// The section the line is in.
    pub section: Section,
    /// What it excuses.
    pub kind: RuleKind,
    /// Matches the whole line (kipvs' line for [`RuleKind::Changed`]).
    pub pattern: Regex,
}

impl Rule {
    /// Whether this rule explains `line`, found only on `side` in `section`.
    pub fn explains(&self, section: Section, side: Side, line: &str) -> bool {
        self.section == section && self.kind == RuleKind::Only(side) && self.pattern.is_match(line)
    }

    /// For a [`RuleKind::Changed`] rule of `section` matching kipvs' `line`: the line
    /// kube-proxy would have written instead.
    pub fn kube_proxy_line(&self, section: Section, line: &str) -> Option<String> {
        match &self.kind {
            RuleKind::Changed(replacement)
                if self.section == section && self.pattern.is_match(line) =>
            {
                Some(
                    self.pattern
                        .replace(line, replacement.as_str())
                        .into_owned(),
                )
            }
            _ => None,
        }
    }
}

/// Why the table could not be read. Every problem is an error: a rule that silently
/// failed to load would turn an explained difference into a puzzle, or worse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// No heading [`HEADING`].
    #[error("the README has no heading {HEADING:?}")]
    NoHeading,
    /// The heading more than once: which table holds the rules would be a guess.
    #[error("the README has the heading {HEADING:?} more than once (lines {0:?})")]
    DuplicateHeading(Vec<usize>),
    /// No table under it, or one without a `Rule` column.
    #[error("no table with a `Rule` column under {HEADING:?}")]
    NoTable,
    /// A rule that does not read as `SECTION SIDE REGEX`.
    #[error("README line {line}: rule `{rule}`: {reason}")]
    BadRule {
        /// 1-based line of the README.
        line: usize,
        /// The rule as written.
        rule: String,
        /// What is wrong.
        reason: String,
    },
}

/// Reads every rule of the table under [`HEADING`] in `readme`.
///
/// # Errors
/// No heading, no table with a `Rule` column, or a rule that does not parse (unknown
/// section or side, invalid regex).
pub fn from_readme(readme: &str) -> Result<Vec<Rule>, RulesError> {
    let lines: Vec<&str> = readme.lines().collect();
    let headings: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_end() == HEADING)
        .map(|(i, _)| i)
        .collect();
    let start = match headings.as_slice() {
        [] => return Err(RulesError::NoHeading),
        [one] => *one,
        more => {
            return Err(RulesError::DuplicateHeading(
                more.iter().map(|i| i + 1).collect(),
            ))
        }
    };
    let mut rows = lines
        .iter()
        .enumerate()
        .skip(start + 1)
        .take_while(|(_, l)| !l.starts_with("## "))
        .skip_while(|(_, l)| !l.trim_start().starts_with('|'))
        .take_while(|(_, l)| l.trim_start().starts_with('|'));
    let (_, header) = rows.next().ok_or(RulesError::NoTable)?;
    let header = cells(header);
    let what = 0;
    let rule_column = header
        .iter()
        .position(|c| c.trim() == "Rule")
        .ok_or(RulesError::NoTable)?;
    let mut rules = Vec::new();
    for (n, row) in rows.skip(1) {
        let row = cells(row);
        let Some(cell) = row.get(rule_column) else {
            continue;
        };
        let name = row.get(what).map_or("", |w| w.trim()).to_owned();
        for span in code_spans(cell) {
            rules.push(
                parse_rule(&span, &name).map_err(|reason| RulesError::BadRule {
                    line: n + 1,
                    rule: span.clone(),
                    reason,
                })?,
            );
        }
    }
    Ok(rules)
}

fn parse_rule(span: &str, row: &str) -> Result<Rule, String> {
    let mut parts = span.trim().splitn(3, ' ');
    let (Some(section), Some(side), Some(regex)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("expected `SECTION SIDE REGEX`".into());
    };
    let section = Section::from_name(section).ok_or_else(|| {
        let known: Vec<_> = Section::ALL.iter().map(|s| s.name()).collect();
        format!("unknown section {section:?} (known: {})", known.join(", "))
    })?;
    let (kind, regex) = match side {
        "kube-proxy" => (RuleKind::Only(Side::KubeProxy), regex),
        "kipvs" => (RuleKind::Only(Side::Kipvs), regex),
        "changed" => {
            let (regex, replacement) = regex
                .split_once(" => ")
                .ok_or("expected `SECTION changed REGEX => REPLACEMENT`")?;
            (RuleKind::Changed(replacement.trim().to_owned()), regex)
        }
        other => {
            return Err(format!(
                "unknown side {other:?} (kube-proxy, kipvs or changed)"
            ))
        }
    };
    let pattern = Regex::new(&format!("^(?:{})$", regex.trim())).map_err(|e| e.to_string())?;
    Ok(Rule {
        row: row.to_owned(),
        section,
        kind,
        pattern,
    })
}

/// A table row's cells: split on `|` not escaped as `\|` (which becomes `|`), without
/// the empty cells outside the outer pipes.
fn cells(row: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut chars = row.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                if let Some(cell) = cells.last_mut() {
                    cell.push('|');
                }
            }
            '|' => cells.push(String::new()),
            c => {
                if let Some(cell) = cells.last_mut() {
                    cell.push(c);
                }
            }
        }
    }
    // "| a | b |" splits into "", " a ", " b ", "".
    if cells.first().is_some_and(|c| c.trim().is_empty()) {
        cells.remove(0);
    }
    if cells.last().is_some_and(|c| c.trim().is_empty()) {
        cells.pop();
    }
    cells
}

/// The contents of the single-backtick code spans in `text`.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = "# x

## Intended differences from kube-proxy

Some words.

| What | Why kipvs differs | Who it affects | Rule |
|---|---|---|---|
| Go runtime metrics | kipvs is not Go | dashboards | `metrics kube-proxy go_.*` `metric-labels kube-proxy go_.*\\{.*\\}` |
| Alternatives | a \\| b | nobody | `metrics kipvs kipvs_(a\\|b)` |
| Scheduler by annotation | a feature | users of it | `ipvs changed (-A \\S+ \\S+) -s \\S+( -b \\S+)?(.*) => $1 -s rr$3` |
| Restart keeps weights | over time | nobody | — |

## Next

| What | Rule |
|---|---|
| not read | `ipvs kipvs .*` |
";

    #[test]
    fn rules_come_from_the_table_under_the_heading_only() {
        let rules = from_readme(README).unwrap();
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[0].row, "Go runtime metrics");
        assert_eq!(rules[0].section, Section::Metrics);
        assert_eq!(rules[0].kind, RuleKind::Only(Side::KubeProxy));
        assert!(rules[0].explains(Section::Metrics, Side::KubeProxy, "go_goroutines"));
        assert!(!rules[0].explains(Section::Metrics, Side::Kipvs, "go_goroutines"));
        assert!(!rules[0].explains(Section::Ipvs, Side::KubeProxy, "go_goroutines"));
        assert!(rules[1].explains(Section::MetricLabels, Side::KubeProxy, "go_gc{quantile}"));
        // `\|` is a pipe inside the regex; the regex matches whole lines only.
        assert!(rules[2].explains(Section::Metrics, Side::Kipvs, "kipvs_b"));
        assert!(!rules[2].explains(Section::Metrics, Side::Kipvs, "kipvs_c"));
        assert!(!rules[2].explains(Section::Metrics, Side::Kipvs, "x_kipvs_a"));
        // A changed line: kipvs' line rewritten is kube-proxy's.
        assert_eq!(
            rules[3].kube_proxy_line(Section::Ipvs, "-A -t 10.96.10.20:80 -s mh -b mh-port -p 60"),
            Some("-A -t 10.96.10.20:80 -s rr -p 60".to_owned())
        );
        assert_eq!(
            rules[3].kube_proxy_line(Section::Ipset, "-A -t x -s mh"),
            None
        );
        assert!(!rules[3].explains(Section::Ipvs, Side::Kipvs, "-A -t x -s mh"));
    }

    #[test]
    fn a_bad_rule_or_a_missing_table_is_an_error_naming_the_line() {
        let bad = README.replace("`metrics kipvs kipvs_(a\\|b)`", "`metric kipvs x`");
        match from_readme(&bad) {
            Err(RulesError::BadRule { line, rule, reason }) => {
                assert_eq!(line, 10);
                assert_eq!(rule, "metric kipvs x");
                assert!(reason.contains("unknown section"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let bad = README.replace("`metrics kipvs kipvs_(a\\|b)`", "`metrics both x`");
        assert!(matches!(from_readme(&bad), Err(RulesError::BadRule { .. })));
        let bad = README.replace("`metrics kipvs kipvs_(a\\|b)`", "`ipvs changed x`");
        assert!(matches!(from_readme(&bad), Err(RulesError::BadRule { .. })));
        let bad = README.replace("`metrics kipvs kipvs_(a\\|b)`", "`metrics kipvs (`");
        assert!(matches!(from_readme(&bad), Err(RulesError::BadRule { .. })));
        assert_eq!(from_readme("# x\n").err(), Some(RulesError::NoHeading));
        assert_eq!(
            from_readme(&format!("{README}\n{HEADING}\n")).err(),
            Some(RulesError::DuplicateHeading(vec![3, 20]))
        );
        assert_eq!(
            from_readme("## Intended differences from kube-proxy\n\nnone\n").err(),
            Some(RulesError::NoTable)
        );
    }
}
