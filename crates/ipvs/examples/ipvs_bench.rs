//! The `tests/bench ipvs` workload: program N services x M destinations into an empty
//! IPVS table, read it back, delete it; batched, unbatched (one message and ACK per round
//! trip, as moby/ipvs does for kube-proxy) and through `ipvsadm -R`, in the same kernel.
//!
//! ```text
//! ipvs_bench SERVICES DESTS [ROUNDS]
//! ```
//! Run as root. Every measurement gets a fresh network namespace: the kernel keeps
//! deleted destinations in a per-namespace trash that every later destination add
//! searches, so a mode run after another's deletions would pay for them. The batched and
//! unbatched modes run ROUNDS times (default 3), interleaved, and the fastest round of
//! each counts (the machine may be shared; the minimum is the least disturbed);
//! `ipvsadm -R` runs once, it is by far the slowest. Before each measurement the bench
//! waits for the machine to go idle: tearing down the previous namespace (100,000
//! destinations freed, RCU callbacks) runs in kernel workers for seconds afterwards, and
//! would otherwise be charged to whichever mode comes next, more with every round.
//! Prints one line per measurement, then the suite line.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kipvs_ipvs::{Client, Destination, Operation, Protocol, Scheduler, Service, ServiceKey};

type BoxError = Box<dyn std::error::Error>;

fn vip(i: usize) -> Result<ServiceKey, BoxError> {
    let i = u32::try_from(i)?;
    Ok(ServiceKey::Addr {
        protocol: Protocol::Tcp,
        addr: IpAddr::V4(Ipv4Addr::from(0xac10_0000 + i)), // 172.16.0.0/12
        port: 80,
    })
}

fn real(i: usize, j: usize) -> Result<IpAddr, BoxError> {
    let i = u32::try_from(i)?;
    let j = u32::try_from(j)?;
    Ok(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (j << 16) + i))) // 10.j.x.y
}

/// The operations that build the table, services first in each group.
fn program_ops(n: usize, m: usize) -> Result<Vec<Operation>, BoxError> {
    let mut ops = Vec::with_capacity(n * (m + 1));
    for i in 0..n {
        let key = vip(i)?;
        ops.push(Operation::AddService(Service::new(
            key,
            Scheduler::RoundRobin,
        )));
        for j in 0..m {
            ops.push(Operation::AddDestination {
                service: key,
                destination: Destination::masq(real(i, j)?, 8080, 1),
            });
        }
    }
    Ok(ops)
}

fn delete_ops(n: usize) -> Result<Vec<Operation>, BoxError> {
    (0..n)
        .map(|i| Ok(Operation::DeleteService(vip(i)?)))
        .collect()
}

/// The same table as an `ipvsadm -R` script.
fn program_script(n: usize, m: usize) -> Result<String, BoxError> {
    let mut s = String::new();
    for i in 0..n {
        let key = vip(i)?;
        let ServiceKey::Addr { addr, port, .. } = key else {
            unreachable!("benchmark services are address-based")
        };
        s += &format!("-A -t {addr}:{port} -s rr\n");
        for j in 0..m {
            s += &format!("-a -t {addr}:{port} -r {}:8080 -m -w 1\n", real(i, j)?);
        }
    }
    Ok(s)
}

fn delete_script(n: usize) -> Result<String, BoxError> {
    let mut s = String::new();
    for i in 0..n {
        if let ServiceKey::Addr { addr, port, .. } = vip(i)? {
            s += &format!("-D -t {addr}:{port}\n");
        }
    }
    Ok(s)
}

/// Runs `ipvsadm args` in the namespace with `input` on stdin; returns how long it took.
fn ipvsadm(netns: &str, args: &[&str], input: Option<&str>) -> Result<Duration, BoxError> {
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "ipvsadm"])
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .spawn()?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let status = child.wait()?;
    let took = start.elapsed();
    if !status.success() {
        return Err(format!("ipvsadm {args:?} failed: {status}").into());
    }
    Ok(took)
}

/// Busy and total CPU time so far, from the first line of `/proc/stat`.
fn cpu_times() -> Result<(u64, u64), BoxError> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .ok_or("/proc/stat is empty")?
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: u64 = fields.iter().sum();
    // idle and iowait are the fourth and fifth fields.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// Waits (at most a minute) until the CPUs are at least 90% idle over a quarter second,
