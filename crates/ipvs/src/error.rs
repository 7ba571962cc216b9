//! The crate's one error type: what failed, on which object, and the kernel's errno.

use std::io;
use std::time::Duration;

use crate::op::{Action, Context};
use crate::types::InvalidValue;
use crate::wire::DecodeError;

/// Result of an IPVS request.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an IPVS request failed. Each variant says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The service or destination to create already exists (`EEXIST`).
    #[error("{context}: already exists")]
    Exists {
        /// What was being done.
        context: Context,
    },
    /// The service (`ESRCH`) or destination (`ENOENT`) does not exist.
    #[error("{context}: {} not found", if *errno == ESRCH { "service" } else { "destination" })]
    NotFound {
        /// What was being done.
        context: Context,
        /// `ESRCH` (no such service) or `ENOENT` (no such destination).
        errno: i32,
    },
    /// The caller lacks `CAP_NET_ADMIN` in the initial user namespace (`EPERM`).
    #[error(
        "{context}: permission denied: IPVS needs CAP_NET_ADMIN in the initial user \
         namespace (run as root; a capability inside a user namespace is not enough)"
    )]
    PermissionDenied {
        /// What was being done.
        context: Context,
        /// `EPERM` (or `EACCES`).
        errno: i32,
    },
    /// The kernel has no `IPVS` generic netlink family: IPVS is not loaded or not built.
    #[error(
        "IPVS is unavailable: the kernel has no \"IPVS\" generic netlink family; \
         load the ip_vs kernel module (modprobe ip_vs) or use a kernel built with CONFIG_IP_VS"
    )]
    Unavailable,
    /// The kernel rejected a value (`EINVAL`, `ERANGE`, ...).
    #[error("{context}: invalid argument ({}){}", errno_text(*errno), invalid_hint(context, *errno))]
    InvalidArgument {
        /// What was being done, to which service or destination.
        context: Context,
        /// `EINVAL`, `ERANGE`, `EAFNOSUPPORT` or `EOPNOTSUPP`.
        errno: i32,
    },
    /// The scheduler (or persistence engine) is unknown to the kernel (`ENOENT` when
    /// creating or updating a service: the module could not be loaded).
    #[error(
        "{context}: unknown scheduler {scheduler:?} (the kernel has no ip_vs_{scheduler} module){}",
        engine.as_ref().map(|e| format!(" or unknown persistence engine {e:?} (no ip_vs_pe_{e} module)")).unwrap_or_default()
    )]
    UnknownScheduler {
        /// What was being done.
        context: Context,
        /// The scheduler's name.
        scheduler: String,
        /// The persistence engine, when one was requested: it may be the unknown one.
        engine: Option<String>,
    },
    /// Any other error the kernel reported.
    #[error("{context}: {}{}", errno_text(*errno), kernel_hint(*errno))]
    Kernel {
        /// What was being done.
        context: Context,
        /// The kernel's errno.
        errno: i32,
    },
    /// A value was rejected before anything was sent.
    #[error("{context}: {source}")]
    Invalid {
        /// What was being done.
        context: Context,
        /// The rejected value.
        source: InvalidValue,
    },
    /// No answer arrived in time; the request may or may not have been applied.
    #[error("{context}: no answer from the kernel within {timeout:?}")]
    Timeout {
        /// What was being done.
        context: Context,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The socket failed (send, receive, or the reply was lost to a full buffer).
    #[error("{context}: netlink socket error: {source}")]
    Io {
        /// What was being done.
        context: Context,
        /// The system error.
        source: io::Error,
    },
    /// The kernel's reply could not be understood.
    #[error("{context}: malformed reply from the kernel: {source}")]
    Malformed {
        /// What was being done.
        context: Context,
        /// What was wrong with it.
        source: DecodeError,
    },
    /// A dump kept being interrupted by concurrent changes (`NLM_F_DUMP_INTR`).
    #[error("{context}: the dump was interrupted by concurrent changes {attempts} times in a row")]
    DumpInterrupted {
        /// What was being done.
        context: Context,
        /// How many times it was tried.
        attempts: u32,
    },
}

const ESRCH: i32 = nix::libc::ESRCH;

fn errno_text(errno: i32) -> String {
    nix::errno::Errno::from_raw(errno).to_string()
}

fn invalid_hint(context: &Context, errno: i32) -> &'static str {
    match (context.action, errno) {
        (Action::AddDestination | Action::UpdateDestination, nix::libc::EINVAL) => {
            ": the destination address must be unicast and routable in this network namespace"
        }
        (Action::AddDestination | Action::UpdateDestination, nix::libc::ERANGE) => {
            ": the weight must be at most 2147483647 and the lower threshold at most the upper"
        }
        (Action::AddService | Action::UpdateService, nix::libc::EINVAL) => {
            ": the protocol, port, flags, persistence timeout or netmask are out of range"
        }
        (_, nix::libc::EAFNOSUPPORT) => {
            ": the address family is not supported: IPv6 is disabled on this node, or the \
             destination's family differs from the service's"
        }
        (_, nix::libc::EOPNOTSUPP) => {
            ": this kernel does not support it (a forwarding method, tunnel type or flag it lacks)"
        }
        _ => "",
    }
}

