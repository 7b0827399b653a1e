//! The volume plane: a disk is a sparse file `<state>/disks/<disk-id>.img`, attached as a loop
//! device with the link a VM shows for a virtio disk, `/dev/disk/by-id/virtio-<serial>`; a NAS file
//! system is an exported directory `<state>/nas/<fs-id>/`. A snapshot is a copy of its disk's
//! file, `<state>/snapshots/<snapshot-id>.img`, taken when the snapshot is created (so it holds the
//! data of that moment); a disk created from a snapshot starts as a copy of it. Both copies are
//! clones (reflinks: shared extents, copied on write, no data moved) where the state directory's
//! file system has them (XFS, btrfs), as a cloud's snapshot service shares blocks; elsewhere (ext4)
//! only the data extents of the sparse file are copied.
//!
//! A node verifies a device is the disk it expects by the link's serial and by the loop device's
//! backing file (`/sys/block/loopN/loop/backing_file` names `<disk-id>.img`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_cloud::model::{DiskStatus, SnapshotStatus};

use crate::state::{Plane, PlaneError, State};

pub const BY_ID_DIR: &str = "/dev/disk/by-id";
const GIB: u64 = 1 << 30;

pub struct VolumePlane {
    disks_dir: PathBuf,
    nas_dir: PathBuf,
    snapshots_dir: PathBuf,
    /// Snapshots whose copy failed, not yet told to the control plane (which marks them failed).
    failed_snapshots: std::sync::Mutex<BTreeSet<String>>,
}

/// What the plane must do to make the machine match the state. Pure: computed from the state and
/// what was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeOp {
    /// A new disk's file: blank, or a copy of a snapshot's.
    CreateFile { disk_id: String, size: u64, from_snapshot: Option<String> },
    GrowFile { disk_id: String, size: u64 },
    Attach { disk_id: String, serial: String },
    RefreshCapacity { device: String },
    Detach { device: String, serial: Option<String> },
    DeleteFile { disk_id: String },
    CreateExport { fs_id: String },
    DeleteExport { fs_id: String },
    /// A new snapshot's file: a copy of its disk's file as it is now.
    TakeSnapshot { snapshot_id: String, disk_id: String },
    DeleteSnapshotFile { snapshot_id: String },
}

/// The machine as observed: disk files (ID → size), attached loop devices (disk ID → device),
/// NAS export directories.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub files: BTreeMap<String, u64>,
    pub loops: BTreeMap<String, String>,
    pub exports: BTreeSet<String>,
    pub snapshots: BTreeSet<String>,
}

