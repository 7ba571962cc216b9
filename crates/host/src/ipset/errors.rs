//! What the kernel's ipset error codes mean and what to do about each, in words.
//!
//! ipset answers with ordinary errnos and with its own codes: the common `IPSET_ERR_*`
//! from 4096 (`linux/netfilter/ipset/ip_set.h`) and, from 4352
//! (`IPSET_ERR_TYPE_SPECIFIC`), codes whose meaning depends on the set's type
//! (`ip_set_hash.h`, `ip_set_bitmap.h`, `ip_set_list.h`). Without this table a full set
//! reads "Unknown error 4352".

/// The kind of set a request was about, which decides what a type-specific code means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetClass {
    /// `hash:*` sets.
    Hash,
    /// `bitmap:*` sets.
    Bitmap,
    /// `list:set`.
    List,
    /// Not known (a request about no particular set).
    Unknown,
}

impl SetClass {
    /// The class of a set type's name (`hash:ip,port`, `bitmap:port`, `list:set`).
    pub fn of_type_name(name: &str) -> SetClass {
        match name.split(':').next() {
            Some("hash") => SetClass::Hash,
            Some("bitmap") => SetClass::Bitmap,
            Some("list") => SetClass::List,
            _ => SetClass::Unknown,
        }
    }
}

/// ipset's first own code (`IPSET_ERR_PRIVATE`).
pub const IPSET_ERR_PRIVATE: i32 = 4096;
/// The first type-specific code (`IPSET_ERR_TYPE_SPECIFIC`).
pub const IPSET_ERR_TYPE_SPECIFIC: i32 = 4352;

/// The kernel's name for an ipset code, and what it means and what to do, for a set
/// of `class`; `None` for an ordinary errno this table does not explain.
pub fn describe(errno: i32, class: SetClass) -> Option<(&'static str, &'static str)> {
    const REPORT: &str =
        "this is a bug in kipvs or the kernel: please report it with the kernel version";
    Some(match errno {
        4096 => ("IPSET_ERR_PRIVATE", "ipset's internal error; the kernel log may say more"),
        4097 => (
            "IPSET_ERR_PROTOCOL",
            "the kernel's ipset speaks another protocol version than kipvs: update the kernel or kipvs",
        ),
        4098 => (
            "IPSET_ERR_FIND_TYPE",
            "the kernel has no module for this set type: load it (modprobe ip_set_hash_ipport, ip_set_bitmap_port, ...) or use a kernel built with it",
        ),
        4099 => (
            "IPSET_ERR_MAX_SETS",
            "the kernel's limit on the number of sets is reached: remove unused sets (ipset list -n) or raise the ip_set module's max_sets parameter",
        ),
        4100 => (
            "IPSET_ERR_BUSY",
            "the set is in use by a kernel component (an iptables rule refers to it): remove the rule first",
        ),
        4101 => ("IPSET_ERR_EXIST_SETNAME2", "the second set of a rename already exists: remove it first"),
        4102 => (
            "IPSET_ERR_TYPE_MISMATCH",
            "the sets are of different types and cannot be swapped",
        ),
        4103 => (
            "IPSET_ERR_EXIST",
            "the element is already in the set (add) or is not in it (delete)",
        ),
        4104 => ("IPSET_ERR_INVALID_CIDR", "the prefix length is out of range for the set"),
        4105 => ("IPSET_ERR_INVALID_NETMASK", "the netmask is out of range for the set"),
        4106 => (
            "IPSET_ERR_INVALID_FAMILY",
            "the address family does not match the set's (an IPv6 element for an IPv4 set or the other way)",
        ),
        4107 => ("IPSET_ERR_TIMEOUT", "the set was created without timeout support"),
        4108 => (
            "IPSET_ERR_REFERENCED",
            "the set is referenced (by an iptables rule or a list:set): remove the references first",
        ),
        4109 => ("IPSET_ERR_IPADDR_IPV4", "an IPv4 address was expected"),
        4110 => ("IPSET_ERR_IPADDR_IPV6", "an IPv6 address was expected"),
        4111 => ("IPSET_ERR_COUNTER", "the set was created without counter support"),
        4112 => ("IPSET_ERR_COMMENT", "the set was created without comment support"),
        4113 => ("IPSET_ERR_INVALID_MARKMASK", "the markmask is invalid"),
        4114 => ("IPSET_ERR_SKBINFO", "the set was created without skbinfo support"),
        4115 => ("IPSET_ERR_BITMASK_NETMASK_EXCL", "bitmask and netmask cannot be given together"),
        4352 => match class {
            SetClass::Hash => (
                "IPSET_ERR_HASH_FULL",
                "the set is full: it holds its maxelem entries (ipset list -t shows them). kipvs rebuilds a full KUBE-* set at a larger size and swaps it in, so this reaches you only when that rebuild failed too: run `kipvs cleanup` and restart kipvs to recreate its sets",
            ),
            SetClass::Bitmap => (
                "IPSET_ERR_BITMAP_RANGE",
                "the element is outside the set's range (a NodePort outside the set's port range): recreate the set with the range of the cluster's service-node-port-range (`kipvs cleanup`, then restart kipvs)",
            ),
            SetClass::List => ("IPSET_ERR_NAME", "the element is not the name of an existing set"),
            SetClass::Unknown => ("IPSET_ERR_TYPE_SPECIFIC", "the set is full, or the element is outside its range (the code depends on the set's type)"),
        },
        4353 => match class {
            SetClass::Hash => ("IPSET_ERR_HASH_ELEM", "a null-valued element (0.0.0.0 or ::) cannot be stored"),
            SetClass::Bitmap => ("IPSET_ERR_BITMAP_RANGE_SIZE", "the range given for the set is too large"),
            SetClass::List => ("IPSET_ERR_LIST_FULL", "the list is full"),
            SetClass::Unknown => ("IPSET_ERR_TYPE_SPECIFIC+1", REPORT),
        },
        4354 => match class {
            SetClass::Hash => ("IPSET_ERR_INVALID_PROTO", "the protocol is not one the set supports (tcp, udp, sctp, ...)"),
            SetClass::List => ("IPSET_ERR_REF", "the reference set does not exist"),
            _ => ("IPSET_ERR_TYPE_SPECIFIC+2", REPORT),
        },
        4355 => match class {
            SetClass::Hash => ("IPSET_ERR_MISSING_PROTO", "the element needs a protocol (tcp:80, not 80)"),
            _ => ("IPSET_ERR_TYPE_SPECIFIC+3", REPORT),
        },
        4356 => match class {
            SetClass::Hash => ("IPSET_ERR_HASH_RANGE_UNSUPPORTED", "this set type takes no ranges"),
            _ => ("IPSET_ERR_TYPE_SPECIFIC+4", REPORT),
        },
        4357 => match class {
            SetClass::Hash => ("IPSET_ERR_HASH_RANGE", "the range is invalid"),
            _ => ("IPSET_ERR_TYPE_SPECIFIC+5", REPORT),
        },
        e if e > IPSET_ERR_PRIVATE => ("IPSET_ERR_?", REPORT),
        _ => return None,
    })
}

