//! The IPVS client: requests, answers, batches and dumps over one netlink socket.
//!
//! Every request carries a sequence number; answers are matched back to requests by it,
//! so many requests can share one `sendmsg` and each still gets its own result. In a
//! batch only the last request asks for an ACK: failures are answered anyway, and the
//! last answer proves every earlier request was handled (see `Client::round_trip`). Batches
//! are cut into chunks whose answers are guaranteed to fit the socket's receive buffer
//! (no `ENOBUFS`) and whose bytes fit its send buffer (no `EMSGSIZE`). Every receive is
//! bounded by the client's timeout.

use std::io;
use std::path::Path;
use std::time::Duration;

use neli::consts::genl::{CtrlAttr, CtrlCmd};
use neli::consts::nl::GenlId;

use crate::codec::{
    self, decode_destination, decode_info, decode_service, decode_timeouts, encode_operation,
    encode_query, Query, NLM_F_ACK, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use crate::consts::{CTRL_VERSION, IPVS_GENL_NAME};
use crate::error::{Error, Result};
use crate::op::{Action, Context, Operation};
use crate::procfs::ProcFile;
use crate::socket::{self, NetlinkSocket};
use crate::types::{DestinationEntry, Info, ServiceEntry, ServiceKey, Table, Timeouts};
use crate::wire::{self, DecodeError, Writer, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN};

/// How long a receive waits before the request counts as unanswered.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive buffer for one datagram: dumps come in skbs of at most 32 KiB.
const RECV_BUF: usize = 64 << 10;
/// Receive-buffer budget per mutation in a batch: an error answer echoes the request
/// (a few hundred bytes) and the kernel accounts a whole skb for it.
const ANSWER_BUDGET: usize = 2 << 10;
/// Send-buffer budget per mutation: the largest request is under 256 bytes.
const REQUEST_BUDGET: usize = 256;
/// Upper bound on messages per `sendmsg`, to keep the kernel's IPVS lock hold short.
const MAX_CHUNK: usize = 1024;
/// Attempts of a dump interrupted by concurrent changes before giving up.
const DUMP_ATTEMPTS: u32 = 5;

/// How much of each destination a table read needs (see [`Client::table_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Detail {
    /// Everything the kernel knows: configuration, connection counters, statistics.
    #[default]
    Full,
    /// What `ipvsadm -Ln` lists: address, port, forwarding method, weight, active and
    /// inactive connections. Thresholds, persistent connections and statistics read as
    /// zero, tunnel settings as their defaults.
    Listing,
}

/// A handle on the IPVS table of one network namespace.
///
/// The namespace is fixed when the client is created: [`Client::new`] uses the calling
/// thread's, [`Client::in_netns`] any other. Requests take `&mut self`; use one client
/// per thread.
#[derive(Debug)]
pub struct Client {
    sock: NetlinkSocket,
    family: u16,
    seq: u32,
    timeout: Duration,
    rx: Vec<u8>,
    tx: Writer,
    max_chunk: usize,
    /// `/proc/net/ip_vs` of the same namespace, for [`Detail::Listing`] reads.
    procfs: Option<ProcFile>,
}

/// How one request of a round trip ended.
#[derive(Debug)]
enum Answer {
    /// Success, with the data messages that came before the ACK or DONE.
    Ok {
        payloads: Vec<Vec<u8>>,
        interrupted: bool,
    },
    /// The kernel refused the request with this errno (positive).
    Errno(i32),
    /// No usable answer: timeout, socket error or garbage.
    Failed(Failure),
}

#[derive(Debug)]
enum Failure {
    Timeout,
    Io(io::Error),
    Malformed(DecodeError),
}

impl Failure {
    fn copy(&self) -> Failure {
        match self {
            Failure::Timeout => Failure::Timeout,
            Failure::Io(e) => Failure::Io(match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }),
            Failure::Malformed(e) => Failure::Malformed(e.clone()),
        }
    }

    fn into_error(self, context: Context, timeout: Duration) -> Error {
        match self {
            Failure::Timeout => Error::Timeout { context, timeout },
            Failure::Io(source) => Error::Io { context, source },
            Failure::Malformed(source) => Error::Malformed { context, source },
        }
    }
}

