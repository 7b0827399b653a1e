//! Network namespaces: create and delete them the way `ip netns` does, open them,
//! and run code inside them on a short-lived thread.
//!
//! The caller's thread never changes namespace: `setns` happens on a scoped std
//! thread that exits afterwards, so tokio workers and the main thread stay where
//! they are.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::error::{Error, Result};

/// Where named namespaces live, as with iproute2.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// An open network namespace: a file descriptor on its nsfs inode and the path it
/// was opened from (for messages).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Netns {
    /// Opens the namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`, ...).
    pub fn open(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::netns("open", path, e))?;
        Ok(Netns {
            file,
            path: path.to_owned(),
        })
    }

    /// Opens the namespace named `name` under [`NETNS_RUN_DIR`].
    pub fn open_named(name: &str) -> Result<Netns> {
        Netns::open(named_path(name)?)
    }

    /// Opens the namespace of the calling thread.
    pub fn current() -> Result<Netns> {
        Netns::open("/proc/thread-self/ns/net")
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The nsfs inode number: two handles with the same id are the same namespace.
    pub fn id(&self) -> Result<u64> {
        let meta = self
            .file
            .metadata()
            .map_err(|e| Error::netns("stat", &self.path, e))?;
        Ok(meta.ino())
    }

    /// Runs `f` on a short-lived thread that has entered this namespace and returns
    /// its value. The calling thread stays in its own namespace.
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name("berth-netns".into())
                .spawn_scoped(scope, || {
                    nix::sched::setns(&self.file, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| Error::netns("enter (setns)", &self.path, e))?;
                    Ok(f())
                })
                .map_err(|e| Error::netns("spawn thread to enter", &self.path, e))?;
            handle.join().map_err(|_| Error::ThreadPanicked {
                path: self.path.clone(),
            })?
        })
    }

    /// Creates the named namespace `/run/netns/NAME` like `ip netns add`: a thread
    /// unshares its network namespace and bind-mounts it onto that file, so the
    /// namespace outlives the thread. Fails with EEXIST if the name is taken.
    pub fn create(name: &str) -> Result<Netns> {
        let path = named_path(name)?;
        prepare_run_dir()?;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .map_err(|e| Error::netns("create mount point", &path, e))?;

        let bound = std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name("berth-netns-add".into())
                .spawn_scoped(scope, || -> nix::Result<()> {
                    nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
                    nix::mount::mount(
                        Some("/proc/thread-self/ns/net"),
                        &path,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                })
                .map_err(|e| Error::netns("spawn thread to create", &path, e))?;
            handle
                .join()
                .map_err(|_| Error::ThreadPanicked { path: path.clone() })?
                .map_err(|e| Error::netns("unshare and bind-mount", &path, e))
        });
        if let Err(e) = bound {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Netns::open(&path).inspect_err(|_| {
            let _ = Netns::delete(name);
        })
    }

    /// Deletes the named namespace like `ip netns delete`: detach the bind mount and
    /// remove the file. A namespace that is already gone is success. The namespace
    /// itself lives on while a process or an open handle still refers to it.
    pub fn delete(name: &str) -> Result<()> {
        let path = named_path(name)?;
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(Error::netns("unmount", &path, e)),
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::netns("remove", &path, e)),
        }
    }
}

/// `/run/netns/NAME`, after checking that NAME is a plain file name.
fn named_path(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(Error::invalid(
            "netns name",
            name,
            "must be a non-empty file name",
        ));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(Error::invalid(
            "netns name",
            name,
            "must not contain '/' or NUL",
        ));
    }
    if name.len() > 255 {
        return Err(Error::invalid("netns name", name, "longer than 255 bytes"));
    }
    Ok(Path::new(NETNS_RUN_DIR).join(name))
}

/// Makes /run/netns exist and be a shared mount point, as iproute2 does, so that a
/// namespace mounted there is seen by every mount namespace that shares it.
fn prepare_run_dir() -> Result<()> {
    // Two threads racing here would stack two bind mounts of the directory.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

    let dir = Path::new(NETNS_RUN_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| Error::netns("create directory", dir, e))?;
    let make_shared = || {
        nix::mount::mount(
            Some("none"),
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet. Bind it onto itself, then share it.
        Err(Errno::EINVAL) => {
            nix::mount::mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::netns("bind-mount onto itself", dir, e))?;
            make_shared().map_err(|e| Error::netns("make shared mount", dir, e))
        }
        Err(e) => Err(Error::netns("make shared mount", dir, e)),
    }
}

