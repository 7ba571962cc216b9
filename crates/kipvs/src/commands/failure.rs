//! What users are told when a command fails: one line, `kipvs COMMAND: what happened:
//! what to do`, and a non-zero exit status.
//!
//! Every command returns its failure as a [`Failure`] and `main` prints it here, so the
//! problems every command meets (no privileges, no IPVS) read the same everywhere and
//! no error chain or backtrace ever reaches the terminal.

use std::process::ExitCode;

use crate::sync::node::SetupError;

/// What a user refused for lack of privileges is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// Netlink requests need CAP_NET_ADMIN.
    NetAdmin,
    /// `/proc/sys` is written by root only; `kipvs run` can leave that to `kipvs prepare`.
    RootForSysctls,
}

impl Remedy {
    fn text(self, command: &str) -> &'static str {
        match (self, command) {
            (Remedy::NetAdmin, _) => "run as root or with CAP_NET_ADMIN",
            (Remedy::RootForSysctls, "run") => "run as root, or run `kipvs prepare` as root first",
            (Remedy::RootForSysctls, _) => "run as root",
        }
    }
}

/// Why a command failed.
#[derive(Debug)]
pub enum Failure {
    /// The kernel refused for lack of privileges.
    Denied {
        /// What was refused (`opening IPVS`, `writing net.ipv4.vs.conntrack`).
        doing: String,
        /// What to do about it.
        remedy: Remedy,
    },
    /// The kernel has no IPVS now; says whether it could have.
    NoIpvs(Support),
    /// Anything else, already phrased as one line.
    Other(String),
}

/// Whether the running kernel can have IPVS, judged from its modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// IPVS is a module of this kernel, not loaded (`modprobe ip_vs` would load it).
    Loadable,
    /// This kernel has no IPVS: it cannot load modules, or none of its modules is ip_vs.
    NotBuilt,
    /// Cannot tell: the kernel's modules are not visible here (a container without
    /// `/lib/modules`).
    Unknown,
}

impl Support {
    /// Judges the running kernel: its release from `/proc/sys/kernel/osrelease`, its
    /// modules under `/lib/modules/RELEASE`.
    pub fn probe() -> Support {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Support::probe_in(
            std::path::Path::new("/"),
            release.trim(),
            std::path::Path::new("/proc/modules").exists(),
        )
    }

    /// Judges a kernel of `release` whose files are under `root`; `modular` says whether
    /// it can load modules at all (`/proc/modules` exists).
    pub fn probe_in(root: &std::path::Path, release: &str, modular: bool) -> Support {
        if !modular {
            return Support::NotBuilt;
        }
        let dir = root.join("lib/modules").join(release);
        if release.is_empty() || !dir.is_dir() {
            return Support::Unknown;
        }
        // modules.dep lists every module of the kernel by path; modules.builtin the
        // ones compiled in (IPVS would then be there already: something else is wrong).
        let listed = |file: &str| {
            std::fs::read_to_string(dir.join(file)).is_ok_and(|text| {
                text.lines()
                    .any(|l| module_name(l.split(':').next().unwrap_or("")) == "ip_vs")
            })
        };
        if listed("modules.builtin") {
            Support::Unknown
        } else if listed("modules.dep") || dir.join("kernel/net/netfilter/ipvs").is_dir() {
            Support::Loadable
        } else {
            Support::NotBuilt
        }
    }

    fn message(self) -> &'static str {
        match self {
            Support::Loadable => "IPVS is not available: load it with `modprobe ip_vs`",
            Support::NotBuilt => {
                "this kernel has no IPVS (CONFIG_IP_VS): boot a kernel built with it"
            }
            Support::Unknown => {
                "IPVS is not available: load it with `modprobe ip_vs` (on the host), or boot a \
                 kernel built with CONFIG_IP_VS"
            }
        }
    }
}

/// The module a path of modules.dep or modules.builtin names: `ip_vs` for
/// `kernel/net/netfilter/ipvs/ip_vs.ko.xz`.
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split_once(".ko").map_or(file, |(name, _)| name)
}

fn is_denied(errno: Option<i32>) -> bool {
    matches!(errno, Some(nix::libc::EPERM | nix::libc::EACCES))
}