/// State of one request while its round trip is in flight.
#[derive(Debug, Default)]
struct Slot {
    payloads: Vec<Vec<u8>>,
    interrupted: bool,
    done: Option<Answer>,
}

impl Client {
    /// Opens a client on the IPVS table of the calling thread's network namespace.
    ///
    /// Fails with [`Error::Unavailable`] when the kernel has no IPVS, or [`Error::Io`]
    /// when no netlink socket can be opened.
    pub fn new() -> Result<Client> {
        let sock = NetlinkSocket::open(DEFAULT_TIMEOUT).map_err(connect_error)?;
        Client::with_socket(sock, ProcFile::open(), IPVS_GENL_NAME)
    }

    /// Opens a client on the IPVS table of the network namespace at `netns` (for example
    /// `/run/netns/NAME` or `/proc/PID/ns/net`). The calling thread stays where it is.
    ///
    /// Fails like [`Client::new`], or with [`Error::Io`] when `netns` cannot be entered.
    pub fn in_netns(netns: impl AsRef<Path>) -> Result<Client> {
        let (sock, procfs) = socket::in_netns(netns.as_ref(), || {
            Ok((NetlinkSocket::open(DEFAULT_TIMEOUT)?, ProcFile::open()))
        })
        .map_err(connect_error)?;
        Client::with_socket(sock, procfs, IPVS_GENL_NAME)
    }

    /// Opens a client for a generic netlink family of another name, in the calling
    /// thread's namespace. Only for tests of the "family missing" path.
    #[doc(hidden)]
    pub fn with_family_name(name: &str) -> Result<Client> {
        let sock = NetlinkSocket::open(DEFAULT_TIMEOUT).map_err(connect_error)?;
        Client::with_socket(sock, None, name)
    }

    fn with_socket(
        sock: NetlinkSocket,
        procfs: Option<ProcFile>,
        family_name: &str,
    ) -> Result<Client> {
        let max_chunk = (sock.rcvbuf() / ANSWER_BUDGET)
            .min(sock.sndbuf() / 2 / REQUEST_BUDGET)
            .clamp(1, MAX_CHUNK);
        let mut client = Client {
            sock,
            family: GenlId::Ctrl.into(),
            seq: std::process::id().wrapping_mul(0x9e37_79b9),
            timeout: DEFAULT_TIMEOUT,
            rx: vec![0; RECV_BUF],
            tx: Writer::new(),
            max_chunk,
            procfs,
        };
        client.family = client.resolve_family(family_name)?;
        Ok(client)
    }

