//! kube-proxy's health rule, as a value: kipvs is healthy unless a change has waited
//! longer than the health timeout (2 x syncPeriod) without being applied. `/healthz`
//! also turns unhealthy while this node is being deleted, so load balancers stop sending
//! it traffic; `/livez` ignores the node. `/readyz` (kipvs' own, for a startup probe)
//! answers 200 once the kernel has reflected the cluster at least once since start.
//!
//! Time is passed in; the servers read the clock.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use kipvs_ipvs::Family;
use serde::Serialize;

use super::ip_family;

/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// What the health endpoints report on.
#[derive(Debug, Clone)]
pub struct ProxyHealth {
    timeout: Duration,
    last_updated: Option<SystemTime>,
    oldest_pending: Option<SystemTime>,
    node_eligible: bool,
    families: Vec<Family>,
}

/// One answer of `/healthz` or `/livez`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthAnswer {
    /// 200 or 503.
    pub status: u16,
    /// The JSON body, in kube-proxy's layout.
    pub body: String,
}

impl ProxyHealth {
    /// Health with the given timeout (kube-proxy uses 2 x syncPeriod). The node counts as
    /// eligible until a Node event says otherwise.
    pub fn new(timeout: Duration) -> Self {
        ProxyHealth {
            timeout,
            last_updated: None,
            oldest_pending: None,
            node_eligible: true,
            families: Vec::new(),
        }
    }

    /// The address families kipvs programs: each gets its entry under `status` once
    /// the kernel has been brought up to date, as kube-proxy reports each of its
    /// per-family proxiers (kipvs syncs the families together, so they share one time).
    pub fn set_families(&mut self, families: &[Family]) {
        self.families = families.to_vec();
    }

    /// A change arrived that the kernel does not reflect yet.
    pub fn queued(&mut self, now: SystemTime) {
        self.oldest_pending.get_or_insert(now);
    }

    /// The kernel now reflects every change queued so far.
    pub fn updated(&mut self, now: SystemTime) {
        self.oldest_pending = None;
        self.last_updated = Some(now);
    }

    /// Records whether this node is eligible for traffic: not being deleted and not
    /// tainted for deletion by the autoscaler.
    pub fn set_node_eligible(&mut self, eligible: bool) {
        self.node_eligible = eligible;
    }

    /// Whether the proxy keeps up: no change has waited for `timeout` or longer.
    pub fn is_healthy(&self, now: SystemTime) -> bool {
        match self.oldest_pending {
            None => true,
            Some(queued) => now.duration_since(queued).unwrap_or_default() < self.timeout,
        }
    }

    /// When the kernel was last brought up to date, if ever.
    pub fn last_updated(&self) -> Option<SystemTime> {
        self.last_updated
    }

    /// The answer of `/healthz`.
    pub fn healthz(&self, now: SystemTime) -> HealthAnswer {
        let healthy = self.is_healthy(now) && self.node_eligible;
        self.answer(now, healthy, Some(self.node_eligible))
    }

    /// The answer of `/livez`.
    pub fn livez(&self, now: SystemTime) -> HealthAnswer {
        self.answer(now, self.is_healthy(now), None)
    }

    /// The answer of `/readyz`: healthy once a sync has brought the kernel up to date
    /// since start, and from then on. kube-proxy's endpoints are healthy while it starts,
    /// so a startup probe on them passes before the first sync; this one does not.
    pub fn readyz(&self, now: SystemTime) -> HealthAnswer {
        self.answer(now, self.last_updated.is_some(), None)
    }

    fn answer(&self, now: SystemTime, healthy: bool, node_eligible: Option<bool>) -> HealthAnswer {
        // As kube-proxy: a healthy answer reports lastUpdated as now (older releases
        // reported the last sync loop run, and clients rely on it being recent).
        let last_updated = if healthy {
            Some(now)
        } else {
            self.last_updated
        };
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Family {
            last_updated: String,
            healthy: bool,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            last_updated: String,
            current_time: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            node_eligible: Option<bool>,
            healthy: bool,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            status: BTreeMap<&'static str, Family>,
        }
        // Only families that have been brought up to date once, as kube-proxy.
        let status = match self.last_updated {
            Some(updated) => self
                .families
                .iter()
                .map(|&family| {
                    let entry = Family {
                        last_updated: go_json_time(updated),
                        healthy: self.is_healthy(now),
                    };
                    (ip_family(family), entry)
                })
                .collect(),
            None => BTreeMap::new(),
        };
        let body = Body {
            last_updated: go_json_time(last_updated.unwrap_or(SystemTime::UNIX_EPOCH - GO_ZERO)),
            current_time: go_json_time(now),
            node_eligible,
            healthy,
            status,
        };
        HealthAnswer {
            status: if healthy { 200 } else { 503 },
            body: serde_json::to_string(&body).unwrap_or_default(),
        }
    }
}

