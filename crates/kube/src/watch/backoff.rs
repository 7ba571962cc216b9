//! Exponential backoff with jitter, capped: how long a watcher waits before it lists
//! again after an error.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

/// Delays that double from `initial` up to `max`, each shortened by a random part of
/// up to half (so that every kipvs in a cluster does not return to the API server in
/// the same instant).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Option<Duration>,
    random: RandomState,
    draws: u64,
}

impl Backoff {
    /// A backoff starting at `initial`, never above `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            current: None,
            random: RandomState::new(),
            draws: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let full = match self.current {
            None => self.initial,
            Some(current) => current.saturating_mul(2).min(self.max),
        };
        self.current = Some(full);
        self.draws = self.draws.wrapping_add(1);
        let nanos = u64::try_from(full.as_nanos()).unwrap_or(u64::MAX);
        let half = nanos / 2;
        let jitter = self.random.hash_one(self.draws) % half.saturating_add(1);
        Duration::from_nanos(nanos - jitter)
    }

    /// Starts over from `initial`.
    pub fn reset(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_start_over_after_reset() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(350));
        let delays: Vec<Duration> = (0..5).map(|_| backoff.next_delay()).collect();
        let caps = [ms(100), ms(200), ms(350), ms(350), ms(350)];
        for (delay, cap) in delays.iter().zip(caps) {
            assert!(*delay <= cap && *delay >= cap / 2, "{delay:?} vs {cap:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= ms(100));
    }
}
