//! Pure decisions of the guest supervisor: which guests to start, adopt or stop given the running
//! instances and the guests on the machine, and what happens to a service that exits.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::image::RestartPolicy;

/// A guest the supervisor knows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestPhase {
    /// Started (or adopted) by this supervisor and watched.
    Supervised,
    /// Found on disk at start (a record of an earlier run), not yet adopted.
    Found,
    /// Being stopped.
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum GuestChange {
    /// Start the guest of a Running instance that has none.
    Start(String),
    /// Take over a guest an earlier run of the local cloud started: its live services are kept.
    Adopt(String),
    /// Stop the guest of an instance that is gone (or no longer Running).
    Stop(String),
}

/// What to do so that exactly the Running instances have a guest. A guest being stopped is left to
/// finish; an instance whose guest is stopping gets a new one only after (instance IDs are never
/// reused, so this does not happen with the API as it is).
pub fn plan(running: &BTreeSet<String>, live: &BTreeMap<String, GuestPhase>) -> Vec<GuestChange> {
    let mut changes = Vec::new();
    for id in running {
        match live.get(id) {
            None => changes.push(GuestChange::Start(id.clone())),
            Some(GuestPhase::Found) => changes.push(GuestChange::Adopt(id.clone())),
            Some(GuestPhase::Supervised | GuestPhase::Stopping) => {}
        }
    }
    for (id, phase) in live {
        if !running.contains(id) && matches!(phase, GuestPhase::Supervised | GuestPhase::Found) {
            changes.push(GuestChange::Stop(id.clone()));
        }
    }
    changes
}

/// What follows a service's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Start it again after this back-off.
    Restart(Duration),
    /// Leave it down; `ok` says whether it ended well (later services may start after a
    /// successful one-shot).
    Finished { ok: bool },
}

/// A service that ran at least this long counts as healthy: its back-off starts over.
pub const HEALTHY_RUN: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `success` is `None` when the exit status is unknown (an adopted process is not our child):
/// that counts as a failure. `failures` is the number of failed runs in a row before this one.
pub fn after_exit(policy: RestartPolicy, success: Option<bool>, ran_for: Duration, failures: u32) -> (AfterExit, u32) {
    let ok = success == Some(true);
    if ok || policy == RestartPolicy::No {
        return (AfterExit::Finished { ok }, if ok { 0 } else { failures + 1 });
    }
    let failures = if ran_for >= HEALTHY_RUN { 0 } else { failures };
    (AfterExit::Restart(backoff(failures)), failures + 1)
}

/// 0.5 s, 1 s, 2 s, … up to 30 s.
pub fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1u32 << failures.min(16)).min(MAX_BACKOFF)
}

/// The start time (field 22, clock ticks since boot) of a process from its `/proc/<pid>/stat`
/// line, and whether it is a zombie. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted after the last ')'.
pub fn parse_stat(stat: &str) -> Option<(u64, bool)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 is fields[19].
    let zombie = matches!(fields.first(), Some(&"Z") | Some(&"X"));
    Some((fields.get(19)?.parse().ok()?, zombie))
}


#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn running_instances_get_a_guest_and_gone_ones_lose_it() {
        let live: BTreeMap<String, GuestPhase> =
            [("i-old", GuestPhase::Supervised), ("i-keep", GuestPhase::Supervised), ("i-found", GuestPhase::Found), ("i-orphan", GuestPhase::Found), ("i-going", GuestPhase::Stopping)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        let changes = plan(&set(&["i-new", "i-keep", "i-found"]), &live);
        assert_eq!(
            changes,
            vec![
                GuestChange::Adopt("i-found".into()),
                GuestChange::Start("i-new".into()),
                GuestChange::Stop("i-old".into()),
                GuestChange::Stop("i-orphan".into()),
            ]
        );
    }

    #[test]
    fn a_stopping_guest_is_left_to_finish() {
        let live = [("i-1".to_string(), GuestPhase::Stopping)].into_iter().collect();
        assert!(plan(&set(&["i-1"]), &live).is_empty());
        assert!(plan(&set(&[]), &live).is_empty());
    }

    #[test]
    fn nothing_changes_when_guests_match() {
        let live = [("i-1".to_string(), GuestPhase::Supervised)].into_iter().collect();
        assert!(plan(&set(&["i-1"]), &live).is_empty());
    }

    #[test]
    fn failures_restart_with_a_growing_back_off_and_success_is_final() {
        let quick = Duration::from_secs(1);
        assert_eq!(after_exit(RestartPolicy::OnFailure, Some(false), quick, 0), (AfterExit::Restart(Duration::from_millis(500)), 1));
        assert_eq!(after_exit(RestartPolicy::OnFailure, Some(false), quick, 1), (AfterExit::Restart(Duration::from_secs(1)), 2));
        assert_eq!(after_exit(RestartPolicy::OnFailure, None, quick, 3), (AfterExit::Restart(Duration::from_secs(4)), 4));
        assert_eq!(after_exit(RestartPolicy::OnFailure, Some(false), quick, 40).0, AfterExit::Restart(Duration::from_secs(30)));
        // A long healthy run starts the back-off over.
        assert_eq!(after_exit(RestartPolicy::OnFailure, Some(false), HEALTHY_RUN, 5), (AfterExit::Restart(Duration::from_millis(500)), 1));
        assert_eq!(after_exit(RestartPolicy::OnFailure, Some(true), quick, 2).0, AfterExit::Finished { ok: true });
        assert_eq!(after_exit(RestartPolicy::No, Some(false), quick, 0).0, AfterExit::Finished { ok: false });
        assert_eq!(after_exit(RestartPolicy::No, Some(true), quick, 0).0, AfterExit::Finished { ok: true });
    }

    #[test]
    fn stat_lines_give_the_start_time_even_with_odd_command_names() {
        let line = "4242 (a b) c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000000 100 18446744073709551615";
        assert_eq!(parse_stat(line), Some((987654, false)));
        let zombie = "7 (sh) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert_eq!(parse_stat(zombie), Some((55, true)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

}
