//! kube-proxy's health rule, as a value: kipvs is healthy unless a change has waited
//! longer than the health timeout (2 x syncPeriod) without being applied. `/healthz`
//! also turns unhealthy while this node is being deleted, so load balancers stop sending
//! it traffic; `/livez` ignores the node. `/readyz` (kipvs' own, for a startup probe)
//! answers 200 once the kernel has reflected the cluster at least once since start.
//!
//! Time is passed in; the servers read the clock.

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// What the health endpoints report on.
#[derive(Debug, Clone)]
pub struct ProxyHealth {
    timeout: Duration,
    last_updated: Option<SystemTime>,
    oldest_pending: Option<SystemTime>,
    node_eligible: bool,
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
        }
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
        struct Body {
            last_updated: String,
            current_time: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            node_eligible: Option<bool>,
            healthy: bool,
        }
        let body = Body {
            last_updated: last_updated.map_or_else(
                || go_time(SystemTime::UNIX_EPOCH, true),
                |t| go_time(t, false),
            ),
            current_time: go_time(now, false),
            node_eligible,
            healthy,
        };
        HealthAnswer {
            status: if healthy { 200 } else { 503 },
            body: serde_json::to_string(&body).unwrap_or_default(),
        }
    }
}

/// A time as Go's `time.Time.String()` prints it in UTC
/// (`2026-11-22 03:30:00.123456789 +0000 UTC`); Go's zero time for "never".
fn go_time(t: SystemTime, zero: bool) -> String {
    if zero {
        return "0001-01-01 00:00:00 +0000 UTC".to_owned();
    }
    let format = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:9] +0000 UTC"
    );
    time::OffsetDateTime::from(t)
        .format(&format)
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
                .contains("\"lastUpdated\":\"2023-11-14 22:13:20.000000000 +0000 UTC\""),
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
    fn answers_carry_kube_proxys_fields_with_go_timestamps() {
        let health = ProxyHealth::new(Duration::from_secs(60));
        let body: serde_json::Value = serde_json::from_str(&health.healthz(at(0)).body).unwrap();
        assert_eq!(
            body["currentTime"],
            "2023-11-14 22:13:20.000000000 +0000 UTC"
        );
        assert_eq!(body["lastUpdated"], body["currentTime"]);
        assert_eq!(body["nodeEligible"], true);
        assert_eq!(body["healthy"], true);
    }
}
