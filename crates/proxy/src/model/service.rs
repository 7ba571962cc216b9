//! The Service model: what kipvs needs of a v1 Service, validated once at the edge.
//!
//! [`RawService`] mirrors the API object loosely (strings and `i32`s, as k8s-openapi
//! gives them); [`Service::try_new`] turns it into a [`Service`] whose every value is
//! typed and valid. Bad values are dropped or defaulted and recorded as warnings in
//! [`Service::warnings`]; only a nameless Service is refused.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use kipvs_ipvs::{Family, Protocol};

use crate::annotations::{self, SchedulerChoice};
use crate::warning::{InvalidObject, Kind, ObjectRef, Reason, Warning};

/// Label that hands a Service to another proxy; kipvs skips such Services.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Session affinity timeout when `sessionAffinityConfig` gives none (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// Longest session affinity timeout the API allows (1 day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// Namespace and name of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceName {
    /// A Service name from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The reference warnings about this Service carry.
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            kind: Kind::Service,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `spec.type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ServiceType {
    /// Reachable at its ClusterIPs (and externalIPs) only.
    #[default]
    ClusterIp,
    /// Also on a port of every node.
    NodePort,
    /// Also at load-balancer ingress IPs.
    LoadBalancer,
    /// A DNS alias; nothing to proxy.
    ExternalName,
}

/// `spec.externalTrafficPolicy` / `spec.internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on this node.
    Local,
}

/// `spec.sessionAffinity` with its timeout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SessionAffinity {
    /// No stickiness.
    #[default]
    None,
    /// A client IP sticks to one endpoint for `timeout` seconds (IPVS persistence).
    ClientIp {
        /// Seconds, 1..=86400.
        timeout: u32,
    },
}

/// `spec.trafficDistribution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrafficDistribution {
    /// Prefer endpoints in this node's zone (`PreferClose`).
    PreferClose,
    /// Prefer endpoints in this node's zone (`PreferSameZone`, the newer name).
    PreferSameZone,
    /// Prefer endpoints on this node (`PreferSameNode`).
    PreferSameNode,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// Port name; empty for a Service's single unnamed port.
    pub name: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The Service port (on ClusterIPs, externalIPs and LoadBalancer IPs).
    pub port: u16,
    /// The node port, when one is allocated.
    pub node_port: Option<u16>,
}

/// A validated Service: everything kipvs reads of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Namespace and name.
    pub name: ServiceName,
    /// `spec.type`.
    pub service_type: ServiceType,
    /// `spec.clusterIPs`: at most one per family, in the order given.
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`.
    pub headless: bool,
    /// Valid ports.
    pub ports: Vec<ServicePort>,
    /// `spec.externalIPs` that parse.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` whose `ipMode` is `VIP` (or unset).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` that parse.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `spec.sessionAffinity` with its timeout.
    pub session_affinity: SessionAffinity,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// `spec.trafficDistribution`, when known.
    pub traffic_distribution: Option<TrafficDistribution>,
    /// The scheduler and flags the annotations ask for, if any.
    pub scheduler: Option<SchedulerChoice>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// What was wrong with the input, and what was done instead.
    pub warnings: Vec<Warning>,
}

/// A Service as the API gives it, before validation. Every field is optional or loose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawService {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `spec.type` (`ClusterIP` when absent).
    pub service_type: Option<String>,
    /// `spec.clusterIPs`, or `[spec.clusterIP]` when the list is empty.
    pub cluster_ips: Vec<String>,
    /// `spec.ports`.
    pub ports: Vec<RawServicePort>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<String>,
    /// `status.loadBalancer.ingress`.
    pub load_balancer_ingress: Vec<RawIngress>,
    /// `spec.loadBalancerSourceRanges`.
    pub load_balancer_source_ranges: Vec<String>,
    /// `spec.sessionAffinity`.
    pub session_affinity: Option<String>,
    /// `spec.sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub session_affinity_timeout: Option<i32>,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: Option<String>,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: Option<String>,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<i32>,
    /// `spec.trafficDistribution`.
    pub traffic_distribution: Option<String>,
}

