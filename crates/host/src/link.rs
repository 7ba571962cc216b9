//! The dummy link (`kube-ipvs0`) that holds the Service VIPs, over rtnetlink.
//!
//! Binding a VIP to a local link makes the kernel add a `local` route for it (table 255);
//! that route is what delivers VIP traffic into IPVS. kipvs owns every host address
//! (`/32`, `/128`) on the link; addresses of other prefix lengths (an IPv6 link-local,
//! anything an operator added by hand) are foreign and left alone.
//!
//! [`plan_addresses`] decides (pure); [`VipLink`] carries it out. Addresses are added
//! and removed in batches, as the IPVS client sends its operations: many RTM_NEWADDR
//! (or RTM_DELADDR) messages in one `sendmsg`, only the last of each chunk asking for
//! an ACK (the kernel handles them in order and answers every failure anyway), so a
//! chunk costs one round trip instead of one per address.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Mutex;

use futures::stream::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use rtnetlink::{Handle, LinkDummy, LinkUnspec};

use crate::{Error, Result};

/// The name kube-proxy gives the link.
pub const DEFAULT_LINK: &str = "kube-ipvs0";

/// Address requests per `sendmsg`. Every failure is answered (an error echoing the
/// request, ~1 KiB of receive buffer each), so a chunk of failures must fit the
/// receive buffer asked for below.
const CHUNK: usize = 1024;
/// Receive buffer asked for (forced when privileged): room for a whole chunk's errors.
const RCVBUF: usize = 4 << 20;

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;

/// What to change on the link so that its host addresses equal the desired VIPs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPlan {
    /// VIPs to bind.
    pub add: Vec<IpAddr>,
    /// Host addresses on the link that no Service needs any more.
    pub remove: Vec<IpAddr>,
}

impl AddressPlan {
    /// True when the link already holds exactly the desired VIPs.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// The host prefix length of an address: 32 or 128.
pub fn host_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Compares the desired VIPs with what the link holds.
///
/// Only host addresses (`/32`, `/128`) on the link are candidates for removal; an address
/// with another prefix length is foreign and never appears in the plan. A desired VIP
/// that is on the link with another prefix length is added as a host address beside it.
pub fn plan_addresses(desired: &BTreeSet<IpAddr>, observed: &BTreeSet<IpNet>) -> AddressPlan {
    let bound: BTreeSet<IpAddr> = observed
        .iter()
        .filter(|net| net.prefix_len() == host_prefix(net.addr()))
        .map(IpNet::addr)
        .collect();
    AddressPlan {
        add: desired.difference(&bound).copied().collect(),
        remove: bound.difference(desired).copied().collect(),
    }
}

/// What one [`VipLink::converge`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressReport {
    /// VIPs bound.
    pub added: usize,
    /// Stale addresses removed.
    pub removed: usize,
}

/// The VIP link, found or created, with rtnetlink sockets bound to the network
/// namespace it was opened in: a connection for the link itself and address dumps, and
/// a plain socket for batched address changes.
#[derive(Debug)]
pub struct VipLink {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
    batch: Mutex<AddressBatcher>,
    name: String,
    index: u32,
}

impl Drop for VipLink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Opens an rtnetlink connection in the calling thread's network namespace and drives it
/// on the current tokio runtime.
fn connect() -> Result<(Handle, tokio::task::JoinHandle<()>)> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
    Ok((handle, tokio::spawn(connection)))
}

impl VipLink {
    /// Finds the dummy link `name`, creating it (down, NOARP, transmit queue length 0, as
    /// kube-proxy does) when it is missing. A link that exists is never deleted or
    /// recreated: its addresses and the traffic they carry stay in place.
    ///
    /// Must be called inside a tokio runtime; the netlink socket belongs to the calling
    /// thread's network namespace.
    ///
    /// # Errors
    /// When the netlink socket cannot be opened or the kernel refuses to create the link
    /// (no `dummy` module, no `CAP_NET_ADMIN`).
    pub async fn ensure(name: &str) -> Result<VipLink> {
        let (handle, connection) = connect()?;
        let index = find_or_create(&handle, name).await?;
        Ok(VipLink {
            handle,
            connection,
            batch: Mutex::new(AddressBatcher::open()?),
            name: name.to_owned(),
            index,
        })
    }

