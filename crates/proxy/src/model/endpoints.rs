//! The endpoints model: what kipvs needs of a discovery.k8s.io/v1 EndpointSlice.
//!
//! [`RawEndpointSlice`] mirrors the API object loosely; [`EndpointSlice::try_new`]
//! validates it once. Bad endpoints and ports are dropped with a warning in
//! [`EndpointSlice::warnings`]; those warnings are reported with the owning Service.

use std::fmt;
use std::net::IpAddr;

use kipvs_ipvs::{Family, Protocol};

use crate::model::service::{parse_port, parse_protocol, ServiceName};
use crate::warning::{InvalidObject, Kind, ObjectRef, Reason, Warning};

/// Namespace and name of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SliceName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl SliceName {
    /// A slice name from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        SliceName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for SliceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The conditions of an endpoint, with the API's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conditions {
    /// Ready for new traffic (never true while terminating).
    pub ready: bool,
    /// Passing its readiness checks, even while terminating.
    pub serving: bool,
    /// Shutting down.
    pub terminating: bool,
}

impl Conditions {
    /// Serving while terminating: used only when no ready endpoint exists.
    pub fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    /// How useful the endpoint is: ready over serving-terminating over the rest.
    fn rank(&self) -> u8 {
        if self.ready {
            2
        } else if self.serving_terminating() {
            1
        } else {
            0
        }
    }
}

/// One endpoint (a pod) of a slice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The endpoint's address (the first of `addresses`, as kube-proxy does).
    pub addr: IpAddr,
    /// Conditions.
    pub conditions: Conditions,
    /// The node it runs on.
    pub node: Option<String>,
    /// The zone it runs in.
    pub zone: Option<String>,
    /// Zones that should use it (`hints.forZones`).
    pub zone_hints: Vec<String>,
    /// Nodes that should use it (`hints.forNodes`).
    pub node_hints: Vec<String>,
}

impl Endpoint {
    /// Keeps whichever of two copies of the same endpoint is more useful.
    pub(crate) fn better_of(self, other: Endpoint) -> Endpoint {
        if other.conditions.rank() > self.conditions.rank() {
            other
        } else {
            self
        }
    }
}

/// One port of a slice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointPort {
    /// Name; matches the Service port of the same name and protocol.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The port the endpoints listen on.
    pub port: u16,
}

/// A validated EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// Namespace and name of the slice.
    pub name: SliceName,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: ServiceName,
    /// Address family of its endpoints.
    pub family: Family,
    /// Endpoints with a valid address of the slice's family.
    pub endpoints: Vec<Endpoint>,
    /// Valid ports.
    pub ports: Vec<EndpointPort>,
    /// What was wrong with the input.
    pub warnings: Vec<Warning>,
}

/// An EndpointSlice as the API gives it, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawEndpointSlice {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// Label `kubernetes.io/service-name`.
    pub service_name: Option<String>,
    /// `addressType` (`IPv4`, `IPv6`, `FQDN`).
    pub address_type: String,
    /// `endpoints`.
    pub endpoints: Vec<RawEndpoint>,
    /// `ports`.
    pub ports: Vec<RawEndpointPort>,
}

/// One `endpoints` entry as the API gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawEndpoint {
    /// `addresses`.
    pub addresses: Vec<String>,
    /// `conditions.ready` (absent means ready).
    pub ready: Option<bool>,
    /// `conditions.serving` (absent means serving, as kube-proxy reads it).
    pub serving: Option<bool>,
    /// `conditions.terminating` (absent means not terminating).
    pub terminating: Option<bool>,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `zone`.
    pub zone: Option<String>,
    /// `hints.forZones[].name`.
    pub zone_hints: Vec<String>,
    /// `hints.forNodes[].name`.
    pub node_hints: Vec<String>,
}

/// One `ports` entry as the API gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawEndpointPort {
    /// `name` (empty when absent).
    pub name: Option<String>,
    /// `protocol` (`TCP` when absent).
    pub protocol: Option<String>,
    /// `port` (absent means "all ports", which kipvs cannot proxy).
    pub port: Option<i32>,
}

