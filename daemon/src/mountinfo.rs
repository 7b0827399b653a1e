//! The mount table as the kernel shows it to this process (`/proc/self/mountinfo`), parsed purely:
//! the CSI driver reads back what it mounted, the pod runner and the local cloud's guests find what
//! is left under a directory before removing it.

use std::path::{Path, PathBuf};

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

/// The entries of a mountinfo text, in its order (a later entry is mounted over an earlier one).
pub fn parse(text: &str) -> Vec<MountEntry> {
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

/// This process's mounts now (none if `/proc` cannot be read).
pub fn mounts() -> Vec<MountEntry> {
    parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// The topmost mount at `path`, if `path` is a mount point.
pub fn mounted_at(path: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| m.mount_point == path)
}

/// Mount points at or under `dir` in `entries`, deepest first (the order to unmount them in).
pub fn mount_points_under(entries: &[MountEntry], dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = entries.iter().map(|m| m.mount_point.clone()).filter(|p| p.starts_with(dir)).collect();
    found.sort_by(|a, b| b.components().count().cmp(&a.components().count()).then_with(|| a.cmp(b)));
    found.dedup();
    found
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escapes_and_optional_fields() {
        let text = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 36 7:3 / /var/lib/x/staging rw,relatime shared:7 - ext4 /dev/loop3 rw\n\
                    41 36 0:55 / /run/oss/v1 rw,nosuid,nodev - fuse.s3fs s3fs rw,user_id=0\n\
                    42 36 7:3 / /pods/t ro,relatime shared:7 - ext4 /dev/loop3 rw\n";
        let m = parse(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].root, "/mnt1");
        assert_eq!(m[1].dev, "7:3");
        assert_eq!(m[1].source, "/dev/loop3");
        assert_eq!(m[2].fs_type, "fuse.s3fs");
        assert!(m[3].read_only() && !m[1].read_only());
    }

    #[test]
    fn mount_points_under_a_directory_come_deepest_first() {
        let info = "\
22 1 0:21 / /proc rw - proc proc rw
90 30 0:50 / /s/guests/i-1/m rw - tmpfs tmpfs rw
91 90 0:51 / /s/guests/i-1/m/inner rw - tmpfs tmpfs rw
92 30 0:52 / /s/guests/i-1/with\\040space rw - tmpfs tmpfs rw
93 30 0:53 / /s/guests/i-10/m rw - tmpfs tmpfs rw
94 30 0:54 / /s/guests/i-1/m/inner rw - tmpfs tmpfs rw
";
        let found = mount_points_under(&parse(info), Path::new("/s/guests/i-1"));
        assert_eq!(found[0], PathBuf::from("/s/guests/i-1/m/inner"));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found.contains(&PathBuf::from("/s/guests/i-1/with space")));
    }
}
