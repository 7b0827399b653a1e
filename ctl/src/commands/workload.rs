//! `berthctl workload apply|get|list|scale|delete|rollout status|rollout undo`: replicated
//! workloads, from a Kubernetes Deployment document (apps/v1, the fields Berth takes; any other is
//! refused by name). The template is a Pod's metadata labels and spec, read as `pod add -f` reads
//! a Pod ([`super::podfile`]); the scheduler checks the rest and keeps the replicas running.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_proto::cluster::v1 as pb;
use clap::{Args, Subcommand};
use serde::Deserialize;

use super::podfile;
use crate::Output;
use crate::cluster::{self, ClusterPaths};
use crate::table::Table;

#[derive(Args)]
pub struct Workload {
    #[command(subcommand)]
    command: WorkloadCommand,
    #[command(flatten)]
    paths: ClusterPaths,
}

#[derive(Subcommand)]
enum WorkloadCommand {
    /// Create or replace the workload of a Deployment YAML file; a changed template rolls out.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// One workload and how far its rollout is.
    Get {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// The workloads of a namespace (every namespace with --all-namespaces).
    List {
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        #[arg(long, short = 'A')]
        all_namespaces: bool,
    },
    /// Set the number of replicas.
    Scale {
        name: String,
        #[arg(long)]
        replicas: u32,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// Delete the workload and its pods.
    Delete {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// The rollout: `status` waits until it is done (or --timeout), `undo` goes back to the
    /// previous template.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
}

#[derive(Subcommand)]
enum RolloutCommand {
    Status {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// Seconds to wait for the rollout to finish.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    Undo {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    api_version: String,
    kind: String,
    metadata: podfile::Metadata,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    #[serde(default = "one")]
    replicas: u32,
    selector: Selector,
    #[serde(default)]
    strategy: Option<Strategy>,
    template: Template,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Selector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Strategy {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    rolling_update: Option<RollingUpdate>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RollingUpdate {
    #[serde(default)]
    max_surge: Option<IntOrPercent>,
    #[serde(default)]
    max_unavailable: Option<IntOrPercent>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IntOrPercent {
    Int(u32),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Template {
    #[serde(default)]
    metadata: TemplateMetadata,
    spec: podfile::Spec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateMetadata {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn int_or_percent(v: &IntOrPercent, field: &str) -> anyhow::Result<pb::IntOrPercent> {
    match v {
        IntOrPercent::Int(n) => Ok(pb::IntOrPercent { value: *n, percent: false }),
        IntOrPercent::Text(t) => match t.strip_suffix('%').and_then(|n| n.parse().ok()) {
            Some(n) => Ok(pb::IntOrPercent { value: n, percent: true }),
            None => bail!("{field} {t:?} is neither a count nor a percent (2, 25%)"),
        },
    }
}

/// The workload of a Deployment document; `namespace` when the document names none.
fn workload_of(text: &str, namespace: &str) -> anyhow::Result<pb::Workload> {
    let d: Document = serde_yaml_ng::from_str(text).context("not a Kubernetes Deployment this berthctl takes")?;
    if d.kind != "Deployment" || d.api_version != "apps/v1" {
        bail!("kind {:?} apiVersion {:?}: give a Deployment of apiVersion apps/v1", d.kind, d.api_version);
    }
    let rolling_update = match d.spec.strategy {
        Some(Strategy { kind: Some(k), .. }) if k != "RollingUpdate" => bail!("spec.strategy.type {k:?}: Berth rolls out with RollingUpdate only"),
        Some(Strategy { rolling_update: Some(r), .. }) => Some(pb::RollingUpdate {
            max_surge: r.max_surge.as_ref().map(|v| int_or_percent(v, "spec.strategy.rollingUpdate.maxSurge")).transpose()?,
            max_unavailable: r.max_unavailable.as_ref().map(|v| int_or_percent(v, "spec.strategy.rollingUpdate.maxUnavailable")).transpose()?,
        }),
        _ => None,
    };
    let template = podfile::template_spec(d.spec.template.metadata.labels, d.spec.template.spec, "spec.template.spec")?;
    Ok(pb::Workload {
        namespace: d.metadata.namespace.unwrap_or_else(|| namespace.to_string()),
        name: d.metadata.name,
        labels: d.metadata.labels.into_iter().collect(),
        replicas: d.spec.replicas,
        selector: Some(pb::LabelSelector { match_labels: d.spec.selector.match_labels.into_iter().collect(), ..Default::default() }),
        rolling_update,
        template: Some(template),
        ..Default::default()
    })
}

fn rpc(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", s.message())
}

fn bound_text(v: Option<&pb::IntOrPercent>) -> String {
    match v {
        None => "25%".into(),
        Some(v) if v.percent => format!("{}%", v.value),
        Some(v) => v.value.to_string(),
    }
}

fn json_of(st: &pb::WorkloadStatus) -> serde_json::Value {
    let w = st.workload.clone().unwrap_or_default();
    let ru = w.rolling_update.unwrap_or_default();
    serde_json::json!({
        "namespace": w.namespace, "name": w.name, "replicas": w.replicas, "revision": w.revision,
        "maxSurge": bound_text(ru.max_surge.as_ref()), "maxUnavailable": bound_text(ru.max_unavailable.as_ref()),
        "pods": st.pods, "updated": st.updated, "updatedRunning": st.updated_running, "running": st.running, "rolledOut": st.rolled_out,
    })
}

fn print(statuses: &[pb::WorkloadStatus], output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&statuses.iter().map(json_of).collect::<Vec<_>>())?),
        Output::Table => {
            let mut t = Table::new("WORKLOADS", &["NAMESPACE", "NAME", "READY", "UP-TO-DATE", "PODS", "REVISION", "MAX SURGE", "MAX UNAVAILABLE", "ROLLED OUT"]);
            for st in statuses {
                let w = st.workload.clone().unwrap_or_default();
                let ru = w.rolling_update.unwrap_or_default();
                t.row(vec![w.namespace, w.name, format!("{}/{}", st.running, w.replicas), st.updated.to_string(), st.pods.to_string(), w.revision.to_string(), bound_text(ru.max_surge.as_ref()), bound_text(ru.max_unavailable.as_ref()), if st.rolled_out { "yes" } else { "no" }.into()]);
            }
            print!("{}", t.render());
        }
    }
    Ok(())
}

impl Workload {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let mut c = cluster::scheduler(&self.paths, Duration::from_secs(5)).await?;
        let get = |namespace: String, name: String| pb::GetWorkloadRequest { namespace, name };
        match self.command {
            WorkloadCommand::Apply { file } => {
                let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
                let w = workload_of(&text, "default").with_context(|| format!("{}", file.display()))?;
                let st = c.apply_workload(pb::ApplyWorkloadRequest { workload: Some(w) }).await.map_err(|s| rpc("applying the workload", s))?.into_inner();
                print(&[st], output)
            }
            WorkloadCommand::Get { name, namespace } => print(&[c.get_workload(get(namespace, name)).await.map_err(|s| rpc("getting the workload", s))?.into_inner()], output),
            WorkloadCommand::List { namespace, all_namespaces } => {
                let ns = if all_namespaces { String::new() } else { namespace };
                print(&c.list_workloads(pb::ListWorkloadsRequest { namespace: ns }).await.map_err(|s| rpc("listing the workloads", s))?.into_inner().workloads, output)
            }
            WorkloadCommand::Scale { name, replicas, namespace } => print(&[c.scale_workload(pb::ScaleWorkloadRequest { namespace, name, replicas }).await.map_err(|s| rpc("scaling the workload", s))?.into_inner()], output),
            WorkloadCommand::Delete { name, namespace } => {
                c.delete_workload(get(namespace.clone(), name.clone())).await.map_err(|s| rpc("deleting the workload", s))?;
                if output == Output::Table {
                    println!("workload {namespace}/{name} deleted, with its pods");
                }
                Ok(())
            }
            WorkloadCommand::Rollout { command: RolloutCommand::Undo { name, namespace } } => print(&[c.undo_workload(get(namespace, name)).await.map_err(|s| rpc("rolling the workload back", s))?.into_inner()], output),
            WorkloadCommand::Rollout { command: RolloutCommand::Status { name, namespace, timeout } } => {
                let started = Instant::now();
                let mut last = (u32::MAX, u32::MAX);
                loop {
                    let st = c.get_workload(get(namespace.clone(), name.clone())).await.map_err(|s| rpc("getting the workload", s))?.into_inner();
                    let replicas = st.workload.as_ref().map_or(0, |w| w.replicas);
                    if output == Output::Table && (st.updated_running, st.running) != last {
                        println!("{} of {replicas} pods of the current revision Running ({} Running in all, {} pods)", st.updated_running, st.running, st.pods);
                        last = (st.updated_running, st.running);
                    }
                    if st.rolled_out {
                        if output == Output::Json {
                            println!("{}", serde_json::to_string_pretty(&json_of(&st))?);
                        } else {
                            println!("workload {namespace}/{name} rolled out");
                        }
                        return Ok(());
                    }
                    if started.elapsed() > Duration::from_secs(timeout) {
                        bail!("workload {namespace}/{name} not rolled out after {timeout} s: {} of {replicas} updated and Running", st.updated_running);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: { app: web }
spec:
  replicas: 10
  selector: { matchLabels: { app: web } }
  strategy:
    type: RollingUpdate
    rollingUpdate: { maxSurge: 25%, maxUnavailable: 1 }
  template:
    metadata:
      labels: { app: web }
    spec:
      containers:
        - name: main
          image: unused
          command: [sleep, "600"]
          resources: { requests: { cpu: 100m, memory: 64Mi } }
"#;

    #[test]
    fn a_deployment_becomes_the_workload_the_scheduler_takes() {
        let w = workload_of(DEPLOYMENT, "default").unwrap();
        assert_eq!((w.namespace.as_str(), w.name.as_str(), w.replicas), ("default", "web", 10));
        let ru = w.rolling_update.unwrap();
        assert_eq!((ru.max_surge, ru.max_unavailable), (Some(pb::IntOrPercent { value: 25, percent: true }), Some(pb::IntOrPercent { value: 1, percent: false })));
        let t = w.template.as_ref().unwrap();
        assert_eq!((t.cpu_millicores, t.command.clone(), t.labels["app"].as_str()), (100, vec!["sleep".to_string(), "600".to_string()], "web"));
        berth_scheduler::validation::workload(&w, &berth_scheduler::validation::Limits::of_pools(&[])).expect("the scheduler takes it");
    }

    #[test]
    fn what_is_not_taken_is_named() {
        let e = workload_of(&DEPLOYMENT.replace("replicas: 10", "replicas: 10\n  paused: true"), "default").unwrap_err();
        assert!(format!("{e:#}").contains("paused"), "{e:#}");
        let e = workload_of(&DEPLOYMENT.replace("maxSurge: 25%", "maxSurge: lots"), "default").unwrap_err();
        assert!(e.to_string().contains("maxSurge \"lots\""), "{e}");
        let e = workload_of(&DEPLOYMENT.replace("type: RollingUpdate", "type: Recreate"), "default").unwrap_err();
        assert!(e.to_string().contains("Recreate"), "{e}");
        let e = workload_of(&DEPLOYMENT.replace("cpu: 100m", "cpu: lots"), "default").unwrap_err();
        assert!(e.to_string().contains("spec.template.spec.containers[0].resources.requests.cpu"), "{e}");
        let e = workload_of(&DEPLOYMENT.replace("      labels: { app: web }", "      name: x\n      labels: { app: web }"), "default").unwrap_err();
        assert!(format!("{e:#}").contains("name"), "{e:#}");
    }
}
