//! Property tests of the planner: for random clusters and random observed kernel states,
//! applying the Plan yields the desired state, planning again yields nothing, and no
//! operation touches an object kipvs does not own.

// Test support code outside #[test] functions: a failed unwrap is a bug in the test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use kipvs_proxy::ipvs::{
    ConnCounters, Destination, DestinationEntry, Family, Protocol, Scheduler,
    Service as IpvsService, ServiceEntry, ServiceKey, Stats,
};
use kipvs_proxy::{
    apply, plan, translate, Config, Desired, Drain, EndpointSlice, IpvsOp, Member, Moment, Node,
    Observed, Plan, Proxier, RawEndpoint, RawEndpointPort, RawEndpointSlice, RawIngress,
    RawService, RawServicePort, Service, SetKind, SetName,
};
use proptest::prelude::*;

const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

fn node() -> Node {
    Node::new("a").with_zone("z1").with_addresses([
        "192.168.1.10".parse().unwrap(),
        "fd00:1::10".parse().unwrap(),
    ])
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[derive(Debug, Clone)]
struct SvcSpec {
    v6: bool,
    ports: Vec<(usize, u16, bool)>,
    external: Vec<u8>,
    lb: Vec<u8>,
    local: bool,
    affinity: bool,
    scheduler: Option<&'static str>,
    endpoints: Vec<(u8, u8, bool)>,
}

fn svc_spec() -> impl Strategy<Value = SvcSpec> {
    (
        any::<bool>(),
        prop::collection::vec(
            (
                0usize..3,
                prop::sample::select(vec![53u16, 80, 443]),
                any::<bool>(),
            ),
            1..3,
        ),
        prop::collection::vec(0u8..4, 0..2),
        prop::collection::vec(0u8..2, 0..2),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["rr", "sh", "mh", "wlc", "bogus"])),
        prop::collection::vec((1u8..6, 0u8..3, any::<bool>()), 0..5),
    )
        .prop_map(
            |(v6, ports, external, lb, local, affinity, scheduler, endpoints)| SvcSpec {
                v6,
                ports,
                external,
                lb,
                local,
                affinity,
                scheduler,
                endpoints,
            },
        )
}

fn build(i: usize, spec: &SvcSpec) -> (Service, Vec<EndpointSlice>) {
    let name = format!("svc{i}");
    let mut cluster_ips = vec![format!("10.96.0.{i}")];
    if spec.v6 {
        cluster_ips.push(format!("fd00::{i}"));
    }
    let ports: Vec<RawServicePort> = spec
        .ports
        .iter()
        .enumerate()
        .map(|(j, (proto, port, np))| RawServicePort {
            name: Some(format!("p{j}")),
            protocol: Some(PROTOCOLS[*proto].into()),
            port: i32::from(*port),
            node_port: np.then(|| 30000 + i32::try_from(i * 4 + j).unwrap()),
        })
        .collect();
    let mut annotations = BTreeMap::new();
    if let Some(s) = spec.scheduler {
        annotations.insert("ipvs.kipvs.io/scheduler".to_owned(), s.to_owned());
    }
    let raw = RawService {
        namespace: "default".into(),
        name: name.clone(),
        annotations,
        service_type: Some(
            if spec.lb.is_empty() {
                "NodePort"
            } else {
                "LoadBalancer"
            }
            .into(),
        ),
        cluster_ips,
        ports: ports.clone(),
        // 203.0.113.3 is excluded in some configurations; 192.168.1.10 is the node's own.
        external_ips: spec
            .external
            .iter()
            .map(|e| {
                if *e == 0 {
                    "192.168.1.10".to_owned()
                } else {
                    format!("203.0.113.{e}")
                }
            })
            .collect(),
        load_balancer_ingress: spec
            .lb
            .iter()
            .map(|l| RawIngress {
                ip: Some(format!("198.51.100.{l}")),
                ip_mode: None,
            })
            .collect(),
        load_balancer_source_ranges: if spec.affinity {
            vec!["198.51.100.0/24".into()]
        } else {
            vec![]
        },
        session_affinity: spec.affinity.then(|| "ClientIP".into()),
        external_traffic_policy: spec.local.then(|| "Local".into()),
        health_check_node_port: spec.local.then(|| 32000 + i32::try_from(i).unwrap()),
        ..RawService::default()
    };
    let service = Service::try_new(raw).unwrap();
    let endpoints: Vec<RawEndpoint> = spec
        .endpoints
        .iter()
        .map(|(host, node, ready)| RawEndpoint {
            addresses: vec![format!("10.244.{i}.{host}")],
            ready: Some(*ready),
            serving: Some(true),
            terminating: Some(!*ready),
            node_name: Some(["a", "b", "c"][usize::from(*node)].into()),
            ..RawEndpoint::default()
        })
        .collect();
    let slice_ports = ports
        .iter()
        .map(|p| RawEndpointPort {
            name: p.name.clone(),
            protocol: p.protocol.clone(),
            port: Some(p.port + 8000),
        })
        .collect();
    let slice = EndpointSlice::try_new(RawEndpointSlice {
        namespace: "default".into(),
        name: format!("{name}-1"),
        service_name: Some(name),
        address_type: "IPv4".into(),
        endpoints,
        ports: slice_ports,
    })
    .unwrap();
    (service, vec![slice])
}

