//! A desired set, in the core's vocabulary: a [`SetType`], a [`Family`] and
//! [`Member`]s (all from `kipvs-proxy` / `kipvs-ipvs`), under a kernel name.

use std::collections::BTreeSet;

use kipvs_ipvs::Family;
use kipvs_proxy::{Member, SetName, SetType};

use crate::{Error, Result};

/// The family as `ipset` names it (`inet`, `inet6`).
pub fn ipset_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "inet",
        Family::V6 => "inet6",
    }
}

/// Reads `inet` / `inet6`; `None` for anything else.
pub(crate) fn parse_ipset_family(s: &str) -> Option<Family> {
    match s {
        "inet" => Some(Family::V4),
        "inet6" => Some(Family::V6),
        _ => None,
    }
}

/// A set as it should be: its name, type, family and every member.
///
/// The name is a plain string: besides kube-proxy's [`SetName`]s, the executor creates
/// temporary sets (`KIPVS-TMP-<n>`) to regrow one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    name: String,
    set_type: SetType,
    family: Family,
    members: BTreeSet<Member>,
}

impl SetSpec {
    /// A set with these members.
    ///
    /// # Errors
    /// When the name is empty, longer than [`SetName::MAX_LEN`] or not printable ASCII,
    /// or a member is of another type or family than the set.
    pub fn try_new(
        name: impl Into<String>,
        set_type: SetType,
        family: Family,
        members: BTreeSet<Member>,
    ) -> Result<SetSpec> {
        let name = name.into();
        let max = SetName::MAX_LEN;
        if name.is_empty() || name.len() > max || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Invalid {
                what: "ipset name",
                detail: format!("{name:?} (1 to {max} printable characters)"),
            });
        }
        if let Some(bad) = members
            .iter()
            .find(|m| m.set_type() != set_type || !m.is_family(family))
        {
            return Err(Error::Invalid {
                what: "ipset entry",
                detail: format!("{bad} does not fit {name} ({set_type}, {family:?})"),
            });
        }
        Ok(SetSpec {
            name,
            set_type,
            family,
            members,
        })
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The set's type.
    pub fn set_type(&self) -> SetType {
        self.set_type
    }

    /// The set's address family (meaningless for `bitmap:port`).
    pub fn family(&self) -> Family {
        self.family
    }

    /// The set's members.
    pub fn members(&self) -> &BTreeSet<Member> {
        &self.members
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kipvs_ipvs::Protocol;

    #[test]
    fn set_specs_refuse_members_of_another_type_or_family() {
        let v6 = Member::IpPort {
            ip: "fd00::1".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        };
        let err = SetSpec::try_new(
            "KUBE-CLUSTER-IP",
            SetType::HashIpPort,
            Family::V4,
            [v6].into(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("fd00::1,tcp:80"), "{err}");
        let port = Member::Port(80);
        assert!(SetSpec::try_new("X", SetType::HashIpPort, Family::V4, [port].into()).is_err());
        assert!(SetSpec::try_new("X", SetType::BitmapPort, Family::V6, [port].into()).is_ok());
        assert!(SetSpec::try_new("A".repeat(32), SetType::HashIp, Family::V4, [].into()).is_err());
    }

    #[test]
    fn families_are_named_as_ipset_names_them() {
        for family in [Family::V4, Family::V6] {
            assert_eq!(parse_ipset_family(ipset_family(family)), Some(family));
        }
    }
}
