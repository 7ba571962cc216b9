//! `/proc/net/ip_vs`: the kernel's text view of the whole table, read in one pass.
//!
//! Over netlink the kernel lists destinations only one virtual service at a time, so
//! reading a table of 10,000 services costs 10,000 dumps, each a request, two dumpit
//! calls and two reads. This file prints every service with its destinations in one
//! sequential read. It shows less than netlink: per destination only the address, port,
//! forwarding method (without tunnel settings), weight and active and inactive
//! connections; and fwmark services without their address family. That is exactly what
//! `ipvsadm -Ln` lists, so [`crate::Client::table_with`] takes the services from netlink
//! and their destinations from here when only those columns are needed.
//!
//! One difference cannot be seen: the file prints a forwarding method it has no name for
//! (bypass, which only raw netlink can set) as `Masq`, where netlink tells it apart.
//!
//! Linux before the per-namespace service tables (6.1 among them) has a quirk here: it
//! keeps every namespace's services in one hash, and when a read of the file restarts
//! (every page, so every few services on a large table) it finds its place counting this
//! namespace's services, though it counted all while reading. With services in other
//! namespaces some of ours are skipped, never garbled: each service's record is whole.
//! The client reads the skipped ones over netlink.
//!
//! [`parse`] is pure. A line it cannot read, or a key it sees twice, only makes the
//! service it belongs to unknown: the caller reads that one over netlink instead.
//! `ProcFile` is the one effectful part: the open file.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::types::{
    ConnCounters, Destination, DestinationEntry, ForwardMethod, Protocol, ServiceKey, Stats,
    TunnelConfig,
};

/// The file, relative to the network namespace of the thread that opens it.
pub const PATH: &str = "/proc/thread-self/net/ip_vs";

/// How the file names a virtual service. Fwmark services carry no family here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ProcKey {
    Addr {
        protocol: Protocol,
        addr: IpAddr,
        port: u16,
    },
    Fwmark(u32),
}

impl ProcKey {
    fn of(key: &ServiceKey) -> ProcKey {
        match *key {
            ServiceKey::Addr {
                protocol,
                addr,
                port,
            } => ProcKey::Addr {
                protocol,
                addr,
                port,
            },
            ServiceKey::Fwmark { mark, .. } => ProcKey::Fwmark(mark),
        }
    }
}

/// The destinations of each virtual service, as the file listed them.
///
/// Destinations carry what the file shows; thresholds, persistent connections and
/// statistics are zero and tunnel settings default.
#[derive(Debug, Default)]
pub struct ProcTable {
    services: HashMap<ProcKey, Vec<DestinationEntry>>,
    /// Keys seen twice (an IPv4 and an IPv6 fwmark service with the same mark) or with
    /// a line that could not be read: their destinations cannot be told apart.
    unknown: HashSet<ProcKey>,
}

impl ProcTable {
    /// Takes the destinations of the virtual service `key`, in the kernel's order;
    /// `None` when the file did not list it or cannot say which destinations are its.
    pub fn take(&mut self, key: &ServiceKey) -> Option<Vec<DestinationEntry>> {
        self.services.remove(&ProcKey::of(key))
    }

    /// How many virtual services the file listed with readable destinations.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether the file listed no virtual service with readable destinations.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// Reads the text of `/proc/net/ip_vs`: the three title lines, then each virtual service
/// (`TCP  0A000001:0050 rr ...`, `UDP  [fd00:...:0001]:0035 ...`, `FWM  00000007 ...`)
/// followed by its destinations (`  -> 0A010001:1F90      Masq    1      0          0`).
pub fn parse(text: &str) -> ProcTable {
    let mut table = ProcTable::default();
    // The service the destination lines being read belong to; `None` after a service
    // line that could not be read, so that its destinations go nowhere.
    let mut current: Option<ProcKey> = None;
    let mut dests: Vec<DestinationEntry> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("  -> ") {
            if rest.starts_with("RemoteAddress") {
                continue; // the title
            }
            match (current, destination(rest)) {
                (Some(_), Some(d)) => dests.push(d),
                (Some(key), None) => {
                    table.unknown.insert(key);
                }
                (None, _) => {}
            }
            continue;
        }
        if let Some(key) = current.take() {
            // Services tend to have alike numbers of destinations: room for as many as
            // the last one's saves regrowing the list from empty each time.
            let room = Vec::with_capacity(dests.len());
            table.finish(key, std::mem::replace(&mut dests, room));
        }
        current = service(line);
    }
    if let Some(key) = current {
        table.finish(key, dests);
    }
    table
}