    /// Makes sure the link still exists, creating it again (empty, down, NOARP) when
    /// someone deleted it, as kube-proxy does at every sync. Returns whether it had to be
    /// created.
    ///
    /// # Errors
    /// When the lookup fails or the kernel refuses to create the link.
    pub async fn refresh(&mut self) -> Result<bool> {
        let index = find_or_create(&self.handle, &self.name).await?;
        let recreated = index != self.index;
        self.index = index;
        Ok(recreated)
    }

    /// Opens the link `name` if it exists, without creating it.
    ///
    /// # Errors
    /// When the netlink socket cannot be opened or the lookup fails for another reason
    /// than the link being absent.
    pub async fn open(name: &str) -> Result<Option<VipLink>> {
        let (handle, connection) = connect()?;
        let Some(index) = link_index(&handle, name).await? else {
            connection.abort();
            return Ok(None);
        };
        Ok(Some(VipLink {
            handle,
            connection,
            batch: Mutex::new(AddressBatcher::open()?),
            name: name.to_owned(),
            index,
        }))
    }

    /// The link's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The link's interface index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Sets the link administratively up (it is created down, as kube-proxy leaves it).
    ///
    /// # Errors
    /// When the kernel refuses.
    pub async fn set_up(&self) -> Result<()> {
        let message = LinkUnspec::new_with_index(self.index).up().build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| Error::netlink("set up", self.name.clone(), e))
    }

    /// Whether the link is administratively up.
    ///
    /// # Errors
    /// When the link cannot be read.
    pub async fn is_up(&self) -> Result<bool> {
        let mut links = self.handle.link().get().match_index(self.index).execute();
        let link = links
            .try_next()
            .await
            .map_err(|e| Error::netlink("get link", self.name.clone(), e))?;
        Ok(link.is_some_and(|l| l.header.flags.contains(LinkFlags::Up)))
    }

    /// Every address on the link, with its prefix length.
    ///
    /// # Errors
    /// When the address dump fails.
    pub async fn addresses(&self) -> Result<BTreeSet<IpNet>> {
        let mut dump = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .execute();
        let mut out = BTreeSet::new();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(|e| Error::netlink("list addresses", self.name.clone(), e))?
        {
            let ip = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip {
                if let Ok(net) = IpNet::new(ip, msg.header.prefix_len) {
                    out.insert(net);
                }
            }
        }
        Ok(out)
    }

    /// Binds each VIP as a host address (`/32`, `/128`; IPv6 without DAD), in
    /// batches. A VIP that is already bound counts as success; returns how many were
    /// bound by this call.
    ///
    /// # Errors
    /// The first address the kernel refuses; the others are still attempted.
    pub async fn add(&self, vips: &[IpAddr]) -> Result<usize> {
        self.batched(Change::Add, vips, "add address")
    }

    /// Removes each address (as a host address), in batches. One that is already gone
    /// counts as success; returns how many were removed by this call.
    ///
    /// # Errors
    /// The first address the kernel refuses to remove; the others are still attempted.
    pub async fn remove(&self, vips: &[IpAddr]) -> Result<usize> {
        self.batched(Change::Remove, vips, "remove address")
    }

    fn batched(&self, change: Change, vips: &[IpAddr], op: &'static str) -> Result<usize> {
        let mut batch = self
            .batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut changed = 0;
        let mut first_error = None;
        for chunk in vips.chunks(CHUNK) {
            let answers =
                batch
                    .round_trip(change, self.index, chunk)
                    .map_err(|e| Error::Netlink {
                        op,
                        object: format!("{} addresses on {}", chunk.len(), self.name),
                        errno: e.raw_os_error(),
                        message: e.to_string(),
                    })?;
            for (vip, errno) in chunk.iter().zip(answers) {
                match errno {
                    None => changed += 1,
                    Some(errno) if change.is_done(errno) => {}
                    Some(errno) => {
                        first_error.get_or_insert(Error::Netlink {
                            op,
                            object: format!("{vip} on {}", self.name),
                            errno: Some(errno),
                            message: std::io::Error::from_raw_os_error(errno).to_string(),
                        });
                    }
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(changed),
        }
    }

    /// Makes the link's host addresses equal `desired`: binds the missing VIPs, removes
    /// the stale ones, leaves foreign addresses alone (see [`plan_addresses`]).
    ///
    /// # Errors
    /// When the addresses cannot be listed, or an add or remove is refused.
    pub async fn converge(&self, desired: &BTreeSet<IpAddr>) -> Result<AddressReport> {
        let plan = plan_addresses(desired, &self.addresses().await?);
        if plan.is_empty() {
            return Ok(AddressReport::default());
        }
        let added = self.add(&plan.add).await?;
        let removed = self.remove(&plan.remove).await?;
        tracing::info!(link = %self.name, added, removed, "VIPs converged");
        Ok(AddressReport { added, removed })
    }

    /// Deletes the link and every address on it (for cleanup).
    ///
    /// # Errors
    /// When the kernel refuses; a link already gone is success.
    pub async fn delete(self) -> Result<()> {
        match self.handle.link().del(self.index).execute().await {
            Ok(()) => {
                tracing::info!(link = %self.name, "deleted the VIP link");
                Ok(())
            }
            Err(e) if nl_errno(&e) == Some(ENODEV) => Ok(()),
            Err(e) => Err(Error::netlink("delete link", self.name.clone(), e)),
        }
    }
}

/// An address change, as one rtnetlink request per address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Add,
    Remove,
}

