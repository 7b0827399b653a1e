//! Disks of the node: the attach ledger ([`ledger`], pure) and the side that carries it out on the
//! cloud and the node ([`DiskAttacher`]). Every state change is journaled before the cloud call it
//! leads to, so a restart finds each disk attached, detached, or in a state it can finish.

pub mod ledger;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_cloud::api::DiskFilter;
use berth_cloud::error::code;
use berth_cloud::guest::{DeviceError, find_disk_device};
use berth_cloud::model::{Disk, DiskStatus};
use berth_cloud::{Cloud, CloudError, wait};

use crate::metrics::Metrics;
use crate::store::{Event, Store, StoreError};
use ledger::{AttachLedger, AttachStart, AttachState, AttachmentRecord, DiskSlots, LedgerError};

/// How long the device of an attached disk may take to show up.
const DEVICE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("disk {0} does not exist in the cloud")]
    NotFound(String),
    #[error("disk {disk_id} is attached to instance {holder}, not to this node ({node}); detach it there first")]
    AttachedElsewhere { disk_id: String, holder: String, node: String },
    #[error("disk {disk_id} did not attach within {waited:?}; it was detached again, retry")]
    TimedOut { disk_id: String, waited: Duration },
    #[error("disk {disk_id} is still in use on this node ({device} is mounted); unmount it first")]
    InUse { disk_id: String, device: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct AttachSettings {
    pub instance_id: String,
    pub instance_type: String,
    pub zone_id: String,
    pub disk_quota: u32,
    /// How long a disk may stay `Attaching` before it is detached and the attach fails.
    pub attach_timeout: Duration,
    pub by_id_dir: PathBuf,
}

struct Books {
    ledger: AttachLedger,
    store: Store,
}

pub struct DiskAttacher<C> {
    cloud: C,
    settings: AttachSettings,
    books: Mutex<Books>,
    metrics: Arc<Metrics>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

/// Releases the disk's in-flight mark however the operation ends.
struct InFlight<'a, C> {
    attacher: &'a DiskAttacher<C>,
    disk_id: Option<String>,
}

impl<C> InFlight<'_, C> {
    /// Leaves the disk marked for a background task that finishes it.
    fn hand_over(mut self) {
        self.disk_id = None;
    }
}

impl<C> Drop for InFlight<'_, C> {
    fn drop(&mut self) {
        if let Some(d) = &self.disk_id {
            self.attacher.books().ledger.finish(d);
        }
    }
}

impl<C> DiskAttacher<C> {
    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<C: Cloud + 'static> DiskAttacher<C> {
    /// Loads the ledger from the store; call [`DiskAttacher::recover`] before serving.
    pub fn new(cloud: C, settings: AttachSettings, store: Store, metrics: Arc<Metrics>) -> DiskAttacher<C> {
        let mut ledger = AttachLedger::new(settings.disk_quota);
        for r in store.snapshot().attachments.values() {
            ledger.put(r.clone());
        }
        let a = DiskAttacher { cloud, settings, books: Mutex::new(Books { ledger, store }), metrics };
        a.publish_gauges();
        a
    }

    pub fn settings(&self) -> &AttachSettings {
        &self.settings
    }

    pub fn slots(&self) -> DiskSlots {
        self.books().ledger.slots()
    }

    pub fn list(&self) -> Vec<AttachmentRecord> {
        self.books().ledger.records().cloned().collect()
    }

    fn publish_gauges(&self) {
        let s = self.slots();
        self.metrics.disk_slots_free.set(i64::from(s.free));
        self.metrics.disk_attachments.set(i64::from(s.used));
    }

    fn record(&self, r: AttachmentRecord) -> Result<(), StoreError> {
        let mut b = self.books();
        b.store.append(Event::Attachment(r.clone()))?;
        b.ledger.put(r);
        drop(b);
        self.publish_gauges();
        Ok(())
    }

    fn forget(&self, disk_id: &str) -> Result<(), StoreError> {
        let mut b = self.books();
        b.store.append(Event::Unattached { disk_id: disk_id.into() })?;
        b.ledger.remove(disk_id);
        drop(b);
        self.publish_gauges();
        Ok(())
    }

    async fn describe(&self, disk_id: &str) -> Result<Option<Disk>, CloudError> {
        let filter = DiskFilter { ids: vec![disk_id.into()], ..Default::default() };
        Ok(self.cloud.describe_disks(&filter).await?.into_iter().find(|d| d.id == disk_id))
    }

    /// Attaches the disk to this node and answers with its verified device. The slot check comes
    /// before any cloud call.
    pub async fn attach(self: &Arc<Self>, disk_id: &str) -> Result<AttachmentRecord, AttachError> {
        let start = self.books().ledger.begin_attach(disk_id)?;
        if let AttachStart::Already(r) = start {
            // Answered from the ledger; the device must still be there.
            find_disk_device(&self.settings.by_id_dir, &r.disk_id, &r.serial)?;
            return Ok(r);
        }
        let guard = InFlight { attacher: self, disk_id: Some(disk_id.into()) };
        let result = self.attach_held(disk_id).await;
        match result {
            Err(AttachError::TimedOut { .. }) => {
                // The cleanup keeps the disk busy until it is detached, so a retry starts clean.
                guard.hand_over();
                let me = self.clone();
                let disk = disk_id.to_string();
                tokio::spawn(async move {
                    me.detach_stuck(&disk).await;
                    me.books().ledger.finish(&disk);
                });
                result
            }
            other => other,
        }
    }

