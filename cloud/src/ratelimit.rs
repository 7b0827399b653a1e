//! Client-side rate limits: one token bucket per API action, so a storm of one call (say, pods
//! starting at once) cannot exhaust the account's quota of another.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A classic token bucket. Pure: the caller passes the clock.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_sec: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket { rate_per_sec: rate_per_sec.max(0.001), burst, tokens: burst, last: now }
    }

    /// Takes one token. Returns how long the caller must wait before its request may go; the token
    /// is reserved either way, so concurrent callers queue up in order.
    pub fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate_per_sec)
        }
    }
}

/// Rate and burst of one action's bucket.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limit {
    pub rate_per_sec: f64,
    pub burst: u32,
}

/// The buckets of every action, created on first use from the configured or default limit.
#[derive(Debug)]
pub struct RateLimiter {
    default: Limit,
    per_action: HashMap<String, Limit>,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl RateLimiter {
    pub fn new(default: Limit, per_action: HashMap<String, Limit>) -> Self {
        RateLimiter { default, per_action, buckets: Mutex::new(HashMap::new()) }
    }

    /// The wait before a request of `action` may be sent now.
    pub fn reserve(&self, action: &str, now: Instant) -> Duration {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let limit = self.per_action.get(action).copied().unwrap_or(self.default);
        buckets
            .entry(action.to_string())
            .or_insert_with(|| TokenBucket::new(limit.rate_per_sec, limit.burst, now))
            .take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        assert_eq!(b.take(t0), Duration::ZERO);
        assert_eq!(b.take(t0), Duration::ZERO);
        assert_eq!(b.take(t0), Duration::ZERO);
        let wait = b.take(t0);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // the next caller queues behind the one already waiting
        let wait = b.take(t0);
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-6, "{wait:?}");
        // after a second, the bucket is full again (capped at the burst)
        let t1 = t0 + Duration::from_secs(2);
        for _ in 0..3 {
            assert_eq!(b.take(t1), Duration::ZERO);
        }
        assert!(b.take(t1) > Duration::ZERO);
    }

    #[test]
    fn actions_have_their_own_buckets() {
        let t0 = Instant::now();
        let mut per = HashMap::new();
        per.insert("AssignPrivateIpAddresses".to_string(), Limit { rate_per_sec: 1.0, burst: 1 });
        let l = RateLimiter::new(Limit { rate_per_sec: 100.0, burst: 100 }, per);
        assert_eq!(l.reserve("AssignPrivateIpAddresses", t0), Duration::ZERO);
        assert!(l.reserve("AssignPrivateIpAddresses", t0) > Duration::from_millis(900));
        assert_eq!(l.reserve("DescribeNetworkInterfaces", t0), Duration::ZERO);
    }
}