    /// Sets how long each receive may wait for the kernel (default 10 s).
    ///
    /// Fails when the socket option cannot be set.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.sock.set_timeout(timeout).map_err(|source| Error::Io {
            context: Context::new(Action::Connect),
            source,
        })?;
        self.timeout = timeout;
        Ok(())
    }

    /// Caps the number of mutations sent per `sendmsg` (it never exceeds what the socket
    /// buffers can take). Mostly for tests and benchmarks.
    pub fn set_max_batch(&mut self, max: usize) {
        let safe = (self.sock.rcvbuf() / ANSWER_BUDGET)
            .min(self.sock.sndbuf() / 2 / REQUEST_BUDGET)
            .clamp(1, MAX_CHUNK);
        self.max_chunk = max.clamp(1, safe);
    }

    /// The number of mutations sent per `sendmsg` at most.
    pub fn max_batch(&self) -> usize {
        self.max_chunk
    }

    /// The generic netlink family id of IPVS in this kernel.
    pub fn family_id(&self) -> u16 {
        self.family
    }

    fn resolve_family(&mut self, name: &str) -> Result<u16> {
        let context = Context::new(Action::Connect);
        let ctrl: u16 = GenlId::Ctrl.into();
        let name = name.to_owned();
        let answer = self
            .round_trip(1, false, &mut |w, seq, _| {
                let m = w.begin_genl(
                    ctrl,
                    NLM_F_REQUEST | NLM_F_ACK,
                    seq,
                    CtrlCmd::Getfamily.into(),
                    CTRL_VERSION,
                );
                w.string(CtrlAttr::FamilyName.into(), &name);
                w.end_msg(m);
            })
            .pop();
        match answer {
            Some(Answer::Ok { payloads, .. }) => {
                let payload = payloads
                    .first()
                    .ok_or(DecodeError::Missing("family reply"))
                    .and_then(|p| family_id_from(p))
                    .map_err(|source| Error::Malformed {
                        context: context.clone(),
                        source,
                    })?;
                Ok(payload)
            }
            Some(Answer::Errno(nix::libc::ENOENT)) => Err(Error::Unavailable),
            Some(Answer::Errno(errno)) => Err(Error::from_errno(context, errno, None, None)),
            Some(Answer::Failed(f)) => Err(f.into_error(context, self.timeout)),
            None => Err(Error::Malformed {
                context,
                source: DecodeError::Missing("family reply"),
            }),
        }
    }

    fn reserve_seq(&mut self, n: usize) -> u32 {
        let base = self.seq;
        self.seq = self.seq.wrapping_add(u32::try_from(n).unwrap_or(u32::MAX));
        base
    }

    /// Sends `n` requests built by `build` in one `sendmsg` and collects their answers.
    ///
    /// With `fenced`, only the last request asks for an ACK: the kernel handles the
    /// messages of one `sendmsg` in order and answers a failure whether asked or not, so
    /// once the last request is answered, every earlier one without an error answer has
    /// succeeded. That saves one answer (an skb and a `recv`) per successful request.
    fn round_trip(
        &mut self,
        n: usize,
        fenced: bool,
        build: &mut dyn FnMut(&mut Writer, u32, usize),
    ) -> Vec<Answer> {
        let base = self.reserve_seq(n);
        self.tx.clear();
        for i in 0..n {
            let seq = base.wrapping_add(u32::try_from(i).unwrap_or(u32::MAX));
            build(&mut self.tx, seq, i);
        }
        let mut slots: Vec<Slot> = (0..n).map(|_| Slot::default()).collect();
        if let Err(e) = self.sock.send(self.tx.bytes()) {
            let f = Failure::Io(e);
            return slots.iter().map(|_| Answer::Failed(f.copy())).collect();
        }
        let mut open = n;
        while open > 0 {
            let len = match self.sock.recv(&mut self.rx) {
                Ok(len) => len,
                Err(e) => {
                    let f = match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Timeout,
                        _ => Failure::Io(e),
                    };
                    fail_open(&mut slots, &f);
                    break;
                }
            };
            if let Err(e) = dispatch(&self.rx[..len], base, &mut slots, &mut open) {
                fail_open(&mut slots, &Failure::Malformed(e));
                break;
            }
            if fenced && slots.last().is_some_and(|s| s.done.is_some()) {
                for s in slots.iter_mut().filter(|s| s.done.is_none()) {
                    s.done = Some(Answer::Ok {
                        payloads: Vec::new(),
                        interrupted: false,
                    });
                }
                break;
            }
        }
        slots
            .into_iter()
            .map(|s| s.done.unwrap_or(Answer::Failed(Failure::Timeout)))
            .collect()
    }

    /// Applies `ops` in order, many per `sendmsg`, and returns one result per operation,
    /// in the same order. A failing operation does not stop the ones after it.
    ///
    /// Operations the crate can tell are invalid are not sent ([`Error::Invalid`]).
    pub fn apply(&mut self, ops: &[Operation]) -> Vec<Result<()>> {
        self.apply_chunked(ops, self.max_chunk)
    }

    /// Applies `ops` one at a time: one message, then wait for its ACK, like moby/ipvs
    /// (kube-proxy). Same results as [`Client::apply`], more round trips.
    pub fn apply_unbatched(&mut self, ops: &[Operation]) -> Vec<Result<()>> {
        self.apply_chunked(ops, 1)
    }

    fn apply_chunked(&mut self, ops: &[Operation], chunk: usize) -> Vec<Result<()>> {
        let mut results: Vec<Option<Result<()>>> = Vec::with_capacity(ops.len());
        let mut to_send = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            match codec::validate(op) {
                Ok(()) => {
                    results.push(None);
                    to_send.push(i);
                }
                Err(source) => results.push(Some(Err(Error::Invalid {
                    context: op.context(),
                    source,
                }))),
            }
        }
        let family = self.family;
        for indices in to_send.chunks(chunk.max(1)) {
            let last = indices.len() - 1;
            let answers = self.round_trip(indices.len(), true, &mut |w, seq, i| {
                let flags = if i == last { NLM_F_ACK } else { 0 };
                encode_operation(w, family, seq, flags, &ops[indices[i]]);
            });
            for (&i, answer) in indices.iter().zip(answers) {
                results[i] = Some(self.op_result(&ops[i], answer));
            }
        }
        results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
    }

    fn op_result(&self, op: &Operation, answer: Answer) -> Result<()> {
        match answer {
            Answer::Ok { .. } => Ok(()),
            Answer::Errno(errno) => {
                let (sched, engine) = match op {
                    Operation::AddService(s) | Operation::UpdateService(s) => (
                        Some(s.scheduler.name()),
                        s.engine.as_ref().map(|e| e.as_str()),
                    ),
                    _ => (None, None),
                };
                Err(Error::from_errno(op.context(), errno, sched, engine))
            }
            Answer::Failed(f) => Err(f.into_error(op.context(), self.timeout)),
        }
    }

    fn one(&mut self, op: Operation) -> Result<()> {
        self.apply_chunked(std::slice::from_ref(&op), 1)
            .pop()
            .unwrap_or(Ok(()))
    }

    /// Creates a virtual service. Fails with [`Error::Exists`] when it exists,
    /// [`Error::UnknownScheduler`] when the kernel has no such scheduler.
    pub fn add_service(&mut self, service: &crate::types::Service) -> Result<()> {
        self.one(Operation::AddService(service.clone()))
    }

    /// Changes a virtual service's scheduler, flags and persistence. Fails with
    /// [`Error::NotFound`] when it does not exist.
    pub fn update_service(&mut self, service: &crate::types::Service) -> Result<()> {
        self.one(Operation::UpdateService(service.clone()))
    }

    /// Deletes a virtual service and its destinations. Fails with [`Error::NotFound`]
    /// when it does not exist.
    pub fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.one(Operation::DeleteService(*key))
    }

    /// Adds a destination to a virtual service. Fails with [`Error::Exists`],
    /// [`Error::NotFound`] (no such service) or [`Error::InvalidArgument`] (for example
    /// an address with no route in the namespace).
    pub fn add_destination(
        &mut self,
        service: &ServiceKey,
        destination: &crate::types::Destination,
    ) -> Result<()> {
        self.one(Operation::AddDestination {
            service: *service,
            destination: destination.clone(),
        })
    }

    /// Changes a destination. Fails with [`Error::NotFound`] when the service or the
    /// destination does not exist.
    pub fn update_destination(
        &mut self,
        service: &ServiceKey,
        destination: &crate::types::Destination,
    ) -> Result<()> {
        self.one(Operation::UpdateDestination {
            service: *service,
            destination: destination.clone(),
        })
    }

    /// Removes a destination. Fails with [`Error::NotFound`] when the service or the
    /// destination does not exist.
    pub fn delete_destination(
        &mut self,
        service: &ServiceKey,
        addr: std::net::IpAddr,
        port: u16,
    ) -> Result<()> {
        self.one(Operation::DeleteDestination {
            service: *service,
            addr,
            port,
        })
    }

    /// Deletes every virtual service of the namespace.
    pub fn flush(&mut self) -> Result<()> {
        self.one(Operation::Flush)
    }

    /// Zeroes the counters of one service, or of every service with `None`.
    pub fn zero(&mut self, service: Option<&ServiceKey>) -> Result<()> {
        self.one(Operation::Zero(service.copied()))
    }

    /// Sets the connection timeouts; zero fields are left unchanged.
    pub fn set_timeouts(&mut self, timeouts: &Timeouts) -> Result<()> {
        self.one(Operation::SetTimeouts(*timeouts))
    }

    /// Reads the connection timeouts.
    pub fn timeouts(&mut self) -> Result<Timeouts> {
        let context = Context::new(Action::GetTimeouts);
        let payloads = self.query(&Query::Timeouts, &context)?;
        first_decoded(&payloads, &context, decode_timeouts)
    }

    /// Reads the IPVS version and the connection table size.
    pub fn info(&mut self) -> Result<Info> {
        let context = Context::new(Action::GetInfo);
        let payloads = self.query(&Query::Info, &context)?;
        first_decoded(&payloads, &context, decode_info)
    }

    /// Lists the virtual services, without their destinations.
    pub fn services(&mut self) -> Result<Vec<ServiceEntry>> {
        let context = Context::new(Action::ListServices);
        let payloads = self.dump(&Query::Services, &context)?;
        payloads
            .iter()
            .map(|p| {
                decode_service(p)
                    .map(|(service, stats)| ServiceEntry {
                        service,
                        stats,
                        destinations: Vec::new(),
                    })
                    .map_err(|source| Error::Malformed {
                        context: context.clone(),
                        source,
                    })
            })
            .collect()
    }

    /// Reads one virtual service with its destinations; `None` when it does not exist.
    pub fn service(&mut self, key: &ServiceKey) -> Result<Option<ServiceEntry>> {
        let context = Context::service(Action::GetService, *key);
        let payloads = match self.query(&Query::Service(key), &context) {
            Ok(p) => p,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let (service, stats) = first_decoded(&payloads, &context, decode_service)?;
        let destinations = self.destinations(key)?;
        Ok(Some(ServiceEntry {
            service,
            stats,
            destinations,
        }))
    }

    /// Lists the destinations of a virtual service, newest first (the kernel's order).
    /// A service that does not exist has none.
    pub fn destinations(&mut self, key: &ServiceKey) -> Result<Vec<DestinationEntry>> {
        let context = Context::service(Action::ListDestinations, *key);
        let payloads = self.dump(&Query::Destinations(key), &context)?;
        decode_destinations(&payloads, key, &context)
    }

    /// Reads the whole table: every virtual service with its destinations.
    ///
    /// One dump of the services, then one dump of destinations per service. Dumps cannot
    /// share a `sendmsg`: a dump that produced anything stays open until the next read,
    /// and the kernel answers any other dump request on the socket meanwhile with
    /// `EBUSY` (seen in the test VM on 6.1).
    pub fn table(&mut self) -> Result<Table> {
        self.table_with(Detail::Full)
    }

    /// Reads the whole table with `detail` for the destinations.
    ///
    /// [`Detail::Listing`] reads the services over netlink and all destinations from
    /// `/proc/net/ip_vs` in one pass, instead of a dump per service: at 10,000 services
    /// that is most of the time a listing takes. A service the file does not list (it
    /// came after the read) or cannot tell apart (an IPv4 and an IPv6 fwmark service
    /// with the same mark) is read over netlink, as is everything when the file cannot
    /// be read.
    pub fn table_with(&mut self, detail: Detail) -> Result<Table> {
        let file = match detail {
            Detail::Listing => self.procfs.take(),
            Detail::Full => None,
        };
        let (mut services, mut listed) = match file {
            None => (self.services()?, None),
            Some(mut file) => {
                // Two independent reads of the kernel, each long on a large table (the
                // file is formatted a page per read): side by side they cost the longer.
                let (services, listed) = std::thread::scope(|s| {
                    let reader = s.spawn(|| file.read().ok());
                    let services = self.services();
                    (services, reader.join().ok().flatten())
                });
                self.procfs = Some(file);
                (services?, listed)
            }
        };
        for entry in &mut services {
            let key = &entry.service.key;
            entry.destinations = match listed.as_mut().and_then(|t| t.take(key)) {
                Some(destinations) => destinations,
                None => self.destinations(key)?,
            };
        }
        Ok(Table { services })
    }

    /// A `doit` query: one reply message and an ACK.
    fn query(&mut self, q: &Query<'_>, context: &Context) -> Result<Vec<Vec<u8>>> {
        let family = self.family;
        let answer = self
            .round_trip(1, false, &mut |w, seq, _| encode_query(w, family, seq, q))
            .pop()
            .unwrap_or(Answer::Failed(Failure::Timeout));
        match answer {
            Answer::Ok { payloads, .. } => Ok(payloads),
            Answer::Errno(errno) => Err(Error::from_errno(context.clone(), errno, None, None)),
            Answer::Failed(f) => Err(f.into_error(context.clone(), self.timeout)),
        }
    }

    /// A dump, redone when the kernel flags it interrupted.
    fn dump(&mut self, q: &Query<'_>, context: &Context) -> Result<Vec<Vec<u8>>> {
        for _ in 0..DUMP_ATTEMPTS {
            let family = self.family;
            let answer = self
                .round_trip(1, false, &mut |w, seq, _| encode_query(w, family, seq, q))
                .pop()
                .unwrap_or(Answer::Failed(Failure::Timeout));
            match answer {
                Answer::Ok {
                    interrupted: true, ..
                } => continue,
                Answer::Ok { payloads, .. } => return Ok(payloads),
                Answer::Errno(errno) => {
                    return Err(Error::from_errno(context.clone(), errno, None, None))
                }
                Answer::Failed(f) => return Err(f.into_error(context.clone(), self.timeout)),
            }
        }
        Err(Error::DumpInterrupted {
            context: context.clone(),
            attempts: DUMP_ATTEMPTS,
        })
    }
}

