//! Graceful termination of destinations that leave.
//!
//! A TCP destination that is no longer wanted is first set to weight 0 (no new
//! connections) and deleted once its active + inactive connections reach 0, however
//! long that takes, as kube-proxy does; one known to be idle is deleted at once. An
//! optional drain timeout (kipvs' own, off by default) deletes it after that long
//! even with connections left. Draining destinations are looked at again at least every
//! [`DRAIN_CHECK_INTERVAL`], kube-proxy's check interval. UDP and SCTP destinations are
//! deleted at once, and the Plan asks for their stale conntrack entries to be flushed
//! (otherwise DNS over UDP is black-holed for minutes). A destination that becomes
//! wanted again simply gets its weight back; so does a weight-0 destination found after
//! a restart.
//!
//! Time is passed in as a [`Moment`]; the core never reads a clock. Connection counts
//! come from a kernel dump: counts the core has not seen since it changed a destination
//! are unknown, and an unknown count never deletes anything.

use std::net::IpAddr;
use std::time::Duration;

use kipvs_ipvs::{ConnCounters, Protocol, ServiceKey};

use crate::hash::HashMap;

/// How long a draining destination may go without its connection counts being read
/// again: kube-proxy checks its graceful-termination list every minute.
pub const DRAIN_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// A point in time: the time since an origin the caller chooses (say, process start).
/// Only differences between moments matter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Moment(Duration);

impl Moment {
    /// The moment `since_origin` after the origin.
    pub fn from_duration(since_origin: Duration) -> Self {
        Moment(since_origin)
    }

    /// The moment `secs` seconds after the origin.
    pub fn from_secs(secs: u64) -> Self {
        Moment(Duration::from_secs(secs))
    }

    /// Time since the origin.
    pub fn as_duration(self) -> Duration {
        self.0
    }

    /// This moment plus `d`, saturating.
    pub fn after(self, d: Duration) -> Moment {
        Moment(self.0.saturating_add(d))
    }
}

/// What to do with a destination that is no longer wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Leave it as it is (draining at weight 0).
    Keep,
    /// Set its weight to 0.
    Quiesce,
    /// Delete it.
    Delete,
    /// Delete it and flush its conntrack entries (UDP, SCTP).
    DeleteAndFlush,
}

type DestId = (ServiceKey, IpAddr, u16);

/// The destinations draining at weight 0, and since when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drain {
    since: HashMap<DestId, Moment>,
    timeout: Option<Duration>,
    checked: Option<Moment>,
}

impl Drain {
    /// Tracks draining destinations until their connections end; with a `timeout`,
    /// deletes them after that long at the latest.
    pub fn new(timeout: Option<Duration>) -> Self {
        Drain {
            since: HashMap::default(),
            timeout,
            checked: None,
        }
    }

    /// Changes the drain timeout (`None`: drain until the connections end).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Notes that fresh connection counts were looked at `now`.
    pub(crate) fn checked(&mut self, now: Moment) {
        self.checked = Some(now);
    }

    /// Number of destinations draining.
    pub fn len(&self) -> usize {
        self.since.len()
    }

