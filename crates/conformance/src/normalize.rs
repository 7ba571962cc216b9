//! The normalizers: each turns what a tool printed (or a server answered) into the lines
//! of one capture section, dropping only what is noise (counters, the dates
//! `iptables-save` stamps, ipset's random `initval`, link-local addresses, times in
//! health answers) and keeping everything a proxy decides, rule order inside a chain
//! included. Pure: the tools are run by [`crate::node`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use regex::Regex;

/// `ipvsadm -Sn` sorted, then the IPVS timeouts (`ipvsadm -L --timeout`) as
/// `--set TCP TCPFIN UDP`, the way `ipvsadm` itself sets them.
pub fn ipvs(save: &str, timeouts: &str) -> Vec<String> {
    let mut lines: Vec<String> = save
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    lines.sort();
    // "Timeout (tcp tcpfin udp): 900 120 300"
    if let Some((_, values)) = timeouts.trim().split_once("):") {
        lines.push(format!("--set {}", collapse(values)));
    }
    lines
}

/// `ipset save`: each set's `create` line (without its random `initval`), then its
/// `add` lines sorted; sets sorted by name.
pub fn ipset(save: &str) -> Vec<String> {
    let mut sets: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in save.lines().map(str::trim_end) {
        let mut words = line.split_whitespace();
        let (Some(verb), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        let entry = sets.entry(name.to_owned()).or_default();
        match verb {
            "create" => {
                let mut kept = vec!["create", name];
                let mut rest = words;
                while let Some(word) = rest.next() {
                    if word == "initval" {
                        rest.next();
                    } else {
                        kept.push(word);
                    }
                }
                entry.0 = kept.join(" ");
            }
            "add" => {
                entry.1.insert(collapse(line));
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (name, (create, members)) in sets {
        out.push(if create.is_empty() {
            format!("create {name} (no create line)")
        } else {
            create
        });
        out.extend(members);
    }
    out
}

/// The chains every iptables table may have from the start.
const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// Chains whose rule order means nothing and that kube-proxy writes in Go's random map
/// order: each `KUBE-IPVS-OUT-FILTER` rule drops one source-ranged LoadBalancer address,
/// protocol and port of its own. Their rules are sorted.
const UNORDERED_CHAINS: [&str; 1] = ["KUBE-IPVS-OUT-FILTER"];

#[derive(Default)]
struct Chain {
    policy: Option<String>,
    rules: Vec<String>,
}

/// `iptables-save` / `ip6tables-save`: every line prefixed with its table; per table
/// (sorted), each chain (sorted) declared as `TABLE :CHAIN POLICY`, then its rules in
/// the order the kernel holds them (sorted in the chains of [`UNORDERED_CHAINS`]). Dropped as noise: the `#` lines (they carry dates),
/// packet and byte counters, `COMMIT`, and what only says a table or built-in chain
/// exists (the nft backend creates them on first use): built-in chains with policy
/// ACCEPT are not declared, and tables without any line left are omitted.
pub fn iptables(save: &str) -> Vec<String> {
    let mut tables: BTreeMap<String, BTreeMap<String, Chain>> = BTreeMap::new();
    let mut table = String::new();
    for raw in save.lines() {
        let line = strip_counters(raw.trim());
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            table = name.to_owned();
            tables.entry(table.clone()).or_default();
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut words = decl.split_whitespace();
            let name = words.next().unwrap_or_default().to_owned();
            let policy = words.next().unwrap_or("-").to_owned();
            let chains = tables.entry(table.clone()).or_default();
            chains.entry(name).or_default().policy = Some(policy);
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let name = rule
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            let chains = tables.entry(table.clone()).or_default();
            chains.entry(name).or_default().rules.push(collapse(line));
        }
    }
    let mut out = Vec::new();
    for (table, chains) in tables {
        for (name, mut chain) in chains {
            if UNORDERED_CHAINS.contains(&name.as_str()) {
                chain.rules.sort();
            }
            let builtin = BUILTIN_CHAINS.contains(&name.as_str());
            match chain.policy.as_deref() {
                Some("ACCEPT") if builtin => {}
                Some(policy) => out.push(format!("{table} :{name} {policy}")),
                None => out.push(format!("{table} :{name} (undeclared)")),
            }
            out.extend(chain.rules.iter().map(|r| format!("{table} {r}")));
        }
    }
    out
}

/// Removes a leading `[packets:bytes] ` (from `-c`) and a trailing ` [packets:bytes]`
/// (on chain declarations).
fn strip_counters(line: &str) -> &str {
    static LEADING: OnceLock<Regex> = OnceLock::new();
    static TRAILING: OnceLock<Regex> = OnceLock::new();
    let leading = LEADING.get_or_init(|| Regex::new(r"^\[\d+:\d+\]\s*").expect("valid regex"));
    let trailing = TRAILING.get_or_init(|| Regex::new(r"\s*\[\d+:\d+\]$").expect("valid regex"));
    let line = leading.find(line).map_or(line, |m| &line[m.end()..]);
    trailing.find(line).map_or(line, |m| &line[..m.start()])
}

/// Why `ip -j` output could not be read.
#[derive(Debug, thiserror::Error)]
#[error("ip -j output: {0}")]
pub struct LinksError(#[from] serde_json::Error);

/// `ip -d -j addr show`: one line per link, `NAME link KIND flags F,... state S mtu N qdisc Q txqlen N`,
/// and one per address, `NAME FAMILY ADDRESS/LEN scope S [flag...]`; sorted. IPv6
/// link-local addresses (made from a random MAC address) become `fe80::<link-local>`.
///
/// # Errors
/// When the text is not `ip -j`'s JSON.
pub fn links(ip_json: &str) -> Result<Vec<String>, LinksError> {
    let links: Vec<serde_json::Value> = serde_json::from_str(ip_json)?;
    let mut out = Vec::new();
    for link in &links {
        let name = str_field(link, "ifname");
        let kind = link
            .get("linkinfo")
            .and_then(|i| i.get("info_kind"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_else(|| str_field(link, "link_type"));
        let flags: Vec<&str> = link
            .get("flags")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .collect();
        let number = |field: &str| {
            link.get(field)
                .map_or_else(String::new, ToString::to_string)
        };
        out.push(format!(
            "{name} link {kind} flags {} state {} mtu {} qdisc {} txqlen {}",
            flags.join(","),
            str_field(link, "operstate"),
            number("mtu"),
            str_field(link, "qdisc"),
            // `ip` leaves a zero queue length out.
            link.get("txqlen")
                .map_or_else(|| "0".to_owned(), ToString::to_string),
        ));
        for addr in link
            .get("addr_info")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
        {
            let local = str_field(addr, "local");
            let local = if local.to_ascii_lowercase().starts_with("fe80:") {
                "fe80::<link-local>"
            } else {
                local
            };
            let mut line = format!(
                "{name} {} {local}/{} scope {}",
                str_field(addr, "family"),
                addr.get("prefixlen")
                    .map_or_else(String::new, ToString::to_string),
                str_field(addr, "scope")
            );
            if let Some(fields) = addr.as_object() {
                for (key, value) in fields {
                    if value == &serde_json::Value::Bool(true) {
                        line.push(' ');
                        line.push_str(key);
                    }
                }
            }
            out.push(line);
        }
    }
    out.sort();
    Ok(out)
}

fn str_field<'a>(value: &'a serde_json::Value, key: &str) -> &'a str {
    value
        .get(key)
        .and_then(serde_json::Value::as_str)
        .unwrap_or("?")
}

/// Sysctls as `key = value` (runs of whitespace in the value made one space), sorted.
pub fn sysctls<'a>(values: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let mut out: Vec<String> = values
        .into_iter()
        .map(|(key, value)| format!("{key} = {}", collapse(value)))
        .collect();
    out.sort();
    out
}

/// Whether `key` is a sysctl a proxy writes (or that decides what its rules do): IPVS'
/// (`net.ipv4.vs.*`), conntrack's per-namespace ones (`net.netfilter.*`, but not the
/// live count), forwarding, the ARP and local-routing switches of every interface,
/// and the bridge's netfilter calls.
pub fn proxy_sysctl(key: &str) -> bool {
    const INTERFACE_KEYS: [&str; 5] = [
        "arp_ignore",
        "arp_announce",
        "route_localnet",
        "rp_filter",
        "forwarding",
    ];
    if key == "net.netfilter.nf_conntrack_count" {
        return false;
    }
    key.starts_with("net.ipv4.vs.")
        || key.starts_with("net.netfilter.")
        || key.starts_with("net.bridge.")
        || matches!(
            key,
            "net.ipv4.ip_forward"
                | "net.ipv4.ip_nonlocal_bind"
                | "net.ipv6.conf.all.forwarding"
                | "net.ipv6.conf.default.forwarding"
        )
        || key.strip_prefix("net.ipv4.conf.").is_some_and(|rest| {
            rest.rsplit_once('.')
                .is_some_and(|(_, name)| INTERFACE_KEYS.contains(&name))
        })
}

/// What an HTTP server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-cased, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

/// The response headers a client of the health endpoints reads (load balancers read the
/// endpoint weight); the others (dates, lengths) are noise.
pub const HEALTH_HEADERS: [&str; 3] = [
    "content-type",
    "x-content-type-options",
    "x-load-balancing-endpoint-weight",
];

/// An HTTP answer as lines prefixed with `name`: `status N`, the [`HEALTH_HEADERS`] sent,
/// and the body: a JSON body as one line per leaf (`body .a.b VALUE`, times replaced by
/// [`normalize_time`]), another body as `text LINE` lines. A server that could not be
/// reached is one line, `name unreachable: REASON`.
pub fn http(name: &str, answer: &Result<HttpAnswer, String>) -> Vec<String> {
    let answer = match answer {
        Ok(answer) => answer,
        Err(reason) => return vec![format!("{name} unreachable: {reason}")],
    };
    let mut out = vec![format!("{name} status {}", answer.status)];
    for (header, value) in &answer.headers {
        if HEALTH_HEADERS.contains(&header.as_str()) {
            out.push(format!("{name} header {header}: {value}"));
        }
    }
    match serde_json::from_str::<serde_json::Value>(&answer.body) {
        Ok(json) if json.is_object() || json.is_array() => {
            json_leaves(&json, String::new(), &mut |path, value| {
                out.push(format!("{name} body {path} {value}"));
            });
        }
        _ => out.extend(
            answer
                .body
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| format!("{name} text {l}")),
        ),
    }
    out
}

fn json_leaves(value: &serde_json::Value, path: String, emit: &mut impl FnMut(&str, &str)) {
    match value {
        serde_json::Value::Object(fields) => {
            if fields.is_empty() {
                emit(if path.is_empty() { "." } else { &path }, "{}");
            }
            for (key, field) in fields {
                json_leaves(field, format!("{path}.{key}"), emit);
            }
        }
        serde_json::Value::Array(items) => {
            if items.is_empty() {
                emit(if path.is_empty() { "." } else { &path }, "[]");
            }
            for (i, item) in items.iter().enumerate() {
                json_leaves(item, format!("{path}[{i}]"), emit);
            }
        }
        serde_json::Value::String(text) => emit(&path, &normalize_time(text)),
        other => emit(&path, &other.to_string()),
    }
}

/// A JSON string value with times made comparable: an RFC 3339 time becomes
/// `<rfc3339>`; a string holding another kind of date (`YYYY-MM-DD` somewhere) keeps
/// its shape with each run of digits as `N`, so a format difference still shows; any
/// other string is kept, quoted.
pub fn normalize_time(text: &str) -> String {
    static RFC3339: OnceLock<Regex> = OnceLock::new();
    static DATE: OnceLock<Regex> = OnceLock::new();
    static DIGITS: OnceLock<Regex> = OnceLock::new();
    let rfc3339 = RFC3339.get_or_init(|| {
        Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
            .expect("valid regex")
    });
    let date = DATE.get_or_init(|| Regex::new(r"\d{4}-\d{2}-\d{2}").expect("valid regex"));
    let digits = DIGITS.get_or_init(|| Regex::new(r"\d+").expect("valid regex"));
    if rfc3339.is_match(text) {
        "<rfc3339>".to_owned()
    } else if date.is_match(text) {
        format!("<time {}>", digits.replace_all(text, "N"))
    } else {
        serde_json::Value::String(text.to_owned()).to_string()
    }
}

/// The metrics a Prometheus (or OpenMetrics) text exposition holds: the sample names,
/// sorted and unique; and each sample name with its label names,
/// `name{label,label}` (sorted, unique; samples without labels are left out).
pub fn metrics(text: &str) -> (Vec<String>, Vec<String>) {
    let mut names = BTreeSet::new();
    let mut labelled = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let name = &line[..end];
        names.insert(name.to_owned());
        if line[end..].starts_with('{') {
            let labels = label_names(&line[end + 1..]);
            if !labels.is_empty() {
                labelled.insert(format!("{name}{{{}}}", labels.join(",")));
            }
        }
    }
    (names.into_iter().collect(), labelled.into_iter().collect())
}

/// The label names in `k="v",k2="v2"}...` (the text after a sample's `{`), sorted.
fn label_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = text.chars();
    let mut name = String::new();
    while let Some(c) = chars.next() {
        match c {
            '}' => break,
            '=' => {
                names.push(name.trim().trim_start_matches(',').trim().to_owned());
                name.clear();
                // The quoted value, with backslash escapes.
                let mut escaped = false;
                let mut opened = false;
                for v in chars.by_ref() {
                    match (opened, escaped, v) {
                        (false, _, '"') => opened = true,
                        (true, false, '\\') => escaped = true,
                        (true, false, '"') => break,
                        (true, true, _) => escaped = false,
                        _ => {}
                    }
                }
            }
            _ => name.push(c),
        }
    }
    names.retain(|n| !n.is_empty());
    names.sort();
    names
}