pub fn plan(state: &State, seen: &Observed) -> Vec<VolumeOp> {
    let mut ops = Vec::new();
    // Snapshots first: a snapshot holds its disk's data as it was before anything below runs. A
    // failed snapshot is not tried again (the service does not either: it is deleted).
    for s in state.snapshots.values() {
        if s.status != SnapshotStatus::Failed && !seen.snapshots.contains(&s.id) && seen.files.contains_key(&s.source_disk_id) {
            ops.push(VolumeOp::TakeSnapshot { snapshot_id: s.id.clone(), disk_id: s.source_disk_id.clone() });
        }
    }
    for d in state.disks.values() {
        let size = d.size_gib * GIB;
        match seen.files.get(&d.id) {
            None => ops.push(VolumeOp::CreateFile { disk_id: d.id.clone(), size, from_snapshot: d.source_snapshot_id.clone() }),
            Some(have) if *have < size => {
                ops.push(VolumeOp::GrowFile { disk_id: d.id.clone(), size });
                if let Some(dev) = seen.loops.get(&d.id) {
                    ops.push(VolumeOp::RefreshCapacity { device: dev.clone() });
                }
            }
            Some(_) => {}
        }
        let wants_device = matches!(d.status, DiskStatus::Attaching | DiskStatus::InUse) && d.instance_id.is_some();
        match (wants_device, seen.loops.get(&d.id)) {
            (true, None) => ops.push(VolumeOp::Attach { disk_id: d.id.clone(), serial: d.serial.clone() }),
            (false, Some(dev)) => ops.push(VolumeOp::Detach { device: dev.clone(), serial: Some(d.serial.clone()) }),
            _ => {}
        }
    }
    for (id, dev) in &seen.loops {
        if !state.disks.contains_key(id) {
            ops.push(VolumeOp::Detach { device: dev.clone(), serial: Some(id.trim_start_matches("d-").to_string()) });
        }
    }
    for id in seen.files.keys().filter(|id| !state.disks.contains_key(*id)) {
        ops.push(VolumeOp::DeleteFile { disk_id: id.clone() });
    }
    // A snapshot's file stays while a disk made from it has no file yet.
    let still_needed = |id: &String| state.disks.values().any(|d| d.source_snapshot_id.as_ref() == Some(id) && !seen.files.contains_key(&d.id));
    for id in seen.snapshots.iter().filter(|id| !state.snapshots.contains_key(*id) && !still_needed(id)) {
        ops.push(VolumeOp::DeleteSnapshotFile { snapshot_id: id.clone() });
    }
    for id in state.file_systems.keys().filter(|id| !seen.exports.contains(*id)) {
        ops.push(VolumeOp::CreateExport { fs_id: id.clone() });
    }
    for id in seen.exports.iter().filter(|id| !state.file_systems.contains_key(*id)) {
        ops.push(VolumeOp::DeleteExport { fs_id: id.clone() });
    }
    ops
}

fn fail(what: impl Into<String>, reason: impl ToString) -> PlaneError {
    PlaneError { plane: "volume", what: what.into(), reason: reason.to_string() }
}

