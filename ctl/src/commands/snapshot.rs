//! `berthctl snapshot create|list|delete`: cloud disk snapshots of the local cloud, as the CSI
//! driver makes them (a pod's disk is restored from one with the `snapshotId` volume parameter).

use berth_cloud::api::{CreateSnapshotRequest, SnapshotFilter};
use berth_cloud::model::Snapshot;
use berth_cloud::Cloud;
use clap::{Args, Subcommand};

use crate::Output;
use crate::cluster::{self, ClusterPaths};
use crate::table::Table;

#[derive(Args)]
pub struct SnapshotCmd {
    #[command(subcommand)]
    command: SnapshotCommand,
    #[command(flatten)]
    paths: ClusterPaths,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Snapshot a disk (`d-…`): a point-in-time copy of its data, usable once `accomplished`.
    Create {
        disk: String,
        /// The snapshot's name (2 to 128 letters, digits, `.`, `_`, `-`, `:`, starting with a letter).
        #[arg(long)]
        name: Option<String>,
    },
    /// The snapshots, of one disk with --disk.
    List {
        #[arg(long)]
        disk: Option<String>,
    },
    /// Delete a snapshot (`s-…`); disks restored from it keep their data.
    Delete { snapshot: String },
}

fn check_id(what: &str, prefix: &str, id: &str) -> anyhow::Result<()> {
    if !id.starts_with(prefix) || id.len() <= prefix.len() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        anyhow::bail!("{what} {id:?} is not a {what} ID; give one like {prefix}… (see `berthctl snapshot list`)");
    }
    Ok(())
}

impl SnapshotCmd {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let cloud = cluster::connect(&self.paths)?;
        match self.command {
            SnapshotCommand::Create { disk, name } => {
                check_id("disk", "d-", &disk)?;
                let id = cloud.create_snapshot(&CreateSnapshotRequest { disk_id: disk, name: name.unwrap_or_default(), description: String::new(), client_token: None }).await?;
                let found = cloud.describe_snapshots(&SnapshotFilter { ids: vec![id.clone()], ..Default::default() }).await?;
                print(&found, output)
            }
            SnapshotCommand::List { disk } => {
                if let Some(d) = &disk {
                    check_id("disk", "d-", d)?;
                }
                let mut all = cloud.describe_snapshots(&SnapshotFilter { disk_id: disk, ..Default::default() }).await?;
                all.sort_by(|a, b| a.id.cmp(&b.id));
                print(&all, output)
            }
            SnapshotCommand::Delete { snapshot } => {
                check_id("snapshot", "s-", &snapshot)?;
                cloud.delete_snapshot(&snapshot, true).await?;
                println!("snapshot {snapshot} deleted");
                Ok(())
            }
        }
    }
}

fn print(snapshots: &[Snapshot], output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(snapshots)?);
        return Ok(());
    }
    let mut t = Table::new("SNAPSHOTS", &["ID", "NAME", "DISK", "SIZE", "STATUS", "PROGRESS", "CREATED"]);
    for s in snapshots {
        t.row(vec![s.id.clone(), s.name.clone(), s.source_disk_id.clone(), format!("{} GiB", s.source_disk_size_gib), s.status.as_str().into(), format!("{}%", s.progress_percent), s.creation_time.clone()]);
    }
    println!("{}", t.render());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_the_cloud_is_asked() {
        assert!(check_id("disk", "d-", "d-abc123").is_ok());
        let e = check_id("snapshot", "s-", "d-abc").unwrap_err().to_string();
        assert!(e.contains("\"d-abc\"") && e.contains("s-…"), "{e}");
        assert!(check_id("disk", "d-", "d-").is_err());
        assert!(check_id("disk", "d-", "d-a/b").is_err());
    }
}
