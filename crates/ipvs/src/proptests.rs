//! Property tests of the codec: what is encoded decodes back to the same value, and no
//! byte string, however truncated or hostile, makes a decoder panic.
//!
//! They run with `cargo test` (a few hundred cases each, well under a second).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use crate::codec::{
    decode_destination, decode_destination_nest, decode_info, decode_service, decode_service_nest,
    decode_timeouts, encode_operation, NLM_F_ACK,
};
use crate::consts::CmdAttr;
use crate::op::Operation;
use crate::types::*;
use crate::wire::{self, attrs, messages, Writer};

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn scheduler() -> impl Strategy<Value = Scheduler> {
    prop_oneof![
        proptest::sample::select(Scheduler::KNOWN.to_vec()),
        "[a-z0-9_]{1,15}".prop_map(|s| s.parse::<Scheduler>().unwrap()),
    ]
}

fn key() -> impl Strategy<Value = ServiceKey> {
    prop_oneof![
        (
            proptest::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]),
            ip(),
            any::<u16>()
        )
            .prop_map(|(protocol, addr, port)| ServiceKey::Addr {
                protocol,
                addr,
                port
            }),
        (any::<bool>(), 1..=u32::MAX).prop_map(|(v6, mark)| ServiceKey::Fwmark {
            family: if v6 { Family::V6 } else { Family::V4 },
            mark
        }),
    ]
}

fn service() -> impl Strategy<Value = Service> {
    (
        key(),
        scheduler(),
        any::<[bool; 4]>(),
        proptest::option::of((any::<u32>(), any::<u32>())),
        proptest::option::of("[a-z]{1,15}"),
    )
        .prop_map(
            |(key, scheduler, [one_packet, sched_fallback, sched_port, sched3], p, engine)| {
                let s = Service::new(key, scheduler).with_flags(ServiceFlags {
                    persistent: false,
                    one_packet,
                    sched_fallback,
                    sched_port,
                    sched3,
                });
                let s = match p {
                    None => s,
                    Some((timeout, mask)) => {
                        let netmask = match key.family() {
                            // Any bits: contiguous masks decode as prefixes, others as masks.
                            Family::V4 => Netmask::from_ipv4(Ipv4Addr::from(mask)),
                            Family::V6 => Netmask::Prefix(u8::try_from(1 + mask % 128).unwrap()),
                        };
                        s.with_persistence(Persistence { timeout, netmask })
                    }
                };
                // The kernel keeps an engine on any service, persistent or not.
                match engine {
                    Some(e) => s.with_engine(SchedulerName::try_new(&e).unwrap()),
                    None => s,
                }
            },
        )
}

fn forward() -> impl Strategy<Value = ForwardMethod> {
    prop_oneof![
        Just(ForwardMethod::Masq),
        Just(ForwardMethod::Local),
        Just(ForwardMethod::Route),
        Just(ForwardMethod::Bypass), // decodes fine; validate() keeps it from being sent
        (
            proptest::sample::select(vec![TunnelKind::IpIp, TunnelKind::Gue, TunnelKind::Gre]),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(kind, port, flags)| ForwardMethod::Tunnel(TunnelConfig {
                kind,
                port,
                flags
            })),
    ]
}

fn destination() -> impl Strategy<Value = Destination> {
    (
        ip(),
        any::<u16>(),
        forward(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(addr, port, forward, weight, upper_threshold, lower_threshold)| Destination {
                addr,
                port,
                forward,
                weight,
                upper_threshold,
                lower_threshold,
            },
        )
}

/// The payload of the nested top-level attribute `ty` of the one message in `w`.
fn nest_of(w: &Writer, ty: CmdAttr) -> Vec<u8> {
    let msg = messages(w.bytes()).next().unwrap().unwrap();
    let g = wire::genl(msg.payload).unwrap();
    attrs(g.attrs)
        .map(Result::unwrap)
        .find(|(t, _)| CmdAttr::from(*t) == ty)
        .unwrap()
        .1
        .to_vec()
}

/// Every fixture captured from the kernel and ipvsadm, as raw messages.
fn fixture_messages() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut cur = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if line.trim() == "--" {
                out.push(std::mem::take(&mut cur));
            } else {
                cur.extend(
                    line.split_whitespace()
                        .map(|b| u8::from_str_radix(b, 16).unwrap()),
                );
            }
        }
        out.push(cur);
    }
    out
}

/// Runs every decoder over `bytes`; the point is that none of them panics.
fn decode_everything(bytes: &[u8]) {
    let _ = decode_service(bytes);
    let _ = decode_service_nest(bytes);
    let _ = decode_destination(bytes, Family::V4);
    let _ = decode_destination_nest(bytes, Family::V6);
    let _ = decode_info(bytes);
    let _ = decode_timeouts(bytes);
    for m in messages(bytes) {
        let Ok(m) = m else { break };
        let _ = wire::error_code(m.payload);
        let _ = wire::done_code(m.payload);
        let _ = decode_service(m.payload);
    }
}

proptest! {
    #[test]
    fn services_survive_an_encode_decode_round_trip(s in service()) {
        let mut w = Writer::new();
        encode_operation(&mut w, 0x20, 1, NLM_F_ACK, &Operation::AddService(s.clone()));
        let (decoded, _) = decode_service_nest(&nest_of(&w, CmdAttr::Service)).unwrap();
        prop_assert_eq!(decoded, s);
    }

    #[test]
    fn destinations_survive_an_encode_decode_round_trip(k in key(), d in destination()) {
        let mut w = Writer::new();
        let op = Operation::AddDestination { service: k, destination: d.clone() };
        encode_operation(&mut w, 0x20, 1, NLM_F_ACK, &op);
        let entry = decode_destination_nest(&nest_of(&w, CmdAttr::Dest), k.family()).unwrap();
        prop_assert_eq!(entry.destination, d);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_everything(&bytes);
    }

    #[test]
    fn decoding_damaged_kernel_replies_never_panics(
        pick in any::<proptest::sample::Index>(),
        cut in any::<proptest::sample::Index>(),
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..8),
    ) {
        let all = fixture_messages();
        let mut bytes = pick.get(&all).clone();
        for (at, value) in flips {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
        }
        let keep = cut.index(bytes.len() + 1);
        bytes.truncate(keep);
        decode_everything(&bytes);
    }
}
