//! When to try again: exponential backoff with jitter, capped, within the
//! attempt limit. The message TTL is applied by the caller, which knows the
//! delivery's expiry.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// Delay before attempt `attempts + 1`, after `attempts` failures.
    /// Doubling from `base`, capped at `max`, then "equal jitter": a random
    /// point in the upper half, so retries of a burst spread out but never
    /// come back almost at once.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << exp).min(self.max);
        let half = full / 2;
        let jitter = rand::random::<f64>();
        half + half.mul_f64(jitter)
    }

    /// Whether a delivery that has failed `attempts` times may try again.
    pub fn may_retry(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
            max_attempts: 5,
        }
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let p = policy();
        for _ in 0..200 {
            let first = p.backoff(1);
            assert!(
                first >= Duration::from_secs(1) && first <= Duration::from_secs(2),
                "{first:?}"
            );
            let third = p.backoff(3);
            assert!(
                third >= Duration::from_secs(4) && third <= Duration::from_secs(8),
                "{third:?}"
            );
            let late = p.backoff(40);
            assert!(
                late >= Duration::from_secs(30) && late <= Duration::from_secs(60),
                "{late:?}"
            );
        }
    }

    #[test]
    fn the_attempt_limit_is_honoured() {
        let p = policy();
        assert!(p.may_retry(4));
        assert!(!p.may_retry(5));
    }
}
