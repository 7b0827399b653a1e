//! `berth-csi`: reads its config (file, then environment and flags), connects to the cloud and the
//! node's agent, and serves the CSI services on its unix socket.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use berth_cloud::credentials::Source;
use berth_cloud::{ClientConfig, HttpCloud};
use berth_csi::config::{self, CsiConfig};
use berth_csi::controller::ControllerService;
use berth_csi::driver::{Driver, region_of_zone};
use berth_csi::identity::IdentityService;
use berth_csi::metrics::{CountCalls, Metrics};
use berth_csi::node::NodeService;
use berth_csi::oss::OssMounter;
use berth_proto::csi::v1 as csi;
use berth_daemon::privileges::Capability;
use clap::Parser;

#[derive(Parser)]
#[command(name = "berth-csi", version, about = "Berth's CSI driver: cloud disks, NAS and OSS volumes")]
struct Args {
    /// The config file; a missing file at the default path means defaults.
    #[arg(long, env = "BERTH_CSI_CONFIG")]
    config: Option<PathBuf>,
    /// The CSI socket (a path, or unix:///path as COs write it).
    #[arg(long, env = "BERTH_CSI_ENDPOINT")]
    endpoint: Option<String>,
    /// all, controller or node.
    #[arg(long, env = "BERTH_CSI_MODE")]
    mode: Option<String>,
    #[arg(long, env = "BERTH_CSI_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The ECS API's URL; empty: the region's public endpoint.
    #[arg(long, env = "BERTH_CLOUD_ENDPOINT")]
    cloud_endpoint: Option<String>,
    /// The VPC API's URL (cloud.vpc_endpoint).
    #[arg(long, env = "BERTH_VPC_ENDPOINT")]
    vpc_endpoint: Option<String>,
    /// The NAS API's URL (cloud.nas_endpoint).
    #[arg(long, env = "BERTH_NAS_ENDPOINT")]
    nas_endpoint: Option<String>,
    #[arg(long, env = "BERTH_CLOUD_REGION")]
    region: Option<String>,
    #[arg(long, env = "BERTH_CREDENTIALS")]
    credentials: Option<PathBuf>,
    #[arg(long, env = "BERTH_AGENT_SOCKET")]
    agent_socket: Option<PathBuf>,
    #[arg(long, env = "BERTH_AGENT_SOCKETS_DIR")]
    agent_sockets_dir: Option<PathBuf>,
    #[arg(long, env = "BERTH_NAS_LOCAL_EXPORT_ROOT")]
    nas_local_export_root: Option<PathBuf>,
    #[arg(long, env = "BERTH_OSS_ENDPOINT")]
    oss_endpoint: Option<String>,
    #[arg(long, env = "BERTH_OSS_HEALTH_SECS")]
    oss_health_secs: Option<u64>,
    /// Where /metrics is served ("" for nowhere).
    #[arg(long, env = "BERTH_CSI_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "BERTH_LOG_JSON")]
    log_json: bool,
}

impl Args {
    fn apply(self, c: &mut CsiConfig) {
        macro_rules! set {
            ($field:expr, $value:expr) => {
                if let Some(v) = $value {
                    $field = v;
                }
            };
        }
        set!(c.driver.socket, self.endpoint.map(|e| PathBuf::from(e.strip_prefix("unix://").unwrap_or(&e))));
        set!(c.driver.mode, self.mode);
        set!(c.driver.state_dir, self.state_dir);
        set!(c.driver.metrics_listen, self.metrics_listen);
        set!(c.cloud.endpoint, self.cloud_endpoint);
        set!(c.cloud.vpc_endpoint, self.vpc_endpoint);
        set!(c.cloud.nas_endpoint, self.nas_endpoint);
        set!(c.cloud.region, self.region);
        set!(c.cloud.credentials_file, self.credentials);
        set!(c.agent.socket, self.agent_socket);
        set!(c.agent.sockets_dir, self.agent_sockets_dir);
        set!(c.nas.local_export_root, self.nas_local_export_root);
        set!(c.oss.endpoint, self.oss_endpoint);
        set!(c.oss.health_secs, self.oss_health_secs);
    }
}

