//! Plain IPVS types: what a virtual service, a destination and their counters are.
//!
//! One definition of each concept for the whole workspace. These types carry no netlink
//! detail (no attribute numbers, no byte order); the codec maps them to the kernel's
//! attributes of `include/uapi/linux/ip_vs.h`. Values are validated when they are built
//! from input, so the rest of the code can trust them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Address family of a virtual service or destination (`AF_INET` / `AF_INET6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    /// IPv4 (`AF_INET`, 2).
    V4,
    /// IPv6 (`AF_INET6`, 10).
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// Transport protocol of an address-based virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP (`IPPROTO_TCP`, 6).
    Tcp,
    /// UDP (`IPPROTO_UDP`, 17).
    Udp,
    /// SCTP (`IPPROTO_SCTP`, 132).
    Sctp,
}

impl Protocol {
    /// The name ipvsadm prints in its listing (`TCP`, `UDP`, `SCTP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What identifies a virtual service in the kernel: protocol + address + port, or a
/// firewall mark within an address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ServiceKey {
    /// A service reached at `addr:port` over `protocol`.
    Addr {
        /// Transport protocol.
        protocol: Protocol,
        /// Virtual IP address.
        addr: IpAddr,
        /// Virtual port (host order here; the codec converts).
        port: u16,
    },
    /// A service matching packets carrying firewall mark `mark`.
    Fwmark {
        /// Address family the mark applies to.
        family: Family,
        /// The netfilter mark.
        mark: u32,
    },
}

impl ServiceKey {
    /// Address family of the service.
    pub fn family(&self) -> Family {
        match self {
            ServiceKey::Addr { addr, .. } => Family::of(addr),
            ServiceKey::Fwmark { family, .. } => *family,
        }
    }
}

impl fmt::Display for ServiceKey {
    /// The way ipvsadm names a service: `TCP 10.0.0.1:80`, `UDP [fd00::1]:53`, `FWM 7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Addr {
                protocol,
                addr: IpAddr::V4(a),
                port,
            } => write!(f, "{protocol} {a}:{port}"),
            ServiceKey::Addr {
                protocol,
                addr: IpAddr::V6(a),
                port,
            } => write!(f, "{protocol} [{a}]:{port}"),
            ServiceKey::Fwmark { family, mark } => match family {
                Family::V4 => write!(f, "FWM {mark}"),
                Family::V6 => write!(f, "FWM {mark} IPv6"),
            },
        }
    }
}

/// A scheduling algorithm, by the kernel's module name (`ip_vs_<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scheduler {
    /// Round robin.
    RoundRobin,
    /// Weighted round robin.
    WeightedRoundRobin,
    /// Least connection.
    LeastConnection,
    /// Weighted least connection (the kernel's default).
    WeightedLeastConnection,
    /// Locality-based least connection.
    LocalityBasedLeastConnection,
    /// Locality-based least connection with replication.
    LocalityBasedLeastConnectionReplication,
    /// Destination hashing.
    DestinationHashing,
    /// Source hashing.
    SourceHashing,
    /// Shortest expected delay.
    ShortestExpectedDelay,
    /// Never queue.
    NeverQueue,
    /// Maglev hashing.
    MaglevHashing,
    /// Weighted failover.
    WeightedFailover,
    /// Weighted overflow.
    WeightedOverflow,
    /// Any other scheduler the kernel may know, passed through by name.
    Other(SchedulerName),
}

/// A scheduler name the kernel accepts: 1 to 15 bytes of `[a-z0-9_]` (`IP_VS_SCHEDNAME_MAXLEN` is 16
/// including the NUL).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SchedulerName(String);

impl SchedulerName {
    /// Longest name the kernel stores, without the terminating NUL.
    pub const MAX_LEN: usize = 15;

