//! Kernel tests of the IPVS client, with `ipvsadm` as the oracle.
//!
//! Each test runs as root in a fresh network namespace of a kernel with IPVS (the test VM
//! where the running kernel lacks it), started by `tests/run`. Plain `cargo test` lists
//! them as ignored.

// Test code: a panic is a test failure, with the message of what was unwrapped.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use kipvs_ipvs::*;
use kipvs_testkit::Netns;

mod oracle;
use oracle::{
    ipvsadm_save, ipvsadm_thresholds, save_lines, service_line, sorted, table_save_lines,
};

fn tcp(addr: &str, port: u16) -> ServiceKey {
    ServiceKey::Addr {
        protocol: Protocol::Tcp,
        addr: addr.parse().unwrap(),
        port,
    }
}

fn udp(addr: &str, port: u16) -> ServiceKey {
    ServiceKey::Addr {
        protocol: Protocol::Udp,
        addr: addr.parse().unwrap(),
        port,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn persistence(timeout: u32, prefix: u8) -> Persistence {
    Persistence {
        timeout,
        netmask: Netmask::Prefix(prefix),
    }
}

fn flags(one_packet: bool, fallback: bool, port: bool) -> ServiceFlags {
    ServiceFlags {
        one_packet,
        sched_fallback: fallback,
        sched_port: port,
        ..ServiceFlags::default()
    }
}

fn tunnel(kind: TunnelKind, port: u16, flags: u16) -> ForwardMethod {
    ForwardMethod::Tunnel(TunnelConfig { kind, port, flags })
}

/// A namespace with routes everywhere, entered, and a client opened in it.
fn setup() -> (Netns, kipvs_testkit::EnteredNetns, Client) {
    let ns = Netns::new();
    ns.route_everything();
    let guard = ns.enter();
    let client = Client::new().expect("open an IPVS client in the test namespace");
    (ns, guard, client)
}

/// Applies `ops` and fails the test on the first error.
fn apply_all(client: &mut Client, ops: &[Operation]) {
    for (op, result) in ops.iter().zip(client.apply(ops)) {
        if let Err(e) = result {
            panic!("{op:?} failed: {e}");
        }
    }
}

/// Services of every kind, with every service attribute this crate knows.
fn varied_services() -> Vec<Service> {
    let sip = || SchedulerName::try_new("sip").unwrap();
    vec![
        Service::new(tcp("10.0.0.1", 80), Scheduler::WeightedRoundRobin),
        Service::new(tcp("10.0.0.1", 0), Scheduler::WeightedOverflow)
            .with_persistence(persistence(600, 32)),
        Service::new(tcp("10.0.0.1", 443), Scheduler::RoundRobin)
            .with_persistence(persistence(120, 24)),
        Service::new(udp("10.0.0.1", 5060), Scheduler::RoundRobin)
            .with_persistence(persistence(60, 32))
            .with_engine(sip()),
        // An engine without persistence: the kernel keeps it (and ignores it).
        Service::new(udp("10.0.0.1", 5061), Scheduler::RoundRobin).with_engine(sip()),
        // A mask that is not a prefix: the kernel applies IPv4 masks bit by bit.
        Service::new(tcp("10.0.0.1", 8443), Scheduler::RoundRobin).with_persistence(Persistence {
            timeout: 90,
            netmask: Netmask::from_ipv4("255.0.255.0".parse().unwrap()),
        }),
        Service::new(udp("10.0.0.1", 53), Scheduler::SourceHashing)
            .with_flags(flags(true, true, true)),
        Service::new(
            ServiceKey::Addr {
                protocol: Protocol::Sctp,
                addr: ip("10.0.0.1"),
                port: 9,
            },
            Scheduler::WeightedFailover,
        ),
        Service::new(udp("fd00::1", 53), Scheduler::SourceHashing)
            .with_persistence(persistence(30, 64))
            .with_flags(flags(false, false, true)),
        Service::new(tcp("fd00::1", 443), Scheduler::LocalityBasedLeastConnection),
        Service::new(
            ServiceKey::Fwmark {
                family: Family::V4,
                mark: 7,
            },
            Scheduler::MaglevHashing,
        )
        .with_flags(flags(false, true, true)),
        Service::new(
            ServiceKey::Fwmark {
                family: Family::V6,
                mark: 8,
            },
            Scheduler::LocalityBasedLeastConnectionReplication,
        )
        .with_persistence(persistence(360, 128)),
    ]
}

/// Destinations of every forwarding method, for a service of the given family.
fn varied_destinations(v6: bool) -> Vec<Destination> {
    let a = |n: u8| {
        if v6 {
            ip(&format!("fd00:1::{n}"))
        } else {
            ip(&format!("10.1.0.{n}"))
        }
    };
    vec![
        Destination::masq(a(1), 8080, 2),
        Destination {
            forward: ForwardMethod::Route,
            upper_threshold: 10,
            lower_threshold: 5,
            ..Destination::masq(a(2), 80, 3)
        },
        Destination {
            forward: tunnel(TunnelKind::IpIp, 0, 0),
            ..Destination::masq(a(3), 80, 4)
        },
        Destination {
            forward: tunnel(TunnelKind::Gue, 6080, 1),
            ..Destination::masq(a(4), 80, 1)
        },
        Destination {
            forward: tunnel(TunnelKind::Gue, 6081, 0),
            ..Destination::masq(a(5), 80, 1)
        },
        Destination {
            forward: tunnel(TunnelKind::Gre, 0, 1),
            ..Destination::masq(a(6), 80, 1)
        },
        Destination {
            forward: tunnel(TunnelKind::Gue, 6082, 2),
            ..Destination::masq(a(9), 80, 1)
        },
        Destination {
            weight: 0,
            upper_threshold: 100,
            ..Destination::masq(a(7), 80, 0)
        },
        Destination {
            forward: ForwardMethod::Local,
            ..Destination::masq(a(8), 80, 1)
        },
    ]
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn info_matches_the_ipvsadm_banner() {
    let (ns, _g, mut client) = setup();
    let info = client.info().unwrap();
    let banner = ns.run_ok("ipvsadm", &["-Ln"]);
    let expected = format!(
        "IP Virtual Server version {} (size={})",
        info.version, info.conn_table_size
    );
    assert_eq!(banner.lines().next().unwrap(), expected);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn every_scheduler_round_trips_and_ipvsadm_prints_it() {
    let (ns, _g, mut client) = setup();
    let services: Vec<Service> = Scheduler::KNOWN
        .iter()
        .enumerate()
        .map(|(i, s)| Service::new(tcp("10.0.0.1", 1000 + u16::try_from(i).unwrap()), s.clone()))
        .collect();
    let ops: Vec<_> = services
        .iter()
        .cloned()
        .map(Operation::AddService)
        .collect();
    apply_all(&mut client, &ops);
    for s in &services {
        let read = client.service(&s.key).unwrap().expect("service exists");
        assert_eq!(&read.service, s);
    }
    let expected: Vec<String> = sorted(services.iter().map(service_line));
    assert_eq!(ipvsadm_save(&ns), expected);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn services_of_every_kind_round_trip_with_all_their_attributes() {
    let (ns, _g, mut client) = setup();
    let services = varied_services();
    let ops: Vec<_> = services
        .iter()
        .cloned()
        .map(Operation::AddService)
        .collect();
    apply_all(&mut client, &ops);
    let mut read: Vec<Service> = client
        .services()
        .unwrap()
        .into_iter()
        .map(|e| e.service)
        .collect();
    read.sort();
    let mut want = services.clone();
    want.sort();
    assert_eq!(read, want);
    assert_eq!(ipvsadm_save(&ns), sorted(services.iter().map(service_line)));
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn every_forwarding_method_round_trips_including_gue_tunnels() {
    let (ns, _g, mut client) = setup();
    let v4 = Service::new(tcp("10.0.0.1", 80), Scheduler::WeightedRoundRobin);
    let v6 = Service::new(tcp("fd00::1", 80), Scheduler::RoundRobin);
    let mut table = Vec::new();
    let mut ops = Vec::new();
    for (service, v6dests) in [(&v4, false), (&v6, true)] {
        ops.push(Operation::AddService(service.clone()));
        let dests = varied_destinations(v6dests);
        for d in &dests {
            ops.push(Operation::AddDestination {
                service: service.key,
                destination: d.clone(),
            });
        }
        table.push((service.clone(), dests));
    }
    // A tunnel may cross families: an IPv6 service with an IPv4 tunnel endpoint.
    let crossing = Destination {
        forward: tunnel(TunnelKind::IpIp, 0, 0),
        ..Destination::masq(ip("10.1.0.99"), 443, 1)
    };
    ops.push(Operation::AddDestination {
        service: v6.key,
        destination: crossing.clone(),
    });
    table[1].1.push(crossing);
    apply_all(&mut client, &ops);

    for (service, dests) in &table {
        let mut read: Vec<Destination> = client
            .destinations(&service.key)
            .unwrap()
            .into_iter()
            .map(|e| e.destination)
            .collect();
        read.sort();
        let mut want = dests.clone();
        want.sort();
        assert_eq!(read, want, "destinations of {}", service.key);
    }
    assert_eq!(ipvsadm_save(&ns), save_lines(&table));
    let thresholds = ipvsadm_thresholds(&ns);
    for (service, dests) in &table {
        for d in dests {
            let at = std::net::SocketAddr::new(d.addr, d.port);
            assert_eq!(
                thresholds.get(&(service.key.to_string(), at.to_string())),
                Some(&(d.upper_threshold, d.lower_threshold)),
                "thresholds of {at} in {}",
                service.key
            );
        }
    }
}

/// An `ipvsadm -R` script covering every kind of service and destination.
const IPVSADM_SCRIPT: &str = "\
-A -t 10.0.0.1:80 -s wrr
-a -t 10.0.0.1:80 -r 10.1.0.1:8080 -m -w 2
-a -t 10.0.0.1:80 -r 10.1.0.2:80 -g -w 3 -x 10 -y 5
-a -t 10.0.0.1:80 -r 10.1.0.3:80 -i -w 4
-a -t 10.0.0.1:80 -r 10.1.0.4:80 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum
-a -t 10.0.0.1:80 -r 10.1.0.5:80 -i -w 0 --tun-type gre --tun-csum
-a -t 10.0.0.1:80 -r 10.1.0.6:80 -i -w 1 --tun-type gue --tun-port 6081 --tun-remcsum
-a -t 10.0.0.1:80 -r 10.1.0.10:80 -i -w 1 --tun-type gue --tun-port 6082 --tun-nocsum
-A -t 10.0.0.1:0 -s ovf -p 600
-A -t 10.0.0.1:81 -s nq -p 10 -M 255.255.0.0 --pe sip
-A --sctp-service 10.0.0.1:9 -s fo
-a --sctp-service 10.0.0.1:9 -r 10.1.0.9:9 -m -w 1
-A -u 10.0.0.2:53 -s sh -o -b sh-fallback,sh-port
-a -u 10.0.0.2:53 -r 10.1.0.53:53 -m -w 1
-A -u [fd00::1]:53 -s sh -p 30 -M 64 -b sh-port
-a -u [fd00::1]:53 -r [fd00:1::2]:5353 -m -w 1
-A -t [fd00::1]:443 -s lblc
-a -t [fd00::1]:443 -r 10.1.0.9:443 -i -w 1
-A -f 7 -s mh -b mh-fallback
-a -f 7 -r 10.1.0.7:8080 -m -w 1
-a -f 7 -r 10.1.0.8:8080 -g -w 1
-A -f 8 -6 -s lblcr -p 360
-a -f 8 -6 -r [fd00::8]:0 -g -w 1
";

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_table_written_by_ipvsadm_reads_back_as_ipvsadm_saves_it() {
    let (ns, _g, mut client) = setup();
    ns.sh(&format!("ipvsadm -R <<'EOF'\n{IPVSADM_SCRIPT}EOF"));
    let table = client.table().unwrap();
    assert_eq!(table.services.len(), 9);
    assert_eq!(table_save_lines(&table), ipvsadm_save(&ns));
    // Thresholds are not in ipvsadm's save format; they are in its threshold listing.
    let thresholds = ipvsadm_thresholds(&ns);
    for entry in &table.services {
        for d in &entry.destinations {
            let d = &d.destination;
            let at = std::net::SocketAddr::new(d.addr, d.port).to_string();
            assert_eq!(
                thresholds.get(&(entry.service.key.to_string(), at.clone())),
                Some(&(d.upper_threshold, d.lower_threshold)),
                "{at}"
            );
        }
    }
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_table_written_by_the_crate_is_saved_by_ipvsadm_exactly_as_requested() {
    let (ns, _g, mut client) = setup();
    let mut table = Vec::new();
    let mut ops = Vec::new();
    for (i, service) in varied_services().into_iter().enumerate() {
        ops.push(Operation::AddService(service.clone()));
        let v6 = service.key.family() == Family::V6;
        let dests: Vec<Destination> = varied_destinations(v6)
            .into_iter()
            .take(i % 4 + 1)
            .collect();
        for d in &dests {
            ops.push(Operation::AddDestination {
                service: service.key,
                destination: d.clone(),
            });
        }
        table.push((service, dests));
    }
    apply_all(&mut client, &ops);
    assert_eq!(ipvsadm_save(&ns), save_lines(&table));
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn updates_change_what_ipvsadm_prints() {
    let (ns, _g, mut client) = setup();
    let key = tcp("10.0.0.1", 80);
    let d1 = Destination::masq(ip("10.1.0.1"), 80, 1);
    let d2 = Destination::masq(ip("10.1.0.2"), 80, 1);
    apply_all(
        &mut client,
        &[
            Operation::AddService(Service::new(key, Scheduler::RoundRobin)),
            Operation::AddDestination {
                service: key,
                destination: d1.clone(),
            },
            Operation::AddDestination {
                service: key,
                destination: d2.clone(),
            },
        ],
    );
    let updated = Service::new(key, Scheduler::SourceHashing)
        .with_persistence(persistence(300, 24))
        .with_flags(flags(false, true, false));
    let d1b = Destination {
        forward: ForwardMethod::Route,
        weight: 7,
        upper_threshold: 50,
        lower_threshold: 20,
        ..d1
    };
    client.update_service(&updated).unwrap();
    client.update_destination(&key, &d1b).unwrap();
    client.delete_destination(&key, d2.addr, d2.port).unwrap();
    assert_eq!(
        ipvsadm_save(&ns),
        save_lines(&[(updated.clone(), vec![d1b.clone()])])
    );
    let entry = client.service(&key).unwrap().unwrap();
    assert_eq!(entry.service, updated);
    assert_eq!(
        entry
            .destinations
            .iter()
            .map(|d| d.destination.clone())
            .collect::<Vec<_>>(),
        vec![d1b]
    );
    client.delete_service(&key).unwrap();
    assert!(client.service(&key).unwrap().is_none());
    assert_eq!(ipvsadm_save(&ns), Vec::<String>::new());
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn adding_an_existing_service_or_destination_yields_exists() {
    let (_ns, _g, mut client) = setup();
    let key = tcp("10.0.0.1", 80);
    let service = Service::new(key, Scheduler::RoundRobin);
    let dest = Destination::masq(ip("10.1.0.1"), 80, 1);
    client.add_service(&service).unwrap();
    client.add_destination(&key, &dest).unwrap();
    let e = client.add_service(&service).unwrap_err();
    assert!(e.is_exists(), "{e}");
    assert_eq!(e.to_string(), "add service TCP 10.0.0.1:80: already exists");
    let e = client.add_destination(&key, &dest).unwrap_err();
    assert!(e.is_exists(), "{e}");
    assert_eq!(e.errno(), Some(nix::libc::EEXIST));
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn changing_or_deleting_what_does_not_exist_yields_not_found() {
    let (_ns, _g, mut client) = setup();
    let key = tcp("10.0.0.1", 80);
    let missing = tcp("10.0.0.2", 80);
    let dest = Destination::masq(ip("10.1.0.1"), 80, 1);
    client
        .add_service(&Service::new(key, Scheduler::RoundRobin))
        .unwrap();
    let cases: Vec<(Result<()>, &str)> = vec![
        (client.delete_service(&missing), "service not found"),
        (
            client.update_service(&Service::new(missing, Scheduler::RoundRobin)),
            "service not found",
        ),
        (client.add_destination(&missing, &dest), "service not found"),
        (client.zero(Some(&missing)), "service not found"),
        (
            client.delete_destination(&key, dest.addr, dest.port),
            "destination not found",
        ),
        (
            client.update_destination(&key, &dest),
            "destination not found",
        ),
    ];
    for (result, what) in cases {
        let e = result.unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(e.to_string().ends_with(what), "{e}");
    }
    assert!(client.service(&missing).unwrap().is_none());
    assert!(client.destinations(&missing).unwrap().is_empty());
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn an_unknown_scheduler_yields_unknown_scheduler_naming_it() {
    let (ns, _g, mut client) = setup();
    let key = udp("10.0.0.2", 53);
    let e = client
        .add_service(&Service::new(key, "nosuch".parse().unwrap()))
        .unwrap_err();
    match &e {
        Error::UnknownScheduler { scheduler, .. } => assert_eq!(scheduler, "nosuch"),
        other => panic!("expected UnknownScheduler, got {other:?}"),
    }
    assert!(e.to_string().contains("ip_vs_nosuch"), "{e}");
    assert_eq!(ipvsadm_save(&ns), Vec::<String>::new());
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn invalid_destinations_yield_invalid_argument_naming_them() {
    let (_ns, _g, mut client) = setup();
    let key = tcp("10.0.0.1", 80);
    client
        .add_service(&Service::new(key, Scheduler::RoundRobin))
        .unwrap();
    let bad = [
        // Not unicast.
        Destination::masq(ip("224.0.0.5"), 80, 1),
        // Weight above INT_MAX: ERANGE.
        Destination::masq(ip("10.1.0.1"), 80, u32::MAX),
        // Lower threshold above the upper one: ERANGE.
        Destination {
            upper_threshold: 5,
            lower_threshold: 10,
            ..Destination::masq(ip("10.1.0.2"), 80, 1)
        },
    ];
    for d in &bad {
        let e = client.add_destination(&key, d).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{d:?}: {e:?}");
        let text = e.to_string();
        let at = std::net::SocketAddr::new(d.addr, d.port).to_string();
        assert!(
            text.starts_with(&format!("add destination {at} to TCP 10.0.0.1:80")),
            "{text}"
        );
    }
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_missing_family_yields_unavailable_naming_ip_vs() {
    let ns = Netns::new();
    let _g = ns.enter();
    let e = Client::with_family_name("KIPVS_NO_SUCH").unwrap_err();
    assert!(matches!(e, Error::Unavailable), "{e:?}");
    assert!(e.to_string().contains("modprobe ip_vs"), "{e}");
}

const UNPRIVILEGED_CHILD: &str = "KIPVS_TEST_UNPRIVILEGED_CHILD";

#[test]
#[ignore = "kernel: run by tests/run"]
fn without_cap_net_admin_requests_yield_permission_denied() {
    if std::env::var_os(UNPRIVILEGED_CHILD).is_some() {
        // Here as uid 65534 without capabilities, in the parent's test namespace.
        let mut client = Client::new().expect("resolving the family needs no privilege");
        let e = client.services().unwrap_err();
        assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("CAP_NET_ADMIN in the initial user namespace"),
            "{e}"
        );
        let key = tcp("10.0.0.1", 80);
        let e = client
            .add_service(&Service::new(key, Scheduler::RoundRobin))
            .unwrap_err();
        assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
        println!("unprivileged child: permission denied as expected");
        return;
    }
    let ns = Netns::new();
    let exe = std::env::current_exe().unwrap();
    let env = format!("{UNPRIVILEGED_CHILD}=1");
    let out = ns.run(
        "env",
        &[
            &env,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            exe.to_str().unwrap(),
            "--ignored",
            "--exact",
            "without_cap_net_admin_requests_yield_permission_denied",
            "--nocapture",
            "--test-threads=1",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("permission denied as expected"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_batch_of_10000_operations_reports_exactly_its_failures_and_applies_the_rest() {
    let (ns, _g, mut client) = setup();
    let services: Vec<ServiceKey> = (0..1000u16)
        .map(|i| tcp(&format!("10.2.{}.{}", i / 250, i % 250 + 1), 80))
        .collect();
    let mut ops = Vec::new();
    let mut expected_failures = BTreeMap::new();
    let mut good = Vec::new();
    for (i, key) in services.iter().enumerate() {
        ops.push(Operation::AddService(Service::new(
            *key,
            Scheduler::RoundRobin,
        )));
        let mut dests = Vec::new();
        for j in 0..9u8 {
            let d = Destination::masq(
                ip(&format!("10.3.{}.{}", j, i % 250 + 1)),
                8000 + u16::try_from(i).unwrap(),
                1,
            );
            ops.push(Operation::AddDestination {
                service: *key,
                destination: d.clone(),
            });
            dests.push(d);
        }
        good.push((Service::new(*key, Scheduler::RoundRobin), dests));
    }
    // 30 deliberate failures, spread through the batch: remove 30 good destination adds
    // (keeping 10,000 operations in all) and put failing ones in their place.
    let mut k = 0;
    for n in 0..30usize {
        let at = 17 + n * 330; // an AddDestination slot (never a multiple of 10)
        assert!(at % 10 != 0);
        let Operation::AddDestination {
            service,
            destination,
        } = ops[at].clone()
        else {
            unreachable!()
        };
        let (op, kind) = match n % 3 {
            0 => (
                Operation::AddDestination {
                    service: tcp("10.9.9.9", 80), // no such service: ESRCH
                    destination,
                },
                "not found",
            ),
            1 => (
                Operation::AddService(Service::new(service, Scheduler::RoundRobin)), // EEXIST
                "exists",
            ),
            _ => (
                Operation::AddDestination {
                    service,
                    destination: Destination {
                        weight: u32::MAX, // ERANGE
                        ..destination.clone()
                    },
                },
                "invalid",
            ),
        };
        // The good destination this slot held is not added.
        let Operation::AddDestination { destination, .. } = &ops[at] else {
            unreachable!()
        };
        let svc_index = at / 10;
        good[svc_index].1.retain(|d| d != destination);
        ops[at] = op;
        expected_failures.insert(at, kind);
        k += 1;
    }
    assert_eq!(k, 30);
    assert_eq!(ops.len(), 10_000);

    let results = client.apply(&ops);
    assert_eq!(results.len(), ops.len());
    let mut failures = BTreeMap::new();
    for (i, r) in results.iter().enumerate() {
        if let Err(e) = r {
            let kind = match e {
                Error::NotFound { .. } => "not found",
                Error::Exists { .. } => "exists",
                Error::InvalidArgument { .. } => "invalid",
                other => panic!("unexpected error at {i}: {other}"),
            };
            failures.insert(i, kind);
        }
    }
    assert_eq!(failures, expected_failures);

    let saved = ipvsadm_save(&ns);
    assert_eq!(saved.len(), 1000 + 9000 - 30);
    assert_eq!(saved, save_lines(&good));
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn unbatched_mode_gives_the_same_results_as_batched() {
    let (ns, _g, mut client) = setup();
    let key = tcp("10.0.0.1", 80);
    let ops = vec![
        Operation::AddService(Service::new(key, Scheduler::RoundRobin)),
        Operation::AddService(Service::new(key, Scheduler::RoundRobin)),
        Operation::AddDestination {
            service: key,
            destination: Destination::masq(ip("10.1.0.1"), 80, 1),
        },
        Operation::DeleteDestination {
            service: key,
            addr: ip("10.1.0.2"),
            port: 80,
        },
        Operation::AddDestination {
            service: key,
            destination: Destination::masq(ip("10.1.0.2"), 80, 1),
        },
    ];
    let unbatched = client.apply_unbatched(&ops);
    let after_unbatched = ipvsadm_save(&ns);
    client.flush().unwrap();
    let batched = client.apply(&ops);
    let summary = |rs: &[Result<()>]| -> Vec<Option<i32>> {
        rs.iter()
            .map(|r| r.as_ref().err().and_then(Error::errno))
            .collect()
    };
    assert_eq!(summary(&unbatched), summary(&batched));
    assert_eq!(
        summary(&batched),
        vec![
            None,
            Some(nix::libc::EEXIST),
            None,
            Some(nix::libc::ENOENT),
            None
        ]
    );
    assert_eq!(ipvsadm_save(&ns), after_unbatched);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_client_opened_by_netns_path_programs_only_that_namespace() {
    let ns = Netns::new();
    let other = Netns::new();
    // This thread stays in the initial namespace; the client goes to `ns`.
    let mut client = Client::in_netns(format!("/run/netns/{}", ns.name())).unwrap();
    let service = Service::new(tcp("10.0.0.1", 80), Scheduler::RoundRobin);
    client.add_service(&service).unwrap();
    assert_eq!(ipvsadm_save(&ns), vec![service_line(&service)]);
    assert_eq!(ipvsadm_save(&other), Vec::<String>::new());
    let _g = other.enter();
    let mut there = Client::new().unwrap();
    assert!(there.services().unwrap().is_empty());
    assert_eq!(client.services().unwrap().len(), 1);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn timeouts_round_trip_and_match_ipvsadm() {
    let (ns, _g, mut client) = setup();
    let listed = |ns: &Netns| ns.run_ok("ipvsadm", &["-L", "--timeout"]);
    let before = client.timeouts().unwrap();
    assert_eq!(
        listed(&ns).trim(),
        format!(
            "Timeout (tcp tcpfin udp): {} {} {}",
            before.tcp, before.tcp_fin, before.udp
        )
    );
    client
        .set_timeouts(&Timeouts {
            tcp: 100,
            tcp_fin: 20,
            udp: 30,
        })
        .unwrap();
    // Zero leaves a timeout unchanged.
    client
        .set_timeouts(&Timeouts {
            tcp: 0,
            tcp_fin: 0,
            udp: 45,
        })
        .unwrap();
    let after = client.timeouts().unwrap();
    assert_eq!(
        after,
        Timeouts {
            tcp: 100,
            tcp_fin: 20,
            udp: 45
        }
    );
    assert_eq!(listed(&ns).trim(), "Timeout (tcp tcpfin udp): 100 20 45");
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn zero_and_flush_act_on_the_table() {
    let (ns, _g, mut client) = setup();
    let key = tcp("10.0.0.1", 80);
    apply_all(
        &mut client,
        &[
            Operation::AddService(Service::new(key, Scheduler::RoundRobin)),
            Operation::AddService(Service::new(tcp("10.0.0.1", 81), Scheduler::RoundRobin)),
        ],
    );
    client.zero(Some(&key)).unwrap();
    client.zero(None).unwrap();
    let stats = client.service(&key).unwrap().unwrap().stats;
    assert_eq!(stats.conns, 0);
    client.flush().unwrap();
    assert!(client.services().unwrap().is_empty());
    assert_eq!(ipvsadm_save(&ns), Vec::<String>::new());
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn the_whole_table_reads_back_with_services_of_many_destinations() {
    let (ns, _g, mut client) = setup();
    // Services whose destination dumps span several kernel answers, among small ones.
    let mut ops = Vec::new();
    let mut table = Vec::new();
    for s in 0..40u16 {
        let service = Service::new(tcp("10.0.0.1", 1000 + s), Scheduler::RoundRobin);
        ops.push(Operation::AddService(service.clone()));
        let count = if s == 3 || s == 30 {
            300
        } else {
            usize::from(s % 5)
        };
        let dests: Vec<Destination> = (0..count)
            .map(|d| {
                let d = u16::try_from(d).unwrap();
                Destination::masq(ip(&format!("10.5.{}.{}", d / 250, d % 250 + 1)), 80, 1)
            })
            .collect();
        for d in &dests {
            ops.push(Operation::AddDestination {
                service: service.key,
                destination: d.clone(),
            });
        }
        table.push((service, dests));
    }
    apply_all(&mut client, &ops);
    let read = client.table().unwrap();
    assert_eq!(read.services.len(), 40);
    assert_eq!(table_save_lines(&read), save_lines(&table));
    assert_eq!(table_save_lines(&read), ipvsadm_save(&ns));
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_batch_where_every_operation_fails_reports_every_failure() {
    // Every error answer echoes its request: the worst case for the receive buffer.
    let (ns, _g, mut client) = setup();
    let ops: Vec<Operation> = (0..5000u32)
        .map(|i| Operation::AddDestination {
            service: tcp("10.0.0.1", 80),
            destination: Destination {
                forward: tunnel(TunnelKind::Gue, 6080, 1),
                upper_threshold: i,
                ..Destination::masq(
                    IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i) + 1)),
                    80,
                    1,
                )
            },
        })
        .collect();
    for chunk in [client.max_batch(), 7] {
        client.set_max_batch(chunk);
        let results = client.apply(&ops);
        assert_eq!(results.len(), ops.len());
        for (i, r) in results.iter().enumerate() {
            match r {
                Err(e @ Error::NotFound { .. }) => {
                    assert_eq!(e.context(), Some(&ops[i].context()));
                }
                other => panic!("operation {i} in chunks of {chunk}: {other:?}"),
            }
        }
    }
    assert_eq!(ipvsadm_save(&ns), Vec::<String>::new());
}

/// What a [`Detail::Listing`] read promises of a table: per service, each destination's
/// address, port, forwarding method (tunnel settings aside), weight and connections.
fn listing_view(table: &Table) -> BTreeMap<ServiceKey, Vec<String>> {
    table
        .services
        .iter()
        .map(|entry| {
            let dests = entry
                .destinations
                .iter()
                .map(|d| {
                    let x = &d.destination;
                    let forward = match x.forward {
                        ForwardMethod::Tunnel(_) => "Tunnel".to_string(),
                        other => format!("{other:?}"),
                    };
                    let c = &d.counters;
                    format!(
                        "{} {}:{} {forward} w{} a{} i{}",
                        entry.service.key, x.addr, x.port, x.weight, c.active, c.inactive
                    )
                })
                .collect();
            (entry.service.key, dests)
        })
        .collect()
}

/// Two fwmark services with the same mark, one per family: procfs cannot tell them apart.
const TWIN_FWMARKS: &str = "\
-A -f 9 -s rr
-a -f 9 -r 10.1.0.1:0 -m -w 3
-A -f 9 -6 -s rr
-a -f 9 -6 -r [fd00::1]:0 -m -w 4
";

#[test]
#[ignore = "kernel: run by tests/run"]
fn procfs_lists_every_destination_as_netlink_reports_it() {
    let (ns, _g, mut client) = setup();
    ns.sh(&format!(
        "ipvsadm -R <<'EOF'\n{IPVSADM_SCRIPT}{TWIN_FWMARKS}EOF"
    ));
    let full = client.table().unwrap();
    assert_eq!(full.services.len(), 11);
    // In one read, as the client reads it. Linux 6.1 keeps every namespace's services in
    // one hash and, when a read of the file restarts mid-way, positions by this
    // namespace's services though it counted all: with services left in other
    // namespaces (earlier tests'), small reads skip some. The client then reads those
    // over netlink; this test wants to see every one in the file.
    let mut text = String::with_capacity(1 << 20);
    std::io::Read::read_to_string(&mut std::fs::File::open(procfs::PATH).unwrap(), &mut text)
        .unwrap();
    let mut parsed = procfs::parse(&text);
    let expected = listing_view(&full);
    for entry in &full.services {
        let key = entry.service.key;
        let found = parsed.take(&key);
        if matches!(key, ServiceKey::Fwmark { mark: 9, .. }) {
            assert!(
                found.is_none(),
                "{key}: twin fwmarks must be left to netlink"
            );
            continue;
        }
        let found = found.unwrap_or_else(|| panic!("{key} is not in {}:\n{text}", procfs::PATH));
        assert!(!found.is_empty() || entry.destinations.is_empty());
        let view = listing_view(&Table {
            services: vec![ServiceEntry {
                destinations: found,
                ..entry.clone()
            }],
        });
        assert_eq!(view[&key], expected[&key], "{key}");
    }
    assert!(parsed.is_empty(), "procfs listed services netlink did not");
    // The client's listing read: the same view, twin fwmarks included (over netlink).
    let listing = client.table_with(Detail::Listing).unwrap();
    assert_eq!(listing_view(&listing), expected);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_listing_read_by_netns_path_shows_that_namespaces_destinations() {
    let ns = Netns::new();
    let other = Netns::new();
    let script = "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -m -w ";
    ns.sh(&format!("ipvsadm -R <<'EOF'\n{script}1\nEOF"));
    other.sh(&format!("ipvsadm -R <<'EOF'\n{script}2\nEOF"));
    // This thread sits in `other`, the client reads `ns`.
    let _g = other.enter();
    let mut client = Client::in_netns(ns.path()).unwrap();
    let listing = client.table_with(Detail::Listing).unwrap();
    assert_eq!(
        listing_view(&listing),
        listing_view(&client.table().unwrap())
    );
    let weights: Vec<u32> = listing.services[0]
        .destinations
        .iter()
        .map(|d| d.destination.weight)
        .collect();
    assert_eq!(weights, [1], "the weight set in the client's namespace");
}