impl Change {
    /// Whether the kernel's `errno` means the change was already made.
    fn is_done(self, errno: i32) -> bool {
        match self {
            Change::Add => errno == EEXIST,
            Change::Remove => errno == EADDRNOTAVAIL || errno == ENODEV,
        }
    }

    fn message(self, index: u32, vip: IpAddr) -> (RouteNetlinkMessage, u16) {
        let body = address_message(index, vip);
        match self {
            Change::Add => (
                RouteNetlinkMessage::NewAddress(body),
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
            ),
            Change::Remove => (RouteNetlinkMessage::DelAddress(body), NLM_F_REQUEST),
        }
    }
}

/// A plain rtnetlink socket that sends address changes a chunk at a time.
#[derive(Debug)]
struct AddressBatcher {
    socket: Socket,
    seq: u32,
    tx: Vec<u8>,
    rx: Vec<u8>,
}

impl AddressBatcher {
    fn open() -> Result<AddressBatcher> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(Error::Socket)?;
        socket.bind_auto().map_err(Error::Socket)?;
        // Best effort: without privileges the kernel caps it, and a chunk of failures
        // beyond it is reported as ENOBUFS.
        let _ = socket.set_rx_buf_sz(RCVBUF);
        Ok(AddressBatcher {
            socket,
            seq: std::process::id().wrapping_mul(0x9e37_79b9),
            tx: Vec::with_capacity(CHUNK * 96),
            rx: Vec::with_capacity(64 << 10),
        })
    }

    /// Sends one request per address in `vips` in one `sendmsg`, the last asking for
    /// an ACK, and returns each request's errno (`None`: done). The kernel handles the
    /// requests in order and answers each failure, so once the last is answered every
    /// request without an answer has succeeded.
    fn round_trip(
        &mut self,
        change: Change,
        index: u32,
        vips: &[IpAddr],
    ) -> std::io::Result<Vec<Option<i32>>> {
        let base = self.seq;
        let count = u32::try_from(vips.len()).unwrap_or(u32::MAX);
        self.seq = self.seq.wrapping_add(count);
        self.tx.clear();
        for (i, vip) in (0u32..).zip(vips) {
            let (body, mut flags) = change.message(index, *vip);
            if i + 1 == count {
                flags |= NLM_F_ACK;
            }
            let mut header = NetlinkHeader::default();
            header.flags = flags;
            header.sequence_number = base.wrapping_add(i);
            let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(body));
            message.finalize();
            let start = self.tx.len();
            self.tx.resize(start + message.buffer_len(), 0);
            message.serialize(&mut self.tx[start..]);
        }
        self.socket.send(&self.tx, 0)?;
        let mut answers = vec![None; vips.len()];
        let last = count.wrapping_sub(1);
        loop {
            self.rx.clear();
            self.socket.recv(&mut self.rx, 0)?;
            let mut rest = &self.rx[..];
            while !rest.is_empty() {
                let Ok(buffer) = NetlinkBuffer::new_checked(rest) else {
                    break;
                };
                let len = usize::try_from(buffer.length())
                    .unwrap_or(rest.len())
                    .min(rest.len());
                let offset = buffer.sequence_number().wrapping_sub(base);
                if let Ok(message) =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len])
                {
                    if let NetlinkPayload::Error(error) = message.payload {
                        if let Some(slot) = usize::try_from(offset)
                            .ok()
                            .and_then(|i| answers.get_mut(i))
                        {
                            *slot = error.code.map(|code| -code.get());
                        }
                        if offset == last {
                            return Ok(answers);
                        }
                    }
                }
                rest = &rest[netlink_align(len).min(rest.len())..];
                if len == 0 {
                    break;
                }
            }
        }
    }
}

