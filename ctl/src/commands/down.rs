//! `berthctl down`: stop the local cloud and remove everything it made.

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::cluster::{self, ClusterPaths};
use crate::commands::pod;

#[derive(Args)]
pub struct Down {
    #[command(flatten)]
    paths: ClusterPaths,
}

impl Down {
    pub async fn exec(self) -> anyhow::Result<()> {
        let paths = &self.paths;
        // Pods first (their IPs go back while the agents run), then the agents, then the cloud.
        for p in pod::list(paths) {
            if let Err(e) = pod::del(paths, &p.name) {
                eprintln!("warning: {e:#}; its namespace is removed anyway");
                let _ = berth_nodenet::Netns::delete(p.netns.trim_start_matches("/run/netns/"));
            }
        }
        cluster::stop_agents(paths);
        cluster::stop_localcloud(paths);
        if paths.state_dir.exists() {
            // The local cloud's planes remove their namespaces, veths, loop devices and links.
            let status = Command::new(cluster::sibling_binary("berth-localcloud")?)
                .arg("down")
                .arg("--state-dir")
                .arg(&paths.state_dir)
                .arg("--netns-prefix")
                .arg(&paths.netns_prefix)
                .status()
                .context("running berth-localcloud down")?;
            if !status.success() {
                bail!("berth-localcloud down failed ({status}); the state in {} is kept so that you can retry", paths.state_dir.display());
            }
        }
        cluster::remove_if_exists(&paths.state_dir)?;
        cluster::remove_if_exists(&paths.pid_file())?;
        cluster::remove_if_exists(&paths.log_file())?;
        cluster::remove_if_exists(&paths.run_dir.join("agents"))?;
        cluster::remove_if_exists(&paths.pods_dir())?;
        // The parent directories go too when nothing else is in them.
        let _ = std::fs::remove_dir(&paths.run_dir);
        if let Some(parent) = paths.state_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        eprintln!("the local cluster is down and its state removed");
        Ok(())
    }
}
