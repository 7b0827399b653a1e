//! `berth-localcloud`: parses the command line and runs one command.

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use anyhow::Context as _;
use berth_localcloud::engine::{Engine, EngineConfig, RoleConfig};
use berth_localcloud::faults::{DiskStock, Faults};
use berth_localcloud::guest::image::GuestImage;
use berth_localcloud::guest::supervisor::GuestContext;
use berth_localcloud::guest::{self, GuestPlane};
use berth_localcloud::{planes, server};
use berth_daemon::logging;
use berth_daemon::privileges::{self, Capability, Reach};
use berth_cloud::wire::Product;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth-localcloud", version, about = "A local cloud: the ECS/VPC/NAS RPC API on loopback with a real data plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (and converge the data plane) until stopped.
    Serve(Box<Serve>),
    /// Remove everything the planes made on this machine (namespaces, veths, loop devices, links).
    Down(Down),
    /// Write a new credentials file (mode 0600) for clients and the server.
    InitCredentials {
        /// Where to write it; refused if it exists.
        path: PathBuf,
    },
}

#[derive(Args)]
struct Where {
    /// Directory of the persistent state (state.json, disk images, NAS exports).
    #[arg(long, default_value = "/var/lib/berth-localcloud")]
    state_dir: PathBuf,
    /// Prefix of every network namespace this local cloud makes.
    #[arg(long, default_value = "lc")]
    netns_prefix: String,
}

#[derive(Args)]
struct Serve {
    #[command(flatten)]
    place: Where,
    /// Loopback address to listen on; port 0 picks a free one (written to <state-dir>/endpoint).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Credentials file (TOML or JSON: access_key_id, access_key_secret), mode 0600.
    #[arg(long)]
    credentials: PathBuf,
    #[arg(long, default_value = "local-1")]
    region: String,
    #[arg(long, value_delimiter = ',', default_value = "local-1a,local-1b")]
    zones: Vec<String>,
    /// Serve the VPC API (2016-04-28) on its own loopback listener here, and not on --listen, as
    /// the real VPC endpoint is apart from ECS's (its URL is written to <state-dir>/vpc-endpoint).
    #[arg(long)]
    vpc_listen: Option<SocketAddr>,
    /// Likewise the NAS API (2017-06-26); its URL is written to <state-dir>/nas-endpoint.
    #[arg(long)]
    nas_listen: Option<SocketAddr>,
    /// Loopback address of the OSS (S3-compatible) endpoint; its URL is written to <state-dir>/oss-endpoint.
    #[arg(long, default_value = "127.0.0.1:0")]
    oss_listen: SocketAddr,
    /// Serve the API only: no namespaces, veths or loop devices.
    #[arg(long)]
    no_dataplane: bool,
    /// Latency added to every API call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share (0.0–1.0) of API calls answered with Throttling.
    #[arg(long, default_value_t = 0.0)]
    throttle_rate: f64,
    /// How long an attach, detach or instance start takes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    attach_delay_ms: u64,
    /// The data disk space, in GiB, each zone has to sell of each category (CreateDisk beyond it is
    /// refused OperationDenied.NoStock; DescribeAvailableResource reports it).
    #[arg(long, default_value_t = 1 << 20)]
    disk_stock_gib: u64,
    /// The stock of one zone and category instead, as ZONE/CATEGORY=GIB (repeatable).
    #[arg(long, value_parser = parse_disk_stock)]
    disk_stock: Vec<(String, u64)>,
    /// The RAM role of an instance run without RamRoleName: its metadata service serves the
    /// role's STS credentials at /latest/meta-data/ram/security-credentials/<role>.
    #[arg(long, default_value = "berth-node")]
    ram_role: String,
    /// Another RAM role of the account, which RunInstances' RamRoleName may name (repeatable);
    /// any other name is refused with InvalidRamRole.NotFound.
    #[arg(long = "account-ram-role")]
    account_ram_roles: Vec<String>,
    /// How long the role credentials the metadata service hands out stay valid, in seconds (new
    /// ones from half of it on); short for tests of credential rotation.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(2..=43_200))]
    role_credential_lifetime_secs: u64,
    /// Guest image (TOML): the services every Running instance runs, as a VM runs its image's
    /// software (e.g. a Berth node: agent and CSI driver). Without it instances run nothing.
    #[arg(long)]
    image: Option<PathBuf>,
}

