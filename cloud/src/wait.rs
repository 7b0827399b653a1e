//! Waiting for the cloud's asynchronous transitions (an ENI or disk attaching, an instance
//! starting) by polling its Describe call: at a short steady interval while the transition is
//! likely to finish (an ENI attaches in a few hundred milliseconds), so that the wait ends at most
//! one interval after it, then with a growing one, as the real service asks of long waits.

use std::time::{Duration, Instant};

use crate::api::{Cloud, DiskFilter, EniFilter, InstanceFilter, SnapshotFilter};
use crate::error::{CloudError, Result};
use crate::model::{Disk, DiskStatus, EniStatus, Instance, InstanceStatus, NetworkInterface, Snapshot, SnapshotStatus};

const FIRST_POLL: Duration = Duration::from_millis(50);
/// Polls stay at [`FIRST_POLL`] for this long, then back off.
const STEADY_FOR: Duration = Duration::from_secs(1);
const MAX_POLL: Duration = Duration::from_secs(1);

/// The pause before the next poll, `elapsed` into the wait, after a pause of `last`.
fn next_interval(elapsed: Duration, last: Duration) -> Duration {
    if elapsed < STEADY_FOR { FIRST_POLL } else { (last * 2).min(MAX_POLL) }
}

async fn poll<T, F, Fut>(what: String, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    let mut interval = FIRST_POLL;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if started.elapsed() >= timeout {
            return Err(CloudError::Timeout { what, waited: started.elapsed() });
        }
        tokio::time::sleep(interval.min(timeout.saturating_sub(started.elapsed()))).await;
        interval = next_interval(started.elapsed(), interval);
    }
}

/// Waits until the ENI has `status` and returns it as it is then.
pub async fn eni_status<C: Cloud>(cloud: &C, eni_id: &str, status: EniStatus, timeout: Duration) -> Result<NetworkInterface> {
    let filter = EniFilter { ids: vec![eni_id.to_string()], ..Default::default() };
    poll(format!("ENI {eni_id} to become {}", status.as_str()), timeout, || async {
        let found = cloud.describe_network_interfaces(&filter).await?;
        Ok(found.into_iter().find(|e| e.id == eni_id && e.status == status))
    })
    .await
}

/// Waits until each of the ENIs has `status` or is gone, with one DescribeNetworkInterfaces for
/// all of them per poll; returns those found with `status` (the gone ones are left out).
pub async fn enis_status<C: Cloud>(cloud: &C, eni_ids: &[String], status: EniStatus, timeout: Duration) -> Result<Vec<NetworkInterface>> {
    if eni_ids.is_empty() {
        return Ok(Vec::new());
    }
    let filter = EniFilter { ids: eni_ids.to_vec(), ..Default::default() };
    poll(format!("ENIs {} to become {}", eni_ids.join(", "), status.as_str()), timeout, || async {
        let found: Vec<NetworkInterface> = cloud.describe_network_interfaces(&filter).await?.into_iter().filter(|e| eni_ids.contains(&e.id)).collect();
        Ok(found.iter().all(|e| e.status == status).then_some(found))
    })
    .await
}

/// Waits on ENIs for many callers at once: every ENI someone waits on is asked about in one
/// DescribeNetworkInterfaces per poll, so eight pods attaching together cost the polls of one.
/// There is no task of its own: one of the waiters runs each poll round (whichever finds none
/// running) and the others read its answer, so a round always runs while anyone waits, and a
/// waiter that gives up or is dropped hands the round on.
#[derive(Default)]
pub struct EniWaits {
    inner: std::sync::Mutex<WaitBook>,
    /// Bumped after every round; waiters that are not polling sleep on it.
    rounds: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct WaitBook {
    /// ENI ID → how many callers wait on it.
    waiting: std::collections::BTreeMap<String, usize>,
    /// What the last round saw of each waited-on ENI; absent when the cloud did not list it.
    seen: std::collections::HashMap<String, NetworkInterface>,
    polling: bool,
    last_round: Option<Instant>,
    /// When the newest waiter came; polls stay short for [`STEADY_FOR`] after it.
    newest: Option<Instant>,
    interval: Duration,
}

impl EniWaits {
    /// Waits until the ENI has `status` and returns it as it is then.
    pub async fn eni_status<C: Cloud>(&self, cloud: &C, eni_id: &str, status: EniStatus, timeout: Duration) -> Result<NetworkInterface> {
        self.wait_for(eni_id, status, timeout, |ids| {
            let filter = EniFilter { ids, ..Default::default() };
            async move { cloud.describe_network_interfaces(&filter).await }
        })
        .await
    }

