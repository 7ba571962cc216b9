//! The generic netlink socket, and entering another network namespace to open it.
//!
//! A socket belongs to the network namespace of the thread that created it, for its
//! whole life. [`in_netns`] creates it on a short-lived helper thread that enters the
//! target namespace, so the caller's thread never changes namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    bind, getsockopt, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags,
    NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

/// Receive buffer asked for (with `SO_RCVBUFFORCE` when privileged). The kernel doubles
/// it for bookkeeping; batches are sized from what the socket really got.
const WANT_RCVBUF: usize = 8 << 20;
/// Send buffer asked for: a batch is sent in one `sendmsg` and must fit.
const WANT_SNDBUF: usize = 4 << 20;

/// Runs `open` on a short-lived helper thread that has entered the network namespace of
/// `netns` (a file such as `/run/netns/NAME` or `/proc/PID/ns/net`). Whatever `open`
/// creates there (a socket, a procfs file) stays bound to that namespace.
///
/// Fails when the file cannot be opened, is not a network namespace, or `open` fails.
pub fn in_netns<T: Send>(
    netns: &Path,
    open: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let ns = File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(err)?;
            open()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns helper thread panicked")))
    })
}

/// A bound `NETLINK_GENERIC` socket with its buffer sizes and receive timeout.
#[derive(Debug)]
pub struct NetlinkSocket {
    fd: OwnedFd,
    rcvbuf: usize,
    sndbuf: usize,
}

fn err(e: nix::Error) -> io::Error {
    io::Error::from(e)
}

impl NetlinkSocket {
    /// Opens a socket in the calling thread's network namespace.
    ///
    /// Fails when the socket cannot be created or bound.
    pub fn open(timeout: Duration) -> io::Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkGeneric,
        )
        .map_err(err)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(err)?;
        // Forcing needs CAP_NET_ADMIN; without it the plain option caps at the sysctl
        // maximum. Either way the sizes read back below are what batching relies on.
        if setsockopt(&fd, sockopt::RcvBufForce, &WANT_RCVBUF).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &WANT_RCVBUF);
        }
        if setsockopt(&fd, sockopt::SndBufForce, &WANT_SNDBUF).is_err() {
            let _ = setsockopt(&fd, sockopt::SndBuf, &WANT_SNDBUF);
        }
        let rcvbuf = getsockopt(&fd, sockopt::RcvBuf).map_err(err)?;
        let sndbuf = getsockopt(&fd, sockopt::SndBuf).map_err(err)?;
        let sock = NetlinkSocket { fd, rcvbuf, sndbuf };
        sock.set_timeout(timeout)?;
        Ok(sock)
    }

    /// Bounds every receive: after `timeout` without data, `recv` fails with `WouldBlock`.
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = TimeVal::new(
            i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            i64::from(timeout.subsec_micros()),
        );
        setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv).map_err(err)
    }

    /// Receive buffer size in bytes, as the kernel accounts it.
    pub fn rcvbuf(&self) -> usize {
        self.rcvbuf
    }

    /// Send buffer size in bytes, as the kernel accounts it.
    pub fn sndbuf(&self) -> usize {
        self.sndbuf
    }

    /// Sends one buffer (one or many messages) in one `sendmsg`.
    pub fn send(&self, buf: &[u8]) -> io::Result<()> {
        let n = send(self.fd.as_raw_fd(), buf, MsgFlags::empty()).map_err(err)?;
        if n == buf.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("netlink sent {n} of {} bytes", buf.len()),
            ))
        }
    }

    /// Receives one datagram into `buf` and returns its length. Fails with
    /// `WouldBlock`/`TimedOut` after the timeout and with `InvalidData` when the datagram
    /// did not fit.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match recv(self.fd.as_raw_fd(), buf, MsgFlags::MSG_TRUNC) {
                Ok(n) if n > buf.len() => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("netlink datagram of {n} bytes truncated to {}", buf.len()),
                    ))
                }
                Ok(n) => return Ok(n),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(err(e)),
            }
        }
    }
}
