//! ipvsadm's order of services and destinations, reproduced exactly.
//!
//! ipvsadm sorts with `qsort` and comparators that subtract unsigned 32-bit words into a
//! C `int` (libipvs' `ipvs_cmp_services` / `ipvs_cmp_dests`). The subtraction wraps, so
//! the comparison is not a total order: with `10.0.0.1`, `100.0.0.1` and `200.0.0.1`,
//! each is "less" than the next and the last is "less" than the first. What ipvsadm
//! prints then depends on the sorting algorithm and on the kernel's dump order. glibc's
//! `qsort` is a top-down merge sort (`msort`): this module sorts the same way, with the
//! same comparisons, so `kipvs dump` lists in ipvsadm's order even in those cases.

use std::net::IpAddr;

use kipvs_ipvs::{DestinationEntry, Family, Protocol, ServiceEntry, ServiceKey};

/// `a - b` on two `u32`s, as C computes it into an `int`.
fn c_diff(a: u32, b: u32) -> i32 {
    i32::from_ne_bytes(a.wrapping_sub(b).to_ne_bytes())
}

/// The address as the four 32-bit host-order words of `union nf_inet_addr` (an IPv4
/// address fills the first word; the kernel zeroes the rest).
fn words(addr: &IpAddr) -> [u32; 4] {
    match addr {
        IpAddr::V4(a) => [u32::from(*a), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
    }
}

/// libipvs' address comparison: four words for IPv6 (first difference wins), one for
/// IPv4, as decided by the first operand's family.
fn cmp_addr(family: Family, a: &[u32; 4], b: &[u32; 4]) -> i32 {
    let n = match family {
        Family::V4 => 1,
        Family::V6 => 4,
    };
    a.iter()
        .zip(b.iter())
        .take(n)
        .map(|(x, y)| c_diff(*x, *y))
        .find(|r| *r != 0)
        .unwrap_or(0)
}

/// `AF_INET` / `AF_INET6`.
fn af(family: Family) -> i32 {
    match family {
        Family::V4 => 2,
        Family::V6 => 10,
    }
}

/// `IPPROTO_*`; the kernel reports TCP for firewall-mark services.
fn proto(protocol: Protocol) -> i32 {
    match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// The fields `ipvs_cmp_services` reads, as the kernel reports them.
struct SvcFields {
    fwmark: u32,
    af: i32,
    protocol: i32,
    addr: [u32; 4],
    port: i32,
    family: Family,
}

fn svc_fields(key: &ServiceKey) -> SvcFields {
    match key {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => SvcFields {
            fwmark: 0,
            af: af(Family::of(addr)),
            protocol: proto(*protocol),
            addr: words(addr),
            port: i32::from(*port),
            family: Family::of(addr),
        },
        ServiceKey::Fwmark { family, mark } => SvcFields {
            fwmark: *mark,
            af: af(*family),
            protocol: proto(Protocol::Tcp),
            addr: [0; 4],
            port: 0,
            family: *family,
        },
    }
}

/// libipvs' `ipvs_cmp_services`, wrapping arithmetic included.
pub fn cmp_services(a: &ServiceKey, b: &ServiceKey) -> i32 {
    let (a, b) = (svc_fields(a), svc_fields(b));
    let r = c_diff(a.fwmark, b.fwmark);
    if r != 0 {
        return r;
    }
    let r = a.af - b.af;
    if r != 0 {
        return r;
    }
    let r = a.protocol - b.protocol;
    if r != 0 {
        return r;
    }
    let r = cmp_addr(a.family, &a.addr, &b.addr);
    if r != 0 {
        return r;
    }
    a.port - b.port
}

/// libipvs' `ipvs_cmp_dests`: address (by the first destination's family), then port.
pub fn cmp_destinations(a: &DestinationEntry, b: &DestinationEntry) -> i32 {
    let (da, db) = (&a.destination, &b.destination);
    let r = cmp_addr(Family::of(&da.addr), &words(&da.addr), &words(&db.addr));
    if r != 0 {
        return r;
    }
    i32::from(da.port) - i32::from(db.port)
}

/// Sorts like glibc's `qsort` (`msort_with_tmp`): split at `n / 2`, sort both halves,
/// merge taking from the left while `cmp(left, right) <= 0`.
pub fn c_sort<T: Clone>(items: &mut [T], cmp: &impl Fn(&T, &T) -> i32) {
    let n = items.len();
    if n <= 1 {
        return;
    }
    let n1 = n / 2;
    c_sort(&mut items[..n1], cmp);
    c_sort(&mut items[n1..], cmp);
    let mut merged = Vec::with_capacity(n);
    let (mut i, mut j) = (0, n1);
    while i < n1 && j < n {
        if cmp(&items[i], &items[j]) <= 0 {
            merged.push(items[i].clone());
            i += 1;
        } else {
            merged.push(items[j].clone());
            j += 1;
        }
    }
    merged.extend_from_slice(&items[i..n1]);
    merged.extend_from_slice(&items[j..n]);
    items.clone_from_slice(&merged);
}

/// The services of a table in the order `ipvsadm -L` lists them (indices into `services`,
/// so nothing is copied).
pub fn services_order(services: &[ServiceEntry]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..services.len()).collect();
    c_sort(&mut idx, &|a: &usize, b: &usize| {
        cmp_services(&services[*a].service.key, &services[*b].service.key)
    });
    idx
}

/// The destinations of a service in the order `ipvsadm -L` lists them.
pub fn destinations_order(destinations: &[DestinationEntry]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..destinations.len()).collect();
    c_sort(&mut idx, &|a: &usize, b: &usize| {
        cmp_destinations(&destinations[*a], &destinations[*b])
    });
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: &str, port: u16) -> ServiceKey {
        ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: addr.parse().unwrap(),
            port,
        }
    }

    fn sorted(keys: &[ServiceKey]) -> Vec<ServiceKey> {
        let mut v = keys.to_vec();
        c_sort(&mut v, &cmp_services);
        v
    }

    #[test]
    fn nearby_addresses_sort_by_address_then_port() {
        let keys = [
            tcp("10.0.0.2", 80),
            tcp("10.0.0.1", 443),
            tcp("10.0.0.1", 80),
        ];
        assert_eq!(
            sorted(&keys),
            [
                tcp("10.0.0.1", 80),
                tcp("10.0.0.1", 443),
                tcp("10.0.0.2", 80)
            ]
        );
    }

    #[test]
    fn addresses_more_than_half_the_space_apart_compare_backwards_as_in_c() {
        // 0x0A000001 - 0xC8000001 wraps to a positive int: 10.x counts as greater.
        assert!(cmp_services(&tcp("10.0.0.1", 80), &tcp("200.0.0.1", 80)) > 0);
        assert!(cmp_services(&tcp("10.0.0.1", 80), &tcp("100.0.0.1", 80)) < 0);
        assert!(cmp_services(&tcp("100.0.0.1", 80), &tcp("200.0.0.1", 80)) < 0);
    }

    #[test]
    fn the_merge_sort_result_depends_on_input_order_like_glibc() {
        // Computed by hand with msort's rule on the non-transitive comparator.
        let a = [
            tcp("200.0.0.1", 80),
            tcp("10.0.0.1", 80),
            tcp("100.0.0.1", 80),
        ];
        // Halves [200] and [10, 100]; 200 - 10 wraps negative, so 200 is taken first.
        assert_eq!(
            sorted(&a),
            [
                tcp("200.0.0.1", 80),
                tcp("10.0.0.1", 80),
                tcp("100.0.0.1", 80)
            ]
        );
        let b = [
            tcp("100.0.0.1", 80),
            tcp("200.0.0.1", 80),
            tcp("10.0.0.1", 80),
        ];
        // Halves [100] and [200, 10] (200 - 10 < 0); 100 - 200 < 0: 100 first.
        assert_eq!(
            sorted(&b),
            [
                tcp("100.0.0.1", 80),
                tcp("200.0.0.1", 80),
                tcp("10.0.0.1", 80)
            ]
        );
    }

    #[test]
    fn ipv4_services_come_before_ipv6_and_address_services_before_fwmarks() {
        let fwm = ServiceKey::Fwmark {
            family: Family::V4,
            mark: 1,
        };
        let v6 = tcp("fd00::1", 80);
        let v4 = tcp("10.0.0.1", 80);
        assert_eq!(sorted(&[fwm, v6, v4]), [v4, v6, fwm]);
    }

    #[test]
    fn merge_sort_is_stable_and_sorts_a_total_order() {
        let mut v = vec![5, 3, 9, 1, 3, 7, 2, 8, 6, 4, 0];
        c_sort(&mut v, &|a: &i32, b: &i32| a - b);
        assert_eq!(v, [0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9]);
    }
}
