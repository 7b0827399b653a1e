//! `berthctl inspect`: one node's pods ↔ pool ↔ cloud, from its agent's introspection endpoint and
//! the cloud API; exits non-zero on any mismatch.

use std::path::PathBuf;

use anyhow::Context as _;
use berth_cloud::api::EniFilter;
use berth_cloud::model::EniKind;
use berth_cloud::{ClientConfig, Cloud, HttpCloud};
use clap::Args;

use crate::Output;
use crate::cluster::{self, ClusterPaths};
use crate::inspect;
use crate::table::Table;

#[derive(Args)]
pub struct Inspect {
    /// The agent's metrics and introspection address (its `api.metrics_listen`).
    #[arg(long, env = "BERTH_AGENT_HTTP", default_value = "127.0.0.1:9480")]
    agent: String,
    /// A node (instance ID) of the local cluster: its agent's address instead of --agent.
    #[arg(long, conflicts_with = "pod")]
    node: Option<String>,
    /// A pod of the local cluster: why it is where it is (pending, bound, failed, running), what
    /// its node's agent holds for it, which volume failed.
    #[arg(long)]
    pod: Option<String>,
    /// The pod's namespace.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The cloud API endpoint; default: the local cluster's.
    #[arg(long, env = "BERTH_CLOUD_ENDPOINT")]
    cloud_endpoint: Option<String>,
    /// Credentials file for the cloud API; default: the local cluster's.
    #[arg(long, env = "BERTH_CREDENTIALS")]
    credentials: Option<PathBuf>,
    #[arg(long, default_value = cluster::REGION)]
    region: String,
    /// Allocations younger than this may still be building their datapath (an ADD in flight).
    #[arg(long, default_value_t = 10)]
    grace_secs: i64,
    #[command(flatten)]
    paths: ClusterPaths,
}

impl Inspect {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        if let Some(pod) = &self.pod {
            return self.pod(pod, output).await;
        }
        // The cloud client first: it sets up TLS for every HTTP client of the process.
        let cloud = match self.cloud_endpoint {
            Some(endpoint) => {
                let path = self.credentials.clone().unwrap_or_else(|| self.paths.credentials());
                let creds = berth_cloud::client::load_credentials(&path)?;
                HttpCloud::new(ClientConfig::new(endpoint, self.region.clone(), creds))?
            }
            None => cluster::connect(&self.paths)?,
        };
        let agent = match &self.node {
            // The node's agent writes the address it bound beside its socket, in the guest's directory.
            Some(id) => {
                let file = self.paths.guest_dir(id).join("agent.metrics");
                std::fs::read_to_string(&file).with_context(|| format!("node {id} has no agent in the local cluster (no {}); `berthctl nodes` lists the nodes", file.display()))?.trim().to_string()
            }
            None => self.agent.clone(),
        };
        let url = format!("http://{agent}/debug/pool");
        // The pool and the cloud are read one after the other while the pool may be growing or
        // shrinking: a difference counts only if it is there in three looks, ~300 ms apart.
        let mut looks = Vec::new();
        let mut instance = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            let pool: serde_json::Value = reqwest::get(&url).await.with_context(|| format!("cannot reach the agent at {url}; is berth-agent running, and is --agent its api.metrics_listen?"))?.json().await.context("the agent's answer is not JSON")?;
            instance = pool["node"]["instance_id"].as_str().context("the agent's answer names no instance")?.to_string();
            // Every ENI but the primary: the pool's, pods' own (exclusive and member) and the trunk.
            let enis: Vec<_> = cloud.describe_network_interfaces(&EniFilter { instance_id: Some(instance.clone()), ..Default::default() }).await?.into_iter().filter(|e| e.kind != EniKind::Primary).collect();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
            let report = inspect::compare(&pool, &enis, now, self.grace_secs);
            let consistent = report.mismatches.is_empty();
            looks.push(report);
            if consistent {
                break;
            }
        }
        let mut report = looks.pop().expect("at least one look");
        report.mismatches.retain(|m| looks.iter().all(|earlier| earlier.mismatches.contains(m)));
        if output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "instance": instance, "report": report }))?);
        } else {
            let mut t = Table::new(&format!("PODS ON {instance}"), &["CONTAINER", "IFNAME", "IP", "ENI", "IN CLOUD", "VETH", "RULES"]);
            let yes = |b: bool| if b { "yes" } else { "NO" }.to_string();
            for p in &report.pods {
                t.row(vec![p.container_id.clone(), p.ifname.clone(), p.ip.clone(), p.eni.clone(), yes(p.in_cloud), yes(p.veth), yes(p.rules)]);
            }
            println!("{}", t.render());
            println!("pool: {} ENIs, {} idle IPs, {} pods", report.enis, report.idle, report.pods.len());
            if report.mismatches.is_empty() {
                println!("no mismatch: pods, pool and cloud agree");
            } else {
                println!("MISMATCHES:");
                for m in &report.mismatches {
                    println!("  {m}");
                }
            }
        }
        if !report.mismatches.is_empty() {
            anyhow::bail!("{} mismatch(es) between pods, pool and cloud on {instance}", report.mismatches.len());
        }
        Ok(())
    }

    async fn pod(&self, name: &str, output: Output) -> anyhow::Result<()> {
        use berth_proto::cluster::v1 as pb;
        let mut scheduler = cluster::scheduler(&self.paths, std::time::Duration::from_secs(5)).await?;
        let status = match scheduler.get_pod(pb::GetPodRequest { namespace: self.namespace.clone(), name: name.to_string() }).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => anyhow::bail!("the scheduler has no pod {}/{name}; `berthctl pod list` shows the pods", self.namespace),
            Err(s) => anyhow::bail!("asking the scheduler for {}/{name}: {}", self.namespace, s.message()),
        };
        let nodes = scheduler.list_nodes(pb::ListNodesRequest {}).await.map_err(|s| anyhow::anyhow!("listing the nodes: {}", s.message()))?.into_inner().nodes;
        // What the pod's node's agent holds, when the node is one of the local cluster's.
        let mut pool = None;
        berth_cloud::client::install_tls_provider();
        if !status.node.is_empty()
            && let Ok(addr) = std::fs::read_to_string(self.paths.guest_dir(&status.node).join("agent.metrics"))
        {
            pool = match reqwest::get(format!("http://{}/debug/pool", addr.trim())).await {
                Ok(r) => r.json::<serde_json::Value>().await.ok(),
                Err(_) => None,
            };
        }
        let lines = inspect::explain_pod(&status, &nodes, pool.as_ref());
        if output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "namespace": self.namespace, "name": name, "phase": crate::views::phase(status.phase), "node": status.node, "ip": status.pod_ip, "explanation": lines }))?);
        } else {
            println!("{}/{name}:", self.namespace);
            for l in &lines {
                println!("  {l}");
            }
        }
        Ok(())
    }
}