/// Writes `value` to the sysctl `key` inside `netns`, e.g.
/// `sysctl_in(&ns, "net.ipv4.ip_forward", "1")`. Keys with a `/` are taken as paths
/// under /proc/sys, so interface names with dots work: `net/ipv4/conf/eth0.1/rp_filter`.
pub fn sysctl_in(netns: &Netns, key: &str, value: &str) -> Result<()> {
    let path = sysctl_path(key)?;
    let sysctl_err = |source| Error::Sysctl {
        key: key.to_owned(),
        netns: netns.path().to_owned(),
        source,
    };
    netns
        .run_in(|| fs::write(&path, value))
        .and_then(|r| r.map_err(sysctl_err))
}

/// Reads the sysctl `key` inside `netns` (trimmed). Same key forms as [`sysctl_in`].
pub fn sysctl_read_in(netns: &Netns, key: &str) -> Result<String> {
    let path = sysctl_path(key)?;
    let sysctl_err = |source| Error::Sysctl {
        key: key.to_owned(),
        netns: netns.path().to_owned(),
        source,
    };
    let text = netns
        .run_in(|| fs::read_to_string(&path))
        .and_then(|r| r.map_err(sysctl_err))?;
    Ok(text.trim().to_owned())
}

/// The /proc/sys path of a sysctl key (`net.ipv4.ip_forward` or `net/ipv4/ip_forward`).
pub(crate) fn sysctl_path(key: &str) -> Result<PathBuf> {
    let rel = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    let bad = rel.is_empty()
        || rel.starts_with('/')
        || rel.contains('\0')
        || rel
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(Error::invalid(
            "sysctl key",
            key,
            "must be a relative key like net.ipv4.ip_forward",
        ));
    }
    Ok(Path::new("/proc/sys").join(rel))
}

/// A named namespace that is deleted when the guard drops: for tests and for
/// short-lived namespaces whose owner may fail halfway.
#[derive(Debug)]
pub struct NetnsGuard {
    netns: Netns,
    name: String,
}

impl NetnsGuard {
    /// Creates the namespace `name`; it is deleted when the guard drops.
    pub fn create(name: &str) -> Result<NetnsGuard> {
        let netns = Netns::create(name)?;
        Ok(NetnsGuard {
            netns,
            name: name.to_owned(),
        })
    }

    /// Creates a namespace named `PREFIX-PID-N`, unique within this process and
    /// unlikely to collide with other processes, so parallel tests do not meet.
    pub fn unique(prefix: &str) -> Result<NetnsGuard> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        NetnsGuard::create(&format!("{prefix}-{}-{n}", std::process::id()))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

impl std::ops::Deref for NetnsGuard {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.netns
    }
}

impl AsFd for NetnsGuard {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.netns.as_fd()
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = Netns::delete(&self.name) {
            tracing::warn!(name = %self.name, error = %e, "could not delete network namespace");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_map_to_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.1/rp_filter").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.1/rp_filter")
        );
        for bad in ["", "/etc/passwd", "net/../../etc", "net..ipv4", "net/ipv4/"] {
            assert!(sysctl_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn netns_names_are_plain_file_names() {
        assert_eq!(named_path("pod-1").unwrap(), Path::new("/run/netns/pod-1"));
        for bad in ["", ".", "..", "a/b", "x\0y"] {
            let err = named_path(bad).unwrap_err();
            assert_eq!(err.errno(), Some(libc::EINVAL), "{bad:?}");
        }
    }

    #[test]
    fn run_in_own_namespace_returns_the_value_and_keeps_the_caller() {
        // Entering the namespace we are already in needs no privilege beyond
        // CAP_SYS_ADMIN; skip quietly where that is missing.
        let me = Netns::current().unwrap();
        let before = me.id().unwrap();
        match me.run_in(|| 40 + 2) {
            Ok(v) => assert_eq!(v, 42),
            Err(e) => eprintln!("skipping: cannot setns here: {e}"),
        }
        assert_eq!(Netns::current().unwrap().id().unwrap(), before);
    }
}
