//! What the ipset executor decides without touching the kernel (pure): how big a set
//! must be, when it must be regrown (or may shrink), and the operations of a regrow.

use std::collections::BTreeSet;

use kipvs_ipvs::Family;
use kipvs_proxy::{Member, SetName, SetType};

/// kube-proxy's defaults, kept as the floor.
const MIN_HASHSIZE: u32 = 1024;
const MIN_MAXELEM: u32 = 65536;
/// A set shrinks once its `maxelem` is this many times what its members need.
const SHRINK_FACTOR: u32 = 4;

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
    /// How many members the kernel says it holds.
    pub entries: usize,
    /// Its members (left empty when they were not asked for).
    pub members: BTreeSet<Member>,
}

/// One ipset operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOp {
    /// Create a set.
    Create(SetHeader),
    /// Add members to a set (in ADT batches; one already there is success).
    Add(String, Vec<Member>),
    /// Delete members from a set (in ADT batches; one already gone is success).
    Del(String, Vec<Member>),
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

/// Whether a set of `maxelem` must be regrown to hold `entries` members (bitmaps,
/// with no `maxelem`, hold every port and never are).
pub fn must_grow(maxelem: Option<u32>, entries: usize) -> bool {
    maxelem.is_some_and(|max| usize::try_from(max).is_ok_and(|max| entries > max))
}

/// Whether a set of `maxelem` holding `entries` members is so much larger than they
/// need ([`SHRINK_FACTOR`] times what [`sizing`] gives them) that it is rebuilt smaller.
/// With [`sizing`]'s doubling, a shrunk set must double twice before it grows again.
pub fn may_shrink(maxelem: Option<u32>, entries: usize) -> bool {
    let (_, fits) = sizing(entries);
    maxelem.is_some_and(|max| max > MIN_MAXELEM && max / SHRINK_FACTOR >= fits)
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

    /// The `maxelem` the set will have: none for a bitmap, which holds every port.
    pub fn limit(&self) -> Option<u32> {
        self.set_type.has_family().then_some(self.maxelem)
    }
}

/// The temporary set a regrow fills: at most one exists at a time.
pub(crate) fn temp_name() -> String {
    "KIPVS-TMP-0".to_owned()
}

/// The operations that rebuild `set` at the size of `members` without a moment where
/// it matches less than before: a temporary set sized for them is created and filled,
/// swapped in under the set's name (rules match sets by name, and a swap is atomic),
/// and the old contents, now under the temporary name, destroyed.
pub fn regrow_ops(set: SetName, members: Vec<Member>) -> Vec<SetOp> {
    let temp = temp_name();
    let mut ops = Vec::with_capacity(4);
    let mut header = SetHeader::of(set, members.len());
    header.name.clone_from(&temp);
    ops.push(SetOp::Create(header));
    if !members.is_empty() {
        ops.push(SetOp::Add(temp.clone(), members));
    }
    ops.push(SetOp::Swap(temp.clone(), set.to_string()));
    ops.push(SetOp::Destroy(temp));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use kipvs_proxy::SetKind;

    #[test]
    fn sets_are_sized_with_room_to_double_and_never_below_kube_proxys_defaults() {
        assert_eq!(sizing(100_000), (32768, 262_144));
        assert_eq!(sizing(150_000), (65536, 524_288));
        assert_eq!(sizing(10), (1024, 65536));
        assert_eq!(sizing(0), (1024, 65536));
    }

    #[test]
    fn a_set_grows_only_past_its_maxelem_and_bitmaps_never() {
        assert!(!must_grow(Some(65536), 65536));
        assert!(must_grow(Some(65536), 65537));
        assert!(!must_grow(None, 1_000_000));
    }

    #[test]
    fn a_set_shrinks_only_when_four_times_too_large_and_never_below_the_floor() {
        // Grown for 150,000 members: 524,288. Kept down to 65,537 members (which
        // need 262,144), rebuilt smaller from 65,536 (which need 131,072).
        let (_, grown) = sizing(150_000);
        assert!(!may_shrink(Some(grown), 150_000));
        assert!(!may_shrink(Some(grown), 65_537));
        assert!(may_shrink(Some(grown), 65_536));
        assert!(may_shrink(Some(grown), 10));
        assert!(!may_shrink(Some(65536), 0), "the floor never shrinks");
        assert!(!may_shrink(None, 0));
        // After a shrink the set is what sizing gives: no shrink again, and no growth
        // before the members double.
        let (_, shrunk) = sizing(65_536);
        assert!(!may_shrink(Some(shrunk), 65_536));
        assert!(!must_grow(Some(shrunk), 2 * 65_536));
    }

    #[test]
    fn a_regrow_fills_a_sized_temporary_set_and_swaps_it_in() {
        let set = SetName::new(SetKind::LoopBack, Family::V4);
        let member = Member::Ip("10.0.0.1".parse().unwrap());
        let ops = regrow_ops(set, vec![member]);
        assert!(matches!(&ops[0], SetOp::Create(h)
            if h.name == "KIPVS-TMP-0" && h.set_type == SetType::HashIpPortIp && h.maxelem == 65536));
        assert_eq!(ops[1], SetOp::Add("KIPVS-TMP-0".into(), vec![member]));
        assert_eq!(
            &ops[2..],
            &[
                SetOp::Swap("KIPVS-TMP-0".into(), "KUBE-LOOP-BACK".into()),
                SetOp::Destroy("KIPVS-TMP-0".into())
            ]
        );
        assert_eq!(regrow_ops(set, Vec::new()).len(), 3);
    }

    #[test]
    fn catalog_headers_take_the_cores_name_and_type() {
        let h = SetHeader::of(SetName::new(SetKind::NodePortUdp, Family::V6), 0);
        assert_eq!(h.name, "KUBE-6-NODE-PORT-UDP");
        assert_eq!(h.set_type, SetType::BitmapPort);
        assert_eq!((h.hashsize, h.maxelem), sizing(0));
        assert_eq!(h.limit(), None);
        assert_eq!(
            SetHeader::of(SetName::new(SetKind::LoopBack, Family::V4), 0).limit(),
            Some(65536)
        );
    }
}