fn run(cmd: &mut Command) -> Result<String, PlaneError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| fail(&shown, e))?;
    if !out.status.success() {
        return Err(fail(shown, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl VolumePlane {
    pub fn new(state_dir: &Path) -> VolumePlane {
        VolumePlane {
            disks_dir: state_dir.join("disks"),
            nas_dir: state_dir.join("nas"),
            snapshots_dir: state_dir.join("snapshots"),
            failed_snapshots: std::sync::Mutex::new(BTreeSet::new()),
        }
    }

    pub fn snapshot_file(&self, snapshot_id: &str) -> PathBuf {
        self.snapshots_dir.join(format!("{snapshot_id}.img"))
    }

    pub fn disk_file(&self, disk_id: &str) -> PathBuf {
        self.disks_dir.join(format!("{disk_id}.img"))
    }

    pub fn nas_export_dir(&self, fs_id: &str) -> PathBuf {
        self.nas_dir.join(fs_id)
    }

    /// Loop devices backed by a file of this plane: disk ID → `/dev/loopN`.
    fn observed_loops(&self) -> Result<BTreeMap<String, String>, PlaneError> {
        let out = run(Command::new("losetup").args(["--list", "--json", "--output", "NAME,BACK-FILE"]))?;
        let mut loops = BTreeMap::new();
        if out.trim().is_empty() {
            return Ok(loops);
        }
        let doc: serde_json::Value = serde_json::from_str(&out).map_err(|e| fail("losetup --json", e))?;
        let prefix = self.disks_dir.to_string_lossy().into_owned();
        for dev in doc["loopdevices"].as_array().into_iter().flatten() {
            let (Some(name), Some(back)) = (dev["name"].as_str(), dev["back-file"].as_str()) else { continue };
            // A deleted backing file shows as "<path> (deleted)".
            let back = back.trim_end_matches(" (deleted)");
            if let Some(file) = back.strip_prefix(&prefix)
                && let Some(id) = file.trim_start_matches('/').strip_suffix(".img")
            {
                loops.insert(id.to_string(), name.to_string());
            }
        }
        Ok(loops)
    }

    fn observe(&self) -> Result<Observed, PlaneError> {
        let mut seen = Observed { loops: self.observed_loops()?, ..Default::default() };
        for entry in std::fs::read_dir(&self.disks_dir).map_err(|e| fail(self.disks_dir.display().to_string(), e))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".img") {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                seen.files.insert(id.to_string(), len);
            }
        }
        for entry in std::fs::read_dir(&self.nas_dir).map_err(|e| fail(self.nas_dir.display().to_string(), e))?.flatten() {
            if entry.path().is_dir() {
                seen.exports.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
        for entry in std::fs::read_dir(&self.snapshots_dir).map_err(|e| fail(self.snapshots_dir.display().to_string(), e))?.flatten() {
            if let Some(id) = entry.file_name().to_string_lossy().strip_suffix(".img") {
                seen.snapshots.insert(id.to_string());
            }
        }
        Ok(seen)
    }

    fn link(serial: &str) -> PathBuf {
        Path::new(BY_ID_DIR).join(format!("virtio-{serial}"))
    }

    fn apply(&self, op: &VolumeOp) -> Result<(), PlaneError> {
        match op {
            VolumeOp::CreateFile { disk_id, size, from_snapshot: Some(snapshot_id) } => {
                let path = self.disk_file(disk_id);
                clone_or_copy(&self.snapshot_file(snapshot_id), &path, Some(*size)).map_err(|e| fail(format!("restoring {snapshot_id} to {}", path.display()), e))
            }
            VolumeOp::TakeSnapshot { snapshot_id, disk_id } => {
                let path = self.snapshot_file(snapshot_id);
                let taken = clone_or_copy(&self.disk_file(disk_id), &path, None).map_err(|e| fail(format!("snapshot of {disk_id} to {}", path.display()), e));
                if taken.is_err() {
                    self.failed_snapshots.lock().unwrap_or_else(|e| e.into_inner()).insert(snapshot_id.clone());
                }
                taken
            }
            VolumeOp::DeleteSnapshotFile { snapshot_id } => {
                let path = self.snapshot_file(snapshot_id);
                std::fs::remove_file(&path).or_else(ignore_missing).map_err(|e| fail(path.display().to_string(), e))
            }
            VolumeOp::CreateFile { disk_id, size, from_snapshot: None } | VolumeOp::GrowFile { disk_id, size } => {
                let path = self.disk_file(disk_id);
                let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| fail(path.display().to_string(), e))?;
                // set_len leaves a hole: the file takes no space until written.
                f.set_len(*size).map_err(|e| fail(path.display().to_string(), e))
            }
            VolumeOp::Attach { disk_id, serial } => {
                let file = self.disk_file(disk_id);
                let device = run(Command::new("losetup").arg("--find").arg("--show").arg(&file))?.trim().to_string();
                std::fs::create_dir_all(BY_ID_DIR).map_err(|e| fail(BY_ID_DIR, e))?;
                let link = Self::link(serial);
                let tmp = link.with_extension("tmp");
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(&device, &tmp).map_err(|e| fail(tmp.display().to_string(), e))?;
                std::fs::rename(&tmp, &link).map_err(|e| fail(link.display().to_string(), e))
            }
            VolumeOp::RefreshCapacity { device } => run(Command::new("losetup").arg("--set-capacity").arg(device)).map(drop),
            VolumeOp::Detach { device, serial } => {
                if let Some(serial) = serial {
                    let link = Self::link(serial);
                    if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(device)) {
                        let _ = std::fs::remove_file(&link);
                    }
                }
                run(Command::new("losetup").arg("--detach").arg(device)).map(drop)
            }
            VolumeOp::DeleteFile { disk_id } => {
                let path = self.disk_file(disk_id);
                std::fs::remove_file(&path).or_else(ignore_missing).map_err(|e| fail(path.display().to_string(), e))
            }
            VolumeOp::CreateExport { fs_id } => {
                use std::os::unix::fs::PermissionsExt as _;
                let dir = self.nas_export_dir(fs_id);
                std::fs::create_dir_all(&dir).map_err(|e| fail(dir.display().to_string(), e))?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(|e| fail(dir.display().to_string(), e))
            }
            VolumeOp::DeleteExport { fs_id } => {
                let dir = self.nas_export_dir(fs_id);
                std::fs::remove_dir_all(&dir).or_else(ignore_missing).map_err(|e| fail(dir.display().to_string(), e))
            }
        }
    }
}

/// Makes `to` a copy of `from` (extended to `len`): a clone sharing `from`'s extents where the file
/// system can (FICLONE: no data is moved, blocks are copied when either file writes them), else
/// [`copy_sparse`]. Through a temporary file either way, so `to` is whole or absent.
pub fn clone_or_copy(from: &Path, to: &Path, len: Option<u64>) -> std::io::Result<()> {
    let done = match try_clone(from, to, len) {
        Ok(true) => Ok(()),
        Ok(false) => copy_sparse(from, to, len),
        Err(e) => Err(e),
    };
    if done.is_err() {
        let _ = std::fs::remove_file(to.with_extension("part"));
    }
    done
}

/// The clone of [`clone_or_copy`]; `Ok(false)` where the file system has no clones (or not between
/// these two files), having left nothing behind.
fn try_clone(from: &Path, to: &Path, len: Option<u64>) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    let src = std::fs::File::open(from)?;
    let tmp = to.with_extension("part");
    let dst = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&tmp)?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open.
    if unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } != 0 {
        let e = std::io::Error::last_os_error();
        drop(dst);
        let _ = std::fs::remove_file(&tmp);
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EXDEV | libc::EINVAL | libc::ENOSYS) => Ok(false),
            _ => Err(e),
        };
    }
    if let Some(len) = len.filter(|l| *l > src.metadata().map(|m| m.len()).unwrap_or(0)) {
        dst.set_len(len)?;
    }
    dst.sync_all()?;
    std::fs::rename(&tmp, to)?;
    Ok(true)
}

