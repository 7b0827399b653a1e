//! Waiting for the cloud's asynchronous transitions (an ENI or disk attaching, an instance
//! starting) by polling its Describe call with a growing interval, as the real service requires.

use std::time::{Duration, Instant};

use crate::api::{Cloud, DiskFilter, EniFilter, InstanceFilter, SnapshotFilter};
use crate::error::{CloudError, Result};
use crate::model::{Disk, DiskStatus, EniStatus, Instance, InstanceStatus, NetworkInterface, Snapshot, SnapshotStatus};

const FIRST_POLL: Duration = Duration::from_millis(50);
const MAX_POLL: Duration = Duration::from_secs(1);

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
        interval = (interval * 2).min(MAX_POLL);
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
