//! The attach ledger: which cloud disks Berth holds on this node, in which state, and how many
//! slots are left. Pure: no cloud, no syscalls; the caller journals what changes and carries out
//! the cloud calls the ledger let through.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachState {
    /// Recorded before the AttachDisk call; the device may not exist yet.
    Attaching,
    /// In use by this node, its device found and verified.
    Attached,
    /// Recorded before the DetachDisk call.
    Detaching,
}

impl AttachState {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachState::Attaching => "attaching",
            AttachState::Attached => "attached",
            AttachState::Detaching => "detaching",
        }
    }
}

/// One disk of the node, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    pub disk_id: String,
    /// The serial the guest sees; the device is found by it.
    pub serial: String,
    /// The device once found (e.g. `/dev/vdb` or `/dev/loop3`), empty before.
    pub device: String,
    pub state: AttachState,
    /// Unix seconds when the record entered its state.
    pub since: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("disk {0} has an attach or detach in flight on this node; retry when it is done")]
    Busy(String),
    #[error("no disk slot left on this node: {used} of {limit} used (disk quota {quota}, {unmanaged} disks not managed by Berth); detach a volume or place the pod elsewhere")]
    Exhausted { used: u32, limit: u32, quota: u32, unmanaged: u32 },
}

/// What an attach request should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachStart {
    /// The disk is attached here already: answer with this record, no cloud call.
    Already(AttachmentRecord),
    /// A slot is reserved and the disk is marked busy: go ahead with the cloud.
    Proceed,
}

/// The node's attachments plus the operations in flight. A slot is taken by every record, whatever
/// its state: a detaching disk still occupies its slot in the cloud until the detach is done.
#[derive(Debug, Clone, Default)]
pub struct AttachLedger {
    quota: u32,
    unmanaged: BTreeSet<String>,
    records: BTreeMap<String, AttachmentRecord>,
    busy: BTreeSet<String>,
}

/// The slot figures the agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiskSlots {
    pub quota: u32,
    pub unmanaged: u32,
    pub limit: u32,
    pub used: u32,
    pub free: u32,
}

impl AttachLedger {
    pub fn new(quota: u32) -> AttachLedger {
        AttachLedger { quota, ..Default::default() }
    }

    /// Disks attached to the node that Berth did not attach (the cloud says so at start).
    pub fn set_unmanaged(&mut self, disks: impl IntoIterator<Item = String>) {
        self.unmanaged = disks.into_iter().filter(|d| !self.records.contains_key(d)).collect();
    }

    /// The disks Berth may hold: the quota minus the disks it does not manage, and never 0,
    /// since a CO reads a limit of 0 as "no limit".
    pub fn slots(&self) -> DiskSlots {
        let unmanaged = self.unmanaged.len() as u32;
        let limit = self.quota.saturating_sub(unmanaged).max(1);
        let used = self.records.len() as u32;
        DiskSlots { quota: self.quota, unmanaged, limit, used, free: limit.saturating_sub(used) }
    }

    pub fn get(&self, disk_id: &str) -> Option<&AttachmentRecord> {
        self.records.get(disk_id)
    }

    pub fn records(&self) -> impl Iterator<Item = &AttachmentRecord> {
        self.records.values()
    }

    pub fn is_unmanaged(&self, disk_id: &str) -> bool {
        self.unmanaged.contains(disk_id)
    }

    /// Decides an attach before anything else happens: busy, already here, or out of slots.
    pub fn begin_attach(&mut self, disk_id: &str) -> Result<AttachStart, LedgerError> {
        if self.busy.contains(disk_id) {
            return Err(LedgerError::Busy(disk_id.into()));
        }
        if let Some(r) = self.records.get(disk_id) {
            if r.state == AttachState::Attached {
                return Ok(AttachStart::Already(r.clone()));
            }
            // A record left attaching or detaching by an earlier run that nobody is finishing:
            // it holds its slot already; the caller brings it to a clean state.
            self.busy.insert(disk_id.into());
            return Ok(AttachStart::Proceed);
        }
        let s = self.slots();
        if s.free == 0 {
            return Err(LedgerError::Exhausted { used: s.used, limit: s.limit, quota: s.quota, unmanaged: s.unmanaged });
        }
        self.busy.insert(disk_id.into());
        Ok(AttachStart::Proceed)
    }