/// One `spec.ports` entry as the API gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawServicePort {
    /// `name`.
    pub name: Option<String>,
    /// `protocol` (`TCP` when absent).
    pub protocol: Option<String>,
    /// `port`.
    pub port: i32,
    /// `nodePort`.
    pub node_port: Option<i32>,
}

/// One `status.loadBalancer.ingress` entry as the API gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawIngress {
    /// `ip` (ingress entries with only a hostname have none).
    pub ip: Option<String>,
    /// `ipMode` (`VIP` when absent).
    pub ip_mode: Option<String>,
}

/// Parses a protocol as the API spells it (`TCP`, `UDP`, `SCTP`); `None` means TCP.
pub(crate) fn parse_protocol(value: Option<&str>) -> Option<Protocol> {
    match value {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        Some("SCTP") => Some(Protocol::Sctp),
        Some(_) => None,
    }
}

/// Parses a port number in 1..=65535.
pub(crate) fn parse_port(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p != 0)
}

/// Parses an IP address, trimming spaces; rejects unspecified addresses.
pub(crate) fn parse_ip(value: &str) -> Option<IpAddr> {
    value
        .trim()
        .parse::<IpAddr>()
        .ok()
        .filter(|ip| !ip.is_unspecified())
}

/// Parses a CIDR, accepting a bare address as a host route; the prefix is truncated.
pub(crate) fn parse_cidr(value: &str) -> Option<IpNet> {
    let value = value.trim();
    if let Ok(net) = value.parse::<IpNet>() {
        return Some(net.trunc());
    }
    value.parse::<IpAddr>().ok().map(IpNet::from)
}

