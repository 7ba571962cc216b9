//! Which iptables backend the node uses (nft or legacy), detected the way kube-proxy's
//! image does (kubernetes-sigs/iptables-wrappers): the kubelet's marker chains
//! (`KUBE-IPTABLES-HINT`, `KUBE-KUBELET-CANARY`) in the nft `mangle` table mean nft; in
//! the legacy tables, legacy; neither found means nft.

use std::path::Path;

use kipvs_ipvs::Family;

use crate::cmd::run;

/// An iptables backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// iptables-nft: the iptables API over nf_tables.
    Nft,
    /// iptables-legacy: x_tables.
    Legacy,
}

/// Whether `iptables-save` output holds one of the kubelet's marker chains.
pub fn has_kubelet_chains(saved: &str) -> bool {
    saved
        .lines()
        .any(|l| l.starts_with(":KUBE-IPTABLES-HINT") || l.starts_with(":KUBE-KUBELET-CANARY"))
}

/// Decides the backend from `probe(backend, family)`, which returns what that backend's
/// `iptables-save` prints (the nft probe only needs the `mangle` table; the legacy
/// probe must not name a table, which would create it). Stops at the first answer.
pub fn decide(mut probe: impl FnMut(Backend, Family) -> Option<String>) -> Backend {
    for backend in [Backend::Nft, Backend::Legacy] {
        for family in [Family::V4, Family::V6] {
            if probe(backend, family).is_some_and(|s| has_kubelet_chains(&s)) {
                return backend;
            }
        }
    }
    Backend::Nft
}

/// The first of `names` found in `PATH` (or the last one, to fail loudly when run).
fn resolve(names: &[String]) -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        if std::env::split_paths(&path).any(|dir| Path::new(&dir).join(name).is_file()) {
            return name.clone();
        }
    }
    names.last().cloned().unwrap_or_default()
}

impl Backend {
    /// Probes the node (see the module doc). Probe failures count as "not found".
    pub fn detect() -> Backend {
        let backend = decide(|backend, family| {
            let save = backend.program(family, "save");
            let args: &[&str] = match backend {
                Backend::Nft => &["-t", "mangle"],
                Backend::Legacy => &[],
            };
            run(&save, args, None).ok()
        });
        tracing::info!(?backend, "iptables backend detected");
        backend
    }

    fn suffix(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    /// The program for `tool` (`save`, `restore`, or `""` for the command itself) of
    /// this backend and family: `ip6tables-legacy-restore`, or the plain name
    /// (`iptables-restore`) when the backend-specific one is not installed.
    pub fn program(self, family: Family, tool: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let with = |b: String| {
            if tool.is_empty() {
                b
            } else {
                format!("{b}-{tool}")
            }
        };
        resolve(&[
            with(format!("{base}-{}", self.suffix())),
            with(base.to_owned()),
        ])
    }

    /// Whether this backend's iptables supports `MASQUERADE --random-fully`
    /// (iptables 1.6.2 and later).
    pub fn random_fully(self) -> bool {
        run(&self.program(Family::V4, ""), &["--version"], None)
            .ok()
            .and_then(|v| parse_version(&v))
            .is_some_and(|v| v >= (1, 6, 2))
    }
}

/// Parses `iptables v1.8.9 (nf_tables)`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_hint_in_nft_mangle_means_nft() {
        let b = decide(|b, _| {
            (b == Backend::Nft).then(|| "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\n".into())
        });
        assert_eq!(b, Backend::Nft);
    }

    #[test]
    fn kubelet_canary_only_in_legacy_means_legacy() {
        let b = decide(|b, f| {
            (b == Backend::Legacy && f == Family::V6)
                .then(|| "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\n".into())
        });
        assert_eq!(b, Backend::Legacy);
    }

    #[test]
    fn no_marker_anywhere_defaults_to_nft() {
        assert_eq!(
            decide(|_, _| Some("*filter\n:INPUT ACCEPT [0:0]\n".into())),
            Backend::Nft
        );
        assert_eq!(decide(|_, _| None), Backend::Nft);
    }

    #[test]
    fn iptables_versions_parse() {
        assert_eq!(
            parse_version("iptables v1.8.9 (nf_tables)\n"),
            Some((1, 8, 9))
        );
        assert_eq!(parse_version("iptables v1.6\n"), Some((1, 6, 0)));
        assert_eq!(parse_version("nonsense"), None);
    }
}
