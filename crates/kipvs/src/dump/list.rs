//! `ipvsadm -Ln`, `-Ln --stats`, `-Ln --rate` and `--exact`: the listing, byte for byte.

use std::fmt::Write as _;

use kipvs_ipvs::{DestinationEntry, Info, ServiceEntry, ServiceKey, Stats, Table};

use super::names::{self, service_name};
use super::order::{destinations_order, services_order};

/// Which columns the listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Columns {
    /// Scheduler, flags, forwarding, weight and connections (`ipvsadm -Ln`).
    #[default]
    Plain,
    /// Counters (`--stats`).
    Stats,
    /// Rates (`--rate`).
    Rate,
}

/// How to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListOptions {
    /// Which columns.
    pub columns: Columns,
    /// Print numbers in full instead of scaled to K, M, G, T (`--exact`).
    pub exact: bool,
}

/// A note to print after a virtual service's line (`kipvs dump --services`), or `None`.
pub type Annotate<'a> = &'a dyn Fn(&ServiceKey) -> Option<String>;

/// The listing `ipvsadm -Ln` (with `options`) prints for `table` on a kernel that reports
/// `info`.
pub fn list(table: &Table, info: &Info, options: ListOptions) -> String {
    list_annotated(table, info, options, &|_| None)
}

/// [`list`], with `annotate`'s note after each virtual service's line, as `  # note`.
pub fn list_annotated(
    table: &Table,
    info: &Info,
    options: ListOptions,
    annotate: Annotate<'_>,
) -> String {
    let mut out = String::with_capacity(96 + table.services.len() * 400);
    let _ = writeln!(
        out,
        "IP Virtual Server version {} (size={})",
        info.version,
        names::fwmark(info.conn_table_size)
    );
    title(&mut out, options.columns);
    for i in services_order(&table.services) {
        service(&mut out, &table.services[i], options, annotate);
    }
    out
}

/// The column titles.
fn title(out: &mut String, columns: Columns) {
    let heads = match columns {
        Columns::Plain => {
            out.push_str(
                "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           \
                 Forward Weight ActiveConn InActConn\n",
            );
            return;
        }
        Columns::Stats => ["Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"],
        Columns::Rate => ["CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"],
    };
    let _ = write!(out, "{:<33}", "Prot LocalAddress:Port");
    for h in heads {
        let _ = write!(out, " {h:>8}");
    }
    out.push_str("\n  -> RemoteAddress:Port\n");
}

/// One number of the stats and rate columns (`print_largenum`): nine columns, scaled
/// to K, M, G or T from 10^8 on unless `exact`.
pub fn large_number(out: &mut String, n: u64, exact: bool) {
    let _ = if exact {
        let len = n.to_string().len();
        let width = if len <= 8 { 9 } else { len + 1 };
        write!(out, "{n:>width$}")
    } else if n < 100_000_000 {
        write!(out, "{n:>9}")
    } else if n < 1_000_000_000 {
        write!(out, "{:>8}K", n / 1_000)
    } else if n < 100_000_000_000 {
        write!(out, "{:>8}M", n / 1_000_000)
    } else if n < 100_000_000_000_000 {
        write!(out, "{:>8}G", n / 1_000_000_000)
    } else {
        write!(out, "{:>8}T", n / 1_000_000_000_000)
    };
}

fn counters(out: &mut String, s: &Stats, exact: bool) {
    for n in [s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes] {
        large_number(out, n, exact);
    }
}

fn rates(out: &mut String, s: &Stats, exact: bool) {
    for n in [s.cps, s.inpps, s.outpps, s.inbps, s.outbps] {
        large_number(out, n, exact);
    }
}

/// A virtual service's line and its destinations' lines.
fn service(out: &mut String, entry: &ServiceEntry, options: ListOptions, annotate: Annotate<'_>) {
    let svc = &entry.service;
    let name = service_name(&svc.key);
    match options.columns {
        Columns::Stats => {
            let _ = write!(out, "{name:<33}");
            counters(out, &entry.stats, options.exact);
        }
        Columns::Rate => {
            let _ = write!(out, "{name:<33}");
            rates(out, &entry.stats, options.exact);
        }
        Columns::Plain => {
            let _ = write!(out, "{name} {}", svc.scheduler.name());
            if names::has_sched_flags(svc) {
                let _ = write!(out, " ({})", names::sched_flags(svc));
            }
            if let Some(p) = &svc.persistence {
                let _ = write!(out, " persistent {}", p.timeout);
                if let Some(mask) = names::netmask(svc.key.family(), p) {
                    let _ = write!(out, " mask {mask}");
                }
                // ipvsadm shows the engine only for persistent services (-S saves it
                // for any).
                if let Some(pe) = &svc.engine {
                    let _ = write!(out, " pe {}", pe.as_str());
                }
            }
            if svc.flags.one_packet {
                out.push_str(" ops");
            }
        }
    }
    if let Some(note) = annotate(&svc.key) {
        let _ = write!(out, "  # {note}");
    }
    out.push('\n');
    for i in destinations_order(&entry.destinations) {
        destination(out, &entry.destinations[i], options);
    }
}

