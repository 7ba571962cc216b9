//! `ipvsadm -Lnc`: the connection table, from the text of `/proc/net/ip_vs_conn`.
//!
//! The kernel writes one connection per line after a title line:
//! `TCP 0A000001 9C40 0A600001 0050 0AF40005 1F90 ESTABLISHED     899`, with IPv4
//! addresses as 8 hex digits and IPv6 ones in full (`fd00:0000:...`), ports as 4 hex
//! digits, the expiry in seconds and, for persistence engines, a name and data.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::names::addr_port;

/// Where the kernel lists connections (of the reader's network namespace).
pub const PROC_FILE: &str = "/proc/net/ip_vs_conn";

/// What `ipvsadm -Lnc` prints for `proc_text`, the content of `/proc/net/ip_vs_conn`.
///
/// Fails when the text has no title line (ipvsadm's "unexpected input").
pub fn connections(proc_text: &str) -> Result<String, String> {
    let mut lines = proc_text.split_inclusive('\n');
    if lines.next().is_none() {
        return Err(format!("unexpected input from {PROC_FILE}"));
    }
    let mut out = String::with_capacity(proc_text.len() + 128);
    out.push_str("IPVS connection entries\n");
    let _ = writeln!(
        out,
        "pro expire {:<11} {:<18} {:<18} destination",
        "state", "source", "virtual"
    );
    for line in lines {
        connection(&mut out, line);
    }
    Ok(out)
}

/// An IPv4 address as the kernel prints it (`%08X`), read like `strtoul(s, NULL, 16)`.
fn hex_v4(s: &str) -> Ipv4Addr {
    let digits: &str = &s[..s.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(s.len())];
    let n = u64::from_str_radix(digits, 16).unwrap_or(if digits.is_empty() { 0 } else { u64::MAX });
    Ipv4Addr::from(u32::try_from(n & u64::from(u32::MAX)).unwrap_or(u32::MAX))
}

/// `%hX`: hex into 16 bits.
fn hex_port(s: &str) -> u16 {
    let n = u64::from_str_radix(s, 16).unwrap_or(0);
    u16::try_from(n & 0xffff).unwrap_or(0)
}

/// An address field: IPv6 when it reads as one, else dotted IPv4, else hex IPv4.
fn address(s: &str) -> IpAddr {
    if let Ok(a) = s.parse::<Ipv6Addr>() {
        IpAddr::V6(a)
    } else if let Ok(a) = s.parse::<Ipv4Addr>() {
        IpAddr::V4(a)
    } else {
        IpAddr::V4(hex_v4(s))
    }
}

/// One connection line (ipvsadm's `print_conn` without `--persistent-conn`).
fn connection(out: &mut String, line: &str) {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 9 {
        return;
    }
    // The client's family decides the virtual address's, as in ipvsadm.
    let client = address(f[1]);
    let virt = match client {
        IpAddr::V6(_) => f[3]
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        IpAddr::V4(_) => IpAddr::V4(f[3].parse().unwrap_or_else(|_| hex_v4(f[3]))),
    };
    let dest = address(f[5]);
    let expires: i64 = f[8].parse().unwrap_or(0);
    let name = |addr: &IpAddr, port: &str| {
        let mut s = String::with_capacity(24);
        addr_port(&mut s, addr, hex_port(port));
        s
    };
    let (c, v, d) = (name(&client, f[2]), name(&virt, f[4]), name(&dest, f[6]));
    let expire = format!("{:02}:{:02}", expires / 60, expires % 60);
    let _ = writeln!(
        out,
        "{:<3} {:<6} {:<11} {:<18} {:<18} {}",
        f[0], expire, f[7], c, v, d
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC: &str = "\
Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP 0A000001 9C40 0A600001 01BB C0A8010A 192B ESTABLISHED     899
UDP 0A000002 D431 0A60000A 0035 0AF40005 0035 UDP             299
SCTP fd00:0000:0000:0000:0000:0000:0000:0002 C350 fd00:0000:0000:0000:0000:0000:0000:0001 0F1C fd00:0001:0000:0000:0000:0000:0000:0002 0F1C ESTABLISHED    6000 sip 1234
";

    #[test]
    fn connections_print_as_ipvsadm_lnc() {
        let expected = "\
IPVS connection entries
pro expire state       source             virtual            destination
TCP 14:59  ESTABLISHED 10.0.0.1:40000     10.96.0.1:443      192.168.1.10:6443
UDP 04:59  UDP         10.0.0.2:54321     10.96.0.10:53      10.244.0.5:53
SCTP 100:00 ESTABLISHED [fd00::2]:50000    [fd00::1]:3868     [fd00:1::2]:3868
";
        assert_eq!(connections(PROC).unwrap(), expected);
    }

    #[test]
    fn an_empty_table_prints_the_titles_only() {
        let text = connections(PROC.lines().next().unwrap()).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(connections("").is_err());
    }
}
