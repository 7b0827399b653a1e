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