    /// Validates a scheduler or persistence-engine name.
    ///
    /// Fails when the name is empty, longer than 15 bytes or holds anything but lowercase
    /// ASCII letters, digits and `_`.
    pub fn try_new(name: &str) -> Result<Self, InvalidValue> {
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(SchedulerName(name.to_owned()))
        } else {
            Err(InvalidValue::new(
                "scheduler",
                name,
                "expected 1-15 characters of a-z, 0-9 or _",
            ))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Scheduler {
    /// Every scheduler the mainline kernel ships, in ipvsadm's order.
    pub const KNOWN: [Scheduler; 13] = [
        Scheduler::RoundRobin,
        Scheduler::WeightedRoundRobin,
        Scheduler::LeastConnection,
        Scheduler::WeightedLeastConnection,
        Scheduler::LocalityBasedLeastConnection,
        Scheduler::LocalityBasedLeastConnectionReplication,
        Scheduler::DestinationHashing,
        Scheduler::SourceHashing,
        Scheduler::ShortestExpectedDelay,
        Scheduler::NeverQueue,
        Scheduler::MaglevHashing,
        Scheduler::WeightedFailover,
        Scheduler::WeightedOverflow,
    ];

    /// The kernel's name for the scheduler (`rr`, `wlc`, `mh`, ...).
    pub fn name(&self) -> &str {
        match self {
            Scheduler::RoundRobin => "rr",
            Scheduler::WeightedRoundRobin => "wrr",
            Scheduler::LeastConnection => "lc",
            Scheduler::WeightedLeastConnection => "wlc",
            Scheduler::LocalityBasedLeastConnection => "lblc",
            Scheduler::LocalityBasedLeastConnectionReplication => "lblcr",
            Scheduler::DestinationHashing => "dh",
            Scheduler::SourceHashing => "sh",
            Scheduler::ShortestExpectedDelay => "sed",
            Scheduler::NeverQueue => "nq",
            Scheduler::MaglevHashing => "mh",
            Scheduler::WeightedFailover => "fo",
            Scheduler::WeightedOverflow => "ovf",
            Scheduler::Other(name) => name.as_str(),
        }
    }

    /// Whether the scheduler reads the `sh-fallback`/`sh-port` (or `mh-*`) flags.
    pub fn uses_hash_flags(&self) -> bool {
        matches!(self, Scheduler::SourceHashing | Scheduler::MaglevHashing)
    }
}

impl FromStr for Scheduler {
    type Err = InvalidValue;

    /// Parses a kernel scheduler name; names outside the mainline set become
    /// [`Scheduler::Other`] when they are well-formed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(known) = Scheduler::KNOWN.iter().find(|k| k.name() == s) {
            return Ok(known.clone());
        }
        SchedulerName::try_new(s).map(Scheduler::Other)
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Virtual service flags a user sets (`IP_VS_SVC_F_*`, without the kernel-internal
/// `HASHED` bit, which the codec strips on decode).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct ServiceFlags {
    /// Persistent service (`IP_VS_SVC_F_PERSISTENT`, 0x1): a client sticks to one destination.
    pub persistent: bool,
    /// One-packet scheduling for UDP (`IP_VS_SVC_F_ONEPACKET`, 0x4).
    pub one_packet: bool,
    /// `sh-fallback` / `mh-fallback` (`IP_VS_SVC_F_SCHED1`, 0x8).
    pub sched_fallback: bool,
    /// `sh-port` / `mh-port` (`IP_VS_SVC_F_SCHED2`, 0x10).
    pub sched_port: bool,
    /// The third scheduler flag (`IP_VS_SVC_F_SCHED3`, 0x20), unused by mainline schedulers.
    pub sched3: bool,
}

/// Persistence granularity (ipvsadm `-M`): clients whose addresses are equal under the
/// mask share a persistence template, so they stick to one destination together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Netmask {
    /// A prefix length: at most 32 for IPv4, 1 to 128 for IPv6; 32 and 128 mean one
    /// client address (what kube-proxy uses).
    Prefix(u8),
    /// An IPv4 mask whose bits are not contiguous (ipvsadm `-M 255.0.255.0`): the kernel
    /// applies any IPv4 mask bit by bit. [`Netmask::from_ipv4`] gives [`Netmask::Prefix`]
    /// for contiguous masks, so each mask has one representation.
    Ipv4Mask(Ipv4Addr),
}

impl Netmask {
    /// One client address per template: a /32 for IPv4, a /128 for IPv6.
    pub fn host(family: Family) -> Netmask {
        match family {
            Family::V4 => Netmask::Prefix(32),
            Family::V6 => Netmask::Prefix(128),
        }
    }

    /// The IPv4 `mask`: a prefix when its bits are contiguous, else the mask itself.
    pub fn from_ipv4(mask: Ipv4Addr) -> Netmask {
        let bits = u32::from(mask);
        let ones = bits.leading_ones();
        if bits.checked_shl(ones).unwrap_or(0) == 0 {
            Netmask::Prefix(u8::try_from(ones).unwrap_or(32))
        } else {
            Netmask::Ipv4Mask(mask)
        }
    }

    /// The prefix length, when the mask is one.
    pub fn prefix(self) -> Option<u8> {
        match self {
            Netmask::Prefix(p) => Some(p),
            Netmask::Ipv4Mask(_) => None,
        }
    }

    /// The IPv4 mask (`255.255.255.0` for a /24), for any IPv4 netmask.
    pub fn ipv4_mask(self) -> Ipv4Addr {
        match self {
            Netmask::Prefix(p) => {
                Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(p.min(32))).unwrap_or(0))
            }
            Netmask::Ipv4Mask(mask) => mask,
        }
    }
}

