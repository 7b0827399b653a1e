//! When to send a failed request again, and how long to wait first.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 8, base_delay: Duration::from_millis(50), max_delay: Duration::from_secs(5) }
    }
}

impl RetryPolicy {
    /// Exponential backoff with "equal jitter": half the step is fixed, half random, so retries of
    /// many clients spread out but none retries immediately. `jitter` is uniform in [0, 1).
    pub fn delay(&self, failed_attempts: u32, jitter: f64) -> Duration {
        let exp = failed_attempts.saturating_sub(1).min(20);
        let step = self.base_delay.saturating_mul(1u32 << exp).min(self.max_delay);
        let half = step / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let p = RetryPolicy { max_attempts: 10, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay(2, 0.0), Duration::from_millis(100));
        assert_eq!(p.delay(3, 1.0), Duration::from_millis(400));
        assert_eq!(p.delay(9, 1.0), Duration::from_secs(1));
        assert_eq!(p.delay(60, 0.5), Duration::from_millis(750));
    }
}
