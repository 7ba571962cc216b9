//! The connection-tracking limits and timeouts kube-proxy sets from its `conntrack`
//! section (kube-proxy's `setupConntrack`, in every proxy mode), with the same rules:
//!
//! - `nf_conntrack_max` = max(`maxPerCore` x CPUs, `min`), left alone when `maxPerCore`
//!   is 0. The conntrack hash table (`/sys/module/nf_conntrack/parameters/hashsize`) is
//!   grown to `max / 4` only when it is smaller: Linux refuses that write outside the
//!   initial network namespace, so it is skipped whenever it is not needed. When `/sys` is
//!   mounted read-only the table is left as it is and a warning is returned
//!   ([`Applied::read_only_sysfs`]), as kube-proxy turns that case into a Node Event
//!   instead of failing.
//! - `nf_conntrack_tcp_timeout_established`, `..._close_wait`, `nf_conntrack_tcp_be_liberal`,
//!   `nf_conntrack_udp_timeout`, `..._udp_timeout_stream`: each written when set (non-zero,
//!   or true) and different from the kernel's.
//!
//! Every other failure is an error, as it stops kube-proxy: in particular
//! `nf_conntrack_max` is read-only in any network namespace but the initial one, so a
//! proxy in another namespace must find it already set (by `kipvs prepare` on the host)
//! or be told `maxPerCore: 0`.
//!
//! [`plan`] is pure; [`Sysctls::apply_conntrack`] writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sysctl::{Outcome, Sysctls};
use crate::{Error, Result};

/// The `conntrack` section after kube-proxy's defaulting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Entries per CPU (default 32768); 0 leaves `nf_conntrack_max` and `min` unused.
    pub max_per_core: u32,
    /// The least `nf_conntrack_max` (default 131072).
    pub min: u32,
    /// Idle timeout of established TCP connections (default 24h); zero leaves it.
    pub tcp_established_timeout: Duration,
    /// Timeout of TCP connections in CLOSE_WAIT (default 1h); zero leaves it.
    pub tcp_close_wait_timeout: Duration,
    /// Liberal TCP window tracking (`nf_conntrack_tcp_be_liberal=1`); false leaves it.
    pub tcp_be_liberal: bool,
    /// Timeout of unreplied UDP flows; zero leaves it.
    pub udp_timeout: Duration,
    /// Timeout of assured UDP streams; zero leaves it.
    pub udp_stream_timeout: Duration,
}

impl Default for ConntrackConfig {
    /// kube-proxy's defaults.
    fn default() -> Self {
        ConntrackConfig {
            max_per_core: 32768,
            min: 131_072,
            tcp_established_timeout: Duration::from_secs(24 * 3600),
            tcp_close_wait_timeout: Duration::from_secs(3600),
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }
}

/// The sysctl holding the conntrack table's size limit.
pub const MAX: &str = "net.netfilter.nf_conntrack_max";
/// The module parameter holding the conntrack hash table's size.
pub const HASHSIZE: &str = "/sys/module/nf_conntrack/parameters/hashsize";

/// What the node needs, decided from the configuration and the CPU count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackPlan {
    /// `nf_conntrack_max`, when it is to be set.
    pub max: Option<u64>,
    /// The other sysctls and their values, in kube-proxy's order.
    pub sysctls: Vec<(&'static str, u64)>,
}

/// Decides the values of `config` on a machine with `cpus` CPUs.
pub fn plan(config: &ConntrackConfig, cpus: u32) -> ConntrackPlan {
    let max = (config.max_per_core > 0).then(|| {
        (u64::from(config.max_per_core) * u64::from(cpus.max(1))).max(u64::from(config.min))
    });
    let secs = |d: Duration| (!d.is_zero()).then(|| d.as_secs().max(1));
    let sysctls = [
        (
            "net.netfilter.nf_conntrack_tcp_timeout_established",
            secs(config.tcp_established_timeout),
        ),
        (
            "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
            secs(config.tcp_close_wait_timeout),
        ),
        (
            "net.netfilter.nf_conntrack_tcp_be_liberal",
            config.tcp_be_liberal.then_some(1),
        ),
        (
            "net.netfilter.nf_conntrack_udp_timeout",
            secs(config.udp_timeout),
        ),
        (
            "net.netfilter.nf_conntrack_udp_timeout_stream",
            secs(config.udp_stream_timeout),
        ),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
    .collect();
    ConntrackPlan { max, sysctls }
}

/// The machine's CPUs, as kube-proxy counts them: every online CPU listed in
/// `/sys/devices/system/cpu/online` (not only those this process may run on, which a
/// container's cpuset narrows), else the CPUs this process may use.
pub fn cpu_count() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|list| count_cpu_list(&list))
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
        })
        .unwrap_or(1)
}

