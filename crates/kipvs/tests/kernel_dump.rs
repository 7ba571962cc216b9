//! Kernel tests of `kipvs dump` and `kipvs plan`, with `ipvsadm` as the oracle: the real
//! binary and the real ipvsadm read the same namespace, and their outputs must be equal
//! byte for byte.
//!
//! Run by `tests/run` as root in a fresh network namespace of a kernel with IPVS (the
//! test VM where the running kernel lacks it). Plain `cargo test` lists them as ignored.

// Test code: a panic is a test failure, with the message of what was unwrapped.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::time::Duration;

use kipvs_ipvs::{
    Client, Destination, ForwardMethod, Protocol, Scheduler, SchedulerName, Service, ServiceKey,
};
use kipvs_testkit::Netns;

const KIPVS: &str = env!("CARGO_BIN_EXE_kipvs");

/// A table of every kind ipvsadm can show. Services are created in an order that is
/// neither sorted nor reversed, and addresses span more than half of the 32-bit space
/// (10.x, 100.x, 200.x; fd00:: and 2001::), where ipvsadm's comparator stops being a
/// total order: kipvs must still list in ipvsadm's order.
const TABLE: &str = "
ip link add kt-local type dummy
ip link set kt-local up
ip addr add 10.0.0.100/32 dev kt-local
ipvsadm -A -t 200.0.0.1:80 -s lc
ipvsadm -a -t 200.0.0.1:80 -r 10.1.0.1:80 -m -w 1
ipvsadm -A -t 10.96.0.1:443 -s rr
ipvsadm -a -t 10.96.0.1:443 -r 192.168.1.10:6443 -m -w 1
ipvsadm -a -t 10.96.0.1:443 -r 192.168.1.11:6443 -g -w 0
ipvsadm -a -t 10.96.0.1:443 -r 200.1.1.12:6443 -i -w 2147483647 -x 1000 -y 10
ipvsadm -a -t 10.96.0.1:443 -r 100.1.1.13:6443 -i -w 65535 --tun-type gue --tun-port 6080 --tun-csum
ipvsadm -a -t 10.96.0.1:443 -r 10.1.1.14:6443 -i -w 3 --tun-type gre --tun-nocsum
ipvsadm -A -t 100.64.0.1:80 -s wrr -p
ipvsadm -A -u 10.96.0.10:53 -s sh -b sh-fallback,sh-port -p 360 -M 255.255.255.0 -o
ipvsadm -a -u 10.96.0.10:53 -r 10.244.0.5:53 -m -w 5
ipvsadm -A -u 10.96.0.30:5060 -s rr -p 60 --pe sip
ipvsadm -A -t 10.96.0.40:80 -s rr -p 100 -M 255.0.255.0
ipvsadm -A --sctp-service 10.96.0.20:3868 -s mh -b mh-port
ipvsadm -a --sctp-service 10.96.0.20:3868 -r 10.244.0.6:3868 -m -w 1
ipvsadm -A -t [fd00::1]:80 -s wlc -p 60 -M 64
ipvsadm -a -t [fd00::1]:80 -r [fd00:1::2]:80 -m -w 3
ipvsadm -a -t [fd00::1]:80 -r [2001:db8::2]:80 -g -w 1
ipvsadm -A -u [2001:db8::1]:53 -s dh
ipvsadm -A -f 7 -s rr
ipvsadm -a -f 7 -r 10.244.0.9:0 -m -w 1
ipvsadm -A -f 8 -6 -s mh -b mh-fallback
ipvsadm -a -f 8 -6 -r [fd00:1::9]:0 -m -w 2
ipvsadm -A -f 4294967295 -s sed
ipvsadm -A -t 10.0.0.100:80 -s rr
ipvsadm -a -t 10.0.0.100:80 -r 10.0.0.100:80 -m -w 1
";

/// Real traffic through the Local-forwarding service 10.0.0.100:80 (its destination is
/// an address of the namespace, so the kernel forwards locally) to a socat server there,
/// so counters, rates and the connection table are not zero.
const TRAFFIC: &str = "
socat TCP-LISTEN:80,bind=10.0.0.100,fork,reuseaddr SYSTEM:'cat' >/dev/null 2>&1 &
echo $! >/tmp/kipvs-socat.pid
for i in $(seq 50); do
    if echo ping | socat -T 2 - TCP:10.0.0.100:80 >/dev/null 2>&1; then break; fi
    sleep 0.1
done
for i in $(seq 20); do
    head -c 20000 /dev/zero | socat -T 2 - TCP:10.0.0.100:80 >/dev/null 2>&1 || true
done
";

