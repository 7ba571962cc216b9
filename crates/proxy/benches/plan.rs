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
    apply, translate, Config, Desired, EndpointSlice, Moment, Node, Observed, Plan, Proxier,
    RawEndpoint, RawEndpointPort, RawEndpointSlice, RawService, RawServicePort, Service,
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

/// CPU time this thread has run, from /proc/thread-self/schedstat (nanoseconds). On a
/// shared machine wall time also counts the time other processes held the CPU.
fn cpu_time() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// Runs `f`; returns its output, the CPU time it took and the wall time it took.
fn timed_both<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (cpu0, start) = (cpu_time(), Instant::now());
    let out = f();
    let wall = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    (out, if cpu.is_zero() { wall } else { cpu }, wall)
}

/// Runs `f`; returns its output and the CPU time it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let (out, cpu, _) = timed_both(f);
    (out, cpu)
}
fn main() {
    // Memory of the model and the desired state alone.
    let (rss0, _) = rss_kib();
    let model: Vec<(Service, EndpointSlice)> = (0..SERVICES)
        .map(|i| (service(i), slice(i, None, None)))
        .collect();
    let (desired, desired_time) = timed(|| {
        Desired::from_states(
            model
                .iter()
                .filter_map(|(svc, sl)| translate(svc, &[sl], &node(), &Config::default())),
        )
    });
    let (rss1, _) = rss_kib();
    let mut drain = kipvs_proxy::Drain::new(None);
    let (pure, pure_time) = timed(|| {
        kipvs_proxy::plan(
            &desired,
            &Observed::default(),
            &node(),
            &Config::default(),
            &mut drain,
            Moment::from_secs(0),
        )
    });
    drop(pure);
    println!(
        "whole-cluster parts: translation into the desired state {:.1} ms; pure plan from an empty kernel {:.1} ms",
        ms(desired_time),
        ms(pure_time)
    );
    let model_desired_mb = rss1.saturating_sub(rss0) as f64 / 1024.0;
    drop(desired);
    drop(model);

    // The engine (model + desired state + believed kernel), from an empty kernel.
    let (rss2, _) = rss_kib();
    let mut proxier = cluster();
    let (full, full_time, full_wall) =
        timed_both(|| proxier.verify(&Observed::default(), Moment::from_secs(0)));
    let full_ops = full.len();
    drop(full);
    let (rss3, _) = rss_kib();
    let engine_mb = rss3.saturating_sub(rss2) as f64 / 1024.0;
    let full = proxier.resync(Moment::from_secs(0));
    assert!(full.is_empty());
    let full = {
        let mut p = cluster();
        p.verify(&Observed::default(), Moment::from_secs(0))
    };
    let mut observed = Observed::default();
    apply(&full, &mut observed);
    drop(full);

    let (mut full_times, mut full_walls) = (vec![full_time], vec![full_wall]);
    for _ in 0..2 {
        let mut p = cluster();
        let (plan, t, w) = timed_both(|| p.verify(&Observed::default(), Moment::from_secs(0)));
        full_times.push(t);
        full_walls.push(w);
        drop(plan);
    }
    let full_plan = median(full_times);
    let full_plan_wall = median(full_walls);

    // One endpoint change: an endpoint leaves (its pod terminates), in a different
    // Service each time; then it returns.
    let mut change_times = Vec::new();
    let mut change_ops = 0;
    let mut by_ops = std::collections::BTreeMap::<usize, usize>::new();
    for round in 0..200u32 {
        let i = round * 37 % SERVICES;
        proxier.upsert_slice(slice(i, Some(round % ENDPOINTS), None));
        let (plan, t) = timed(|| proxier.sync(Moment::from_secs(1)));
        change_times.push(t);
        change_ops = change_ops.max(plan.len());
        *by_ops.entry(plan.len()).or_default() += 1;
        apply(&plan, &mut observed);
        proxier.upsert_slice(slice(i, None, None));
        let plan: Plan = proxier.sync(Moment::from_secs(2));
        apply(&plan, &mut observed);
    }
    let one_change = median(change_times.clone());
    let worst_change = change_times.iter().max().copied().unwrap_or_default();
    let p99 = {
        let mut v = change_times.clone();
        v.sort_unstable();
        v[v.len() * 99 / 100]
    };

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

    let typical_ops = by_ops
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(ops, _)| *ops)
        .unwrap_or(0);
    let ratio = resync.as_secs_f64() / one_change.as_secs_f64().max(1e-9);
    println!("times are CPU time of the planning thread (the machine may be shared)");
    println!(
        "proxy core: {SERVICES} Services x 2 ports x {ENDPOINTS} endpoints ({} virtual services)",
        proxier.desired().len()
    );
    println!(
        "full plan from an empty kernel: {:.1} ms CPU ({:.1} ms wall), {full_ops} operations (median of 3)",
        ms(full_plan),
        ms(full_plan_wall)
    );
    println!(
        "one endpoint change: {:.1} us median, {:.1} us p99, {:.1} us worst, {typical_ops} operations typically, {change_ops} at most (200 changes)",
        us(one_change),
        us(p99),
        us(worst_change)
    );
    println!(
        "  operations per change (operations: changes): {by_ops:?}; an endpoint on this node also leaves KUBE-LOOP-BACK (one entry per port)"
    );
    println!(
        "one endpoint added: {:.1} us, {add_ep_ops} operations",
        us(add_ep_time)
    );
    println!(
        "one Service added: {:.1} us, {add_svc_ops} operations",
        us(add_svc_time)
    );
    println!(
        "verify pass, no drift: {:.1} ms, {verify_ops} operations",
        ms(verify_time)
    );
    println!("full resync (kube-proxy per change): {:.1} ms", ms(resync));
    println!(
        "memory (RSS): model + desired state {model_desired_mb:.1} MB; engine with its believed kernel {engine_mb:.1} MB; process peak {:.1} MB",
        peak as f64 / 1024.0
    );
    println!(
        "SUITE: proxy {:.1} ms full-plan {:.1} us one-change {typical_ops} ops {:.1} ms verify {model_desired_mb:.0} MB | {ratio:.0}x vs full resync",
        ms(full_plan),
        us(one_change),
        ms(verify_time),
    );
}
