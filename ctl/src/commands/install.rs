//! `berthctl install` and `berthctl uninstall`: the binaries, the CNI plugin, the systemd units, the
//! example config and the README in their places on a node. Install is idempotent (a file is
//! rewritten only when it differs, a config is never overwritten); uninstall reverses it and keeps
//! configuration and state unless `--purge`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use crate::cluster;

const AGENT_UNIT: &str = include_str!("../../../systemd/berth-agent.service");
const LOCALCLOUD_UNIT: &str = include_str!("../../../systemd/berth-localcloud.service");
const CSI_UNIT: &str = include_str!("../../../systemd/berth-csi.service");
const SCHEDULER_UNIT: &str = include_str!("../../../systemd/berth-scheduler.service");
const SCHEDULER_TOML: &str = include_str!("../../../scheduler/scheduler.toml.example");
const CSI_TOML: &str = include_str!("../../../csi-driver/csi.toml.example");
const AGENT_TOML: &str = include_str!("../../../agent/agent.toml.example");
const README: &str = include_str!("../../../README.md");
const NODE_BOOTSTRAP: &str = include_str!("../../../systemd/node-bootstrap.sh");

#[derive(Args)]
pub struct Install {
    /// Install under this directory instead of `/` (for packaging or a look first).
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

#[derive(Args)]
pub struct Uninstall {
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Also remove /etc/berth and /var/lib/berth.
    #[arg(long)]
    purge: bool,
}

/// One file of the installation: where it goes, what it holds, its mode, and whether an existing
/// copy is the operator's (a config) and must be kept.
struct Placement {
    path: &'static str,
    content: Vec<u8>,
    mode: u32,
    operator_owned: bool,
}

fn placements() -> anyhow::Result<Vec<Placement>> {
    let binary = |name: &str| -> anyhow::Result<Vec<u8>> {
        let path = cluster::sibling_binary(name)?;
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    Ok(vec![
        Placement { path: "usr/local/bin/berth-agent", content: binary("berth-agent")?, mode: 0o755, operator_owned: false },
        Placement { path: "usr/local/bin/berth-localcloud", content: binary("berth-localcloud")?, mode: 0o755, operator_owned: false },
        Placement { path: "usr/local/bin/berth-csi", content: binary("berth-csi")?, mode: 0o755, operator_owned: false },
        Placement { path: "usr/local/bin/berth-scheduler", content: binary("berth-scheduler")?, mode: 0o755, operator_owned: false },
        Placement { path: "usr/local/bin/berthctl", content: binary("berthctl")?, mode: 0o755, operator_owned: false },
        Placement { path: "opt/cni/bin/berth", content: binary("berth")?, mode: 0o755, operator_owned: false },
        Placement { path: "etc/systemd/system/berth-agent.service", content: AGENT_UNIT.into(), mode: 0o644, operator_owned: false },
        Placement { path: "etc/systemd/system/berth-localcloud.service", content: LOCALCLOUD_UNIT.into(), mode: 0o644, operator_owned: false },
        Placement { path: "etc/systemd/system/berth-csi.service", content: CSI_UNIT.into(), mode: 0o644, operator_owned: false },
        Placement { path: "etc/systemd/system/berth-scheduler.service", content: SCHEDULER_UNIT.into(), mode: 0o644, operator_owned: false },
        Placement { path: "usr/local/share/doc/berth/README.md", content: README.into(), mode: 0o644, operator_owned: false },
        // The user data of a pool on Alibaba Cloud (its `user_data_file`), to copy and set.
        Placement { path: "usr/local/share/berth/node-bootstrap.sh", content: NODE_BOOTSTRAP.into(), mode: 0o755, operator_owned: false },
        Placement { path: "etc/berth/agent.toml", content: AGENT_TOML.into(), mode: 0o600, operator_owned: true },
        Placement { path: "etc/berth/csi.toml", content: CSI_TOML.into(), mode: 0o600, operator_owned: true },
        Placement { path: "etc/berth/scheduler.toml", content: SCHEDULER_TOML.into(), mode: 0o644, operator_owned: true },
    ])
}

/// Writes a file the way runtimes expect binaries to be replaced: a temp file, then a rename
/// (a running binary is never written in place).
fn write_atomically(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a path with a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.berth-install", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("putting {} in place", path.display()))
}

/// Reloads systemd when it runs the machine this installs into.
fn reload_systemd(root: &Path) {
    if root == Path::new("/") && Path::new("/run/systemd/system").exists() {
        let _ = std::process::Command::new("systemctl").arg("daemon-reload").status();
    }
}

impl Install {
    pub async fn exec(self) -> anyhow::Result<()> {
        let mut changed = 0;
        for p in placements()? {
            let path = self.root.join(p.path);
            let same = std::fs::read(&path).is_ok_and(|old| old == p.content);
            if same || (p.operator_owned && path.exists()) {
                continue;
            }
            write_atomically(&path, &p.content, p.mode)?;
            println!("installed {}", path.display());
            changed += 1;
        }
        if changed == 0 {
            println!("already installed under {}: nothing changed", self.root.display());
        } else {
            reload_systemd(&self.root);
            println!("next: set cloud.endpoint in {}, put the credentials (mode 0600) where cloud.credentials_file says, then `systemctl enable --now berth-agent` (and for volumes: set cloud.endpoint in {} too, then `systemctl enable --now berth-csi`; on the scheduler's machine: the pools in {}, then `systemctl enable --now berth-scheduler`)", self.root.join("etc/berth/agent.toml").display(), self.root.join("etc/berth/csi.toml").display(), self.root.join("etc/berth/scheduler.toml").display());
        }
        Ok(())
    }
}

impl Uninstall {
    pub async fn exec(self) -> anyhow::Result<()> {
        for p in placements()? {
            if p.operator_owned && !self.purge {
                continue;
            }
            let path = self.root.join(p.path);
            match std::fs::remove_file(&path) {
                Ok(()) => println!("removed {}", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        }
        let _ = std::fs::remove_dir(self.root.join("usr/local/share/doc/berth"));
        if self.purge {
            for dir in ["etc/berth", "var/lib/berth"] {
                cluster::remove_if_exists(&self.root.join(dir))?;
            }
        } else {
            println!("kept {} and {} (use --purge to remove them)", self.root.join("etc/berth").display(), self.root.join("var/lib/berth").display());
        }
        reload_systemd(&self.root);
        Ok(())
    }
}
