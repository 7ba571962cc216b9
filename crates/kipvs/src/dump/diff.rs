//! A [`Plan`] as readable lines, one per kernel operation, in the order they would run
//! (`kipvs plan --diff`). Each line is the command that would do the same by hand:
//! `ipset add ...`, `ip addr add ...`, `ipvsadm -A/-E/-D/-a/-e/-d ...`, `conntrack -D ...`;
//! IPVS lines end with `# namespace/name:port`, the Service port they are for.

use std::fmt::Write as _;
use std::net::IpAddr;

use kipvs_ipvs::{Destination, Protocol};
use kipvs_proxy::{IpvsOp, Plan};

use super::names::{addr_port_string, service_rule};
use super::save::{destination_options, service_options};

/// The dummy link kipvs binds VIPs to.
const LINK: &str = "kube-ipvs0";

fn prefix(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// ` -x U -y L` when a destination has thresholds (`ipvsadm -S` leaves them out).
fn thresholds(out: &mut String, d: &Destination) {
    if d.upper_threshold != 0 {
        let _ = write!(out, " -x {}", d.upper_threshold);
    }
    if d.lower_threshold != 0 {
        let _ = write!(out, " -y {}", d.lower_threshold);
    }
}

fn ipvs(out: &mut String, op: &IpvsOp) {
    let rule = service_rule(op.key());
    let owner = match op {
        IpvsOp::AddService { owner, service } | IpvsOp::UpdateService { owner, service } => {
            let cmd = if matches!(op, IpvsOp::AddService { .. }) {
                "-A"
            } else {
                "-E"
            };
            let _ = write!(out, "ipvsadm {cmd} {rule}");
            service_options(out, service);
            Some(owner)
        }
        IpvsOp::DeleteService { .. } => {
            let _ = write!(out, "ipvsadm -D {rule}");
            None
        }
        IpvsOp::AddDestination {
            owner, destination, ..
        }
        | IpvsOp::UpdateDestination {
            owner, destination, ..
        } => {
            let cmd = if matches!(op, IpvsOp::AddDestination { .. }) {
                "-a"
            } else {
                "-e"
            };
            let _ = write!(out, "ipvsadm {cmd} {rule}");
            destination_options(out, destination);
            thresholds(out, destination);
            Some(owner)
        }
        IpvsOp::DeleteDestination {
            owner, destination, ..
        } => {
            let _ = write!(
                out,
                "ipvsadm -d {rule} -r {}",
                addr_port_string(&destination.addr, destination.port)
            );
            Some(owner)
        }
    };
    if let Some(owner) = owner {
        let _ = write!(out, "  # {owner}");
    }
    out.push('\n');
}

/// The operations of `plan`, one per line; empty when there is nothing to do.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for e in &plan.set_adds {
        let _ = writeln!(out, "ipset add {} {}", e.0, e.1);
    }
    for a in &plan.binds {
        let _ = writeln!(out, "ip addr add {a}/{} dev {LINK}", prefix(a));
    }
    for op in &plan.ipvs {
        ipvs(&mut out, op);
    }
    for a in &plan.unbinds {
        let _ = writeln!(out, "ip addr del {a}/{} dev {LINK}", prefix(a));
    }
    for e in &plan.set_deletes {
        let _ = writeln!(out, "ipset del {} {}", e.0, e.1);
    }
    for c in &plan.conntrack {
        let proto = match c.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        };
        let _ = write!(
            out,
            "conntrack -D -p {proto} --orig-dst {} --dport {}",
            c.addr, c.port
        );
        if let Some(d) = c.destination {
            let _ = write!(out, " --reply-src {d}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kipvs_ipvs::{Scheduler, Service, ServiceKey};
    use kipvs_proxy::{Owner, RawService, RawServicePort, ServiceName};

    fn owner() -> Owner {
        let svc = kipvs_proxy::Service::try_new(RawService {
            namespace: "default".into(),
            name: "web".into(),
            cluster_ips: vec!["10.96.0.10".into()],
            ports: vec![RawServicePort {
                port: 80,
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap();
        Owner::new(&ServiceName::new("default", "web"), &svc.ports[0])
    }

    #[test]
    fn every_operation_reads_as_the_command_that_does_it() {
        let key = ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: "10.96.0.10".parse().unwrap(),
            port: 80,
        };
        let mut dest = Destination::masq("10.244.1.5".parse().unwrap(), 8080, 1);
        dest.upper_threshold = 100;
        let plan = Plan {
            binds: vec!["10.96.0.10".parse().unwrap()],
            ipvs: vec![
                IpvsOp::AddService {
                    owner: owner(),
                    service: Service::new(key, Scheduler::RoundRobin),
                },
                IpvsOp::AddDestination {
                    owner: owner(),
                    service: key,
                    destination: dest.clone(),
                },
                IpvsOp::DeleteDestination {
                    owner: owner(),
                    service: key,
                    destination: dest,
                },
                IpvsOp::DeleteService { key },
            ],
            unbinds: vec!["fd00::1".parse().unwrap()],
            ..Plan::default()
        };
        assert_eq!(
            render(&plan),
            "\
ip addr add 10.96.0.10/32 dev kube-ipvs0
ipvsadm -A -t 10.96.0.10:80 -s rr  # default/web:80
ipvsadm -a -t 10.96.0.10:80 -r 10.244.1.5:8080 -m -w 1 -x 100  # default/web:80
ipvsadm -d -t 10.96.0.10:80 -r 10.244.1.5:8080  # default/web:80
ipvsadm -D -t 10.96.0.10:80
ip addr del fd00::1/128 dev kube-ipvs0
"
        );
        assert_eq!(render(&Plan::default()), "");
    }
}
