//! How a guest finds a cloud disk: by the serial the cloud gives it, through the
//! `/dev/disk/by-id/virtio-<serial>` link udev makes, checked against the device's own serial in
//! sysfs (a VM) or its backing file (the local cloud's loop devices). Never by diffing `/dev`.

use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

pub const BY_ID_DIR: &str = "/dev/disk/by-id";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("no device for disk {disk_id} yet: {link} is missing")]
    Missing { disk_id: String, link: String },
    #[error("{device} is not disk {disk_id}: {why}; refusing to use it")]
    Mismatch { disk_id: String, device: String, why: String },
}

/// The virtio serial of a disk as the guest sees it (the real service truncates it to 20 bytes).
fn guest_serial(serial: &str) -> &str {
    &serial[..serial.len().min(20)]
}

/// The block device of `disk_id` with `serial`, verified; `by_id_dir` is normally [`BY_ID_DIR`].
/// Verified through sysfs, so a process with a private `/dev` that sees only `/dev/disk` (the
/// agent under systemd) can check a device it never opens.
pub fn find_disk_device(by_id_dir: &Path, disk_id: &str, serial: &str) -> Result<PathBuf, DeviceError> {
    let link = by_id_dir.join(format!("virtio-{}", guest_serial(serial)));
    let missing = || DeviceError::Missing { disk_id: disk_id.into(), link: link.display().to_string() };
    let target = std::fs::read_link(&link).map_err(|_| missing())?;
    // udev links are relative (../../vdb), the local cloud's absolute (/dev/loop3).
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(missing)?;
    let device = Path::new("/dev").join(&name);
    let mismatch = |why: String| DeviceError::Mismatch { disk_id: disk_id.into(), device: device.display().to_string(), why };
    match std::fs::metadata(&device) {
        Ok(meta) if !meta.file_type().is_block_device() => return Err(mismatch("not a block device".into())),
        _ => {}
    }
    let sys = Path::new("/sys/block").join(&name);
    if !sys.exists() {
        return Err(missing());
    }
    if let Ok(found) = std::fs::read_to_string(sys.join("serial")) {
        return if found.trim() == guest_serial(serial) { Ok(device) } else { Err(mismatch(format!("its serial is {:?}", found.trim()))) };
    }
    if let Ok(backing) = std::fs::read_to_string(sys.join("loop/backing_file")) {
        let backing = backing.trim().trim_end_matches(" (deleted)");
        return if backing.ends_with(&format!("/{disk_id}.img")) { Ok(device) } else { Err(mismatch(format!("it is backed by {backing}"))) };
    }
    Err(mismatch("sysfs shows neither a serial nor a backing file for it".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_dangling_link_is_missing_not_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(find_disk_device(dir.path(), "d-abc", "abc"), Err(DeviceError::Missing { .. })));
        std::os::unix::fs::symlink("/dev/berth-no-such-device", dir.path().join("virtio-abc")).unwrap();
        assert!(matches!(find_disk_device(dir.path(), "d-abc", "abc"), Err(DeviceError::Missing { .. })));
        assert_eq!(guest_serial("0123456789abcdefghijXYZ"), "0123456789abcdefghij");
    }
}
