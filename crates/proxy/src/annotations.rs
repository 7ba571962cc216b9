//! Per-Service scheduler annotations.
//!
//! kipvs reads `ipvs.kipvs.io/scheduler` and `ipvs.kipvs.io/scheduler-flags`; when a
//! kipvs key is absent it honours kube-router's `kube-router.io/service.scheduler` and
//! `kube-router.io/service.schedflags`, so clusters can migrate without edits. A bad value
//! is ignored with a warning: the configured default applies instead.

use std::collections::BTreeMap;

use kipvs_ipvs::{Scheduler, ServiceFlags};

/// kipvs' scheduler annotation (`rr`, `wrr`, `lc`, `wlc`, `lblc`, `lblcr`, `dh`, `sh`,
/// `sed`, `nq`, `mh`, `fo`, `ovf`).
pub const SCHEDULER: &str = "ipvs.kipvs.io/scheduler";
/// kipvs' scheduler flags annotation (`sh-fallback`, `sh-port`, `mh-fallback`, `mh-port`).
pub const SCHEDULER_FLAGS: &str = "ipvs.kipvs.io/scheduler-flags";
/// kube-router's scheduler annotation, honoured for migration.
pub const KUBE_ROUTER_SCHEDULER: &str = "kube-router.io/service.scheduler";
/// kube-router's scheduler flags annotation (`flag-1`, `flag-2`, `flag-3`), honoured too.
pub const KUBE_ROUTER_SCHEDULER_FLAGS: &str = "kube-router.io/service.schedflags";

/// The scheduler flags a set of annotations asks for: the three scheduler bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SchedulerFlags {
    /// `sh-fallback` / `mh-fallback` / `flag-1` (`IP_VS_SVC_F_SCHED1`).
    pub fallback: bool,
    /// `sh-port` / `mh-port` / `flag-2` (`IP_VS_SVC_F_SCHED2`).
    pub port: bool,
    /// `flag-3` (`IP_VS_SVC_F_SCHED3`).
    pub sched3: bool,
}

impl SchedulerFlags {
    /// Whether no flag is set.
    pub fn is_empty(&self) -> bool {
        !(self.fallback || self.port || self.sched3)
    }

    /// Sets these bits in IPVS service flags.
    pub fn apply_to(&self, flags: &mut ServiceFlags) {
        flags.sched_fallback = self.fallback;
        flags.sched_port = self.port;
        flags.sched3 = self.sched3;
    }
}

/// What a Service's annotations ask of the scheduler; `None` fields take the configured
/// defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SchedulerChoice {
    /// The scheduler asked for.
    pub scheduler: Option<Scheduler>,
    /// The flags asked for.
    pub flags: Option<SchedulerFlags>,
}

/// Reads the scheduler annotations. Returns the choice and one message per bad value.
pub fn scheduler_choice(
    annotations: &BTreeMap<String, String>,
) -> (Option<SchedulerChoice>, Vec<String>) {
    let mut warnings = Vec::new();
    let scheduler = [SCHEDULER, KUBE_ROUTER_SCHEDULER]
        .into_iter()
        .find_map(|key| annotations.get(key).map(|v| (key, v)))
        .and_then(|(key, value)| match parse_scheduler(value) {
            Some(s) => Some(s),
            None => {
                warnings.push(format!(
                    "annotation {key}={value:?} names no IPVS scheduler; using the default"
                ));
                None
            }
        });
    let flags = [SCHEDULER_FLAGS, KUBE_ROUTER_SCHEDULER_FLAGS]
        .into_iter()
        .find_map(|key| annotations.get(key).map(|v| (key, v)))
        .map(|(key, value)| {
            let (flags, bad) = parse_flags(value);
            for token in bad {
                warnings.push(format!(
                    "annotation {key} flag {token:?} is unknown; ignored"
                ));
            }
            flags
        });
    if scheduler.is_none() && flags.is_none() {
        return (None, warnings);
    }
    (Some(SchedulerChoice { scheduler, flags }), warnings)
}

/// Parses a scheduler name; only the mainline kernel's schedulers are accepted.
pub fn parse_scheduler(value: &str) -> Option<Scheduler> {
    let value = value.trim();
    Scheduler::KNOWN.iter().find(|s| s.name() == value).cloned()
}

/// Parses a comma-separated flag list. Returns the flags and the tokens not understood.
pub fn parse_flags(value: &str) -> (SchedulerFlags, Vec<String>) {
    let mut flags = SchedulerFlags::default();
    let mut bad = Vec::new();
    for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match token {
            "sh-fallback" | "mh-fallback" | "flag-1" => flags.fallback = true,
            "sh-port" | "mh-port" | "flag-2" => flags.port = true,
            "flag-3" => flags.sched3 = true,
            other => bad.push(other.to_owned()),
        }
    }
    (flags, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn no_annotations_choose_nothing() {
        assert_eq!(scheduler_choice(&BTreeMap::new()), (None, vec![]));
    }

    #[test]
    fn kipvs_scheduler_and_flags_are_read() {
        let (choice, warnings) = scheduler_choice(&annotations(&[
            (SCHEDULER, "mh"),
            (SCHEDULER_FLAGS, "mh-fallback, mh-port"),
        ]));
        let choice = choice.unwrap();
        assert!(warnings.is_empty());
        assert_eq!(choice.scheduler, Some(Scheduler::MaglevHashing));
        assert_eq!(
            choice.flags,
            Some(SchedulerFlags {
                fallback: true,
                port: true,
                sched3: false
            })
        );
    }

    #[test]
    fn kipvs_keys_win_over_kube_router_keys() {
        let (choice, _) = scheduler_choice(&annotations(&[
            (SCHEDULER, "lc"),
            (KUBE_ROUTER_SCHEDULER, "sh"),
        ]));
        assert_eq!(choice.unwrap().scheduler, Some(Scheduler::LeastConnection));
    }

    #[test]
    fn kube_router_keys_are_honoured_for_migration() {
        let (choice, warnings) = scheduler_choice(&annotations(&[
            (KUBE_ROUTER_SCHEDULER, "sh"),
            (KUBE_ROUTER_SCHEDULER_FLAGS, "flag-1,flag-2,flag-3"),
        ]));
        let choice = choice.unwrap();
        assert!(warnings.is_empty());
        assert_eq!(choice.scheduler, Some(Scheduler::SourceHashing));
        assert_eq!(
            choice.flags,
            Some(SchedulerFlags {
                fallback: true,
                port: true,
                sched3: true
            })
        );
    }

    #[test]
    fn a_bad_scheduler_falls_back_to_the_default_with_a_warning() {
        let (choice, warnings) = scheduler_choice(&annotations(&[(SCHEDULER, "fastest")]));
        assert_eq!(choice, None);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("fastest"));
    }

    #[test]
    fn unknown_flags_are_ignored_with_a_warning_each() {
        let (choice, warnings) =
            scheduler_choice(&annotations(&[(SCHEDULER_FLAGS, "sh-port,turbo")]));
        assert!(choice.unwrap().flags.unwrap().port);
        assert_eq!(warnings.len(), 1);
    }
}