    /// Marks a detach in flight and returns the record, or `None` when the disk is not held here
    /// (detaching what is detached succeeds).
    pub fn begin_detach(&mut self, disk_id: &str) -> Result<Option<AttachmentRecord>, LedgerError> {
        if self.busy.contains(disk_id) {
            return Err(LedgerError::Busy(disk_id.into()));
        }
        let Some(r) = self.records.get(disk_id) else { return Ok(None) };
        self.busy.insert(disk_id.into());
        Ok(Some(r.clone()))
    }

    /// Claims a disk for background work (recovery) unless someone holds it.
    pub fn claim(&mut self, disk_id: &str) -> bool {
        self.busy.insert(disk_id.into())
    }

    /// Ends the operation in flight on the disk.
    pub fn finish(&mut self, disk_id: &str) {
        self.busy.remove(disk_id);
    }

    pub fn is_busy(&self, disk_id: &str) -> bool {
        self.busy.contains(disk_id)
    }

    /// Applies a journaled record (insert or replace).
    pub fn put(&mut self, record: AttachmentRecord) {
        self.unmanaged.remove(&record.disk_id);
        self.records.insert(record.disk_id.clone(), record);
    }

    /// Applies a journaled removal.
    pub fn remove(&mut self, disk_id: &str) -> Option<AttachmentRecord> {
        self.records.remove(disk_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, state: AttachState) -> AttachmentRecord {
        AttachmentRecord { disk_id: id.into(), serial: id.trim_start_matches("d-").into(), device: String::new(), state, since: 1 }
    }

    #[test]
    fn the_limit_is_the_quota_minus_unmanaged_disks_and_never_zero() {
        let mut l = AttachLedger::new(16);
        assert_eq!(l.slots(), DiskSlots { quota: 16, unmanaged: 0, limit: 16, used: 0, free: 16 });
        l.set_unmanaged(["d-sys".to_string(), "d-data".to_string()]);
        assert_eq!(l.slots().limit, 14);
        l.set_unmanaged((0..20).map(|i| format!("d-{i}")));
        assert_eq!(l.slots().limit, 1, "a full node still reports a limit of 1, never 0");
        // A disk Berth holds is never counted as unmanaged.
        let mut l = AttachLedger::new(4);
        l.put(rec("d-a", AttachState::Attached));
        l.set_unmanaged(["d-a".to_string(), "d-b".to_string()]);
        assert_eq!(l.slots(), DiskSlots { quota: 4, unmanaged: 1, limit: 3, used: 1, free: 2 });
    }

    #[test]
    fn an_attach_beyond_the_limit_is_refused_and_reserves_nothing() {
        let mut l = AttachLedger::new(16);
        for i in 0..16 {
            let id = format!("d-{i}");
            assert_eq!(l.begin_attach(&id), Ok(AttachStart::Proceed));
            l.put(rec(&id, AttachState::Attaching));
            l.finish(&id);
        }
        let err = l.begin_attach("d-16").unwrap_err();
        assert_eq!(err, LedgerError::Exhausted { used: 16, limit: 16, quota: 16, unmanaged: 0 });
        assert!(err.to_string().contains("16 of 16"), "{err}");
        assert!(!l.is_busy("d-16"));
        // Detaching frees the slot only once the record is gone.
        assert!(l.begin_detach("d-3").unwrap().is_some());
        assert!(l.begin_attach("d-16").is_err());
        l.remove("d-3");
        l.finish("d-3");
        assert_eq!(l.begin_attach("d-16"), Ok(AttachStart::Proceed));
    }

    #[test]
    fn one_operation_per_disk_at_a_time() {
        let mut l = AttachLedger::new(4);
        assert_eq!(l.begin_attach("d-a"), Ok(AttachStart::Proceed));
        assert_eq!(l.begin_attach("d-a"), Err(LedgerError::Busy("d-a".into())));
        assert_eq!(l.begin_detach("d-a"), Err(LedgerError::Busy("d-a".into())));
        l.put(rec("d-a", AttachState::Attached));
        l.finish("d-a");
        assert_eq!(l.begin_attach("d-a"), Ok(AttachStart::Already(rec("d-a", AttachState::Attached))));
        assert!(!l.is_busy("d-a"), "an attach answered from the ledger holds nothing");
        assert_eq!(l.begin_detach("d-b"), Ok(None), "detaching what is not here succeeds");
    }
}
