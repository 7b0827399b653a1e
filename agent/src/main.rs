//! `berth-agent`: reads its config (file, then environment and flags), learns who its node is,
//! recovers its pool, serves the CNI plugin, and tells systemd when it is ready.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_agent::attach::{AttachSettings, DiskAttacher};
use berth_agent::config::{self, AgentConfig};
use berth_agent::eni_pool::{EniPool, PoolSettings};
use berth_agent::identity::NodeIdentity;
use berth_agent::metrics::{CloudCalls, Metrics};
use berth_agent::node::Node;
use berth_agent::pool::PoolLimits;
use berth_agent::store::Store;
use berth_agent::{cniconf, http, server, systemd};

use berth_cloud::api::EniFilter;
use berth_cloud::credentials::Source;
use berth_cloud::model::EniKind;
use berth_cloud::ratelimit::Limit;
use berth_cloud::{Cloud, ClientConfig, HttpCloud};
use berth_daemon::privileges::Capability;
use clap::Parser;

#[derive(Parser)]
#[command(name = "berth-agent", version, about = "Berth's node agent: VPC IPs for pods from the node's ENIs")]
struct Args {
    /// The config file; a missing file at the default path means defaults.
    #[arg(long, env = "BERTH_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The node's network namespace (path or /run/netns name), for a simulated node.
    #[arg(long, env = "BERTH_NODE_NETNS")]
    node_netns: Option<String>,
    #[arg(long, env = "BERTH_METADATA_URL")]
    metadata_url: Option<String>,
    /// The ECS API's URL; empty: the region's public endpoint.
    #[arg(long, env = "BERTH_CLOUD_ENDPOINT")]
    cloud_endpoint: Option<String>,
    /// The VPC API's URL (cloud.vpc_endpoint).
    #[arg(long, env = "BERTH_VPC_ENDPOINT")]
    vpc_endpoint: Option<String>,
    /// The NAS API's URL (cloud.nas_endpoint).
    #[arg(long, env = "BERTH_NAS_ENDPOINT")]
    nas_endpoint: Option<String>,
    #[arg(long, env = "BERTH_CREDENTIALS")]
    credentials: Option<PathBuf>,
    #[arg(long, env = "BERTH_AGENT_SOCKET")]
    socket: Option<PathBuf>,
    #[arg(long, env = "BERTH_AGENT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[arg(long, env = "BERTH_CNI_CONF_DIR")]
    cni_conf_dir: Option<PathBuf>,
    #[arg(long, env = "BERTH_RELEASE_QUEUE_DIR")]
    release_queue_dir: Option<PathBuf>,
    /// Metrics and introspection address; "" disables.
    #[arg(long, env = "BERTH_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    #[arg(long, env = "BERTH_MIN_IDLE_IPS")]
    min_idle_ips: Option<u32>,
    #[arg(long, env = "BERTH_MAX_IDLE_IPS")]
    max_idle_ips: Option<u32>,
    #[arg(long, env = "BERTH_COOLDOWN_SECS")]
    cooldown_secs: Option<u64>,
    #[arg(long, env = "BERTH_RECONCILE_SECS")]
    reconcile_secs: Option<u64>,
    #[arg(long, env = "BERTH_INHIBIT_SECS")]
    inhibit_secs: Option<u64>,
    #[arg(long, env = "BERTH_ALLOCATE_TIMEOUT_SECS")]
    allocate_timeout_secs: Option<u64>,
    /// Serve trunk mode (true/false).
    #[arg(long, env = "BERTH_TRUNK")]
    trunk: Option<bool>,
    #[arg(long, env = "BERTH_WARM_EXCLUSIVE_ENIS")]
    warm_exclusive_enis: Option<u32>,
    #[arg(long, env = "BERTH_WARM_MEMBER_ENIS")]
    warm_member_enis: Option<u32>,
    /// ipv4 or dual.
    #[arg(long, env = "BERTH_IP_STACK")]
    ip_stack: Option<String>,
    /// The scheduler's gRPC URL; capacity reports go there.
    #[arg(long, env = "BERTH_SCHEDULER_ENDPOINT")]
    scheduler_endpoint: Option<String>,
    #[arg(long, env = "BERTH_REPORT_SECS")]
    report_secs: Option<u64>,
    #[arg(long, env = "BERTH_NODE_POOL")]
    node_pool: Option<String>,
    /// Run the pods the scheduler binds here (true/false).
    #[arg(long, env = "BERTH_POD_RUNNER")]
    pod_runner: Option<bool>,
    #[arg(long, env = "BERTH_RUNNER_CNI_PATH")]
    runner_cni_path: Option<String>,
    #[arg(long, env = "BERTH_RUNNER_NETNS_PREFIX")]
    runner_netns_prefix: Option<String>,
    /// The CSI driver's socket for pods' volumes; "" for none.
    #[arg(long, env = "BERTH_RUNNER_CSI_SOCKET")]
    runner_csi_socket: Option<PathBuf>,
    /// The cgroup v2 directory each pod's cgroup goes under; "" for `berth-pods` of the mount.
    #[arg(long, env = "BERTH_RUNNER_CGROUP_ROOT")]
    runner_cgroup_root: Option<PathBuf>,
    #[arg(long, env = "BERTH_DISK_ATTACH_TIMEOUT_SECS")]
    disk_attach_timeout_secs: Option<u64>,
    /// Where the `berth` plugin appends a JSON line per command ("" for none).
    #[arg(long, env = "BERTH_CNI_LOG_FILE")]
    cni_log_file: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "BERTH_LOG_JSON")]
    log_json: bool,
}