impl Service {
    /// Validates a Service.
    ///
    /// Fails only when the namespace or name is empty. Everything else that is wrong is
    /// dropped or defaulted, with a warning in [`Service::warnings`].
    pub fn try_new(raw: RawService) -> Result<Service, InvalidObject> {
        if raw.namespace.is_empty() || raw.name.is_empty() {
            return Err(InvalidObject::Unnamed { kind: "Service" });
        }
        let name = ServiceName::new(raw.namespace, raw.name);
        let me = name.object_ref();
        let mut warnings = Vec::new();
        let mut warn = |reason, message: String| warnings.push(Warning::new(&me, reason, message));

        let service_type = match raw.service_type.as_deref() {
            None | Some("ClusterIP") | Some("") => ServiceType::ClusterIp,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            Some(other) => {
                warn(
                    Reason::InvalidPolicy,
                    format!("unknown type {other:?}; treated as ClusterIP"),
                );
                ServiceType::ClusterIp
            }
        };

        let mut headless = false;
        let mut cluster_ips: Vec<IpAddr> = Vec::new();
        for text in &raw.cluster_ips {
            match text.trim() {
                "" => {}
                "None" => headless = true,
                t => match parse_ip(t) {
                    Some(ip) if cluster_ips.iter().any(|c| Family::of(c) == Family::of(&ip)) => {
                        warn(
                            Reason::InvalidAddress,
                            format!("second clusterIP {ip} of one family ignored"),
                        );
                    }
                    Some(ip) => cluster_ips.push(ip),
                    None => warn(
                        Reason::InvalidAddress,
                        format!("clusterIP {t:?} is not a usable IP address; ignored"),
                    ),
                },
            }
        }
        if headless {
            cluster_ips.clear();
        }

        let mut ports = Vec::new();
        for p in &raw.ports {
            let label = p.name.clone().unwrap_or_default();
            let Some(protocol) = parse_protocol(p.protocol.as_deref()) else {
                warn(
                    Reason::InvalidPort,
                    format!(
                        "port {label:?} has unknown protocol {:?}; port ignored",
                        p.protocol.as_deref().unwrap_or("")
                    ),
                );
                continue;
            };
            let Some(port) = parse_port(p.port) else {
                warn(
                    Reason::InvalidPort,
                    format!(
                        "port {label:?} number {} is not in 1-65535; port ignored",
                        p.port
                    ),
                );
                continue;
            };
            let node_port = match p.node_port {
                None | Some(0) => None,
                Some(n) => match parse_port(n) {
                    Some(n) => Some(n),
                    None => {
                        warn(
                            Reason::InvalidPort,
                            format!("port {label:?} nodePort {n} is not in 1-65535; no node port"),
                        );
                        None
                    }
                },
            };
            if ports
                .iter()
                .any(|q: &ServicePort| q.name == label && q.protocol == protocol)
            {
                warn(
                    Reason::InvalidPort,
                    format!("port name {label:?} used twice for {protocol}; second ignored"),
                );
                continue;
            }
            ports.push(ServicePort {
                name: label,
                protocol,
                port,
                node_port,
            });
        }

        let mut external_ips = Vec::new();
        for text in &raw.external_ips {
            match parse_ip(text) {
                Some(ip) if !external_ips.contains(&ip) => external_ips.push(ip),
                Some(_) => {}
                None => warn(
                    Reason::InvalidAddress,
                    format!("externalIP {text:?} is not a usable IP address; ignored"),
                ),
            }
        }

        let mut load_balancer_ips = Vec::new();
        for ingress in &raw.load_balancer_ingress {
            let Some(text) = ingress.ip.as_deref().filter(|t| !t.is_empty()) else {
                continue;
            };
            match ingress.ip_mode.as_deref() {
                None | Some("VIP") => {}
                Some("Proxy") => continue,
                Some(other) => warn(
                    Reason::InvalidPolicy,
                    format!("load balancer ipMode {other:?} unknown; treated as VIP"),
                ),
            }
            match parse_ip(text) {
                Some(ip) if !load_balancer_ips.contains(&ip) => load_balancer_ips.push(ip),
                Some(_) => {}
                None => warn(
                    Reason::InvalidAddress,
                    format!(
                        "load balancer ingress IP {text:?} is not a usable IP address; ignored"
                    ),
                ),
            }
        }

        let mut load_balancer_source_ranges = Vec::new();
        for text in &raw.load_balancer_source_ranges {
            match parse_cidr(text) {
                Some(net) if !load_balancer_source_ranges.contains(&net) => {
                    load_balancer_source_ranges.push(net)
                }
                Some(_) => {}
                None => warn(
                    Reason::InvalidAddress,
                    format!("loadBalancerSourceRange {text:?} is not a CIDR; ignored"),
                ),
            }
        }

        let session_affinity = match raw.session_affinity.as_deref() {
            None | Some("None") | Some("") => SessionAffinity::None,
            Some("ClientIP") => {
                let timeout = match raw.session_affinity_timeout {
                    None => DEFAULT_AFFINITY_TIMEOUT,
                    Some(t) => match u32::try_from(t) {
                        Ok(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => t,
                        _ => {
                            warn(
                                Reason::InvalidPolicy,
                                format!(
                                    "session affinity timeout {t} is not in 1-{MAX_AFFINITY_TIMEOUT}; using {DEFAULT_AFFINITY_TIMEOUT}"
                                ),
                            );
                            DEFAULT_AFFINITY_TIMEOUT
                        }
                    },
                };
                SessionAffinity::ClientIp { timeout }
            }
            Some(other) => {
                warn(
                    Reason::InvalidPolicy,
                    format!("sessionAffinity {other:?} unknown; no affinity"),
                );
                SessionAffinity::None
            }
        };

        let mut policy = |field: &str, value: Option<&str>| match value {
            None | Some("Cluster") | Some("") => TrafficPolicy::Cluster,
            Some("Local") => TrafficPolicy::Local,
            Some(other) => {
                warn(
                    Reason::InvalidPolicy,
                    format!("{field} {other:?} unknown; using Cluster"),
                );
                TrafficPolicy::Cluster
            }
        };
        let external_traffic_policy = policy(
            "externalTrafficPolicy",
            raw.external_traffic_policy.as_deref(),
        );
        let internal_traffic_policy = policy(
            "internalTrafficPolicy",
            raw.internal_traffic_policy.as_deref(),
        );

        let health_check_node_port = match raw.health_check_node_port {
            None | Some(0) => None,
            Some(n) => match parse_port(n) {
                Some(p) => Some(p),
                None => {
                    warn(
                        Reason::InvalidPort,
                        format!("healthCheckNodePort {n} is not in 1-65535; ignored"),
                    );
                    None
                }
            },
        };

        let traffic_distribution = match raw.traffic_distribution.as_deref() {
            None | Some("") => None,
            Some("PreferClose") => Some(TrafficDistribution::PreferClose),
            Some("PreferSameZone") => Some(TrafficDistribution::PreferSameZone),
            Some("PreferSameNode") => Some(TrafficDistribution::PreferSameNode),
            Some(other) => {
                warn(
                    Reason::InvalidPolicy,
                    format!("trafficDistribution {other:?} unknown; ignored"),
                );
                None
            }
        };

        let (scheduler, annotation_warnings) = annotations::scheduler_choice(&raw.annotations);
        for message in annotation_warnings {
            warn(Reason::InvalidAnnotation, message);
        }

        Ok(Service {
            name,
            service_type,
            cluster_ips,
            headless,
            ports,
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges,
            session_affinity,
            external_traffic_policy,
            internal_traffic_policy,
            health_check_node_port,
            traffic_distribution,
            scheduler,
            labels: raw.labels,
            annotations: raw.annotations,
            warnings,
        })
    }

    /// Whether kipvs leaves this Service alone: another proxy's, headless (`clusterIP:
    /// None`), or a DNS alias. The `service.kubernetes.io/headless` label does not count
    /// on a Service, as in kube-proxy (which only filters EndpointSlices by it).
    pub fn is_skipped(&self) -> bool {
        self.labels.contains_key(SERVICE_PROXY_NAME_LABEL)
            || self.headless
            || self.cluster_ips.is_empty()
            || self.service_type == ServiceType::ExternalName
    }

    /// Whether traffic from outside reaches it (externalIPs, a LoadBalancer or node ports),
    /// so that `externalTrafficPolicy` matters.
    pub fn is_external_facing(&self) -> bool {
        !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
            || self.ports.iter().any(|p| p.node_port.is_some())
            || self.service_type == ServiceType::LoadBalancer
    }

    /// Whether external traffic (externalIPs, LoadBalancer IPs, node ports) goes only to
    /// this node's endpoints.
    pub fn external_policy_local(&self) -> bool {
        self.external_traffic_policy == TrafficPolicy::Local && self.is_external_facing()
    }

    /// Whether cluster-internal traffic (ClusterIPs) goes only to this node's endpoints.
    pub fn internal_policy_local(&self) -> bool {
        self.internal_traffic_policy == TrafficPolicy::Local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawService {
        RawService {
            namespace: "default".into(),
            name: "web".into(),
            cluster_ips: vec!["10.96.0.10".into()],
            ports: vec![RawServicePort {
                name: Some("http".into()),
                protocol: None,
                port: 80,
                node_port: None,
            }],
            ..RawService::default()
        }
    }

    fn reasons(s: &Service) -> Vec<Reason> {
        s.warnings.iter().map(|w| w.reason).collect()
    }

    #[test]
    fn a_plain_service_validates_without_warnings() {
        let s = Service::try_new(raw()).unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(s.ports[0].protocol, Protocol::Tcp);
        assert_eq!(s.cluster_ips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert!(!s.is_skipped());
    }

    #[test]
    fn a_nameless_service_is_refused() {
        let mut r = raw();
        r.name.clear();
        assert!(Service::try_new(r).is_err());
    }

    #[test]
    fn invalid_addresses_are_dropped_with_a_warning_each() {
        let mut r = raw();
        r.cluster_ips.push("10.96.0.300".into());
        r.external_ips = vec!["1.2.3.4".into(), "nope".into(), "0.0.0.0".into()];
        r.load_balancer_source_ranges = vec!["10.0.0.0/8".into(), "10.0.0.0/99".into()];
        let s = Service::try_new(r).unwrap();
        assert_eq!(s.external_ips.len(), 1);
        assert_eq!(s.load_balancer_source_ranges.len(), 1);
        assert_eq!(reasons(&s), vec![Reason::InvalidAddress; 4]);
    }

    #[test]
    fn invalid_ports_are_dropped_and_the_rest_kept() {
        let mut r = raw();
        r.ports.push(RawServicePort {
            name: Some("big".into()),
            port: 70000,
            ..RawServicePort::default()
        });
        r.ports.push(RawServicePort {
            name: Some("icmp".into()),
            protocol: Some("ICMP".into()),
            port: 1,
            ..RawServicePort::default()
        });
        r.ports.push(RawServicePort {
            name: Some("np".into()),
            port: 81,
            node_port: Some(-1),
            ..RawServicePort::default()
        });
        let s = Service::try_new(r).unwrap();
        assert_eq!(s.ports.len(), 2);
        assert_eq!(s.ports[1].node_port, None);
        assert_eq!(reasons(&s), vec![Reason::InvalidPort; 3]);
    }

    #[test]
    fn unknown_policies_fall_back_to_defaults_with_warnings() {
        let mut r = raw();
        r.external_traffic_policy = Some("Nearby".into());
        r.internal_traffic_policy = Some("Local".into());
        r.session_affinity = Some("Cookie".into());
        r.traffic_distribution = Some("Anywhere".into());
        r.service_type = Some("Weird".into());
        let s = Service::try_new(r).unwrap();
        assert_eq!(s.external_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(s.internal_traffic_policy, TrafficPolicy::Local);
        assert_eq!(s.session_affinity, SessionAffinity::None);
        assert_eq!(s.traffic_distribution, None);
        assert_eq!(s.warnings.len(), 4);
    }

    #[test]
    fn client_ip_affinity_defaults_to_three_hours() {
        let mut r = raw();
        r.session_affinity = Some("ClientIP".into());
        let s = Service::try_new(r.clone()).unwrap();
        assert_eq!(
            s.session_affinity,
            SessionAffinity::ClientIp { timeout: 10_800 }
        );
        r.session_affinity_timeout = Some(60);
        let s = Service::try_new(r.clone()).unwrap();
        assert_eq!(
            s.session_affinity,
            SessionAffinity::ClientIp { timeout: 60 }
        );
        r.session_affinity_timeout = Some(0);
        let s = Service::try_new(r).unwrap();
        assert_eq!(
            s.session_affinity,
            SessionAffinity::ClientIp { timeout: 10_800 }
        );
        assert_eq!(reasons(&s), vec![Reason::InvalidPolicy]);
    }

    #[test]
    fn headless_and_other_proxies_services_are_skipped() {
        let mut r = raw();
        r.cluster_ips = vec!["None".into()];
        assert!(Service::try_new(r).unwrap().is_skipped());
        let mut r = raw();
        r.labels
            .insert(SERVICE_PROXY_NAME_LABEL.into(), "cilium".into());
        assert!(Service::try_new(r).unwrap().is_skipped());
        let mut r = raw();
        r.service_type = Some("ExternalName".into());
        r.cluster_ips.clear();
        assert!(Service::try_new(r).unwrap().is_skipped());
        // The headless label on a Service with a ClusterIP: proxied, as by kube-proxy.
        let mut r = raw();
        r.labels
            .insert("service.kubernetes.io/headless".into(), String::new());
        assert!(!Service::try_new(r).unwrap().is_skipped());
    }

    #[test]
    fn proxy_mode_load_balancer_ips_are_left_to_the_load_balancer() {
        let mut r = raw();
        r.load_balancer_ingress = vec![
            RawIngress {
                ip: Some("203.0.113.1".into()),
                ip_mode: Some("Proxy".into()),
            },
            RawIngress {
                ip: Some("203.0.113.2".into()),
                ip_mode: None,
            },
            RawIngress {
                ip: None,
                ip_mode: None,
            },
        ];
        let s = Service::try_new(r).unwrap();
        assert_eq!(
            s.load_balancer_ips,
            vec!["203.0.113.2".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn dual_stack_keeps_one_cluster_ip_per_family() {
        let mut r = raw();
        r.cluster_ips = vec!["10.96.0.10".into(), "fd00::10".into(), "10.96.0.11".into()];
        let s = Service::try_new(r).unwrap();
        assert_eq!(s.cluster_ips.len(), 2);
        assert_eq!(reasons(&s), vec![Reason::InvalidAddress]);
    }
}