/// From Go's zero time (0001-01-01T00:00:00Z, what kube-proxy writes for "never") to the
/// Unix epoch.
const GO_ZERO: Duration = Duration::from_secs(62_135_596_800);

/// A time as Go's `encoding/json` writes a `time.Time` in UTC (RFC 3339 with as many
/// fraction digits as needed: `2026-11-22T03:30:00.123456789Z`), as kube-proxy's health
/// answers carry them.
fn go_json_time(t: SystemTime) -> String {
    let t = time::OffsetDateTime::UNIX_EPOCH
        + match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(after) => time::Duration::try_from(after).unwrap_or(time::Duration::MAX),
            Err(before) => {
                -time::Duration::try_from(before.duration()).unwrap_or(time::Duration::MAX)
            }
        };
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn a_fresh_proxy_is_healthy() {
        let health = ProxyHealth::new(Duration::from_secs(60));
        assert_eq!(health.healthz(at(0)).status, 200);
        assert_eq!(health.livez(at(0)).status, 200);
    }

    #[test]
    fn a_change_waiting_past_the_timeout_makes_it_unhealthy() {
        let mut health = ProxyHealth::new(Duration::from_secs(60));
        health.updated(at(0));
        health.queued(at(10));
        health.queued(at(50)); // the oldest pending change counts
        assert!(health.is_healthy(at(69)));
        assert!(!health.is_healthy(at(70)));
        let answer = health.healthz(at(70));
        assert_eq!(answer.status, 503);
        assert!(
            answer
                .body
                .contains("\"lastUpdated\":\"2023-11-14T22:13:20Z\""),
            "{}",
            answer.body
        );
        health.updated(at(71));
        assert_eq!(health.healthz(at(72)).status, 200);
    }

    #[test]
    fn readyz_waits_for_the_first_sync_then_stays_healthy() {
        let mut health = ProxyHealth::new(Duration::from_secs(60));
        assert_eq!(health.readyz(at(0)).status, 503);
        health.queued(at(1));
        assert_eq!(health.readyz(at(2)).status, 503);
        assert_eq!(
            health.livez(at(2)).status,
            200,
            "kube-proxy's rule: healthy while starting"
        );
        health.updated(at(3));
        assert_eq!(health.readyz(at(4)).status, 200);
        health.queued(at(5));
        assert_eq!(
            health.readyz(at(500)).status,
            200,
            "only the first sync counts"
        );
        assert_eq!(health.livez(at(500)).status, 503);
    }

    #[test]
    fn a_node_being_deleted_fails_healthz_but_not_livez() {
        let mut health = ProxyHealth::new(Duration::from_secs(60));
        health.set_node_eligible(false);
        let healthz = health.healthz(at(0));
        assert_eq!(healthz.status, 503);
        assert!(
            healthz.body.contains("\"nodeEligible\":false"),
            "{}",
            healthz.body
        );
        assert_eq!(health.livez(at(0)).status, 200);
        assert!(!health.livez(at(0)).body.contains("nodeEligible"));
    }

    #[test]
    fn answers_carry_kube_proxys_fields_with_rfc3339_times() {
        let mut health = ProxyHealth::new(Duration::from_secs(60));
        health.set_families(&[Family::V4, Family::V6]);
        let at_ms = at(0) + Duration::from_millis(120);
        let body = health.healthz(at_ms).body;
        // Before the first sync: no status, and Go's zero time is never written.
        assert_eq!(
            body,
            r#"{"lastUpdated":"2023-11-14T22:13:20.12Z","currentTime":"2023-11-14T22:13:20.12Z","nodeEligible":true,"healthy":true}"#
        );
        health.updated(at(1));
        health.queued(at(2));
        // Fields in kube-proxy's order; families sorted, as Go writes a map.
        assert_eq!(
            health.livez(at(100)).body,
            r#"{"lastUpdated":"2023-11-14T22:13:21Z","currentTime":"2023-11-14T22:15:00Z","healthy":false,"status":{"IPv4":{"lastUpdated":"2023-11-14T22:13:21Z","healthy":false},"IPv6":{"lastUpdated":"2023-11-14T22:13:21Z","healthy":false}}}"#
        );
        let fresh = ProxyHealth::new(Duration::from_secs(60));
        let unhealthy = ProxyHealth {
            oldest_pending: Some(at(0)),
            ..fresh
        };
        assert!(
            unhealthy
                .livez(at(61))
                .body
                .starts_with(r#"{"lastUpdated":"0001-01-01T00:00:00Z","#),
            "never updated: Go's zero time"
        );
    }
}
