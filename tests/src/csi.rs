//! A `berth-csi` process serving one node (its agent beside it), with its own socket and state;
//! killed when dropped, its mounts (OSS FUSE mounts included) removed. [`MountGuard`] removes the
//! mounts a test made under a directory, even when it fails. [`OneNodeCsi`] is the set-up of a
//! one-node test: the cluster, a pods directory, its mount guard and the node's clients.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_proto::csi::v1 as csi;
use tonic::transport::Channel;

use crate::agent::{AgentProcess, unix_channel};
use crate::{LocalCloud, bin};

/// Unmounts (lazily, deepest first) every mount under `dir` when dropped.
pub struct MountGuard(pub PathBuf);

/// Mount points under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// How many mounts are stacked at exactly `path`.
pub fn mount_count(path: &Path) -> usize {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| Path::new(p) == path).count()
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        for _ in 0..3 {
            let left = mounts_under(&self.0);
            if left.is_empty() {
                return;
            }
            for m in left {
                let _ = Command::new("umount").arg("-l").arg(&m).stderr(Stdio::null()).status();
            }
        }
    }
}

pub struct CsiProcess {
    pub dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl CsiProcess {
    /// Starts a driver for the node of `agent`; `agents_dir` holds `<instance>.sock` links to every agent.
    pub fn start(lc: &LocalCloud, agent: &AgentProcess, agents_dir: &Path) -> CsiProcess {
        let dir = tempfile::Builder::new().prefix("berth-csi-").tempdir().expect("tempdir");
        std::fs::write(dir.path().join("csi.toml"), "").unwrap();
        let oss = std::fs::read_to_string(lc.state_dir().join("oss-endpoint")).unwrap_or_default();
        let args: Vec<String> = vec![
            "--config".into(),
            dir.path().join("csi.toml").display().to_string(),
            "--endpoint".into(),
            format!("unix://{}", dir.path().join("csi.sock").display()),
            "--state-dir".into(),
            dir.path().join("state").display().to_string(),
            "--cloud-endpoint".into(),
            lc.endpoint.clone(),
            "--vpc-endpoint".into(),
            lc.vpc_endpoint.clone(),
            "--nas-endpoint".into(),
            lc.nas_endpoint.clone(),
            "--credentials".into(),
            lc.dir.path().join("credentials.json").display().to_string(),
            "--agent-socket".into(),
            agent.socket().display().to_string(),
            "--agent-sockets-dir".into(),
            agents_dir.display().to_string(),
            "--nas-local-export-root".into(),
            lc.state_dir().join("nas").display().to_string(),
            "--oss-endpoint".into(),
            oss.trim().to_string(),
            "--oss-health-secs".into(),
            "1".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ];
        let mut p = CsiProcess { dir, args, child: None };
        p.spawn();
        p
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("csi.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("csi.log")).unwrap_or_default()
    }

    /// `/metrics` of the driver (its port is written beside the socket, as `csi.metrics`).
    pub async fn metrics(&self) -> String {
        let address = std::fs::read_to_string(self.dir.path().join("csi.metrics")).expect("the driver wrote its metrics address");
        reqwest::get(format!("http://{address}/metrics")).await.expect("GET /metrics").text().await.expect("text")
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("csi.log")).unwrap();
        let child = Command::new(bin("berth-csi")).args(&self.args).env("BERTH_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("start berth-csi");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket().exists() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("berth-csi exited with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "berth-csi did not bind its socket in 30 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to tidy up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub async fn channel(&self) -> Channel {
        unix_channel(&self.socket()).await
    }

    pub async fn identity(&self) -> csi::identity_client::IdentityClient<Channel> {
        csi::identity_client::IdentityClient::new(self.channel().await)
    }

    pub async fn controller(&self) -> csi::controller_client::ControllerClient<Channel> {
        csi::controller_client::ControllerClient::new(self.channel().await)
    }

    pub async fn node(&self) -> csi::node_client::NodeClient<Channel> {
        csi::node_client::NodeClient::new(self.channel().await)
    }
}

impl Drop for CsiProcess {
    fn drop(&mut self) {
        self.kill9();
        // OSS FUSE mounts live in the driver's state directory and outlive it by design.
        drop(MountGuard(self.dir.path().to_path_buf()));
    }
}

/// A mount-mode capability with `fs_type`.
pub fn mount_cap(fs_type: &str, mode: csi::volume_capability::access_mode::Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(csi::volume_capability::MountVolume { fs_type: fs_type.into(), ..Default::default() })),
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
    }
}