fn connect_error(source: io::Error) -> Error {
    Error::Io {
        context: Context::new(Action::Connect),
        source,
    }
}

fn fail_open(slots: &mut [Slot], f: &Failure) {
    for s in slots.iter_mut().filter(|s| s.done.is_none()) {
        s.done = Some(Answer::Failed(f.copy()));
    }
}

/// Routes the messages of one datagram to the requests they answer. Messages for other
/// sequence numbers (answers to requests given up on earlier) are skipped.
fn dispatch(
    datagram: &[u8],
    base: u32,
    slots: &mut [Slot],
    open: &mut usize,
) -> Result<(), DecodeError> {
    for msg in wire::messages(datagram) {
        let msg = msg?;
        let Some(slot) = usize::try_from(msg.seq.wrapping_sub(base))
            .ok()
            .and_then(|i| slots.get_mut(i))
        else {
            continue;
        };
        if slot.done.is_some() {
            continue;
        }
        if msg.flags & NLM_F_DUMP_INTR != 0 {
            slot.interrupted = true;
        }
        let finished = match msg.ty {
            NLMSG_NOOP => continue,
            NLMSG_ERROR => match wire::error_code(msg.payload)? {
                0 => None,
                code => Some(Answer::Errno(code.saturating_neg())),
            },
            NLMSG_DONE => match wire::done_code(msg.payload) {
                code if code < 0 => Some(Answer::Errno(code.saturating_neg())),
                _ => None,
            },
            NLMSG_OVERRUN => Some(Answer::Failed(Failure::Io(io::Error::from_raw_os_error(
                nix::libc::ENOBUFS,
            )))),
            _ => {
                slot.payloads.push(msg.payload.to_vec());
                continue;
            }
        };
        slot.done = Some(finished.unwrap_or_else(|| Answer::Ok {
            payloads: std::mem::take(&mut slot.payloads),
            interrupted: slot.interrupted,
        }));
        *open = open.saturating_sub(1);
    }
    Ok(())
}