/// `text` with runs of whitespace made one space, trimmed.
fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipvs_lines_are_sorted_and_the_timeouts_written_as_ipvsadm_sets_them() {
        let save = "-A -t 10.96.0.10:53 -s rr -p 10800\n-a -t 10.96.0.10:53 -r 10.244.1.2:53 -m -w 1\n-A -t 10.96.0.1:443 -s rr  \n";
        assert_eq!(
            ipvs(save, "Timeout (tcp tcpfin udp): 900 120 300\n"),
            [
                "-A -t 10.96.0.10:53 -s rr -p 10800",
                "-A -t 10.96.0.1:443 -s rr",
                "-a -t 10.96.0.10:53 -r 10.244.1.2:53 -m -w 1",
                "--set 900 120 300",
            ]
        );
    }

    #[test]
    fn ipset_drops_the_random_initval_and_sorts_members_under_their_set() {
        let save = "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
add KUBE-NODE-PORT-TCP 30080
create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xee00d9b6
add KUBE-CLUSTER-IP 10.96.10.20,tcp:80
add KUBE-CLUSTER-IP 10.96.0.1,tcp:443
";
        assert_eq!(
            ipset(save),
            [
                "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12",
                "add KUBE-CLUSTER-IP 10.96.0.1,tcp:443",
                "add KUBE-CLUSTER-IP 10.96.10.20,tcp:80",
                "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535",
                "add KUBE-NODE-PORT-TCP 30080",
            ]
        );
    }

    const SAVE: &str = "# Generated by iptables-save v1.8.9 (nf_tables) on Sun Dec  6 01:57:21 2026