/// Persistence settings of a virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Persistence {
    /// Persistence timeout in seconds (ipvsadm `-p`).
    pub timeout: u32,
    /// Persistence granularity (ipvsadm `-M`).
    pub netmask: Netmask,
}

impl Persistence {
    /// Persistence for `timeout` seconds, one client address per template.
    pub fn per_client(family: Family, timeout: u32) -> Persistence {
        Persistence {
            timeout,
            netmask: Netmask::host(family),
        }
    }
}

/// A virtual service: what the kernel needs to create or update one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Service {
    /// What the service listens on.
    pub key: ServiceKey,
    /// Scheduling algorithm.
    pub scheduler: Scheduler,
    /// User-settable flags. `flags.persistent` is derived from `persistence` by the codec
    /// when encoding; keep them consistent.
    pub flags: ServiceFlags,
    /// Persistence, when the service is persistent.
    pub persistence: Option<Persistence>,
    /// Persistence engine (ipvsadm `--pe`, e.g. `sip`), if any. The kernel keeps it for
    /// any service and uses it only for persistent ones.
    pub engine: Option<SchedulerName>,
}

impl Service {
    /// A non-persistent service with no flags.
    pub fn new(key: ServiceKey, scheduler: Scheduler) -> Self {
        Service {
            key,
            scheduler,
            flags: ServiceFlags::default(),
            persistence: None,
            engine: None,
        }
    }

    /// The same service with the persistence engine `engine` (ipvsadm `--pe`).
    pub fn with_engine(mut self, engine: SchedulerName) -> Self {
        self.engine = Some(engine);
        self
    }

    /// The same service made persistent with `persistence` (sets `flags.persistent`).
    pub fn with_persistence(mut self, persistence: Persistence) -> Self {
        self.flags.persistent = true;
        self.persistence = Some(persistence);
        self
    }

    /// The same service with `flags` (keeping `flags.persistent` consistent with the
    /// persistence settings).
    pub fn with_flags(mut self, flags: ServiceFlags) -> Self {
        self.flags = ServiceFlags {
            persistent: self.persistence.is_some(),
            ..flags
        };
        self
    }
}

/// How packets reach a destination (`IP_VS_CONN_F_FWD_MASK` values).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum ForwardMethod {
    /// NAT (`IP_VS_CONN_F_MASQ`, 0): ipvsadm prints `Masq`.
    #[default]
    Masq,
    /// Local node (`IP_VS_CONN_F_LOCALNODE`, 1): ipvsadm prints `Local`.
    Local,
    /// IP-in-IP and other tunnels (`IP_VS_CONN_F_TUNNEL`, 2): ipvsadm prints `Tunnel`.
    Tunnel(TunnelConfig),
    /// Direct routing (`IP_VS_CONN_F_DROUTE`, 3): ipvsadm prints `Route`.
    Route,
    /// Bypass (`IP_VS_CONN_F_BYPASS`, 4), only seen in kernel replies.
    Bypass,
}

/// Tunnel encapsulation of a [`ForwardMethod::Tunnel`] destination.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct TunnelConfig {
    /// Encapsulation type.
    pub kind: TunnelKind,
    /// Destination UDP port of a GUE tunnel (0 otherwise).
    pub port: u16,
    /// `IP_VS_TUNNEL_ENCAP_FLAG_*` bits (checksum options).
    pub flags: u16,
}

/// Tunnel encapsulation type (`IP_VS_CONN_F_TUNNEL_TYPE_*`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum TunnelKind {
    /// Plain IP-in-IP (0).
    #[default]
    IpIp,
    /// Generic UDP encapsulation (1).
    Gue,
    /// GRE (2).
    Gre,
}

/// A destination (real server) of a virtual service: what the kernel needs to add or
/// update one. Its identity within a service is `(addr, port)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Destination {
    /// Real server address. May differ in family from the service (tunnelled IPv4 to IPv6).
    pub addr: IpAddr,
    /// Real server port.
    pub port: u16,
    /// Forwarding method.
    pub forward: ForwardMethod,
    /// Scheduling weight; 0 stops new connections (quiesced).
    pub weight: u32,
    /// Upper connection threshold (0 = none).
    pub upper_threshold: u32,
    /// Lower connection threshold (0 = none).
    pub lower_threshold: u32,
}