/// A block-mode capability.
pub fn block_cap(mode: csi::volume_capability::access_mode::Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Block(Default::default())),
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
    }
}

/// A local cloud node for CSI tests: a running instance with its agent (no warm IPs: the pool is
/// not what these tests are about).
pub fn agent_for(lc: &LocalCloud, instance_id: &str, extra: &[&str]) -> AgentProcess {
    let mut args = vec!["--min-idle-ips", "0", "--max-idle-ips", "0"];
    args.extend_from_slice(extra);
    AgentProcess::start(lc, instance_id, &args)
}

/// Links `<dir>/<instance>.sock` to the agent's socket, as the controller expects to find it.
pub fn link_agent(dir: &Path, agent: &AgentProcess) {
    std::fs::create_dir_all(dir).unwrap();
    let link = dir.join(format!("{}.sock", agent.instance_id));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(agent.socket(), link).unwrap();
}

/// One node of a CSI test cluster: an instance, its agent, and its driver.
pub struct CsiNode {
    pub driver: CsiProcess,
    pub agent: AgentProcess,
    pub instance_id: String,
}

/// A local cloud with `n` instances, each with an agent and a driver; the controller of every
/// driver reaches every agent. Dropped in order: drivers (and their mounts), agents, the cloud.
pub struct CsiCluster {
    pub nodes: Vec<CsiNode>,
    pub agents_dir: tempfile::TempDir,
    pub cloud: berth_cloud::HttpCloud,
    pub lc: LocalCloud,
}

impl CsiCluster {
    pub async fn start(n: usize, vpc_cidr: &str, vswitch_cidr: &str) -> CsiCluster {
        Self::start_with(crate::LocalCloudOptions::default(), n, vpc_cidr, vswitch_cidr).await
    }

    pub async fn start_with(options: crate::LocalCloudOptions, n: usize, vpc_cidr: &str, vswitch_cidr: &str) -> CsiCluster {
        let lc = LocalCloud::start(options);
        let cloud = lc.client();
        let net = crate::SampleNet::create(&cloud, vpc_cidr, vswitch_cidr).await;
        let agents_dir = tempfile::Builder::new().prefix("berth-agents-").tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for _ in 0..n {
            let instance_id = net.run(&cloud, "ecs.g7.large", &net.sg).await;
            let agent = agent_for(&lc, &instance_id, &[]);
            link_agent(agents_dir.path(), &agent);
            let driver = CsiProcess::start(&lc, &agent, agents_dir.path());
            nodes.push(CsiNode { driver, agent, instance_id });
        }
        CsiCluster { nodes, agents_dir, cloud, lc }
    }