/// Copies `from` to `to` (through a temporary file, so `to` is whole or absent) copying only the
/// data extents: holes stay holes, so a 20 GiB file holding 1 GiB copies 1 GiB. With `len`, the copy
/// is then extended to that length.
pub fn copy_sparse(from: &Path, to: &Path, len: Option<u64>) -> std::io::Result<()> {
    use std::io::{Read as _, Seek as _, SeekFrom};

    use nix::unistd::{Whence, lseek};
    let src = std::fs::File::open(from)?;
    let src_len = src.metadata()?.len();
    let tmp = to.with_extension("part");
    let dst = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&tmp)?;
    dst.set_len(src_len)?;
    let mut offset: i64 = 0;
    while (offset as u64) < src_len {
        let start = match lseek(&src, offset, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = lseek(&src, start, Whence::SeekHole)?;
        // std copies File to File with copy_file_range: in the kernel, no user-space buffer.
        (&src).seek(SeekFrom::Start(start as u64))?;
        (&dst).seek(SeekFrom::Start(start as u64))?;
        std::io::copy(&mut (&src).take((end - start) as u64), &mut &dst)?;
        offset = end;
    }
    if let Some(len) = len.filter(|l| *l > src_len) {
        dst.set_len(len)?;
    }
    dst.sync_all()?;
    std::fs::rename(&tmp, to)
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }
}