impl Destination {
    /// A NAT destination with the given weight and no thresholds.
    pub fn masq(addr: IpAddr, port: u16, weight: u32) -> Self {
        Destination {
            addr,
            port,
            forward: ForwardMethod::Masq,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    /// Identity of the destination within its service.
    pub fn id(&self) -> (IpAddr, u16) {
        (self.addr, self.port)
    }
}

/// Connection counters the kernel keeps per destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnCounters {
    /// Established connections (`ActiveConn`).
    pub active: u32,
    /// Other connections (`InActConn`).
    pub inactive: u32,
    /// Persistence templates pointing at the destination.
    pub persistent: u32,
}

/// Traffic statistics, 64-bit (`IPVS_SVC_ATTR_STATS64` / `IPVS_DEST_ATTR_STATS64`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stats {
    /// Connections scheduled.
    pub conns: u64,
    /// Incoming packets.
    pub inpkts: u64,
    /// Outgoing packets.
    pub outpkts: u64,
    /// Incoming bytes.
    pub inbytes: u64,
    /// Outgoing bytes.
    pub outbytes: u64,
    /// Connections per second (estimated rate).
    pub cps: u64,
    /// Incoming packets per second.
    pub inpps: u64,
    /// Outgoing packets per second.
    pub outpps: u64,
    /// Incoming bytes per second.
    pub inbps: u64,
    /// Outgoing bytes per second.
    pub outbps: u64,
}

/// A destination as the kernel reports it: its configuration plus live counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationEntry {
    /// Configuration.
    pub destination: Destination,
    /// Connection counters.
    pub counters: ConnCounters,
    /// Traffic statistics.
    pub stats: Stats,
}

/// A virtual service as the kernel reports it, with its destinations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// Configuration.
    pub service: Service,
    /// Traffic statistics.
    pub stats: Stats,
    /// Destinations, in the order the kernel lists them (newest first).
    pub destinations: Vec<DestinationEntry>,
}

/// The IPVS table of one network namespace, as read from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// Every virtual service with its destinations.
    pub services: Vec<ServiceEntry>,
}

/// Connection timeouts (`ipvsadm --set tcp tcpfin udp`), in seconds; 0 leaves a value
/// unchanged when setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Established TCP sessions.
    pub tcp: u32,
    /// TCP sessions after a FIN.
    pub tcp_fin: u32,
    /// UDP.
    pub udp: u32,
}

/// The IPVS version the kernel reports (`IP_VS_VERSION_CODE`, printed by ipvsadm as
/// `IP Virtual Server version 1.2.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Patch level.
    pub patch: u8,
}

impl Version {
    /// Splits the kernel's packed code `0x00MMmmpp`.
    pub fn from_code(code: u32) -> Self {
        let [_, major, minor, patch] = code.to_be_bytes();
        Version {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// General facts about IPVS in a network namespace (`IPVS_CMD_GET_INFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// IPVS version.
    pub version: Version,
    /// Number of buckets of the connection hash table (ipvsadm's `size=`).
    pub conn_table_size: u32,
}

/// A value that failed validation: which field, what was given, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {expected}")]
pub struct InvalidValue {
    /// The field or concept being validated.
    pub field: &'static str,
    /// The rejected input.
    pub value: String,
    /// What would have been accepted.
    pub expected: &'static str,
}

impl InvalidValue {
    /// Builds the error for `field` given `value`.
    pub fn new(field: &'static str, value: &str, expected: &'static str) -> Self {
        InvalidValue {
            field,
            value: value.to_owned(),
            expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_names_round_trip_through_parsing() {
        for s in Scheduler::KNOWN {
            assert_eq!(s.name().parse::<Scheduler>().unwrap(), s);
        }
    }

    #[test]
    fn unknown_scheduler_names_pass_through_when_well_formed() {
        let s: Scheduler = "twos".parse().unwrap();
        assert_eq!(s.name(), "twos");
        assert!(matches!(s, Scheduler::Other(_)));
    }

    #[test]
    fn malformed_scheduler_names_are_rejected() {
        for bad in ["", "RR", "a-b", "sixteen_chars_xx", "r r"] {
            assert!(bad.parse::<Scheduler>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn service_keys_display_as_ipvsadm_names_them() {
        let v4 = ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: "10.0.0.1".parse().unwrap(),
            port: 80,
        };
        let v6 = ServiceKey::Addr {
            protocol: Protocol::Udp,
            addr: "fd00::1".parse().unwrap(),
            port: 53,
        };
        let fwm = ServiceKey::Fwmark {
            family: Family::V4,
            mark: 7,
        };
        assert_eq!(v4.to_string(), "TCP 10.0.0.1:80");
        assert_eq!(v6.to_string(), "UDP [fd00::1]:53");
        assert_eq!(fwm.to_string(), "FWM 7");
    }
}
