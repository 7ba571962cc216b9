//! Flushing stale conntrack entries after a UDP or SCTP destination goes away, so the
//! next datagram of a "connection" is scheduled afresh instead of following a dead
//! entry for minutes (kube-proxy's DNS black hole).
//!
//! Uses the `conntrack` tool, as kube-proxy did for years: flushes are rare (one per
//! removed UDP/SCTP destination), so one process each is cheap.

use std::process::Command;

use kipvs_proxy::ConntrackFlush;

/// The `conntrack -D` arguments for one flush.
pub fn arguments(flush: &ConntrackFlush) -> Vec<String> {
    let mut args = vec![
        "-D".to_owned(),
        "-p".to_owned(),
        flush.protocol.as_str().to_ascii_lowercase(),
        "--orig-dst".to_owned(),
        flush.addr.to_string(),
        "--orig-port-dst".to_owned(),
        flush.port.to_string(),
    ];
    if let Some(destination) = flush.destination {
        args.push("--dst-nat".to_owned());
        args.push(destination.to_string());
    }
    if flush.addr.is_ipv6() {
        args.push("-f".to_owned());
        args.push("ipv6".to_owned());
    }
    args
}

/// Deletes the entries; none matching is success.
///
/// Fails when `conntrack` is missing or reports an error.
pub fn flush(flush: &ConntrackFlush) -> Result<(), String> {
    let args = arguments(flush);
    let out = Command::new("conntrack")
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run conntrack (install conntrack-tools): {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // conntrack exits 1 with "0 flow entries have been deleted" when nothing matched.
    if out.status.success() || stderr.contains("0 flow entries") {
        Ok(())
    } else {
        Err(format!("conntrack {}: {}", args.join(" "), stderr.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kipvs_ipvs::Protocol;

    #[test]
    fn flush_arguments_match_one_destination_of_one_virtual_service() {
        let flush = ConntrackFlush {
            protocol: Protocol::Udp,
            addr: "10.96.0.10".parse().unwrap(),
            port: 53,
            destination: Some("10.244.1.2".parse().unwrap()),
        };
        assert_eq!(
            arguments(&flush).join(" "),
            "-D -p udp --orig-dst 10.96.0.10 --orig-port-dst 53 --dst-nat 10.244.1.2"
        );
    }

    #[test]
    fn ipv6_flushes_name_the_family() {
        let flush = ConntrackFlush {
            protocol: Protocol::Sctp,
            addr: "fd00::10".parse().unwrap(),
            port: 9,
            destination: None,
        };
        assert_eq!(
            arguments(&flush).join(" "),
            "-D -p sctp --orig-dst fd00::10 --orig-port-dst 9 -f ipv6"
        );
    }
}