impl Args {
    fn apply(self, c: &mut AgentConfig) {
        macro_rules! set {
            ($field:expr, $value:expr) => {
                if let Some(v) = $value {
                    $field = v;
                }
            };
        }
        set!(c.node.netns, self.node_netns);
        set!(c.node.metadata_url, self.metadata_url);
        set!(c.cloud.endpoint, self.cloud_endpoint);
        set!(c.cloud.vpc_endpoint, self.vpc_endpoint);
        set!(c.cloud.nas_endpoint, self.nas_endpoint);
        set!(c.cloud.credentials_file, self.credentials);
        set!(c.api.socket, self.socket);
        set!(c.paths.state_dir, self.state_dir);
        set!(c.paths.cni_conf_dir, self.cni_conf_dir);
        set!(c.paths.release_queue_dir, self.release_queue_dir);
        set!(c.api.metrics_listen, self.metrics_listen);
        set!(c.pool.min_idle_ips, self.min_idle_ips);
        set!(c.pool.max_idle_ips, self.max_idle_ips);
        set!(c.pool.cooldown_secs, self.cooldown_secs);
        set!(c.paths.reconcile_secs, self.reconcile_secs);
        set!(c.pool.inhibit_secs, self.inhibit_secs);
        set!(c.pool.allocate_timeout_secs, self.allocate_timeout_secs);
        set!(c.pool.trunk, self.trunk);
        set!(c.pool.warm_exclusive_enis, self.warm_exclusive_enis);
        set!(c.pool.warm_member_enis, self.warm_member_enis);
        set!(c.pool.ip_stack, self.ip_stack);
        set!(c.scheduler.endpoint, self.scheduler_endpoint);
        set!(c.scheduler.report_secs, self.report_secs);
        set!(c.scheduler.pool, self.node_pool);
        set!(c.cni.log_file, self.cni_log_file);
        set!(c.runner.enabled, self.pod_runner);
        set!(c.runner.cni_path, self.runner_cni_path);
        set!(c.runner.netns_prefix, self.runner_netns_prefix);
        set!(c.runner.csi_socket, self.runner_csi_socket);
        set!(c.runner.cgroup_root, self.runner_cgroup_root);
        set!(c.disks.attach_timeout_secs, self.disk_attach_timeout_secs);
    }
}

