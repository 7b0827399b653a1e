//! Logging, set up the same way in every daemon: to stderr (journald keeps it under systemd), as
//! text or JSON lines, the level from `BERTH_LOG` (`info` when unset; any `tracing` filter such as
//! `berth_agent=debug,info`). Spans are part of every line, so one pod's ADD can be followed by
//! its `trace_id` from the agent's gRPC call down to the cloud API call it made.
//!
//! Hot paths (a failing allocation retried by a runtime every second, a release queue that cannot
//! be drained) log through a [`LogLimiter`]: a burst of lines per key and window, then silence,
//! then one line that says how many were left out.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Installs the global subscriber. `json`: one JSON object per line.
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init()
    } else {
        builder.init()
    }
}

/// Admits at most `burst` lines per key in each `window`.
pub struct LogLimiter {
    window: Duration,
    burst: u32,
    keys: Mutex<HashMap<&'static str, Window>>,
}

struct Window {
    started: Instant,
    written: u32,
    /// Lines of this key left out since the last one written.
    suppressed: u64,
}

/// The limiter the daemons' hot paths share: 5 lines per key every 10 seconds.
pub static HOT: LazyLock<LogLimiter> =
    LazyLock::new(|| LogLimiter::new(Duration::from_secs(10), 5));

impl LogLimiter {
    pub fn new(window: Duration, burst: u32) -> LogLimiter {
        LogLimiter {
            window,
            burst: burst.max(1),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line of `key` may be written now: `Some(n)` with the number of lines of that key
    /// left out before it (to be logged with it), `None` to stay silent.
    pub fn admit(&self, key: &'static str) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    pub fn admit_at(&self, key: &'static str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let w = keys.entry(key).or_insert(Window {
            started: now,
            written: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(w.started) >= self.window {
            w.started = now;
            w.written = 0;
        }
        if w.written < self.burst {
            w.written += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// Logs at `level` through [`HOT`] under `key`: `limited!(warn, "allocate", error = %e, "no IP")`.
/// The line carries `suppressed`, how many lines of the key were left out before it.
#[macro_export]
macro_rules! limited {
    ($level:ident, $key:expr, $($rest:tt)+) => {
        if let Some(suppressed) = $crate::logging::HOT.admit($key) {
            tracing::$level!(suppressed, $($rest)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_silence_then_the_count_of_what_was_left_out() {
        let l = LogLimiter::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        let admitted: Vec<Option<u64>> = (0..7)
            .map(|i| l.admit_at("k", t0 + Duration::from_millis(i)))
            .collect();
        assert_eq!(
            admitted,
            [Some(0), Some(0), Some(0), None, None, None, None]
        );
        // Another key has its own budget.
        assert_eq!(l.admit_at("other", t0), Some(0));
        // The next window: the first line says four were left out, then the count starts again.
        assert_eq!(l.admit_at("k", t0 + Duration::from_secs(10)), Some(4));
        assert_eq!(l.admit_at("k", t0 + Duration::from_secs(11)), Some(0));
    }

    #[test]
    fn a_zero_burst_still_lets_one_line_through() {
        let l = LogLimiter::new(Duration::from_secs(1), 0);
        let t0 = Instant::now();
        assert_eq!(l.admit_at("k", t0), Some(0));
        assert_eq!(l.admit_at("k", t0), None);
    }
}
