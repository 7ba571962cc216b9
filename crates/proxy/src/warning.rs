//! Warnings about bad input, attached to the Kubernetes object they concern.
//!
//! Bad input never stops the core: an invalid IP, port, policy or annotation is dropped
//! or replaced by its default, and a [`Warning`] says so. The binary logs each warning
//! and records it as a Kubernetes Event on the object ([`ObjectRef`]).

use std::fmt;

/// The kind of Kubernetes object a warning is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A v1 Service.
    Service,
    /// A discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
}

impl Kind {
    /// The Kubernetes kind name (`Service`, `EndpointSlice`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }
}

/// Which object a warning is about: kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// Object kind.
    pub kind: Kind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// Why a warning was raised; the CamelCase name doubles as the Kubernetes Event reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// An IP address or CIDR could not be parsed, or is of no use (unspecified, wrong family).
    InvalidAddress,
    /// A port is outside 1..=65535 or has an unknown protocol.
    InvalidPort,
    /// A policy, type or affinity value is unknown.
    InvalidPolicy,
    /// A scheduler annotation is malformed or does not fit its scheduler.
    InvalidAnnotation,
    /// Two Services (or two ports of one) ask for the same virtual service.
    Conflict,
    /// A virtual service was left out on purpose (an address without a ClusterIP of its
    /// family).
    Skipped,
}

impl Reason {
    /// The reason as a Kubernetes Event reason (`InvalidAddress`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidAddress => "InvalidAddress",
            Reason::InvalidPort => "InvalidPort",
            Reason::InvalidPolicy => "InvalidPolicy",
            Reason::InvalidAnnotation => "InvalidAnnotation",
            Reason::Conflict => "Conflict",
            Reason::Skipped => "Skipped",
        }
    }
}

/// Something wrong with one object's input, and what the core did instead.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Warning {
    /// The object the warning is about.
    pub object: ObjectRef,
    /// Why.
    pub reason: Reason,
    /// A sentence for humans: what was wrong and what happens instead.
    pub message: String,
}

impl Warning {
    /// A warning about `object`.
    pub fn new(object: &ObjectRef, reason: Reason, message: impl Into<String>) -> Self {
        Warning {
            object: object.clone(),
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.object,
            self.reason.as_str(),
            self.message
        )
    }
}

/// An object that cannot be used at all (it has no name to attach a warning to).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidObject {
    /// The object has an empty namespace or name.
    #[error("{kind} has an empty namespace or name")]
    Unnamed {
        /// The object kind.
        kind: &'static str,
    },
    /// The EndpointSlice names no Service (label `kubernetes.io/service-name`).
    #[error("EndpointSlice {namespace}/{name} names no Service")]
    NoService {
        /// Namespace of the slice.
        namespace: String,
        /// Name of the slice.
        name: String,
    },
    /// The EndpointSlice holds addresses kipvs does not proxy (`FQDN`, or unknown).
    #[error(
        "EndpointSlice {namespace}/{name} has address type {address_type:?}, not IPv4 or IPv6"
    )]
    UnsupportedAddressType {
        /// Namespace of the slice.
        namespace: String,
        /// Name of the slice.
        name: String,
        /// The address type given.
        address_type: String,
    },
}