/// Netlink changes on the node (CAP_NET_ADMIN), entering a node's and pods' network namespaces
/// (CAP_SYS_ADMIN), and looking at pods' namespaces under /proc/<pid>/ns of other processes
/// (CAP_SYS_PTRACE), which tells a gone pod from a live one.
const KEPT_CAPABILITIES: [Capability; 3] = [Capability::CAP_NET_ADMIN, Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE];

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let log_json = args.log_json;
    let cfg = match load_config(args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("berth-agent: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Made before the capabilities go: the top of a cgroup v2 mount is writable only with
    // CAP_DAC_OVERRIDE, which the agent does not keep; the pods' cgroups are made under it later.
    let pod_cgroups = cfg.runner.enabled.then(|| pod_cgroup_root(&cfg));
    // Two workers: the agent's work is small and mostly waiting on the cloud.
    berth_daemon::start("berth-agent", log_json, &KEPT_CAPABILITIES, 2, || run(cfg, pod_cgroups))
}

fn load_config(args: Args) -> anyhow::Result<AgentConfig> {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_PATH), false),
    };
    let mut cfg = AgentConfig::load(&path, explicit)?;
    args.apply(&mut cfg);
    cfg.validate()?;
    Ok(cfg)
}

/// The directory each pod's cgroup goes under (`runner.cgroup_root`, or `berth-pods` of the
/// cgroup v2 mount), made now; why not, when it cannot be.
fn pod_cgroup_root(cfg: &AgentConfig) -> Result<PathBuf, String> {
    let root = match cfg.runner.cgroup_root.as_os_str().is_empty() {
        false => cfg.runner.cgroup_root.clone(),
        true => berth_nodenet::cgroup::cgroup2_mount().ok_or("no cgroup v2 mount on this node (mount one, or set runner.cgroup_root to a directory inside one)")?.join("berth-pods"),
    };
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot make {}: {e} (runner.cgroup_root must be inside a cgroup v2 mount, and the agent start as root)", root.display()))?;
    Ok(root)
}

