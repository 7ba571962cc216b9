//! The `ipset` tool's text: parsing `ipset save`, rendering `ipset restore` input.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use kipvs_proxy::{Member, SetType};

use super::model::{ipset_family, parse_ipset_family};
use super::plan::{ObservedSet, SetHeader, SetOp};
use crate::{Error, Result};

/// Parses `ipset save` output into the sets it names, keeping members only for the sets
/// `wanted` says yes to (the others are listed with no members).
///
/// # Errors
/// When a member of a wanted set cannot be parsed for its set's type, or a line is
/// neither `create` nor `add`.
pub fn parse_save(
    text: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, ObservedSet>> {
    let mut sets: BTreeMap<String, ObservedSet> = BTreeMap::new();
    let bad = |line: usize, text: &str| Error::Parse {
        what: "ipset save",
        line,
        text: text.to_owned(),
    };
    for (n, line) in text.lines().enumerate() {
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            Some("create") => {
                let name = words.next().ok_or_else(|| bad(n + 1, line))?;
                let set_type = words.next().and_then(SetType::parse);
                let mut family = None;
                let mut maxelem = None;
                while let Some(word) = words.next() {
                    match word {
                        "family" => family = words.next().and_then(parse_ipset_family),
                        "maxelem" => maxelem = words.next().and_then(|m| m.parse().ok()),
                        _ => {}
                    }
                }
                sets.insert(
                    name.to_owned(),
                    ObservedSet {
                        set_type,
                        family,
                        maxelem,
                        members: BTreeSet::new(),
                    },
                );
            }
            Some("add") => {
                let name = words.next().ok_or_else(|| bad(n + 1, line))?;
                let member = words.next().ok_or_else(|| bad(n + 1, line))?;
                if !wanted(name) {
                    continue;
                }
                let set = sets.get_mut(name).ok_or_else(|| bad(n + 1, line))?;
                let Some(set_type) = set.set_type else {
                    continue;
                };
                let member = Member::parse(set_type, member).map_err(|_| bad(n + 1, line))?;
                set.members.insert(member);
            }
            None => {}
            Some(_) => return Err(bad(n + 1, line)),
        }
    }
    Ok(sets)
}

/// The `create` arguments for a set.
fn create_args(h: &SetHeader) -> String {
    match h.set_type {
        SetType::BitmapPort => format!("{} bitmap:port range 0-65535", h.name),
        set_type => format!(
            "{} {} family {} hashsize {} maxelem {}",
            h.name,
            set_type,
            ipset_family(h.family),
            h.hashsize,
            h.maxelem
        ),
    }
}

/// Renders operations as `ipset restore` input (run with `-exist`, so an add of a
/// member already there or a delete of one already gone is not an error).
pub fn render_restore(ops: &[SetOp]) -> String {
    let mut out = String::with_capacity(ops.len() * 48);
    for op in ops {
        // Writing to a String cannot fail.
        let _ = match op {
            SetOp::Create(h) => writeln!(out, "create {}", create_args(h)),
            SetOp::Add(set, e) => writeln!(out, "add {set} {e}"),
            SetOp::Del(set, e) => writeln!(out, "del {set} {e}"),
            SetOp::Swap(a, b) => writeln!(out, "swap {a} {b}"),
            SetOp::Destroy(set) => writeln!(out, "destroy {set}"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kipvs_ipvs::{Family, Protocol};

    // Captured from `ipset save` (ipset v7.17) in a test namespace.
    const SAVE: &str = "\
create KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x580a9e16
add KUBE-LOAD-BALANCER-SOURCE-CIDR 1.2.3.4,tcp:80,10.0.0.0/8
add KUBE-LOAD-BALANCER-SOURCE-CIDR 1.2.3.4,tcp:80,10.1.2.3
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
add KUBE-NODE-PORT-TCP 30080
create KUBE-6-LOOP-BACK hash:ip,port,ip family inet6 hashsize 1024 maxelem 131072 bucketsize 12 initval 0xdd42c211
add KUBE-6-LOOP-BACK fd00::1,sctp:80,fd00::1
create FOREIGN list:set size 8
add FOREIGN KUBE-NODE-PORT-TCP
";

    #[test]
    fn ipset_save_output_parses_into_typed_sets() {
        let sets = parse_save(SAVE, |n| n.starts_with("KUBE-")).unwrap();
        let cidr = &sets["KUBE-LOAD-BALANCER-SOURCE-CIDR"];
        assert_eq!(cidr.set_type, Some(SetType::HashIpPortNet));
        assert_eq!(cidr.family, Some(Family::V4));
        assert_eq!(cidr.maxelem, Some(65536));
        assert_eq!(cidr.members.len(), 2);
        assert_eq!(
            sets["KUBE-NODE-PORT-TCP"].members,
            [Member::Port(30080)].into()
        );
        let lb = &sets["KUBE-6-LOOP-BACK"];
        assert_eq!(lb.maxelem, Some(131_072));
        let ip = "fd00::1".parse().unwrap();
        assert_eq!(
            lb.members,
            [Member::IpPortIp {
                ip,
                protocol: Protocol::Sctp,
                port: 80,
                ip2: ip
            }]
            .into()
        );
        assert_eq!(sets["FOREIGN"].set_type, None);
        assert!(sets["FOREIGN"].members.is_empty());
    }

    #[test]
    fn restore_input_creates_sized_sets_and_lists_members() {
        let ip = "10.96.0.1".parse().unwrap();
        let ops = [
            SetOp::Create(SetHeader {
                name: "KUBE-CLUSTER-IP".into(),
                set_type: SetType::HashIpPort,
                family: Family::V4,
                hashsize: 1024,
                maxelem: 65536,
            }),
            SetOp::Create(SetHeader {
                name: "KUBE-NODE-PORT-UDP".into(),
                set_type: SetType::BitmapPort,
                family: Family::V4,
                hashsize: 1024,
                maxelem: 65536,
            }),
            SetOp::Add(
                "KUBE-CLUSTER-IP".into(),
                Member::IpPort {
                    ip,
                    protocol: Protocol::Udp,
                    port: 53,
                },
            ),
            SetOp::Del("KUBE-NODE-PORT-UDP".into(), Member::Port(30053)),
            SetOp::Swap("A".into(), "B".into()),
            SetOp::Destroy("A".into()),
        ];
        assert_eq!(
            render_restore(&ops),
            "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n\
             create KUBE-NODE-PORT-UDP bitmap:port range 0-65535\n\
             add KUBE-CLUSTER-IP 10.96.0.1,udp:53\n\
             del KUBE-NODE-PORT-UDP 30053\n\
             swap A B\n\
             destroy A\n"
        );
    }
}
