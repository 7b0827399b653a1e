//! Harness for tests that run Berth's real binaries: a local cloud process with its own state
//! directory, credentials and namespace prefix, stopped and torn down when the test ends, even when
//! it fails.

pub mod agent;
pub mod cni;
pub mod e2e;
pub mod csi;
pub mod etcd;
pub mod failover;
pub mod guest;
pub mod pods;
pub mod privileges;
pub mod scheduler;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use berth_cloud::model::Credentials;
use berth_cloud::{ClientConfig, HttpCloud};

pub const REGION: &str = "local-1";

/// A binary of the workspace, built next to the test executable (`cargo build --workspace --bins`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build the binaries first with `cargo build --workspace --bins`", path.display());
    path
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A short name unique to this test process and call, for namespaces and other global names.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{tag}{}x{}", std::process::id() % 100_000, N.fetch_add(1, Ordering::Relaxed))
}

#[derive(Debug, Clone, Default)]
pub struct LocalCloudOptions {
    /// Run without namespaces, veths and loop devices (API only).
    pub no_dataplane: bool,
    /// A guest image (`--image`): what every Running instance runs, e.g. a
    /// [`guest::NodeImage`]. `None`: instances run nothing.
    pub image: Option<PathBuf>,
    pub extra_args: Vec<String>,
    /// Serve VPC and NAS on listeners of their own (`--vpc-listen`, `--nas-listen`), as the
    /// real products' endpoints are apart: the main endpoint then serves ECS only.
    pub products_apart: bool,
    /// Where the local cloud's directory (its state, so its disk files) is made: the system's
    /// temporary directory if `None`.
    pub parent_dir: Option<PathBuf>,
}

/// A running `berth-localcloud serve`.
pub struct LocalCloud {
    pub dir: tempfile::TempDir,
    pub prefix: String,
    pub credentials: Credentials,
    pub endpoint: String,
    /// The VPC and NAS endpoints: their own listeners with `products_apart`, else `endpoint`.
    pub vpc_endpoint: String,
    pub nas_endpoint: String,
    options: LocalCloudOptions,
    child: Option<Child>,
}

