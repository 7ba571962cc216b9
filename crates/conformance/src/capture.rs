//! A capture of a node: what a proxy left in the kernel and what its servers answer, as
//! sections of normalized lines, so two captures compare line by line.
//!
//! The text form is one `[section]` header per section followed by its lines; no line of
//! any section starts with `[` (the normalizers drop the counters `iptables-save -c`
//! would print there).

use std::collections::BTreeMap;
use std::fmt;

/// The parts of a capture. Each is produced by one normalizer in [`crate::normalize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    /// `ipvsadm -Sn`, sorted, and the IPVS timeouts as `--set TCP TCPFIN UDP`.
    Ipvs,
    /// `ipset save`: each set's `create` line, then its members sorted.
    Ipset,
    /// `iptables-save`, per table and chain; rule order inside a chain kept.
    Iptables,
    /// `ip6tables-save`, as [`Section::Iptables`].
    Ip6tables,
    /// The node's links (kube-ipvs0 among them) and their addresses.
    Links,
    /// The sysctls either proxy writes, `key = value`.
    Sysctl,
    /// `/healthz`, `/livez`, `/proxyMode` and each healthCheckNodePort: status, the
    /// headers clients read, the JSON body's leaves (times normalized).
    Health,
    /// The names of the metrics `/metrics` exports.
    Metrics,
    /// The label names of each metric, `name{label,...}`.
    MetricLabels,
}

impl Section {
    /// Every section, in the order a capture lists them.
    pub const ALL: [Section; 9] = [
        Section::Ipvs,
        Section::Ipset,
        Section::Iptables,
        Section::Ip6tables,
        Section::Links,
        Section::Sysctl,
        Section::Health,
        Section::Metrics,
        Section::MetricLabels,
    ];

    /// The section's name, as captures and the README's rules spell it.
    pub fn name(self) -> &'static str {
        match self {
            Section::Ipvs => "ipvs",
            Section::Ipset => "ipset",
            Section::Iptables => "iptables",
            Section::Ip6tables => "ip6tables",
            Section::Links => "links",
            Section::Sysctl => "sysctl",
            Section::Health => "health",
            Section::Metrics => "metrics",
            Section::MetricLabels => "metric-labels",
        }
    }

    /// The section named `name`, if any.
    pub fn from_name(name: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the order of the lines means something (rules inside an iptables chain):
    /// such sections are compared as sequences, the others as sets of lines.
    pub fn ordered(self) -> bool {
        matches!(self, Section::Iptables | Section::Ip6tables)
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A node's capture: normalized lines per section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    sections: BTreeMap<Section, Vec<String>>,
}

/// Why a capture's text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A `[name]` header names no known section.
    #[error("line {line}: unknown section [{name}]")]
    UnknownSection {
        /// 1-based line number.
        line: usize,
        /// The name found.
        name: String,
    },
    /// A line comes before any section header.
    #[error("line {line}: a line outside any section")]
    Orphan {
        /// 1-based line number.
        line: usize,
    },
}

impl Capture {
    /// An empty capture.
    pub fn new() -> Capture {
        Capture::default()
    }

    /// Sets a section's lines (replacing what it held).
    pub fn set(&mut self, section: Section, lines: Vec<String>) {
        self.sections.insert(section, lines);
    }

    /// A section's lines; empty when the section was not captured.
    pub fn lines(&self, section: Section) -> &[String] {
        self.sections.get(&section).map_or(&[], Vec::as_slice)
    }

    /// Reads the text form [`Capture::render`] writes.
    ///
    /// # Errors
    /// An unknown section name, or a line before the first header.
    pub fn parse(text: &str) -> Result<Capture, ParseError> {
        let mut capture = Capture::new();
        let mut current: Option<Section> = None;
        for (n, line) in text.lines().enumerate() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let section = Section::from_name(name).ok_or(ParseError::UnknownSection {
                    line: n + 1,
                    name: name.to_owned(),
                })?;
                capture.sections.entry(section).or_default();
                current = Some(section);
            } else if line.is_empty() {
                continue;
            } else {
                let section = current.ok_or(ParseError::Orphan { line: n + 1 })?;
                capture
                    .sections
                    .entry(section)
                    .or_default()
                    .push(line.to_owned());
            }
        }
        Ok(capture)
    }

    /// The text form: every section in [`Section::ALL`] order, each under its header.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for section in Section::ALL {
            out.push('[');
            out.push_str(section.name());
            out.push_str("]\n");
            for line in self.lines(section) {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_reads_back_what_it_renders() {
        let mut capture = Capture::new();
        capture.set(Section::Ipvs, vec!["-A -t 10.96.0.1:443 -s rr".into()]);
        capture.set(
            Section::Iptables,
            vec![
                "nat -A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN".into(),
                "nat :KUBE-SERVICES -".into(),
            ],
        );
        let text = capture.render();
        assert!(text.starts_with("[ipvs]\n-A -t 10.96.0.1:443 -s rr\n[ipset]\n"));
        let back = Capture::parse(&text).unwrap();
        assert_eq!(back.lines(Section::Ipvs), capture.lines(Section::Ipvs));
        assert_eq!(
            back.lines(Section::Iptables),
            capture.lines(Section::Iptables)
        );
        assert!(back.lines(Section::Metrics).is_empty());
    }

    #[test]
    fn unknown_sections_and_orphan_lines_are_errors() {
        assert_eq!(
            Capture::parse("[nope]\n"),
            Err(ParseError::UnknownSection {
                line: 1,
                name: "nope".into()
            })
        );
        assert_eq!(
            Capture::parse("x\n[ipvs]\n"),
            Err(ParseError::Orphan { line: 1 })
        );
    }

    #[test]
    fn only_iptables_sections_are_ordered() {
        let ordered: Vec<_> = Section::ALL.into_iter().filter(|s| s.ordered()).collect();
        assert_eq!(ordered, [Section::Iptables, Section::Ip6tables]);
        for s in Section::ALL {
            assert_eq!(Section::from_name(s.name()), Some(s));
        }
    }
}
