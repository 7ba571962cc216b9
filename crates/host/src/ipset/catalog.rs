//! [`KubeSets`]: the members of each of kube-proxy's sets for one address family, keyed
//! by the core's [`SetKind`] (whose [`SetName`] gives the kernel name, type and comment).

use std::collections::{BTreeMap, BTreeSet};

use kipvs_ipvs::Family;
use kipvs_proxy::{Member, SetKind, SetName};

use crate::{Error, Result};

static EMPTY: BTreeSet<Member> = BTreeSet::new();

/// The members of every kube-proxy set, for one address family: what [`super::sync_sets`]
/// and [`crate::iptables::RuleSpec`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSets {
    family: Family,
    members: BTreeMap<SetKind, BTreeSet<Member>>,
}

impl KubeSets {
    /// Every set, empty.
    pub fn new(family: Family) -> KubeSets {
        KubeSets {
            family,
            members: BTreeMap::new(),
        }
    }

    /// The family these sets are for.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Adds `member` to the set of `kind`.
    ///
    /// # Errors
    /// When the member is of another type than the set (an `ip,port` member in a
    /// `bitmap:port` set) or of another address family.
    pub fn insert(&mut self, kind: SetKind, member: Member) -> Result<()> {
        if member.set_type() != kind.set_type() || !member.is_family(self.family) {
            return Err(Error::Invalid {
                what: "ipset entry",
                detail: format!(
                    "{member} does not fit {} ({}, {:?})",
                    SetName::new(kind, self.family),
                    kind.set_type(),
                    self.family
                ),
            });
        }
        self.members.entry(kind).or_default().insert(member);
        Ok(())
    }

    /// The members of the set of `kind`.
    pub fn members(&self, kind: SetKind) -> impl Iterator<Item = &Member> {
        self.members.get(&kind).into_iter().flatten()
    }

    /// Whether the set of `kind` has no member (kube-proxy writes no iptables rule for
    /// an empty set).
    pub fn is_empty(&self, kind: SetKind) -> bool {
        self.members.get(&kind).is_none_or(BTreeSet::is_empty)
    }

    /// Every kube-proxy set for this family, with its members (empty ones included:
    /// kube-proxy creates them all).
    pub fn sets(&self) -> impl Iterator<Item = (SetName, &BTreeSet<Member>)> {
        SetKind::ALL.iter().map(|&kind| {
            let members = self.members.get(&kind).unwrap_or(&EMPTY);
            (SetName::new(kind, self.family), members)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kipvs_ipvs::Protocol;

    #[test]
    fn kube_sets_refuse_members_that_do_not_fit() {
        let mut sets = KubeSets::new(Family::V4);
        let vip = "10.96.0.1".parse().unwrap();
        let port = |port| Member::IpPort {
            ip: vip,
            protocol: Protocol::Tcp,
            port,
        };
        sets.insert(SetKind::ClusterIp, port(443)).unwrap();
        assert!(sets.insert(SetKind::NodePortTcp, port(1)).is_err());
        assert!(sets
            .insert(SetKind::IpvsIps, Member::Ip("fd00::1".parse().unwrap()))
            .is_err());
        assert_eq!(sets.sets().count(), SetKind::ALL.len());
        assert!(!sets.is_empty(SetKind::ClusterIp));
        assert!(sets.is_empty(SetKind::LoopBack));
    }

    #[test]
    fn ipv6_sets_carry_the_cores_cut_names() {
        let names: Vec<String> = KubeSets::new(Family::V6)
            .sets()
            .map(|(set, _)| set.to_string())
            .collect();
        assert!(names.contains(&"KUBE-6-LOAD-BALANCER-SOURCE-CID".to_owned()));
        assert!(names.iter().all(|n| n.len() <= SetName::MAX_LEN));
    }
}
