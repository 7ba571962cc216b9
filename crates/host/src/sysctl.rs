//! Kernel parameters under `/proc/sys`, named the way `sysctl(8)` names them, and the
//! ones kube-proxy's ipvs mode sets.
//!
//! [`kube_proxy_settings`] decides which values the node needs (pure, from the
//! configuration and the kernel version); [`Sysctls::apply`] writes them, reads each one
//! back (a write the kernel did not take is an error), and logs every change. The
//! `net.ipv4.vs.*` entries exist only once `ip_vs` is loaded, so it is loaded first.
//! IPVS timeouts (`ipvsadm --set`) are not sysctls: the ipvs crate sets them.
//!
//! Most of these are per network namespace: they apply to the namespace of the thread
//! that opens the file.

use std::borrow::Cow;
use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// The file under `/proc/sys` holding the sysctl `name` (`net.ipv4.vs.conntrack`).
///
/// Dots separate levels, as `sysctl(8)` writes them; a slash-separated name is taken
/// as it is, so interface names containing dots can be given that way.
pub fn proc_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(relative_path(name))
}

fn relative_path(name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        name.replace('.', "/")
    }
}

/// A kernel version, `major.minor.patch`, as `uname -r` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u32, pub u32, pub u32);

impl KernelVersion {
    /// Parses the start of a release string (`6.1.0-18-amd64`, `5.4.0`, `4.19`).
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let numeric: String = release
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = numeric.split('.').filter(|p| !p.is_empty());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(KernelVersion(major, minor, patch))
    }

    /// The running kernel's version, from `/proc/sys/kernel/osrelease`.
    ///
    /// # Errors
    /// When the file cannot be read or does not start with a version.
    pub fn running() -> Result<KernelVersion> {
        let release = std::fs::read_to_string(proc_path("kernel.osrelease")).map_err(|source| {
            Error::Sysctl {
                name: "kernel.osrelease".to_owned(),
                op: "read",
                source,
            }
        })?;
        KernelVersion::parse(&release).ok_or_else(|| Error::Invalid {
            what: "kernel release",
            detail: release.trim().to_owned(),
        })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The first kernel with `net.ipv4.vs.conn_reuse_mode`.
pub const CONN_REUSE_MODE_MIN: KernelVersion = KernelVersion(4, 1, 0);
/// The first kernel where `conn_reuse_mode=1` no longer stalls reused connections
/// (kubernetes/kubernetes#93297): from here on the sysctl is left as it is.
pub const CONN_REUSE_MODE_FIXED: KernelVersion = KernelVersion(5, 9, 0);

/// The parts of kube-proxy's configuration that decide sysctls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SysctlConfig {
    /// `ipvs.strictARP`: answer ARP only for addresses on the receiving interface
    /// (`arp_ignore=1`, `arp_announce=2`), so VIPs on `kube-ipvs0` are not announced.
    pub strict_arp: bool,
}

/// One sysctl value the node needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The sysctl, as `sysctl(8)` names it.
    pub name: &'static str,
    /// The value to write.
    pub value: Cow<'static, str>,
    /// Whether its absence is an error (otherwise a warning).
    pub required: bool,
}

impl Setting {
    /// Whether this sysctl exists only once `ip_vs` is loaded.
    pub fn needs_ipvs(&self) -> bool {
        self.name.starts_with("net.ipv4.vs.")
    }
}

const fn setting(name: &'static str, value: &'static str, required: bool) -> Setting {
    Setting {
        name,
        value: Cow::Borrowed(value),
        required,
    }
}

/// The sysctls kube-proxy's ipvs mode sets, for this configuration and kernel.
///
/// `net.ipv4.vs.conntrack=1` lets iptables NAT (masquerade, hairpin) see IPVS traffic;
/// `conn_reuse_mode=0` only on kernels 4.1 up to 5.8 (before, it does not exist; from
/// 5.9 on, the default is right); `expire_nodest_conn` and `expire_quiescent_template`
/// so connections to deleted real servers fail fast; `ip_forward`; and with strictARP,
/// `arp_ignore=1` and `arp_announce=2`.
pub fn kube_proxy_settings(config: SysctlConfig, kernel: KernelVersion) -> Vec<Setting> {
    let mut out = vec![setting("net.ipv4.vs.conntrack", "1", true)];
    if kernel < CONN_REUSE_MODE_MIN {
        tracing::error!(
            %kernel,
            minimum = %CONN_REUSE_MODE_MIN,
            "kernel too old for net.ipv4.vs.conn_reuse_mode; not set"
        );
    } else if kernel < CONN_REUSE_MODE_FIXED {
        out.push(setting("net.ipv4.vs.conn_reuse_mode", "0", false));
    }
    out.push(setting("net.ipv4.vs.expire_nodest_conn", "1", false));
    out.push(setting("net.ipv4.vs.expire_quiescent_template", "1", false));
    out.push(setting("net.ipv4.ip_forward", "1", true));
    if config.strict_arp {
        out.push(setting("net.ipv4.conf.all.arp_ignore", "1", true));
        out.push(setting("net.ipv4.conf.all.arp_announce", "2", true));
    }
    out
}