impl ProcTable {
    /// Files `dests` under `key`, unless the key is already unknown or seen before.
    fn finish(&mut self, key: ProcKey, dests: Vec<DestinationEntry>) {
        if self.unknown.contains(&key) {
            return;
        }
        if self.services.insert(key, dests).is_some() {
            self.services.remove(&key);
            self.unknown.insert(key);
        }
    }
}

/// A service line's key; `None` for the title lines and anything unreadable.
fn service(line: &str) -> Option<ProcKey> {
    let mut fields = line.split_ascii_whitespace();
    let kind = fields.next()?;
    let id = fields.next()?;
    if kind == "FWM" {
        return u32::from_str_radix(id, 16).ok().map(ProcKey::Fwmark);
    }
    let protocol = match kind {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        _ => return None,
    };
    let (addr, port) = addr_port(id)?;
    Some(ProcKey::Addr {
        protocol,
        addr,
        port,
    })
}

/// A destination line after its `  -> `.
fn destination(rest: &str) -> Option<DestinationEntry> {
    let mut fields = rest.split_ascii_whitespace();
    let (addr, port) = addr_port(fields.next()?)?;
    let forward = match fields.next()? {
        "Masq" => ForwardMethod::Masq,
        "Local" => ForwardMethod::Local,
        "Tunnel" => ForwardMethod::Tunnel(TunnelConfig::default()),
        "Route" => ForwardMethod::Route,
        _ => return None,
    };
    // Printed with %d from the kernel's atomic_t; netlink sends the same bits as u32.
    let mut number = || -> Option<u32> {
        let n: i32 = fields.next()?.parse().ok()?;
        Some(u32::from_ne_bytes(n.to_ne_bytes()))
    };
    let weight = number()?;
    let active = number()?;
    let inactive = number()?;
    if fields.next().is_some() {
        return None;
    }
    Some(DestinationEntry {
        destination: Destination {
            addr,
            port,
            forward,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
        },
        counters: ConnCounters {
            active,
            inactive,
            persistent: 0,
        },
        stats: Stats::default(),
    })
}

/// `0A000001:0050` (IPv4 and port in hex) or `[fd00:0000:...:0001]:0050` (IPv6 in full).
fn addr_port(field: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = field.rsplit_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let addr = match addr.strip_prefix('[') {
        Some(v6) => IpAddr::V6(v6.strip_suffix(']')?.parse::<Ipv6Addr>().ok()?),
        None if addr.len() == 8 => IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?)),
        None => return None,
    };
    Some((addr, port))
}

/// The file of one network namespace, kept open: the kernel binds it to the namespace
/// of the thread that opened it, so it can be read again from any thread, like the
/// client's socket.
#[derive(Debug)]
pub(crate) struct ProcFile {
    file: File,
    /// The last read's bytes, kept so that the next read needs no reallocation.
    text: Vec<u8>,
}

impl ProcFile {
    /// Opens the file of the calling thread's namespace; `None` when there is none
    /// (procfs not mounted, IPVS not loaded): the client then lists over netlink alone.
    pub(crate) fn open() -> Option<ProcFile> {
        File::open(PATH).ok().map(|file| ProcFile {
            file,
            text: Vec::new(),
        })
    }

