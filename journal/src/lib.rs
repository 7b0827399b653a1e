//! `berth-journal`: durable state kept as a checkpoint (`state.json`, replaced atomically) plus a
//! journal of the events since (`journal.jsonl`, one JSON event per line). The agent keeps its
//! allocations, intents and attachments this way, and the scheduler its pods when it runs
//! without etcd.
//!
//! A batch of events is one write and one fdatasync, so many changes cost one sync. On open, a
//! torn last line (a write that never returned) is dropped; a whole line that does not parse is
//! damage and is refused, since skipping it would silently forget everything after it. Replaying
//! must be idempotent for the state's events, so that a crash between writing a checkpoint and
//! emptying the journal (which then replays over a checkpoint that holds it) loads the same state.
//!
//! The journal does not keep the state: its owner does, in whatever form suits it, and hands it
//! to [`Journal::checkpoint`] when [`Journal::checkpoint_due`] says the journal has grown long.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, BufWriter, Write as _};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The checkpoint's file name in the state directory.
pub const CHECKPOINT_FILE: &str = "state.json";
/// The journal's file name in the state directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// Where a checkpoint is written before it replaces [`CHECKPOINT_FILE`].
const CHECKPOINT_TMP_FILE: &str = "state.json.tmp";

/// A state that the journal's events rebuild, one after the other.
pub trait Replay<E> {
    fn apply(&mut self, event: &E);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A checkpoint is due once the journal holds this many events.
    pub checkpoint_after: usize,
    /// The checkpoint indented, for operators who read it (costs size and time on large states).
    pub pretty: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// `line` is the journal line (from 1) that does not parse; none for the checkpoint.
    #[error("{path}{} is not valid: {source}", .line.map(|n| format!(" line {n}")).unwrap_or_default())]
    Corrupt { path: PathBuf, line: Option<usize>, source: serde_json::Error },
    #[error("the state cannot be written as JSON to {path}: {source}")]
    Encode { path: PathBuf, source: serde_json::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

/// What reading a state directory found.
struct Loaded<S> {
    state: S,
    /// Whole event lines in the journal.
    events: usize,
    /// Bytes of the journal up to the end of its last whole line.
    whole_len: u64,
}

/// Reads the checkpoint, then replays the journal's whole lines over it.
fn read<E, S>(dir: &Path) -> Result<Loaded<S>, JournalError>
where
    E: DeserializeOwned,
    S: Default + DeserializeOwned + Replay<E>,
{
    let checkpoint = dir.join(CHECKPOINT_FILE);
    let mut state: S = match File::open(&checkpoint) {
        Ok(f) => serde_json::from_reader(BufReader::new(f)).map_err(|source| {
            if source.is_io() { JournalError::Io { path: checkpoint.clone(), source: source.into() } } else { JournalError::Corrupt { path: checkpoint.clone(), line: None, source } }
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => S::default(),
        Err(e) => return Err(io(&checkpoint)(e)),
    };
    let journal = dir.join(JOURNAL_FILE);
    let (mut events, mut whole_len) = (0, 0u64);
    match File::open(&journal) {
        Ok(file) => {
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(io(&journal))?;
                if n == 0 || !line.ends_with('\n') {
                    break; // a torn last line: the write it stood for never returned
                }
                let event = serde_json::from_str::<E>(&line).map_err(|source| JournalError::Corrupt { path: journal.clone(), line: Some(events + 1), source })?;
                state.apply(&event);
                events += 1;
                whole_len += n as u64;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&journal)(e)),
    }
    Ok(Loaded { state, events, whole_len })
}

/// The journal of a state directory, open for appending events of type `E`.
pub struct Journal<E> {
    dir: PathBuf,
    file: File,
    /// Events in the journal since the last checkpoint.
    journaled: usize,
    /// Bytes in the journal, and in the checkpoint it follows.
    journal_bytes: u64,
    checkpoint_bytes: u64,
    settings: Settings,
    events: PhantomData<fn(&E)>,
}

impl<E: Serialize + DeserializeOwned> Journal<E> {
    /// Opens (or creates) the state directory `dir` and loads the state it holds. A torn last
    /// line is cut off, so the next event starts a line of its own; a journal that already holds
    /// enough events for a checkpoint is folded into one at once.
    pub fn open<S>(dir: &Path, settings: Settings) -> Result<(Journal<E>, S), JournalError>
    where
        S: Default + Serialize + DeserializeOwned + Replay<E>,
    {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let loaded = read::<E, S>(dir)?;
        let path = dir.join(JOURNAL_FILE);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        file.set_len(loaded.whole_len).map_err(io(&path))?;
        let checkpoint_bytes = std::fs::metadata(dir.join(CHECKPOINT_FILE)).map_or(0, |m| m.len());
        let mut journal = Journal { dir: dir.to_path_buf(), file, journaled: loaded.events, journal_bytes: loaded.whole_len, checkpoint_bytes, settings, events: PhantomData };
        if journal.checkpoint_due() {
            journal.checkpoint(&loaded.state)?;
        }
        Ok((journal, loaded.state))
    }

    /// The state the directory holds now (checkpoint and journal), read again from the disk.
    pub fn load<S>(&self) -> Result<S, JournalError>
    where
        S: Default + DeserializeOwned + Replay<E>,
    {
        Ok(read::<E, S>(&self.dir)?.state)
    }

    /// Makes `events` durable, in order: one write and one fdatasync for all of them.
    ///
    /// Panics if an event cannot be serialized (a map with keys that are not strings): that is a
    /// bug of the event type, not a condition of the disk.
    pub fn append(&mut self, events: &[E]) -> Result<(), JournalError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::with_capacity(events.len() * 128);
        for e in events {
            serde_json::to_writer(&mut lines, e).expect("journal events serialize to JSON");
            lines.push(b'\n');
        }
        let path = self.dir.join(JOURNAL_FILE);
        self.file.write_all(&lines).map_err(io(&path))?;
        self.file.sync_data().map_err(io(&path))?;
        self.journaled += events.len();
        self.journal_bytes += lines.len() as u64;
        Ok(())
    }

    /// Events appended since the last checkpoint.
    pub fn journaled(&self) -> usize {
        self.journaled
    }

    /// Whether the journal has grown long enough that its owner should write a checkpoint: at
    /// least `checkpoint_after` events, and at least as many bytes as the checkpoint it follows.
    /// The second keeps the cost of checkpoints proportional to what is journaled (a large state
    /// is not rewritten every few thousand events) while a replay never reads more than about
    /// twice the state.
    pub fn checkpoint_due(&self) -> bool {
        self.journaled >= self.settings.checkpoint_after && self.journal_bytes >= self.checkpoint_bytes
    }

    /// Replaces the checkpoint with `state`, which must hold every event appended so far, then
    /// empties the journal.
    pub fn checkpoint<S: Serialize + ?Sized>(&mut self, state: &S) -> Result<(), JournalError> {
        self.checkpoint_bytes = self.write_checkpoint(state)?;
        self.empty_journal()
    }

    /// A temporary file written and fsynced, renamed over the checkpoint, the directory fsynced:
    /// a crash at any point leaves the old checkpoint or the new one, never a mix.
    /// Returns the checkpoint's size.
    fn write_checkpoint<S: Serialize + ?Sized>(&self, state: &S) -> Result<u64, JournalError> {
        let path = self.dir.join(CHECKPOINT_FILE);
        let tmp = self.dir.join(CHECKPOINT_TMP_FILE);
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        let written = if self.settings.pretty { serde_json::to_writer_pretty(&mut out, state) } else { serde_json::to_writer(&mut out, state) };
        written.map_err(|source| if source.is_io() { JournalError::Io { path: tmp.clone(), source: source.into() } } else { JournalError::Encode { path: tmp.clone(), source } })?;
        let file = out.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io(&tmp))?;
        let bytes = file.metadata().map_err(io(&tmp))?.len();
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
        Ok(bytes)
    }

    fn empty_journal(&mut self) -> Result<(), JournalError> {
        let path = self.dir.join(JOURNAL_FILE);
        self.file.set_len(0).map_err(io(&path))?;
        self.file.sync_all().map_err(io(&path))?;
        self.journaled = 0;
        self.journal_bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    /// Boxes on a shelf: each event sets or clears one entry, so replaying is idempotent.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Shelf {
        boxes: BTreeMap<String, u32>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "event", rename_all = "snake_case")]
    enum Change {
        Stored { name: String, items: u32 },
        Taken { name: String },
    }