impl Failure {
    /// The line printed for `kipvs COMMAND`, newline-free whatever the cause said.
    pub fn line(&self, command: &str) -> String {
        let text = match self {
            Failure::Denied { doing, remedy } => {
                format!("permission denied {doing}: {}", remedy.text(command))
            }
            Failure::NoIpvs(support) => support.message().to_owned(),
            Failure::Other(text) => text.clone(),
        };
        let text = text
            .split('\n')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        format!("kipvs {command}: {text}")
    }

    /// Prints [`Failure::line`] to standard error and returns the failure exit status.
    pub fn exit(&self, command: &str) -> ExitCode {
        eprintln!("{}", self.line(command));
        ExitCode::FAILURE
    }

    /// Puts `prefix: ` before the message of a failure that is not about access (those
    /// say all there is to say).
    pub fn context(self, prefix: &str) -> Failure {
        match self {
            Failure::Other(text) => Failure::Other(format!("{prefix}: {text}")),
            access => access,
        }
    }
}

impl From<String> for Failure {
    fn from(text: String) -> Failure {
        Failure::Other(text)
    }
}

impl From<kipvs_ipvs::Error> for Failure {
    fn from(err: kipvs_ipvs::Error) -> Failure {
        match err {
            kipvs_ipvs::Error::PermissionDenied { .. } => Failure::Denied {
                doing: "opening IPVS".to_owned(),
                remedy: Remedy::NetAdmin,
            },
            kipvs_ipvs::Error::Unavailable => Failure::NoIpvs(Support::probe()),
            other => Failure::Other(other.to_string()),
        }
    }
}

impl From<kipvs_host::Error> for Failure {
    fn from(err: kipvs_host::Error) -> Failure {
        use kipvs_host::Error as H;
        match &err {
            H::Module {
                module: "ip_vs", ..
            } => Failure::NoIpvs(Support::probe()),
            H::Sysctl { name, op, .. } if is_denied(err.errno()) => Failure::Denied {
                doing: format!(
                    "{} {name}",
                    if *op == "read" { "reading" } else { "writing" }
                ),
                remedy: Remedy::RootForSysctls,
            },
            H::Netlink { op, object, .. } if is_denied(err.errno()) => Failure::Denied {
                doing: format!("to {op} {object}"),
                remedy: Remedy::NetAdmin,
            },
            H::Socket(_) if is_denied(err.errno()) => Failure::Denied {
                doing: "opening a netlink socket".to_owned(),
                remedy: Remedy::NetAdmin,
            },
            _ => Failure::Other(err.to_string()),
        }
    }
}

impl From<SetupError> for Failure {
    fn from(err: SetupError) -> Failure {
        match err {
            SetupError::Ipvs(e) => e.into(),
            SetupError::Host(e) => e.into(),
            SetupError::Families(why) => Failure::Other(why),
            SetupError::Conntrack { max, cpus, source } => conntrack_failure(max, cpus, &source),
        }
    }
}

