//! `berthctl down`: delete the pods through the scheduler (their nodes unpublish their volumes and
//! release their IPs), stop the scheduler, stop the local cloud and its instances' guests, and
//! remove everything `up` made on this machine.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use berth_proto::cluster::v1 as pb;
use clap::Args;

use crate::Output;
use crate::cluster::{self, ClusterPaths};
use crate::commands::pod;

#[derive(Args)]
pub struct Down {
    #[command(flatten)]
    paths: ClusterPaths,
}

fn progress(step: &str) {
    eprintln!("==> {step}");
}

impl Down {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let paths = &self.paths;
        // Pods first, while their nodes run: the runner removes each in order (command, network,
        // volumes through the CSI driver).
        if cluster::scheduler_runs(paths) {
            match cluster::scheduler(paths, Duration::from_secs(5)).await {
                Ok(mut sched) => {
                    let pods = berth_scheduler_client::list_pods(&mut sched, "").await.unwrap_or_default();
                    if !pods.is_empty() {
                        progress(&format!("deleting {} pods through the scheduler", pods.len()));
                    }
                    for p in &pods {
                        let Some(s) = &p.spec else { continue };
                        if let Err(e) = sched.delete_pod(pb::DeletePodRequest { namespace: s.namespace.clone(), name: s.name.clone() }).await {
                            eprintln!("warning: deleting pod {}/{}: {}; its node's removal cleans it up", s.namespace, s.name, e.message());
                        }
                    }
                    if let Err(e) = pod::wait_gone(paths, Duration::from_secs(90)).await {
                        eprintln!("warning: {e:#}; their nodes' removal cleans them up");
                    }
                }
                Err(e) => eprintln!("warning: {e:#}; the pods go with their nodes"),
            }
        }
        // Then the scheduler, before the instances go: its autoscaler would make them again.
        progress("stopping the scheduler, the nodes and the local cloud");
        cluster::stop_scheduler(paths);
        crate::ha::stop(paths);
        cluster::stop_localcloud(paths);
        if paths.state_dir.exists() {
            // Stops every instance's guest (agent, CSI driver, what is left of their pods, their
            // mounts) and removes the planes' namespaces, veths, loop devices and links.
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
        // The pods' cgroups, empty once their guests stopped.
        if let Some(root) = paths.pod_cgroups() {
            berth_nodenet::cgroup::Cgroup::at(root).remove().map_err(|e| anyhow::anyhow!(e))?;
        }
        cluster::remove_if_exists(&paths.state_dir)?;
        for file in [paths.pid_file(), paths.log_file(), paths.scheduler_pid_file(), paths.scheduler_log_file(), paths.scheduler_config(), paths.image_dir()].into_iter().chain(crate::ha::run_files(paths)) {
            cluster::remove_if_exists(&file)?;
        }
        // The parent directories go too when nothing else is in them.
        let _ = std::fs::remove_dir(&paths.run_dir);
        if let Some(parent) = paths.state_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        if output == Output::Json {
            println!("{}", serde_json::json!({ "down": true }));
        } else {
            eprintln!("the local cluster is down and its state removed");
        }
        Ok(())
    }
}
