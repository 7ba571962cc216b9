//! Translation of one Service (with its EndpointSlices) into its share of the desired
//! kernel state, as kube-proxy's ipvs mode lays it out.
//!
//! Per address family the Service has a ClusterIP in, and per port:
//! - a virtual service on the ClusterIP (destinations by `internalTrafficPolicy`),
//!   bound on kube-ipvs0, recorded in `KUBE-CLUSTER-IP`;
//! - one on each ExternalIP and each LoadBalancer IP (destinations by
//!   `externalTrafficPolicy`), bound on kube-ipvs0 unless the node owns the address,
//!   recorded in `KUBE-EXTERNAL-IP(-LOCAL)` / `KUBE-LOAD-BALANCER(-LOCAL)`, with the
//!   source-range sets when `loadBalancerSourceRanges` is set;
//! - one on each NodePort address of the node, recorded in `KUBE-NODE-PORT-*`;
//! - `KUBE-LOOP-BACK` entries for this node's endpoints (hairpin), the
//!   `KUBE-HEALTH-CHECK-NODE-PORT` entry for Local LoadBalancers, and `KUBE-IPVS-IPS`
//!   for every bound address.
//!
//! Each virtual service carries its owner (`namespace/name:port`). Every destination is
//! NAT (`Masq`) with weight 1. Virtual services in `excludeCIDRs` are left out.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use kipvs_ipvs::{
    Destination, Family, Persistence, Protocol, Scheduler, Service as IpvsService, ServiceFlags,
    ServiceKey,
};

use crate::config::Config;
use crate::ipset::{Entry, Member, SetKind, SetName};
use crate::model::{EndpointSlice, Node, Service, ServiceName, ServicePort, SessionAffinity};
use crate::topology::{self, Candidate};
use crate::warning::{Reason, Warning};

/// Who a desired object is for: `namespace/name:port` (the port's name, or its number
/// when unnamed). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner(Arc<str>);

impl Owner {
    /// The owner of `port` of Service `name`.
    pub fn new(name: &ServiceName, port: &ServicePort) -> Self {
        let text = if port.name.is_empty() {
            format!("{}/{}:{}", name.namespace, name.name, port.port)
        } else {
            format!("{}/{}:{}", name.namespace, name.name, port.name)
        };
        Owner(Arc::from(text))
    }

    /// The owner as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which address of a Service a virtual service serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The ClusterIP.
    ClusterIp,
    /// An ExternalIP.
    ExternalIp,
    /// A LoadBalancer ingress IP.
    LoadBalancer,
    /// A node address with the node port.
    NodePort,
}

/// A virtual service kipvs wants, with its destinations and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualService {
    /// The Service port it is for.
    pub owner: Owner,
    /// Which address of the Service it serves.
    pub role: Role,
    /// The virtual service.
    pub service: IpvsService,
    /// Its destinations, sorted by `(addr, port)`, without duplicates.
    pub destinations: Vec<Destination>,
}

/// The health check server a Local-policy LoadBalancer Service needs on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    /// `healthCheckNodePort`.
    pub node_port: u16,
    /// Ready endpoints of the Service on this node (the server answers 200 when > 0).
    pub local_endpoints: usize,
}

/// A LoadBalancer IP and port that this node itself may not reach, because no source
/// range admits the node (`KUBE-IPVS-OUT-FILTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NoNodeAccess {
    /// LoadBalancer IP.
    pub addr: IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Port.
    pub port: u16,
}

/// One Service's share of the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    /// The Service.
    pub name: ServiceName,
    /// Its virtual services, no two with the same key.
    pub virtual_services: Vec<VirtualService>,
    /// Addresses to bind on kube-ipvs0, without duplicates.
    pub addresses: Vec<IpAddr>,
    /// ipset members, without duplicates.
    pub members: Vec<Entry>,
    /// LoadBalancer IP/ports closed to this node.
    pub no_node_access: Vec<NoNodeAccess>,
    /// The health check server, for Local-policy Services with a health check node port.
    pub health_check: Option<HealthCheck>,
    /// Warnings about the Service and its EndpointSlices, and about the translation.
    pub warnings: Vec<Warning>,
}