/// A conntrack setting that could not be applied: kube-proxy stops there too, and the
/// way out depends on which one and why.
fn conntrack_failure(max: Option<u64>, cpus: u32, err: &kipvs_host::Error) -> Failure {
    use kipvs_host::conntrack::MAX;
    let errno = err.errno();
    let why = match errno {
        Some(nix::libc::EACCES | nix::libc::EPERM) => "permission denied",
        Some(nix::libc::EROFS) => "/proc/sys is read-only here",
        _ => return Failure::Other(format!("conntrack: {err}")),
    };
    let name = match err {
        kipvs_host::Error::Sysctl { name, .. } => name.as_str(),
        _ => "",
    };
    if name == MAX {
        let max = max.unwrap_or_default();
        Failure::Other(format!(
            "cannot set {MAX} to {max} (conntrack.maxPerCore x {cpus} CPUs, at least \
             conntrack.min): {why}: only root in the host's network namespace may change it; \
             run `kipvs prepare` there first, or set conntrack.maxPerCore: 0 to leave the \
             limit as it is (kube-proxy stops here too)"
        ))
    } else {
        Failure::Other(format!(
            "cannot set {name}: {why}: run as root, or run `kipvs prepare` as root first, or \
             set that conntrack field to 0 to leave it (kube-proxy stops here too)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn kernel_tree(files: &[(&str, &str)]) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("kipvs-support-{}-{n}", std::process::id()));
        let dir = root.join("lib/modules/6.1.0-test");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        root
    }

    #[test]
    fn a_kernel_that_cannot_load_modules_has_no_ipvs_when_the_family_is_missing() {
        assert_eq!(
            Support::probe_in(Path::new("/nonexistent"), "6.1.0", false),
            Support::NotBuilt
        );
    }

    #[test]
    fn ip_vs_among_the_kernels_modules_is_loadable_and_its_absence_means_not_built() {
        let with = kernel_tree(&[(
            "modules.dep",
            "kernel/net/netfilter/nf_conntrack.ko.xz:\n\
             kernel/net/netfilter/ipvs/ip_vs.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz\n",
        )]);
        assert_eq!(
            Support::probe_in(&with, "6.1.0-test", true),
            Support::Loadable
        );
        let without = kernel_tree(&[
            ("modules.dep", "kernel/net/netfilter/ipvs/ip_vs_rr.ko:\n"),
            ("modules.builtin", "kernel/net/ipv4/tcp.ko\n"),
        ]);
        assert_eq!(
            Support::probe_in(&without, "6.1.0-test", true),
            Support::NotBuilt
        );
        for root in [with, without] {
            std::fs::remove_dir_all(root).unwrap();
        }
    }

    #[test]
    fn without_the_kernels_modules_in_sight_nothing_is_claimed() {
        assert_eq!(
            Support::probe_in(Path::new("/nonexistent"), "6.1.0", true),
            Support::Unknown
        );
    }

    #[test]
    fn failures_print_as_one_line_naming_the_command() {
        let denied: Failure = kipvs_ipvs::Error::PermissionDenied {
            context: kipvs_ipvs::Context::new(kipvs_ipvs::Action::GetInfo),
            errno: nix::libc::EPERM,
        }
        .into();
        assert_eq!(
            denied.line("dump"),
            "kipvs dump: permission denied opening IPVS: run as root or with CAP_NET_ADMIN"
        );
        assert_eq!(
            Failure::NoIpvs(Support::Loadable).line("cleanup"),
            "kipvs cleanup: IPVS is not available: load it with `modprobe ip_vs`"
        );
        let other = Failure::Other("modprobe: FATAL\nsecond line".into()).context("cannot start");
        assert_eq!(
            other.line("run"),
            "kipvs run: cannot start: modprobe: FATAL; second line"
        );
    }

    #[test]
    fn an_unwritable_conntrack_limit_says_where_it_can_be_set_and_how_to_leave_it() {
        let err = SetupError::Conntrack {
            max: Some(131_072),
            cpus: 2,
            source: kipvs_host::Error::Sysctl {
                name: "net.netfilter.nf_conntrack_max".into(),
                op: "write",
                source: std::io::Error::from_raw_os_error(nix::libc::EACCES),
            },
        };
        assert_eq!(
            Failure::from(err).line("run"),
            "kipvs run: cannot set net.netfilter.nf_conntrack_max to 131072 \
             (conntrack.maxPerCore x 2 CPUs, at least conntrack.min): permission denied: only \
             root in the host's network namespace may change it; run `kipvs prepare` there \
             first, or set conntrack.maxPerCore: 0 to leave the limit as it is (kube-proxy \
             stops here too)"
        );
    }

    #[test]
    fn a_sysctl_that_cannot_be_written_for_lack_of_privileges_says_to_prepare_as_root() {
        let err = kipvs_host::Error::Sysctl {
            name: "net.ipv4.vs.conntrack".into(),
            op: "write",
            source: std::io::Error::from_raw_os_error(nix::libc::EACCES),
        };
        let failure = Failure::from(err);
        assert_eq!(
            failure.line("run"),
            "kipvs run: permission denied writing net.ipv4.vs.conntrack: run as root, or run \
             `kipvs prepare` as root first"
        );
        assert_eq!(
            failure.line("prepare"),
            "kipvs prepare: permission denied writing net.ipv4.vs.conntrack: run as root"
        );
        let read_only = kipvs_host::Error::Sysctl {
            name: "net.ipv4.vs.conntrack".into(),
            op: "write",
            source: std::io::Error::from_raw_os_error(nix::libc::EROFS),
        };
        assert!(matches!(Failure::from(read_only), Failure::Other(_)));
    }
}
