//! kube-proxy 1.37's conntrack reconciler, decided (`pkg/proxy/conntrack/cleanup.go`):
//! which UDP conntrack entries are stale, given the Services and EndpointSlices of one
//! address family and the entries of its conntrack table.
//!
//! - **Frontends** ([`Frontends::new`]): for every UDP port of a Service that has a
//!   ClusterIP of the family, its ClusterIP:port, each LoadBalancer IP:port and each
//!   externalIP:port of the family map to the port's *serving* endpoints (IP:port, from
//!   the family's slices, by port name and protocol); `*:NodePort` maps to them too, but
//!   only when there is at least one (NodePort entries are matched on the port alone).
//!   Traffic policies, topology and terminating state are left out on purpose, as
//!   kube-proxy leaves them out: a change to the Service does not cut existing flows.
//! - **Stale** ([`Frontends::is_stale`]): a UDP entry whose original destination is such a
//!   frontend and whose reply source (where it was DNATed) is not one of its serving
//!   endpoints. A Service without a serving endpoint has all its IP:port entries stale.
//! - **When** ([`serves_udp`]): kube-proxy runs the pass at the end of a family's sync
//!   whenever an EndpointSlice change reached a Service whose slices of that family, before
//!   or after the change, carry a UDP port and at least one endpoint
//!   (`endpointschangetracker.go`, `ConntrackCleanupRequired`). The first listing counts.
//!
//! The executor dumps the family's table, keeps what [`Frontends::stale`] returns and
//! deletes those entries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use kipvs_ipvs::{Family, Protocol};

use crate::model::{EndpointSlice, Service};

/// One conntrack entry, as the reconciler reads it: its two tuples and its zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    /// The layer-4 protocol; `None` for one kipvs does not proxy (ICMP, ...), whose
    /// ports are then 0.
    pub protocol: Option<Protocol>,
    /// Original direction: source (the client).
    pub orig_src: SocketAddr,
    /// Original direction: destination (what the client sent to: a Service IP:port or a
    /// NodePort).
    pub orig_dst: SocketAddr,
    /// Reply direction: source (where the flow was DNATed: the endpoint).
    pub reply_src: SocketAddr,
    /// Reply direction: destination.
    pub reply_dst: SocketAddr,
    /// The conntrack zone (0 for the default one).
    pub zone: u16,
}

/// The UDP frontends of one family and the serving endpoints behind each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontends {
    /// Service IP:port (ClusterIP, LoadBalancer IPs, externalIPs) to serving endpoints.
    ips: BTreeMap<SocketAddr, BTreeSet<SocketAddr>>,
    /// NodePort to serving endpoints (only ports with at least one).
    node_ports: BTreeMap<u16, BTreeSet<SocketAddr>>,
}

/// Whether a slice counts towards kube-proxy's trigger: it has a UDP port and at least
/// one endpoint (in any condition).
pub fn serves_udp(slice: &EndpointSlice) -> bool {
    !slice.endpoints.is_empty() && slice.ports.iter().any(|p| p.protocol == Protocol::Udp)
}

