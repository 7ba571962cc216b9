//! How ipvsadm names things: addresses with ports, services, forwarding methods,
//! scheduler flags and masks (with `-n`, so never a DNS or services(5) name).

use std::fmt::Write as _;
use std::net::IpAddr;

use kipvs_ipvs::{Family, ForwardMethod, Netmask, Persistence, Service, ServiceKey, TunnelKind};

/// What glibc's `printf("%s", NULL)` prints, where ipvsadm has no name for a value.
pub const NULL: &str = "(null)";

/// `addr:port`, IPv6 in brackets (`addrport_to_anyname` with `FMT_NUMERIC`).
pub fn addr_port(out: &mut String, addr: &IpAddr, port: u16) {
    // Writing to a String cannot fail.
    let _ = match addr {
        IpAddr::V4(a) => write!(out, "{a}:{port}"),
        IpAddr::V6(a) => write!(out, "[{a}]:{port}"),
    };
}

/// [`addr_port`] as a new string.
pub fn addr_port_string(addr: &IpAddr, port: u16) -> String {
    let mut s = String::with_capacity(24);
    addr_port(&mut s, addr, port);
    s
}

/// A firewall mark as ipvsadm prints it: with `%d`, so marks above `i32::MAX` come out
/// negative.
pub fn fwmark(mark: u32) -> i32 {
    i32::from_ne_bytes(mark.to_ne_bytes())
}

/// The service column of the listing: `TCP  10.0.0.1:80`, `SCTP [fd00::1]:80`,
/// `FWM  7`, `FWM  7 IPv6`.
pub fn service_name(key: &ServiceKey) -> String {
    let mut s = String::with_capacity(40);
    match key {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => {
            let _ = write!(s, "{:<4} ", protocol.as_str());
            addr_port(&mut s, addr, *port);
            if addr.is_ipv4() {
                // ipvsadm cuts IPv4 names at 33 bytes (never reached by numeric names).
                s.truncate(33);
            }
        }
        ServiceKey::Fwmark { family, mark } => {
            let _ = write!(s, "FWM  {}", fwmark(*mark));
            if *family == Family::V6 {
                s.push_str(" IPv6");
            }
        }
    }
    s
}

/// The service as `ipvsadm -S` names it: `-t 10.0.0.1:80`, `--sctp-service ...`,
/// `-f 7`, `-f 7 -6`.
pub fn service_rule(key: &ServiceKey) -> String {
    let mut s = String::with_capacity(40);
    match key {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => {
            s.push_str(match protocol {
                kipvs_ipvs::Protocol::Tcp => "-t ",
                kipvs_ipvs::Protocol::Udp => "-u ",
                kipvs_ipvs::Protocol::Sctp => "--sctp-service ",
            });
            addr_port(&mut s, addr, *port);
        }
        ServiceKey::Fwmark { family, mark } => {
            let _ = write!(s, "-f {}", fwmark(*mark));
            if *family == Family::V6 {
                s.push_str(" -6");
            }
        }
    }
    s
}

/// The forwarding column: `Masq`, `Local`, `Tunnel`, `Route`.
pub fn forward_name(forward: &ForwardMethod) -> &'static str {
    match forward {
        ForwardMethod::Masq => "Masq",
        ForwardMethod::Local => "Local",
        ForwardMethod::Tunnel(_) => "Tunnel",
        ForwardMethod::Route => "Route",
        ForwardMethod::Bypass => NULL,
    }
}

/// The forwarding switch of `ipvsadm -S`: `-m`, `-i`, `-g` (local and route alike).
pub fn forward_switch(forward: &ForwardMethod) -> &'static str {
    match forward {
        ForwardMethod::Masq => "-m",
        ForwardMethod::Tunnel(_) => "-i",
        ForwardMethod::Local | ForwardMethod::Route => "-g",
        ForwardMethod::Bypass => NULL,
    }
}

/// Tunnel type names (`--tun-type`).
pub fn tunnel_name(kind: TunnelKind) -> &'static str {
    match kind {
        TunnelKind::IpIp => "ipip",
        TunnelKind::Gue => "gue",
        TunnelKind::Gre => "gre",
    }
}