    /// Makes an NFS file system in zone local-1a (its export directory appears on the local cloud).
    pub async fn nas(&self) -> String {
        use berth_cloud::Cloud as _;
        let vpc = self.cloud.describe_vpcs(None).await.unwrap()[0].clone();
        let vsw = self.cloud.describe_vswitches(Some(&vpc.id), None).await.unwrap()[0].clone();
        let fs = self.cloud.create_nas_file_system("local-1a", &vpc.id, &vsw.id, None).await.expect("CreateFileSystem");
        let export = self.lc.state_dir().join("nas").join(&fs.id);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !export.is_dir() {
            assert!(Instant::now() < deadline, "the NAS export {} did not appear", export.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        fs.id
    }

    /// Makes an OSS bucket (a directory of the local cloud's S3 endpoint).
    pub fn bucket(&self, name: &str) -> PathBuf {
        let dir = self.lc.state_dir().join("oss").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

pub type Ctl = csi::controller_client::ControllerClient<Channel>;
pub type Ns = csi::node_client::NodeClient<Channel>;

/// A one-node CSI test: the cluster, a pods directory for staging and target paths (every mount
/// under it removed when dropped, before the cluster goes), and the node's Controller and Node
/// clients. Fields drop in order: the guard, the directory, then the cluster.
pub struct OneNodeCsi {
    pub mounts: MountGuard,
    pub pods: tempfile::TempDir,
    pub ctl: Ctl,
    pub ns: Ns,
    /// The node's ID: its instance.
    pub node_id: String,
    pub cluster: CsiCluster,
}

impl OneNodeCsi {
    pub async fn start(vpc_cidr: &str, vswitch_cidr: &str) -> OneNodeCsi {
        Self::start_with(crate::LocalCloudOptions::default(), vpc_cidr, vswitch_cidr).await
    }

    pub async fn start_with(options: crate::LocalCloudOptions, vpc_cidr: &str, vswitch_cidr: &str) -> OneNodeCsi {
        let cluster = CsiCluster::start_with(options, 1, vpc_cidr, vswitch_cidr).await;
        let pods = tempfile::Builder::new().prefix("berth-pods-").tempdir().expect("tempdir");
        let mounts = MountGuard(pods.path().to_path_buf());
        let node = &cluster.nodes[0];
        let (ctl, ns, node_id) = (node.driver.controller().await, node.driver.node().await, node.instance_id.clone());
        OneNodeCsi { mounts, pods, ctl, ns, node_id, cluster }
    }

    /// `rel` under the pods directory.
    pub fn at(&self, rel: &str) -> PathBuf {
        self.pods.path().join(rel)
    }
}

/// ControllerPublish, NodeStage and NodePublish of `volume` on `node_id` at `target`; returns the
/// publish context.
pub async fn mount(ctl: &mut Ctl, ns: &mut Ns, node_id: &str, volume: &str, cap: &csi::VolumeCapability, staging: &Path, target: &Path) -> HashMap<String, String> {
    let ctx = ctl
        .controller_publish_volume(csi::ControllerPublishVolumeRequest { volume_id: volume.into(), node_id: node_id.into(), volume_capability: Some(cap.clone()), ..Default::default() })
        .await
        .expect("ControllerPublishVolume")
        .into_inner()
        .publish_context;
    let stage = csi::NodeStageVolumeRequest { volume_id: volume.into(), publish_context: ctx.clone(), staging_target_path: staging.display().to_string(), volume_capability: Some(cap.clone()), ..Default::default() };
    ns.node_stage_volume(stage).await.expect("NodeStageVolume");
    let publish = csi::NodePublishVolumeRequest {
        volume_id: volume.into(),
        publish_context: ctx.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    ns.node_publish_volume(publish).await.expect("NodePublishVolume");
    ctx
}

/// NodeUnpublish, NodeUnstage and ControllerUnpublish of `volume`: the reverse of [`mount`].
pub async fn unmount(ctl: &mut Ctl, ns: &mut Ns, node_id: &str, volume: &str, staging: &Path, target: &Path) {
    ns.node_unpublish_volume(csi::NodeUnpublishVolumeRequest { volume_id: volume.into(), target_path: target.display().to_string() }).await.expect("NodeUnpublishVolume");
    ns.node_unstage_volume(csi::NodeUnstageVolumeRequest { volume_id: volume.into(), staging_target_path: staging.display().to_string() }).await.expect("NodeUnstageVolume");
    ctl.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest { volume_id: volume.into(), node_id: node_id.into(), ..Default::default() }).await.expect("ControllerUnpublishVolume");
}
