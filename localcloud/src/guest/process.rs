//! The machine side of guests: spawning a service in a session of its own, telling whether a
//! recorded process is still the one we started, signalling process groups, finding processes by
//! network namespace or by the guest's environment marker, unmounting.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::image::GuestService;
use super::plan::parse_stat;

/// Set in every service's environment (and so inherited by what it starts): processes carrying
/// it belong to the guest whose directory it names, wherever they moved.
pub const GUEST_MARKER: &str = "BERTH_GUEST_DIR";

/// A process the supervisor started or adopted: its pid (also its process group and session) and
/// its start time, which tells it apart from a later process that reuses the pid.
#[derive(Debug)]
pub struct ServiceProcess {
    pub pid: i32,
    pub start_ticks: u64,
    /// Present when this run of the local cloud started it (it must be reaped); absent when adopted.
    pub child: Option<Child>,
}

/// Starts a service: cwd `dir`, stdout and stderr appended to `dir/<name>.log`, stdin empty, a new
/// session (so its process group is its pid and a terminal's signals do not reach it).
pub fn spawn(service: &GuestService, dir: &Path) -> std::io::Result<ServiceProcess> {
    let log_path = dir.join(format!("{}.log", service.name));
    let log = OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut cmd = Command::new(&service.command[0]);
    cmd.args(&service.command[1..])
        .envs(&service.env)
        .env(GUEST_MARKER, dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2), which is
    // async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let child = cmd.spawn().map_err(|e| std::io::Error::new(e.kind(), format!("starting {:?}: {e}", service.command[0])))?;
    let pid = child.id() as i32;
    // The child exists until we reap it, so its stat is readable; 0 only if /proc is not mounted.
    let start_ticks = stat_of(pid).map(|(t, _)| t).unwrap_or(0);
    Ok(ServiceProcess { pid, start_ticks, child: Some(child) })
}

fn stat_of(pid: i32) -> Option<(u64, bool)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether the process `pid` started at `start_ticks` is still running (not a zombie).
pub fn is_alive(pid: i32, start_ticks: u64) -> bool {
    matches!(stat_of(pid), Some((t, false)) if t == start_ticks)
}

/// How a service's process ended, if it did: `Some(None)` when it is gone with an unknown status
/// (adopted processes are not our children).
pub fn exit_of(p: &mut ServiceProcess) -> Option<Option<bool>> {
    match &mut p.child {
        Some(child) => match child.try_wait() {
            Ok(Some(status)) => Some(Some(status.success())),
            Ok(None) => None,
            Err(_) => (!is_alive(p.pid, p.start_ticks)).then_some(None),
        },
        None => (!is_alive(p.pid, p.start_ticks)).then_some(None),
    }
}

/// Whether signalling the process group `p.pid` reaches this service's processes: its leader is
/// still the recorded process, or no process holds that pid any more (then the number stays
/// reserved by the group's remaining members and cannot be another's).
fn group_is_ours(p: &mut ServiceProcess) -> bool {
    if let Some(child) = &mut p.child {
        let _ = child.try_wait();
    }
    is_alive(p.pid, p.start_ticks) || !Path::new(&format!("/proc/{}", p.pid)).exists()
}

fn group_exists(pgid: i32) -> bool {
    !matches!(killpg(Pid::from_raw(pgid), None), Err(Errno::ESRCH))
}

fn signal_group(p: &mut ServiceProcess, signal: Signal) -> Result<bool, String> {
    if !group_is_ours(p) || !group_exists(p.pid) {
        return Ok(false);
    }
    match killpg(Pid::from_raw(p.pid), signal) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(format!("{signal} to process group {}: {e}", p.pid)),
    }
}

/// Stops a service: SIGTERM to its process group, up to `grace` for the group to empty, then
/// SIGKILL. A pid that now belongs to another process is left alone; the guest's marker finds
/// whatever the service left.
pub fn stop_service(p: &mut ServiceProcess, grace: Duration) -> Result<(), String> {
    if !signal_group(p, Signal::SIGTERM)? {
        return Ok(());
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !group_is_ours(p) || !group_exists(p.pid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::warn!(pid = p.pid, grace_secs = grace.as_secs(), "a guest service outlived its grace period; killing its process group");
    signal_group(p, Signal::SIGKILL)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while group_is_ours(p) && group_exists(p.pid) {
        if Instant::now() >= deadline {
            return Err(format!("process group {} still exists 5 s after SIGKILL", p.pid));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// SIGKILL to a service's whole process group now (a service that missed its ready deadline).
pub fn kill_group(p: &mut ServiceProcess) {
    if let Err(e) = signal_group(p, Signal::SIGKILL) {
        tracing::warn!(pid = p.pid, error = %e, "cannot kill a guest service");
    }
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc").into_iter().flatten().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// Processes whose environment carries `GUEST_MARKER=dir`.
pub fn marked_processes(dir: &Path) -> Vec<i32> {
    let mut entry = format!("{GUEST_MARKER}={}", dir.display()).into_bytes();
    entry.push(0);
    let me = std::process::id() as i32;
    pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|pid| std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.starts_with(&entry) || env.windows(entry.len() + 1).any(|w| w[0] == 0 && w[1..] == entry[..])))
        .collect()
}

/// Processes in the network namespace whose nsfs inode is `ino`.
pub fn processes_in_netns(ino: u64) -> Vec<i32> {
    let want = PathBuf::from(format!("net:[{ino}]"));
    let me = std::process::id() as i32;
    pids().into_iter().filter(|&pid| pid != me).filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l == want)).collect()
}

/// SIGKILL to each of `pids`, a few rounds until `find` returns none (processes may fork meanwhile).
pub fn kill_all(find: impl Fn() -> Vec<i32>) -> Result<(), String> {
    for _ in 0..10 {
        let found = find();
        if found.is_empty() {
            return Ok(());
        }
        for pid in found {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = find();
    if left.is_empty() { Ok(()) } else { Err(format!("processes {left:?} survive SIGKILL")) }
}

/// Names of namespaces under /run/netns that start with one of `prefixes`.
pub fn netns_with_prefixes(prefixes: &[String]) -> Vec<String> {
    if prefixes.is_empty() {
        return Vec::new();
    }
    std::fs::read_dir(berth_nodenet::NETNS_RUN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
        .collect()
}

/// Lazily unmounts every mount under `dir`, deepest first; returns those that remain.
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    let read = || berth_daemon::mountinfo::mount_points_under(&berth_daemon::mountinfo::mounts(), dir);
    for _ in 0..3 {
        let found = read();
        if found.is_empty() {
            return found;
        }
        for m in found {
            match nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                Err(e) => tracing::warn!(mount = %m.display(), error = %e, "cannot unmount under a guest's directory"),
            }
        }
    }
    read()
}