    /// Reads the whole file again, from its start.
    ///
    /// Fails when the file cannot be read (IPVS unloaded since it was opened) or is not
    /// text.
    pub(crate) fn read(&mut self) -> io::Result<ProcTable> {
        self.file.seek(SeekFrom::Start(0))?;
        self.text.clear();
        // Room up front, so that no read is a tiny probe: each read restarts the
        // kernel's walk of its service hash (see the module doc).
        self.text.reserve(1 << 20);
        self.file.read_to_end(&mut self.text)?;
        let text = std::str::from_utf8(&self.text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(parse(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Family;

    /// The file as Linux 6.1 prints it (`ip_vs_info_seq_show`), one service of each kind.
    const SAMPLE: &str = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A600001:0050 rr 
  -> 0AF40102:1F90      Masq    1      3          0         
  -> 0AF40101:1F90      Route   0      0          12        
UDP  0A600002:0035 sh ops persistent 300 FFFFFF00
  -> 0AF40103:0035      Tunnel  100000 0          0         
TCP  [fd00:0000:0000:0000:0000:0000:0000:0001]:01BB mh persistent 60 00000080
  -> [fd00:0000:0000:0000:0000:0000:0001:0002]:2000      Local   1      0          0         
FWM  00000007 wlc ops 
  -> 0AF40104:0000      Masq    2      0          1         
SCTP  0A600003:0BB8 rr 
";

    fn v4(key: &str) -> ServiceKey {
        let (proto, rest) = key.split_once(' ').unwrap();
        let (addr, port) = rest.split_once(':').unwrap();
        ServiceKey::Addr {
            protocol: match proto {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                _ => Protocol::Sctp,
            },
            addr: addr.parse().unwrap(),
            port: port.parse().unwrap(),
        }
    }

    fn ids(dests: &[DestinationEntry]) -> Vec<String> {
        dests
            .iter()
            .map(|d| {
                let x = &d.destination;
                format!(
                    "{}:{} {:?} w{} a{} i{}",
                    x.addr, x.port, x.forward, x.weight, d.counters.active, d.counters.inactive
                )
            })
            .collect()
    }

    #[test]
    fn every_kind_of_service_gets_its_destinations_in_the_kernels_order() {
        let mut t = parse(SAMPLE);
        assert_eq!(t.len(), 5);
        assert_eq!(
            ids(&t.take(&v4("TCP 10.96.0.1:80")).unwrap()),
            [
                "10.244.1.2:8080 Masq w1 a3 i0",
                "10.244.1.1:8080 Route w0 a0 i12"
            ]
        );
        assert_eq!(
            ids(&t.take(&v4("UDP 10.96.0.2:53")).unwrap()),
            ["10.244.1.3:53 Tunnel(TunnelConfig { kind: IpIp, port: 0, flags: 0 }) w100000 a0 i0"]
        );
        let v6 = ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: "fd00::1".parse().unwrap(),
            port: 443,
        };
        assert_eq!(
            ids(&t.take(&v6).unwrap()),
            ["fd00::1:2:8192 Local w1 a0 i0"]
        );
        let fwm = ServiceKey::Fwmark {
            family: Family::V4,
            mark: 7,
        };
        assert_eq!(ids(&t.take(&fwm).unwrap()), ["10.244.1.4:0 Masq w2 a0 i1"]);
        assert_eq!(t.take(&v4("SCTP 10.96.0.3:3000")).unwrap().len(), 0);
        assert!(t.take(&v4("TCP 10.96.0.9:80")).is_none(), "not listed");
        assert!(t.is_empty(), "each service is taken once");
    }

    #[test]
    fn a_fwmark_used_by_both_families_is_left_to_netlink() {
        let text = "FWM  00000007 rr \n  -> 0A000001:0000      Masq    1      0          0\n\
                    FWM  00000007 rr \n  -> [fd00:0000:0000:0000:0000:0000:0000:0001]:0000      Masq    1      0          0\n";
        let mut t = parse(text);
        for family in [Family::V4, Family::V6] {
            assert!(t.take(&ServiceKey::Fwmark { family, mark: 7 }).is_none());
        }
    }

    #[test]
    fn an_unreadable_line_leaves_only_its_own_service_to_netlink() {
        let text = "TCP  0A600001:0050 rr \n  -> 0AF40102:1F90      Bogus   1      0          0\n\
                    ICMP  0A600002:0000 rr \n  -> 0AF40103:0000      Masq    1      0          0\n\
                    TCP  0A600004:0050 rr \n  -> 0AF40104:1F90      Masq    -1     0          0\n\
                    TCP  0A600003:0050 rr \n  -> 0AF40105:1F90      Masq    1      0          0\n";
        let mut t = parse(text);
        assert!(t.take(&v4("TCP 10.96.0.1:80")).is_none());
        assert_eq!(
            ids(&t.take(&v4("TCP 10.96.0.4:80")).unwrap()),
            ["10.244.1.4:8080 Masq w4294967295 a0 i0"],
            "a negative %d is the u32 netlink would send"
        );
        assert_eq!(
            ids(&t.take(&v4("TCP 10.96.0.3:80")).unwrap()),
            ["10.244.1.5:8080 Masq w1 a0 i0"]
        );
        assert!(t.is_empty(), "the ICMP service's destinations went nowhere");
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_lines_never_panics(
            lines in proptest::collection::vec(
                "(TCP  |UDP  |FWM  |  -> |)[0-9A-Fa-f:\\[\\]]{0,40}( [A-Za-z0-9 -]{0,30})?",
                0..30,
            )
        ) {
            let _ = parse(&lines.join("\n"));
        }
    }

    #[test]
    fn garbage_never_panics_and_yields_nothing_readable() {
        for text in [
            "",
            "\n\n",
            "  -> ",
            "TCP",
            "TCP  :",
            "TCP  [zz]:0050",
            "FWM  xyz",
        ] {
            let t = parse(text);
            assert!(t.is_empty(), "{text:?}");
        }
    }
}