/// The number of CPUs in a kernel CPU list (`0-3,8,10-11`); `None` when it is not one.
pub fn count_cpu_list(list: &str) -> Option<u32> {
    let mut total = 0u32;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let n = part.parse::<u32>().ok()?;
                (n, n)
            }
        };
        total = total.checked_add(last.checked_sub(first)?.checked_add(1)?)?;
    }
    (total > 0).then_some(total)
}

/// What [`Sysctls::apply_conntrack`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Each sysctl written or checked, with what happened.
    pub sysctls: Vec<(&'static str, Outcome)>,
    /// The hash table's size before and after, when it was grown.
    pub hashsize: Option<(u64, u64)>,
    /// Set when the hash table needed to grow but `/sys` is read-only: the table was
    /// left as it is (kube-proxy's "CRI error: /sys is read-only" case).
    pub read_only_sysfs: bool,
}

/// Where the conntrack hash table size is read and written, and how to tell whether
/// sysfs is writable (tests point these elsewhere).
#[derive(Debug, Clone)]
pub struct Sysfs {
    /// The `hashsize` parameter file.
    pub hashsize: PathBuf,
    /// The mount table (`/proc/mounts`).
    pub mounts: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs {
            hashsize: PathBuf::from(HASHSIZE),
            mounts: PathBuf::from("/proc/mounts"),
        }
    }
}

/// Whether the first sysfs mount in the mount table `mounts` is read-write, as
/// kube-proxy judges it; `None` when no sysfs is mounted.
pub fn sysfs_writable(mounts: &str) -> Option<bool> {
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&"sysfs"))
            .then(|| fields.get(3).and_then(|o| o.split(',').next()) == Some("rw"))
    })
}

fn read_number(path: &Path, what: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Sysctl {
        name: what.to_owned(),
        op: "read",
        source,
    })?;
    text.trim().parse().map_err(|_| Error::Invalid {
        what: "conntrack setting",
        detail: format!("{what} reads {:?}", text.trim()),
    })
}