impl Plane for VolumePlane {
    fn converge(&self, state: &State) -> Result<(), PlaneError> {
        for dir in [&self.disks_dir, &self.nas_dir, &self.snapshots_dir] {
            std::fs::create_dir_all(dir).map_err(|e| fail(dir.display().to_string(), e))?;
        }
        let seen = self.observe()?;
        let mut errors = Vec::new();
        for op in plan(state, &seen) {
            if let Err(e) = self.apply(&op) {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(fail("converge", errors.join("; "))) }
    }

    fn failed_snapshots(&self) -> Vec<String> {
        std::mem::take(&mut *self.failed_snapshots.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect()
    }

    fn teardown(&self) -> Result<(), PlaneError> {
        if !self.disks_dir.exists() {
            return Ok(());
        }
        let mut errors = Vec::new();
        for (id, device) in self.observed_loops()? {
            let op = VolumeOp::Detach { device, serial: Some(id.trim_start_matches("d-").to_string()) };
            if let Err(e) = self.apply(&op) {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(fail("teardown", errors.join("; "))) }
    }
}

#[cfg(test)]
mod tests {
    use berth_cloud::model::Disk;

    use super::*;

    fn disk(id: &str, status: DiskStatus, size_gib: u64) -> Disk {
        Disk {
            id: id.into(),
            name: String::new(),
            zone_id: "z".into(),
            category: "cloud_essd".into(),
            performance_level: "PL0".into(),
            size_gib,
            status,
            instance_id: (status != DiskStatus::Available).then(|| "i-1".into()),
            serial: id.trim_start_matches("d-").into(),
            device: None,
            system: false,
            source_snapshot_id: None,
            description: String::new(),
        }
    }

    #[test]
    fn plans_files_devices_and_exports() {
        let mut state = State::default();
        state.disks.insert("d-a".into(), disk("d-a", DiskStatus::InUse, 1));
        state.disks.insert("d-b".into(), disk("d-b", DiskStatus::Available, 2));
        state.disks.insert("d-c".into(), disk("d-c", DiskStatus::InUse, 3));
        let mut seen = Observed::default();
        seen.files.insert("d-b".into(), 2 * GIB);
        seen.files.insert("d-c".into(), GIB);
        seen.files.insert("d-gone".into(), GIB);
        seen.loops.insert("d-b".into(), "/dev/loop7".into());
        seen.loops.insert("d-c".into(), "/dev/loop8".into());
        seen.exports.insert("old".into());
        state.file_systems.insert("fs1".into(), berth_cloud::model::NasFileSystem {
            id: "fs1".into(), zone_id: "z".into(), vpc_id: "v".into(), protocol: "NFS".into(), mount_target: String::new(), capacity_gib: 1,
        });
        let ops = plan(&state, &seen);
        assert_eq!(ops, vec![
            VolumeOp::CreateFile { disk_id: "d-a".into(), size: GIB, from_snapshot: None },
            VolumeOp::Attach { disk_id: "d-a".into(), serial: "a".into() },
            VolumeOp::Detach { device: "/dev/loop7".into(), serial: Some("b".into()) },
            VolumeOp::GrowFile { disk_id: "d-c".into(), size: 3 * GIB },
            VolumeOp::RefreshCapacity { device: "/dev/loop8".into() },
            VolumeOp::DeleteFile { disk_id: "d-gone".into() },
            VolumeOp::CreateExport { fs_id: "fs1".into() },
            VolumeOp::DeleteExport { fs_id: "old".into() },
        ]);
    }

    #[test]
    fn snapshots_are_taken_before_anything_changes_and_kept_while_a_restore_needs_them() {
        let snap = |id: &str, disk: &str| berth_cloud::model::Snapshot {
            id: id.into(), name: String::new(), source_disk_id: disk.into(), source_disk_size_gib: 1,
            status: berth_cloud::model::SnapshotStatus::Progressing, progress_percent: 0, creation_time: String::new(),
        };
        let mut state = State::default();
        state.disks.insert("d-a".into(), disk("d-a", DiskStatus::Available, 1));
        state.snapshots.insert("s-1".into(), snap("s-1", "d-a"));
        let mut restored = disk("d-r", DiskStatus::Available, 4);
        restored.source_snapshot_id = Some("s-gone".into());
        state.disks.insert("d-r".into(), restored);
        let mut seen = Observed::default();
        seen.files.insert("d-a".into(), GIB);
        seen.snapshots.insert("s-gone".into());
        seen.snapshots.insert("s-old".into());
        assert_eq!(plan(&state, &seen), vec![
            VolumeOp::TakeSnapshot { snapshot_id: "s-1".into(), disk_id: "d-a".into() },
            VolumeOp::CreateFile { disk_id: "d-r".into(), size: 4 * GIB, from_snapshot: Some("s-gone".into()) },
            VolumeOp::DeleteSnapshotFile { snapshot_id: "s-old".into() },
        ]);
        seen.files.insert("d-r".into(), 4 * GIB);
        seen.snapshots.insert("s-1".into());
        assert_eq!(plan(&state, &seen), vec![VolumeOp::DeleteSnapshotFile { snapshot_id: "s-gone".into() }, VolumeOp::DeleteSnapshotFile { snapshot_id: "s-old".into() }]);
    }

    #[test]
    fn a_sparse_copy_keeps_data_and_holes() {
        use std::io::{Seek as _, SeekFrom, Write as _};
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        let mut f = std::fs::File::create(&a).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.seek(SeekFrom::Start((64 << 20) - 3)).unwrap();
        f.write_all(b"end").unwrap();
        drop(f);
        copy_sparse(&a, &b, Some(128 << 20)).unwrap();
        let bytes = std::fs::read(&b).unwrap();
        assert_eq!(bytes.len(), 128 << 20);
        assert_eq!(&bytes[32 << 20..(32 << 20) + 6], b"middle");
        assert_eq!(&bytes[(64 << 20) - 3..64 << 20], b"end");
        assert!(bytes[..32 << 20].iter().all(|b| *b == 0));
        assert!(std::fs::metadata(&b).unwrap().blocks() * 512 < 1 << 20, "the holes were not written");
        assert!(!b.with_extension("part").exists());
    }

    #[test]
    fn a_snapshot_whose_copy_fails_is_told_once_and_not_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let plane = VolumePlane::new(dir.path());
        let mut state = State::default();
        state.disks.insert("d-a".into(), disk("d-a", DiskStatus::Available, 1));
        let mut snap = berth_cloud::model::Snapshot {
            id: "s-1".into(), name: String::new(), source_disk_id: "d-a".into(), source_disk_size_gib: 1,
            status: SnapshotStatus::Progressing, progress_percent: 0, creation_time: String::new(),
        };
        state.snapshots.insert("s-1".into(), snap.clone());
        // A disk "file" that cannot be read as one.
        std::fs::create_dir_all(dir.path().join("disks").join("d-a.img")).unwrap();
        assert!(plane.converge(&state).is_err());
        assert_eq!(plane.failed_snapshots(), vec!["s-1".to_string()]);
        assert!(plane.failed_snapshots().is_empty(), "told once");
        assert!(!plane.snapshot_file("s-1").exists() && !plane.snapshot_file("s-1").with_extension("part").exists(), "nothing half-made is left");
        snap.status = SnapshotStatus::Failed;
        state.snapshots.insert("s-1".into(), snap);
        let mut seen = Observed::default();
        seen.files.insert("d-a".into(), GIB);
        assert!(plan(&state, &seen).is_empty(), "a failed snapshot is not taken again");
    }

    #[test]
    fn a_clone_or_copy_holds_the_data_whichever_the_file_system_does() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        let mut data = vec![0u8; 3 << 20];
        data[1 << 20..(1 << 20) + 5].copy_from_slice(b"hello");
        std::fs::write(&a, &data).unwrap();
        clone_or_copy(&a, &b, Some(8 << 20)).unwrap();
        let got = std::fs::read(&b).unwrap();
        assert_eq!(got.len(), 8 << 20);
        assert_eq!(&got[..3 << 20], &data[..]);
        // Writing the copy leaves the original as it was (a clone is copied on write).
        std::fs::write(&b, b"changed").unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), data);
        assert!(!b.with_extension("part").exists());
    }

    #[test]
    fn converged_state_needs_nothing() {
        let mut state = State::default();
        state.disks.insert("d-a".into(), disk("d-a", DiskStatus::InUse, 1));
        let mut seen = Observed::default();
        seen.files.insert("d-a".into(), GIB);
        seen.loops.insert("d-a".into(), "/dev/loop3".into());
        assert!(plan(&state, &seen).is_empty());
    }
}
