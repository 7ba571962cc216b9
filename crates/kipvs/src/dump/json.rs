//! The `kipvs dump --json` document: the same table as the listing, for machines.
//!
//! The shape is stable: fields are only ever added, never renamed or removed, and
//! `"format"` names its version. Services come in the listing's order, destinations too.
//!
//! ```json
//! {
//!   "format": "kipvs-dump/v1",
//!   "version": "1.2.1",
//!   "conn_table_size": 4096,
//!   "services": [
//!     {
//!       "name": "TCP 10.96.0.1:443",
//!       "family": "ipv4",
//!       "protocol": "tcp",
//!       "address": "10.96.0.1",
//!       "port": 443,
//!       "fwmark": null,
//!       "scheduler": "rr",
//!       "flags": ["one-packet", "sched-fallback", "sched-port", "sched-3"],
//!       "persistence": { "timeout": 10800, "netmask": 32, "mask": "255.255.255.255",
//!                        "engine": null },
//!       "engine": null,
//!       "owners": ["default/kubernetes:https"],
//!       "stats": { "conns": 0, "inpkts": 0, "outpkts": 0, "inbytes": 0, "outbytes": 0,
//!                  "cps": 0, "inpps": 0, "outpps": 0, "inbps": 0, "outbps": 0 },
//!       "destinations": [
//!         {
//!           "address": "192.168.1.10",
//!           "port": 6443,
//!           "forward": "masq",
//!           "tunnel": null,
//!           "weight": 1,
//!           "upper_threshold": 0,
//!           "lower_threshold": 0,
//!           "active_conns": 3,
//!           "inactive_conns": 12,
//!           "persistent_conns": 0,
//!           "stats": { "conns": 0, "...": 0 }
//!         }
//!       ]
//!     }
//!   ]
//! }
//! ```
//!
//! - `family`: `ipv4` | `ipv6`; `protocol`: `tcp` | `udp` | `sctp`, `null` for firewall
//!   marks (then `address` and `port` are `null` and `fwmark` is the mark).
//! - `flags`: only the flags set, from `one-packet`, `sched-fallback` (`sh-fallback` /
//!   `mh-fallback`), `sched-port` (`sh-port` / `mh-port`), `sched-3`.
//! - `persistence`: `null` when not persistent; `netmask` is a prefix length (`null` for
//!   an IPv4 mask that is not one, such as `255.0.255.0`); `mask` is the IPv4 mask in
//!   dotted form (`null` for IPv6); `engine` repeats the service's `engine`.
//! - `engine`: the persistence engine (`sip`) set on the service, persistent or not (the
//!   kernel uses it only for persistent ones), else `null`.
//! - `owners`: the Services (`namespace/name:port`) that want the virtual service;
//!   present only with `--services`, empty for a service no Service wants.
//! - `forward`: `masq` | `local` | `tunnel` | `route` | `bypass`; `tunnel` is
//!   `{ "type": "ipip" | "gue" | "gre", "port": N, "flags": N }` for tunnels, else `null`.
//! - `stats`: counters since creation and rates per second (the kernel's estimates).

use std::net::IpAddr;

use kipvs_ipvs::{
    DestinationEntry, ForwardMethod, Info, Protocol, ServiceEntry, ServiceKey, Stats, Table,
};
use serde::Serialize;

use super::names::tunnel_name;
use super::order::{destinations_order, services_order};

/// The version of the document's shape.
pub const FORMAT: &str = "kipvs-dump/v1";

#[derive(Serialize)]
struct Document<'a> {
    format: &'static str,
    version: String,
    conn_table_size: u32,
    services: Vec<JsonService<'a>>,
}

#[derive(Serialize)]
struct JsonService<'a> {
    name: String,
    family: &'static str,
    protocol: Option<&'static str>,
    address: Option<IpAddr>,
    port: Option<u16>,
    fwmark: Option<u32>,
    scheduler: &'a str,
    flags: Vec<&'static str>,
    persistence: Option<JsonPersistence<'a>>,
    engine: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owners: Option<Vec<String>>,
    stats: &'a Stats,
    destinations: Vec<JsonDestination<'a>>,
}

#[derive(Serialize)]
struct JsonPersistence<'a> {
    timeout: u32,
    netmask: Option<u8>,
    mask: Option<String>,
    engine: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonDestination<'a> {
    address: IpAddr,
    port: u16,
    forward: &'static str,
    tunnel: Option<JsonTunnel>,
    weight: u32,
    upper_threshold: u32,
    lower_threshold: u32,
    active_conns: u32,
    inactive_conns: u32,
    persistent_conns: u32,
    stats: &'a Stats,
}

#[derive(Serialize)]
struct JsonTunnel {
    #[serde(rename = "type")]
    kind: &'static str,
    port: u16,
    flags: u16,
}