impl Sysctls {
    /// Applies a [`ConntrackPlan`]: `nf_conntrack_max` and the hash table first, then
    /// the timeouts, each only where the kernel's value differs.
    ///
    /// # Errors
    /// When a value cannot be read or written (other than the hash table on a
    /// read-only `/sys`, see [`Applied::read_only_sysfs`]), or the kernel does not keep it.
    pub fn apply_conntrack(&self, plan: &ConntrackPlan, sysfs: &Sysfs) -> Result<Applied> {
        let mut applied = Applied::default();
        let setting = |name: &'static str, value: u64| crate::sysctl::Setting {
            name,
            value: std::borrow::Cow::Owned(value.to_string()),
            required: true,
        };
        if let Some(max) = plan.max {
            applied
                .sysctls
                .push((MAX, self.ensure(&setting(MAX, max))?));
            let hashsize = match read_number(&sysfs.hashsize, HASHSIZE) {
                Ok(size) => Some(size),
                // Readable by root only: a process without root's rights (kipvs run
                // after prepare, in a pod that is not privileged) leaves it to prepare.
                Err(err) if err.errno() == Some(13) => {
                    tracing::debug!(error = %err, "conntrack hash table size not checked");
                    None
                }
                Err(err) => return Err(err),
            };
            let wanted = max / 4;
            if let Some(hashsize) = hashsize.filter(|size| *size < wanted) {
                let mounts = std::fs::read_to_string(&sysfs.mounts).unwrap_or_default();
                match sysfs_writable(&mounts) {
                    Some(true) => {
                        std::fs::write(&sysfs.hashsize, wanted.to_string()).map_err(|source| {
                            Error::Sysctl {
                                name: HASHSIZE.to_owned(),
                                op: "write",
                                source,
                            }
                        })?;
                        tracing::info!(from = hashsize, to = wanted, "conntrack hashsize set");
                        applied.hashsize = Some((hashsize, wanted));
                    }
                    Some(false) => {
                        tracing::warn!(
                            hashsize,
                            wanted,
                            "/sys is read-only: cannot grow the conntrack hash table; \
                             problems may arise later (a container runtime mounting /sys \
                             read-only: see docker issue #24000)"
                        );
                        applied.read_only_sysfs = true;
                    }
                    None => {
                        return Err(Error::Invalid {
                            what: "conntrack hashsize",
                            detail: "no sysfs is mounted".to_owned(),
                        })
                    }
                }
            }
        }
        for (name, value) in &plan.sysctls {
            applied
                .sysctls
                .push((name, self.ensure(&setting(name, *value))?));
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_max_per_core_times_cpus_but_at_least_min_and_zero_leaves_it() {
        let config = ConntrackConfig::default();
        assert_eq!(plan(&config, 2).max, Some(131_072), "min wins on 2 CPUs");
        assert_eq!(plan(&config, 8).max, Some(262_144), "32768 x 8");
        let off = ConntrackConfig {
            max_per_core: 0,
            ..config
        };
        assert_eq!(plan(&off, 64).max, None);
    }

    #[test]
    fn kube_proxys_defaults_set_the_tcp_timeouts_only() {
        assert_eq!(
            plan(&ConntrackConfig::default(), 1).sysctls,
            vec![
                ("net.netfilter.nf_conntrack_tcp_timeout_established", 86_400),
                ("net.netfilter.nf_conntrack_tcp_timeout_close_wait", 3600),
            ]
        );
        let all = ConntrackConfig {
            tcp_be_liberal: true,
            udp_timeout: Duration::from_secs(30),
            udp_stream_timeout: Duration::from_secs(120),
            tcp_established_timeout: Duration::ZERO,
            ..ConntrackConfig::default()
        };
        assert_eq!(
            plan(&all, 1).sysctls,
            vec![
                ("net.netfilter.nf_conntrack_tcp_timeout_close_wait", 3600),
                ("net.netfilter.nf_conntrack_tcp_be_liberal", 1),
                ("net.netfilter.nf_conntrack_udp_timeout", 30),
                ("net.netfilter.nf_conntrack_udp_timeout_stream", 120),
            ]
        );
    }

    #[test]
    fn cpu_lists_count_ranges_and_singles() {
        assert_eq!(count_cpu_list("0-3\n"), Some(4));
        assert_eq!(count_cpu_list("0,2-3,8"), Some(4));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
    }

    #[test]
    fn sysfs_is_writable_when_its_first_option_is_rw() {
        let rw = "proc /proc proc rw 0 0\nsysfs /sys sysfs rw,nosuid 0 0\n";
        assert_eq!(sysfs_writable(rw), Some(true));
        let ro = "sysfs /sys sysfs ro,nosuid,nodev 0 0\n";
        assert_eq!(sysfs_writable(ro), Some(false));
        assert_eq!(sysfs_writable("proc /proc proc rw 0 0\n"), None);
    }

    fn fake(files: &[(&str, &str)], mounts: &str) -> (Sysctls, Sysfs, PathBuf) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("kipvs-conntrack-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (name, value) in files {
            let path = root.join("sys").join(name.replace('.', "/"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, value).unwrap();
        }
        std::fs::write(root.join("hashsize"), "16384\n").unwrap();
        std::fs::write(root.join("mounts"), mounts).unwrap();
        let sysfs = Sysfs {
            hashsize: root.join("hashsize"),
            mounts: root.join("mounts"),
        };
        (Sysctls::under(root.join("sys")), sysfs, root)
    }

    #[test]
    fn the_hash_table_grows_only_when_smaller_than_a_quarter_of_the_limit() {
        let files = [
            ("net.netfilter.nf_conntrack_max", "65536"),
            (
                "net.netfilter.nf_conntrack_tcp_timeout_established",
                "432000",
            ),
        ];
        let (sysctls, sysfs, root) = fake(&files, "sysfs /sys sysfs rw 0 0\n");
        let wanted = ConntrackPlan {
            max: Some(65536),
            sysctls: vec![("net.netfilter.nf_conntrack_tcp_timeout_established", 86400)],
        };
        let applied = sysctls.apply_conntrack(&wanted, &sysfs).unwrap();
        assert_eq!(applied.hashsize, None, "16384 >= 65536 / 4");
        assert_eq!(applied.sysctls[0], (MAX, Outcome::Unchanged));
        assert_eq!(
            sysctls
                .read("net.netfilter.nf_conntrack_tcp_timeout_established")
                .unwrap()
                .as_deref(),
            Some("86400")
        );
        let bigger = ConntrackPlan {
            max: Some(131_072),
            sysctls: Vec::new(),
        };
        let applied = sysctls.apply_conntrack(&bigger, &sysfs).unwrap();
        assert_eq!(applied.hashsize, Some((16384, 32768)));
        assert_eq!(std::fs::read_to_string(&sysfs.hashsize).unwrap(), "32768");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_read_only_sys_leaves_the_hash_table_with_a_warning_not_an_error() {
        let files = [("net.netfilter.nf_conntrack_max", "65536")];
        let (sysctls, sysfs, root) = fake(&files, "sysfs /sys sysfs ro 0 0\n");
        let plan = ConntrackPlan {
            max: Some(262_144),
            sysctls: Vec::new(),
        };
        let applied = sysctls.apply_conntrack(&plan, &sysfs).unwrap();
        assert!(applied.read_only_sysfs);
        assert_eq!(std::fs::read_to_string(&sysfs.hashsize).unwrap(), "16384\n");
        std::fs::remove_dir_all(root).unwrap();
    }
}