#[derive(Args)]
struct Down {
    #[command(flatten)]
    place: Where,
}

fn main() -> anyhow::Result<()> {
    logging::init(false);
    match Cli::parse().command {
        Command::Serve(s) => serve(*s),
        Command::Down(d) => {
            let planes = planes::build(&d.place.state_dir, &d.place.netns_prefix, false, None);
            Engine::teardown(&planes).map_err(anyhow::Error::msg)
        }
        Command::InitCredentials { path } => {
            let secret = uuid::Uuid::new_v4().simple().to_string();
            let body = serde_json::json!({ "access_key_id": format!("LTAI{}", &secret[..12]), "access_key_secret": secret });
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).with_context(|| format!("creating {}", path.display()))?;
            std::io::Write::write_all(&mut f, body.to_string().as_bytes())?;
            println!("{}", path.display());
            Ok(())
        }
    }
}

/// Namespaces, links, nftables, tc and BPF programs, loop devices (CAP_NET_ADMIN, CAP_SYS_ADMIN,
/// CAP_NET_RAW), the state directory whatever its owner (CAP_DAC_OVERRIDE), and telling which
/// processes live in an instance's namespaces (CAP_SYS_PTRACE), stopping a guest's processes
/// whatever user they run as (CAP_KILL), the metadata service on port 80 of 100.100.100.200 in each
/// VPC's namespace (CAP_NET_BIND_SERVICE). Only this process's sets shrink: the programs it runs
/// (nft, an instance's software) start with what they need, as a VM's would.
const KEPT_CAPABILITIES: [Capability; 7] = [
    Capability::CAP_NET_ADMIN,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_NET_RAW,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_KILL,
    Capability::CAP_NET_BIND_SERVICE,
];

