//! The diff between desired sets and the sets in the kernel (pure).

use std::collections::{BTreeMap, BTreeSet};

use kipvs_ipvs::Family;
use kipvs_proxy::{Member, SetName, SetType};

use super::model::SetSpec;

/// kube-proxy's defaults, kept as the floor.
const MIN_HASHSIZE: u32 = 1024;
const MIN_MAXELEM: u32 = 65536;

/// How a set is created: its type, family and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetHeader {
    /// The set's name.
    pub name: String,
    /// Its type.
    pub set_type: SetType,
    /// Its family (ignored for `bitmap:port`).
    pub family: Family,
    /// Initial hash size (hash types only; the kernel grows it as needed).
    pub hashsize: u32,
    /// Maximum number of members (hash types only).
    pub maxelem: u32,
}

/// A set as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedSet {
    /// Its type; `None` for a type kipvs does not use.
    pub set_type: Option<SetType>,
    /// Its family; `None` when it has none (bitmaps) or it was not understood.
    pub family: Option<Family>,
    /// Its `maxelem`, for hash types.
    pub maxelem: Option<u32>,
    /// Its members.
    pub members: BTreeSet<Member>,
}

/// One ipset operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOp {
    /// Create a set.
    Create(SetHeader),
    /// Add a member.
    Add(String, Member),
    /// Delete a member.
    Del(String, Member),
    /// Exchange two sets' contents (and names); iptables rules keep matching by name.
    Swap(String, String),
    /// Destroy a set.
    Destroy(String),
}

/// `(hashsize, maxelem)` for a set that must hold `members` entries: never below
/// kube-proxy's 1024 / 65536, and with room to double before it must be regrown.
pub fn sizing(members: usize) -> (u32, u32) {
    let members = u32::try_from(members).unwrap_or(u32::MAX / 4);
    let maxelem = members
        .saturating_mul(2)
        .checked_next_power_of_two()
        .unwrap_or(u32::MAX)
        .max(MIN_MAXELEM);
    let hashsize = (members / 4)
        .checked_next_power_of_two()
        .unwrap_or(1 << 30)
        .max(MIN_HASHSIZE);
    (hashsize, maxelem)
}

impl SetHeader {
    /// The header of a set named `name`, sized (see [`sizing`]) for `members` members.
    pub fn sized(name: String, set_type: SetType, family: Family, members: usize) -> SetHeader {
        let (hashsize, maxelem) = sizing(members);
        SetHeader {
            name,
            set_type,
            family,
            hashsize,
            maxelem,
        }
    }

    /// The header of one of kube-proxy's sets, sized for `members` members.
    pub fn of(set: SetName, members: usize) -> SetHeader {
        SetHeader::sized(set.to_string(), set.kind.set_type(), set.family, members)
    }
}

fn header(spec: &SetSpec, name: String) -> SetHeader {
    SetHeader::sized(name, spec.set_type(), spec.family(), spec.members().len())
}

/// A temporary set name for regrowing the `index`-th desired set (31 characters at most).
pub(crate) fn temp_name(index: usize) -> String {
    format!("KIPVS-TMP-{index}")
}