impl LocalCloud {
    pub fn start(options: LocalCloudOptions) -> LocalCloud {
        let builder = tempfile::Builder::new().prefix("berth-lc-").clone();
        let dir = match &options.parent_dir {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .expect("tempdir");
        let credentials = Credentials { access_key_id: "LTAItest".into(), access_key_secret: unique("secret") };
        let creds_path = dir.path().join("credentials.json");
        std::fs::write(&creds_path, serde_json::json!({
            "access_key_id": credentials.access_key_id,
            "access_key_secret": credentials.access_key_secret,
        }).to_string()).unwrap();
        std::fs::set_permissions(&creds_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut lc = LocalCloud { dir, prefix: unique("lc"), credentials, endpoint: String::new(), vpc_endpoint: String::new(), nas_endpoint: String::new(), options, child: None };
        lc.spawn();
        lc
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn spawn(&mut self) {
        let endpoint_file = self.state_dir().join("endpoint");
        // A restart listens where the first start did: its clients (and its guests) keep their URLs.
        let listen = self.endpoint.strip_prefix("http://").unwrap_or("127.0.0.1:0").to_string();
        let listen_of = |file: &str| std::fs::read_to_string(self.state_dir().join(file)).ok().and_then(|u| u.trim().strip_prefix("http://").map(str::to_string)).unwrap_or_else(|| "127.0.0.1:0".into());
        let oss_listen = listen_of("oss-endpoint");
        let (vpc_listen, nas_listen) = (listen_of("vpc-endpoint"), listen_of("nas-endpoint"));
        let _ = std::fs::remove_file(&endpoint_file);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("localcloud.log")).unwrap();
        let mut cmd = Command::new(bin("berth-localcloud"));
        cmd.arg("serve")
            .arg("--listen").arg(&listen)
            .arg("--oss-listen").arg(&oss_listen)
            .arg("--state-dir").arg(self.state_dir())
            .arg("--credentials").arg(self.dir.path().join("credentials.json"))
            .arg("--netns-prefix").arg(&self.prefix)
            .args(&self.options.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if self.options.no_dataplane {
            cmd.arg("--no-dataplane");
        }
        if self.options.products_apart {
            cmd.arg("--vpc-listen").arg(&vpc_listen).arg("--nas-listen").arg(&nas_listen);
        }
        if let Some(image) = &self.options.image {
            cmd.arg("--image").arg(image);
        }
        self.child = Some(cmd.spawn().expect("start berth-localcloud"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = std::fs::read_to_string(&endpoint_file)
                && !s.trim().is_empty()
            {
                self.endpoint = s.trim().to_string();
                let read = |file: &str| std::fs::read_to_string(self.state_dir().join(file)).map_or_else(|_| self.endpoint.clone(), |s| s.trim().to_string());
                (self.vpc_endpoint, self.nas_endpoint) = (read("vpc-endpoint"), read("nas-endpoint"));
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("berth-localcloud exited with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "berth-localcloud did not write its endpoint in 30 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("localcloud.log")).unwrap_or_default()
    }

    /// Kills the process (SIGKILL: no chance to tidy up) and starts it again on the same state.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn client(&self) -> HttpCloud {
        self.client_with(|_| {})
    }

    pub fn client_with(&self, tweak: impl FnOnce(&mut ClientConfig)) -> HttpCloud {
        let mut cfg = ClientConfig::new(&self.endpoint, REGION, self.credentials.clone()).with_product_endpoints(&self.vpc_endpoint, &self.nas_endpoint);
        tweak(&mut cfg);
        HttpCloud::new(cfg).expect("client")
    }

    /// Sets the fault-injection knobs (a JSON object of the admin API).
    pub async fn set_faults(&self, faults: serde_json::Value) {
        let resp = reqwest::Client::new()
            .put(format!("{}/_localcloud/faults", self.endpoint))
            .header("X-Localcloud-Admin", &self.credentials.access_key_secret)
            .json(&faults)
            .send()
            .await
            .expect("faults request");
        assert!(resp.status().is_success(), "setting faults failed: {}", resp.text().await.unwrap_or_default());
    }

    /// The path of an instance's network namespace.
    pub fn instance_netns(&self, instance_id: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}-{instance_id}", self.prefix))
    }
}

impl Drop for LocalCloud {
    fn drop(&mut self) {
        self.kill();
        // Stop the instances' guests and remove every namespace, veth, loop device and link the planes made.
        let _ = Command::new(bin("berth-localcloud"))
            .arg("down")
            .arg("--state-dir").arg(self.state_dir())
            .arg("--netns-prefix").arg(&self.prefix)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs a command inside a network namespace and returns whether it succeeded, with its output.
pub fn in_netns(netns: &Path, argv: &[&str]) -> (bool, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(argv)
        .output()
        .expect("nsenter");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A VPC with one vSwitch in zone `local-1a` and one security group, made through the API.
/// Accepts (and drops) TCP connections on `port` inside a namespace, on a thread of its own.
pub fn tcp_listen(netns: &Path, port: u16) {
    let ns = berth_nodenet::Netns::open(netns).unwrap();
    let listener = ns.run_in(move || std::net::TcpListener::bind(("0.0.0.0", port))).unwrap().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
}

/// Whether a TCP connection from a namespace succeeds within two tries of two seconds.
pub fn tcp_connects(netns: &Path, to: std::net::Ipv4Addr, port: u16) -> bool {
    let ns = berth_nodenet::Netns::open(netns).unwrap();
    ns.run_in(move || (0..2).any(|_| std::net::TcpStream::connect_timeout(&(to, port).into(), Duration::from_secs(2)).is_ok())).unwrap()
}

/// The packets a named nftables counter in a namespace has counted (summed over tables).
pub fn nft_counter(netns: &Path, name: &str) -> u64 {
    let (ok, out) = in_netns(netns, &["nft", "-j", "list", "counters"]);
    assert!(ok, "nft list counters: {out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    doc["nftables"].as_array().unwrap().iter().filter_map(|o| o.get("counter")).filter(|c| c["name"] == name).map(|c| c["packets"].as_u64().unwrap_or(0)).sum()
}

#[derive(Debug, Clone)]
pub struct SampleNet {
    pub vpc: String,
    pub vsw: String,
    pub sg: String,
}

impl SampleNet {
    pub async fn create(cloud: &HttpCloud, vpc_cidr: &str, vswitch_cidr: &str) -> SampleNet {
        use berth_cloud::Cloud as _;
        use berth_cloud::api::CreateVSwitchRequest;
        let vpc = cloud.create_vpc(vpc_cidr, "test", false, None).await.expect("CreateVpc");
        let vsw = cloud
            .create_vswitch(&CreateVSwitchRequest { vpc_id: vpc.clone(), zone_id: "local-1a".into(), cidr_block: vswitch_cidr.into(), name: "a".into(), ..Default::default() })
            .await
            .expect("CreateVSwitch");
        let sg = cloud.create_security_group(&vpc, "test", None).await.expect("CreateSecurityGroup");
        SampleNet { vpc, vsw, sg }
    }

    /// A dual-stack VPC and vSwitch (the VPC's IPv6 block, the vSwitch its /64 number 1).
    pub async fn create_dual(cloud: &HttpCloud, vpc_cidr: &str, vswitch_cidr: &str) -> SampleNet {
        use berth_cloud::Cloud as _;
        use berth_cloud::api::CreateVSwitchRequest;
        let vpc = cloud.create_vpc(vpc_cidr, "test", true, None).await.expect("CreateVpc");
        let vsw = cloud
            .create_vswitch(&CreateVSwitchRequest { vpc_id: vpc.clone(), zone_id: "local-1a".into(), cidr_block: vswitch_cidr.into(), ipv6_block_index: Some(1), name: "a".into(), ..Default::default() })
            .await
            .expect("CreateVSwitch");
        let sg = cloud.create_security_group(&vpc, "test", None).await.expect("CreateSecurityGroup");
        SampleNet { vpc, vsw, sg }
    }

    /// Lets every protocol in from `cidr` through the security group (pods talk across nodes).
    pub async fn open_to(&self, cloud: &HttpCloud, cidr: &str) {
        use berth_cloud::Cloud as _;
        use berth_cloud::model::{Direction, IpProtocol, Policy, SecurityGroupRule};
        let rule = SecurityGroupRule { direction: Direction::Ingress, protocol: IpProtocol::All, ports: None, peer_cidr: cidr.parse().expect("a CIDR"), policy: Policy::Accept, priority: 1 };
        cloud.authorize_security_group(&self.sg, &rule).await.expect("AuthorizeSecurityGroup");
    }

    /// Runs one instance of `instance_type` in the vSwitch with `security_group` and waits until it runs.
    pub async fn run(&self, cloud: &HttpCloud, instance_type: &str, security_group: &str) -> String {
        use berth_cloud::Cloud as _;
        use berth_cloud::api::RunInstancesRequest;
        let ids = cloud
            .run_instances(&RunInstancesRequest {
                instance_type: instance_type.into(),
                vswitch_id: self.vsw.clone(),
                security_group_ids: vec![security_group.into()],
                amount: 1,
                name: instance_type.into(),
                image: Some(berth_cloud::api::BootImage::Id("berth-node".into())),
                ..Default::default()
            })
            .await
            .expect("RunInstances");
        assert_eq!(ids.len(), 1);
        berth_cloud::wait::instance_status(cloud, &ids[0], berth_cloud::model::InstanceStatus::Running, Duration::from_secs(30)).await.expect("instance runs");
        ids[0].clone()
    }
}