    async fn attach_held(&self, disk_id: &str) -> Result<AttachmentRecord, AttachError> {
        let node = self.settings.instance_id.clone();
        let disk = self.describe(disk_id).await?.ok_or_else(|| AttachError::NotFound(disk_id.into()))?;
        match (&disk.instance_id, disk.status) {
            (Some(holder), _) if *holder != node => {
                return Err(AttachError::AttachedElsewhere { disk_id: disk_id.into(), holder: holder.clone(), node });
            }
            (Some(_), DiskStatus::InUse) => {
                // Attached here already (a record lost or left attaching): adopt it.
                return self.found_attached(&disk).await;
            }
            _ => {}
        }
        let attaching = AttachmentRecord { disk_id: disk_id.into(), serial: disk.serial.clone(), device: String::new(), state: AttachState::Attaching, since: now_unix() };
        self.record(attaching)?;
        if disk.status != DiskStatus::Attaching
            && let Err(e) = self.cloud.attach_disk(disk_id, &node).await
        {
            self.forget(disk_id)?;
            return Err(if e.is_code(code::INVALID_DISK_ID) { AttachError::NotFound(disk_id.into()) } else { e.into() });
        }
        match wait::disk_status(&self.cloud, disk_id, DiskStatus::InUse, self.settings.attach_timeout).await {
            Ok(disk) => self.found_attached(&disk).await,
            Err(CloudError::Timeout { waited, .. }) => {
                self.metrics.disk_attach_timeouts.inc();
                tracing::warn!(disk = disk_id, ?waited, "disk stuck attaching; detaching it");
                Err(AttachError::TimedOut { disk_id: disk_id.into(), waited })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The disk is in use by this node: find and verify its device, record it attached.
    async fn found_attached(&self, disk: &Disk) -> Result<AttachmentRecord, AttachError> {
        let started = std::time::Instant::now();
        let device = loop {
            match find_disk_device(&self.settings.by_id_dir, &disk.id, &disk.serial) {
                Ok(d) => break d,
                Err(DeviceError::Missing { .. }) if started.elapsed() < DEVICE_WAIT => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => return Err(e.into()),
            }
        };
        let r = AttachmentRecord { disk_id: disk.id.clone(), serial: disk.serial.clone(), device: device.display().to_string(), state: AttachState::Attached, since: now_unix() };
        self.record(r.clone())?;
        tracing::info!(disk = %disk.id, device = %r.device, "disk attached");
        Ok(r)
    }

    /// Detaches a disk Berth holds here. `Ok(false)`: it was not attached here.
    pub async fn detach(&self, disk_id: &str) -> Result<bool, AttachError> {
        let Some(r) = self.books().ledger.begin_detach(disk_id)? else { return Ok(false) };
        let _guard = InFlight { attacher: self, disk_id: Some(disk_id.into()) };
        if !r.device.is_empty() && device_is_mounted(&r.device) {
            return Err(AttachError::InUse { disk_id: disk_id.into(), device: r.device });
        }
        self.detach_held(r).await?;
        Ok(true)
    }

    async fn detach_held(&self, r: AttachmentRecord) -> Result<(), AttachError> {
        let node = self.settings.instance_id.clone();
        self.record(AttachmentRecord { state: AttachState::Detaching, since: now_unix(), ..r.clone() })?;
        match self.describe(&r.disk_id).await? {
            None => {}
            Some(d) if d.instance_id.as_deref() != Some(node.as_str()) || d.status == DiskStatus::Available => {}
            Some(d) => {
                if d.status == DiskStatus::Attaching {
                    wait::disk_status(&self.cloud, &r.disk_id, DiskStatus::InUse, self.settings.attach_timeout).await?;
                }
                if d.status != DiskStatus::Detaching {
                    match self.cloud.detach_disk(&r.disk_id, &node).await {
                        Ok(()) => {}
                        Err(e) if e.is_code(code::INVALID_DISK_ID) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                wait::disk_status(&self.cloud, &r.disk_id, DiskStatus::Available, self.settings.attach_timeout).await?;
            }
        }
        self.forget(&r.disk_id)?;
        tracing::info!(disk = %r.disk_id, "disk detached");
        Ok(())
    }

    /// After an attach timed out: detach, retrying until the cloud lets go of it.
    async fn detach_stuck(&self, disk_id: &str) {
        let mut delay = Duration::from_millis(200);
        loop {
            let Some(r) = self.books().ledger.get(disk_id).cloned() else { return };
            match self.detach_held(r).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(disk = disk_id, error = %e, "detaching a stuck disk failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Brings the ledger in line with the cloud and the node's devices: a disk the ledger holds
    /// that the cloud shows elsewhere is forgotten; one left attaching or detaching is finished;
    /// one attached here that the ledger does not know is not Berth's and takes a slot.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        let node = self.settings.instance_id.clone();
        let here = self.cloud.describe_disks(&DiskFilter { instance_id: Some(node.clone()), ..Default::default() }).await?;
        let known: Vec<AttachmentRecord> = self.list();
        // The system disk takes no data-disk slot of the instance type's quota.
        let unmanaged: Vec<String> = here.iter().filter(|d| !d.system && !known.iter().any(|r| r.disk_id == d.id)).map(|d| d.id.clone()).collect();
        self.books().ledger.set_unmanaged(unmanaged.clone());
        for r in known {
            let cloud_view = here.iter().find(|d| d.id == r.disk_id);
            match (r.state, cloud_view.map(|d| d.status)) {
                (AttachState::Attached, Some(DiskStatus::InUse)) => {
                    match find_disk_device(&self.settings.by_id_dir, &r.disk_id, &r.serial) {
                        Ok(device) if device.display().to_string() == r.device => {}
                        Ok(device) => {
                            tracing::info!(disk = %r.disk_id, was = %r.device, now = %device.display(), "disk's device changed");
                            self.record(AttachmentRecord { device: device.display().to_string(), ..r })?;
                        }
                        Err(e) => tracing::warn!(disk = %r.disk_id, error = %e, "attached disk has no device on this node"),
                    }
                }
                (_, None) => {
                    // The cloud holds it elsewhere or nowhere: whatever was under way did not take.
                    self.metrics.reconcile_fixes.get_or_create(&vec![("kind", "disk_not_attached".to_string())]).inc();
                    tracing::warn!(disk = %r.disk_id, state = r.state.as_str(), "the ledger held a disk the cloud does not show on this node; forgetting it");
                    self.forget(&r.disk_id)?;
                }
                (_, Some(_)) => {
                    // Left attaching or detaching by the last run: finish in the background.
                    if !self.books().ledger.claim(&r.disk_id) {
                        continue;
                    }
                    let me = self.clone();
                    tokio::spawn(async move {
                        let result = match r.state {
                            AttachState::Detaching => me.detach_held(r.clone()).await.map(drop),
                            _ => me.attach_held(&r.disk_id).await.map(drop),
                        };
                        if let Err(e) = result {
                            tracing::warn!(disk = %r.disk_id, error = %e, "finishing an interrupted disk operation failed; detaching it");
                            me.detach_stuck(&r.disk_id).await;
                        }
                        me.books().ledger.finish(&r.disk_id);
                    });
                }
            }
        }
        let s = self.slots();
        self.publish_gauges();
        tracing::info!(quota = s.quota, unmanaged = s.unmanaged, used = s.used, free = s.free, "disk ledger recovered");
        Ok(())
    }

    /// The periodic check: disks attached here behind Berth's back take slots (or give them back
    /// when detached), and an attachment the cloud no longer shows here is forgotten. Disks with
    /// an operation in flight, or recorded after the cloud was asked, are left alone.
    pub async fn reconcile(&self) -> Result<(), AttachError> {
        let asked_at = now_unix();
        let here = self.cloud.describe_disks(&DiskFilter { instance_id: Some(self.settings.instance_id.clone()), ..Default::default() }).await?;
        let gone: Vec<String> = {
            let mut b = self.books();
            let unmanaged: Vec<String> = here.iter().filter(|d| !d.system && b.ledger.get(&d.id).is_none()).map(|d| d.id.clone()).collect();
            b.ledger.set_unmanaged(unmanaged);
            b.ledger
                .records()
                .filter(|r| r.state == AttachState::Attached && r.since < asked_at && !b.ledger.is_busy(&r.disk_id) && !here.iter().any(|d| d.id == r.disk_id))
                .map(|r| r.disk_id.clone())
                .collect()
        };
        for disk_id in gone {
            self.metrics.reconcile_fixes.get_or_create(&vec![("kind", "disk_not_attached".to_string())]).inc();
            tracing::warn!(disk = %disk_id, "the cloud no longer shows this attached disk on the node; forgetting it");
            self.forget(&disk_id)?;
        }
        self.publish_gauges();
        Ok(())
    }

    pub fn describe_json(&self) -> serde_json::Value {
        let b = self.books();
        serde_json::json!({ "slots": b.ledger.slots(), "attachments": b.ledger.records().collect::<Vec<_>>() })
    }
}

/// Whether a file system on the block device is mounted anywhere this process can see. The
/// device's numbers come from sysfs: under systemd the agent's private /dev lacks the node.
fn device_is_mounted(device: &str) -> bool {
    let name = device.rsplit('/').next().unwrap_or_default();
    let Ok(numbers) = std::fs::read_to_string(format!("/sys/block/{name}/dev")) else { return false };
    let wanted = numbers.trim();
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines().any(|l| l.split(' ').nth(2) == Some(wanted))
}
