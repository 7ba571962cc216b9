//! Mutations of the IPVS table, as values: what a batch is made of.
//!
//! An [`Operation`] is plain data (no netlink), so a planner can build a list of them
//! and the client can send that list in as few round trips as the kernel allows.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::types::{Destination, Service, ServiceKey, Timeouts};

/// One change to the IPVS table of a network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// Create a virtual service (`ipvsadm -A`). Fails when it exists.
    AddService(Service),
    /// Change the scheduler, flags or persistence of a virtual service (`ipvsadm -E`).
    UpdateService(Service),
    /// Delete a virtual service and its destinations (`ipvsadm -D`).
    DeleteService(ServiceKey),
    /// Add a destination to a virtual service (`ipvsadm -a`). Fails when it exists.
    AddDestination {
        /// The virtual service.
        service: ServiceKey,
        /// The destination.
        destination: Destination,
    },
    /// Change a destination's forwarding method, weight or thresholds (`ipvsadm -e`).
    UpdateDestination {
        /// The virtual service.
        service: ServiceKey,
        /// The destination, identified by its address and port.
        destination: Destination,
    },
    /// Remove a destination from a virtual service (`ipvsadm -d`).
    DeleteDestination {
        /// The virtual service.
        service: ServiceKey,
        /// Address of the destination.
        addr: IpAddr,
        /// Port of the destination.
        port: u16,
    },
    /// Delete every virtual service (`ipvsadm -C`).
    Flush,
    /// Zero the counters of one virtual service, or of all (`ipvsadm -Z`).
    Zero(Option<ServiceKey>),
    /// Set connection timeouts; zero fields stay unchanged (`ipvsadm --set`).
    SetTimeouts(Timeouts),
}

impl Operation {
    /// What this operation does to which object, for error messages.
    pub fn context(&self) -> Context {
        match self {
            Operation::AddService(s) => Context::service(Action::AddService, s.key),
            Operation::UpdateService(s) => Context::service(Action::UpdateService, s.key),
            Operation::DeleteService(k) => Context::service(Action::DeleteService, *k),
            Operation::AddDestination {
                service,
                destination,
            } => Context::destination(Action::AddDestination, *service, destination.id()),
            Operation::UpdateDestination {
                service,
                destination,
            } => Context::destination(Action::UpdateDestination, *service, destination.id()),
            Operation::DeleteDestination {
                service,
                addr,
                port,
            } => Context::destination(Action::DeleteDestination, *service, (*addr, *port)),
            Operation::Flush => Context::new(Action::Flush),
            Operation::Zero(Some(k)) => Context::service(Action::Zero, *k),
            Operation::Zero(None) => Context::new(Action::Zero),
            Operation::SetTimeouts(_) => Context::new(Action::SetTimeouts),
        }
    }
}

/// The kind of request that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Opening the socket or resolving the `IPVS` generic netlink family.
    Connect,
    /// Reading the IPVS version and connection table size.
    GetInfo,
    /// Listing the virtual services.
    ListServices,
    /// Reading one virtual service.
    GetService,
    /// Listing a virtual service's destinations.
    ListDestinations,
    /// Creating a virtual service.
    AddService,
    /// Changing a virtual service.
    UpdateService,
    /// Deleting a virtual service.
    DeleteService,
    /// Adding a destination.
    AddDestination,
    /// Changing a destination.
    UpdateDestination,
    /// Removing a destination.
    DeleteDestination,
    /// Deleting every virtual service.
    Flush,
    /// Zeroing counters.
    Zero,
    /// Reading the connection timeouts.
    GetTimeouts,
    /// Setting the connection timeouts.
    SetTimeouts,
}

/// What was being done to which object: the context every error carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Context {
    /// The request.
    pub action: Action,
    /// The virtual service concerned, if any.
    pub service: Option<ServiceKey>,
    /// The destination concerned, if any.
    pub destination: Option<SocketAddr>,
}

impl Context {
    /// A request about no particular object.
    pub fn new(action: Action) -> Self {
        Context {
            action,
            service: None,
            destination: None,
        }
    }

    /// A request about a virtual service.
    pub fn service(action: Action, service: ServiceKey) -> Self {
        Context {
            action,
            service: Some(service),
            destination: None,
        }
    }

    /// A request about a destination of a virtual service.
    pub fn destination(action: Action, service: ServiceKey, (addr, port): (IpAddr, u16)) -> Self {
        Context {
            action,
            service: Some(service),
            destination: Some(SocketAddr::new(addr, port)),
        }
    }
}

impl fmt::Display for Context {
    /// Reads like `add destination 10.1.0.1:8080 to TCP 10.0.0.1:80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.action {
            Action::Connect => "connect to IPVS",
            Action::GetInfo => "get IPVS info",
            Action::ListServices => "list services",
            Action::GetService => "get service",
            Action::ListDestinations => "list destinations of",
            Action::AddService => "add service",
            Action::UpdateService => "update service",
            Action::DeleteService => "delete service",
            Action::AddDestination => "add destination",
            Action::UpdateDestination => "update destination",
            Action::DeleteDestination => "delete destination",
            Action::Flush => "flush services",
            Action::Zero => "zero counters",
            Action::GetTimeouts => "get timeouts",
            Action::SetTimeouts => "set timeouts",
        };
        f.write_str(verb)?;
        if let Some(d) = self.destination {
            write!(f, " {d}")?;
            let prep = match self.action {
                Action::AddDestination => "to",
                Action::DeleteDestination => "from",
                _ => "of",
            };
            write!(f, " {prep}")?;
        } else if self.action == Action::Zero && self.service.is_some() {
            f.write_str(" of")?;
        }
        match self.service {
            Some(s) => write!(f, " {s}"),
            None if self.action == Action::Zero => f.write_str(" of every service"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Protocol, Scheduler};

    fn key() -> ServiceKey {
        ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: "10.0.0.1".parse().unwrap(),
            port: 80,
        }
    }

    #[test]
    fn contexts_read_like_sentences() {
        let add = Operation::AddDestination {
            service: key(),
            destination: Destination::masq("10.1.0.1".parse().unwrap(), 8080, 1),
        };
        assert_eq!(
            add.context().to_string(),
            "add destination 10.1.0.1:8080 to TCP 10.0.0.1:80"
        );
        let del = Operation::DeleteDestination {
            service: key(),
            addr: "fd00::1".parse().unwrap(),
            port: 0,
        };
        assert_eq!(
            del.context().to_string(),
            "delete destination [fd00::1]:0 from TCP 10.0.0.1:80"
        );
        let svc = Operation::AddService(Service::new(key(), Scheduler::RoundRobin));
        assert_eq!(svc.context().to_string(), "add service TCP 10.0.0.1:80");
        assert_eq!(
            Operation::Zero(None).context().to_string(),
            "zero counters of every service"
        );
        assert_eq!(
            Operation::Zero(Some(key())).context().to_string(),
            "zero counters of TCP 10.0.0.1:80"
        );
    }
}
