//! `berth-scheduler`: reads its config (file, then environment and flags), opens its state,
//! serves the Scheduler API and runs the autoscaler against the cloud API.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use berth_cloud::credentials::Source;
use berth_cloud::{ClientConfig, HttpCloud};
use berth_scheduler::autoscaler::driver::CloudProvisioner;
use berth_scheduler::config::{self, SchedulerConfig};
use berth_scheduler::config::StoreKind;
use berth_scheduler::replica::{EtcdTerms, JournalTerms, Terms};
use berth_scheduler::server;
use clap::Parser;

#[derive(Parser)]
#[command(name = "berth-scheduler", version, about = "Berth's scheduler and autoscaler: places pods by nodes' live capacity, grows and shrinks node pools")]
struct Args {
    /// The config file; a missing file at the default path means defaults.
    #[arg(long, env = "BERTH_SCHEDULER_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "BERTH_SCHEDULER_LISTEN")]
    listen: Option<String>,
    #[arg(long, env = "BERTH_SCHEDULER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Where /metrics is served ("" for nowhere).
    #[arg(long, env = "BERTH_SCHEDULER_METRICS_LISTEN")]
    metrics_listen: Option<String>,
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
    #[arg(long, env = "BERTH_SCHEDULER_LEASE_SECS")]
    lease_secs: Option<u64>,
    #[arg(long, env = "BERTH_SCHEDULER_PENDING_THRESHOLD_SECS")]
    pending_threshold_secs: Option<u64>,
    #[arg(long, env = "BERTH_SCHEDULER_SCALE_DOWN_AFTER_SECS")]
    scale_down_after_secs: Option<u64>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "BERTH_LOG_JSON")]
    log_json: bool,
}

impl Args {
    fn apply(&self, c: &mut SchedulerConfig) {
        macro_rules! set {
            ($field:expr, $value:expr) => {
                if let Some(v) = $value.clone() {
                    $field = v;
                }
            };
        }
        set!(c.server.listen, self.listen);
        set!(c.server.state_dir, self.state_dir);
        set!(c.server.metrics_listen, self.metrics_listen);
        set!(c.cloud.endpoint, self.cloud_endpoint);
        set!(c.cloud.vpc_endpoint, self.vpc_endpoint);
        set!(c.cloud.nas_endpoint, self.nas_endpoint);
        set!(c.cloud.credentials_file, self.credentials);
        set!(c.placement.lease_secs, self.lease_secs);
        set!(c.autoscaler.pending_threshold_secs, self.pending_threshold_secs);
        set!(c.autoscaler.scale_down_after_secs, self.scale_down_after_secs);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The scheduler needs no privilege: it listens on unprivileged ports and writes its own state.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    berth_daemon::start("berth-scheduler", args.log_json, &[], workers, || run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let explicit = args.config.is_some();
    let path = args.config.clone().unwrap_or_else(|| config::DEFAULT_PATH.into());
    let mut cfg = SchedulerConfig::load(&path, explicit)?;
    args.apply(&mut cfg);
    cfg.validate()?;
    let listener = tokio::net::TcpListener::bind(&cfg.server.listen).await.with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
    let provisioner = if cfg.autoscaler.enabled && !cfg.pool.is_empty() {
        let credentials = Source::from_settings(cfg.cloud.credentials_source, &cfg.cloud.credentials_file, &cfg.cloud.metadata_url, &cfg.cloud.ram_role)?;
        let mut client = ClientConfig::from_settings(&cfg.cloud.endpoint, &cfg.cloud.vpc_endpoint, &cfg.cloud.nas_endpoint, &cfg.cloud.region, credentials);
        client.signature = cfg.cloud.signature;
        Some(CloudProvisioner { cloud: HttpCloud::new(client)? })
    } else {
        None
    };
    tracing::info!(listen = %cfg.server.listen, pools = cfg.pool.len(), "berth-scheduler serving");
    let metrics_listen = cfg.server.metrics_listen.clone();
    // With port 0 only this file tells tools the port.
    let metrics_address_file = cfg.server.state_dir.join("metrics.address");
    match cfg.store.kind {
        StoreKind::Journal => {
            let terms = JournalTerms::new(cfg.server.state_dir.clone());
            serve(cfg, terms, provisioner, listener, metrics_listen, metrics_address_file).await
        }
        StoreKind::Etcd => {
            let terms = EtcdTerms::connect(&cfg.store.etcd, cfg.server.advertised()).await.map_err(anyhow::Error::msg)?;
            serve(cfg, terms, provisioner, listener, metrics_listen, metrics_address_file).await
        }
    }
}

async fn serve<T: Terms>(cfg: SchedulerConfig, terms: T, provisioner: Option<CloudProvisioner<HttpCloud>>, listener: tokio::net::TcpListener, metrics_listen: String, metrics_address_file: PathBuf) -> anyhow::Result<()> {
    let replica = server::replica_of(&cfg, &terms);
    if !metrics_listen.is_empty() {
        // The address file lives in the state directory, which an etcd-backed replica does not make otherwise.
        std::fs::create_dir_all(&cfg.server.state_dir).with_context(|| format!("cannot create server.state_dir {}", cfg.server.state_dir.display()))?;
        let replica = replica.clone();
        berth_daemon::metrics::serve("server.metrics_listen", &metrics_listen, Some(&metrics_address_file), berth_daemon::metrics::router(move || server::metrics_text(&replica)), std::future::pending()).await?;
    }
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    server::serve_replica(cfg, replica, terms, provisioner, listener, shutdown).await?;
    Ok(())
}