/// Destinations of a generated kernel service: (host, weight, active connections).
type DestSpecs = Vec<(u8, u32, u32)>;

#[derive(Debug, Clone)]
struct KernelSpec {
    /// Services at keys a cluster may want or kipvs may have left: (ip pool index, port, proto, sched, dests)
    owned: Vec<(u8, u16, usize, bool, DestSpecs)>,
    /// Foreign services: (last octet in 192.168.100.0/24, port, dests)
    foreign: Vec<(u8, u16, DestSpecs)>,
    bound: Vec<u8>,
    stale_node_ports: Vec<u16>,
    stale_cluster_members: Vec<u8>,
}

/// Addresses kipvs-owned garbage and partial desired state may sit on.
fn owned_addr(i: u8) -> IpAddr {
    match i % 5 {
        0 => ip(&format!("10.96.0.{}", i / 5)),
        1 => ip(&format!("10.96.1.{}", i / 5)),
        2 => ip(&format!("203.0.113.{}", i / 5 % 4)),
        3 => ip("192.168.1.10"),
        _ => ip(&format!("fd00::{}", i / 5)),
    }
}

fn kernel_spec() -> impl Strategy<Value = KernelSpec> {
    let dests = prop::collection::vec((1u8..8, 0u32..2, 0u32..3), 0..4);
    (
        prop::collection::vec(
            (
                0u8..40,
                prop::sample::select(vec![53u16, 80, 443, 30001, 30005]),
                0usize..3,
                any::<bool>(),
                dests.clone(),
            ),
            0..8,
        ),
        prop::collection::vec(
            (1u8..5, prop::sample::select(vec![80u16, 443, 30001]), dests),
            0..3,
        ),
        prop::collection::vec(0u8..40, 0..6),
        prop::collection::vec(prop::sample::select(vec![30001u16, 30005, 30009]), 0..3),
        prop::collection::vec(0u8..8, 0..3),
    )
        .prop_map(
            |(owned, foreign, bound, stale_node_ports, stale_cluster_members)| KernelSpec {
                owned,
                foreign,
                bound,
                stale_node_ports,
                stale_cluster_members,
            },
        )
}

fn entry(key: ServiceKey, scheduler: Scheduler, dests: &[(u8, u32, u32)]) -> ServiceEntry {
    let mut seen = HashSet::new();
    ServiceEntry {
        service: IpvsService::new(key, scheduler),
        stats: Stats::default(),
        destinations: dests
            .iter()
            .filter(|(h, _, _)| seen.insert(*h))
            .map(|(h, w, c)| DestinationEntry {
                destination: Destination::masq(
                    match key.family() {
                        Family::V4 => ip(&format!("10.244.0.{h}")),
                        Family::V6 => ip(&format!("fd00:244::{h}")),
                    },
                    8080,
                    *w,
                ),
                counters: ConnCounters {
                    active: *c,
                    inactive: 0,
                    persistent: 0,
                },
                stats: Stats::default(),
            })
            .collect(),
    }
}