fn family_id_from(payload: &[u8]) -> Result<u16, DecodeError> {
    let g = wire::genl(payload)?;
    for a in wire::attrs(g.attrs) {
        let (ty, v) = a?;
        if CtrlAttr::from(ty) == CtrlAttr::FamilyId {
            return wire::get_u16("family id", v);
        }
    }
    Err(DecodeError::Missing("family id"))
}

fn first_decoded<T>(
    payloads: &[Vec<u8>],
    context: &Context,
    decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
) -> Result<T> {
    payloads
        .first()
        .ok_or(DecodeError::Missing("reply"))
        .and_then(|p| decode(p))
        .map_err(|source| Error::Malformed {
            context: context.clone(),
            source,
        })
}

fn decode_destinations(
    payloads: &[Vec<u8>],
    key: &ServiceKey,
    context: &Context,
) -> Result<Vec<DestinationEntry>> {
    payloads
        .iter()
        .map(|p| {
            decode_destination(p, key.family()).map_err(|source| Error::Malformed {
                context: context.clone(),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A netlink message with the given header fields and payload.
    fn msg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(16 + payload.len()).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn ack(seq: u32, code: i32) -> Vec<u8> {
        let mut p = code.to_ne_bytes().to_vec();
        p.extend_from_slice(&[0; 16]);
        msg(NLMSG_ERROR, 0, seq, &p)
    }

    fn slots(n: usize) -> Vec<Slot> {
        (0..n).map(|_| Slot::default()).collect()
    }

    #[test]
    fn answers_reach_their_request_by_sequence_number_in_any_order() {
        let base = u32::MAX - 1; // sequence numbers wrap around
        let mut s = slots(3);
        let mut open = 3;
        let mut datagram = ack(base.wrapping_add(2), 0);
        datagram.extend(ack(base, -nix::libc::EEXIST));
        datagram.extend(ack(base.wrapping_add(1), 0));
        dispatch(&datagram, base, &mut s, &mut open).unwrap();
        assert_eq!(open, 0);
        assert!(matches!(s[0].done, Some(Answer::Errno(nix::libc::EEXIST))));
        assert!(matches!(s[1].done, Some(Answer::Ok { .. })));
        assert!(matches!(s[2].done, Some(Answer::Ok { .. })));
    }

    #[test]
    fn answers_to_abandoned_requests_are_ignored() {
        let mut s = slots(1);
        let mut open = 1;
        let mut datagram = ack(99, -nix::libc::EINVAL); // an earlier, timed-out request
        datagram.extend(ack(100, 0));
        dispatch(&datagram, 100, &mut s, &mut open).unwrap();
        assert_eq!(open, 0);
        assert!(matches!(s[0].done, Some(Answer::Ok { .. })));
    }

    #[test]
    fn dump_parts_are_collected_until_done_and_interruptions_noted() {
        let mut s = slots(1);
        let mut open = 1;
        let mut datagram = msg(0x20, 0x2, 5, &[1, 1, 0, 0]);
        datagram.extend(msg(0x20, 0x2 | NLM_F_DUMP_INTR, 5, &[1, 1, 0, 0]));
        dispatch(&datagram, 5, &mut s, &mut open).unwrap();
        assert_eq!(open, 1, "no DONE yet");
        dispatch(
            &msg(NLMSG_DONE, 0x2, 5, &0i32.to_ne_bytes()),
            5,
            &mut s,
            &mut open,
        )
        .unwrap();
        match &s[0].done {
            Some(Answer::Ok {
                payloads,
                interrupted,
            }) => {
                assert_eq!(payloads.len(), 2);
                assert!(interrupted);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_dump_that_fails_reports_the_errno_in_done() {
        let mut s = slots(1);
        let mut open = 1;
        let done = msg(NLMSG_DONE, 0x2, 7, &(-nix::libc::EMSGSIZE).to_ne_bytes());
        dispatch(&done, 7, &mut s, &mut open).unwrap();
        assert!(matches!(
            s[0].done,
            Some(Answer::Errno(nix::libc::EMSGSIZE))
        ));
    }

    #[test]
    fn a_request_the_kernel_never_answers_times_out_instead_of_hanging() {
        // The generic netlink controller exists on every Linux kernel; a message without
        // NLM_F_REQUEST is silently dropped by the kernel, so it is never answered.
        let mut client = Client::with_family_name("nlctrl").expect("netlink is available");
        client.set_timeout(Duration::from_millis(200)).unwrap();
        let ctrl: u16 = GenlId::Ctrl.into();
        let started = std::time::Instant::now();
        let answers = client.round_trip(2, false, &mut |w, seq, _| {
            let m = w.begin_genl(ctrl, 0, seq, CtrlCmd::Getfamily.into(), CTRL_VERSION);
            w.end_msg(m);
        });
        assert!(answers
            .iter()
            .all(|a| matches!(a, Answer::Failed(Failure::Timeout))));
        assert!(started.elapsed() < Duration::from_secs(5));
        // The client is still usable afterwards.
        assert!(client.family_id() > 0);
    }

    proptest! {
        #[test]
        fn dispatching_arbitrary_datagrams_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            base in any::<u32>(),
            n in 1usize..4,
        ) {
            let mut s = slots(n);
            let mut open = n;
            let _ = dispatch(&bytes, base, &mut s, &mut open);
            prop_assert!(open <= n);
        }

        #[test]
        fn dispatching_well_framed_garbage_never_panics(
            parts in proptest::collection::vec(
                (any::<u16>(), any::<u16>(), 0u32..4, proptest::collection::vec(any::<u8>(), 0..40)),
                0..6,
            ),
        ) {
            let mut datagram = Vec::new();
            for (ty, flags, seq, payload) in &parts {
                datagram.extend(msg(*ty % 8, *flags, *seq, payload));
            }
            let mut s = slots(3);
            let mut open = 3;
            let _ = dispatch(&datagram, 0, &mut s, &mut open);
            prop_assert!(open <= 3);
        }
    }
}