/// A destination's line.
fn destination(out: &mut String, entry: &DestinationEntry, options: ListOptions) {
    let d = &entry.destination;
    out.push_str("  -> ");
    let _ = match options.columns {
        Columns::Stats => {
            padded(out, 28, |out| names::addr_port(out, &d.addr, d.port));
            counters(out, &entry.stats, options.exact);
            writeln!(out)
        }
        Columns::Rate => {
            let s = &entry.stats;
            padded(out, 28, |out| names::addr_port(out, &d.addr, d.port));
            let _ = write!(out, " {:>8} {:>8} {:>8}", s.cps, s.inpps, s.outpps);
            large_number(out, s.inbps, options.exact);
            large_number(out, s.outbps, options.exact);
            writeln!(out)
        }
        // The line of every destination of the default listing, so the one written by
        // hand rather than through padded format specs: a third of `kipvs dump`'s own
        // time at 100,000 destinations.
        Columns::Plain => {
            padded(out, 28, |out| names::addr_port(out, &d.addr, d.port));
            out.push(' ');
            padded(out, 7, |out| out.push_str(names::forward_name(&d.forward)));
            out.push(' ');
            padded(out, 6, |out| number(out, names::fwmark(d.weight)));
            out.push(' ');
            padded(out, 10, |out| number(out, entry.counters.active));
            out.push(' ');
            padded(out, 10, |out| number(out, entry.counters.inactive));
            writeln!(out)
        }
    };
}

/// Writes with `write`, then spaces up to `width` characters: printf's `%-*s`.
fn padded(out: &mut String, width: usize, write: impl FnOnce(&mut String)) {
    let start = out.len();
    write(out);
    let written = out.len() - start;
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(written)));
}

/// A number in decimal, without padding.
fn number(out: &mut String, n: impl std::fmt::Display) {
    let _ = write!(out, "{n}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::testdata::{info, sample_table};

    #[test]
    fn plain_listing_matches_ipvsadm_layout() {
        let expected = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.96.0.1:443 rr
  -> 192.168.1.10:6443            Masq    1      3          12        
  -> 192.168.1.11:6443            Route   0      0          0         
UDP  10.96.0.10:53 sh (sh-fallback,sh-port) persistent 360 mask 255.255.255.0 ops
  -> 10.244.0.5:53                Tunnel  2147483647 0          0         
SCTP [fd00::1]:3868 wlc persistent 60 mask 64 pe sip
  -> [fd00:1::2]:3868             Local   5      0          0         
FWM  7 mh (mh-fallback)
  -> 10.0.0.1:0                   Masq    1      0          0         
";
        assert_eq!(
            list(&sample_table(), &info(), ListOptions::default()),
            expected
        );
    }

    #[test]
    fn stats_listing_scales_large_numbers_unless_exact() {
        let opts = ListOptions {
            columns: Columns::Stats,
            exact: false,
        };
        let text = list(&sample_table(), &info(), opts);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes"
        );
        assert_eq!(lines[2], "  -> RemoteAddress:Port");
        assert_eq!(
            lines[3],
            "TCP  10.96.0.1:443                      15     1234  123456K   12345M     123G"
        );
        let exact = list(
            &sample_table(),
            &info(),
            ListOptions {
                columns: Columns::Stats,
                exact: true,
            },
        );
        assert_eq!(
            exact.lines().nth(3).unwrap(),
            "TCP  10.96.0.1:443                      15     1234 123456789 12345678901 123456789012"
        );
    }

    #[test]
    fn rate_listing_leaves_destination_packet_rates_unscaled() {
        let opts = ListOptions {
            columns: Columns::Rate,
            exact: false,
        };
        let text = list(&sample_table(), &info(), opts);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS"
        );
        assert_eq!(
            lines[4],
            "  -> 192.168.1.10:6443            123456789        2        3  123456K        5"
        );
    }

    #[test]
    fn large_numbers_switch_units_at_ipvsadm_thresholds() {
        let f = |n, exact| {
            let mut s = String::new();
            large_number(&mut s, n, exact);
            s
        };
        assert_eq!(f(99_999_999, false), " 99999999");
        assert_eq!(f(100_000_000, false), "  100000K");
        assert_eq!(f(1_000_000_000, false), "    1000M");
        assert_eq!(f(100_000_000_000, false), "     100G");
        assert_eq!(f(100_000_000_000_000, false), "     100T");
        assert_eq!(f(12_345_678, true), " 12345678");
        assert_eq!(f(123_456_789, true), " 123456789");
        assert_eq!(f(u64::MAX, true), " 18446744073709551615");
    }

    #[test]
    fn annotations_follow_the_service_line() {
        let text = list_annotated(&sample_table(), &info(), ListOptions::default(), &|k| {
            matches!(k, ServiceKey::Addr { port: 443, .. })
                .then(|| "default/kubernetes:https".into())
        });
        assert!(text.contains("TCP  10.96.0.1:443 rr  # default/kubernetes:https\n"));
    }
}