/// The checksum option of a GUE/GRE tunnel (`--tun-nocsum`, `--tun-csum`,
/// `--tun-remcsum`), indexed by the kernel's flag value as ipvsadm does.
pub fn tunnel_flags_option(flags: u16) -> &'static str {
    match flags {
        0 => "--tun-nocsum",
        1 => "--tun-csum",
        2 => "--tun-remcsum",
        _ => NULL,
    }
}

/// Whether any scheduler flag is set (ipvsadm then prints them).
pub fn has_sched_flags(service: &Service) -> bool {
    let f = &service.flags;
    f.sched_fallback || f.sched_port || f.sched3
}

/// The scheduler flags as ipvsadm names them: `sh-fallback,sh-port` for sh,
/// `mh-fallback,mh-port` for mh, `flag-1,flag-2,flag-3` for other schedulers.
pub fn sched_flags(service: &Service) -> String {
    let f = &service.flags;
    let names: [(bool, &str); 3] = match service.scheduler.name() {
        "sh" => [
            (f.sched_fallback, "sh-fallback"),
            (f.sched_port, "sh-port"),
            (false, ""),
        ],
        "mh" => [
            (f.sched_fallback, "mh-fallback"),
            (f.sched_port, "mh-port"),
            (false, ""),
        ],
        _ => [
            (f.sched_fallback, "flag-1"),
            (f.sched_port, "flag-2"),
            (f.sched3, "flag-3"),
        ],
    };
    names
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// The persistence granularity when it is not a single host: a dotted IPv4 mask, or an
/// IPv6 prefix length. `None` for `/32` and `/128`, which ipvsadm does not print.
pub fn netmask(family: Family, persistence: &Persistence) -> Option<String> {
    match (family, persistence.netmask) {
        (Family::V4, mask) if mask != Netmask::Prefix(32) => Some(mask.ipv4_mask().to_string()),
        (Family::V6, Netmask::Prefix(p)) if p != 128 => Some(p.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kipvs_ipvs::{Protocol, Scheduler, ServiceFlags};

    #[test]
    fn service_names_pad_the_protocol_to_four_columns() {
        let k = |protocol, addr: &str| ServiceKey::Addr {
            protocol,
            addr: addr.parse().unwrap(),
            port: 80,
        };
        assert_eq!(
            service_name(&k(Protocol::Tcp, "10.0.0.1")),
            "TCP  10.0.0.1:80"
        );
        assert_eq!(
            service_name(&k(Protocol::Sctp, "fd00::1")),
            "SCTP [fd00::1]:80"
        );
        let fwm = ServiceKey::Fwmark {
            family: Family::V6,
            mark: u32::MAX,
        };
        assert_eq!(service_name(&fwm), "FWM  -1 IPv6");
        assert_eq!(service_rule(&fwm), "-f -1 -6");
    }

    #[test]
    fn scheduler_flags_are_named_after_the_scheduler() {
        let mut s = Service::new(
            ServiceKey::Fwmark {
                family: Family::V4,
                mark: 1,
            },
            Scheduler::MaglevHashing,
        );
        s.flags = ServiceFlags {
            sched_fallback: true,
            sched_port: true,
            sched3: true,
            ..ServiceFlags::default()
        };
        assert_eq!(sched_flags(&s), "mh-fallback,mh-port");
        s.scheduler = Scheduler::RoundRobin;
        assert_eq!(sched_flags(&s), "flag-1,flag-2,flag-3");
    }

    #[test]
    fn netmasks_print_dotted_for_ipv4_and_as_a_length_for_ipv6() {
        let p = |prefix| Persistence {
            timeout: 1,
            netmask: Netmask::Prefix(prefix),
        };
        assert_eq!(
            netmask(Family::V4, &p(24)).as_deref(),
            Some("255.255.255.0")
        );
        assert_eq!(netmask(Family::V4, &p(0)).as_deref(), Some("0.0.0.0"));
        assert_eq!(netmask(Family::V4, &p(32)), None);
        assert_eq!(netmask(Family::V6, &p(64)).as_deref(), Some("64"));
        assert_eq!(netmask(Family::V6, &p(128)), None);
        let odd = Persistence {
            timeout: 1,
            netmask: Netmask::from_ipv4("255.0.255.0".parse().unwrap()),
        };
        assert_eq!(netmask(Family::V4, &odd).as_deref(), Some("255.0.255.0"));
    }
}