/// The operations that make the kernel's sets equal `desired`.
///
/// - a missing set is created, sized to fit, and filled;
/// - a set of the right type gets only its stale members deleted and its missing
///   members added (deletions first, so `maxelem` is never crossed on the way);
/// - a set whose `maxelem` is too small for the desired members (or whose type or
///   family is wrong) is rebuilt: a temporary set is created and filled, swapped in and
///   destroyed, so rules matching the name never see it half-filled. (A wrong *type* can
///   only be swapped with a compatible one: the kernel refuses otherwise, and the error
///   surfaces.)
///
/// Sets not in `desired` never appear in the result.
pub fn plan_sets(desired: &[SetSpec], observed: &BTreeMap<String, ObservedSet>) -> Vec<SetOp> {
    let mut ops = Vec::new();
    for (index, spec) in desired.iter().enumerate() {
        let name = spec.name().to_owned();
        let Some(current) = observed.get(&name) else {
            ops.push(SetOp::Create(header(spec, name.clone())));
            ops.extend(spec.members().iter().map(|e| SetOp::Add(name.clone(), *e)));
            continue;
        };
        let same_type = current.set_type == Some(spec.set_type())
            && (!spec.set_type().has_family() || current.family == Some(spec.family()));
        let fits = !spec.set_type().has_family()
            || current
                .maxelem
                .is_some_and(|max| usize::try_from(max).is_ok_and(|m| m >= spec.members().len()));
        if same_type && fits {
            ops.extend(
                current
                    .members
                    .difference(spec.members())
                    .map(|e| SetOp::Del(name.clone(), *e)),
            );
            ops.extend(
                spec.members()
                    .difference(&current.members)
                    .map(|e| SetOp::Add(name.clone(), *e)),
            );
        } else {
            let temp = temp_name(index);
            if observed.contains_key(&temp) {
                ops.push(SetOp::Destroy(temp.clone()));
            }
            ops.push(SetOp::Create(header(spec, temp.clone())));
            ops.extend(spec.members().iter().map(|e| SetOp::Add(temp.clone(), *e)));
            ops.push(SetOp::Swap(temp.clone(), name));
            ops.push(SetOp::Destroy(temp));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use kipvs_ipvs::Protocol;
    use kipvs_proxy::SetKind;

    fn e(port: u16) -> Member {
        Member::IpPort {
            ip: "10.96.0.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            port,
        }
    }

    fn spec(ports: &[u16]) -> SetSpec {
        SetSpec::try_new(
            "KUBE-CLUSTER-IP",
            SetType::HashIpPort,
            Family::V4,
            ports.iter().map(|p| e(*p)).collect(),
        )
        .unwrap()
    }

    fn observed(ports: &[u16], maxelem: u32) -> BTreeMap<String, ObservedSet> {
        [(
            "KUBE-CLUSTER-IP".to_owned(),
            ObservedSet {
                set_type: Some(SetType::HashIpPort),
                family: Some(Family::V4),
                maxelem: Some(maxelem),
                members: ports.iter().map(|p| e(*p)).collect(),
            },
        )]
        .into()
    }

    #[test]
    fn a_missing_set_is_created_and_filled() {
        let ops = plan_sets(&[spec(&[80, 443])], &BTreeMap::new());
        assert!(matches!(&ops[0], SetOp::Create(h) if h.maxelem == 65536 && h.hashsize == 1024));
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn only_missing_members_are_added_and_only_stale_ones_deleted() {
        let ops = plan_sets(&[spec(&[80, 443])], &observed(&[443, 8080], 65536));
        assert_eq!(
            ops,
            vec![
                SetOp::Del("KUBE-CLUSTER-IP".into(), e(8080)),
                SetOp::Add("KUBE-CLUSTER-IP".into(), e(80)),
            ]
        );
    }

    #[test]
    fn planning_against_an_equal_kernel_yields_nothing() {
        assert!(plan_sets(&[spec(&[80, 443])], &observed(&[80, 443], 65536)).is_empty());
    }

    #[test]
    fn sets_grow_past_65536_members() {
        assert_eq!(sizing(100_000), (32768, 262_144));
        assert_eq!(sizing(10), (1024, 65536));
        let ops = plan_sets(&[spec(&[1, 2, 3])], &observed(&[1], 2));
        assert!(matches!(&ops[0], SetOp::Create(h) if h.name == "KIPVS-TMP-0"));
        assert_eq!(
            &ops[ops.len() - 2..],
            &[
                SetOp::Swap("KIPVS-TMP-0".into(), "KUBE-CLUSTER-IP".into()),
                SetOp::Destroy("KIPVS-TMP-0".into())
            ]
        );
    }

    #[test]
    fn catalog_headers_take_the_cores_name_and_type() {
        let h = SetHeader::of(SetName::new(SetKind::NodePortUdp, Family::V6), 0);
        assert_eq!(h.name, "KUBE-6-NODE-PORT-UDP");
        assert_eq!(h.set_type, SetType::BitmapPort);
        assert_eq!((h.hashsize, h.maxelem), sizing(0));
    }

    #[test]
    fn foreign_sets_never_appear_in_the_plan() {
        let mut kernel = observed(&[80], 65536);
        kernel.insert(
            "FOREIGN".into(),
            ObservedSet {
                set_type: None,
                family: None,
                maxelem: None,
                members: BTreeSet::new(),
            },
        );
        let ops = plan_sets(&[spec(&[80])], &kernel);
        assert!(ops.is_empty());
    }
}