/// Translates one Service into its share of the desired state.
///
/// `slices` are the Service's EndpointSlices (others are ignored). Returns `None` for a
/// Service kipvs does not proxy: another proxy's, headless, or ExternalName.
pub fn translate(
    service: &Service,
    slices: &[&EndpointSlice],
    node: &Node,
    config: &Config,
) -> Option<ServiceState> {
    if service.is_skipped() {
        return None;
    }
    let mut t = Translation {
        service,
        node,
        config,
        state: ServiceState {
            name: service.name.clone(),
            virtual_services: Vec::new(),
            addresses: Vec::new(),
            members: Vec::new(),
            no_node_access: Vec::new(),
            health_check: None,
            warnings: service.warnings.clone(),
        },
        keys: HashSet::new(),
        members: HashSet::new(),
    };
    for slice in slices.iter().filter(|s| s.service == service.name) {
        t.state.warnings.extend(slice.warnings.iter().cloned());
    }
    let (scheduler, flags) = t.scheduling();

    let me = service.name.object_ref();
    for ip in service
        .external_ips
        .iter()
        .chain(&service.load_balancer_ips)
    {
        if !service
            .cluster_ips
            .iter()
            .any(|c| Family::of(c) == Family::of(ip))
        {
            t.state.warnings.push(Warning::new(
                &me,
                Reason::Skipped,
                format!("address {ip} has no ClusterIP of its family; ignored"),
            ));
        }
    }

    for cluster_ip in &service.cluster_ips {
        let family = Family::of(cluster_ip);
        if !config.handles(family) {
            continue;
        }
        let node_ips: Vec<IpAddr> = node
            .addresses
            .iter()
            .filter(|a| Family::of(a) == family && config.is_node_port_address(a))
            .copied()
            .collect();
        for port in &service.ports {
            t.port(
                family,
                *cluster_ip,
                port,
                slices,
                &node_ips,
                &scheduler,
                flags,
            );
        }
        if service.external_policy_local() {
            if let Some(hc) = service.health_check_node_port {
                t.member(
                    SetName::new(SetKind::HealthCheckNodePort, family),
                    Member::Port(hc),
                );
            }
        }
    }

    if service.external_policy_local() {
        if let Some(node_port) = service.health_check_node_port {
            let mut local: Vec<IpAddr> = slices
                .iter()
                .filter(|s| s.service == service.name)
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.conditions.ready && e.node.as_deref() == Some(node.name.as_str()))
                .map(|e| e.addr)
                .collect();
            local.sort_unstable();
            local.dedup();
            t.state.health_check = Some(HealthCheck {
                node_port,
                local_endpoints: local.len(),
            });
        }
    }
    Some(t.state)
}

struct Translation<'a> {
    service: &'a Service,
    node: &'a Node,
    config: &'a Config,
    state: ServiceState,
    keys: HashSet<ServiceKey>,
    members: HashSet<Entry>,
}