fn netlink_align(len: usize) -> usize {
    (len + 3) & !3
}

/// An RTM_NEWADDR / RTM_DELADDR body for a host address on link `index`.
fn address_message(index: u32, vip: IpAddr) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.index = index;
    message.header.prefix_len = host_prefix(vip);
    message.header.family = match vip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.attributes.push(AddressAttribute::Local(vip));
    message.attributes.push(AddressAttribute::Address(vip));
    if vip.is_ipv6() {
        message.header.flags = AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    message
}

/// The index of link `name`, or `None` when no such link exists.
/// The index of the dummy link `name`, created (down, NOARP) when missing.
async fn find_or_create(handle: &Handle, name: &str) -> Result<u32> {
    if let Some(index) = link_index(handle, name).await? {
        return Ok(index);
    }
    // Transmit queue length 0, as kube-proxy's netlink library creates it (the kernel's
    // default for a dummy link is 1000): a node either proxy created then looks the same
    // to `ip link`.
    let message = LinkDummy::new(name).arp(false).txqueuelen(0).build();
    match handle.link().add(message).execute().await {
        Ok(()) => tracing::info!(link = name, "created the VIP link"),
        // Someone created it between our lookup and our request: fine.
        Err(e) if nl_errno(&e) == Some(EEXIST) => {}
        Err(e) => return Err(Error::netlink("create link", name.to_owned(), e)),
    }
    link_index(handle, name)
        .await?
        .ok_or_else(|| Error::Netlink {
            op: "find link",
            object: name.to_owned(),
            errno: Some(ENODEV),
            message: "created, then not found".to_owned(),
        })
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(Some(link)) => {
            let dummy = link.attributes.iter().any(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Dummy))),
                _ => false,
            });
            if !dummy {
                // kube-proxy does not check either; say so, and use it as it is.
                tracing::warn!(link = name, "the VIP link exists but is not a dummy link");
            }
            Ok(Some(link.header.index))
        }
        Ok(None) => Ok(None),
        Err(e) if nl_errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(Error::netlink("find link", name.to_owned(), e)),
    }
}

/// The positive errno of a netlink error reply.
fn nl_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }
    fn nets(list: &[&str]) -> BTreeSet<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn plan_binds_missing_vips_and_removes_stale_host_addresses() {
        let plan = plan_addresses(
            &ips(&["10.96.0.1", "10.96.0.10", "fd00::1"]),
            &nets(&["10.96.0.1/32", "10.96.0.99/32", "fd00::2/128"]),
        );
        assert_eq!(plan.add, vec![ip("10.96.0.10"), ip("fd00::1")]);
        assert_eq!(plan.remove, vec![ip("10.96.0.99"), ip("fd00::2")]);
    }

    #[test]
    fn plan_never_removes_addresses_with_other_prefix_lengths() {
        let plan = plan_addresses(
            &ips(&[]),
            &nets(&["192.0.2.1/24", "fe80::1/64", "10.96.0.1/32"]),
        );
        assert_eq!(plan.remove, vec![ip("10.96.0.1")]);
        assert!(plan.add.is_empty());
    }

    #[test]
    fn plan_is_empty_when_the_link_matches() {
        let plan = plan_addresses(&ips(&["10.96.0.1"]), &nets(&["10.96.0.1/32", "fe80::1/64"]));
        assert!(plan.is_empty());
    }

    #[test]
    fn ipv6_address_messages_ask_for_no_dad() {
        let m = address_message(7, ip("fd00::1"));
        assert_eq!(m.header.prefix_len, 128);
        assert!(m.header.flags.contains(AddressHeaderFlags::Nodad));
        assert!(m
            .attributes
            .contains(&AddressAttribute::Flags(AddressFlags::Nodad)));
        let m = address_message(7, ip("10.96.0.1"));
        assert_eq!(m.header.prefix_len, 32);
        assert_eq!(m.header.family, AddressFamily::Inet);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
}