fn build(ns: &Netns) {
    ns.route_everything();
    ns.sh(TABLE);
    // ipvsadm cannot ask for local forwarding (the kernel no longer infers it from the
    // address), so the client sets it.
    let _inside = ns.enter();
    let mut ipvs = Client::new().unwrap();
    let local: IpAddr = "10.0.0.100".parse().unwrap();
    let mut dest = Destination::masq(local, 80, 1);
    dest.forward = ForwardMethod::Local;
    let key = ServiceKey::Addr {
        protocol: Protocol::Tcp,
        addr: local,
        port: 80,
    };
    ipvs.update_destination(&key, &dest).unwrap();
    // A persistence engine on a service that is not persistent: the kernel keeps it.
    let sip = Service::new(
        ServiceKey::Addr {
            protocol: Protocol::Udp,
            addr: "10.96.0.31".parse().unwrap(),
            port: 5060,
        },
        Scheduler::RoundRobin,
    )
    .with_engine(SchedulerName::try_new("sip").unwrap());
    ipvs.add_service(&sip).unwrap();
}

fn kipvs(ns: &Netns, args: &[&str]) -> String {
    let mut all = vec!["dump"];
    all.extend_from_slice(args);
    ns.run_ok(KIPVS, &all)
}

/// Compares `kipvs dump ARGS` with `ipvsadm IPVSADM_ARGS`, reading ipvsadm just before
/// and just after kipvs (in one shell, to keep the three reads close): counters, rates
/// and expiry times move, so a comparison counts only when both ipvsadm reads agree
/// (kipvs then read the same state). Retries until they do.
fn assert_same(ns: &Netns, args: &[&str], ipvsadm_args: &[&str]) -> String {
    const MARK: &str = "@@@@ kipvs test @@@@\n";
    let (ours, theirs) = (args.join(" "), ipvsadm_args.join(" "));
    let script = format!(
        "ipvsadm {theirs}; printf '{MARK}'; {KIPVS} dump {ours}; printf '{MARK}'; ipvsadm {theirs}"
    );
    for _ in 0..40 {
        let out = ns.sh(&script);
        let parts: Vec<&str> = out.split(MARK).collect();
        assert_eq!(parts.len(), 3, "{out}");
        if parts[0] != parts[2] {
            continue;
        }
        assert_eq!(
            parts[1], parts[0],
            "`kipvs dump {ours}` differs from `ipvsadm {theirs}`"
        );
        return parts[1].to_string();
    }
    panic!("the table kept changing under `ipvsadm {theirs}`");
}

/// The connection listing with each entry's expiry (`MM:SS`, which counts down every
/// second) replaced by `??:??`, column widths kept.
fn without_expiry(listing: &str) -> String {
    listing
        .lines()
        .map(|l| {
            let mut fields = l.splitn(3, ' ');
            match (fields.next(), fields.next(), fields.next()) {
                (Some(p), Some(e), Some(rest)) if e.contains(':') => {
                    format!("{p} {} {rest}\n", "?".repeat(e.len()))
                }
                _ => format!("{l}\n"),
            }
        })
        .collect()
}

/// `kipvs dump --connections` against `ipvsadm -Lnc`. Expiry times move every second and
/// reads in the emulated VM can take longer than that: byte for byte when a stable read
/// is had within a few tries, else byte for byte except the expiry column.
fn assert_same_connections(ns: &Netns) -> String {
    let script =
        format!("ipvsadm -Lnc; printf '@@@@\\n'; {KIPVS} dump --connections; printf '@@@@\\n'; ipvsadm -Lnc");
    let mut last = None;
    for _ in 0..10 {
        let out = ns.sh(&script);
        let parts: Vec<String> = out.split("@@@@\n").map(str::to_string).collect();
        assert_eq!(parts.len(), 3, "{out}");
        if parts[0] == parts[2] {
            assert_eq!(
                parts[1], parts[0],
                "`kipvs dump --connections` differs from `ipvsadm -Lnc`"
            );
            return parts[1].clone();
        }
        last = Some(parts);
    }
    let parts = last.expect("ten reads were made");
    println!("no stable read of the connection table: comparing without expiry times");
    assert_between_reads(
        &without_expiry(&parts[0]),
        &without_expiry(&parts[1]),
        &without_expiry(&parts[2]),
    );
    parts[1].clone()
}