*nat
:PREROUTING ACCEPT [3:180]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
[4:240] -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
COMMIT
# Completed on Sun Dec  6 01:57:21 2026
# Generated by iptables-save v1.8.9 (nf_tables) on Sun Dec  6 01:57:21 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
COMMIT
";

    #[test]
    fn iptables_keeps_rule_order_and_drops_counters_dates_and_empty_tables() {
        assert_eq!(
            iptables(SAVE),
            [
                "filter :FORWARD DROP",
                "nat :KUBE-MARK-MASQ -",
                "nat -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
                "nat :KUBE-SERVICES -",
                "nat -A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN",
                "nat -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
                "nat -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            ]
        );
    }

    #[test]
    fn iptables_output_does_not_depend_on_the_order_tables_and_chains_were_created() {
        let swapped = SAVE
            .replace(
                ":KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]",
                ":KUBE-MARK-MASQ - [0:0]\n:KUBE-SERVICES - [0:0]",
            )
            .replace(
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\nCOMMIT\n",
                "",
            );
        let swapped = format!("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n{swapped}");
        assert_eq!(iptables(&swapped), iptables(SAVE));
        // Rule order inside a chain is kept.
        let reordered = SAVE.replace(
            "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN\n-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
            "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT\n-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN",
        );
        assert_ne!(iptables(&reordered), iptables(SAVE));
    }

    #[test]
    fn links_list_kind_flags_and_addresses_with_link_local_ones_masked() {
        let json = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:00",
            "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo","valid_life_time":4294967295}]},
          {"ifindex":3,"ifname":"kube-ipvs0","flags":["BROADCAST","NOARP"],"mtu":1500,"qdisc":"noop","operstate":"DOWN","link_type":"ether","address":"1a:2b:3c:4d:5e:6f","linkinfo":{"info_kind":"dummy"},
            "addr_info":[{"family":"inet6","local":"fd00:10:96::1","prefixlen":128,"scope":"global","nodad":true,"valid_life_time":4294967295},
                         {"family":"inet","local":"10.96.0.1","prefixlen":32,"scope":"global","label":"kube-ipvs0"},
                         {"family":"inet6","local":"fe80::182b:3cff:fe4d:5e6f","prefixlen":64,"scope":"link"}]}]"#;
        assert_eq!(
            links(json).unwrap(),
            [
                "kube-ipvs0 inet 10.96.0.1/32 scope global",
                "kube-ipvs0 inet6 fd00:10:96::1/128 scope global nodad",
                "kube-ipvs0 inet6 fe80::<link-local>/64 scope link",
                "kube-ipvs0 link dummy flags BROADCAST,NOARP state DOWN mtu 1500 qdisc noop txqlen 0",
                "lo inet 127.0.0.1/8 scope host",
                "lo link loopback flags LOOPBACK,UP,LOWER_UP state UNKNOWN mtu 65536 qdisc noqueue txqlen 1000",
            ]
        );
        assert!(links("not json").is_err());
    }

    #[test]
    fn out_filter_rules_are_sorted_other_chains_keep_their_order() {
        let save = "*filter\n:KUBE-IPVS-OUT-FILTER - [0:0]\n:KUBE-FORWARD - [0:0]\n\
            -A KUBE-IPVS-OUT-FILTER -s 203.0.113.9/32 -j DROP\n\
            -A KUBE-IPVS-OUT-FILTER -s 203.0.113.1/32 -j DROP\n\
            -A KUBE-FORWARD -j B\n-A KUBE-FORWARD -j A\nCOMMIT\n";
        assert_eq!(
            iptables(save),
            [
                "filter :KUBE-FORWARD -",
                "filter -A KUBE-FORWARD -j B",
                "filter -A KUBE-FORWARD -j A",
                "filter :KUBE-IPVS-OUT-FILTER -",
                "filter -A KUBE-IPVS-OUT-FILTER -s 203.0.113.1/32 -j DROP",
                "filter -A KUBE-IPVS-OUT-FILTER -s 203.0.113.9/32 -j DROP",
            ]
        );
    }

    #[test]
    fn sysctl_values_are_trimmed_and_sorted() {
        assert_eq!(
            sysctls([
                ("net.ipv4.vs.conntrack", "1\n"),
                ("net.ipv4.ip_local_port_range", "32768\t60999\n")
            ]),
            [
                "net.ipv4.ip_local_port_range = 32768 60999",
                "net.ipv4.vs.conntrack = 1"
            ]
        );
    }

    #[test]
    fn the_sysctls_kept_are_those_proxies_write() {
        for key in [
            "net.ipv4.conf.all.arp_announce",
            "net.ipv4.conf.kube-ipvs0.arp_ignore",
            "net.ipv4.ip_forward",
            "net.ipv4.vs.conntrack",
            "net.ipv6.conf.all.forwarding",
            "net.netfilter.nf_conntrack_tcp_timeout_established",
            "net.bridge.bridge-nf-call-iptables",
        ] {
            assert!(proxy_sysctl(key), "{key}");
        }
        for key in [
            "net.core.somaxconn",
            "net.ipv4.conf.eth0.mtu_expires",
            "net.netfilter.nf_conntrack_count",
            "net.ipv6.conf.all.disable_ipv6",
        ] {
            assert!(!proxy_sysctl(key), "{key}");
        }
    }

    #[test]
    fn health_answers_become_status_headers_and_json_leaves_with_times_normalized() {
        let answer = HttpAnswer {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("date".into(), "Sun, 06 Dec 2026 01:57:21 GMT".into()),
                ("x-content-type-options".into(), "nosniff".into()),
            ],
            body: r#"{"lastUpdated": "2026-12-06T01:57:21.08821345Z", "currentTime": "2026-12-06 01:57:22.1 +00:00:00", "nodeEligible": true, "service": {"name": "lb"}, "ips": []}"#.into(),
        };
        assert_eq!(
            http("healthz", &Ok(answer)),
            [
                "healthz status 200",
                "healthz header content-type: application/json",
                "healthz header x-content-type-options: nosniff",
                "healthz body .currentTime <time N-N-N N:N:N.N +N:N:N>",
                "healthz body .ips []",
                "healthz body .lastUpdated <rfc3339>",
                "healthz body .nodeEligible true",
                "healthz body .service.name \"lb\"",
            ]
        );
        let text = HttpAnswer {
            status: 200,
            headers: vec![],
            body: "ipvs".into(),
        };
        assert_eq!(
            http("proxyMode", &Ok(text)),
            ["proxyMode status 200", "proxyMode text ipvs"]
        );
        assert_eq!(
            http("hcnp 32100", &Err("connection refused".into())),
            ["hcnp 32100 unreachable: connection refused"]
        );
    }

    #[test]
    fn metrics_give_sample_names_and_their_label_names() {
        let text = r#"# HELP kubeproxy_sync_proxy_rules_duration_seconds SyncProxyRules latency
# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.001"} 0
kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="+Inf",ip_family="IPv4"} 3
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv4"} 0.2
process_open_fds 12
weird{path="a,b=\"c\"}",x="1"} 1 1700000000
# EOF
"#;
        let (names, labels) = metrics(text);
        assert_eq!(
            names,
            [
                "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
                "kubeproxy_sync_proxy_rules_duration_seconds_sum",
                "process_open_fds",
                "weird"
            ]
        );
        assert_eq!(
            labels,
            [
                "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family,le}",
                "kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family}",
                "weird{path,x}"
            ]
        );
    }
}
