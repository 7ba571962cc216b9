//! Conversions between the plain types and IPVS generic netlink messages.
//!
//! Pure functions: encoding appends requests to a [`Writer`]; decoding reads the
//! attributes of a reply. No socket here. Attribute order and sizes follow what
//! `ipvsadm` (libipvs) sends, so encoded requests can be compared byte for byte with
//! captures of `ipvsadm` (see the fixtures in `tests/fixtures/`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::consts::{
    CmdAttr, DestAttr, FwdMethod, InfoAttr, IpvsCmd, StatsAttr, SvcAttr, TunType, AF_INET,
    AF_INET6, CONN_F_FWD_MASK, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPVS_GENL_VERSION,
    SVC_F_HASHED, SVC_F_ONEPACKET, SVC_F_PERSISTENT, SVC_F_SCHED1, SVC_F_SCHED2, SVC_F_SCHED3,
};
use crate::op::Operation;
use crate::types::{
    ConnCounters, Destination, DestinationEntry, Family, ForwardMethod, Info, InvalidValue,
    Netmask, Persistence, Protocol, Scheduler, SchedulerName, Service, ServiceFlags, ServiceKey,
    Stats, Timeouts, TunnelConfig, TunnelKind, Version,
};
use crate::wire::{
    attrs, fixed, get_be16, get_counter, get_str, get_u16, get_u32, get_u8, DecodeError,
    DecodeResult, Writer,
};