/// so that the kernel's background work left by the previous measurement is done.
fn settle() -> Result<Duration, BoxError> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let (busy0, total0) = cpu_times()?;
        std::thread::sleep(Duration::from_millis(250));
        let (busy1, total1) = cpu_times()?;
        let (busy, total) = (busy1 - busy0, (total1 - total0).max(1));
        if busy * 10 <= total {
            break;
        }
    }
    Ok(start.elapsed())
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn check_all_ok(what: &str, results: Vec<kipvs_ipvs::Result<()>>) -> Result<(), BoxError> {
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    match failed.first() {
        None => Ok(()),
        Some(e) => Err(format!("{what}: {} operations failed, first: {e}", failed.len()).into()),
    }
}

/// Checks the kernel holds `n` services of `m` destinations each.
fn check_table(client: &mut Client, n: usize, m: usize) -> Result<(), BoxError> {
    let table = client.table()?;
    let dests: usize = table.services.iter().map(|s| s.destinations.len()).sum();
    if table.services.len() != n || dests != n * m {
        return Err(format!(
            "expected {n} services and {} destinations, found {} and {dests}",
            n * m,
            table.services.len()
        )
        .into());
    }
    Ok(())
}

fn rate(ops: usize, d: Duration) -> f64 {
    // Precision loss is irrelevant for a rate.
    #[allow(clippy::cast_precision_loss)]
    let ops = ops as f64;
    ops / d.as_secs_f64()
}

/// A network namespace made for one measurement, deleted on drop.
struct Netns(String);

impl Netns {
    fn create(n: usize) -> Result<Netns, BoxError> {
        let name = format!("kipvs-bench-{}-{n}", std::process::id());
        let status = Command::new("ip").args(["netns", "add", &name]).status()?;
        if !status.success() {
            return Err(format!("ip netns add {name} failed").into());
        }
        let ns = Netns(name);
        let setup = "ip link set lo up
            ip link add kb-dst type dummy
            ip link set kb-dst up
            ip addr add 198.18.255.254/32 dev kb-dst
            ip route add default dev kb-dst";
        let status = Command::new("ip")
            .args(["netns", "exec", &ns.0, "sh", "-euc", setup])
            .status()?;
        if !status.success() {
            return Err(format!("setting up {} failed", ns.0).into());
        }
        Ok(ns)
    }

