//! cgroup v2 directories for pods: made, entered by a starting command, read for CPU time, and
//! removed with what is left in them. A pod's processes are put in its cgroup before its command
//! starts, so everything it forks is counted and goes with it.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on a unified system, its
/// `unified` directory on a hybrid one; `None` without cgroup v2.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_mount_in(&mounts)
}

fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    let points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(point))
        })
        .collect();
    points.iter().find(|p| p.as_path() == Path::new("/sys/fs/cgroup")).or(points.first()).cloned()
}

/// One cgroup v2 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn at(path: impl Into<PathBuf>) -> Cgroup {
        Cgroup { path: path.into() }
    }

    /// Makes it (already there is fine) and opens its `cgroup.procs`, for [`Cgroup::enter`] from
    /// a starting command. Its parent must exist and be writable: the top of a cgroup v2 mount is
    /// writable only with CAP_DAC_OVERRIDE.
    pub fn create(&self) -> std::io::Result<OwnedFd> {
        match std::fs::create_dir(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let f = std::fs::OpenOptions::new().write(true).open(self.path.join("cgroup.procs"))?;
        Ok(f.into())
    }

    /// Moves the calling process into the cgroup whose `cgroup.procs` is `procs` (for `pre_exec`:
    /// only a write, async-signal-safe).
    pub fn enter(procs: &OwnedFd) -> std::io::Result<()> {
        let zero = b"0";
        // SAFETY: a write of a static buffer to an open descriptor.
        match unsafe { libc::write(procs.as_raw_fd(), zero.as_ptr().cast(), zero.len()) } {
            n if n == zero.len() as isize => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// CPU time its processes used so far (`usage_usec` of `cpu.stat`, which cgroup v2 keeps for
    /// every cgroup, whatever controllers are enabled).
    pub fn cpu_used(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(self.path.join("cpu.stat")).ok()?;
        cpu_usage_in(&stat)
    }

    /// Kills what is left in it and in the cgroups below, and removes them all; gone already is
    /// fine.
    pub fn remove(&self) -> Result<(), String> {
        let children = match std::fs::read_dir(&self.path) {
            Ok(entries) => entries.filter_map(Result::ok).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| Cgroup::at(e.path())).collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("reading the cgroup {}: {e}", self.path.display())),
        };
        for child in children {
            child.remove()?;
        }
        if std::fs::write(self.path.join("cgroup.kill"), "1").is_err() {
            // Kernels before 5.14: one by one.
            for pid in std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) of a process the cgroup lists.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                // Busy while the killed processes are reaped.
                Err(e) if Instant::now() > deadline => return Err(format!("removing the cgroup {}: {e}", self.path.display())),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

fn cpu_usage_in(stat: &str) -> Option<Duration> {
    stat.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse().ok()).map(Duration::from_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_mount_is_preferred_to_a_hybrid_ones() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n36 25 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount_in(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        // /sys/fs/cgroup wins even when another cgroup2 mount is listed before it.
        let unified = "31 25 0:27 / /mnt/other rw - cgroup2 cgroup2 rw\n30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount_in("36 25 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), None);
    }

    #[test]
    fn cpu_time_is_usage_usec() {
        assert_eq!(cpu_usage_in("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"), Some(Duration::from_millis(1500)));
        assert_eq!(cpu_usage_in("user_usec 1\n"), None);
    }
}
