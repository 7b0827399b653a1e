//! The embedded store, after the agent's: a checkpoint (`state.json`, replaced atomically) plus a
//! journal of the events since (`journal.jsonl`, one line per event). A batch of events is one
//! write and one fdatasync, so binding a round of pods costs one sync, not one per pod. Replaying
//! is idempotent, so a crash between writing a checkpoint and emptying the journal loads the same
//! state; a torn last line is a write that never returned and is dropped.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};

use super::{Event, Snapshot, Store, StoreError};

/// Compact the journal into a checkpoint after this many events.
const COMPACT_AFTER: usize = 20_000;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

pub struct JournalStore {
    dir: PathBuf,
    journal: File,
    journaled: usize,
    state: Snapshot,
}

impl JournalStore {
    /// Opens (or creates) the store in `dir` and loads what it holds.
    pub fn open(dir: &Path) -> Result<JournalStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let checkpoint = dir.join("state.json");
        let mut state: Snapshot = match std::fs::read(&checkpoint) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt { path: checkpoint.clone(), source })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::default(),
            Err(e) => return Err(io(&checkpoint)(e)),
        };
        let journal_path = dir.join("journal.jsonl");
        let mut journaled = 0;
        let mut good_len = 0u64;
        if let Ok(file) = File::open(&journal_path) {
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(io(&journal_path))?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                // A whole line that does not parse is damage, not a torn write: refuse.
                let event = serde_json::from_str::<Event>(&line).map_err(|source| StoreError::Corrupt { path: journal_path.clone(), source })?;
                state.apply(&event);
                journaled += 1;
                good_len += n as u64;
            }
        }
        let journal = OpenOptions::new().create(true).append(true).open(&journal_path).map_err(io(&journal_path))?;
        journal.set_len(good_len).map_err(io(&journal_path))?;
        let mut store = JournalStore { dir: dir.to_path_buf(), journal, journaled, state };
        if store.journaled >= COMPACT_AFTER {
            store.compact()?;
        }
        Ok(store)
    }

    /// Writes the checkpoint (temp file, fsync, rename, fsync of the directory), then empties the journal.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        let path = self.dir.join("state.json");
        let tmp = self.dir.join("state.json.tmp");
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&serde_json::to_vec(&self.state).expect("state serializes")).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
        self.journal.set_len(0).map_err(io(&self.dir))?;
        self.journal.sync_all().map_err(io(&self.dir))?;
        self.journaled = 0;
        Ok(())
    }
}

impl JournalStore {
    /// The state as loaded at open, with every appended event applied.
    pub fn snapshot(&self) -> &Snapshot {
        &self.state
    }
}

impl Store for JournalStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        Ok(self.state.clone())
    }

    fn append(&mut self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let path = self.dir.join("journal.jsonl");
        let mut buf = Vec::with_capacity(events.len() * 96);
        for e in events {
            serde_json::to_writer(&mut buf, e).expect("events serialize");
            buf.push(b'\n');
        }
        self.journal.write_all(&buf).map_err(io(&path))?;
        self.journal.sync_data().map_err(io(&path))?;
        for e in events {
            self.state.apply(e);
        }
        self.journaled += events.len();
        if self.journaled >= COMPACT_AFTER {
            self.compact()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::cluster::v1 as pb;

    use super::super::{RequestedNode, StoredSpec};
    use super::*;

    fn spec(name: &str) -> pb::PodSpec {
        pb::PodSpec { namespace: "d".into(), name: name.into(), cpu_millicores: 250, ..Default::default() }
    }

    #[test]
    fn survives_reopen_compaction_and_a_torn_line() {
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
        assert_eq!(s.snapshot().pods.keys().collect::<Vec<_>>(), vec!["d/a"]);
        assert_eq!(s.snapshot().pods["d/a"].node.as_deref(), Some("i-1"));
        assert_eq!(s.snapshot().pods["d/a"].spec.decode().unwrap(), spec("a"));
        assert_eq!(s.snapshot().requested["i-9"].requested_at_ms, 5);
        s.compact().unwrap();
        s.append(&[Event::Unbound { pod: "d/a".into() }, Event::NodeRequestCleared { instance_id: "i-9".into() }]).unwrap();
        drop(s);
        let s = JournalStore::open(dir.path()).unwrap();
        assert_eq!(s.snapshot().pods["d/a"].node, None);
        assert!(s.snapshot().requested.is_empty());
        assert_eq!(s.snapshot().next_order, 2);
    }

    #[test]
    fn a_damaged_whole_line_is_refused_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        JournalStore::open(dir.path()).unwrap().append(&[Event::Deleted { pod: "d/x".into() }]).unwrap();
        let mut j = OpenOptions::new().append(true).open(dir.path().join("journal.jsonl")).unwrap();
        j.write_all(b"{\"event\":\"nonsense\"}\n").unwrap();
        drop(j);
        assert!(matches!(JournalStore::open(dir.path()), Err(StoreError::Corrupt { .. })));
    }
}