fn observed_from(spec: &KernelSpec) -> Observed {
    let mut o = Observed::default();
    let mut keys = HashSet::new();
    for (a, port, proto, wlc, dests) in &spec.owned {
        let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][*proto];
        let key = ServiceKey::Addr {
            protocol,
            addr: owned_addr(*a),
            port: *port,
        };
        if keys.insert(key) {
            let s = if *wlc {
                Scheduler::WeightedLeastConnection
            } else {
                Scheduler::RoundRobin
            };
            o.table.services.push(entry(key, s, dests));
        }
    }
    for (last, port, dests) in &spec.foreign {
        let key = ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: ip(&format!("192.168.100.{last}")),
            port: *port,
        };
        if keys.insert(key) {
            o.table
                .services
                .push(entry(key, Scheduler::WeightedLeastConnection, dests));
        }
    }
    // a hand-made service on the node's own address, on a port kipvs never records
    o.table.services.push(entry(
        ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: ip("192.168.1.10"),
            port: 8443,
        },
        Scheduler::RoundRobin,
        &[(1, 1, 0)],
    ));
    for b in &spec.bound {
        let a = owned_addr(*b);
        if !node().has_address(&a) {
            o.addresses.insert(a);
        }
    }
    for p in &spec.stale_node_ports {
        o.ipsets
            .entry(SetName::new(SetKind::NodePortTcp, Family::V4))
            .or_default()
            .insert(Member::Port(*p));
    }
    for m in &spec.stale_cluster_members {
        o.ipsets
            .entry(SetName::new(SetKind::ClusterIp, Family::V4))
            .or_default()
            .insert(Member::IpPort {
                ip: ip(&format!("10.96.1.{m}")),
                protocol: Protocol::Tcp,
                port: 80,
            });
    }
    o
}

fn config(exclude: bool) -> Config {
    Config {
        exclude_cidrs: if exclude {
            vec!["203.0.113.3/32".parse().unwrap()]
        } else {
            vec![]
        },
        ..Config::default()
    }
}

fn desired_of(specs: &[SvcSpec], config: &Config) -> Desired {
    let node = node();
    Desired::from_states(specs.iter().enumerate().filter_map(|(i, s)| {
        let (svc, slices) = build(i, s);
        let refs: Vec<&EndpointSlice> = slices.iter().collect();
        translate(&svc, &refs, &node, config)
    }))
}

fn protocol_of(key: &ServiceKey) -> Protocol {
    match key {
        ServiceKey::Addr { protocol, .. } => *protocol,
        ServiceKey::Fwmark { .. } => Protocol::Tcp,
    }
}

