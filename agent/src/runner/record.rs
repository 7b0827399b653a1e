//! What the runner keeps of each pod on disk, so a restarted agent adopts its pods instead of
//! making them again: one JSON file per pod under `<state>/runner/records/`, written atomically
//! (temporary file, fsync, rename, fsync of the directory) before and after each step that
//! changes the node, so an agent killed at any point knows what may need undoing. Which pods are
//! adopted is decided by [`decide`], purely.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use berth_proto::cluster::v1 as pb;
use prost::Message as _;
use serde::{Deserialize, Serialize};

/// A pod's command, told apart from a later process with the same pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat: clock ticks after boot.
    pub start_ticks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum RecordState {
    /// Being set up: what the record lists may be half done.
    Starting,
    Running,
    /// The command ended; the pod keeps its network and volumes until it is removed.
    Ended { succeeded: bool, message: String },
    /// The set-up failed and was undone (what could not be undone is still listed).
    Failed { message: String },
    /// A volume could not be set up; what was done is undone and the set-up is tried again at
    /// `retry_at_ms` (Unix milliseconds), the `attempt`-th failure having been `message`.
    Waiting { message: String, attempt: u32, retry_at_ms: u64 },
    /// Being removed.
    Removing,
}

/// One volume of a pod, and how far its set-up went. Each flag is set (and written) before its
/// call is made, so it means "may be done": undoing is idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    /// The CSI name of a volume the pod owns (made by CreateVolume); None for an existing volume.
    pub csi_name: Option<String>,
    pub volume_id: Option<String>,
    pub ephemeral: bool,
    pub node_id: String,
    pub controller_published: bool,
    pub staging: Option<PathBuf>,
    pub target: PathBuf,
    pub published: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub key: String,
    pub netns: String,
    pub container_id: String,
    /// The pod's spec, protobuf-encoded, in hex.
    pub spec: String,
    pub state: RecordState,
    /// The pod's directory (its command's working directory, where its volumes are).
    pub dir: PathBuf,
    pub volumes: Vec<VolumeRecord>,
    /// CNI ADD was run (or may have been).
    pub network: bool,
    pub cni_result: Option<serde_json::Value>,
    pub ip: String,
    pub command: Option<ProcessId>,
}

pub fn encode_spec(spec: &pb::PodSpec) -> String {
    spec.encode_to_vec().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_spec(hex: &str) -> Option<pb::PodSpec> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    pb::PodSpec::decode(bytes?.as_slice()).ok()
}

/// What a restarted agent does with a pod it finds recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnRestart {
    /// It runs as recorded: keep it, run nothing again.
    Adopt,
    /// Its state is final (ended or failed): report it as it is.
    Keep,
    /// Undo what the record lists and make it again when the scheduler still binds it.
    Redo(String),
}

/// The decision for a recorded pod, from what the node shows: whether its namespace exists and
/// whether its command is the same live process (`None`: it has no command).
pub fn decide(rec: &PodRecord, netns_exists: bool, command_alive: Option<bool>) -> OnRestart {
    match &rec.state {
        RecordState::Ended { .. } | RecordState::Failed { .. } | RecordState::Waiting { .. } => OnRestart::Keep,
        RecordState::Starting => OnRestart::Redo("its set-up had not finished when the agent stopped".into()),
        RecordState::Removing => OnRestart::Redo("its removal had not finished when the agent stopped".into()),
        RecordState::Running if !netns_exists => OnRestart::Redo(format!("its namespace {} is gone", rec.netns)),
        RecordState::Running if !rec.network || rec.cni_result.is_none() => OnRestart::Redo("its network was not recorded as made".into()),
        RecordState::Running => match (rec.command, command_alive) {
            (Some(c), Some(false)) => OnRestart::Redo(format!("its command (pid {}) is no longer running", c.pid)),
            (Some(_), None) => OnRestart::Redo("its command was not checked".into()),
            _ => OnRestart::Adopt,
        },
    }
}

/// (state, start ticks, process group) of a process from the text of /proc/<pid>/stat.
pub fn parse_stat(text: &str) -> Option<(char, u64, i32)> {
    // The command name (field 2) is in parentheses and may hold spaces and ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 5 is the group, field 22 the start time.
    Some((f.first()?.chars().next()?, f.get(19)?.parse().ok()?, f.get(2)?.parse().ok()?))
}

fn stat_of(pid: i32) -> Option<(char, u64, i32)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The identity of a running process.
pub fn process_id(pid: i32) -> Option<ProcessId> {
    stat_of(pid).map(|(_, start_ticks, _)| ProcessId { pid, start_ticks })
}

