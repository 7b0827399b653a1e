//! `berthctl inspect [NODE|POD]`: a node's pods ↔ pool ↔ cloud, from its agent's introspection
//! endpoint and the cloud API, exiting non-zero on any mismatch; or why a pod is where it is.
//! Nothing named: every node of the local cluster (or the agent at `--agent` on a real node).

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

/// Where a node's agent serves its introspection unless configured otherwise (`api.metrics_listen`).
const DEFAULT_AGENT: &str = "127.0.0.1:9480";

#[derive(Args)]
pub struct Inspect {
    /// A node (instance ID) or a pod of the local cluster; a name that is no node's is a pod's.
    #[arg(conflicts_with_all = ["node", "pod"])]
    target: Option<String>,
    /// The agent's metrics and introspection address (its `api.metrics_listen`); default
    /// 127.0.0.1:9480 when no local cluster runs.
    #[arg(long, env = "BERTH_AGENT_HTTP", conflicts_with_all = ["node", "pod"])]
    agent: Option<String>,
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
        let node_named = |name: &str| self.paths.guest_dir(name).join("agent.metrics").exists();
        let (node, pod) = match &self.target {
            Some(t) if node_named(t) => (Some(t.clone()), None),
            Some(t) => (None, Some(t.clone())),
            None => (self.node.clone(), self.pod.clone()),
        };
        if let Some(pod) = pod {
            return self.pod(&pod, output).await;
        }
        // The cloud client first: it sets up TLS for every HTTP client of the process.
        let cloud = match &self.cloud_endpoint {
            Some(endpoint) => {
                let path = self.credentials.clone().unwrap_or_else(|| self.paths.credentials());
                let creds = berth_cloud::client::load_credentials(&path)?;
                HttpCloud::new(ClientConfig::new(endpoint.clone(), self.region.clone(), creds))?
            }
            None => cluster::connect(&self.paths)?,
        };
        // The agents to look at: the named node's, the one --agent names, or every node's of the
        // local cluster (each writes the address it bound beside its socket, in its guest directory).
        let agents: Vec<(String, String)> = match (&node, &self.agent) {
            (Some(id), _) => {
                let file = self.paths.guest_dir(id).join("agent.metrics");
                let addr = std::fs::read_to_string(&file).with_context(|| format!("node {id} has no agent in the local cluster (no {}); `berthctl nodes` lists the nodes", file.display()))?;
                vec![(id.clone(), addr.trim().to_string())]
            }
            (None, Some(addr)) => vec![(addr.clone(), addr.clone())],
            (None, None) => {
                let local = self.local_agents();
                if local.is_empty() { vec![(DEFAULT_AGENT.to_string(), DEFAULT_AGENT.to_string())] } else { local }
            }
        };
        let mut failed = Vec::new();
        for (name, addr) in &agents {
            match self.node(&cloud, addr, output).await {
                Ok(0) => {}
                Ok(n) => failed.push(format!("{n} mismatch(es) between pods, pool and cloud on {name}")),
                Err(e) => failed.push(format!("{name}: {e:#}")),
            }
        }
        if !failed.is_empty() {
            anyhow::bail!("{}", failed.join("; "));
        }
        Ok(())
    }

    /// The local cluster's nodes that run an agent, by instance ID, with their agents' addresses.
    fn local_agents(&self) -> Vec<(String, String)> {
        let Some(guests) = self.paths.guest_dir("x").parent().map(std::path::Path::to_path_buf) else { return Vec::new() };
        let Ok(entries) = std::fs::read_dir(guests) else { return Vec::new() };
        let mut agents: Vec<(String, String)> = entries
            .flatten()
            .filter_map(|e| {
                let addr = std::fs::read_to_string(e.path().join("agent.metrics")).ok()?;
                Some((e.file_name().to_string_lossy().into_owned(), addr.trim().to_string()))
            })
            .collect();
        agents.sort();
        agents
    }

    /// One node: its agent's pool against the cloud's ENIs and the node's datapath; the number of
    /// mismatches that stayed through three looks.
    async fn node(&self, cloud: &HttpCloud, agent: &str, output: Output) -> anyhow::Result<usize> {
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
        Ok(report.mismatches.len())
    }

    async fn pod(&self, name: &str, output: Output) -> anyhow::Result<()> {
        use berth_proto::cluster::v1 as pb;
        let mut scheduler = cluster::scheduler(&self.paths, std::time::Duration::from_secs(5)).await?;
        let status = match scheduler.get_pod(pb::GetPodRequest { namespace: self.namespace.clone(), name: name.to_string() }).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => anyhow::bail!("the scheduler has no pod {}/{name}; `berthctl pod list` shows the pods", self.namespace),
            Err(s) => anyhow::bail!("asking the scheduler for {}/{name}: {}", self.namespace, s.message()),
        };
        let nodes = berth_scheduler_client::list_nodes(&mut scheduler).await.map_err(|s| anyhow::anyhow!("listing the nodes: {}", s.message()))?;
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
        let mut lines = inspect::explain_pod(&status, &nodes, pool.as_ref());
        let policies = scheduler.get_pod_policies(pb::GetPodRequest { namespace: self.namespace.clone(), name: name.to_string() }).await.map(|r| r.into_inner()).ok();
        if let Some(p) = &policies {
            lines.extend(inspect::explain_policies(p));
        }
        if output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "namespace": self.namespace, "name": name, "phase": crate::views::phase(status.phase), "node": status.node, "ip": status.pod_ip, "explanation": lines, "ingress_policies": policies.as_ref().map(|p| p.ingress_policies.clone()).unwrap_or_default(), "egress_policies": policies.as_ref().map(|p| p.egress_policies.clone()).unwrap_or_default() }))?);
        } else {
            println!("{}/{name}:", self.namespace);
            for l in &lines {
                println!("  {l}");
            }
        }
        Ok(())
    }
}