fn check(
    desired: &Desired,
    before: &Observed,
    config: &Config,
    p: &Plan,
    after: &Observed,
) -> Result<(), TestCaseError> {
    let node = node();
    // No operation touches an object kipvs does not own.
    for op in &p.ipvs {
        let k = op.key();
        prop_assert!(
            before.owns_for(k, desired, &node, config),
            "{op:?} touches a foreign service"
        );
        if let ServiceKey::Addr { addr, .. } = k {
            prop_assert!(
                !config.is_excluded(addr) || desired.virtual_service(k).is_some(),
                "{op:?} touches an excluded virtual service no Service asks for"
            );
        }
    }
    // Foreign services are exactly as they were.
    for s in &before.table.services {
        let k = &s.service.key;
        if !before.owns_for(k, desired, &node, config) {
            prop_assert!(after.table.services.contains(s), "foreign {k} changed");
        }
    }
    // Every wanted virtual service is there, as wanted.
    for vs in desired.virtual_services() {
        let k = vs.service.key;
        let have = after.table.services.iter().find(|s| s.service.key == k);
        prop_assert!(have.is_some(), "{k} missing");
        let have = have.unwrap_or_else(|| unreachable!());
        let mut want = vs.service.clone();
        want.flags.persistent = want.persistence.is_some();
        prop_assert_eq!(&have.service, &want);
        let live: BTreeSet<&Destination> = have
            .destinations
            .iter()
            .map(|d| &d.destination)
            .filter(|d| d.weight > 0)
            .collect();
        let wanted: BTreeSet<&Destination> = vs.destinations.iter().collect();
        prop_assert_eq!(live, wanted, "destinations of {}", k);
        for d in &have.destinations {
            if !vs.destinations.iter().any(|w| w.id() == d.destination.id()) {
                prop_assert_eq!(
                    d.destination.weight,
                    0,
                    "unwanted {:?} in {} still weighted",
                    d,
                    k
                );
                prop_assert_eq!(protocol_of(&k), Protocol::Tcp);
                prop_assert!(
                    d.counters.active + d.counters.inactive > 0,
                    "idle {:?} kept",
                    d
                );
            }
        }
    }
    // Nothing kipvs owns and nobody wants is left.
    for s in &after.table.services {
        let k = &s.service.key;
        prop_assert!(
            desired.virtual_service(k).is_some() || !before.owns_for(k, desired, &node, config),
            "stale {k} left"
        );
    }
    let want_addrs: BTreeSet<IpAddr> = desired.addresses().copied().collect();
    prop_assert_eq!(&after.addresses, &want_addrs);
    let have_members: BTreeSet<(SetName, Member)> = after
        .ipsets
        .iter()
        .flat_map(|(s, ms)| ms.iter().map(move |m| (*s, *m)))
        .collect();
    let want_members: BTreeSet<(SetName, Member)> = desired.members().copied().collect();
    prop_assert_eq!(have_members, want_members);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn applying_the_plan_yields_the_desired_state_and_planning_again_yields_nothing(
        specs in prop::collection::vec(svc_spec(), 0..6),
        kernel in kernel_spec(),
        exclude in any::<bool>(),
    ) {
        let config = config(exclude);
        let desired = desired_of(&specs, &config);
        let before = observed_from(&kernel);
        let mut drain = Drain::new(Some(Duration::from_secs(600)));
        let now = Moment::from_secs(1000);
        let p = plan(&desired, &before, &node(), &config, &mut drain, now);
        let mut after = before.clone();
        apply(&p, &mut after);
        check(&desired, &before, &config, &p, &after)?;
        let again = plan(&desired, &after, &node(), &config, &mut drain, now);
        prop_assert!(again.is_empty(), "second plan: {again:?}");
    }

    #[test]
    fn the_incremental_engine_reaches_the_same_state_as_a_full_pass(
        first in prop::collection::vec(svc_spec(), 1..5),
        second in prop::collection::vec(svc_spec(), 1..5),
        kernel in kernel_spec(),
    ) {
        let config = config(false);
        let mut proxier = Proxier::new(config.clone(), node());
        let mut observed = observed_from(&kernel);
        for (i, s) in first.iter().enumerate() {
            let (svc, slices) = build(i, s);
            proxier.upsert_service(svc);
            for sl in slices { proxier.upsert_slice(sl); }
        }
        let p = proxier.verify(&observed, Moment::from_secs(0));
        apply(&p, &mut observed);
        // Change the cluster one object at a time, syncing after each.
        for i in 0..first.len().max(second.len()) {
            match second.get(i) {
                Some(s) => {
                    let (svc, slices) = build(i, s);
                    proxier.upsert_service(svc);
                    for sl in slices { proxier.upsert_slice(sl); }
                }
                None => proxier.remove_service(&kipvs_proxy::ServiceName::new("default", format!("svc{i}"))),
            }
            let p = proxier.sync(Moment::from_secs(1));
            for op in &p.ipvs {
                if let IpvsOp::DeleteService { key } = op {
                    prop_assert!(observed.owns_for(key, proxier.desired(), &node(), &config), "{key} not owned");
                }
            }
            apply(&p, &mut observed);
        }
        // A full pass then finds only draining destinations and services on addresses
        // that became kipvs' to delete, and after that nothing.
        let want = desired_of(&second, &config);
        let p = proxier.verify(&observed, Moment::from_secs(2));
        for op in &p.ipvs {
            match op {
                IpvsOp::DeleteDestination { .. } => {}
                IpvsOp::DeleteService { key } => prop_assert!(observed.owns(key, &node(), &config)),
                other => prop_assert!(false, "unexpected {other:?}"),
            }
        }
        prop_assert!(p.binds.is_empty() && p.unbinds.is_empty() && p.set_adds.is_empty() && p.set_deletes.is_empty(), "{p:?}");
        apply(&p, &mut observed);
        let live: BTreeSet<ServiceKey> = want.keys().copied().collect();
        for k in &live {
            prop_assert!(observed.table.services.iter().any(|s| s.service.key == *k));
        }
        prop_assert!(proxier.verify(&observed, Moment::from_secs(3)).is_empty());
    }
}
