//! The `tests/bench ipvs` workload: program N services x M destinations into an empty
//! IPVS table, read it back, delete it; batched, unbatched (one message and ACK per round
//! trip, as moby/ipvs does for kube-proxy) and through `ipvsadm -R`, in the same kernel.
//!
//! ```text
//! ipvs_bench NETNS SERVICES DESTS
//! ```
//! NETNS is a namespace name (`ip netns`) with `lo` up and routes for the destinations;
//! its IPVS table must be empty. Prints one line per measurement, then the suite line.

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

fn line(what: &str, ops: usize, d: Duration) {
    println!(
        "{what:<28} {:>9.3} s  {:>10.0} ops/s",
        d.as_secs_f64(),
        rate(ops, d)
    );
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let [_, netns, n, m] = &args[..] else {
        return Err("usage: ipvs_bench NETNS SERVICES DESTS".into());
    };
    let (n, m): (usize, usize) = (n.parse()?, m.parse()?);
    let mut client = Client::in_netns(format!("/run/netns/{netns}"))?;
    if !client.services()?.is_empty() {
        return Err(format!("the IPVS table of {netns} is not empty").into());
    }
    let program = program_ops(n, m)?;
    let delete = delete_ops(n)?;
    let (nprog, ndel) = (program.len(), delete.len());
    println!(
        "ipvs bench: {n} services x {m} destinations: {nprog} operations to program, \
         {ndel} to delete; batches of up to {} per sendmsg",
        client.max_batch()
    );

    // Batched.
    let (r, prog_batched) = timed(|| client.apply(&program));
    check_all_ok("batched program", r)?;
    let (table, read_crate) = timed(|| client.table());
    let table = table?;
    let read_dests: usize = table.services.iter().map(|s| s.destinations.len()).sum();
    if table.services.len() != n || read_dests != n * m {
        return Err("batched: the table read back is incomplete".into());
    }
    let read_ipvsadm = ipvsadm(netns, &["-Ln"], None)?;
    let (r, del_batched) = timed(|| client.apply(&delete));
    check_all_ok("batched delete", r)?;
    check_table(&mut client, 0, 0)?;

    // Unbatched: one message, one ACK.
    let (r, prog_unbatched) = timed(|| client.apply_unbatched(&program));
    check_all_ok("unbatched program", r)?;
    check_table(&mut client, n, m)?;
    let (r, del_unbatched) = timed(|| client.apply_unbatched(&delete));
    check_all_ok("unbatched delete", r)?;
    check_table(&mut client, 0, 0)?;

    // ipvsadm -R.
    let prog_ipvsadm = ipvsadm(netns, &["-R"], Some(&program_script(n, m)?))?;
    check_table(&mut client, n, m)?;
    let del_ipvsadm = ipvsadm(netns, &["-R"], Some(&delete_script(n)?))?;
    check_table(&mut client, 0, 0)?;

    line("program  batched", nprog, prog_batched);
    line("program  unbatched", nprog, prog_unbatched);
    line("program  ipvsadm -R", nprog, prog_ipvsadm);
    line("delete   batched", ndel, del_batched);
    line("delete   unbatched", ndel, del_unbatched);
    line("delete   ipvsadm -R", ndel, del_ipvsadm);
    let entries = n * (m + 1);
    line("read     table() (entries)", entries, read_crate);
    line("read     ipvsadm -Ln (entries)", entries, read_ipvsadm);
    let vs_ipvsadm = prog_ipvsadm.as_secs_f64() / prog_batched.as_secs_f64();
    let vs_unbatched = prog_unbatched.as_secs_f64() / prog_batched.as_secs_f64();
    let read_ratio = read_ipvsadm.as_secs_f64() / read_crate.as_secs_f64();
    let all_batched = prog_batched + del_batched;
    let all_ipvsadm = prog_ipvsadm + del_ipvsadm;
    let all_unbatched = prog_unbatched + del_unbatched;
    println!(
        "ratios: program batched vs ipvsadm -R {vs_ipvsadm:.1}x, vs unbatched {vs_unbatched:.1}x; \
         program+delete vs ipvsadm -R {:.1}x, vs unbatched {:.1}x; \
         full-table read vs ipvsadm -Ln {read_ratio:.1}x",
        all_ipvsadm.as_secs_f64() / all_batched.as_secs_f64(),
        all_unbatched.as_secs_f64() / all_batched.as_secs_f64(),
    );
    println!(
        "SUITE: ipvs {:.0} ops/s batched, {:.0} ops/s unbatched ({vs_unbatched:.1}x), \
         {:.0} ops/s ipvsadm -R, read {:.3} s vs ipvsadm -Ln {:.3} s ({read_ratio:.1}x) \
         | {vs_ipvsadm:.1}x vs ipvsadm -R",
        rate(nprog, prog_batched),
        rate(nprog, prog_unbatched),
        rate(nprog, prog_ipvsadm),
        read_crate.as_secs_f64(),
        read_ipvsadm.as_secs_f64(),
    );
    Ok(())
}