/// What to do about an errno the kernel returned that has no variant of its own.
fn kernel_hint(errno: i32) -> &'static str {
    match errno {
        nix::libc::ENOMEM | nix::libc::ENOBUFS => {
            ": the kernel is out of memory for IPVS (too many services or connections?)"
        }
        nix::libc::EBUSY => ": IPVS is busy: kipvs retries",
        nix::libc::EINTR | nix::libc::EAGAIN => ": interrupted: kipvs retries",
        nix::libc::EMSGSIZE => ": the request was too large (a bug in kipvs: please report it)",
        nix::libc::ENOPROTOOPT => {
            ": this kernel's IPVS lacks the attribute kipvs sent: update the kernel"
        }
        _ => "",
    }
}

impl Error {
    /// Builds the typed error for a kernel errno (positive) returned to a request.
    ///
    /// `scheduler` and `engine` name what the request asked for when it created or
    /// changed a service: `ENOENT` then means one of them is unknown.
    pub fn from_errno(
        context: Context,
        errno: i32,
        scheduler: Option<&str>,
        engine: Option<&str>,
    ) -> Error {
        use nix::libc;
        match errno {
            libc::EEXIST => Error::Exists { context },
            libc::EPERM | libc::EACCES => Error::PermissionDenied { context, errno },
            libc::ENOENT
                if matches!(context.action, Action::AddService | Action::UpdateService) =>
            {
                Error::UnknownScheduler {
                    context,
                    scheduler: scheduler.unwrap_or_default().to_owned(),
                    engine: engine.map(str::to_owned),
                }
            }
            libc::ESRCH | libc::ENOENT => Error::NotFound { context, errno },
            libc::EINVAL | libc::ERANGE | libc::EAFNOSUPPORT | libc::EOPNOTSUPP => {
                Error::InvalidArgument { context, errno }
            }
            _ => Error::Kernel { context, errno },
        }
    }

    /// The kernel's errno, when the kernel reported the error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Exists { .. } => Some(nix::libc::EEXIST),
            Error::UnknownScheduler { .. } => Some(nix::libc::ENOENT),
            Error::NotFound { errno, .. }
            | Error::PermissionDenied { errno, .. }
            | Error::InvalidArgument { errno, .. }
            | Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// What was being done, when known.
    pub fn context(&self) -> Option<&Context> {
        match self {
            Error::Exists { context }
            | Error::NotFound { context, .. }
            | Error::PermissionDenied { context, .. }
            | Error::InvalidArgument { context, .. }
            | Error::UnknownScheduler { context, .. }
            | Error::Kernel { context, .. }
            | Error::Invalid { context, .. }
            | Error::Timeout { context, .. }
            | Error::Io { context, .. }
            | Error::Malformed { context, .. }
            | Error::DumpInterrupted { context, .. } => Some(context),
            Error::Unavailable => None,
        }
    }

    /// Whether the object to create already exists (often a success in disguise).
    pub fn is_exists(&self) -> bool {
        matches!(self, Error::Exists { .. })
    }

    /// Whether the object to change or delete does not exist (often a success in
    /// disguise when deleting).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Protocol, ServiceKey};
    use nix::libc;

    fn ctx(action: Action) -> Context {
        Context::destination(
            action,
            ServiceKey::Addr {
                protocol: Protocol::Tcp,
                addr: "10.0.0.1".parse().unwrap(),
                port: 80,
            },
            ("10.1.0.1".parse().unwrap(), 8080),
        )
    }

    #[test]
    fn errnos_map_to_actionable_variants() {
        let add = || ctx(Action::AddDestination);
        assert!(Error::from_errno(add(), libc::EEXIST, None, None).is_exists());
        assert!(Error::from_errno(add(), libc::ESRCH, None, None).is_not_found());
        assert!(matches!(
            Error::from_errno(add(), libc::EPERM, None, None),
            Error::PermissionDenied { .. }
        ));
        assert!(matches!(
            Error::from_errno(add(), libc::EINVAL, None, None),
            Error::InvalidArgument { .. }
        ));
        let svc = Context::new(Action::AddService);
        assert!(matches!(
            Error::from_errno(svc, libc::ENOENT, Some("nosuch"), None),
            Error::UnknownScheduler { .. }
        ));
        assert!(matches!(
            Error::from_errno(add(), libc::EBUSY, None, None),
            Error::Kernel {
                errno: libc::EBUSY,
                ..
            }
        ));
    }

    #[test]
    fn messages_name_the_object_and_the_remedy() {
        let e = Error::from_errno(ctx(Action::AddDestination), libc::EPERM, None, None);
        let text = e.to_string();
        assert!(
            text.contains("add destination 10.1.0.1:8080 to TCP 10.0.0.1:80"),
            "{text}"
        );
        assert!(
            text.contains("CAP_NET_ADMIN in the initial user namespace"),
            "{text}"
        );
        assert!(Error::Unavailable.to_string().contains("ip_vs"));
        let e = Error::from_errno(ctx(Action::DeleteDestination), libc::ENOENT, None, None);
        assert!(e.to_string().ends_with("destination not found"), "{e}");
        let e = Error::from_errno(ctx(Action::AddDestination), libc::EINVAL, None, None);
        assert!(e.to_string().contains("routable"), "{e}");
        let e = Error::from_errno(
            Context::new(Action::AddService),
            libc::ENOENT,
            Some("nosuch"),
            None,
        );
        assert!(e.to_string().contains("ip_vs_nosuch"), "{e}");
    }
}