impl Frontends {
    /// The frontends of `services` in `family`; `slices_of` gives a Service's slices (of
    /// any family: those of other families are left out here).
    pub fn new<'a, S>(
        services: impl IntoIterator<Item = &'a Service>,
        slices_of: impl Fn(&Service) -> S,
        family: Family,
    ) -> Frontends
    where
        S: IntoIterator<Item = &'a EndpointSlice>,
    {
        let in_family = |ip: &&IpAddr| Family::of(ip) == family;
        let mut frontends = Frontends::default();
        for service in services {
            if service.is_skipped() {
                continue;
            }
            let Some(&cluster_ip) = service.cluster_ips.iter().find(in_family) else {
                continue;
            };
            let slices: Vec<&EndpointSlice> = slices_of(service)
                .into_iter()
                .filter(|s| s.family == family)
                .collect();
            for port in service.ports.iter().filter(|p| p.protocol == Protocol::Udp) {
                let serving: BTreeSet<SocketAddr> = slices
                    .iter()
                    .flat_map(|slice| {
                        slice
                            .ports
                            .iter()
                            .filter(|p| p.name == port.name && p.protocol == Protocol::Udp)
                            .flat_map(move |p| {
                                slice
                                    .endpoints
                                    .iter()
                                    .filter(|e| e.conditions.serving)
                                    .map(move |e| SocketAddr::new(e.addr, p.port))
                            })
                    })
                    .collect();
                let ips = std::iter::once(&cluster_ip)
                    .chain(service.load_balancer_ips.iter().filter(in_family))
                    .chain(service.external_ips.iter().filter(in_family));
                for ip in ips {
                    frontends
                        .ips
                        .entry(SocketAddr::new(*ip, port.port))
                        .or_default()
                        .extend(serving.iter().copied());
                }
                if let Some(node_port) = port.node_port.filter(|_| !serving.is_empty()) {
                    frontends
                        .node_ports
                        .entry(node_port)
                        .or_default()
                        .extend(serving.iter().copied());
                }
            }
        }
        frontends
    }

    /// Whether `flow` is stale: UDP, to a Service IP:port or to a NodePort, and not
    /// DNATed to one of its serving endpoints.
    pub fn is_stale(&self, flow: &Flow) -> bool {
        if flow.protocol != Some(Protocol::Udp) {
            return false;
        }
        let not_serving = |endpoints: &BTreeSet<SocketAddr>| !endpoints.contains(&flow.reply_src);
        self.ips.get(&flow.orig_dst).is_some_and(not_serving)
            || self
                .node_ports
                .get(&flow.orig_dst.port())
                .is_some_and(not_serving)
    }

    /// The stale entries of `flows`, in their order.
    pub fn stale<'f>(&self, flows: &'f [Flow]) -> Vec<&'f Flow> {
        flows.iter().filter(|f| self.is_stale(f)).collect()
    }

    /// Whether there is no UDP frontend at all (nothing can be stale).
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.node_ports.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RawServicePort;
    use crate::model::{RawEndpoint, RawEndpointPort, RawEndpointSlice, RawIngress, RawService};
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn udp(client: &str, dst: &str, reply: &str) -> Flow {
        Flow {
            protocol: Some(Protocol::Udp),
            orig_src: sa(client),
            orig_dst: sa(dst),
            reply_src: sa(reply),
            reply_dst: sa(client),
            zone: 0,
        }
    }

    /// `default/dns`: UDP `dns` 53 (NodePort 30053), TCP `tcp` 53, ClusterIPs
    /// 10.96.0.10 and fd00::10, an externalIP, a LoadBalancer IP.
    fn service() -> Service {
        Service::try_new(RawService {
            namespace: "default".into(),
            name: "dns".into(),
            service_type: Some("LoadBalancer".into()),
            cluster_ips: vec!["10.96.0.10".into(), "fd00::10".into()],
            external_ips: vec!["192.0.2.7".into()],
            load_balancer_ingress: vec![RawIngress {
                ip: Some("198.51.100.9".into()),
                ip_mode: None,
            }],
            ports: vec![
                RawServicePort {
                    name: Some("dns".into()),
                    protocol: Some("UDP".into()),
                    port: 53,
                    node_port: Some(30053),
                },
                RawServicePort {
                    name: Some("tcp".into()),
                    protocol: Some("TCP".into()),
                    port: 53,
                    node_port: Some(30054),
                },
            ],
            ..Default::default()
        })
        .unwrap()
    }

    /// A slice of `default/dns`: `endpoints` are (address, serving).
    fn slice(name: &str, family: &str, endpoints: &[(&str, bool)], port: u16) -> EndpointSlice {
        EndpointSlice::try_new(RawEndpointSlice {
            namespace: "default".into(),
            name: name.into(),
            service_name: Some("dns".into()),
            address_type: family.into(),
            endpoints: endpoints
                .iter()
                .map(|(a, serving)| RawEndpoint {
                    addresses: vec![(*a).into()],
                    ready: Some(*serving),
                    serving: Some(*serving),
                    terminating: Some(!*serving),
                    ..Default::default()
                })
                .collect(),
            ports: vec![
                RawEndpointPort {
                    name: Some("dns".into()),
                    protocol: Some("UDP".into()),
                    port: Some(i32::from(port)),
                },
                RawEndpointPort {
                    name: Some("tcp".into()),
                    protocol: Some("TCP".into()),
                    port: Some(5353),
                },
            ],
        })
        .unwrap()
    }

    fn frontends(slices: &[EndpointSlice], family: Family) -> Frontends {
        let svc = service();
        Frontends::new([&svc], |_| slices.iter(), family)
    }

    #[test]
    fn entries_to_a_service_frontend_not_dnated_to_a_serving_endpoint_are_stale() {
        let slices = [slice(
            "a",
            "IPv4",
            &[("10.244.1.2", true), ("10.244.2.3", false)],
            5353,
        )];
        let f = frontends(&slices, Family::V4);
        let client = "10.0.0.1:40000";
        // Every frontend, to the serving endpoint: kept.
        for dst in [
            "10.96.0.10:53",
            "192.0.2.7:53",
            "198.51.100.9:53",
            "192.168.1.10:30053",
        ] {
            assert!(!f.is_stale(&udp(client, dst, "10.244.1.2:5353")), "{dst}");
        }
        // To a non-serving endpoint, a gone one, or the right IP on the wrong port: stale.
        for dst in [
            "10.96.0.10:53",
            "192.0.2.7:53",
            "198.51.100.9:53",
            "10.1.2.3:30053",
        ] {
            for reply in ["10.244.2.3:5353", "10.244.9.9:5353", "10.244.1.2:53"] {
                assert!(f.is_stale(&udp(client, dst, reply)), "{dst} {reply}");
            }
        }
        // Not DNATed at all (made while there was no endpoint): stale.
        assert!(f.is_stale(&udp(client, "10.96.0.10:53", "10.96.0.10:53")));
        // Foreign traffic, TCP, another port of the Service IP: left alone.
        assert!(!f.is_stale(&udp(client, "10.0.0.99:5353", "10.0.0.99:5353")));
        assert!(!f.is_stale(&udp(client, "10.96.0.10:54", "10.244.9.9:54")));
        let tcp = Flow {
            protocol: Some(Protocol::Tcp),
            ..udp(client, "10.96.0.10:53", "10.244.9.9:5353")
        };
        assert!(!f.is_stale(&tcp));
        // The TCP port's NodePort is no UDP frontend.
        assert!(!f.is_stale(&udp(client, "10.1.2.3:30054", "10.1.2.3:30054")));
    }

    #[test]
    fn without_a_serving_endpoint_service_ips_are_cleaned_but_not_the_node_port() {
        let slices = [slice("a", "IPv4", &[("10.244.2.3", false)], 53)];
        let f = frontends(&slices, Family::V4);
        assert!(f.is_stale(&udp("10.0.0.1:1", "10.96.0.10:53", "10.244.2.3:53")));
        assert!(f.is_stale(&udp("10.0.0.1:1", "10.96.0.10:53", "10.96.0.10:53")));
        assert!(!f.is_stale(&udp("10.0.0.1:1", "10.1.2.3:30053", "10.1.2.3:30053")));
        // No slice at all: the same.
        let f = frontends(&[], Family::V4);
        assert!(f.is_stale(&udp("10.0.0.1:1", "10.96.0.10:53", "10.244.1.2:53")));
        assert!(!f.is_empty());
    }

    #[test]
    fn each_family_has_its_own_frontends_and_endpoints() {
        let slices = [
            slice("a", "IPv4", &[("10.244.1.2", true)], 53),
            slice("b", "IPv6", &[("fd00:244::2", true)], 53),
        ];
        let v6 = frontends(&slices, Family::V6);
        assert!(!v6.is_stale(&udp("[fd00::1]:1", "[fd00::10]:53", "[fd00:244::2]:53")));
        assert!(v6.is_stale(&udp("[fd00::1]:1", "[fd00::10]:53", "[fd00:244::3]:53")));
        // The IPv4 ClusterIP is not an IPv6 frontend.
        assert!(!v6.is_stale(&udp("10.0.0.1:1", "10.96.0.10:53", "10.244.9.9:53")));
        let v4 = frontends(&slices, Family::V4);
        assert!(!v4.is_stale(&udp("10.0.0.1:1", "10.96.0.10:53", "10.244.1.2:53")));
    }

    #[test]
    fn the_trigger_is_a_slice_with_a_udp_port_and_an_endpoint() {
        assert!(serves_udp(&slice(
            "a",
            "IPv4",
            &[("10.244.2.3", false)],
            53
        )));
        assert!(!serves_udp(&slice("a", "IPv4", &[], 53)));
        let mut tcp_only = slice("a", "IPv4", &[("10.244.1.2", true)], 53);
        tcp_only.ports.retain(|p| p.protocol == Protocol::Tcp);
        assert!(!serves_udp(&tcp_only));
    }

    proptest! {
        /// Whatever the table holds, an entry is stale exactly when it is UDP, goes to
        /// the ClusterIP's port and is not DNATed to the one serving endpoint; nothing
        /// else is touched.
        #[test]
        fn only_udp_entries_to_a_frontend_off_the_serving_endpoints_are_stale(
            entries in proptest::collection::vec(
                (0u8..3, 0u8..4, 0u8..4, 50u16..56),
                0..40,
            )
        ) {
            let slices = [slice("a", "IPv4", &[("10.244.1.2", true), ("10.244.1.3", false)], 53)];
            let f = frontends(&slices, Family::V4);
            let flows: Vec<Flow> = entries
                .iter()
                .map(|&(proto, dst, reply, port)| Flow {
                    protocol: [Some(Protocol::Udp), Some(Protocol::Tcp), None][usize::from(proto)],
                    orig_src: sa("10.0.0.1:40000"),
                    orig_dst: SocketAddr::new(
                        ["10.96.0.10", "10.96.0.11", "192.0.2.7", "10.0.0.9"][usize::from(dst)]
                            .parse()
                            .unwrap(),
                        port,
                    ),
                    reply_src: SocketAddr::new(
                        ["10.244.1.2", "10.244.1.3", "10.244.9.9", "10.96.0.10"][usize::from(reply)]
                            .parse()
                            .unwrap(),
                        53,
                    ),
                    reply_dst: sa("10.0.0.1:40000"),
                    zone: 0,
                })
                .collect();
            let stale = f.stale(&flows);
            for flow in &flows {
                let frontend = matches!(
                    flow.orig_dst.ip().to_string().as_str(),
                    "10.96.0.10" | "192.0.2.7" | "198.51.100.9"
                ) && flow.orig_dst.port() == 53;
                let expected = flow.protocol == Some(Protocol::Udp)
                    && frontend
                    && flow.reply_src != sa("10.244.1.2:53");
                prop_assert_eq!(stale.contains(&flow), expected, "{:?}", flow);
            }
        }
    }
}
