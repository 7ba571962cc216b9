//! The crate's one error type: which operation on which object failed, with the kernel's
//! errno or the tool's standard error.

use std::io;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while reading or changing the node's kernel state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An rtnetlink request was refused or could not be sent.
    #[error("{op} {object}: {message}")]
    Netlink {
        /// What was attempted (`add address`, `create link`, ...).
        op: &'static str,
        /// The object it was attempted on (`10.96.0.1 on kube-ipvs0`).
        object: String,
        /// The kernel's errno (positive), when the kernel answered with one.
        errno: Option<i32>,
        /// The error as rtnetlink reported it.
        message: String,
    },
    /// A netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// A sysctl could not be read or written.
    #[error("sysctl {name}: cannot {op}: {source}")]
    Sysctl {
        /// The sysctl, as `sysctl(8)` names it.
        name: String,
        /// `read` or `write`.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A sysctl was written but reads back another value: the kernel did not take it.
    #[error("sysctl {name}: wrote {wanted} but it reads {found}")]
    SysctlNotTaken {
        /// The sysctl, as `sysctl(8)` names it.
        name: String,
        /// The value written.
        wanted: String,
        /// The value read back.
        found: String,
    },
    /// A kernel module the node needs is not available.
    #[error("kernel module {module} is not available: {detail}")]
    Module {
        /// The module (`ip_vs`).
        module: &'static str,
        /// What was tried and what it said.
        detail: String,
    },
    /// A tool (`ipset`, `iptables-restore`, ...) could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A tool ran and failed.
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        /// The program and its arguments.
        program: String,
        /// Its exit status, as the OS describes it.
        status: String,
        /// What it printed on standard error.
        stderr: String,
    },
    /// A tool printed something this crate does not understand.
    #[error("cannot parse {what} (line {line}): {text:?}")]
    Parse {
        /// What was being parsed (`ipset save`, `iptables-save`).
        what: &'static str,
        /// The line number, from 1.
        line: usize,
        /// The line.
        text: String,
    },
    /// An input does not make sense (an entry of the wrong kind for its set, ...).
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// What was being validated.
        what: &'static str,
        /// Why it was refused.
        detail: String,
    },
}

impl Error {
    /// The kernel's errno, when the kernel refused a netlink request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { errno, .. } => *errno,
            Error::Sysctl { source, .. } | Error::Socket(source) => source.raw_os_error(),
            _ => None,
        }
    }

    pub(crate) fn netlink(op: &'static str, object: String, err: rtnetlink::Error) -> Error {
        let errno = match &err {
            rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
            _ => None,
        };
        let advice = errno.map_or("", |e| rtnetlink_advice(op, e));
        Error::Netlink {
            op,
            object,
            errno,
            message: format!("{err}{advice}"),
        }
    }
}

/// What to do about an errno rtnetlink returned for `op` (on kube-ipvs0 and its
/// addresses), as a suffix for the message; empty when the errno says it all.
pub fn rtnetlink_advice(op: &str, errno: i32) -> &'static str {
    const EPERM: i32 = 1;
    const ENOENT: i32 = 2;
    const ENOMEM: i32 = 12;
    const EACCES: i32 = 13;
    const EEXIST: i32 = 17;
    const ENODEV: i32 = 19;
    const EINVAL: i32 = 22;
    const ENOSPC: i32 = 28;
    const EOPNOTSUPP: i32 = 95;
    const EAFNOSUPPORT: i32 = 97;
    const EADDRNOTAVAIL: i32 = 99;
    const ENOBUFS: i32 = 105;
    match errno {
        EPERM | EACCES => ": changing links and addresses needs CAP_NET_ADMIN (run as root)",
        EEXIST if op.contains("link") => {
            ": a link of that name exists but is not a dummy link: remove or rename it (ip link del kube-ipvs0)"
        }
        EEXIST => ": the address is already there (another tool added it)",
        ENODEV | ENOENT if op.contains("address") => {
            ": kube-ipvs0 is gone (deleted by hand?): kipvs recreates it at its next start"
        }
        ENODEV | ENOENT => ": no such link or object",
        EADDRNOTAVAIL => ": the address is not on the link (already removed)",
        EOPNOTSUPP => ": the kernel cannot create dummy links: load the module (modprobe dummy)",
        EAFNOSUPPORT => ": IPv6 is disabled on this node (net.ipv6.conf.all.disable_ipv6 or ipv6.disable=1)",
        ENOMEM | ENOBUFS | ENOSPC => ": the kernel is out of memory (or the address table is full)",
        EINVAL => ": the kernel refused the value: an invalid address or prefix length",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_rtnetlink_errnos_say_what_to_do() {
        assert!(rtnetlink_advice("add address", 1).contains("CAP_NET_ADMIN"));
        assert!(rtnetlink_advice("create link", 17).contains("not a dummy link"));
        assert!(rtnetlink_advice("add address", 19).contains("kube-ipvs0 is gone"));
        assert!(rtnetlink_advice("add address", 97).contains("IPv6 is disabled"));
        assert_eq!(rtnetlink_advice("add address", 4242), "");
    }
}
