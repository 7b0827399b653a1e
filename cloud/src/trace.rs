//! One pod's ADD followed across processes: the CNI plugin makes a trace ID and sends it to the
//! agent in W3C `traceparent` form; the agent carries out the call inside a span with that
//! `trace_id` and makes it the task's current trace, so every cloud API call the call makes is
//! logged with it and sends it to the cloud in [`CLOUD_HEADER`] (the local cloud logs it beside
//! the action and its RequestId).

use std::future::Future;

/// HTTP header carrying the trace ID on cloud API requests.
pub const CLOUD_HEADER: &str = "x-berth-trace-id";

tokio::task_local! {
    static TRACE_ID: String;
}

/// A new random trace ID: 32 lowercase hex digits, never all zeros.
pub fn new_trace_id() -> String {
    loop {
        let id = format!("{:032x}", rand::random::<u128>());
        if id.bytes().any(|b| b != b'0') {
            return id;
        }
    }
}

/// `00-<trace-id>-<parent-id>-01` for a trace ID (a fresh parent span ID).
pub fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-{:016x}-01", rand::random::<u64>().max(1))
}

/// The trace ID of a `traceparent` value, when it is well formed (version 00, 32 and 16 lowercase
/// hex digits, neither all zeros).
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) && s.bytes().any(|b| b != b'0');
    (parts.next().is_none() && version == "00" && hex(trace, 32) && hex(parent, 16) && flags.len() == 2 && flags.bytes().all(|b| b.is_ascii_hexdigit())).then(|| trace.to_string())
}

/// Runs `fut` with `trace_id` as the current trace of its task.
pub async fn scope<F: Future>(trace_id: String, fut: F) -> F::Output {
    TRACE_ID.scope(trace_id, fut).await
}

/// The current task's trace ID, when it runs inside [`scope`].
pub fn current() -> Option<String> {
    TRACE_ID.try_with(Clone::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_bad_ones_are_refused() {
        let id = new_trace_id();
        assert_eq!(id.len(), 32);
        assert_eq!(trace_id_of(&traceparent(&id)).as_deref(), Some(id.as_str()));
        for bad in [
            "",
            "00",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad:?}");
        }
        assert_eq!(trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[tokio::test]
    async fn the_current_trace_is_the_scope_s_and_none_outside() {
        assert_eq!(current(), None);
        let inside = scope("abc".into(), async { current() }).await;
        assert_eq!(inside.as_deref(), Some("abc"));
    }
}
