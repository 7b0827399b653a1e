//! Mounts as the kernel shows them (`/proc/self/mountinfo`, parsed purely) and the commands that
//! change them: mount, umount, mkfs, fsck, resize. The driver keeps no list of its own: what is
//! mounted is read back from the kernel, so a restarted driver adopts what it finds.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted file system.
    pub dev: String,
    /// The path inside the file system that is mounted (not `/` for a bind of a sub-directory).
    pub root: String,
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
}

impl MountEntry {
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Undoes mountinfo's octal escapes (`\040` is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let f: Vec<&str> = head.split(' ').collect();
            let t: Vec<&str> = tail.split(' ').collect();
            Some(MountEntry {
                dev: f.get(2)?.to_string(),
                root: unescape(f.get(3)?),
                mount_point: PathBuf::from(unescape(f.get(4)?)),
                options: f.get(5)?.to_string(),
                fs_type: t.first()?.to_string(),
                source: unescape(t.get(1).unwrap_or(&"")),
            })
        })
        .collect()
}

pub fn mounts() -> Vec<MountEntry> {
    parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// The topmost mount at `path`, if `path` is a mount point.
pub fn mounted_at(path: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| m.mount_point == path)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let text = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 36 7:3 / /var/lib/x/staging rw,relatime shared:7 - ext4 /dev/loop3 rw\n\
                    41 36 0:55 / /run/oss/v1 rw,nosuid,nodev - fuse.s3fs s3fs rw,user_id=0\n\
                    42 36 7:3 / /pods/t ro,relatime shared:7 - ext4 /dev/loop3 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].root, "/mnt1");
        assert_eq!(m[1].dev, "7:3");
        assert_eq!(m[1].source, "/dev/loop3");
        assert_eq!(m[2].fs_type, "fuse.s3fs");
        assert!(m[3].read_only() && !m[1].read_only());
    }
}
