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
//! NAT (`Masq`) with weight 1. `excludeCIDRs` does not matter here: as in kube-proxy, a
//! Service inside those ranges is programmed like any other (the ranges only protect
//! virtual services no Service asks for from deletion, see [`crate::ownership`]).
//!
//! Destinations follow kube-proxy's ipvs mode (`syncEndpoint` with `CategorizeEndpoints`):
//! a virtual service under a Local policy gets this node's endpoints, and when this node
//! has none, it falls back to the endpoints Cluster policy would use (kubernetes#97081:
//! pods on this node still reach a Local LoadBalancer or NodePort through its address;
//! outside clients are steered away by the healthCheckNodePort). The `-LOCAL` set
//! members stay either way. For `internalTrafficPolicy: Local` the fallback exists only
//! when the Service port is also reachable from outside (a node port, an ExternalIP or a
//! LoadBalancer IP of the family): kube-proxy computes Cluster-policy endpoints only for
//! those, so a plain ClusterIP Service with no local endpoint gets an empty virtual
//! service.

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

    /// The Service the port belongs to.
    pub fn service(&self) -> ServiceName {
        let (namespace, rest) = self.0.split_once('/').unwrap_or(("", &self.0));
        let name = rest.rsplit_once(':').map_or(rest, |(name, _)| name);
        ServiceName::new(namespace, name)
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

/// The traffic a policy applies to: `internalTrafficPolicy` (ClusterIPs) or
/// `externalTrafficPolicy` (ExternalIPs, LoadBalancer IPs, node ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Traffic {
    /// Cluster-internal traffic.
    Internal,
    /// Traffic from outside the cluster.
    External,
}

