//! `ipvsadm -Sn`: the table as the commands that rebuild it (`ipvsadm -R` input).

use std::fmt::Write as _;

use kipvs_ipvs::{Destination, ForwardMethod, Service, Table, TunnelKind};

use super::names::{self, addr_port_string, service_rule};
use super::order::{destinations_order, services_order};

/// What `ipvsadm -Sn` prints for `table`.
pub fn save(table: &Table) -> String {
    let mut out = String::with_capacity(table.services.len() * 500);
    for i in services_order(&table.services) {
        let entry = &table.services[i];
        let rule = service_rule(&entry.service.key);
        let _ = write!(out, "-A {rule}");
        service_options(&mut out, &entry.service);
        out.push('\n');
        for j in destinations_order(&entry.destinations) {
            let _ = write!(out, "-a {rule}");
            destination_options(&mut out, &entry.destinations[j].destination);
            out.push('\n');
        }
    }
    out
}

/// A service's options as `ipvsadm -S` writes them after `-A SERVICE`: ` -s rr -p 300 ...`.
pub fn service_options(out: &mut String, svc: &Service) {
    let _ = write!(out, " -s {}", svc.scheduler.name());
    if let Some(p) = &svc.persistence {
        let _ = write!(out, " -p {}", p.timeout);
        if let Some(mask) = names::netmask(svc.key.family(), p) {
            let _ = write!(out, " -M {mask}");
        }
    }
    if let Some(pe) = &svc.engine {
        let _ = write!(out, " --pe {}", pe.as_str());
    }
    if svc.flags.one_packet {
        out.push_str(" -o");
    }
    if names::has_sched_flags(svc) {
        let _ = write!(out, " -b {}", names::sched_flags(svc));
    }
}

/// A destination's options as `ipvsadm -S` writes them after `-a SERVICE`:
/// ` -r 10.0.0.1:80 -m -w 1` (and the tunnel's type, port and checksum option).
pub fn destination_options(out: &mut String, d: &Destination) {
    let _ = write!(
        out,
        " -r {} {} -w {}",
        addr_port_string(&d.addr, d.port),
        names::forward_switch(&d.forward),
        names::fwmark(d.weight)
    );
    if let ForwardMethod::Tunnel(t) = &d.forward {
        let _ = write!(out, " --tun-type {}", names::tunnel_name(t.kind));
        let _ = match t.kind {
            TunnelKind::IpIp => Ok(()),
            TunnelKind::Gue => write!(
                out,
                " --tun-port {} {}",
                t.port,
                names::tunnel_flags_option(t.flags)
            ),
            TunnelKind::Gre => write!(out, " {}", names::tunnel_flags_option(t.flags)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::testdata::sample_table;

    #[test]
    fn save_prints_ipvsadm_rules_in_listing_order() {
        let expected = "\
-A -t 10.96.0.1:443 -s rr
-a -t 10.96.0.1:443 -r 192.168.1.10:6443 -m -w 1
-a -t 10.96.0.1:443 -r 192.168.1.11:6443 -g -w 0
-A -u 10.96.0.10:53 -s sh -p 360 -M 255.255.255.0 -o -b sh-fallback,sh-port
-a -u 10.96.0.10:53 -r 10.244.0.5:53 -i -w 2147483647 --tun-type gue --tun-port 6080 --tun-csum
-A --sctp-service [fd00::1]:3868 -s wlc -p 60 -M 64 --pe sip
-a --sctp-service [fd00::1]:3868 -r [fd00:1::2]:3868 -g -w 5
-A -f 7 -s mh -b mh-fallback
-a -f 7 -r 10.0.0.1:0 -m -w 1
";
        assert_eq!(save(&sample_table()), expected);
    }
}