    fn client(&self) -> Result<Client, BoxError> {
        Ok(Client::in_netns(format!("/run/netns/{}", self.0))?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Times of one round of a mode.
#[derive(Debug, Clone, Copy)]
struct Round {
    program: Duration,
    delete: Duration,
}

/// The fastest of the rounds, field by field, and every round for the record.
fn fastest(rounds: &[Round]) -> Round {
    Round {
        program: rounds.iter().map(|r| r.program).min().unwrap_or_default(),
        delete: rounds.iter().map(|r| r.delete).min().unwrap_or_default(),
    }
}

/// The median programming time of the rounds (the upper one of an even count).
fn median_program(rounds: &[Round]) -> Duration {
    let mut times: Vec<Duration> = rounds.iter().map(|r| r.program).collect();
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn samples(rounds: &[Round]) -> String {
    rounds
        .iter()
        .map(|r| format!("{:.3}", r.program.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn line(what: &str, ops: usize, d: Duration, note: &str) {
    println!(
        "{what:<24} {:>9.3} s  {:>9.0} ops/s  {note}",
        d.as_secs_f64(),
        rate(ops, d)
    );
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let (n, m, rounds): (usize, usize, usize) = match &args[1..] {
        [n, m] => (n.parse()?, m.parse()?, 3),
        [n, m, r] => (n.parse()?, m.parse()?, r.parse()?),
        _ => return Err("usage: ipvs_bench SERVICES DESTS [ROUNDS]".into()),
    };
    let program = program_ops(n, m)?;
    let delete = delete_ops(n)?;
    let (nprog, ndel) = (program.len(), delete.len());
    let mut namespaces = 0..;
    let mut settled = Duration::ZERO;
    let mut fresh = || -> Result<Netns, BoxError> {
        settled += settle()?;
        Netns::create(namespaces.next().unwrap_or_default())
    };

    let (mut batched, mut unbatched, mut reads) = (Vec::new(), Vec::new(), Vec::new());
    let mut ipvsadm_round = None;
    for round in 0..rounds.max(1) {
        // Batched, then both reads of the full table it made.
        let ns = fresh()?;
        let mut client = ns.client()?;
        if round == 0 {
            println!(
                "ipvs bench: {n} services x {m} destinations: {nprog} operations to program, \
                 {ndel} to delete; up to {} per sendmsg; {rounds} rounds",
                client.max_batch()
            );
        }
        let (r, program_time) = timed(|| client.apply(&program));
        check_all_ok("batched program", r)?;
        let (table, read_crate) = timed(|| client.table());
        let table = table?;
        let dests: usize = table.services.iter().map(|s| s.destinations.len()).sum();
        if table.services.len() != n || dests != n * m {
            return Err("the table read back is incomplete".into());
        }
        let read_ipvsadm = ipvsadm(&ns.0, &["-Ln"], None)?;
        reads.push((read_crate, read_ipvsadm));
        let (r, delete_time) = timed(|| client.apply(&delete));
        check_all_ok("batched delete", r)?;
        check_table(&mut client, 0, 0)?;
        batched.push(Round {
            program: program_time,
            delete: delete_time,
        });
        drop(ns);

        // Unbatched: one message, one ACK.
        let ns = fresh()?;
        let mut client = ns.client()?;
        let (r, program_time) = timed(|| client.apply_unbatched(&program));
        check_all_ok("unbatched program", r)?;
        check_table(&mut client, n, m)?;
        let (r, delete_time) = timed(|| client.apply_unbatched(&delete));
        check_all_ok("unbatched delete", r)?;
        check_table(&mut client, 0, 0)?;
        unbatched.push(Round {
            program: program_time,
            delete: delete_time,
        });
        drop(ns);

        // ipvsadm -R, once.
        if ipvsadm_round.is_none() {
            let ns = fresh()?;
            let mut client = ns.client()?;
            let program_time = ipvsadm(&ns.0, &["-R"], Some(&program_script(n, m)?))?;
            check_table(&mut client, n, m)?;
            let delete_time = ipvsadm(&ns.0, &["-R"], Some(&delete_script(n)?))?;
            check_table(&mut client, 0, 0)?;
            ipvsadm_round = Some(Round {
                program: program_time,
                delete: delete_time,
            });
        }
    }
    let peer = ipvsadm_round.ok_or("ipvsadm did not run")?;
    let (b, u) = (fastest(&batched), fastest(&unbatched));
    println!(
        "waited {:.1} s in all for the machine to settle before measurements",
        settled.as_secs_f64()
    );
    let read_crate = reads.iter().map(|r| r.0).min().unwrap_or_default();
    let read_ipvsadm = reads.iter().map(|r| r.1).min().unwrap_or_default();

    line(
        "program  batched",
        nprog,
        b.program,
        &format!("rounds: {}", samples(&batched)),
    );
    line(
        "program  unbatched",
        nprog,
        u.program,
        &format!("rounds: {}", samples(&unbatched)),
    );
    line("program  ipvsadm -R", nprog, peer.program, "");
    line("delete   batched", ndel, b.delete, "");
    line("delete   unbatched", ndel, u.delete, "");
    line("delete   ipvsadm -R", ndel, peer.delete, "");
    let entries = n * (m + 1);
    line("read     table()", entries, read_crate, "(entries read)");
    line(
        "read     ipvsadm -Ln",
        entries,
        read_ipvsadm,
        "(entries read)",
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let vs_ipvsadm = ratio(peer.program, b.program);
    let vs_unbatched = ratio(u.program, b.program);
    let read_ratio = ratio(read_ipvsadm, read_crate);
    println!(
        "ratios: program batched vs ipvsadm -R {vs_ipvsadm:.1}x, vs unbatched {vs_unbatched:.1}x; \
         program+delete vs ipvsadm -R {:.1}x, vs unbatched {:.1}x; \
         full-table read vs ipvsadm -Ln {read_ratio:.1}x; \
         program batched vs unbatched, medians of the rounds: {:.1}x",
        ratio(peer.program + peer.delete, b.program + b.delete),
        ratio(u.program + u.delete, b.program + b.delete),
        ratio(median_program(&unbatched), median_program(&batched)),
    );
    println!(
        "SUITE: ipvs {:.0} ops/s batched, {:.0} ops/s unbatched ({vs_unbatched:.1}x), \
         {:.0} ops/s ipvsadm -R, read {:.3} s vs ipvsadm -Ln {:.3} s ({read_ratio:.1}x) \
         | {vs_ipvsadm:.1}x vs ipvsadm -R",
        rate(nprog, b.program),
        rate(nprog, u.program),
        rate(nprog, peer.program),
        read_crate.as_secs_f64(),
        read_ipvsadm.as_secs_f64(),
    );
    Ok(())
}
