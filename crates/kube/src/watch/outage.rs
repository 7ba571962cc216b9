//! Whether the API server is failing us: the watchers share one record, so an outage
//! is reported once, however many watchers notice it and however often they retry.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// The watchers that are failing now; an outage lasts while any is.
#[derive(Debug, Clone, Default)]
pub struct Outage(Arc<Mutex<BTreeSet<&'static str>>>);

impl Outage {
    /// Records that `watcher` failed. True when this begins an outage (no watcher was
    /// failing before): the one moment to report it.
    pub fn failed(&self, watcher: &'static str) -> bool {
        let mut failing = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let begins = failing.is_empty();
        failing.insert(watcher);
        begins
    }

    /// Whether `watcher` is failing now.
    pub fn is_failing(&self, watcher: &'static str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(watcher)
    }

    /// Records that `watcher` listed successfully again.
    pub fn recovered(&self, watcher: &'static str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(watcher);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_begins_once_and_ends_when_every_watcher_recovered() {
        let outage = Outage::default();
        assert!(outage.failed("services"));
        assert!(!outage.failed("nodes"));
        assert!(!outage.failed("services"));
        outage.recovered("services");
        assert!(!outage.failed("services"), "nodes still failing");
        outage.recovered("services");
        outage.recovered("nodes");
        assert!(outage.failed("nodes"), "a new outage");
    }
}