impl Traffic {
    /// The `traffic_policy` label of kube-proxy's metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Traffic::Internal => "internal",
            Traffic::External => "external",
        }
    }
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
    /// The families and policies for which a Local-policy virtual service fell back to
    /// every endpoint because this node has none while others do (kube-proxy's
    /// `sync_proxy_rules_no_local_endpoints_total`), without duplicates.
    pub no_local_endpoints: Vec<(Family, Traffic)>,
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
            no_local_endpoints: Vec::new(),
            warnings: service.warnings.clone(),
        },
        keys: Vec::new(),
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
    keys: Vec<ServiceKey>,
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
        if !self.state.members.contains(&(set, member)) {
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

    /// Books a Local-policy virtual service that fell back to every endpoint. As in
    /// kube-proxy, the Service then counts as without local endpoints for each of its
    /// Local policies (internal when internalTrafficPolicy is Local; external when
    /// `external` says externalTrafficPolicy is Local).
    fn no_local(&mut self, family: Family, external: bool) {
        let mut add = |traffic| {
            if !self.state.no_local_endpoints.contains(&(family, traffic)) {
                self.state.no_local_endpoints.push((family, traffic));
            }
        };
        if self.service.internal_policy_local() {
            add(Traffic::Internal);
        }
        if external {
            add(Traffic::External);
        }
    }

    /// Adds a virtual service unless this Service already asked for its key. Returns
    /// whether it was added.
    fn virtual_service(&mut self, vs: VirtualService) -> bool {
        let key = vs.service.key;
        if self.keys.contains(&key) {
            self.warn(
                Reason::Conflict,
                format!(
                    "{key} is asked for twice by this Service; {} ignored",
                    vs.owner
                ),
            );
            return false;
        }
        self.keys.push(key);
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
        let local_dests = dests(&selection.local);
        // kube-proxy computes Cluster-policy endpoints only for a port that uses them:
        // under internalTrafficPolicy Cluster, or when reachable from outside.
        let externally_accessible = port.node_port.is_some()
            || service
                .external_ips
                .iter()
                .any(|ip| Family::of(ip) == family)
            || service
                .load_balancer_ips
                .iter()
                .any(|ip| Family::of(ip) == family);
        let cluster_dests = if !service.internal_policy_local() || externally_accessible {
            dests(&selection.cluster)
        } else {
            Vec::new()
        };
        let any_usable = candidates
            .iter()
            .any(|c| c.endpoint.conditions.ready || c.endpoint.conditions.serving_terminating());
        // A Local policy uses this node's endpoints, or, with none here, the Cluster ones.
        let local_or_cluster = if local_dests.is_empty() {
            &cluster_dests
        } else {
            &local_dests
        };
        let internal_local = service.internal_policy_local();
        let external_local = service.external_policy_local();
        let internal = if internal_local {
            local_or_cluster
        } else {
            &cluster_dests
        };
        let external = if external_local {
            local_or_cluster
        } else {
            &cluster_dests
        };
        let fell_back = local_dests.is_empty() && any_usable;

        let persistence = match service.session_affinity {
            SessionAffinity::ClientIp { timeout } => Some(Persistence::per_client(family, timeout)),
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
                    engine: None,
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

        // Hairpin: this node's endpoints reaching themselves through the Service. Every
        // local endpoint, whatever its conditions, as kube-proxy (which adds each local
        // endpoint of its endpoints map, starting and terminating ones included).
        for c in &candidates {
            let e = c.endpoint;
            if c.is_local(node) {
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
            if internal_local && fell_back {
                self.no_local(family, external_local);
            }
        }

        for &ip in service
            .external_ips
            .iter()
            .filter(|ip| Family::of(ip) == family)
        {
            if self.virtual_service(make(ip, port.port, Role::ExternalIp, external)) {
                if external_local && fell_back {
                    self.no_local(family, true);
                }
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
            if external_local && fell_back {
                self.no_local(family, true);
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
            if external_local && fell_back {
                self.no_local(family, true);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations;
    use crate::model::{RawEndpoint, RawIngress, RawService};
    use crate::testutil::*;

    fn run(raw: RawService, slices: &[EndpointSlice], config: &Config) -> ServiceState {
        let s = service(raw);
        let refs: Vec<&EndpointSlice> = slices.iter().collect();
        translate(&s, &refs, &node(), config).unwrap()
    }

    fn keys(state: &ServiceState) -> Vec<String> {
        state
            .virtual_services
            .iter()
            .map(|v| v.service.key.to_string())
            .collect()
    }

    fn members(state: &ServiceState) -> Vec<String> {
        let mut m: Vec<String> = state
            .members
            .iter()
            .map(|(s, m)| format!("{s} {m}"))
            .collect();
        m.sort();
        m
    }

    fn two_endpoints() -> Vec<EndpointSlice> {
        vec![slice(raw_slice(
            "web",
            "1",
            vec![endpoint("10.244.1.5", "a"), endpoint("10.244.2.5", "b")],
        ))]
    }

    fn dests(vs: &VirtualService) -> Vec<String> {
        vs.destinations
            .iter()
            .map(|d| format!("{}:{}", d.addr, d.port))
            .collect()
    }

    #[test]
    fn an_owner_names_its_service() {
        let name = ServiceName::new("shop", "web");
        let named = ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
        };
        let unnamed = ServicePort {
            name: String::new(),
            ..named.clone()
        };
        for port in [named, unnamed] {
            assert_eq!(Owner::new(&name, &port).service(), name);
        }
    }

    #[test]
    fn a_cluster_ip_port_becomes_one_bound_and_recorded_virtual_service() {
        let st = run(
            raw_service("web", "10.96.0.10"),
            &two_endpoints(),
            &Config::default(),
        );
        assert_eq!(keys(&st), vec!["TCP 10.96.0.10:80"]);
        let vs = &st.virtual_services[0];
        assert_eq!(vs.owner.as_str(), "default/web:http");
        assert_eq!(vs.role, Role::ClusterIp);
        assert_eq!(vs.service.scheduler, Scheduler::RoundRobin);
        assert_eq!(dests(vs), vec!["10.244.1.5:8080", "10.244.2.5:8080"]);
        assert!(vs.destinations.iter().all(|d| d.weight == 1));
        assert_eq!(st.addresses, vec![ip("10.96.0.10")]);
        assert_eq!(
            members(&st),
            vec![
                "KUBE-CLUSTER-IP 10.96.0.10,tcp:80",
                "KUBE-IPVS-IPS 10.96.0.10",
                "KUBE-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5",
            ]
        );
        assert!(st.warnings.is_empty());
    }

    #[test]
    fn every_local_endpoint_gets_its_hairpin_entry_whatever_its_conditions() {
        let starting = RawEndpoint {
            ready: Some(false),
            serving: Some(false),
            ..endpoint("10.244.1.8", "a")
        };
        let leaving = RawEndpoint {
            ready: Some(false),
            serving: Some(false),
            terminating: Some(true),
            ..endpoint("10.244.1.9", "a")
        };
        let slices = vec![slice(raw_slice("web", "1", vec![starting, leaving]))];
        let st = run(
            raw_service("web", "10.96.0.10"),
            &slices,
            &Config::default(),
        );
        assert!(st.virtual_services[0].destinations.is_empty());
        assert_eq!(
            members(&st),
            vec![
                "KUBE-CLUSTER-IP 10.96.0.10,tcp:80",
                "KUBE-IPVS-IPS 10.96.0.10",
                "KUBE-LOOP-BACK 10.244.1.8,tcp:8080,10.244.1.8",
                "KUBE-LOOP-BACK 10.244.1.9,tcp:8080,10.244.1.9",
            ]
        );
    }

    #[test]
    fn external_ips_are_served_and_bound_unless_the_node_owns_them() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.external_ips = vec!["203.0.113.5".into(), "192.168.1.10".into()];
        let st = run(raw, &two_endpoints(), &Config::default());
        assert_eq!(
            keys(&st),
            vec![
                "TCP 10.96.0.10:80",
                "TCP 203.0.113.5:80",
                "TCP 192.168.1.10:80"
            ]
        );
        assert_eq!(st.addresses, vec![ip("10.96.0.10"), ip("203.0.113.5")]);
        let m = members(&st);
        assert!(m.contains(&"KUBE-EXTERNAL-IP 203.0.113.5,tcp:80".to_string()));
        assert!(m.contains(&"KUBE-EXTERNAL-IP 192.168.1.10,tcp:80".to_string()));
        assert!(!m.contains(&"KUBE-IPVS-IPS 192.168.1.10".to_string()));
    }

    #[test]
    fn load_balancer_ips_are_served_and_recorded() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.service_type = Some("LoadBalancer".into());
        raw.load_balancer_ingress = vec![RawIngress {
            ip: Some("198.51.100.7".into()),
            ip_mode: None,
        }];
        let st = run(raw, &two_endpoints(), &Config::default());
        assert_eq!(keys(&st), vec!["TCP 10.96.0.10:80", "TCP 198.51.100.7:80"]);
        assert_eq!(st.virtual_services[1].role, Role::LoadBalancer);
        assert!(members(&st).contains(&"KUBE-LOAD-BALANCER 198.51.100.7,tcp:80".to_string()));
        assert!(st.addresses.contains(&ip("198.51.100.7")));
        assert!(st.no_node_access.is_empty());
    }

    #[test]
    fn source_ranges_fill_the_firewall_sets_and_close_the_ip_to_a_node_outside_them() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.service_type = Some("LoadBalancer".into());
        raw.load_balancer_ingress = vec![RawIngress {
            ip: Some("198.51.100.7".into()),
            ip_mode: None,
        }];
        raw.load_balancer_source_ranges = vec!["203.0.113.0/24".into()];
        let st = run(raw.clone(), &two_endpoints(), &Config::default());
        let m = members(&st);
        assert!(m.contains(&"KUBE-LOAD-BALANCER-FW 198.51.100.7,tcp:80".to_string()));
        assert!(m.contains(
            &"KUBE-LOAD-BALANCER-SOURCE-CIDR 198.51.100.7,tcp:80,203.0.113.0/24".to_string()
        ));
        assert_eq!(
            st.no_node_access,
            vec![NoNodeAccess {
                addr: ip("198.51.100.7"),
                protocol: Protocol::Tcp,
                port: 80
            }]
        );

        raw.load_balancer_source_ranges
            .push("192.168.1.0/24".into());
        let st = run(raw, &two_endpoints(), &Config::default());
        assert!(members(&st).contains(
            &"KUBE-LOAD-BALANCER-SOURCE-IP 198.51.100.7,tcp:80,198.51.100.7".to_string()
        ));
        assert!(st.no_node_access.is_empty());
    }

    #[test]
    fn node_ports_listen_on_each_node_address_of_the_family() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.service_type = Some("NodePort".into());
        raw.ports = vec![
            port("http", "TCP", 80, Some(30080)),
            port("sig", "SCTP", 9, Some(30009)),
        ];
        let st = run(raw, &[], &Config::default());
        assert_eq!(
            keys(&st),
            vec![
                "TCP 10.96.0.10:80",
                "TCP 192.168.1.10:30080",
                "SCTP 10.96.0.10:9",
                "SCTP 192.168.1.10:30009"
            ]
        );
        let m = members(&st);
        assert!(m.contains(&"KUBE-NODE-PORT-TCP 30080".to_string()));
        assert!(m.contains(&"KUBE-NODE-PORT-SCTP-HASH 192.168.1.10,sctp:30009".to_string()));
        assert!(!m.iter().any(|x| x.contains("LOCAL")));
    }

    #[test]
    fn node_port_addresses_restrict_where_node_ports_listen() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.ports = vec![port("http", "TCP", 80, Some(30080))];
        let config = Config {
            node_port_addresses: vec!["10.0.0.0/8".parse().unwrap()],
            ..Config::default()
        };
        let st = run(raw, &[], &config);
        assert_eq!(keys(&st), vec!["TCP 10.96.0.10:80"]);
        assert!(!members(&st).iter().any(|m| m.contains("NODE-PORT")));
    }

    #[test]
    fn local_external_policy_sends_external_traffic_to_this_nodes_endpoints_only() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.service_type = Some("LoadBalancer".into());
        raw.external_traffic_policy = Some("Local".into());
        raw.health_check_node_port = Some(32000);
        raw.ports = vec![port("http", "TCP", 80, Some(30080))];
        raw.load_balancer_ingress = vec![RawIngress {
            ip: Some("198.51.100.7".into()),
            ip_mode: None,
        }];
        let st = run(raw, &two_endpoints(), &Config::default());
        for vs in &st.virtual_services {
            let want = if vs.role == Role::ClusterIp {
                vec!["10.244.1.5:8080", "10.244.2.5:8080"]
            } else {
                vec!["10.244.1.5:8080"]
            };
            assert_eq!(dests(vs), want, "{}", vs.service.key);
        }
        let m = members(&st);
        assert!(m.contains(&"KUBE-LOAD-BALANCER-LOCAL 198.51.100.7,tcp:80".to_string()));
        assert!(m.contains(&"KUBE-NODE-PORT-LOCAL-TCP 30080".to_string()));
        assert!(m.contains(&"KUBE-HEALTH-CHECK-NODE-PORT 32000".to_string()));
        assert_eq!(
            st.health_check,
            Some(HealthCheck {
                node_port: 32000,
                local_endpoints: 1
            })
        );
    }

    fn remote_endpoints() -> Vec<EndpointSlice> {
        vec![slice(raw_slice(
            "web",
            "1",
            vec![endpoint("10.244.2.5", "b"), endpoint("10.244.3.5", "c")],
        ))]
    }

    fn local_load_balancer() -> RawService {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.service_type = Some("LoadBalancer".into());
        raw.external_traffic_policy = Some("Local".into());
        raw.health_check_node_port = Some(32000);
        raw.ports = vec![port("http", "TCP", 80, Some(30080))];
        raw.external_ips = vec!["203.0.113.5".into()];
        raw.load_balancer_ingress = vec![RawIngress {
            ip: Some("198.51.100.7".into()),
            ip_mode: None,
        }];
        raw
    }

    #[test]
    fn local_external_policy_without_a_local_endpoint_falls_back_to_every_endpoint() {
        let st = run(
            local_load_balancer(),
            &remote_endpoints(),
            &Config::default(),
        );
        assert_eq!(st.virtual_services.len(), 4);
        for vs in &st.virtual_services {
            assert_eq!(
                dests(vs),
                vec!["10.244.2.5:8080", "10.244.3.5:8080"],
                "{:?} {}",
                vs.role,
                vs.service.key
            );
        }
        // The -LOCAL records stay: traffic to them is still not masqueraded, and the
        // health check still says this node has no endpoint.
        let m = members(&st);
        for member in [
            "KUBE-LOAD-BALANCER-LOCAL 198.51.100.7,tcp:80",
            "KUBE-EXTERNAL-IP-LOCAL 203.0.113.5,tcp:80",
            "KUBE-NODE-PORT-LOCAL-TCP 30080",
        ] {
            assert!(m.contains(&member.to_string()), "{member} missing: {m:?}");
        }
        assert!(!m.iter().any(|x| x.starts_with("KUBE-EXTERNAL-IP ")));
        assert_eq!(
            st.health_check,
            Some(HealthCheck {
                node_port: 32000,
                local_endpoints: 0
            })
        );
        assert_eq!(st.no_local_endpoints, vec![(Family::V4, Traffic::External)]);
    }

    #[test]
    fn local_external_policy_keeps_local_endpoints_when_there_are_some() {
        let mut slices = remote_endpoints();
        slices.push(slice(raw_slice(
            "web",
            "2",
            vec![endpoint("10.244.1.5", "a")],
        )));
        let st = run(local_load_balancer(), &slices, &Config::default());
        for vs in st
            .virtual_services
            .iter()
            .filter(|v| v.role != Role::ClusterIp)
        {
            assert_eq!(dests(vs), vec!["10.244.1.5:8080"], "{}", vs.service.key);
        }
        assert!(st.no_local_endpoints.is_empty());
    }

    #[test]
    fn a_local_policy_service_without_any_endpoint_does_not_count_as_falling_back() {
        let st = run(local_load_balancer(), &[], &Config::default());
        assert!(st
            .virtual_services
            .iter()
            .all(|v| v.destinations.is_empty()));
        assert!(st.no_local_endpoints.is_empty());
    }

    #[test]
    fn local_internal_policy_without_a_local_endpoint_leaves_a_cluster_ip_only_service_empty() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.internal_traffic_policy = Some("Local".into());
        let st = run(raw, &remote_endpoints(), &Config::default());
        assert_eq!(keys(&st), vec!["TCP 10.96.0.10:80"]);
        assert!(st.virtual_services[0].destinations.is_empty());
        assert_eq!(st.no_local_endpoints, vec![(Family::V4, Traffic::Internal)]);
    }

    #[test]
    fn local_internal_policy_falls_back_when_the_port_is_also_reachable_from_outside() {
        // kube-proxy computes Cluster endpoints for an externally reachable port, and
        // its ClusterIP fallback then uses them.
        let mut raw = raw_service("web", "10.96.0.10");
        raw.service_type = Some("NodePort".into());
        raw.internal_traffic_policy = Some("Local".into());
        raw.ports = vec![port("http", "TCP", 80, Some(30080))];
        let st = run(raw, &remote_endpoints(), &Config::default());
        for vs in &st.virtual_services {
            assert_eq!(dests(vs), vec!["10.244.2.5:8080", "10.244.3.5:8080"]);
        }
        assert_eq!(st.no_local_endpoints, vec![(Family::V4, Traffic::Internal)]);
    }

    #[test]
    fn both_policies_local_without_a_local_endpoint_count_for_both() {
        let mut raw = local_load_balancer();
        raw.internal_traffic_policy = Some("Local".into());
        let st = run(raw, &remote_endpoints(), &Config::default());
        for vs in &st.virtual_services {
            assert_eq!(dests(vs).len(), 2, "{}", vs.service.key);
        }
        let mut counted = st.no_local_endpoints.clone();
        counted.sort();
        assert_eq!(
            counted,
            vec![
                (Family::V4, Traffic::Internal),
                (Family::V4, Traffic::External)
            ]
        );
    }

    #[test]
    fn local_internal_policy_narrows_only_the_cluster_ip() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.internal_traffic_policy = Some("Local".into());
        raw.external_ips = vec!["203.0.113.5".into()];
        let st = run(raw, &two_endpoints(), &Config::default());
        assert_eq!(dests(&st.virtual_services[0]), vec!["10.244.1.5:8080"]);
        assert_eq!(dests(&st.virtual_services[1]).len(), 2);
    }

    #[test]
    fn client_ip_affinity_makes_virtual_services_persistent() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.session_affinity = Some("ClientIP".into());
        raw.session_affinity_timeout = Some(600);
        let st = run(raw, &[], &Config::default());
        let s = &st.virtual_services[0].service;
        assert!(s.flags.persistent);
        assert_eq!(
            s.persistence,
            Some(Persistence::per_client(Family::V4, 600))
        );
    }

    #[test]
    fn the_scheduler_comes_from_annotations_then_the_configuration() {
        let config = Config {
            scheduler: Scheduler::LeastConnection,
            ..Config::default()
        };
        let st = run(raw_service("web", "10.96.0.10"), &[], &config);
        assert_eq!(
            st.virtual_services[0].service.scheduler,
            Scheduler::LeastConnection
        );

        let mut raw = raw_service("web", "10.96.0.10");
        raw.annotations
            .insert(annotations::SCHEDULER.into(), "sh".into());
        raw.annotations
            .insert(annotations::SCHEDULER_FLAGS.into(), "sh-fallback".into());
        let st = run(raw, &[], &config);
        let s = &st.virtual_services[0].service;
        assert_eq!(s.scheduler, Scheduler::SourceHashing);
        assert!(s.flags.sched_fallback && !s.flags.sched_port);
    }

    #[test]
    fn maglev_without_flags_hashes_the_port_as_kube_proxy_does() {
        let config = Config {
            scheduler: Scheduler::MaglevHashing,
            ..Config::default()
        };
        let st = run(raw_service("web", "10.96.0.10"), &[], &config);
        assert!(st.virtual_services[0].service.flags.sched_port);
    }

    #[test]
    fn hash_flags_on_a_scheduler_without_them_are_ignored_with_a_warning() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.annotations
            .insert(annotations::SCHEDULER_FLAGS.into(), "sh-port".into());
        let st = run(raw, &[], &Config::default());
        assert!(!st.virtual_services[0].service.flags.sched_port);
        assert_eq!(st.warnings.len(), 1);
        assert_eq!(st.warnings[0].reason, Reason::InvalidAnnotation);
    }

    #[test]
    fn a_bad_scheduler_annotation_keeps_the_default_and_warns() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.annotations
            .insert(annotations::SCHEDULER.into(), "bogus".into());
        let st = run(raw, &[], &Config::default());
        assert_eq!(
            st.virtual_services[0].service.scheduler,
            Scheduler::RoundRobin
        );
        assert_eq!(st.warnings[0].reason, Reason::InvalidAnnotation);
    }

    #[test]
    fn dual_stack_services_get_both_families_side_by_side() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.cluster_ips.push("fd00::10".into());
        let slices = vec![
            slice(raw_slice("web", "v4", vec![endpoint("10.244.1.5", "a")])),
            slice(raw_slice("web", "v6", vec![endpoint("fd00:244::5", "b")])),
        ];
        let st = run(raw, &slices, &Config::default());
        assert_eq!(keys(&st), vec!["TCP 10.96.0.10:80", "TCP [fd00::10]:80"]);
        assert_eq!(dests(&st.virtual_services[0]), vec!["10.244.1.5:8080"]);
        assert_eq!(dests(&st.virtual_services[1]), vec!["fd00:244::5:8080"]);
        assert_eq!(st.virtual_services[0].owner, st.virtual_services[1].owner);
        assert!(members(&st).contains(&"KUBE-6-CLUSTER-IP fd00::10,tcp:80".to_string()));
    }

    #[test]
    fn a_family_the_configuration_leaves_out_is_not_programmed() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.cluster_ips.push("fd00::10".into());
        let config = Config {
            families: vec![Family::V4],
            ..Config::default()
        };
        let st = run(raw, &[], &config);
        assert_eq!(keys(&st), vec!["TCP 10.96.0.10:80"]);
    }

    #[test]
    fn an_external_ip_without_a_cluster_ip_of_its_family_is_ignored_with_a_warning() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.external_ips = vec!["2001:db8::1".into()];
        let st = run(raw, &[], &Config::default());
        assert_eq!(keys(&st), vec!["TCP 10.96.0.10:80"]);
        assert_eq!(st.warnings[0].reason, Reason::Skipped);
    }

    #[test]
    fn udp_and_sctp_ports_are_served_like_tcp() {
        let mut raw = raw_service("dns", "10.96.0.53");
        raw.ports = vec![
            port("dns", "UDP", 53, None),
            port("sig", "SCTP", 2905, None),
        ];
        let st = run(raw, &[], &Config::default());
        assert_eq!(keys(&st), vec!["UDP 10.96.0.53:53", "SCTP 10.96.0.53:2905"]);
    }

    #[test]
    fn endpoints_are_matched_to_service_ports_by_name_and_protocol() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.ports.push(port("admin", "TCP", 9000, None));
        let mut s = raw_slice("web", "1", vec![endpoint("10.244.1.5", "a")]);
        s.ports.push(RawEndpointPortAlias {
            name: Some("admin".into()),
            protocol: Some("UDP".into()),
            port: Some(9001),
        });
        let st = run(raw, &[slice(s)], &Config::default());
        assert_eq!(dests(&st.virtual_services[0]), vec!["10.244.1.5:8080"]);
        assert!(st.virtual_services[1].destinations.is_empty());
    }

    use crate::model::RawEndpointPort as RawEndpointPortAlias;

    #[test]
    fn services_of_other_proxies_headless_ones_and_external_names_translate_to_nothing() {
        let mut other = raw_service("web", "10.96.0.10");
        other.labels.insert(
            crate::model::service::SERVICE_PROXY_NAME_LABEL.into(),
            "x".into(),
        );
        let headless = raw_service("web", "None");
        let mut alias = raw_service("web", "");
        alias.service_type = Some("ExternalName".into());
        for raw in [other, headless, alias] {
            assert!(translate(&service(raw), &[], &node(), &Config::default()).is_none());
        }
    }

    #[test]
    fn services_in_exclude_cidrs_are_programmed_like_any_other() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.service_type = Some("NodePort".into());
        raw.ports = vec![port("http", "TCP", 80, Some(30080))];
        raw.external_ips = vec!["203.0.113.5".into()];
        let config = Config {
            exclude_cidrs: vec![
                "203.0.113.0/24".parse().unwrap(),
                "10.96.0.0/16".parse().unwrap(),
                "192.168.1.0/24".parse().unwrap(),
            ],
            ..Config::default()
        };
        let st = run(raw, &two_endpoints(), &config);
        assert_eq!(
            keys(&st),
            vec![
                "TCP 10.96.0.10:80",
                "TCP 203.0.113.5:80",
                "TCP 192.168.1.10:30080"
            ]
        );
        assert!(st
            .virtual_services
            .iter()
            .all(|v| v.destinations.len() == 2));
        assert_eq!(st.addresses, vec![ip("10.96.0.10"), ip("203.0.113.5")]);
        assert!(st.warnings.is_empty(), "{:?}", st.warnings);
    }

    #[test]
    fn warnings_of_the_services_slices_are_reported_with_it() {
        let s = slice(raw_slice("web", "1", vec![endpoint("not-an-ip", "a")]));
        let st = run(raw_service("web", "10.96.0.10"), &[s], &Config::default());
        assert_eq!(st.warnings.len(), 1);
        assert_eq!(
            st.warnings[0].object.kind,
            crate::warning::Kind::EndpointSlice
        );
    }

    #[test]
    fn an_address_asked_for_twice_by_one_service_is_served_once() {
        let mut raw = raw_service("web", "10.96.0.10");
        raw.external_ips = vec!["10.96.0.10".into()];
        let st = run(raw, &[], &Config::default());
        assert_eq!(keys(&st), vec!["TCP 10.96.0.10:80"]);
        assert_eq!(st.warnings[0].reason, Reason::Conflict);
    }
}
