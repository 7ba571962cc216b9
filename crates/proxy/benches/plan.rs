//! The proxy core at cluster scale: 10,000 Services x 2 ports x 10 endpoints.
//!
//! Measures the full Plan from an empty kernel, one endpoint change, one Service added,
//! a verify pass with no drift, a full resync (what kube-proxy does for every change)
//! and the memory of the model plus desired state. Prints the figures, then the
//! `SUITE:` line `tests/bench` reads.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use kipvs_proxy::{
    apply, Config, EndpointSlice, Moment, Node, Observed, Plan, Proxier, RawEndpoint, RawEndpointPort,
    RawEndpointSlice, RawService, RawServicePort, Service,
};

const SERVICES: u32 = 10_000;
const ENDPOINTS: u32 = 10;
const NODES: u32 = 100;

fn v4(base: u32, offset: u32) -> String {
    Ipv4Addr::from(base + offset).to_string()
}

fn service(i: u32) -> Service {
    Service::try_new(RawService {
        namespace: format!("ns{}", i % 50),
        name: format!("svc{i}"),
        cluster_ips: vec![v4(0x0a60_0000, i + 1)],
        ports: vec![
            RawServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: 80,
                node_port: None,
            },
            RawServicePort {
                name: Some("https".into()),
                protocol: Some("TCP".into()),
                port: 443,
                node_port: None,
            },
        ],
        ..RawService::default()
    })
    .unwrap()
}

/// The slice of Service `i`, with endpoint `skip` left out and endpoint `extra` added.
fn slice(i: u32, skip: Option<u32>, extra: Option<u32>) -> EndpointSlice {
    let endpoints = (0..ENDPOINTS)
        .filter(|j| Some(*j) != skip)
        .chain(extra)
        .map(|j| RawEndpoint {
            addresses: vec![v4(0x0a80_0000, i * 16 + j)],
            node_name: Some(format!("node-{}", (i + j) % NODES)),
            zone: Some(format!("zone-{}", j % 3)),
            ..RawEndpoint::default()
        })
        .collect();
    EndpointSlice::try_new(RawEndpointSlice {
        namespace: format!("ns{}", i % 50),
        name: format!("svc{i}-abcde"),
        service_name: Some(format!("svc{i}")),
        address_type: "IPv4".into(),
        endpoints,
        ports: vec![
            RawEndpointPort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: Some(8080),
            },
            RawEndpointPort {
                name: Some("https".into()),
                protocol: Some("TCP".into()),
                port: Some(8443),
            },
        ],
    })
    .unwrap()
}

fn node() -> Node {
    Node::new("node-0")
        .with_zone("zone-0")
        .with_addresses([IpAddr::from([192, 168, 1, 10])])
}

fn cluster() -> Proxier {
    let mut p = Proxier::new(Config::default(), node());
    for i in 0..SERVICES {
        p.upsert_service(service(i));
        p.upsert_slice(slice(i, None, None));
    }
    p
}

/// Resident set size and its peak, in KiB, from /proc/self/status.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn main() {
    let (rss0, _) = rss_kib();

    // Model + desired state + believed kernel, from an empty kernel.
    let mut proxier = cluster();
    let (full, full_time) = timed(|| proxier.verify(&Observed::default(), Moment::from_secs(0)));
    let (rss1, _) = rss_kib();
    let mut observed = Observed::default();
    apply(&full, &mut observed);
    let full_ops = full.len();
    drop(full);

    let mut full_times = vec![full_time];
    for _ in 0..2 {
        let mut p = cluster();
        let (plan, t) = timed(|| p.verify(&Observed::default(), Moment::from_secs(0)));
        full_times.push(t);
        drop(plan);
    }
    let full_plan = median(full_times);

    // One endpoint change: an endpoint leaves (its pod terminates), in a different
    // Service each time; then it returns.
    let mut change_times = Vec::new();
    let mut change_ops = 0;
    for round in 0..200u32 {
        let i = round * 37 % SERVICES;
        proxier.upsert_slice(slice(i, Some(round % ENDPOINTS), None));
        let (plan, t) = timed(|| proxier.sync(Moment::from_secs(1)));
        change_times.push(t);
        change_ops = change_ops.max(plan.len());
        apply(&plan, &mut observed);
        proxier.upsert_slice(slice(i, None, None));
        let plan: Plan = proxier.sync(Moment::from_secs(2));
        apply(&plan, &mut observed);
    }
    let one_change = median(change_times.clone());
    let worst_change = change_times.iter().max().copied().unwrap_or_default();

    // One endpoint added (scale up).
    proxier.upsert_slice(slice(5, None, Some(ENDPOINTS)));
    let (plan, add_ep_time) = timed(|| proxier.sync(Moment::from_secs(3)));
    let add_ep_ops = plan.len();
    apply(&plan, &mut observed);

    // One Service added.
    proxier.upsert_service(service(SERVICES));
    proxier.upsert_slice(slice(SERVICES, None, None));
    let (plan, add_svc_time) = timed(|| proxier.sync(Moment::from_secs(4)));
    let add_svc_ops = plan.len();
    apply(&plan, &mut observed);

    // Verify with no drift (draining destinations from the changes above were idle in
    // the simulation, so the first verify deletes them; the second finds nothing).
    let plan = proxier.verify(&observed, Moment::from_secs(5));
    apply(&plan, &mut observed);
    let (plan, verify_time) = timed(|| proxier.verify(&observed, Moment::from_secs(6)));
    let verify_ops = plan.len();

    // A full resync of the same cluster: what kube-proxy does for every change.
    let mut resync_times = Vec::new();
    for _ in 0..3 {
        let (plan, t) = timed(|| proxier.resync(Moment::from_secs(7)));
        resync_times.push(t);
        assert!(plan.is_empty());
    }
    let resync = median(resync_times);
    let (_, peak) = rss_kib();

    let mem_mb = (rss1.saturating_sub(rss0)) as f64 / 1024.0;
    let ratio = resync.as_secs_f64() / one_change.as_secs_f64().max(1e-9);
    println!("proxy core: {SERVICES} Services x 2 ports x {ENDPOINTS} endpoints ({} virtual services)", proxier.desired().len());
    println!("full plan from an empty kernel: {:.1} ms, {full_ops} operations (median of 3)", ms(full_plan));
    println!("one endpoint change: {:.1} us median, {:.1} us worst, {change_ops} operations at most (200 changes)", us(one_change), us(worst_change));
    println!("one endpoint added: {:.1} us, {add_ep_ops} operations", us(add_ep_time));
    println!("one Service added: {:.1} us, {add_svc_ops} operations", us(add_svc_time));
    println!("verify pass, no drift: {:.1} ms, {verify_ops} operations", ms(verify_time));
    println!("full resync (kube-proxy per change): {:.1} ms", ms(resync));
    println!("memory: model + desired + believed kernel {mem_mb:.1} MB RSS; process peak {:.1} MB", peak as f64 / 1024.0);
    println!(
        "SUITE: proxy {:.1} ms full-plan {:.1} us one-change {change_ops} ops {:.1} ms verify {mem_mb:.0} MB | {ratio:.0}x vs full resync",
        ms(full_plan),
        us(one_change),
        ms(verify_time),
    );
}