impl Translation<'_> {
    fn warn(&mut self, reason: Reason, message: String) {
        let me = self.service.name.object_ref();
        self.state.warnings.push(Warning::new(&me, reason, message));
    }

    /// The scheduler and flags: annotations first, then the configuration.
    fn scheduling(&mut self) -> (Scheduler, ServiceFlags) {
        let choice = self.service.scheduler.clone().unwrap_or_default();
        let from_annotation = choice.flags.is_some();
        let scheduler = choice
            .scheduler
            .unwrap_or_else(|| self.config.scheduler.clone());
        let mut flags = ServiceFlags::default();
        match choice.flags.or(self.config.scheduler_flags) {
            Some(f) if !f.is_empty() => {
                if scheduler.uses_hash_flags() {
                    f.apply_to(&mut flags);
                } else if from_annotation {
                    self.warn(
                        Reason::InvalidAnnotation,
                        format!(
                            "scheduler flags apply to sh and mh only, not {scheduler}; ignored"
                        ),
                    );
                }
            }
            Some(_) => {}
            None => flags.sched_port = scheduler == Scheduler::MaglevHashing,
        }
        if let SessionAffinity::ClientIp { .. } = self.service.session_affinity {
            flags.persistent = true;
        }
        (scheduler, flags)
    }

    fn member(&mut self, set: SetName, member: Member) {
        if self.members.insert((set, member)) {
            self.state.members.push((set, member));
        }
    }

    fn bind(&mut self, addr: IpAddr) {
        if !self.state.addresses.contains(&addr) {
            self.state.addresses.push(addr);
            self.member(
                SetName::new(SetKind::IpvsIps, Family::of(&addr)),
                Member::Ip(addr),
            );
        }
    }

    /// Adds a virtual service unless its key is taken or excluded. Returns whether it
    /// was added.
    fn virtual_service(&mut self, vs: VirtualService) -> bool {
        let key = vs.service.key;
        if let ServiceKey::Addr { addr, .. } = key {
            if self.config.is_excluded(&addr) {
                self.warn(
                    Reason::Skipped,
                    format!("{key} is in excludeCIDRs; not programmed"),
                );
                return false;
            }
        }
        if !self.keys.insert(key) {
            self.warn(
                Reason::Conflict,
                format!(
                    "{key} is asked for twice by this Service; {} ignored",
                    vs.owner
                ),
            );
            return false;
        }
        self.state.virtual_services.push(vs);
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn port(
        &mut self,
        family: Family,
        cluster_ip: IpAddr,
        port: &ServicePort,
        slices: &[&EndpointSlice],
        node_ips: &[IpAddr],
        scheduler: &Scheduler,
        flags: ServiceFlags,
    ) {
        let service = self.service;
        let node = self.node;
        let protocol = port.protocol;
        let owner = Owner::new(&service.name, port);

        let mut candidates: Vec<Candidate<'_>> = Vec::new();
        for slice in slices
            .iter()
            .filter(|s| s.family == family && s.service == service.name)
        {
            for sp in slice
                .ports
                .iter()
                .filter(|sp| sp.name == port.name && sp.protocol == protocol)
            {
                candidates.extend(slice.endpoints.iter().map(|endpoint| Candidate {
                    endpoint,
                    port: sp.port,
                }));
            }
        }
        let selection = topology::select(&candidates, node, service.traffic_distribution);
        let dests = |chosen: &[Candidate<'_>]| -> Vec<Destination> {
            let mut d: Vec<Destination> = chosen
                .iter()
                .map(|c| Destination::masq(c.endpoint.addr, c.port, 1))
                .collect();
            d.sort_unstable_by_key(Destination::id);
            d.dedup_by_key(|x| x.id());
            d
        };
        let cluster_dests = dests(&selection.cluster);
        let local_dests = dests(&selection.local);
        let internal = if service.internal_policy_local() {
            &local_dests
        } else {
            &cluster_dests
        };
        let external_local = service.external_policy_local();
        let external = if external_local {
            &local_dests
        } else {
            &cluster_dests
        };

        let persistence = match service.session_affinity {
            SessionAffinity::ClientIp { timeout } => Some(Persistence {
                timeout,
                netmask: match family {
                    Family::V4 => 32,
                    Family::V6 => 128,
                },
                engine: None,
            }),
            SessionAffinity::None => None,
        };
        let make = |addr: IpAddr, vport: u16, role: Role, destinations: &Vec<Destination>| {
            VirtualService {
                owner: owner.clone(),
                role,
                service: IpvsService {
                    key: ServiceKey::Addr {
                        protocol,
                        addr,
                        port: vport,
                    },
                    scheduler: scheduler.clone(),
                    flags,
                    persistence: persistence.clone(),
                },
                destinations: destinations.clone(),
            }
        };
        let set = |kind| SetName::new(kind, family);
        let ip_port = |ip| Member::IpPort {
            ip,
            protocol,
            port: port.port,
        };

        // Hairpin: this node's endpoints reaching themselves through the Service.
        for c in &candidates {
            let e = c.endpoint;
            if c.is_local(node) && (e.conditions.ready || e.conditions.serving) {
                self.member(
                    set(SetKind::LoopBack),
                    Member::IpPortIp {
                        ip: e.addr,
                        protocol,
                        port: c.port,
                        ip2: e.addr,
                    },
                );
            }
        }

        if self.virtual_service(make(cluster_ip, port.port, Role::ClusterIp, internal)) {
            self.member(set(SetKind::ClusterIp), ip_port(cluster_ip));
            self.bind(cluster_ip);
        }

        for &ip in service
            .external_ips
            .iter()
            .filter(|ip| Family::of(ip) == family)
        {
            if self.virtual_service(make(ip, port.port, Role::ExternalIp, external)) {
                let kind = if external_local {
                    SetKind::ExternalIpLocal
                } else {
                    SetKind::ExternalIp
                };
                self.member(set(kind), ip_port(ip));
                if !node.has_address(&ip) {
                    self.bind(ip);
                }
            }
        }

        for &ip in service
            .load_balancer_ips
            .iter()
            .filter(|ip| Family::of(ip) == family)
        {
            if !self.virtual_service(make(ip, port.port, Role::LoadBalancer, external)) {
                continue;
            }
            self.member(set(SetKind::LoadBalancer), ip_port(ip));
            if external_local {
                self.member(set(SetKind::LoadBalancerLocal), ip_port(ip));
            }
            let ranges: Vec<_> = service
                .load_balancer_source_ranges
                .iter()
                .filter(|n| Family::of(&n.addr()) == family)
                .copied()
                .collect();
            if !ranges.is_empty() {
                self.member(set(SetKind::LoadBalancerFw), ip_port(ip));
                let mut from_node = false;
                for net in ranges {
                    self.member(
                        set(SetKind::LoadBalancerSourceCidr),
                        Member::IpPortNet {
                            ip,
                            protocol,
                            port: port.port,
                            net,
                        },
                    );
                    from_node |= node.addresses.iter().any(|a| net.contains(a));
                }
                if from_node {
                    self.member(
                        set(SetKind::LoadBalancerSourceIp),
                        Member::IpPortIp {
                            ip,
                            protocol,
                            port: port.port,
                            ip2: ip,
                        },
                    );
                } else {
                    self.state.no_node_access.push(NoNodeAccess {
                        addr: ip,
                        protocol,
                        port: port.port,
                    });
                }
            }
            if !node.has_address(&ip) {
                self.bind(ip);
            }
        }

        if let Some(node_port) = port.node_port {
            if node_ips.is_empty() {
                return;
            }
            let mut any = false;
            for &ip in node_ips {
                any |= self.virtual_service(make(ip, node_port, Role::NodePort, external));
            }
            if !any {
                return;
            }
            let (all, local) = match protocol {
                Protocol::Tcp => (SetKind::NodePortTcp, SetKind::NodePortLocalTcp),
                Protocol::Udp => (SetKind::NodePortUdp, SetKind::NodePortLocalUdp),
                Protocol::Sctp => (SetKind::NodePortSctp, SetKind::NodePortLocalSctp),
            };
            let members: Vec<Member> = match protocol {
                Protocol::Sctp => node_ips
                    .iter()
                    .map(|&ip| Member::IpPort {
                        ip,
                        protocol,
                        port: node_port,
                    })
                    .collect(),
                Protocol::Tcp | Protocol::Udp => vec![Member::Port(node_port)],
            };
            for m in members {
                self.member(set(all), m);
                if external_local {
                    self.member(set(local), m);
                }
            }
        }
    }
}
