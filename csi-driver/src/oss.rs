//! OSS volumes through s3fs: one FUSE mount per volume per node under
//! `<state>/oss/mounts/<volume>`, bind-mounted into each target. The credentials are in a 0600
//! file s3fs reads (never in argv or logs); s3fs runs in its own session, so it outlives the
//! driver's restarts; a dead mount (ENOTCONN from statfs) is remounted and its targets bound again.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_cloud::model::Credentials;

use crate::mounts::{self, CommandError};
use crate::volume::{dir_name, hex};

pub struct OssMounter {
    pub endpoint: String,
    pub region: String,
    state_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum OssError {
    #[error("OSS is not configured: set oss.endpoint (the S3-compatible endpoint URL)")]
    NoEndpoint,
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("s3fs did not mount {bucket}:{path} at {at} within {waited:?}")]
    NotMounted { bucket: String, path: String, at: String, waited: Duration },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OssError {
    let what = what.into();
    move |source| OssError::Io { what, source }
}

/// What statfs says of a mount point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Alive,
    /// "Transport endpoint is not connected": the FUSE process is gone.
    Dead,
    NotMounted,
}

pub fn health(path: &Path) -> Health {
    if mounts::mounted_at(path).is_none() {
        return Health::NotMounted;
    }
    match nix::sys::statfs::statfs(path) {
        Ok(_) => Health::Alive,
        Err(nix::errno::Errno::ENOTCONN) => Health::Dead,
        Err(_) => Health::Dead,
    }
}

impl OssMounter {
    pub fn new(endpoint: String, region: String, state_dir: &Path) -> OssMounter {
        OssMounter { endpoint, region, state_dir: state_dir.join("oss") }
    }

    fn passwd_file(&self) -> PathBuf {
        self.state_dir.join("passwd-s3fs")
    }

    /// Writes the credentials file s3fs reads: created 0600 before the secret goes in.
    pub fn write_credentials(&self, creds: &Credentials) -> Result<(), OssError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::create_dir_all(&self.state_dir).map_err(io(self.state_dir.display().to_string()))?;
        std::fs::set_permissions(&self.state_dir, std::fs::Permissions::from_mode(0o700)).map_err(io(self.state_dir.display().to_string()))?;
        let path = self.passwd_file();
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io(tmp.display().to_string()))?;
        f.write_all(format!("{}:{}\n", creds.access_key_id, creds.access_key_secret).as_bytes()).map_err(io(tmp.display().to_string()))?;
        f.sync_all().map_err(io(tmp.display().to_string()))?;
        std::fs::rename(&tmp, &path).map_err(io(path.display().to_string()))
    }

    /// The node's FUSE mount point of a volume.
    pub fn mount_point(&self, volume_id: &str) -> PathBuf {
        use sha2::Digest as _;
        self.state_dir.join("mounts").join(hex(&sha2::Sha256::digest(volume_id.as_bytes())[..12]))
    }

    /// A temporary mount point for the controller's work on a bucket.
    pub fn scratch_point(&self, bucket: &str) -> PathBuf {
        self.state_dir.join("scratch").join(dir_name(bucket))
    }

    /// Starts s3fs for `bucket:path` at `at` and waits until the mount answers.
    pub fn mount(&self, bucket: &str, path: &str, at: &Path) -> Result<(), OssError> {
        if self.endpoint.is_empty() {
            return Err(OssError::NoEndpoint);
        }
        std::fs::create_dir_all(at).map_err(io(at.display().to_string()))?;
        let source = if path.is_empty() || path == "/" { bucket.to_string() } else { format!("{bucket}:{path}") };
        let mut cmd = Command::new("s3fs");
        cmd.arg(&source)
            .arg(at)
            .args(["-o", &format!("url={}", self.endpoint), "-o", "use_path_request_style", "-o", "sigv4", "-o", &format!("endpoint={}", self.region)])
            .args(["-o", "allow_other", "-o", "dbglevel=warn", "-o", "retries=2"])
            .arg("-o")
            .arg(format!("passwd_file={}", self.passwd_file().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own session: s3fs must outlive this driver (a restart must not kill the mounts).
            .process_group(0);
        let status = cmd.status().map_err(io("s3fs (Debian package s3fs)"))?;
        if !status.success() {
            return Err(CommandError { command: format!("s3fs {source} {}", at.display()), reason: format!("exit {status}"), code: status.code() }.into());
        }
        let started = Instant::now();
        while health(at) != Health::Alive {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = mounts::detach_lazily(at);
                return Err(OssError::NotMounted { bucket: bucket.into(), path: path.into(), at: at.display().to_string(), waited: started.elapsed() });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Makes sure the volume's FUSE mount is alive: mounts it if absent, remounts it if dead and
    /// binds the targets that hung off the dead mount again. Returns the mount point.
    pub fn ensure(&self, volume_id: &str, bucket: &str, path: &str) -> Result<PathBuf, OssError> {
        let at = self.mount_point(volume_id);
        match health(&at) {
            Health::Alive => {}
            Health::NotMounted => {
                self.mount(bucket, path, &at)?;
                // Remembered beside the mount, so the health check of a restarted driver knows it.
                let note = at.with_extension("volume");
                std::fs::write(&note, volume_id).map_err(io(note.display().to_string()))?;
            }
            Health::Dead => {
                let dead_dev = mounts::mounted_at(&at).map(|m| m.dev);
                let targets: Vec<(PathBuf, bool)> = mounts::mounts()
                    .into_iter()
                    .filter(|m| Some(&m.dev) == dead_dev.as_ref() && m.mount_point != at)
                    .map(|m| (m.mount_point.clone(), m.read_only()))
                    .collect();
                tracing::warn!(volume = volume_id, mount = %at.display(), targets = targets.len(), "OSS mount is dead (its FUSE process is gone); remounting");
                for (t, _) in &targets {
                    mounts::detach_lazily(t)?;
                }
                mounts::detach_lazily(&at)?;
                self.mount(bucket, path, &at)?;
                for (t, ro) in &targets {
                    mounts::bind(&at, t, *ro)?;
                }
            }
        }
        Ok(at)
    }

    /// The volume's FUSE mount point if nothing else binds it any more (then it is unmounted).
    pub fn release_if_unused(&self, volume_id: &str) -> Result<(), OssError> {
        let at = self.mount_point(volume_id);
        let Some(base) = mounts::mounted_at(&at) else { return Ok(()) };
        let users = mounts::mounts().iter().filter(|m| m.dev == base.dev && m.mount_point != at).count();
        if users == 0 {
            if health(&at) == Health::Dead { mounts::detach_lazily(&at)? } else { mounts::unmount_all(&at)? }
            let _ = std::fs::remove_dir(&at);
            let _ = std::fs::remove_file(at.with_extension("volume"));
        }
        Ok(())
    }

    /// The OSS volumes this node has a FUSE mount for, by volume ID, with the mount's health.
    pub fn volumes(&self) -> Vec<(String, Health)> {
        let root = self.state_dir.join("mounts");
        let Ok(entries) = std::fs::read_dir(&root) else { return Vec::new() };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "volume"))
            .filter_map(|p| std::fs::read_to_string(&p).ok().map(|id| (id.trim().to_string(), health(&p.with_extension("")))))
            .collect()
    }

    /// The volumes whose FUSE mount on this node is dead, by volume ID.
    pub fn dead_volumes(&self) -> Vec<String> {
        self.volumes().into_iter().filter(|(_, h)| *h == Health::Dead).map(|(id, _)| id).collect()
    }
}
