//! Comparing kube-proxy's capture with kipvs': every line one has and the other lacks is
//! a difference, and each difference is either explained by a rule of the README's
//! table or not.
//!
//! Sections whose order means nothing are compared as multisets of lines; ordered ones
//! (rules inside an iptables chain) as sequences, with a longest-common-subsequence
//! diff, so a rule in another place shows as one line only in kube-proxy's capture and
//! one only in kipvs'.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::capture::{Capture, Section};
use crate::rules::{Rule, Side};

/// A line one capture has and the other lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The section.
    pub section: Section,
    /// The capture that has the line.
    pub side: Side,
    /// The line.
    pub line: String,
}

/// Every difference between the two captures, section by section.
pub fn differences(kube_proxy: &Capture, kipvs: &Capture) -> Vec<Difference> {
    let mut out = Vec::new();
    for section in Section::ALL {
        let (a, b) = (kube_proxy.lines(section), kipvs.lines(section));
        let (only_a, only_b) = if section.ordered() {
            sequence_diff(a, b)
        } else {
            multiset_diff(a, b)
        };
        let mut push = |side, lines: Vec<&String>| {
            out.extend(lines.into_iter().map(|line| Difference {
                section,
                side,
                line: line.clone(),
            }));
        };
        push(Side::KubeProxy, only_a);
        push(Side::Kipvs, only_b);
    }
    out
}

/// Lines of `a` not matched in `b` and of `b` not matched in `a`, counting repeats.
fn multiset_diff<'a>(a: &'a [String], b: &'a [String]) -> (Vec<&'a String>, Vec<&'a String>) {
    let mut counts: BTreeMap<&String, isize> = BTreeMap::new();
    for line in a {
        *counts.entry(line).or_default() += 1;
    }
    for line in b {
        *counts.entry(line).or_default() -= 1;
    }
    let mut only_a = Vec::new();
    let mut only_b = Vec::new();
    for (line, n) in counts {
        for _ in 0..n.unsigned_abs() {
            if n > 0 {
                only_a.push(line);
            } else {
                only_b.push(line);
            }
        }
    }
    (only_a, only_b)
}

/// The lines outside a longest common subsequence of `a` and `b`, in order.
fn sequence_diff<'a>(a: &'a [String], b: &'a [String]) -> (Vec<&'a String>, Vec<&'a String>) {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[prefix..], &b[prefix..]);
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a, b) = (&a[..a.len() - suffix], &b[..b.len() - suffix]);
    // lcs[i][j]: the LCS length of a[i..] and b[j..].
    let width = b.len() + 1;
    let mut lcs = vec![0usize; (a.len() + 1) * width];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i * width + j] = if a[i] == b[j] {
                lcs[(i + 1) * width + j + 1] + 1
            } else {
                lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut only_a = Vec::new();
    let mut only_b = Vec::new();
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            i += 1;
            j += 1;
        } else if lcs[(i + 1) * width + j] >= lcs[i * width + j + 1] {
            only_a.push(&a[i]);
            i += 1;
        } else {
            only_b.push(&b[j]);
            j += 1;
        }
    }
    only_a.extend(&a[i..]);
    only_b.extend(&b[j..]);
    (only_a, only_b)
}

/// A difference and the row that explains it, if one does.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The difference.
    pub difference: Difference,
    /// The `What` of the first row whose rule matches it.
    pub explained_by: Option<String>,
}

/// How a scenario came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The captures are the same.
    Identical,
    /// Every difference is explained by the table.
    Explained,
    /// At least one difference is not.
    Unexplained,
}

/// The judged differences of two captures.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Every difference, judged.
    pub judged: Vec<Judged>,
}