/// Mounting (CAP_SYS_ADMIN), growing a file system past its reserved blocks (CAP_SYS_RESOURCE),
/// and publishing into target paths and files a CO made with other owners and modes
/// (CAP_DAC_OVERRIDE, CAP_FOWNER). mkfs, mount and s3fs run with the same sets.
const KEPT_CAPABILITIES: [Capability; 4] = [Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_RESOURCE, Capability::CAP_DAC_OVERRIDE, Capability::CAP_FOWNER];

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    berth_daemon::start("berth-csi", args.log_json, &KEPT_CAPABILITIES, 2, || run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_PATH), false),
    };
    let mut cfg = CsiConfig::load(&path, explicit)?;
    args.apply(&mut cfg);
    cfg.validate()?;

    let credentials = Source::from_settings(cfg.cloud.credentials_source, &cfg.cloud.credentials_file, &cfg.cloud.metadata_url, &cfg.cloud.ram_role)?;
    let region = if cfg.cloud.region.is_empty() {
        // The node's zone names the region; the agent may come up a moment after us.
        let probe = Driver::new(cfg.clone(), None, OssMounter::new(String::new(), String::new(), &cfg.driver.state_dir));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match probe.node().await {
                Ok(n) => break region_of_zone(&n.zone_id),
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e.message(), "agent not answering yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => anyhow::bail!("cloud.region is empty and the node's agent does not answer to tell the zone: {}", e.message()),
            }
        }
    } else {
        cfg.cloud.region.clone()
    };
    let mut client = ClientConfig::from_settings(&cfg.cloud.endpoint, &cfg.cloud.vpc_endpoint, &cfg.cloud.nas_endpoint, &region, credentials.clone());
    client.signature = cfg.cloud.signature;
    let cloud = HttpCloud::new(client)?;
    let oss = OssMounter::new(cfg.oss.endpoint.clone(), region, &cfg.driver.state_dir);
    if cfg.serves_node() && !cfg.oss.endpoint.is_empty() {
        // validate() refuses OSS with role credentials: s3fs takes a long-term key only.
        if let Source::Static(key) = &credentials {
            oss.write_credentials(key).context("writing the OSS credentials file")?;
        }
    }
    let driver = Driver::new(cfg.clone(), Some(cloud), oss);
    let metrics = Metrics::new();

    let socket = cfg.driver.socket.clone();
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(&socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("removing the stale socket {}", socket.display())),
        _ => {}
    }
    // Before the socket: once it exists, so does the metrics address beside it.
    if !cfg.driver.metrics_listen.is_empty() {
        let (d, m) = (driver.clone(), metrics.clone());
        let app = berth_daemon::metrics::router(move || m.render(&d.oss.volumes()));
        berth_daemon::metrics::serve("driver.metrics_listen", &cfg.driver.metrics_listen, Some(&socket.with_extension("metrics")), app, std::future::pending()).await?;
    }
    let listener = tokio::net::UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;

    if cfg.serves_node() && !cfg.oss.endpoint.is_empty() {
        let (d, metrics) = (driver.clone(), metrics.clone());
        let every = Duration::from_secs(cfg.oss.health_secs);
        tokio::spawn(async move {
            loop {
                let check = d.clone();
                let remounted = tokio::task::spawn_blocking(move || check.remount_dead_oss()).await.unwrap_or(0);
                if remounted > 0 {
                    metrics.oss_remounts.inc_by(remounted as u64);
                    tracing::info!(remounted, "dead OSS mounts remounted");
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    let mut server = tonic::transport::Server::builder().layer(CountCalls(metrics));
    let mut router = server.add_service(csi::identity_server::IdentityServer::new(IdentityService(driver.clone())));
    if cfg.serves_controller() {
        router = router.add_service(csi::controller_server::ControllerServer::new(ControllerService(driver.clone())));
    }
    if cfg.serves_node() {
        router = router.add_service(csi::node_server::NodeServer::new(NodeService(driver.clone())));
    }
    tracing::info!(socket = %socket.display(), mode = %cfg.driver.mode, name = %cfg.driver.name, "serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
    };
    let incoming = berth_daemon::socket::allowed_peers(listener, cfg.driver.allowed_uids.clone(), "driver.allowed_uids");
    router.serve_with_incoming_shutdown(incoming, shutdown).await?;
    Ok(())
}