/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
pub const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_DUMP_INTR`: the dump was interrupted by a change and may be inconsistent.
pub const NLM_F_DUMP_INTR: u16 = 0x10;

/// The kernel's `AF_*` number of a family.
pub fn af(family: Family) -> u16 {
    match family {
        Family::V4 => AF_INET,
        Family::V6 => AF_INET6,
    }
}

fn protocol_number(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Sctp => IPPROTO_SCTP,
    }
}

/// An address as the kernel's `union nf_inet_addr` (16 bytes; IPv4 in the first four).
fn inet_addr(addr: &IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out.copy_from_slice(&a.octets()),
    }
    out
}

fn flag_bits(flags: &ServiceFlags, persistent: bool) -> u32 {
    let mut bits = 0;
    for (on, bit) in [
        (persistent, SVC_F_PERSISTENT),
        (flags.one_packet, SVC_F_ONEPACKET),
        (flags.sched_fallback, SVC_F_SCHED1),
        (flags.sched_port, SVC_F_SCHED2),
        (flags.sched3, SVC_F_SCHED3),
    ] {
        if on {
            bits |= bit;
        }
    }
    bits
}

/// The persistence netmask as the kernel wants it: an IPv4 mask in network order, or an
/// IPv6 prefix length in host order.
fn netmask_bytes(family: Family, netmask: Netmask) -> [u8; 4] {
    match (family, netmask) {
        (Family::V6, Netmask::Prefix(prefix)) => u32::from(prefix).to_ne_bytes(),
        // validate() keeps an IPv4 mask off IPv6 services.
        (_, mask) => mask.ipv4_mask().octets(),
    }
}

/// Checks what the kernel would reject with a less helpful error, before sending.
pub fn validate(op: &Operation) -> Result<(), InvalidValue> {
    match op {
        Operation::AddService(s) | Operation::UpdateService(s) => {
            if let Some(p) = &s.persistence {
                let ok = match (s.key.family(), p.netmask) {
                    (Family::V4, Netmask::Prefix(p)) => p <= 32,
                    (Family::V4, Netmask::Ipv4Mask(_)) => true,
                    (Family::V6, Netmask::Prefix(p)) => (1..=128).contains(&p),
                    (Family::V6, Netmask::Ipv4Mask(_)) => false,
                };
                if !ok {
                    return Err(InvalidValue::new(
                        "persistence netmask",
                        &format!("{:?}", p.netmask),
                        "a prefix length of 0-32 or a mask for IPv4, 1-128 for IPv6",
                    ));
                }
            }
            Ok(())
        }
        Operation::AddDestination { destination, .. }
        | Operation::UpdateDestination { destination, .. } => {
            validate_forward(&destination.forward)
        }
        _ => Ok(()),
    }
}

/// `IP_VS_TUNNEL_ENCAP_FLAG_CSUM`.
const TUN_F_CSUM: u16 = 1;
/// `IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM`: remote checksum offload, a GUE feature.
const TUN_F_REMCSUM: u16 = 2;

fn validate_forward(forward: &ForwardMethod) -> Result<(), InvalidValue> {
    match forward {
        // The kernel stores it, but it is not a way to forward: ipvsadm prints "(null)".
        ForwardMethod::Bypass => Err(InvalidValue::new(
            "forwarding method",
            "bypass",
            "masq, local, tunnel or route (bypass only appears in kernel replies)",
        )),
        ForwardMethod::Tunnel(t) if t.flags & !(TUN_F_CSUM | TUN_F_REMCSUM) != 0 => {
            Err(InvalidValue::new(
                "tunnel flags",
                &format!("{:#x}", t.flags),
                "a combination of csum (0x1) and remcsum (0x2)",
            ))
        }
        // The kernel accepts it, but it means nothing for GRE and makes ipvsadm -Sn crash.
        ForwardMethod::Tunnel(t) if t.flags & TUN_F_REMCSUM != 0 && t.kind != TunnelKind::Gue => {
            Err(InvalidValue::new(
                "tunnel flags",
                "remcsum",
                "remote checksum offload (remcsum) only with a GUE tunnel",
            ))
        }
        _ => Ok(()),
    }
}

fn encode_service_key(w: &mut Writer, key: &ServiceKey) {
    w.u16(SvcAttr::Af.into(), af(key.family()));
    match key {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => {
            w.u16(SvcAttr::Protocol.into(), protocol_number(*protocol));
            w.attr(SvcAttr::Addr.into(), &inet_addr(addr));
            w.be16(SvcAttr::Port.into(), *port);
        }
        ServiceKey::Fwmark { mark, .. } => w.u32(SvcAttr::Fwmark.into(), *mark),
    }
}

fn nest_service_key(w: &mut Writer, key: &ServiceKey) {
    let n = w.begin_nest(CmdAttr::Service.into());
    encode_service_key(w, key);
    w.end_nest(n);
}

fn nest_service(w: &mut Writer, s: &Service) {
    let n = w.begin_nest(CmdAttr::Service.into());
    encode_service_key(w, &s.key);
    w.string(SvcAttr::SchedName.into(), s.scheduler.name());
    if let Some(engine) = &s.engine {
        w.string(SvcAttr::PeName.into(), engine.as_str());
    }
    let mut flags = [0u8; 8];
    flags[..4].copy_from_slice(&flag_bits(&s.flags, s.persistence.is_some()).to_ne_bytes());
    flags[4..].copy_from_slice(&u32::MAX.to_ne_bytes()); // mask: set every flag as given
    w.attr(SvcAttr::Flags.into(), &flags);
    let (timeout, netmask) = match (&s.persistence, s.key.family()) {
        (Some(p), family) => (p.timeout, netmask_bytes(family, p.netmask)),
        (None, family) => (0, netmask_bytes(family, Netmask::host(family))),
    };
    w.u32(SvcAttr::Timeout.into(), timeout);
    w.attr(SvcAttr::Netmask.into(), &netmask);
    w.end_nest(n);
}

fn nest_destination(w: &mut Writer, d: &Destination) {
    let n = w.begin_nest(CmdAttr::Dest.into());
    w.u16(DestAttr::AddrFamily.into(), af(Family::of(&d.addr)));
    w.attr(DestAttr::Addr.into(), &inet_addr(&d.addr));
    w.be16(DestAttr::Port.into(), d.port);
    let (method, tunnel) = match d.forward {
        ForwardMethod::Masq => (FwdMethod::Masq, TunnelConfig::default()),
        ForwardMethod::Local => (FwdMethod::LocalNode, TunnelConfig::default()),
        ForwardMethod::Tunnel(t) => (FwdMethod::Tunnel, t),
        ForwardMethod::Route => (FwdMethod::DRoute, TunnelConfig::default()),
        ForwardMethod::Bypass => (FwdMethod::Bypass, TunnelConfig::default()),
    };
    w.u32(DestAttr::FwdMethod.into(), method.into());
    w.u32(DestAttr::Weight.into(), d.weight);
    let tun_type = match tunnel.kind {
        TunnelKind::IpIp => TunType::IpIp,
        TunnelKind::Gue => TunType::Gue,
        TunnelKind::Gre => TunType::Gre,
    };
    w.u8(DestAttr::TunType.into(), tun_type.into());
    w.be16(DestAttr::TunPort.into(), tunnel.port);
    w.u16(DestAttr::TunFlags.into(), tunnel.flags);
    w.u32(DestAttr::UThresh.into(), d.upper_threshold);
    w.u32(DestAttr::LThresh.into(), d.lower_threshold);
    w.end_nest(n);
}

fn nest_destination_id(w: &mut Writer, addr: &IpAddr, port: u16) {
    let n = w.begin_nest(CmdAttr::Dest.into());
    w.u16(DestAttr::AddrFamily.into(), af(Family::of(addr)));
    w.attr(DestAttr::Addr.into(), &inet_addr(addr));
    w.be16(DestAttr::Port.into(), port);
    w.end_nest(n);
}

/// Appends the request for one mutation. `flags` carries `NLM_F_ACK` when the caller
/// wants an answer on success too.
pub fn encode_operation(w: &mut Writer, family: u16, seq: u32, flags: u16, op: &Operation) {
    let cmd = match op {
        Operation::AddService(_) => IpvsCmd::NewService,
        Operation::UpdateService(_) => IpvsCmd::SetService,
        Operation::DeleteService(_) => IpvsCmd::DelService,
        Operation::AddDestination { .. } => IpvsCmd::NewDest,
        Operation::UpdateDestination { .. } => IpvsCmd::SetDest,
        Operation::DeleteDestination { .. } => IpvsCmd::DelDest,
        Operation::Flush => IpvsCmd::Flush,
        Operation::Zero(_) => IpvsCmd::Zero,
        Operation::SetTimeouts(_) => IpvsCmd::SetConfig,
    };
    let m = w.begin_genl(
        family,
        NLM_F_REQUEST | flags,
        seq,
        cmd.into(),
        IPVS_GENL_VERSION,
    );
    match op {
        Operation::AddService(s) | Operation::UpdateService(s) => nest_service(w, s),
        Operation::DeleteService(k) | Operation::Zero(Some(k)) => nest_service_key(w, k),
        Operation::AddDestination {
            service,
            destination,
        }
        | Operation::UpdateDestination {
            service,
            destination,
        } => {
            nest_service_key(w, service);
            nest_destination(w, destination);
        }
        Operation::DeleteDestination {
            service,
            addr,
            port,
        } => {
            nest_service_key(w, service);
            nest_destination_id(w, addr, *port);
        }
        Operation::Flush | Operation::Zero(None) => {}
        Operation::SetTimeouts(t) => {
            w.u32(CmdAttr::TimeoutTcp.into(), t.tcp);
            w.u32(CmdAttr::TimeoutTcpFin.into(), t.tcp_fin);
            w.u32(CmdAttr::TimeoutUdp.into(), t.udp);
        }
    }
    w.end_msg(m);
}

/// A read-only request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query<'a> {
    /// Dump every virtual service.
    Services,
    /// One virtual service (`doit`, answered by one message and an ACK).
    Service(&'a ServiceKey),
    /// Dump the destinations of a virtual service.
    Destinations(&'a ServiceKey),
    /// Version and connection table size.
    Info,
    /// Connection timeouts.
    Timeouts,
}

/// Appends a read-only request.
pub fn encode_query(w: &mut Writer, family: u16, seq: u32, q: &Query<'_>) {
    let (cmd, flags) = match q {
        Query::Services => (IpvsCmd::GetService, NLM_F_DUMP),
        Query::Service(_) => (IpvsCmd::GetService, NLM_F_ACK),
        Query::Destinations(_) => (IpvsCmd::GetDest, NLM_F_DUMP),
        Query::Info => (IpvsCmd::GetInfo, NLM_F_ACK),
        Query::Timeouts => (IpvsCmd::GetConfig, NLM_F_ACK),
    };
    let m = w.begin_genl(
        family,
        NLM_F_REQUEST | flags,
        seq,
        cmd.into(),
        IPVS_GENL_VERSION,
    );
    if let Query::Service(k) | Query::Destinations(k) = q {
        nest_service_key(w, k);
    }
    w.end_msg(m);
}

/// The `(command, attributes)` of an IPVS reply payload, checking the command.
fn reply_attrs(payload: &[u8], expected: IpvsCmd) -> DecodeResult<&[u8]> {
    let g = crate::wire::genl(payload)?;
    let cmd = IpvsCmd::from(g.cmd);
    if cmd != expected {
        return Err(DecodeError::Invalid {
            what: "reply command",
            value: format!("{cmd:?}, expected {expected:?}"),
        });
    }
    Ok(g.attrs)
}

/// The one nested attribute of type `ty` among top-level attributes.
fn nested<'a>(top: &'a [u8], ty: CmdAttr, what: &'static str) -> DecodeResult<&'a [u8]> {
    for a in attrs(top) {
        let (t, p) = a?;
        if CmdAttr::from(t) == ty {
            return Ok(p);
        }
    }
    Err(DecodeError::Missing(what))
}

fn family_from_af(what: &'static str, af: u16) -> DecodeResult<Family> {
    match af {
        AF_INET => Ok(Family::V4),
        AF_INET6 => Ok(Family::V6),
        other => Err(DecodeError::Invalid {
            what,
            value: other.to_string(),
        }),
    }
}

fn addr_from(what: &'static str, family: Family, p: &[u8]) -> DecodeResult<IpAddr> {
    match family {
        Family::V4 => {
            let b = p.get(..4).ok_or(DecodeError::BadAttrSize {
                what,
                len: p.len(),
                expected: "4 or 16",
            })?;
            Ok(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
        }
        Family::V6 => Ok(IpAddr::V6(Ipv6Addr::from(fixed::<16>(what, p)?))),
    }
}

fn protocol_from(n: u16) -> DecodeResult<Protocol> {
    match n {
        IPPROTO_TCP => Ok(Protocol::Tcp),
        IPPROTO_UDP => Ok(Protocol::Udp),
        IPPROTO_SCTP => Ok(Protocol::Sctp),
        other => Err(DecodeError::Invalid {
            what: "service protocol",
            value: other.to_string(),
        }),
    }
}

fn name_from(what: &'static str, p: &[u8]) -> DecodeResult<SchedulerName> {
    let s = get_str(what, p)?;
    SchedulerName::try_new(s).map_err(|_| DecodeError::Invalid {
        what,
        value: format!("{s:?}"),
    })
}

fn scheduler_from(p: &[u8]) -> DecodeResult<Scheduler> {
    let s = get_str("scheduler name", p)?;
    s.parse().map_err(|_| DecodeError::Invalid {
        what: "scheduler name",
        value: format!("{s:?}"),
    })
}

fn netmask_from(family: Family, p: &[u8]) -> DecodeResult<Netmask> {
    let raw = fixed::<4>("netmask", p)?;
    match family {
        Family::V4 => Ok(Netmask::from_ipv4(raw.into())),
        Family::V6 => {
            let prefix = u32::from_ne_bytes(raw);
            u8::try_from(prefix)
                .ok()
                .filter(|p| *p <= 128)
                .map(Netmask::Prefix)
                .ok_or(DecodeError::Invalid {
                    what: "IPv6 netmask",
                    value: prefix.to_string(),
                })
        }
    }
}

/// Decodes a stats nest (`IPVS_SVC_ATTR_STATS[64]` / `IPVS_DEST_ATTR_STATS[64]`).
fn decode_stats(p: &[u8]) -> DecodeResult<Stats> {
    let mut s = Stats::default();
    for a in attrs(p) {
        let (t, v) = a?;
        let field = match StatsAttr::from(t) {
            StatsAttr::Conns => &mut s.conns,
            StatsAttr::Inpkts => &mut s.inpkts,
            StatsAttr::Outpkts => &mut s.outpkts,
            StatsAttr::Inbytes => &mut s.inbytes,
            StatsAttr::Outbytes => &mut s.outbytes,
            StatsAttr::Cps => &mut s.cps,
            StatsAttr::Inpps => &mut s.inpps,
            StatsAttr::Outpps => &mut s.outpps,
            StatsAttr::Inbps => &mut s.inbps,
            StatsAttr::Outbps => &mut s.outbps,
            _ => continue,
        };
        *field = get_counter("stats counter", v)?;
    }
    Ok(s)
}

/// Picks the 64-bit stats when present, else the 32-bit ones.
fn pick_stats(stats64: Option<&[u8]>, stats32: Option<&[u8]>) -> DecodeResult<Stats> {
    match (stats64, stats32) {
        (Some(p), _) | (None, Some(p)) => decode_stats(p),
        (None, None) => Ok(Stats::default()),
    }
}

/// Decodes a service reply message payload (`IPVS_CMD_NEW_SERVICE` with a service nest).
pub fn decode_service(payload: &[u8]) -> DecodeResult<(Service, Stats)> {
    let top = reply_attrs(payload, IpvsCmd::NewService)?;
    decode_service_nest(nested(top, CmdAttr::Service, "service")?)
}

/// Decodes the attributes inside a service nest.
pub fn decode_service_nest(p: &[u8]) -> DecodeResult<(Service, Stats)> {
    let mut af = None;
    let mut protocol = None;
    let mut addr = None;
    let mut port = None;
    let mut fwmark = None;
    let mut sched = None;
    let mut flags = None;
    let mut timeout = 0;
    let mut netmask = None;
    let mut pe = None;
    let (mut stats32, mut stats64) = (None, None);
    for a in attrs(p) {
        let (t, v) = a?;
        match SvcAttr::from(t) {
            SvcAttr::Af => af = Some(get_u16("service family", v)?),
            SvcAttr::Protocol => protocol = Some(get_u16("service protocol", v)?),
            SvcAttr::Addr => addr = Some(v),
            SvcAttr::Port => port = Some(get_be16("service port", v)?),
            SvcAttr::Fwmark => fwmark = Some(get_u32("service fwmark", v)?),
            SvcAttr::SchedName => sched = Some(scheduler_from(v)?),
            SvcAttr::Flags => {
                let f = fixed::<8>("service flags", v)?;
                flags = Some(u32::from_ne_bytes([f[0], f[1], f[2], f[3]]));
            }
            SvcAttr::Timeout => timeout = get_u32("persistence timeout", v)?,
            SvcAttr::Netmask => netmask = Some(v),
            SvcAttr::PeName => pe = Some(v),
            SvcAttr::Stats => stats32 = Some(v),
            SvcAttr::Stats64 => stats64 = Some(v),
            _ => {}
        }
    }
    let family = family_from_af(
        "service family",
        af.ok_or(DecodeError::Missing("service family"))?,
    )?;
    let key = match fwmark {
        Some(mark) if mark != 0 => ServiceKey::Fwmark { family, mark },
        _ => ServiceKey::Addr {
            protocol: protocol_from(protocol.ok_or(DecodeError::Missing("service protocol"))?)?,
            addr: addr_from(
                "service address",
                family,
                addr.ok_or(DecodeError::Missing("service address"))?,
            )?,
            port: port.ok_or(DecodeError::Missing("service port"))?,
        },
    };
    // HASHED is the kernel's own bookkeeping, not a setting.
    let bits = flags.ok_or(DecodeError::Missing("service flags"))? & !SVC_F_HASHED;
    let persistent = bits & SVC_F_PERSISTENT != 0;
    let service_flags = ServiceFlags {
        persistent,
        one_packet: bits & SVC_F_ONEPACKET != 0,
        sched_fallback: bits & SVC_F_SCHED1 != 0,
        sched_port: bits & SVC_F_SCHED2 != 0,
        sched3: bits & SVC_F_SCHED3 != 0,
    };
    let persistence = if persistent {
        Some(Persistence {
            timeout,
            netmask: match netmask {
                Some(p) => netmask_from(family, p)?,
                None => Netmask::host(family),
            },
        })
    } else {
        None
    };
    let engine = match pe {
        Some(p) if p.first().is_some_and(|b| *b != 0) => Some(name_from("persistence engine", p)?),
        _ => None,
    };
    let service = Service {
        key,
        scheduler: sched.ok_or(DecodeError::Missing("scheduler name"))?,
        flags: service_flags,
        persistence,
        engine,
    };
    Ok((service, pick_stats(stats64, stats32)?))
}

/// Decodes a destination reply message payload (`IPVS_CMD_NEW_DEST` with a dest nest).
/// `service_family` is used when the kernel does not say the destination's family.
pub fn decode_destination(
    payload: &[u8],
    service_family: Family,
) -> DecodeResult<DestinationEntry> {
    let top = reply_attrs(payload, IpvsCmd::NewDest)?;
    decode_destination_nest(nested(top, CmdAttr::Dest, "destination")?, service_family)
}

/// Decodes the attributes inside a destination nest.
pub fn decode_destination_nest(p: &[u8], service_family: Family) -> DecodeResult<DestinationEntry> {
    let mut family = service_family;
    let mut addr = None;
    let mut port = None;
    let mut method = None;
    let mut weight = None;
    let (mut upper, mut lower) = (0, 0);
    let mut counters = ConnCounters::default();
    let (mut tun_type, mut tun_port, mut tun_flags) = (0u8, 0u16, 0u16);
    let (mut stats32, mut stats64) = (None, None);
    for a in attrs(p) {
        let (t, v) = a?;
        match DestAttr::from(t) {
            DestAttr::Addr => addr = Some(v),
            DestAttr::Port => port = Some(get_be16("destination port", v)?),
            DestAttr::FwdMethod => method = Some(get_u32("forwarding method", v)?),
            DestAttr::Weight => weight = Some(get_u32("weight", v)?),
            DestAttr::UThresh => upper = get_u32("upper threshold", v)?,
            DestAttr::LThresh => lower = get_u32("lower threshold", v)?,
            DestAttr::ActiveConns => counters.active = get_u32("active connections", v)?,
            DestAttr::InactConns => counters.inactive = get_u32("inactive connections", v)?,
            DestAttr::PersistConns => counters.persistent = get_u32("persistent connections", v)?,
            DestAttr::AddrFamily => {
                family = family_from_af("destination family", get_u16("destination family", v)?)?;
            }
            DestAttr::TunType => tun_type = get_u8("tunnel type", v)?,
            DestAttr::TunPort => tun_port = get_be16("tunnel port", v)?,
            DestAttr::TunFlags => tun_flags = get_u16("tunnel flags", v)?,
            DestAttr::Stats => stats32 = Some(v),
            DestAttr::Stats64 => stats64 = Some(v),
            _ => {}
        }
    }
    let method = method.ok_or(DecodeError::Missing("forwarding method"))? & CONN_F_FWD_MASK;
    let forward = match FwdMethod::from(method) {
        FwdMethod::Masq => ForwardMethod::Masq,
        FwdMethod::LocalNode => ForwardMethod::Local,
        FwdMethod::DRoute => ForwardMethod::Route,
        FwdMethod::Bypass => ForwardMethod::Bypass,
        FwdMethod::Tunnel => ForwardMethod::Tunnel(TunnelConfig {
            kind: match TunType::from(tun_type) {
                TunType::IpIp => TunnelKind::IpIp,
                TunType::Gue => TunnelKind::Gue,
                TunType::Gre => TunnelKind::Gre,
                TunType::UnrecognizedConst(n) => {
                    return Err(DecodeError::Invalid {
                        what: "tunnel type",
                        value: n.to_string(),
                    })
                }
            },
            port: tun_port,
            flags: tun_flags,
        }),
        FwdMethod::UnrecognizedConst(n) => {
            return Err(DecodeError::Invalid {
                what: "forwarding method",
                value: n.to_string(),
            })
        }
    };
    let destination = Destination {
        addr: addr_from(
            "destination address",
            family,
            addr.ok_or(DecodeError::Missing("destination address"))?,
        )?,
        port: port.ok_or(DecodeError::Missing("destination port"))?,
        forward,
        weight: weight.ok_or(DecodeError::Missing("weight"))?,
        upper_threshold: upper,
        lower_threshold: lower,
    };
    Ok(DestinationEntry {
        destination,
        counters,
        stats: pick_stats(stats64, stats32)?,
    })
}

/// Decodes the `IPVS_CMD_GET_INFO` reply (`IPVS_CMD_SET_INFO`).
pub fn decode_info(payload: &[u8]) -> DecodeResult<Info> {
    let top = reply_attrs(payload, IpvsCmd::SetInfo)?;
    let (mut version, mut size) = (None, None);
    for a in attrs(top) {
        let (t, v) = a?;
        match InfoAttr::from(t) {
            InfoAttr::Version => version = Some(get_u32("version", v)?),
            InfoAttr::ConnTabSize => size = Some(get_u32("connection table size", v)?),
            _ => {}
        }
    }
    Ok(Info {
        version: Version::from_code(version.ok_or(DecodeError::Missing("version"))?),
        conn_table_size: size.ok_or(DecodeError::Missing("connection table size"))?,
    })
}

/// Decodes the `IPVS_CMD_GET_CONFIG` reply (`IPVS_CMD_SET_CONFIG` with the timeouts).
pub fn decode_timeouts(payload: &[u8]) -> DecodeResult<Timeouts> {
    let top = reply_attrs(payload, IpvsCmd::SetConfig)?;
    let mut t = Timeouts::default();
    for a in attrs(top) {
        let (ty, v) = a?;
        match CmdAttr::from(ty) {
            CmdAttr::TimeoutTcp => t.tcp = get_u32("tcp timeout", v)?,
            CmdAttr::TimeoutTcpFin => t.tcp_fin = get_u32("tcpfin timeout", v)?,
            CmdAttr::TimeoutUdp => t.udp = get_u32("udp timeout", v)?,
            _ => {}
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    //! Encoded requests are compared byte for byte with what `ipvsadm` sent, and kernel
    //! replies captured in the test VM are decoded to known values. How each fixture was
    //! captured is written at its top.

    use super::*;
    use crate::wire::{attrs, messages, Writer};

    /// Parses a fixture: `#` comment lines, hex bytes, `--` between messages.
    fn fixture(text: &str) -> Vec<Vec<u8>> {
        let mut out = vec![Vec::new()];
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if line.trim() == "--" {
                out.push(Vec::new());
                continue;
            }
            let last = out.last_mut().unwrap();
            for byte in line.split_whitespace() {
                last.push(u8::from_str_radix(byte, 16).unwrap());
            }
        }
        out
    }

    macro_rules! fixture {
        ($name:literal) => {
            fixture(include_str!(concat!("../tests/fixtures/", $name, ".hex")))
        };
    }

    /// The generic netlink payload of the one message `op` encodes to.
    fn encoded(op: &Operation) -> Vec<u8> {
        let mut w = Writer::new();
        encode_operation(&mut w, 0x20, 1, NLM_F_ACK, op);
        let msg = messages(w.bytes()).next().unwrap().unwrap();
        assert_eq!(msg.flags, NLM_F_REQUEST | NLM_F_ACK);
        msg.payload.to_vec()
    }

    /// The payload of top-level attribute `ty` of a generic netlink payload.
    fn top_attr(payload: &[u8], ty: CmdAttr) -> Vec<u8> {
        let g = crate::wire::genl(payload).unwrap();
        attrs(g.attrs)
            .map(Result::unwrap)
            .find(|(t, _)| CmdAttr::from(*t) == ty)
            .unwrap()
            .1
            .to_vec()
    }

    fn tcp(addr: &str, port: u16) -> ServiceKey {
        ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: addr.parse().unwrap(),
            port,
        }
    }

    fn udp(addr: &str, port: u16) -> ServiceKey {
        ServiceKey::Addr {
            protocol: Protocol::Udp,
            addr: addr.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn add_service_encodes_exactly_as_ipvsadm() {
        let op = Operation::AddService(Service::new(tcp("10.0.0.1", 80), Scheduler::RoundRobin));
        assert_eq!(encoded(&op), fixture!("new_service_tcp_rr")[0]);
    }

    #[test]
    fn persistent_ipv6_fwmark_service_with_mh_flags_encodes_as_ipvsadm() {
        let key = ServiceKey::Fwmark {
            family: Family::V6,
            mark: 7,
        };
        let service = Service::new(key, Scheduler::MaglevHashing)
            .with_persistence(Persistence {
                timeout: 300,
                netmask: Netmask::Prefix(64),
            })
            .with_flags(ServiceFlags {
                sched_fallback: true,
                sched_port: true,
                ..ServiceFlags::default()
            });
        assert_eq!(
            encoded(&Operation::AddService(service)),
            fixture!("new_service_fwmark6_mh")[0]
        );
    }

    #[test]
    fn update_service_encodes_as_ipvsadm_edit() {
        let service =
            Service::new(udp("10.0.0.1", 53), Scheduler::MaglevHashing).with_flags(ServiceFlags {
                sched_port: true,
                ..ServiceFlags::default()
            });
        assert_eq!(
            encoded(&Operation::UpdateService(service)),
            fixture!("set_service_mh")[0]
        );
    }

    #[test]
    fn set_timeouts_encodes_as_ipvsadm_set() {
        let op = Operation::SetTimeouts(Timeouts {
            tcp: 100,
            tcp_fin: 20,
            udp: 30,
        });
        assert_eq!(encoded(&op), fixture!("set_config")[0]);
    }

    #[test]
    fn destinations_encode_as_ipvsadm_does() {
        // ipvsadm repeats the whole service in dest requests; the kernel reads only its
        // key, which is all this crate sends. The destination nests must be identical.
        let cases = [
            (
                "new_dest_masq_thresholds",
                Operation::AddDestination {
                    service: tcp("10.0.0.1", 80),
                    destination: Destination {
                        upper_threshold: 100,
                        lower_threshold: 10,
                        ..Destination::masq("10.1.0.1".parse().unwrap(), 8080, 3)
                    },
                },
            ),
            (
                "new_dest_gue",
                Operation::AddDestination {
                    service: ServiceKey::Fwmark {
                        family: Family::V6,
                        mark: 7,
                    },
                    destination: Destination {
                        forward: ForwardMethod::Tunnel(TunnelConfig {
                            kind: TunnelKind::Gue,
                            port: 6080,
                            flags: 0,
                        }),
                        ..Destination::masq("fd00::5".parse().unwrap(), 0, 1)
                    },
                },
            ),
            (
                "set_dest_tunnel",
                Operation::UpdateDestination {
                    service: tcp("10.0.0.1", 80),
                    destination: Destination {
                        forward: ForwardMethod::Tunnel(TunnelConfig::default()),
                        ..Destination::masq("10.1.0.9".parse().unwrap(), 80, 9)
                    },
                },
            ),
        ];
        for (name, op) in cases {
            let theirs = fixture(
                &std::fs::read_to_string(format!(
                    "{}/tests/fixtures/{name}.hex",
                    env!("CARGO_MANIFEST_DIR")
                ))
                .unwrap(),
            )
            .remove(0);
            let ours = encoded(&op);
            assert_eq!(ours[..4], theirs[..4], "{name}: command");
            assert_eq!(
                top_attr(&ours, CmdAttr::Dest),
                top_attr(&theirs, CmdAttr::Dest),
                "{name}: destination nest"
            );
            // Our service nest is the key part of theirs.
            let ours_svc = top_attr(&ours, CmdAttr::Service);
            let theirs_svc = top_attr(&theirs, CmdAttr::Service);
            assert_eq!(
                ours_svc[..],
                theirs_svc[..ours_svc.len()],
                "{name}: service key"
            );
        }
    }

    #[test]
    fn zero_of_one_service_sends_its_key() {
        let ours = encoded(&Operation::Zero(Some(tcp("10.0.0.1", 80))));
        let theirs = fixture!("zero_service").remove(0);
        let key = top_attr(&ours, CmdAttr::Service);
        assert_eq!(key[..], top_attr(&theirs, CmdAttr::Service)[..key.len()]);
        assert_eq!(encoded(&Operation::Zero(None)), [16, 1, 0, 0]);
        assert_eq!(encoded(&Operation::Flush), [17, 1, 0, 0]);
    }

    #[test]
    fn info_reply_decodes_to_version_and_table_size() {
        let info = decode_info(&fixture!("get_info_reply")[0]).unwrap();
        assert_eq!(info.version.to_string(), "1.2.1");
        assert_eq!(info.conn_table_size, 4096);
    }

    #[test]
    fn config_reply_decodes_to_the_default_timeouts() {
        let t = decode_timeouts(&fixture!("get_config_reply")[0]).unwrap();
        assert_eq!(
            t,
            Timeouts {
                tcp: 900,
                tcp_fin: 120,
                udp: 300
            }
        );
    }

    #[test]
    fn service_dump_decodes_to_what_ipvsadm_printed() {
        let decoded: Vec<_> = fixture!("dump_services_reply")
            .iter()
            .map(|m| decode_service(m).unwrap())
            .collect();
        let services: Vec<_> = decoded.iter().map(|(s, _)| s.clone()).collect();
        let pe = |name: &str| SchedulerName::try_new(name).unwrap();
        let expected = [
            Service::new(tcp("10.0.0.1", 80), Scheduler::WeightedLeastConnection),
            Service::new(tcp("10.0.0.1", 443), Scheduler::RoundRobin).with_persistence(
                Persistence {
                    timeout: 120,
                    netmask: Netmask::Prefix(24),
                },
            ),
            Service::new(udp("10.0.0.1", 53), Scheduler::SourceHashing).with_flags(ServiceFlags {
                one_packet: true,
                sched_fallback: true,
                sched_port: true,
                ..ServiceFlags::default()
            }),
            Service::new(udp("10.0.0.1", 5060), Scheduler::RoundRobin)
                .with_persistence(Persistence::per_client(Family::V4, 60))
                .with_engine(pe("sip")),
        ];
        for s in &expected {
            assert!(services.contains(s), "{s:?} missing from {services:#?}");
        }
        assert_eq!(services.len(), expected.len());
        let (_, stats) = &decoded[services.iter().position(|s| s == &expected[0]).unwrap()];
        assert_eq!(
            (
                stats.conns,
                stats.inpkts,
                stats.outpkts,
                stats.inbytes,
                stats.outbytes
            ),
            (3, 15, 15, 1020, 1497)
        );
    }

    #[test]
    fn destination_dump_decodes_to_what_ipvsadm_printed() {
        let dests: Vec<_> = fixture!("dump_dests_reply")
            .iter()
            .map(|m| decode_destination(m, Family::V4).unwrap())
            .collect();
        assert_eq!(
            dests[0].destination,
            Destination {
                forward: ForwardMethod::Route,
                upper_threshold: 7,
                lower_threshold: 3,
                ..Destination::masq("10.1.0.9".parse().unwrap(), 80, 0)
            },
            "newest first"
        );
        assert_eq!(
            dests[1].destination,
            Destination::masq("10.0.0.1".parse().unwrap(), 8080, 5)
        );
        assert_eq!(dests[1].counters.inactive, 3);
        assert_eq!(
            (
                dests[1].stats.conns,
                dests[1].stats.inbytes,
                dests[1].stats.outbytes
            ),
            (3, 1020, 1497)
        );
    }

    #[test]
    fn replies_with_another_command_are_rejected() {
        assert!(decode_service(&fixture!("get_info_reply")[0]).is_err());
        assert!(decode_info(&fixture!("dump_services_reply")[0]).is_err());
    }

    #[test]
    fn ipv4_netmasks_are_sent_in_network_order() {
        let prefix = Netmask::Prefix;
        assert_eq!(netmask_bytes(Family::V4, prefix(24)), [255, 255, 255, 0]);
        assert_eq!(netmask_bytes(Family::V4, prefix(0)), [0, 0, 0, 0]);
        assert_eq!(netmask_bytes(Family::V4, prefix(32)), [255; 4]);
        assert_eq!(netmask_bytes(Family::V6, prefix(64)), 64u32.to_ne_bytes());
        assert_eq!(
            netmask_from(Family::V4, &[255, 255, 240, 0]).unwrap(),
            prefix(20)
        );
    }

    #[test]
    fn ipv4_netmasks_that_are_not_prefixes_round_trip_bit_for_bit() {
        let odd = netmask_from(Family::V4, &[255, 0, 255, 0]).unwrap();
        assert_eq!(odd, Netmask::Ipv4Mask("255.0.255.0".parse().unwrap()));
        assert_eq!(netmask_bytes(Family::V4, odd), [255, 0, 255, 0]);
        assert_eq!(odd.prefix(), None);
        assert_eq!(
            netmask_from(Family::V4, &[0; 4]).unwrap(),
            Netmask::Prefix(0)
        );
        let with = |addr: &str| {
            let key = ServiceKey::Addr {
                protocol: Protocol::Tcp,
                addr: addr.parse().unwrap(),
                port: 80,
            };
            Operation::AddService(Service::new(key, Scheduler::RoundRobin).with_persistence(
                Persistence {
                    timeout: 1,
                    netmask: odd,
                },
            ))
        };
        assert!(validate(&with("10.0.0.1")).is_ok());
        assert!(validate(&with("fd00::1")).is_err());
    }

    #[test]
    fn persistence_netmasks_out_of_range_are_rejected_before_sending() {
        let bad = Service::new(tcp("10.0.0.1", 80), Scheduler::RoundRobin).with_persistence(
            Persistence {
                timeout: 1,
                netmask: Netmask::Prefix(33),
            },
        );
        assert!(validate(&Operation::AddService(bad)).is_err());
    }

    #[test]
    fn destinations_ipvsadm_could_not_print_are_rejected_before_sending() {
        let add = |forward| Operation::AddDestination {
            service: tcp("10.0.0.1", 80),
            destination: Destination {
                forward,
                ..Destination::masq("10.1.0.1".parse().unwrap(), 80, 1)
            },
        };
        let tun = |kind, flags| {
            ForwardMethod::Tunnel(TunnelConfig {
                kind,
                port: 6080,
                flags,
            })
        };
        assert!(validate(&add(ForwardMethod::Bypass)).is_err());
        assert!(validate(&add(tun(TunnelKind::Gre, TUN_F_REMCSUM))).is_err());
        assert!(validate(&add(tun(TunnelKind::Gue, 4))).is_err());
        assert!(validate(&add(tun(TunnelKind::Gue, TUN_F_REMCSUM | TUN_F_CSUM))).is_ok());
        assert!(validate(&add(tun(TunnelKind::Gre, TUN_F_CSUM))).is_ok());
    }
}
