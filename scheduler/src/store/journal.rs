//! The embedded store: a checkpoint (`state.json`, replaced atomically) plus a journal of the
//! events since (`journal.jsonl`, one line per event), kept by `berth-journal` as the agent's is.
//! A batch of events is one write and one fdatasync, so binding a round of pods costs one sync,
//! not one per pod. The store keeps no copy of the state: when the journal has grown long it says
//! so ([`Store::checkpoint_due`]) and the committer hands it the cluster's own state to write.

use std::path::Path;

use berth_journal::{Journal, Settings};

use super::{Checkpoint, Event, Snapshot, Store, StoreError};

/// Fold the journal into a checkpoint after this many events.
const SETTINGS: Settings = Settings { checkpoint_after: 20_000, pretty: false };

pub struct JournalStore {
    journal: Journal<Event>,
    /// What open found, until the first load takes it; later loads read the directory again.
    loaded: Option<Snapshot>,
}

impl JournalStore {
    /// Opens (or creates) the store in `dir` and loads what it holds.
    pub fn open(dir: &Path) -> Result<JournalStore, StoreError> {
        let (journal, state) = Journal::open(dir, SETTINGS)?;
        Ok(JournalStore { journal, loaded: Some(state) })
    }
}

impl Store for JournalStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        match self.loaded.take() {
            Some(state) => Ok(state),
            None => Ok(self.journal.load()?),
        }
    }

    fn append(&mut self, events: &[Event]) -> Result<(), StoreError> {
        Ok(self.journal.append(events)?)
    }

    fn checkpoint_due(&self) -> bool {
        self.journal.checkpoint_due()
    }

    fn checkpoint(&mut self, state: &Checkpoint) -> Result<(), StoreError> {
        Ok(self.journal.checkpoint(state)?)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write as _;

    use berth_proto::cluster::v1 as pb;

    use super::super::{MemoryStore, RequestedNode, StoredSpec};
    use super::*;
    use crate::cluster::Cluster;
    use crate::placement::Strategy;

    fn spec(name: &str) -> pb::PodSpec {
        pb::PodSpec { namespace: "d".into(), name: name.into(), cpu_millicores: 250, ..Default::default() }
    }

    #[test]
    fn survives_reopen_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = JournalStore::open(dir.path()).unwrap();
            s.append(&[
                Event::Submitted { pod: "d/a".into(), spec: StoredSpec::of(&spec("a")) },
                Event::Submitted { pod: "d/b".into(), spec: StoredSpec::of(&spec("b")) },
                Event::Bound { pod: "d/a".into(), node: "i-1".into() },
            ])
            .unwrap();
            s.append(&[Event::NodeRequested(RequestedNode { instance_id: "i-9".into(), pool: "p".into(), instance_type: "ecs.g7.large".into(), zone_id: "z".into(), vswitch_id: "vsw".into(), requested_at_ms: 5 })]).unwrap();
            s.append(&[Event::Deleted { pod: "d/b".into() }]).unwrap();
        }
        let mut j = OpenOptions::new().append(true).open(dir.path().join("journal.jsonl")).unwrap();
        j.write_all(br#"{"event":"deleted","po"#).unwrap();
        drop(j);
        let mut s = JournalStore::open(dir.path()).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.pods.keys().collect::<Vec<_>>(), vec!["d/a"]);
        assert_eq!(snap.pods["d/a"].node.as_deref(), Some("i-1"));
        assert_eq!(snap.pods["d/a"].spec.decode().unwrap(), spec("a"));
        assert_eq!(snap.requested["i-9"].requested_at_ms, 5);
        s.append(&[Event::Unbound { pod: "d/a".into() }, Event::NodeRequestCleared { instance_id: "i-9".into() }]).unwrap();
        let again = s.load().unwrap();
        assert_eq!(again.pods["d/a"].node, None, "a later load reads what was appended since");
        drop(s);
        let snap = JournalStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(snap, again);
        assert!(snap.requested.is_empty());
        assert_eq!(snap.next_order, 2);
    }

    #[test]
    fn a_checkpoint_of_the_cluster_loads_as_its_events_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = JournalStore::open(dir.path()).unwrap();
        let mut replayed = MemoryStore::default();
        let mut c = Cluster::new(Strategy::Spread, 0, 15_000);
        let node = pb::NodeReport {
            identity: Some(pb::NodeIdentity { instance_id: "i-1".into(), zone_id: "z1".into(), ..Default::default() }),
            allocatable: Some(pb::Resources { cpu_millicores: 4000, memory_bytes: 8 << 30, pods: 10, shared_ips: 10, eni_slots: 2, member_eni_slots: 0, disk_slots: 4 }),
            free: Some(pb::Resources { cpu_millicores: 4000, memory_bytes: 8 << 30, pods: 10, shared_ips: 10, eni_slots: 2, member_eni_slots: 0, disk_slots: 4 }),
            sequence: 1,
            ..Default::default()
        };
        let mut events = c.report(&node, 0);
        for name in ["a", "b", "c"] {
            events.extend(c.submit(spec(name), 0).unwrap());
        }
        let mut disk = spec("disk");
        disk.volumes.push(pb::VolumeSpec { name: "data".into(), kind: pb::VolumeKind::Disk as i32, mount_path: "/data".into(), ..Default::default() });
        events.extend(c.submit(disk, 0).unwrap());
        let web = pb::Workload { namespace: "d".into(), name: "web".into(), replicas: 2, template: Some(spec("")), ..Default::default() };
        events.push(c.apply_workload(web).0);
        events.extend(c.reconcile_workloads(0));
        events.extend(c.schedule(0));
        events.extend(c.delete("d/b").unwrap());
        events.extend(c.request_node(RequestedNode { instance_id: "i-9".into(), pool: "p".into(), instance_type: "ecs.g7.large".into(), zone_id: "z".into(), vswitch_id: "vsw".into(), requested_at_ms: 5 }));
        s.append(&events).unwrap();
        replayed.append(&events).unwrap();
        s.checkpoint(&c.checkpoint()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("journal.jsonl")).unwrap().len(), 0, "the checkpoint replaces the journal");
        drop(s);
        let loaded = JournalStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(loaded, replayed.load().unwrap());
        assert_eq!((loaded.workloads["d/web"].decode().unwrap().revision, loaded.pods.contains_key("d/web-1-1")), (1, true), "the workload and its pods are kept");
        assert!(loaded.pods["d/disk"].spec.decode().unwrap().pool_selector.contains_key("zone"), "the zone the disk pod was pinned to is kept");
    }

    #[test]
    fn a_damaged_whole_line_is_refused_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        JournalStore::open(dir.path()).unwrap().append(&[Event::Deleted { pod: "d/x".into() }]).unwrap();
        let mut j = OpenOptions::new().append(true).open(dir.path().join("journal.jsonl")).unwrap();
        j.write_all(b"{\"event\":\"nonsense\"}\n").unwrap();
        drop(j);
        assert!(matches!(JournalStore::open(dir.path()), Err(StoreError::Corrupt { line: Some(2), .. })));
    }
}