async fn run(cfg: AgentConfig, pod_cgroups: Option<Result<PathBuf, String>>) -> anyhow::Result<()> {
    let started = std::time::Instant::now();

    let credentials = Source::from_settings(cfg.cloud.credentials_source, &cfg.cloud.credentials_file, &cfg.cloud.metadata_url, &cfg.cloud.ram_role)?;
    let netns = Some(cfg.node.netns.as_str()).filter(|s| !s.is_empty());
    let node = Node::open(netns)?;
    // The metadata service may come up a moment after the node does.
    let identity = {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match NodeIdentity::discover(node.netns(), &cfg.node.metadata_url) {
                Ok(identity) => break identity,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "metadata not answering yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    tracing::info!(instance = %identity.instance_id, r#type = %identity.instance_type, zone = %identity.zone_id, "node identified");

    let metrics = Metrics::new();
    let _ = metrics.node_netns.set(cfg.node.netns.clone());
    let region = if cfg.cloud.region.is_empty() { identity.region_id.clone() } else { cfg.cloud.region.clone() };
    let mut client = ClientConfig::from_settings(&cfg.cloud.endpoint, &cfg.cloud.vpc_endpoint, &cfg.cloud.nas_endpoint, &region, credentials);
    client.default_limit = Limit { rate_per_sec: cfg.cloud.rate_per_second, burst: cfg.cloud.burst };
    client.signature = cfg.cloud.signature;
    let disk_cloud = HttpCloud::new(client.clone())?.with_observer(Arc::new(CloudCalls(metrics.clone())));
    let cloud = HttpCloud::new(client)?.with_observer(Arc::new(CloudCalls(metrics.clone())));

    let itype = cloud
        .describe_instance_types(std::slice::from_ref(&identity.instance_type))
        .await?
        .into_iter()
        .next()
        .with_context(|| format!("the cloud does not know instance type {}", identity.instance_type))?;
    let security_group_ids = if cfg.pool.security_group_ids.is_empty() {
        let filter = EniFilter { instance_id: Some(identity.instance_id.clone()), kind: Some(EniKind::Primary), ..Default::default() };
        cloud.describe_network_interfaces(&filter).await?.into_iter().next().map(|e| e.security_group_ids).unwrap_or_default()
    } else {
        cfg.pool.security_group_ids.clone()
    };
    let settings = PoolSettings {
        targets: cfg.targets(),
        limits: PoolLimits { eni_quota: itype.eni_quota, ipv4_per_eni: itype.ipv4_per_eni },
        cooldown: cfg.cooldown(),
        inhibit: Duration::from_secs(cfg.pool.inhibit_secs),
        vswitch_id: cfg.pool.vswitch_ids.first().cloned().unwrap_or_else(|| identity.vswitch_id.clone()),
        security_group_ids,
        allocate_timeout: Duration::from_secs(cfg.pool.allocate_timeout_secs),
        attach_timeout: Duration::from_secs(cfg.pool.attach_timeout_secs),
        reconcile_every: Duration::from_secs(cfg.paths.reconcile_secs),
        metadata_url: cfg.node.metadata_url.clone(),
        release_queue_dir: cfg.paths.release_queue_dir.clone(),
        member_eni_quota: if cfg.pool.trunk { itype.member_eni_quota } else { 0 },
        warm_exclusive_enis: cfg.pool.warm_exclusive_enis,
        warm_member_enis: if cfg.pool.trunk { cfg.pool.warm_member_enis } else { 0 },
        dual_stack: cfg.pool.ip_stack == "dual",
    };
    let store = Store::open(&cfg.paths.state_dir)?;
    // The disk ledger journals in its own directory of the state: the pool owns the other store.
    let disk_store = Store::open(&cfg.paths.state_dir.join("disks"))?;
    let attach_settings = AttachSettings {
        instance_id: identity.instance_id.clone(),
        instance_type: identity.instance_type.clone(),
        zone_id: identity.zone_id.clone(),
        disk_quota: itype.disk_quota,
        attach_timeout: Duration::from_secs(cfg.disks.attach_timeout_secs),
        by_id_dir: berth_cloud::guest::BY_ID_DIR.into(),
    };
    let disks = Arc::new(DiskAttacher::new(disk_cloud, attach_settings, disk_store, metrics.clone()));
    let instance_id = identity.instance_id.clone();
    let pool = Arc::new(EniPool::new(cloud, settings, identity, node, store, metrics.clone()));
    systemd::status("recovering the pool");
    pool.recover().await.context("recovering the pool from the store, the cloud and the node")?;
    // The node's pod filter admits the pods the node already has (made before this agent, or before
    // the filter existed), so that none is cut off by the first ADD that sets the filter up.
    admit_existing_pods(&pool, &cfg.node.netns);
    disks.recover().await.context("recovering the disk ledger from the store, the cloud and the node")?;

    let listener = server::bind(&cfg.api.socket).with_context(|| format!("binding {}", cfg.api.socket.display()))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let grpc = tokio::spawn(server::serve(listener, pool.clone(), disks.clone(), cfg.api.allowed_uids.clone(), stopped(stop_rx.clone())));
    tokio::spawn(pool.clone().upkeep());
    {
        let disks = disks.clone();
        let every = Duration::from_secs(cfg.paths.reconcile_secs);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = disks.reconcile().await {
                    tracing::warn!(error = %e, "reconciling the disk ledger failed; retrying at the next period");
                }
            }
        });
    }
    if !cfg.api.metrics_listen.is_empty() {
        // With port 0 (many simulated nodes on one machine) only the address file tells tools the port.
        let app = http::router(pool.clone(), disks.clone(), metrics.clone());
        berth_daemon::metrics::serve("api.metrics_listen", &cfg.api.metrics_listen, Some(&cfg.api.socket.with_extension("metrics")), app, stopped(stop_rx.clone())).await?;
    }

    // Ready once an ADD can be served from the pool (or no warm IPs are wanted).
    let mut said = String::new();
    loop {
        let s = pool.status();
        if (s.ready && s.idle > 0) || cfg.pool.min_idle_ips == 0 {
            break;
        }
        // Tell systemd what we wait for, once per change: not a datagram every few milliseconds.
        let text = format!("waiting for the pool: {}", if s.reason.is_empty() { "growing" } else { &s.reason });
        if text != said {
            systemd::status(&text);
            said = text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let written = cniconf::write_all(&cfg.paths.cni_conf_dir, &cfg.cni, &cfg.api.socket, &cfg.paths.release_queue_dir, cfg.pool.trunk).with_context(|| format!("writing the CNI config into {}", cfg.paths.cni_conf_dir.display()))?;
    let s = pool.status();
    let text = format!("ready: {} idle IPs, {} allocated", s.idle, s.allocated);
    systemd::ready(&text);
    tracing::info!(socket = %cfg.api.socket.display(), conflist = %written.display(), ready_after_ms = started.elapsed().as_millis() as u64, "{text}");

    // Capacity reports (and the pods the scheduler binds in return) only once an ADD can be
    // served: a pod bound before the conflist exists would fail for nothing.
    if !cfg.scheduler.endpoint.is_empty() {
        let settings = berth_agent::report::ReportSettings {
            endpoint: cfg.scheduler.endpoint.clone(),
            every: Duration::from_secs(cfg.scheduler.report_secs),
            pool: cfg.scheduler.pool.clone(),
            // As Kubernetes' `kubernetes.io/hostname`: a pod's selector may name its node.
            labels: [("berth.io/node".to_string(), instance_id)].into(),
        };
        let runner = match cfg.runner.enabled {
            false => None,
            true => Some(Arc::new(berth_agent::runner::PodRunner::new(berth_agent::runner::RunnerSettings {
                node_netns: (!cfg.node.netns.is_empty()).then(|| PathBuf::from(&cfg.node.netns)),
                cni_conf_dir: cfg.paths.cni_conf_dir.clone(),
                cni_path: cfg.runner.cni_path.clone(),
                netns_prefix: cfg.runner.netns_prefix.clone(),
                node_name: pool.identity().instance_id.clone(),
                state_dir: cfg.paths.state_dir.join("runner"),
                csi_socket: Some(cfg.runner.csi_socket.clone()).filter(|p| !p.as_os_str().is_empty()),
                cgroup_root: match pod_cgroups {
                    Some(Ok(root)) => Some(root),
                    Some(Err(why)) => {
                        tracing::warn!(reason = %why, "pods run without cgroups of their own: no CPU measured, what a pod leaves behind is not killed with it");
                        None
                    }
                    None => None,
                },
            })?)),
        };
        if let Some(r) = &runner {
            let r = Arc::downgrade(r);
            let _ = metrics.pod_namespaces.set(Box::new(move || r.upgrade().map(|r| r.pod_rows()).unwrap_or_default()));
        }
        tokio::spawn(berth_agent::report::run(pool.clone(), disks.clone(), itype.clone(), settings, runner));
    }

    if let Some(interval) = systemd::watchdog_interval() {
        let pool = pool.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval / 2).await;
                // Only a live agent whose books are reachable pings.
                let _ = pool.status();
                systemd::watchdog_ping();
            }
        });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    systemd::stopping();
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc).await;
    Ok(())
}