/// Whether `p` is still that process and alive (not a zombie, not a later process with its pid).
pub fn is_alive(p: &ProcessId) -> bool {
    matches!(stat_of(p.pid), Some((state, start, _)) if start == p.start_ticks && !matches!(state, 'Z' | 'X' | 'x'))
}

/// Whether `p` leads its own process group (the runner starts each command as one).
pub fn leads_group(p: &ProcessId) -> bool {
    matches!(stat_of(p.pid), Some((_, start, pgrp)) if start == p.start_ticks && pgrp == p.pid)
}

/// The records' directory.
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    pub fn open(dir: &Path) -> std::io::Result<RecordStore> {
        std::fs::create_dir_all(dir)?;
        Ok(RecordStore { dir: dir.to_path_buf() })
    }

    fn path(&self, netns: &str) -> PathBuf {
        self.dir.join(format!("{netns}.json"))
    }

    pub fn save(&self, rec: &PodRecord) -> std::io::Result<()> {
        let path = self.path(&rec.netns);
        let tmp = self.dir.join(format!(".{}.tmp", rec.netns));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    pub fn delete(&self, netns: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(netns)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::fs::File::open(&self.dir)?.sync_all(),
        }
    }

    /// Every record; unreadable files are named in the log and skipped.
    pub fn load(&self) -> Vec<PodRecord> {
        let mut out = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
        files.sort();
        for path in files {
            match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice::<PodRecord>(&b).map_err(|e| e.to_string())) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "an unreadable pod record is ignored"),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> PodRecord {
        PodRecord {
            key: "default/web".into(),
            netns: "p-1".into(),
            container_id: "c".into(),
            spec: encode_spec(&pb::PodSpec { namespace: "default".into(), name: "web".into(), labels: [("a".to_string(), "b".to_string()), ("c".to_string(), "d".to_string())].into(), ..Default::default() }),
            state: RecordState::Running,
            dir: "/x".into(),
            volumes: Vec::new(),
            network: true,
            cni_result: Some(serde_json::json!({"ips": []})),
            ip: "10.0.0.2".into(),
            command: Some(ProcessId { pid: 42, start_ticks: 7 }),
        }
    }

    #[test]
    fn a_running_pod_is_adopted_only_when_its_namespace_and_command_are_still_there() {
        let r = running();
        assert_eq!(decide(&r, true, Some(true)), OnRestart::Adopt);
        assert!(matches!(decide(&r, false, Some(true)), OnRestart::Redo(why) if why.contains("namespace")));
        assert!(matches!(decide(&r, true, Some(false)), OnRestart::Redo(why) if why.contains("pid 42")));
        let no_command = PodRecord { command: None, ..running() };
        assert_eq!(decide(&no_command, true, None), OnRestart::Adopt);
        let no_net = PodRecord { cni_result: None, ..running() };
        assert!(matches!(decide(&no_net, true, Some(true)), OnRestart::Redo(_)));
        for state in [RecordState::Starting, RecordState::Removing] {
            assert!(matches!(decide(&PodRecord { state, ..running() }, true, Some(true)), OnRestart::Redo(_)));
        }
        for state in [RecordState::Ended { succeeded: true, message: String::new() }, RecordState::Failed { message: "x".into() }] {
            assert_eq!(decide(&PodRecord { state, ..running() }, false, None), OnRestart::Keep);
        }
    }

    #[test]
    fn records_round_trip_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(&dir.path().join("records")).unwrap();
        let mut r = running();
        r.volumes.push(VolumeRecord { name: "data".into(), csi_name: Some("pod-x".into()), volume_id: Some("d-1".into()), ephemeral: true, node_id: "i-1".into(), controller_published: true, staging: Some("/s".into()), target: "/x/data".into(), published: true });
        store.save(&r).unwrap();
        r.state = RecordState::Failed { message: "m".into() };
        store.save(&r).unwrap();
        std::fs::write(dir.path().join("records/broken.json"), b"{").unwrap();
        assert_eq!(store.load(), vec![r.clone()]);
        let spec = decode_spec(&r.spec).unwrap();
        assert_eq!(spec.labels.len(), 2);
        assert_eq!(encode_spec(&spec).len(), r.spec.len());
        store.delete("p-1").unwrap();
        store.delete("p-1").unwrap();
        assert!(store.load().is_empty());
        assert!(decode_spec("zz").is_none());
    }

    #[test]
    fn stat_lines_give_state_start_and_group() {
        let line = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_stat(line), Some(('S', 987_654, 1234)));
        assert_eq!(parse_stat("garbage"), None);
        let me = process_id(std::process::id() as i32).unwrap();
        assert!(is_alive(&me));
        assert!(!is_alive(&ProcessId { start_ticks: me.start_ticks + 1, ..me }), "a reused pid is another process");
    }
}
