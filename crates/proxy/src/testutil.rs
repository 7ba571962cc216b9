//! Builders for tests: short ways to write Services, slices, nodes and kernel state.

use std::net::IpAddr;

use kipvs_ipvs::{
    ConnCounters, Destination, DestinationEntry, Protocol, Scheduler, Service as IpvsService,
    ServiceEntry, ServiceKey, Stats,
};

use crate::model::{
    EndpointSlice, Node, RawEndpoint, RawEndpointPort, RawEndpointSlice, RawService,
    RawServicePort, Service,
};

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn tcp(addr: &str, port: u16) -> ServiceKey {
    key(Protocol::Tcp, addr, port)
}

pub fn key(protocol: Protocol, addr: &str, port: u16) -> ServiceKey {
    ServiceKey::Addr {
        protocol,
        addr: ip(addr),
        port,
    }
}

/// A ClusterIP Service `default/<name>` with one TCP port `http` 80.
pub fn raw_service(name: &str, cluster_ip: &str) -> RawService {
    RawService {
        namespace: "default".into(),
        name: name.into(),
        cluster_ips: vec![cluster_ip.into()],
        ports: vec![RawServicePort {
            name: Some("http".into()),
            protocol: None,
            port: 80,
            node_port: None,
        }],
        ..RawService::default()
    }
}

pub fn service(raw: RawService) -> Service {
    Service::try_new(raw).unwrap()
}

pub fn port(name: &str, protocol: &str, port: i32, node_port: Option<i32>) -> RawServicePort {
    RawServicePort {
        name: Some(name.into()),
        protocol: Some(protocol.into()),
        port,
        node_port,
    }
}

/// A ready endpoint on `node`.
pub fn endpoint(addr: &str, node: &str) -> RawEndpoint {
    RawEndpoint {
        addresses: vec![addr.into()],
        node_name: Some(node.into()),
        ..RawEndpoint::default()
    }
}

/// A slice `<service>-<suffix>` of `default/<service>` with port `http`/TCP 8080.
pub fn raw_slice(service: &str, suffix: &str, endpoints: Vec<RawEndpoint>) -> RawEndpointSlice {
    let v6 = endpoints
        .first()
        .is_some_and(|e| e.addresses.first().is_some_and(|a| a.contains(':')));
    RawEndpointSlice {
        namespace: "default".into(),
        name: format!("{service}-{suffix}"),
        service_name: Some(service.into()),
        address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
        endpoints,
        ports: vec![RawEndpointPort {
            name: Some("http".into()),
            protocol: None,
            port: Some(8080),
        }],
    }
}

pub fn slice(raw: RawEndpointSlice) -> EndpointSlice {
    EndpointSlice::try_new(raw).unwrap()
}

/// Node `a` in zone `z1` at 192.168.1.10 and fd00:1::10.
pub fn node() -> Node {
    Node::new("a")
        .with_zone("z1")
        .with_addresses([ip("192.168.1.10"), ip("fd00:1::10")])
}

pub fn kernel_service(
    key: ServiceKey,
    scheduler: Scheduler,
    dests: &[(&str, u16, u32, u32)],
) -> ServiceEntry {
    ServiceEntry {
        service: IpvsService::new(key, scheduler),
        stats: Stats::default(),
        destinations: dests
            .iter()
            .map(|(a, p, w, conns)| DestinationEntry {
                destination: Destination::masq(ip(a), *p, *w),
                counters: ConnCounters {
                    active: *conns,
                    inactive: 0,
                    persistent: 0,
                },
                stats: Stats::default(),
            })
            .collect(),
    }
}
