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
        Error::Netlink {
            op,
            object,
            errno,
            message: err.to_string(),
        }
    }
}