/// No traffic flows while the connection table is compared, so entries can only expire
/// between the reads (on a loaded machine a read takes long enough for TIME_WAIT entries
/// to go): kipvs' listing, read between two `ipvsadm -Lnc` reads, keeps the order of
/// the first and holds every entry still in the second.
fn assert_between_reads(before: &str, ours: &str, after: &str) {
    fn header(s: &str) -> Vec<&str> {
        s.lines().take(2).collect()
    }
    assert_eq!(
        header(ours),
        header(before),
        "`kipvs dump --connections` header"
    );
    let mut earlier = before.lines().skip(2);
    for line in ours.lines().skip(2) {
        assert!(
            earlier.any(|l| l == line),
            "`kipvs dump --connections` lists {line:?}, not in the order or entries of \
             `ipvsadm -Lnc` read just before:\n{before}\nkipvs:\n{ours}"
        );
    }
    for line in after.lines().skip(2) {
        assert!(
            ours.lines().any(|l| l == line),
            "`kipvs dump --connections` misses {line:?}, still listed by `ipvsadm -Lnc` \
             read just after:\n{after}\nkipvs:\n{ours}"
        );
    }
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn dump_matches_ipvsadm_byte_for_byte_on_a_varied_table() {
    let ns = Netns::new();
    build(&ns);
    let plain = assert_same(&ns, &[], &["-Ln"]);
    assert!(plain.starts_with("IP Virtual Server version "), "{plain}");
    // Every kind made it into the table (a silently refused ipvsadm line would weaken
    // the comparison).
    for needle in [
        "Tunnel  2147483647",
        "(sh-fallback,sh-port) persistent 360 mask 255.255.255.0 ops",
        "pe sip",
        "TCP  10.96.0.40:80 rr persistent 100 mask 255.0.255.0\n",
        "UDP  10.96.0.31:5060 rr\n",
        "SCTP 10.96.0.20:3868 mh (mh-port)",
        "FWM  8 IPv6 mh (mh-fallback)",
        "FWM  -1 sed",
        "Local   1 ",
        "[2001:db8::2]:80",
    ] {
        assert!(plain.contains(needle), "{needle:?} missing from\n{plain}");
    }
    let save = assert_same(&ns, &["--save"], &["-Sn"]);
    for needle in [
        "-A -t 10.96.0.40:80 -s rr -p 100 -M 255.0.255.0\n",
        "-A -u 10.96.0.31:5060 -s rr --pe sip\n",
    ] {
        assert!(save.contains(needle), "{needle:?} missing from\n{save}");
    }
    assert_same(&ns, &["--stats"], &["-Ln", "--stats"]);
    assert_same(&ns, &["--rate"], &["-Ln", "--rate"]);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn dump_matches_ipvsadm_with_live_counters_rates_and_connections() {
    let ns = Netns::new();
    build(&ns);
    ns.sh(TRAFFIC);
    // Let the rate estimator (every 2 s) see the traffic.
    std::thread::sleep(Duration::from_secs(5));
    let plain = assert_same(&ns, &[], &["-Ln"]);
    let local = plain
        .lines()
        .find(|l| l.starts_with("  -> 10.0.0.100:80 "))
        .unwrap();
    assert!(
        local.contains(" Local ") && local.split_whitespace().last() != Some("0"),
        "inactive connections expected on the local destination:\n{plain}"
    );
    let stats = assert_same(&ns, &["--stats"], &["-Ln", "--stats"]);
    let local = stats
        .lines()
        .find(|l| l.starts_with("TCP  10.0.0.100:80"))
        .unwrap();
    assert!(!local.ends_with(" 0"), "no traffic counted: {local}");
    assert_same(&ns, &["--stats", "--exact"], &["-Ln", "--stats", "--exact"]);
    let rate = assert_same(&ns, &["--rate"], &["-Ln", "--rate"]);
    let local = rate
        .lines()
        .find(|l| l.starts_with("TCP  10.0.0.100:80"))
        .unwrap();
    assert!(
        local.split_whitespace().skip(2).any(|n| n != "0"),
        "rates are all zero: {local}"
    );
    assert_same(&ns, &["--rate", "--exact"], &["-Ln", "--rate", "--exact"]);
    let conns = assert_same_connections(&ns);
    assert!(conns.lines().count() > 2, "no connection listed:\n{conns}");
    assert_same(&ns, &["--save"], &["-Sn"]);
    ns.sh("kill $(cat /tmp/kipvs-socat.pid) 2>/dev/null || true");
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn dump_json_holds_the_same_table_in_the_same_order() {
    let ns = Netns::new();
    build(&ns);
    let text = kipvs(&ns, &["--json"]);
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["format"], "kipvs-dump/v1");
    let names: Vec<String> = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    // The listing's services, named as the document names them (marks aside: ipvsadm
    // prints them signed).
    let listed: Vec<String> = kipvs(&ns, &[])
        .lines()
        .skip(3)
        .filter(|l| !l.starts_with("  ->") && !l.starts_with("FWM"))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect();
    let addressed: Vec<String> = names
        .iter()
        .filter(|n| !n.starts_with("FWM"))
        .cloned()
        .collect();
    assert_eq!(addressed, listed);
    assert_eq!(names.len(), listed.len() + 3);
    let vip = kipvs(&ns, &["--vip", "fd00::1"]);
    assert_eq!(
        vip.lines().filter(|l| !l.starts_with("  ->")).count(),
        3,
        "{vip}"
    );
    assert!(
        vip.contains("TCP  [fd00::1]:80 wlc persistent 60 mask 64\n"),
        "{vip}"
    );
}
