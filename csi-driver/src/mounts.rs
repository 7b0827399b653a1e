//! Mounts as the kernel shows them (`berth_daemon::mountinfo`) and the commands that
//! change them: mount, umount, mkfs, fsck, resize. The driver keeps no list of its own: what is
//! mounted is read back from the kernel, so a restarted driver adopts what it finds.

use std::path::Path;
use std::process::Command;

pub use berth_daemon::mountinfo::{MountEntry, mounted_at, mounts};

/// How many mounts are stacked at `path`.
pub fn mount_count(path: &Path) -> usize {
    mounts().iter().filter(|m| m.mount_point == path).count()
}

#[derive(Debug, thiserror::Error)]
#[error("{command}: {reason}")]
pub struct CommandError {
    pub command: String,
    pub reason: String,
    pub code: Option<i32>,
}

/// Runs a command; its argv never holds a secret (credentials go through files).
pub fn run(program: &str, args: &[&str]) -> Result<String, CommandError> {
    let shown = format!("{program} {}", args.join(" "));
    let out = Command::new(program).args(args).output().map_err(|e| CommandError { command: shown.clone(), reason: e.to_string(), code: None })?;
    if !out.status.success() {
        let reason = format!("exit {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        return Err(CommandError { command: shown, reason, code: out.status.code() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

pub fn mount(source: &str, target: &Path, fs_type: Option<&str>, options: &[String]) -> Result<(), CommandError> {
    let mut args: Vec<&str> = Vec::new();
    if let Some(t) = fs_type {
        args.extend(["-t", t]);
    }
    let joined = options.join(",");
    if !joined.is_empty() {
        args.extend(["-o", &joined]);
    }
    args.extend([source, p(target)]);
    run("mount", &args).map(drop)
}

/// A bind mount, made read-only in a second step when asked (the kernel ignores `ro` on the bind itself).
pub fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), CommandError> {
    run("mount", &["--bind", p(source), p(target)])?;
    if read_only && let Err(e) = run("mount", &["-o", "remount,bind,ro", p(target)]) {
        // Never leave a writable mount where a read-only one was asked for.
        let _ = run("umount", &[p(target)]);
        return Err(e);
    }
    Ok(())
}

/// Unmounts every mount stacked at `target`; nothing mounted is success.
pub fn unmount_all(target: &Path) -> Result<(), CommandError> {
    while mounted_at(target).is_some() {
        run("umount", &[p(target)])?;
    }
    Ok(())
}

/// Lazily detaches a dead mount (a FUSE mount whose process is gone cannot be unmounted normally).
pub fn detach_lazily(target: &Path) -> Result<(), CommandError> {
    while mounted_at(target).is_some() {
        run("umount", &["-l", p(target)])?;
    }
    Ok(())
}

/// The file system on a device, or `None` when it is blank.
pub fn fs_type_of(device: &Path) -> Result<Option<String>, CommandError> {
    match run("blkid", &["-p", "-o", "value", "-s", "TYPE", p(device)]) {
        Ok(out) => Ok(Some(out.trim().to_string()).filter(|t| !t.is_empty())),
        // blkid exits 2 when it finds nothing it knows.
        Err(e) if e.code == Some(2) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn mkfs(device: &Path, fs_type: &str) -> Result<(), CommandError> {
    match fs_type {
        "xfs" => run("mkfs.xfs", &["-q", p(device)]).map(drop),
        _ => run("mkfs.ext4", &["-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", p(device)]).map(drop),
    }
}

/// Repairs what is safe to repair before mounting; xfs checks itself when mounted.
pub fn fsck(device: &Path, fs_type: &str) -> Result<(), CommandError> {
    if fs_type != "ext4" {
        return Ok(());
    }
    match run("fsck.ext4", &["-p", p(device)]) {
        Ok(_) => Ok(()),
        // 1: errors corrected; 2: corrected, reboot advised (not for a data disk). Both mount.
        Err(e) if matches!(e.code, Some(1 | 2)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Grows the mounted file system to its device.
pub fn resize(device: &Path, mount_point: &Path, fs_type: &str) -> Result<(), CommandError> {
    match fs_type {
        "xfs" => run("xfs_growfs", &[p(mount_point)]).map(drop),
        _ => run("resize2fs", &[p(device)]).map(drop),
    }
}

/// Bytes of a block device.
pub fn device_bytes(device: &Path) -> Result<i64, CommandError> {
    let out = run("blockdev", &["--getsize64", p(device)])?;
    out.trim().parse().map_err(|_| CommandError { command: format!("blockdev --getsize64 {}", device.display()), reason: format!("unexpected output {out:?}"), code: None })
}