impl Comparison {
    /// Compares the captures and judges each difference against `rules`: first the
    /// `changed` rules pair a kipvs line with the kube-proxy line it stands for, then
    /// each remaining difference is matched against the one-sided rules.
    pub fn new(kube_proxy: &Capture, kipvs: &Capture, rules: &[Rule]) -> Comparison {
        let mut judged: Vec<Judged> = differences(kube_proxy, kipvs)
            .into_iter()
            .map(|difference| Judged {
                difference,
                explained_by: None,
            })
            .collect();
        for i in 0..judged.len() {
            if judged[i].difference.side != Side::Kipvs || judged[i].explained_by.is_some() {
                continue;
            }
            let d = judged[i].difference.clone();
            for rule in rules {
                let Some(wanted) = rule.kube_proxy_line(d.section, &d.line) else {
                    continue;
                };
                let partner = judged.iter().position(|j| {
                    j.explained_by.is_none()
                        && j.difference.side == Side::KubeProxy
                        && j.difference.section == d.section
                        && j.difference.line == wanted
                });
                if let Some(p) = partner {
                    judged[p].explained_by = Some(rule.row.clone());
                    judged[i].explained_by = Some(rule.row.clone());
                    break;
                }
            }
        }
        for j in judged.iter_mut().filter(|j| j.explained_by.is_none()) {
            let d = &j.difference;
            j.explained_by = rules
                .iter()
                .find(|r| r.explains(d.section, d.side, &d.line))
                .map(|r| r.row.clone());
        }
        Comparison { judged }
    }

    /// The outcome: identical, all explained, or not.
    pub fn outcome(&self) -> Outcome {
        if self.judged.is_empty() {
            Outcome::Identical
        } else if self.judged.iter().all(|j| j.explained_by.is_some()) {
            Outcome::Explained
        } else {
            Outcome::Unexplained
        }
    }

    /// The differences no rule explains.
    pub fn unexplained(&self) -> impl Iterator<Item = &Difference> {
        self.judged
            .iter()
            .filter(|j| j.explained_by.is_none())
            .map(|j| &j.difference)
    }