    /// [`EniWaits::eni_status`] with the Describe call given: `describe` lists the ENIs of the IDs
    /// it is given.
    async fn wait_for<F, Fut>(&self, eni_id: &str, status: EniStatus, timeout: Duration, describe: F) -> Result<NetworkInterface>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: Future<Output = Result<Vec<NetworkInterface>>>,
    {
        let started = Instant::now();
        let deadline = started + timeout;
        let _registered = Registration::new(self, eni_id, started);
        let mut rounds = self.rounds.subscribe();
        loop {
            let now = Instant::now();
            let poll = {
                let mut book = self.book();
                if let Some(eni) = book.seen.get(eni_id).filter(|e| e.status == status) {
                    return Ok(eni.clone());
                }
                if now >= deadline {
                    return Err(CloudError::Timeout { what: format!("ENI {eni_id} to become {}", status.as_str()), waited: now - started });
                }
                let take = !book.polling;
                if take {
                    book.polling = true;
                }
                take.then(|| book.next_pause(now))
            };
            match poll {
                Some(pause) => {
                    let round = Round { waits: self };
                    // A round goes at once when none ran for a pause (a fresh wait: the ENI may
                    // be there already), else one pause after the last.
                    let due = self.book().last_round.map_or(now, |t| t + pause);
                    tokio::time::sleep_until(due.min(deadline).into()).await;
                    let ids: Vec<String> = {
                        let mut book = self.book();
                        book.last_round = Some(Instant::now());
                        book.waiting.keys().cloned().collect()
                    };
                    let found = describe(ids.clone()).await?;
                    let mut book = self.book();
                    let WaitBook { waiting, seen, .. } = &mut *book;
                    for id in &ids {
                        seen.remove(id);
                    }
                    seen.extend(found.into_iter().filter(|e| waiting.contains_key(&e.id)).map(|e| (e.id.clone(), e)));
                    drop(book);
                    drop(round);
                }
                None => {
                    let _ = tokio::time::timeout_at(deadline.into(), rounds.changed()).await;
                }
            }
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, WaitBook> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WaitBook {
    fn next_pause(&mut self, now: Instant) -> Duration {
        let since_newest = self.newest.map(|t| now - t).unwrap_or_default();
        self.interval = next_interval(since_newest, self.interval.max(FIRST_POLL));
        self.interval
    }
}

/// One caller's wait on one ENI, undone when the wait ends however it ends.
struct Registration<'a> {
    waits: &'a EniWaits,
    eni_id: String,
}

impl<'a> Registration<'a> {
    fn new(waits: &'a EniWaits, eni_id: &str, now: Instant) -> Registration<'a> {
        let mut book = waits.book();
        *book.waiting.entry(eni_id.to_string()).or_default() += 1;
        book.newest = Some(now);
        book.interval = FIRST_POLL;
        Registration { waits, eni_id: eni_id.to_string() }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut book = self.waits.book();
        if let Some(n) = book.waiting.get_mut(&self.eni_id) {
            *n -= 1;
            if *n == 0 {
                book.waiting.remove(&self.eni_id);
                book.seen.remove(&self.eni_id);
            }
        }
    }
}

/// The poll round a waiter runs; ending it (done, failed or dropped) lets the next waiter poll
/// and wakes the others to read what it saw.
struct Round<'a> {
    waits: &'a EniWaits,
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        self.waits.book().polling = false;
        self.waits.rounds.send_modify(|n| *n += 1);
    }
}

pub async fn disk_status<C: Cloud>(cloud: &C, disk_id: &str, status: DiskStatus, timeout: Duration) -> Result<Disk> {
    let filter = DiskFilter { ids: vec![disk_id.to_string()], ..Default::default() };
    poll(format!("disk {disk_id} to become {}", status.as_str()), timeout, || async {
        let found = cloud.describe_disks(&filter).await?;
        Ok(found.into_iter().find(|d| d.id == disk_id && d.status == status))
    })
    .await
}

pub async fn instance_status<C: Cloud>(cloud: &C, instance_id: &str, status: InstanceStatus, timeout: Duration) -> Result<Instance> {
    let filter = InstanceFilter { ids: vec![instance_id.to_string()], ..Default::default() };
    poll(format!("instance {instance_id} to become {}", status.as_str()), timeout, || async {
        let found = cloud.describe_instances(&filter).await?;
        Ok(found.into_iter().find(|i| i.id == instance_id && i.status == status))
    })
    .await
}

/// Waits until the snapshot is no longer progressing and returns it as it is then (accomplished
/// or failed), or `None` when it is gone.
pub async fn snapshot_settled<C: Cloud>(cloud: &C, snapshot_id: &str, timeout: Duration) -> Result<Option<Snapshot>> {
    let filter = SnapshotFilter { ids: vec![snapshot_id.to_string()], ..Default::default() };
    poll(format!("snapshot {snapshot_id} to be accomplished"), timeout, || async {
        let found = cloud.describe_snapshots(&filter).await?.into_iter().find(|s| s.id == snapshot_id);
        Ok(match found {
            Some(s) if matches!(s.status, SnapshotStatus::Progressing | SnapshotStatus::Unknown) => None,
            other => Some(other),
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EniKind;

    fn eni(id: &str, status: EniStatus) -> NetworkInterface {
        NetworkInterface {
            id: id.to_string(),
            kind: EniKind::Secondary,
            status,
            mac: String::new(),
            vpc_id: String::new(),
            vswitch_id: String::new(),
            zone_id: String::new(),
            security_group_ids: Vec::new(),
            instance_id: None,
            trunk_eni_id: None,
            vlan_id: None,
            primary_ip: std::net::Ipv4Addr::UNSPECIFIED,
            secondary_ips: Vec::new(),
            ipv6_addresses: Vec::new(),
            description: String::new(),
        }
    }

    /// A cloud where each ENI attaches `attach` after it starts, counting Describe calls and how
    /// many IDs each asked about.
    struct AttachingCloud {
        t0: Instant,
        attach: Duration,
        asked: std::sync::Mutex<Vec<usize>>,
    }

    impl AttachingCloud {
        fn new(attach: Duration) -> AttachingCloud {
            AttachingCloud { t0: Instant::now(), attach, asked: Default::default() }
        }

        fn describe(&self, ids: Vec<String>) -> std::future::Ready<Result<Vec<NetworkInterface>>> {
            self.asked.lock().unwrap().push(ids.len());
            let status = if self.t0.elapsed() >= self.attach { EniStatus::InUse } else { EniStatus::Attaching };
            std::future::ready(Ok(ids.iter().map(|id| eni(id, status)).collect()))
        }
    }

    #[tokio::test]
    async fn eight_enis_attaching_together_cost_the_polls_of_one() {
        let waits = EniWaits::default();
        let cloud = AttachingCloud::new(Duration::from_millis(200));
        let started = Instant::now();
        let all = futures::future::join_all((0..8).map(|i| {
            let (waits, cloud) = (&waits, &cloud);
            async move { waits.wait_for(&format!("eni-{i}"), EniStatus::InUse, Duration::from_secs(5), |ids| cloud.describe(ids)).await }
        }))
        .await;
        let took = started.elapsed();
        for r in &all {
            assert_eq!(r.as_ref().unwrap().status, EniStatus::InUse);
        }
        // Alone, each wait polls 5 times (0, 50, …, 200 ms): 40 calls for eight.
        let asked = cloud.asked.lock().unwrap().clone();
        assert!(asked.len() <= 7, "{} Describe calls for eight ENIs waiting together", asked.len());
        assert!(asked.contains(&8), "no poll asked about all eight: {asked:?}");
        assert!(took < Duration::from_millis(200) + 2 * FIRST_POLL, "the attach was seen {took:?} after the start");
        assert!(waits.book().waiting.is_empty() && waits.book().seen.is_empty(), "the waits left entries behind");
    }

    #[tokio::test]
    async fn a_wait_that_times_out_or_is_dropped_mid_round_does_not_hold_up_the_others() {
        let waits = EniWaits::default();
        let cloud = AttachingCloud::new(Duration::from_millis(300));
        let describe = |ids| cloud.describe(ids);
        // The short wait runs the first rounds, then gives up; the long one must poll on.
        let short = waits.wait_for("eni-short", EniStatus::InUse, Duration::from_millis(120), describe);
        let long = waits.wait_for("eni-long", EniStatus::InUse, Duration::from_secs(5), describe);
        let (short, long) = tokio::join!(short, long);
        assert!(matches!(short, Err(CloudError::Timeout { .. })), "{short:?}");
        assert_eq!(long.unwrap().id, "eni-long");
        // A wait dropped while it polls hands the round on.
        let dropped = tokio::time::timeout(Duration::from_millis(10), waits.wait_for("eni-x", EniStatus::InUse, Duration::from_secs(5), |_| std::future::pending::<Result<Vec<NetworkInterface>>>()));
        assert!(dropped.await.is_err());
        let after = waits.wait_for("eni-y", EniStatus::InUse, Duration::from_secs(1), describe).await;
        assert_eq!(after.unwrap().id, "eni-y");
        assert!(waits.book().waiting.is_empty());
    }

    #[test]
    fn polls_do_not_overshoot_a_short_transition_then_back_off() {
        let ms = Duration::from_millis;
        // A 200 ms attach is seen at most one short interval late.
        let mut t = Duration::ZERO;
        let mut last = FIRST_POLL;
        while t < ms(200) {
            t += last;
            last = next_interval(t, last);
        }
        assert!(t - ms(200) <= FIRST_POLL, "seen {t:?} after a 200 ms transition");
        assert_eq!(next_interval(ms(1500), ms(50)), ms(100));
        assert_eq!(next_interval(ms(5000), ms(800)), MAX_POLL);
    }
}