/// An ipset error in words: `what it means (NAME, code N): what to do`, or the errno's
/// own text with advice for the common ones.
pub fn message(errno: i32, class: SetClass) -> String {
    if let Some((name, text)) = describe(errno, class) {
        return format!("{text} ({name}, error {errno})");
    }
    let os = std::io::Error::from_raw_os_error(errno);
    use std::io::ErrorKind;
    let advice = match os.kind() {
        ErrorKind::NotFound => {
            ": the set does not exist (it was removed, or lives in another network namespace)"
        }
        ErrorKind::AlreadyExists => ": a set of that name already exists with other parameters",
        ErrorKind::PermissionDenied => ": ipset needs CAP_NET_ADMIN (run as root)",
        ErrorKind::OutOfMemory => ": the kernel is out of memory for the set",
        _ => match errno {
            // EPROTONOSUPPORT, EAFNOSUPPORT: no ipset in this kernel.
            93 | 97 => ": the kernel has no ipset: load it (modprobe ip_set)",
            // EMSGSIZE
            90 => ": the request was too large (a bug in kipvs: please report it)",
            _ => "",
        },
    };
    format!("{os}{advice}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_hash_set_is_named_and_says_what_to_do() {
        let text = message(4352, SetClass::Hash);
        assert!(text.starts_with("the set is full"), "{text}");
        assert!(text.contains("IPSET_ERR_HASH_FULL, error 4352"), "{text}");
        assert!(text.contains("kipvs cleanup"), "{text}");
    }

    #[test]
    fn type_specific_codes_depend_on_the_set_type() {
        assert!(message(4352, SetClass::Bitmap).contains("IPSET_ERR_BITMAP_RANGE"));
        assert!(message(4353, SetClass::List).contains("IPSET_ERR_LIST_FULL"));
        assert!(message(4355, SetClass::Hash).contains("IPSET_ERR_MISSING_PROTO"));
    }

    #[test]
    fn every_ipset_code_has_a_name_and_ordinary_errnos_keep_their_text() {
        for code in 4096..=4115 {
            let (name, _) = describe(code, SetClass::Hash).unwrap();
            assert!(name.starts_with("IPSET_ERR_"), "{code}");
        }
        for code in 4352..=4357 {
            assert!(describe(code, SetClass::Hash).is_some(), "{code}");
        }
        let enoent = message(2, SetClass::Hash);
        assert!(enoent.contains("does not exist"), "{enoent}");
        assert!(!enoent.contains("Unknown error"), "{enoent}");
    }

    #[test]
    fn set_classes_come_from_type_names() {
        assert_eq!(SetClass::of_type_name("hash:ip,port"), SetClass::Hash);
        assert_eq!(SetClass::of_type_name("bitmap:port"), SetClass::Bitmap);
        assert_eq!(SetClass::of_type_name("list:set"), SetClass::List);
    }
}