    impl Replay<Change> for Shelf {
        fn apply(&mut self, event: &Change) {
            match event {
                Change::Stored { name, items } => {
                    self.boxes.insert(name.clone(), *items);
                }
                Change::Taken { name } => {
                    self.boxes.remove(name);
                }
            }
        }
    }

    const SETTINGS: Settings = Settings { checkpoint_after: 100, pretty: false };

    fn stored(name: &str, items: u32) -> Change {
        Change::Stored { name: name.into(), items }
    }

    /// Opens `dir`, appends `events` one batch each, applying them to the state as a user does.
    fn append_all(dir: &Path, settings: Settings, events: &[Change]) -> (Journal<Change>, Shelf) {
        let (mut j, mut shelf) = Journal::<Change>::open::<Shelf>(dir, settings).unwrap();
        for e in events {
            j.append(std::slice::from_ref(e)).unwrap();
            shelf.apply(e);
        }
        (j, shelf)
    }

    fn reopen(dir: &Path) -> Shelf {
        Journal::<Change>::open::<Shelf>(dir, SETTINGS).unwrap().1
    }

    fn journal_lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join(JOURNAL_FILE)).unwrap().lines().map(str::to_string).collect()
    }

    #[test]
    fn what_was_appended_is_there_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, shelf) = append_all(dir.path(), SETTINGS, &[stored("a", 1), stored("b", 2), Change::Taken { name: "a".into() }]);
        j.append(&[stored("c", 3), stored("b", 5)]).unwrap();
        drop(j);
        let loaded = reopen(dir.path());
        assert_eq!(loaded.boxes, BTreeMap::from([("b".to_string(), 5), ("c".to_string(), 3)]));
        assert_ne!(loaded, shelf, "the batch appended without applying is in the journal too");
        assert_eq!(journal_lines(dir.path()).len(), 5, "one line per event");
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_next_event_starts_a_line() {
        let dir = tempfile::tempdir().unwrap();
        drop(append_all(dir.path(), SETTINGS, &[stored("a", 1), stored("b", 2)]));
        let mut f = OpenOptions::new().append(true).open(dir.path().join(JOURNAL_FILE)).unwrap();
        f.write_all(br#"{"event":"stored","name":"c","it"#).unwrap();
        drop(f);
        let (mut j, shelf) = Journal::<Change>::open::<Shelf>(dir.path(), SETTINGS).unwrap();
        assert_eq!(shelf.boxes.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(j.journaled(), 2);
        j.append(&[stored("d", 4)]).unwrap();
        drop(j);
        assert_eq!(reopen(dir.path()).boxes.keys().collect::<Vec<_>>(), ["a", "b", "d"]);
        assert!(journal_lines(dir.path()).iter().all(|l| serde_json::from_str::<Change>(l).is_ok()), "{:?}", journal_lines(dir.path()));
    }

    #[test]
    fn a_damaged_whole_line_is_refused_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        drop(append_all(dir.path(), SETTINGS, &[stored("a", 1)]));
        let mut f = OpenOptions::new().append(true).open(dir.path().join(JOURNAL_FILE)).unwrap();
        f.write_all(b"{\"event\":\"nonsense\"}\n{\"event\":\"taken\",\"name\":\"a\"}\n").unwrap();
        drop(f);
        let err = Journal::<Change>::open::<Shelf>(dir.path(), SETTINGS).err().expect("a damaged line is refused");
        assert!(matches!(err, JournalError::Corrupt { line: Some(2), .. }), "{err:?}");
        assert!(err.to_string().contains("journal.jsonl line 2"), "{err}");
        assert_eq!(journal_lines(dir.path()).len(), 3, "nothing is cut off a journal that was refused");
    }

    #[test]
    fn a_damaged_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CHECKPOINT_FILE), b"{\"boxes\":{\"a\":").unwrap();
        let err = Journal::<Change>::open::<Shelf>(dir.path(), SETTINGS).err().expect("a damaged checkpoint is refused");
        assert!(matches!(err, JournalError::Corrupt { line: None, .. }), "{err:?}");
    }

    #[test]
    fn a_checkpoint_is_due_after_n_events_and_empties_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings { checkpoint_after: 3, pretty: false };
        let (mut j, shelf) = append_all(dir.path(), settings, &[stored("a", 1), stored("b", 2)]);
        assert!(!j.checkpoint_due());
        j.append(&[stored("c", 3)]).unwrap();
        assert!(j.checkpoint_due());
        let mut shelf = shelf;
        shelf.apply(&stored("c", 3));
        j.checkpoint(&shelf).unwrap();
        assert!(!j.checkpoint_due() && j.journaled() == 0);
        assert!(journal_lines(dir.path()).is_empty());
        assert!(!dir.path().join(CHECKPOINT_TMP_FILE).exists());
        j.append(&[Change::Taken { name: "b".into() }]).unwrap();
        drop(j);
        assert_eq!(reopen(dir.path()).boxes, BTreeMap::from([("a".to_string(), 1), ("c".to_string(), 3)]));
    }

    #[test]
    fn a_large_state_is_checkpointed_only_once_the_journal_is_as_large() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings { checkpoint_after: 3, pretty: false };
        // A state far larger than a few events: its checkpoint is ~5 KB.
        let big: Vec<Change> = (0..200).map(|i| stored(&format!("box-{i:04}"), i)).collect();
        let (mut j, mut shelf) = append_all(dir.path(), settings, &big);
        assert!(j.checkpoint_due());
        j.checkpoint(&shelf).unwrap();
        let checkpoint_len = std::fs::metadata(dir.path().join(CHECKPOINT_FILE)).unwrap().len();
        // Enough events, not yet the checkpoint's bytes: not due.
        let mut journaled = 0;
        let mut k = 0;
        while journaled < checkpoint_len {
            assert!(k < 3 || !j.checkpoint_due(), "due after {k} events, {journaled} of {checkpoint_len} bytes");
            let e = stored(&format!("box-{k:04}"), 1000 + k);
            journaled += serde_json::to_vec(&e).unwrap().len() as u64 + 1;
            shelf.apply(&e);
            j.append(&[e]).unwrap();
            k += 1;
        }
        assert!(j.checkpoint_due(), "as many bytes journaled as checkpointed: due");
        drop(j);
        // Reopened, the sizes are read back from the files: still due.
        let (j, loaded) = Journal::<Change>::open::<Shelf>(dir.path(), Settings { checkpoint_after: usize::MAX, pretty: false }).unwrap();
        assert_eq!(loaded, shelf);
        assert!(!j.checkpoint_due() && j.journal_bytes == journaled && j.checkpoint_bytes == checkpoint_len);
    }

    #[test]
    fn a_long_journal_is_folded_into_a_checkpoint_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(append_all(dir.path(), SETTINGS, &[stored("a", 1), stored("b", 2), stored("c", 3)]));
        let (j, shelf) = Journal::<Change>::open::<Shelf>(dir.path(), Settings { checkpoint_after: 3, pretty: true }).unwrap();
        assert_eq!(j.journaled(), 0);
        assert!(journal_lines(dir.path()).is_empty());
        let checkpoint = std::fs::read_to_string(dir.path().join(CHECKPOINT_FILE)).unwrap();
        assert!(checkpoint.contains('\n'), "pretty: {checkpoint}");
        assert_eq!(serde_json::from_str::<Shelf>(&checkpoint).unwrap(), shelf);
    }

    #[test]
    fn a_crash_between_the_checkpoint_and_emptying_the_journal_loads_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let (j, shelf) = append_all(dir.path(), SETTINGS, &[stored("a", 1), stored("b", 2), Change::Taken { name: "a".into() }, stored("a", 7)]);
        j.write_checkpoint(&shelf).unwrap();
        drop(j); // the journal was never emptied
        assert_eq!(journal_lines(dir.path()).len(), 4);
        let (j, loaded) = Journal::<Change>::open::<Shelf>(dir.path(), SETTINGS).unwrap();
        assert_eq!(loaded, shelf);
        assert_eq!(j.journaled(), 4, "the old events still count towards the next checkpoint");
    }

    #[test]
    fn a_crash_while_writing_a_checkpoint_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, shelf) = append_all(dir.path(), SETTINGS, &[stored("a", 1)]);
        j.checkpoint(&shelf).unwrap();
        drop(j);
        std::fs::write(dir.path().join(CHECKPOINT_TMP_FILE), b"{\"boxes\":{\"a\":9").unwrap();
        assert_eq!(reopen(dir.path()), shelf);
    }

    #[test]
    fn load_reads_the_directory_again() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, mut shelf) = append_all(dir.path(), SETTINGS, &[stored("a", 1)]);
        j.checkpoint(&shelf).unwrap();
        j.append(&[stored("b", 2)]).unwrap();
        shelf.apply(&stored("b", 2));
        assert_eq!(j.load::<Shelf>().unwrap(), shelf);
    }

    #[test]
    fn files_written_by_hand_in_the_format_load() {
        // The format the agent and the scheduler have written since before this crate: the
        // state as one JSON document, one JSON event per line.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CHECKPOINT_FILE), "{\n  \"boxes\": {\"a\": 1, \"b\": 2}\n}").unwrap();
        std::fs::write(dir.path().join(JOURNAL_FILE), "{\"event\":\"taken\",\"name\":\"a\"}\n{\"event\":\"stored\",\"name\":\"c\",\"items\":3}\n").unwrap();
        assert_eq!(reopen(dir.path()).boxes, BTreeMap::from([("b".to_string(), 2), ("c".to_string(), 3)]));
    }
}
