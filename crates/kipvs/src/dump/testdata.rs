//! Hand-written tables for the formatters' unit tests.

use kipvs_ipvs::{
    ConnCounters, Destination, DestinationEntry, Family, ForwardMethod, Info, Netmask, Persistence,
    Protocol, Scheduler, SchedulerName, Service, ServiceEntry, ServiceFlags, ServiceKey, Stats,
    Table, TunnelConfig, TunnelKind, Version,
};

/// The kernel's usual answer.
pub fn info() -> Info {
    Info {
        version: Version::from_code(0x010201),
        conn_table_size: 4096,
    }
}

fn dest(addr: &str, port: u16, forward: ForwardMethod, weight: u32) -> DestinationEntry {
    DestinationEntry {
        destination: Destination {
            addr: addr.parse().unwrap(),
            port,
            forward,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
        },
        counters: ConnCounters::default(),
        stats: Stats::default(),
    }
}

fn entry(service: Service, destinations: Vec<DestinationEntry>) -> ServiceEntry {
    ServiceEntry {
        service,
        stats: Stats::default(),
        destinations,
    }
}

/// Four services of every kind, in a kernel-like (unsorted) order, destinations newest
/// first.
pub fn sample_table() -> Table {
    let fwm = Service::new(
        ServiceKey::Fwmark {
            family: Family::V4,
            mark: 7,
        },
        Scheduler::MaglevHashing,
    )
    .with_flags(ServiceFlags {
        sched_fallback: true,
        ..ServiceFlags::default()
    });
    let sctp = Service::new(
        ServiceKey::Addr {
            protocol: Protocol::Sctp,
            addr: "fd00::1".parse().unwrap(),
            port: 3868,
        },
        Scheduler::WeightedLeastConnection,
    )
    .with_persistence(Persistence {
        timeout: 60,
        netmask: Netmask::Prefix(64),
    })
    .with_engine(SchedulerName::try_new("sip").unwrap());
    let udp = Service::new(
        ServiceKey::Addr {
            protocol: Protocol::Udp,
            addr: "10.96.0.10".parse().unwrap(),
            port: 53,
        },
        Scheduler::SourceHashing,
    )
    .with_persistence(Persistence {
        timeout: 360,
        netmask: Netmask::Prefix(24),
    })
    .with_flags(ServiceFlags {
        one_packet: true,
        sched_fallback: true,
        sched_port: true,
        ..ServiceFlags::default()
    });
    let tcp = Service::new(
        ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: "10.96.0.1".parse().unwrap(),
            port: 443,
        },
        Scheduler::RoundRobin,
    );
    let mut masq = dest("192.168.1.10", 6443, ForwardMethod::Masq, 1);
    masq.counters = ConnCounters {
        active: 3,
        inactive: 12,
        persistent: 0,
    };
    masq.stats = Stats {
        conns: 7,
        cps: 123_456_789,
        inpps: 2,
        outpps: 3,
        inbps: 123_456_789,
        outbps: 5,
        ..Stats::default()
    };
    let mut tcp_entry = entry(
        tcp,
        vec![dest("192.168.1.11", 6443, ForwardMethod::Route, 0), masq],
    );
    tcp_entry.stats = Stats {
        conns: 15,
        inpkts: 1234,
        outpkts: 123_456_789,
        inbytes: 12_345_678_901,
        outbytes: 123_456_789_012,
        ..Stats::default()
    };
    let tunnel = ForwardMethod::Tunnel(TunnelConfig {
        kind: TunnelKind::Gue,
        port: 6080,
        flags: 1,
    });
    Table {
        services: vec![
            entry(fwm, vec![dest("10.0.0.1", 0, ForwardMethod::Masq, 1)]),
            entry(sctp, vec![dest("fd00:1::2", 3868, ForwardMethod::Local, 5)]),
            entry(udp, vec![dest("10.244.0.5", 53, tunnel, 2_147_483_647)]),
            tcp_entry,
        ],
    }
}