/// Adds the elements of every allocated pod interface to the node's pod filter (adding only: an ADD
/// running meanwhile keeps its own). A failure is logged; the pods' own ADDs set the filter up too.
fn admit_existing_pods<C: berth_cloud::Cloud + 'static>(pool: &berth_agent::eni_pool::EniPool<C>, netns: &str) {
    use berth_agent::pool::ledger::PodMode;
    use berth_cni::datapath::guard::{self, Guarded, Reach};
    let pods: Vec<Guarded> = pool
        .list()
        .into_iter()
        .map(|a| Guarded {
            iface: berth_cni::datapath::host_veth_name(&a.record.key.container_id, &a.record.key.ifname),
            sources: std::iter::once(std::net::IpAddr::V4(a.record.ip)).chain(a.record.ip6.map(std::net::IpAddr::V6)).collect(),
            reach: match (a.record.mode, &a.eni.vlan) {
                (PodMode::Exclusive, _) => Reach::Leg,
                (PodMode::Trunk, Some(v)) => Reach::FromVpcBy(v.trunk_nic.clone()),
                _ => Reach::Node,
            },
        })
        .collect();
    let script = guard::admit_all_script(&pods);
    let applied = if netns.is_empty() {
        guard::run(&script).map_err(|e| e.to_string())
    } else {
        let ns = if netns.contains('/') { berth_nodenet::Netns::open(netns) } else { berth_nodenet::Netns::open_named(netns) };
        ns.map_err(|e| e.to_string()).and_then(|ns| ns.run_in(|| guard::run(&script).map_err(|e| e.to_string())).map_err(|e| e.to_string()).and_then(|r| r))
    };
    match applied {
        Ok(()) => tracing::info!(pods = pods.len(), "the node's pod filter admits the node's pods"),
        Err(e) => tracing::warn!(error = %e, "cannot set up the node's pod filter; each pod's ADD does"),
    }
}