fn serve(s: Serve) -> anyhow::Result<()> {
    // Before the runtime's threads exist, so that they inherit the reduced sets.
    privileges::keep_only_or_explain("berth-localcloud", &KEPT_CAPABILITIES, Reach::ProcessOnly).map_err(anyhow::Error::msg)?;
    let apart = [("--vpc-listen", s.vpc_listen), ("--nas-listen", s.nas_listen)];
    for (flag, addr) in [("--listen", s.listen), ("--oss-listen", s.oss_listen)].into_iter().chain(apart.iter().filter_map(|(f, a)| a.map(|a| (*f, a)))) {
        if !addr.ip().is_loopback() {
            anyhow::bail!("{flag} {addr} is not a loopback address; the local cloud only serves on loopback (e.g. 127.0.0.1:17380)");
        }
    }
    for (flag, role) in std::iter::once(("--ram-role", &s.ram_role)).chain(s.account_ram_roles.iter().map(|r| ("--account-ram-role", r))) {
        if !((1..=64).contains(&role.len()) && role.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')) {
            anyhow::bail!("{flag} \"{role}\" is not a RAM role name (1 to 64 letters, digits, '.' or '-')");
        }
    }
    let credentials = berth_cloud::client::load_credentials(&s.credentials)?;
    let disk_stock = DiskStock { default_gib: s.disk_stock_gib, of: s.disk_stock.iter().cloned().collect() };
    let faults = Faults { latency_ms: s.latency_ms, throttle_rate: s.throttle_rate, attach_delay_ms: s.attach_delay_ms, disk_stock, ..Faults::default() };
    faults.validate().map_err(anyhow::Error::msg)?;
    // A bad image stops the start here, naming what is wrong.
    let image = match &s.image {
        Some(_) if s.no_dataplane => anyhow::bail!("--image needs the data plane: guests run against their instances' namespaces; drop --no-dataplane"),
        Some(path) => Some(GuestImage::load(path)?),
        None => None,
    };
    std::fs::create_dir_all(&s.place.state_dir).with_context(|| format!("creating {}", s.place.state_dir.display()))?;
    // Guests run with another working directory: every path they are given is absolute.
    let state_dir = std::fs::canonicalize(&s.place.state_dir).with_context(|| format!("resolving {}", s.place.state_dir.display()))?;
    let credentials_path = std::fs::canonicalize(&s.credentials).with_context(|| format!("resolving {}", s.credentials.display()))?;
    let engine_credentials = credentials.clone();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        // Bound before the engine opens: its first converge may start guests, which need every URL.
        let oss = tokio::net::TcpListener::bind(s.oss_listen).await.with_context(|| format!("listening on {}", s.oss_listen))?;
        let oss_endpoint = format!("http://{}", oss.local_addr()?);
        let listener = tokio::net::TcpListener::bind(s.listen).await.with_context(|| format!("listening on {}", s.listen))?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        // Each product given its own listener; the others stay on `endpoint`.
        let mut apart = Vec::new();
        for (product, addr, file) in [(Product::Vpc, s.vpc_listen, "vpc-endpoint"), (Product::Nas, s.nas_listen, "nas-endpoint")] {
            let path = state_dir.join(file);
            let Some(addr) = addr else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr} for {}", product.name()))?;
            let url = format!("http://{}", l.local_addr()?);
            apart.push((product, l, path, url));
        }
        let endpoint_of = |product: Product| apart.iter().find(|a| a.0 == product).map_or(endpoint.clone(), |a| a.3.clone());
        let guests = match image {
            Some(image) => {
                let ctx = GuestContext {
                    guests_dir: guest::guests_dir(&state_dir),
                    netns_prefix: s.place.netns_prefix.clone(),
                    region_id: s.region.clone(),
                    cloud_endpoint: endpoint.clone(),
                    vpc_endpoint: endpoint_of(Product::Vpc),
                    nas_endpoint: endpoint_of(Product::Nas),
                    oss_endpoint: oss_endpoint.clone(),
                    credentials: credentials_path,
                    nas_export_root: state_dir.join("nas"),
                    metadata_url: format!("http://{}/latest/meta-data", berth_localcloud::metadata::IN_INSTANCE_ADDR),
                };
                Some(GuestPlane::start(image, ctx).context("starting the guest supervisor")?)
            }
            None => None,
        };
        let planes = planes::build(&state_dir, &s.place.netns_prefix, s.no_dataplane, guests);
        let engine = Engine::open(EngineConfig { state_dir: state_dir.clone(), region_id: s.region, zones: s.zones, credentials, planes, faults, role: RoleConfig { name: s.ram_role, others: s.account_ram_roles, lifetime_secs: s.role_credential_lifetime_secs } })
            .with_context(|| format!("opening the state in {}", state_dir.display()))?;
        write_atomically(&state_dir.join("oss-endpoint"), &oss_endpoint)?;
        tokio::spawn(berth_localcloud::oss::serve(oss, state_dir.join("oss"), engine_credentials.clone()));
        if !s.no_dataplane {
            let netns = berth_localcloud::vpcnet::VpcNet::new(&s.place.netns_prefix);
            tokio::spawn(berth_localcloud::metadata::serve(engine.clone(), move |id| netns.netns_path(id)));
        }
        let mut serves = server::Serves::all();
        for (product, l, path, url) in apart {
            write_atomically(&path, &url)?;
            serves.0.retain(|p| *p != product);
            tokio::spawn(axum::serve(l, server::product_router(engine.clone(), product)).into_future());
        }
        write_atomically(&state_dir.join("endpoint"), &endpoint)?;
        println!("{endpoint}");
        tracing::info!(%endpoint, "serving");
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
        };
        axum::serve(listener, server::router(engine, serves)).with_graceful_shutdown(shutdown).await?;
        anyhow::Ok(())
    })
}

/// `--disk-stock ZONE/CATEGORY=GIB`.
fn parse_disk_stock(text: &str) -> Result<(String, u64), String> {
    let bad = || format!("--disk-stock {text:?} is not ZONE/CATEGORY=GIB, e.g. local-1a/cloud_essd=500");
    let (key, gib) = text.split_once('=').ok_or_else(bad)?;
    let (zone, category) = key.split_once('/').ok_or_else(bad)?;
    if zone.is_empty() || category.is_empty() {
        return Err(bad());
    }
    Ok((key.to_string(), gib.trim().parse().map_err(|_| bad())?))
}

fn write_atomically(path: &std::path::Path, body: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}