/// What [`Sysctls::apply`] did to one sysctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It already had the value.
    Unchanged,
    /// It was changed from this value.
    Changed {
        /// The value before.
        from: String,
    },
    /// It does not exist on this kernel and is optional.
    Absent,
}

/// Reads and writes sysctls under a root (`/proc/sys`, or a directory in tests).
#[derive(Debug, Clone)]
pub struct Sysctls {
    root: PathBuf,
    load_ipvs: bool,
}

impl Default for Sysctls {
    fn default() -> Self {
        Sysctls {
            root: PathBuf::from("/proc/sys"),
            load_ipvs: true,
        }
    }
}

impl Sysctls {
    /// Sysctls under another root, without loading modules (for tests).
    pub fn under(root: impl Into<PathBuf>) -> Sysctls {
        Sysctls {
            root: root.into(),
            load_ipvs: false,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(relative_path(name))
    }

    /// The current value of `name`, trimmed; `None` when it does not exist.
    ///
    /// # Errors
    /// When it exists but cannot be read.
    pub fn read(&self, name: &str) -> Result<Option<String>> {
        match std::fs::read_to_string(self.path(name)) {
            Ok(v) => Ok(Some(v.trim().to_owned())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Sysctl {
                name: name.to_owned(),
                op: "read",
                source,
            }),
        }
    }

    /// Sets `name` to `value` unless it already has it, then reads it back.
    ///
    /// # Errors
    /// When the write fails, or the value read back differs (the kernel did not take
    /// it), or a required sysctl does not exist.
    pub fn ensure(&self, setting: &Setting) -> Result<Outcome> {
        let Some(current) = self.read(setting.name)? else {
            if setting.required {
                return Err(Error::Sysctl {
                    name: setting.name.to_owned(),
                    op: "write",
                    source: std::io::Error::from(ErrorKind::NotFound),
                });
            }
            tracing::warn!(
                sysctl = setting.name,
                "optional sysctl does not exist here; skipped"
            );
            return Ok(Outcome::Absent);
        };
        if current == setting.value {
            return Ok(Outcome::Unchanged);
        }
        std::fs::write(self.path(setting.name), setting.value.as_bytes()).map_err(|source| {
            Error::Sysctl {
                name: setting.name.to_owned(),
                op: "write",
                source,
            }
        })?;
        let found = self.read(setting.name)?.unwrap_or_default();
        if found != setting.value {
            return Err(Error::SysctlNotTaken {
                name: setting.name.to_owned(),
                wanted: setting.value.to_string(),
                found,
            });
        }
        tracing::info!(sysctl = setting.name, from = %current, to = %setting.value, "sysctl changed");
        Ok(Outcome::Changed { from: current })
    }

    /// Applies every setting, loading `ip_vs` first when one of them needs it.
    ///
    /// # Errors
    /// At the first setting that cannot be applied (see [`Sysctls::ensure`]), or when
    /// `ip_vs` cannot be loaded.
    pub fn apply(&self, settings: &[Setting]) -> Result<Vec<(&'static str, Outcome)>> {
        if self.load_ipvs && settings.iter().any(Setting::needs_ipvs) {
            ensure_ipvs_loaded(&self.root)?;
        }
        settings
            .iter()
            .map(|s| Ok((s.name, self.ensure(s)?)))
            .collect()
    }
}

/// Makes sure `net/ipv4/vs` exists under `root`, loading `ip_vs` with `modprobe` when it
/// does not.
///
/// # Errors
/// When `modprobe ip_vs` fails or the directory is still missing afterwards.
pub fn ensure_ipvs_loaded(root: &Path) -> Result<()> {
    let dir = root.join("net/ipv4/vs");
    if dir.is_dir() {
        return Ok(());
    }
    let out = Command::new("modprobe")
        .arg("ip_vs")
        .output()
        .map_err(|source| Error::Spawn {
            program: "modprobe".to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Module {
            module: "ip_vs",
            detail: format!(
                "modprobe ip_vs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    if !dir.is_dir() {
        return Err(Error::Module {
            module: "ip_vs",
            detail: format!("loaded, but {} does not exist", dir.display()),
        });
    }
    tracing::info!("loaded ip_vs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_names_map_to_proc_sys_paths() {
        assert_eq!(
            proc_path("net.ipv4.vs.conntrack"),
            PathBuf::from("/proc/sys/net/ipv4/vs/conntrack")
        );
    }

    #[test]
    fn slashed_names_keep_dots_in_interface_names() {
        assert_eq!(
            proc_path("net/ipv4/conf/eth0.100/arp_ignore"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/arp_ignore")
        );
    }

    #[test]
    fn kernel_versions_parse_from_release_strings() {
        assert_eq!(
            KernelVersion::parse("6.1.0-18-amd64"),
            Some(KernelVersion(6, 1, 0))
        );
        assert_eq!(
            KernelVersion::parse("4.19\n"),
            Some(KernelVersion(4, 19, 0))
        );
        assert_eq!(
            KernelVersion::parse("5.8.18-fc"),
            Some(KernelVersion(5, 8, 18))
        );
        assert_eq!(KernelVersion::parse("garbage"), None);
    }

    fn names(settings: &[Setting]) -> Vec<&str> {
        settings.iter().map(|s| s.name).collect()
    }

    #[test]
    fn conn_reuse_mode_is_zeroed_only_on_kernels_from_4_1_to_5_8() {
        let cfg = SysctlConfig::default();
        let has = |k| names(&kube_proxy_settings(cfg, k)).contains(&"net.ipv4.vs.conn_reuse_mode");
        assert!(!has(KernelVersion(4, 0, 9)));
        assert!(has(KernelVersion(4, 1, 0)));
        assert!(has(KernelVersion(5, 8, 18)));
        assert!(!has(KernelVersion(5, 9, 0)));
        assert!(!has(KernelVersion(6, 1, 0)));
    }

    #[test]
    fn strict_arp_adds_arp_ignore_and_arp_announce() {
        let plain = kube_proxy_settings(SysctlConfig { strict_arp: false }, KernelVersion(6, 1, 0));
        assert!(!names(&plain).contains(&"net.ipv4.conf.all.arp_ignore"));
        let strict = kube_proxy_settings(SysctlConfig { strict_arp: true }, KernelVersion(6, 1, 0));
        let values: Vec<_> = strict.iter().map(|s| (s.name, s.value.as_ref())).collect();
        assert!(values.contains(&("net.ipv4.conf.all.arp_ignore", "1")));
        assert!(values.contains(&("net.ipv4.conf.all.arp_announce", "2")));
        assert!(values.contains(&("net.ipv4.vs.conntrack", "1")));
        assert!(values.contains(&("net.ipv4.ip_forward", "1")));
    }

    fn fake_root(files: &[(&str, &str)]) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("kipvs-sysctl-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (name, value) in files {
            let path = root.join(relative_path(name));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, value).unwrap();
        }
        root
    }

    #[test]
    fn ensure_writes_changes_and_leaves_equal_values_alone() {
        let root = fake_root(&[
            ("net.ipv4.ip_forward", "0\n"),
            ("net.ipv4.vs.conntrack", "1\n"),
        ]);
        let sysctls = Sysctls::under(&root);
        let out = sysctls
            .apply(&[
                setting("net.ipv4.ip_forward", "1", true),
                setting("net.ipv4.vs.conntrack", "1", true),
            ])
            .unwrap();
        assert_eq!(
            out,
            vec![
                ("net.ipv4.ip_forward", Outcome::Changed { from: "0".into() }),
                ("net.ipv4.vs.conntrack", Outcome::Unchanged),
            ]
        );
        assert_eq!(
            sysctls.read("net.ipv4.ip_forward").unwrap().as_deref(),
            Some("1")
        );
    }

    #[test]
    fn absent_optional_sysctls_are_skipped_and_absent_required_ones_fail() {
        let root = fake_root(&[("net.ipv4.ip_forward", "1")]);
        let sysctls = Sysctls::under(&root);
        assert_eq!(
            sysctls
                .ensure(&setting("net.ipv4.vs.conn_reuse_mode", "0", false))
                .unwrap(),
            Outcome::Absent
        );
        let err = sysctls
            .ensure(&setting("net.ipv4.vs.conntrack", "1", true))
            .unwrap_err();
        assert!(err.to_string().contains("net.ipv4.vs.conntrack"), "{err}");
    }
}