/// Who wants a virtual service (`namespace/name:port`), for `--services`.
pub type Owners<'a> = &'a dyn Fn(&ServiceKey) -> Vec<String>;

/// The document for `table`, pretty-printed, ending in a newline. With `owners`, each
/// service carries its `owners`.
pub fn document(table: &Table, info: &Info, owners: Option<Owners<'_>>) -> String {
    let doc = Document {
        format: FORMAT,
        version: info.version.to_string(),
        conn_table_size: info.conn_table_size,
        services: services_order(&table.services)
            .into_iter()
            .map(|i| service(&table.services[i], owners))
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

fn service<'a>(entry: &'a ServiceEntry, owners: Option<Owners<'_>>) -> JsonService<'a> {
    let svc = &entry.service;
    let (protocol, address, port, fwmark) = match svc.key {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => (
            Some(match protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Sctp => "sctp",
            }),
            Some(addr),
            Some(port),
            None,
        ),
        ServiceKey::Fwmark { mark, .. } => (None, None, None, Some(mark)),
    };
    let f = &svc.flags;
    let flags = [
        (f.one_packet, "one-packet"),
        (f.sched_fallback, "sched-fallback"),
        (f.sched_port, "sched-port"),
        (f.sched3, "sched-3"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| n)
    .collect();
    JsonService {
        name: svc.key.to_string(),
        family: match svc.key.family() {
            kipvs_ipvs::Family::V4 => "ipv4",
            kipvs_ipvs::Family::V6 => "ipv6",
        },
        protocol,
        address,
        port,
        fwmark,
        scheduler: svc.scheduler.name(),
        flags,
        persistence: svc.persistence.as_ref().map(|p| JsonPersistence {
            timeout: p.timeout,
            netmask: p.netmask.prefix(),
            mask: (svc.key.family() == kipvs_ipvs::Family::V4)
                .then(|| p.netmask.ipv4_mask().to_string()),
            engine: svc.engine.as_ref().map(|e| e.as_str()),
        }),
        engine: svc.engine.as_ref().map(|e| e.as_str()),
        owners: owners.map(|o| o(&svc.key)),
        stats: &entry.stats,
        destinations: destinations_order(&entry.destinations)
            .into_iter()
            .map(|i| destination(&entry.destinations[i]))
            .collect(),
    }
}

fn destination(entry: &DestinationEntry) -> JsonDestination<'_> {
    let d = &entry.destination;
    let (forward, tunnel) = match &d.forward {
        ForwardMethod::Masq => ("masq", None),
        ForwardMethod::Local => ("local", None),
        ForwardMethod::Route => ("route", None),
        ForwardMethod::Bypass => ("bypass", None),
        ForwardMethod::Tunnel(t) => (
            "tunnel",
            Some(JsonTunnel {
                kind: tunnel_name(t.kind),
                port: t.port,
                flags: t.flags,
            }),
        ),
    };
    JsonDestination {
        address: d.addr,
        port: d.port,
        forward,
        tunnel,
        weight: d.weight,
        upper_threshold: d.upper_threshold,
        lower_threshold: d.lower_threshold,
        active_conns: entry.counters.active,
        inactive_conns: entry.counters.inactive,
        persistent_conns: entry.counters.persistent,
        stats: &entry.stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::testdata::{info, sample_table};

    #[test]
    fn the_document_lists_services_in_listing_order_with_every_field() {
        let text = document(&sample_table(), &info(), None);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["format"], "kipvs-dump/v1");
        assert_eq!(v["version"], "1.2.1");
        assert_eq!(v["conn_table_size"], 4096);
        let s = &v["services"];
        assert_eq!(s[0]["name"], "TCP 10.96.0.1:443");
        assert_eq!(s[0]["destinations"][0]["address"], "192.168.1.10");
        assert_eq!(s[0]["destinations"][0]["active_conns"], 3);
        assert_eq!(s[0]["stats"]["outbytes"], 123_456_789_012_u64);
        assert!(s[0].get("owners").is_none());
        assert_eq!(
            s[1]["flags"],
            serde_json::json!(["one-packet", "sched-fallback", "sched-port"])
        );
        assert_eq!(s[1]["persistence"]["netmask"], 24);
        assert_eq!(s[1]["destinations"][0]["tunnel"]["type"], "gue");
        assert_eq!(s[2]["persistence"]["engine"], "sip");
        assert_eq!(s[3]["fwmark"], 7);
        assert_eq!(s[3]["protocol"], serde_json::Value::Null);
    }

    #[test]
    fn owners_appear_with_services() {
        let text = document(
            &sample_table(),
            &info(),
            Some(&|_| vec!["a/b:80".to_string()]),
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["services"][3]["owners"][0], "a/b:80");
    }
}
