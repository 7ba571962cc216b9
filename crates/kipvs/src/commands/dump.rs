//! `kipvs dump`: the kernel's IPVS table as `ipvsadm` prints it, or as JSON.
//!
//! The formatting is [`crate::dump`]'s (pure); this module reads the kernel, filters and
//! prints; what users meet (no root, no IPVS) becomes a [`Failure`].

use std::io::Write as _;
use std::process::{Command, ExitCode, Stdio};

use kipvs_ipvs::{Client, Detail, Error, ServiceKey, Table};
use kipvs_proxy::Observed;

use super::failure::{Failure, Support};
use super::plan::Cluster;
use super::run::LINK_NAME;
use crate::cli::DumpArgs;
use crate::dump::{self, conn, json, save, Columns, ListOptions};
use crate::owners::{self, Owners};
use crate::sync::node::read_host_state;

/// Runs `kipvs dump`.
///
/// Fails when IPVS cannot be read (see [`Failure`]), an owner source cannot be loaded
/// or the output cannot be written.
pub fn main(args: &DumpArgs) -> Result<ExitCode, Failure> {
    print(&run(args)?)
}

/// Prints `text` to standard output in one write; a closed pipe is not an error.
///
/// Fails when standard output cannot be written.
pub(crate) fn print(text: &str) -> Result<ExitCode, Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(Failure::Other(format!("cannot write the output: {e}"))),
    }
}

/// Opens the IPVS table of this network namespace. When the kernel has no IPVS family,
/// tries `modprobe ip_vs` once, as ipvsadm does.
///
/// Fails when IPVS is still missing, or the socket cannot be opened.
pub(crate) fn open_ipvs() -> Result<Client, Failure> {
    match Client::new() {
        Err(Error::Unavailable) => {
            load_module();
            Ok(Client::new()?)
        }
        other => Ok(other?),
    }
}

fn load_module() {
    let _ = Command::new("modprobe")
        .args(["-q", "ip_vs"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Reads the kernel state `kipvs plan --diff` compares with: the IPVS table, the
/// addresses on kube-ipvs0 and the members of the KUBE-* sets.
///
/// Fails like [`open_ipvs`], or when a dump fails.
pub(crate) fn observe() -> Result<Observed, Failure> {
    let mut ipvs = open_ipvs()?;
    let table = ipvs.table()?;
    let (addresses, ipsets) = super::runtime(1)?.block_on(read_host_state(LINK_NAME))?;
    Ok(Observed {
        table,
        addresses,
        ipsets,
    })
}

/// Where the owning Service of each virtual service comes from.
enum OwnerSource {
    /// Not asked for.
    None,
    /// A state file replayed into the core (`--state`).
    Cluster(Box<Cluster>),
    /// The owners file `kipvs run` writes.
    File(Owners),
}

impl OwnerSource {
    /// Picks the source: `--state` when given, else the owners file when owners are
    /// asked for (`--services`, `--service`), else none.
    fn of(args: &DumpArgs) -> Result<OwnerSource, String> {
        if let Some(state) = &args.state {
            return Ok(OwnerSource::Cluster(Box::new(Cluster::load(
                state,
                args.config.as_deref(),
                args.hostname_override.as_deref(),
                None,
            )?)));
        }
        if args.services || !args.service.is_empty() {
            let path = owners::path(args.owners_file.as_deref());
            return Ok(OwnerSource::File(Owners::load(&path)?));
        }
        Ok(OwnerSource::None)
    }

    /// The Service port (`namespace/name:port`) that owns the virtual service at `key`.
    fn owner(&self, key: &ServiceKey) -> Option<String> {
        match self {
            OwnerSource::None => None,
            OwnerSource::Cluster(c) => c.owner(key),
            OwnerSource::File(f) => f.get(key).map(str::to_owned),
        }
    }
}

fn run(args: &DumpArgs) -> Result<String, Failure> {
    if args.connections {
        return connections();
    }
    for s in &args.service {
        if !s.contains('/') {
            return Err(Failure::Other(format!(
                "--service {s:?}: expected NAMESPACE/NAME"
            )));
        }
    }
    let source = OwnerSource::of(args)?;
    let mut ipvs = open_ipvs()?;
    let info = ipvs.info()?;
    // The plain listing shows no statistics, thresholds or tunnel settings: the kernel
    // can give all its destinations at once instead of a dump per service.
    let plain = !(args.json || args.save || args.stats || args.rate);
    let mut table = ipvs.table_with(if plain { Detail::Listing } else { Detail::Full })?;
    filter(&mut table, args, &source);
    let owner = |k: &ServiceKey| source.owner(k);
    if args.json {
        let owners = |k: &ServiceKey| owner(k).into_iter().collect::<Vec<_>>();
        let with = args.services.then_some(&owners as json::Owners<'_>);
        return Ok(json::document(&table, &info, with));
    }
    if args.save {
        return Ok(save::save(&table));
    }
    let options = ListOptions {
        columns: if args.stats {
            Columns::Stats
        } else if args.rate {
            Columns::Rate
        } else {
            Columns::Plain
        },
        exact: args.exact,
    };
    if args.services {
        let note = |k: &ServiceKey| Some(owner(k).unwrap_or_else(|| "-".into()));
        return Ok(dump::list_annotated(&table, &info, options, &note));
    }
    Ok(dump::list(&table, &info, options))
}

/// Keeps the virtual services on `--vip` addresses and of `--service` Services.
fn filter(table: &mut Table, args: &DumpArgs, source: &OwnerSource) {
    table.services.retain(|entry| {
        let key = &entry.service.key;
        let vip_ok = args.vip.is_empty()
            || matches!(key, ServiceKey::Addr { addr, .. } if args.vip.contains(addr));
        let service_ok = args.service.is_empty()
            || source
                .owner(key)
                .is_some_and(|o| args.service.iter().any(|s| owner_is(&o, s)));
        vip_ok && service_ok
    });
}

/// Whether `owner` (`namespace/name:port`) belongs to Service `name` (`namespace/name`).
fn owner_is(owner: &str, name: &str) -> bool {
    owner
        .rsplit_once(':')
        .is_some_and(|(service, _)| service == name)
}

/// `ipvsadm -Lnc`.
fn connections() -> Result<String, Failure> {
    let read = || std::fs::read_to_string(conn::PROC_FILE);
    let text = match read() {
        Ok(t) => t,
        Err(_) => {
            load_module();
            read().map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Failure::NoIpvs(Support::probe()),
                _ => Failure::Other(format!("cannot read {}: {e}", conn::PROC_FILE)),
            })?
        }
    };
    Ok(conn::connections(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_match_their_service_name_whatever_the_port() {
        assert!(owner_is("default/kubernetes:https", "default/kubernetes"));
        assert!(owner_is("a/b:80", "a/b"));
        assert!(!owner_is("a/bc:80", "a/b"));
    }
}