impl EndpointSlice {
    /// Validates an EndpointSlice.
    ///
    /// Fails when the slice has no name, names no Service, or holds addresses that are
    /// not IPv4 or IPv6 (`FQDN` slices are not proxied). Bad endpoints and ports are
    /// dropped with a warning.
    pub fn try_new(raw: RawEndpointSlice) -> Result<EndpointSlice, InvalidObject> {
        if raw.namespace.is_empty() || raw.name.is_empty() {
            return Err(InvalidObject::Unnamed {
                kind: "EndpointSlice",
            });
        }
        let Some(service_name) = raw.service_name.filter(|s| !s.is_empty()) else {
            return Err(InvalidObject::NoService {
                namespace: raw.namespace,
                name: raw.name,
            });
        };
        let family = match raw.address_type.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            _ => {
                return Err(InvalidObject::UnsupportedAddressType {
                    namespace: raw.namespace,
                    name: raw.name,
                    address_type: raw.address_type,
                })
            }
        };
        let me = ObjectRef {
            kind: Kind::EndpointSlice,
            namespace: raw.namespace.clone(),
            name: raw.name.clone(),
        };
        let mut warnings = Vec::new();

        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(raw.endpoints.len());
        for e in raw.endpoints {
            let Some(text) = e.addresses.first() else {
                warnings.push(Warning::new(
                    &me,
                    Reason::InvalidAddress,
                    "endpoint without address ignored",
                ));
                continue;
            };
            let addr = match text.trim().parse::<IpAddr>() {
                Ok(a) if Family::of(&a) == family && !a.is_unspecified() => a,
                _ => {
                    warnings.push(Warning::new(
                        &me,
                        Reason::InvalidAddress,
                        format!(
                            "endpoint address {text:?} is not a usable {} address; ignored",
                            raw.address_type
                        ),
                    ));
                    continue;
                }
            };
            let terminating = e.terminating.unwrap_or(false);
            let ready = e.ready.unwrap_or(true) && !terminating;
            let serving = e.serving.unwrap_or(true);
            let endpoint = Endpoint {
                addr,
                conditions: Conditions {
                    ready,
                    serving,
                    terminating,
                },
                node: e.node_name.filter(|n| !n.is_empty()),
                zone: e.zone.filter(|z| !z.is_empty()),
                zone_hints: e.zone_hints,
                node_hints: e.node_hints,
            };
            match endpoints.iter().position(|x| x.addr == addr) {
                Some(i) => {
                    let old = endpoints.swap_remove(i);
                    endpoints.push(old.better_of(endpoint));
                }
                None => endpoints.push(endpoint),
            }
        }

        let mut ports = Vec::with_capacity(raw.ports.len());
        for p in raw.ports {
            let name = p.name.unwrap_or_default();
            let Some(protocol) = parse_protocol(p.protocol.as_deref()) else {
                warnings.push(Warning::new(
                    &me,
                    Reason::InvalidPort,
                    format!(
                        "port {name:?} has unknown protocol {:?}; ignored",
                        p.protocol.unwrap_or_default()
                    ),
                ));
                continue;
            };
            let Some(port) = p.port.and_then(parse_port) else {
                warnings.push(Warning::new(
                    &me,
                    Reason::InvalidPort,
                    format!("port {name:?} has no number in 1-65535; ignored"),
                ));
                continue;
            };
            ports.push(EndpointPort {
                name,
                protocol,
                port,
            });
        }

        Ok(EndpointSlice {
            name: SliceName::new(raw.namespace.clone(), raw.name),
            service: ServiceName::new(raw.namespace, service_name),
            family,
            endpoints,
            ports,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawEndpointSlice {
        RawEndpointSlice {
            namespace: "default".into(),
            name: "web-abc".into(),
            service_name: Some("web".into()),
            address_type: "IPv4".into(),
            endpoints: vec![RawEndpoint {
                addresses: vec!["10.244.1.5".into()],
                node_name: Some("node-a".into()),
                ..RawEndpoint::default()
            }],
            ports: vec![RawEndpointPort {
                name: Some("http".into()),
                protocol: None,
                port: Some(8080),
            }],
        }
    }

    #[test]
    fn absent_conditions_mean_ready_and_serving() {
        let s = EndpointSlice::try_new(raw()).unwrap();
        assert_eq!(
            s.endpoints[0].conditions,
            Conditions {
                ready: true,
                serving: true,
                terminating: false
            }
        );
        assert_eq!(s.service, ServiceName::new("default", "web"));
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn a_terminating_endpoint_is_never_ready() {
        let mut r = raw();
        r.endpoints[0].ready = Some(true);
        r.endpoints[0].terminating = Some(true);
        let s = EndpointSlice::try_new(r).unwrap();
        assert!(!s.endpoints[0].conditions.ready);
        assert!(s.endpoints[0].conditions.serving_terminating());
    }

    #[test]
    fn fqdn_slices_and_slices_without_a_service_are_refused() {
        let mut r = raw();
        r.address_type = "FQDN".into();
        assert!(matches!(
            EndpointSlice::try_new(r),
            Err(InvalidObject::UnsupportedAddressType { .. })
        ));
        let mut r = raw();
        r.service_name = None;
        assert!(matches!(
            EndpointSlice::try_new(r),
            Err(InvalidObject::NoService { .. })
        ));
    }

    #[test]
    fn addresses_of_the_wrong_family_and_bad_ports_are_dropped_with_warnings() {
        let mut r = raw();
        r.endpoints.push(RawEndpoint {
            addresses: vec!["fd00::1".into()],
            ..RawEndpoint::default()
        });
        r.endpoints.push(RawEndpoint {
            addresses: vec!["garbage".into()],
            ..RawEndpoint::default()
        });
        r.ports.push(RawEndpointPort {
            name: Some("all".into()),
            protocol: None,
            port: None,
        });
        let s = EndpointSlice::try_new(r).unwrap();
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(s.ports.len(), 1);
        assert_eq!(s.warnings.len(), 3);
    }

    #[test]
    fn a_duplicated_endpoint_keeps_its_most_useful_copy() {
        let mut r = raw();
        r.endpoints.insert(
            0,
            RawEndpoint {
                addresses: vec!["10.244.1.5".into()],
                ready: Some(false),
                ..RawEndpoint::default()
            },
        );
        let s = EndpointSlice::try_new(r).unwrap();
        assert_eq!(s.endpoints.len(), 1);
        assert!(s.endpoints[0].conditions.ready);
    }
}