    /// A report, one line per difference: `UNEXPLAINED` ones first, then each explained
    /// one with its row; `-` marks lines only kube-proxy's node has, `+` kipvs' own.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let sign = |side| match side {
            Side::KubeProxy => '-',
            Side::Kipvs => '+',
        };
        for j in self.judged.iter().filter(|j| j.explained_by.is_none()) {
            let d = &j.difference;
            let _ = writeln!(
                out,
                "  UNEXPLAINED {} {}{} (only {})",
                d.section,
                sign(d.side),
                d.line,
                d.side
            );
        }
        for j in &self.judged {
            if let Some(row) = &j.explained_by {
                let d = &j.difference;
                let _ = writeln!(
                    out,
                    "  explained   {} {}{} [{row}]",
                    d.section,
                    sign(d.side),
                    d.line
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::from_readme;

    fn capture(section: Section, lines: &[&str]) -> Capture {
        let mut c = Capture::new();
        c.set(section, lines.iter().map(|l| (*l).to_owned()).collect());
        c
    }

    fn lines(diffs: &[Difference], side: Side) -> Vec<&str> {
        diffs
            .iter()
            .filter(|d| d.side == side)
            .map(|d| d.line.as_str())
            .collect()
    }

    #[test]
    fn unordered_sections_differ_by_the_lines_each_lacks_whatever_the_order() {
        let a = capture(Section::Ipvs, &["x", "y", "z", "z"]);
        let b = capture(Section::Ipvs, &["z", "w", "y"]);
        let d = differences(&a, &b);
        assert_eq!(lines(&d, Side::KubeProxy), ["x", "z"]);
        assert_eq!(lines(&d, Side::Kipvs), ["w"]);
        assert!(differences(&a, &capture(Section::Ipvs, &["z", "z", "y", "x"])).is_empty());
    }

    #[test]
    fn ordered_sections_see_a_moved_rule_as_removed_and_added() {
        let a = capture(
            Section::Iptables,
            &["nat :C -", "nat -A C 1", "nat -A C 2", "nat -A C 3"],
        );
        let b = capture(
            Section::Iptables,
            &["nat :C -", "nat -A C 2", "nat -A C 1", "nat -A C 3"],
        );
        let d = differences(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(lines(&d, Side::KubeProxy).len(), 1);
        assert_eq!(lines(&d, Side::KubeProxy), lines(&d, Side::Kipvs));
        let c = capture(
            Section::Iptables,
            &["nat :C -", "nat -A C 1", "nat -A C 9", "nat -A C 3"],
        );
        let d = differences(&a, &c);
        assert_eq!(lines(&d, Side::KubeProxy), ["nat -A C 2"]);
        assert_eq!(lines(&d, Side::Kipvs), ["nat -A C 9"]);
    }

    #[test]
    fn a_difference_is_explained_only_by_a_rule_of_its_section_and_side() {
        let readme = "## Intended differences from kube-proxy\n\n| What | Why | Who | Rule |\n|---|---|---|---|\n| Go | not Go | dashboards | `metrics kube-proxy go_.*` |\n";
        let rules = from_readme(readme).unwrap();
        let mut a = capture(Section::Metrics, &["go_goroutines", "kubeproxy_x"]);
        a.set(Section::Ipvs, vec!["go_goroutines".into()]);
        let b = capture(Section::Metrics, &["kubeproxy_x", "go_threads"]);
        let cmp = Comparison::new(&a, &b, &rules);
        assert_eq!(cmp.outcome(), Outcome::Unexplained);
        let unexplained: Vec<_> = cmp.unexplained().map(|d| (d.section, d.side)).collect();
        assert_eq!(
            unexplained,
            [
                (Section::Ipvs, Side::KubeProxy),
                (Section::Metrics, Side::Kipvs)
            ]
        );
        let report = cmp.report();
        assert!(
            report.contains("UNEXPLAINED metrics +go_threads (only kipvs)"),
            "{report}"
        );
        assert!(
            report.contains("explained   metrics -go_goroutines [Go]"),
            "{report}"
        );

        let only_go = Comparison::new(&a, &capture(Section::Ipvs, &["go_goroutines"]), &rules);
        assert_eq!(only_go.outcome(), Outcome::Unexplained);
        let b = capture(Section::Metrics, &["kubeproxy_x"]);
        let mut b2 = b.clone();
        b2.set(Section::Ipvs, vec!["go_goroutines".into()]);
        assert_eq!(
            Comparison::new(&a, &b2, &rules).outcome(),
            Outcome::Explained
        );
        assert_eq!(
            Comparison::new(&a, &a, &rules).outcome(),
            Outcome::Identical
        );
    }

    #[test]
    fn a_changed_rule_explains_a_pair_of_lines_and_never_one_alone() {
        let readme = "## Intended differences from kube-proxy\n\n| What | Rule |\n|---|---|\n| Scheduler | `ipvs changed (-A \\S+ \\S+) -s \\S+ -b \\S+ => $1 -s rr` |\n";
        let rules = from_readme(readme).unwrap();
        let kube_proxy = capture(
            Section::Ipvs,
            &["-A -t 10.96.10.20:80 -s rr", "-A -t 10.96.0.1:443 -s rr"],
        );
        let kipvs = capture(
            Section::Ipvs,
            &[
                "-A -t 10.96.10.20:80 -s mh -b mh-port",
                "-A -t 10.96.0.1:443 -s rr",
            ],
        );
        let cmp = Comparison::new(&kube_proxy, &kipvs, &rules);
        assert_eq!(cmp.judged.len(), 2);
        assert_eq!(cmp.outcome(), Outcome::Explained, "{}", cmp.report());
        // Without its partner the kipvs line is unexplained, and so is a partner that
        // differs in anything else.
        let alone = Comparison::new(
            &capture(Section::Ipvs, &["-A -t 10.96.0.1:443 -s rr"]),
            &kipvs,
            &rules,
        );
        assert_eq!(alone.outcome(), Outcome::Unexplained);
        let other = capture(
            Section::Ipvs,
            &[
                "-A -t 10.96.10.20:80 -s rr -p 60",
                "-A -t 10.96.0.1:443 -s rr",
            ],
        );
        assert_eq!(
            Comparison::new(&other, &kipvs, &rules).outcome(),
            Outcome::Unexplained
        );
    }
}
