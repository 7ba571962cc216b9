//! `ipvsadm` as the oracle: what it prints, and what it would print for our values.
//!
//! `save_lines` renders services and destinations in `ipvsadm -Sn` syntax (ipvsadm 1.31),
//! so a table can be compared line by line with what ipvsadm reads from the kernel.
//! Lines are compared sorted: ipvsadm sorts its listing, the kernel does not.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use kipvs_ipvs::*;
use kipvs_testkit::Netns;

/// The lines, sorted.
pub fn sorted(lines: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = lines.into_iter().collect();
    v.sort();
    v
}

/// `ipvsadm -Sn` in the namespace, as sorted lines.
pub fn ipvsadm_save(ns: &Netns) -> Vec<String> {
    let out = ns.run("ipvsadm", &["-Sn"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ipvsadm -Sn failed ({}): {}\nit printed:\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    sorted(stdout.lines().map(str::to_owned))
}

fn key_arg(key: &ServiceKey) -> String {
    match key {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => {
            let opt = match protocol {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
                Protocol::Sctp => "--sctp-service",
            };
            format!("{opt} {}", SocketAddr::new(*addr, *port))
        }
        ServiceKey::Fwmark {
            family: Family::V4,
            mark,
        } => format!("-f {mark}"),
        ServiceKey::Fwmark {
            family: Family::V6,
            mark,
        } => format!("-f {mark} -6"),
    }
}

fn mask_text(family: Family, netmask: Netmask) -> Option<String> {
    match (family, netmask) {
        (Family::V4, Netmask::Prefix(prefix)) if prefix < 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            Some(std::net::Ipv4Addr::from(mask).to_string())
        }
        // inet_ntoa of the mask, whatever its bits.
        (Family::V4, Netmask::Ipv4Mask(mask)) => Some(mask.to_string()),
        (Family::V6, Netmask::Prefix(prefix)) if prefix < 128 => Some(prefix.to_string()),
        _ => None,
    }
}

/// The `-A` line ipvsadm saves for a service.
pub fn service_line(s: &Service) -> String {
    let mut line = format!("-A {} -s {}", key_arg(&s.key), s.scheduler);
    if let Some(p) = &s.persistence {
        line += &format!(" -p {}", p.timeout);
        if let Some(mask) = mask_text(s.key.family(), p.netmask) {
            line += &format!(" -M {mask}");
        }
    }
    // Saved for any service: the kernel keeps an engine whether persistent or not.
    if let Some(pe) = &s.engine {
        line += &format!(" --pe {}", pe.as_str());
    }
    if s.flags.one_packet {
        line += " -o";
    }
    let prefix = s.scheduler.name();
    let mut names = Vec::new();
    if s.flags.sched_fallback {
        names.push(format!("{prefix}-fallback"));
    }
    if s.flags.sched_port {
        names.push(format!("{prefix}-port"));
    }
    if !names.is_empty() {
        line += &format!(" -b {}", names.join(","));
    }
    line
}

/// The `-a` line ipvsadm saves for a destination of `key`.
pub fn dest_line(key: &ServiceKey, d: &Destination) -> String {
    let method = match d.forward {
        ForwardMethod::Masq => "-m",
        ForwardMethod::Tunnel(_) => "-i",
        ForwardMethod::Route | ForwardMethod::Local | ForwardMethod::Bypass => "-g",
    };
    let mut line = format!(
        "-a {} -r {} {method} -w {}",
        key_arg(key),
        SocketAddr::new(d.addr, d.port),
        d.weight
    );
    if let ForwardMethod::Tunnel(t) = d.forward {
        let kind = match t.kind {
            TunnelKind::IpIp => "ipip",
            TunnelKind::Gue => "gue",
            TunnelKind::Gre => "gre",
        };
        line += &format!(" --tun-type {kind}");
        if t.kind == TunnelKind::Gue {
            line += &format!(" --tun-port {}", t.port);
        }
        if t.kind != TunnelKind::IpIp {
            line += match t.flags & 3 {
                0 => " --tun-nocsum",
                1 => " --tun-csum",
                _ => " --tun-remcsum",
            };
        }
    }
    line
}

/// What ipvsadm would save for these services and destinations, sorted.
pub fn save_lines(table: &[(Service, Vec<Destination>)]) -> Vec<String> {
    sorted(table.iter().flat_map(|(s, dests)| {
        std::iter::once(service_line(s)).chain(dests.iter().map(|d| dest_line(&s.key, d)))
    }))
}

/// What ipvsadm would save for a table read from the kernel, sorted.
pub fn table_save_lines(table: &Table) -> Vec<String> {
    let pairs: Vec<(Service, Vec<Destination>)> = table
        .services
        .iter()
        .map(|e| {
            (
                e.service.clone(),
                e.destinations
                    .iter()
                    .map(|d| d.destination.clone())
                    .collect(),
            )
        })
        .collect();
    save_lines(&pairs)
}

/// `ipvsadm -Ln --thresholds`: (service as `ServiceKey` displays it, destination
/// `addr:port`) to (upper, lower) threshold.
pub fn ipvsadm_thresholds(ns: &Netns) -> BTreeMap<(String, String), (u32, u32)> {
    let text = ns.run_ok("ipvsadm", &["-Ln", "--thresholds"]);
    let mut out = BTreeMap::new();
    let mut service = String::new();
    for line in text.lines().skip(3) {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.first() == Some(&"->") {
            out.insert(
                (service.clone(), t[1].to_owned()),
                (t[2].parse().unwrap(), t[3].parse().unwrap()),
            );
        } else if t.first() == Some(&"FWM") {
            service = if t.get(2) == Some(&"IPv6") {
                format!("FWM {} IPv6", t[1])
            } else {
                format!("FWM {}", t[1])
            };
        } else if t.len() >= 2 {
            service = format!("{} {}", t[0], t[1]);
        }
    }
    out
}