    /// Whether no destination is draining.
    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }

    /// When draining destinations must be looked at again: [`DRAIN_CHECK_INTERVAL`]
    /// after the last fresh counts (or after the first started draining), or when the
    /// first reaches the timeout, whichever comes first. `None` when nothing drains.
    pub fn next_deadline(&self) -> Option<Moment> {
        let first = *self.since.values().min()?;
        let check = self.checked.map_or(first, |c| c.max(first));
        let check = check.after(DRAIN_CHECK_INTERVAL);
        Some(match self.timeout {
            Some(t) => check.min(first.after(t)),
            None => check,
        })
    }

    /// Decides the fate of an unwanted destination with weight `weight` and connection
    /// counts `counters` (unknown: `None`) in a service of protocol `protocol`.
    pub(crate) fn decide(
        &mut self,
        id: DestId,
        protocol: Protocol,
        weight: u32,
        counters: Option<ConnCounters>,
        now: Moment,
    ) -> Decision {
        match protocol {
            Protocol::Udp | Protocol::Sctp => {
                self.since.remove(&id);
                return Decision::DeleteAndFlush;
            }
            Protocol::Tcp => {}
        }
        let idle = counters.is_some_and(|c| c.active == 0 && c.inactive == 0);
        if weight > 0 && !idle {
            self.since.insert(id, now);
            return Decision::Quiesce;
        }
        let since = *self.since.entry(id).or_insert(now);
        if idle || self.timeout.is_some_and(|t| now >= since.after(t)) {
            self.since.remove(&id);
            Decision::Delete
        } else {
            Decision::Keep
        }
    }

    /// Stops tracking a destination that is wanted again (or gone).
    pub(crate) fn forget(&mut self, id: &DestId) {
        self.since.remove(id);
    }

    /// Keeps tracking only the destinations `still_draining` says are.
    pub(crate) fn retain(
        &mut self,
        mut still_draining: impl FnMut(&ServiceKey, &IpAddr, u16) -> bool,
    ) {
        self.since.retain(|(k, a, p), _| still_draining(k, a, *p));
    }

    /// Stops tracking every destination of a deleted virtual service.
    pub(crate) fn forget_service(&mut self, key: &ServiceKey) {
        if !self.since.is_empty() {
            self.since.retain(|(k, _, _), _| k != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> DestId {
        (
            ServiceKey::Addr {
                protocol: Protocol::Tcp,
                addr: IpAddr::from([10, 96, 0, 1]),
                port: 80,
            },
            IpAddr::from([10, 244, 0, 1]),
            8080,
        )
    }

    fn busy() -> Option<ConnCounters> {
        Some(ConnCounters {
            active: 2,
            inactive: 1,
            persistent: 0,
        })
    }

    #[test]
    fn a_leaving_tcp_destination_is_quiesced_first() {
        let mut d = Drain::new(Some(Duration::from_secs(600)));
        assert_eq!(
            d.decide(id(), Protocol::Tcp, 1, busy(), Moment::from_secs(0)),
            Decision::Quiesce
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d.next_deadline(), Some(Moment::from_secs(60)));
        d.set_timeout(Some(Duration::from_secs(30)));
        assert_eq!(d.next_deadline(), Some(Moment::from_secs(30)));
    }

    #[test]
    fn a_draining_destination_is_deleted_when_its_connections_end() {
        let mut d = Drain::new(Some(Duration::from_secs(600)));
        d.decide(id(), Protocol::Tcp, 1, busy(), Moment::from_secs(0));
        assert_eq!(
            d.decide(id(), Protocol::Tcp, 0, busy(), Moment::from_secs(10)),
            Decision::Keep
        );
        assert_eq!(
            d.decide(
                id(),
                Protocol::Tcp,
                0,
                Some(ConnCounters::default()),
                Moment::from_secs(20)
            ),
            Decision::Delete
        );
        assert!(d.is_empty());
    }

    #[test]
    fn a_draining_destination_is_deleted_after_an_opt_in_timeout() {
        let mut d = Drain::new(Some(Duration::from_secs(600)));
        d.decide(id(), Protocol::Tcp, 1, busy(), Moment::from_secs(0));
        assert_eq!(
            d.decide(id(), Protocol::Tcp, 0, busy(), Moment::from_secs(599)),
            Decision::Keep
        );
        assert_eq!(
            d.decide(id(), Protocol::Tcp, 0, busy(), Moment::from_secs(600)),
            Decision::Delete
        );
    }

    #[test]
    fn a_leaving_destination_known_to_be_idle_is_deleted_at_once() {
        let mut d = Drain::new(Some(Duration::from_secs(600)));
        let idle = Some(ConnCounters::default());
        assert_eq!(
            d.decide(id(), Protocol::Tcp, 1, idle, Moment::from_secs(0)),
            Decision::Delete
        );
        assert!(d.is_empty());
    }

    #[test]
    fn unknown_connection_counts_never_delete_before_the_timeout() {
        let mut d = Drain::new(Some(Duration::from_secs(600)));
        d.decide(id(), Protocol::Tcp, 1, None, Moment::from_secs(0));
        assert_eq!(
            d.decide(id(), Protocol::Tcp, 0, None, Moment::from_secs(30)),
            Decision::Keep
        );
    }

    #[test]
    fn a_weight_zero_destination_found_after_a_restart_starts_draining_now() {
        let mut d = Drain::new(Some(Duration::from_secs(600)));
        assert_eq!(
            d.decide(id(), Protocol::Tcp, 0, busy(), Moment::from_secs(500)),
            Decision::Keep
        );
        assert_eq!(d.next_deadline(), Some(Moment::from_secs(560)));
        d.checked(Moment::from_secs(530));
        assert_eq!(d.next_deadline(), Some(Moment::from_secs(590)));
    }

    #[test]
    fn without_a_timeout_a_busy_destination_drains_for_as_long_as_it_takes() {
        let mut d = Drain::new(None);
        d.decide(id(), Protocol::Tcp, 1, busy(), Moment::from_secs(0));
        let a_week = 7 * 24 * 3600;
        assert_eq!(
            d.decide(id(), Protocol::Tcp, 0, busy(), Moment::from_secs(a_week)),
            Decision::Keep
        );
        // Still looked at every minute after the last fresh counts.
        d.checked(Moment::from_secs(a_week));
        assert_eq!(d.next_deadline(), Some(Moment::from_secs(a_week + 60)));
        assert_eq!(
            d.decide(
                id(),
                Protocol::Tcp,
                0,
                Some(ConnCounters::default()),
                Moment::from_secs(a_week + 60)
            ),
            Decision::Delete
        );
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn udp_and_sctp_destinations_are_deleted_at_once_with_a_flush() {
        let mut d = Drain::new(Some(Duration::from_secs(600)));
        for p in [Protocol::Udp, Protocol::Sctp] {
            assert_eq!(
                d.decide(id(), p, 1, busy(), Moment::from_secs(0)),
                Decision::DeleteAndFlush
            );
        }
        assert!(d.is_empty());
    }
}
