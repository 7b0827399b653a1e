//! The pod runner with volumes: a pod submitted to the scheduler runs on the reporting node with a
//! disk, a NAS and an OSS volume made through the node's CSI driver, its command writes into each
//! (in its working directory), and deleting it leaves no mount, attachment or namespace and deletes
//! its ephemeral volumes; a killed agent adopts its running pod on restart (same pid, no second
//! CNI ADD, no second mount); a pod whose volume cannot be made fails naming it and leaves nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_cloud::Cloud as _;
use berth_proto::agent::v1 as agent_pb;
use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use berth_proto::csi::v1 as csi;
use berth_tests::agent::AgentProcess;
use berth_tests::csi::{CsiProcess, MountGuard, link_agent, mount_cap, mount_count, mounts_under};
use berth_tests::scheduler::{RunnerLeftovers, Scheduler, netns_pids, runner_netns, wait_pod, wait_report};
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, is_root};
use tonic::transport::Channel;

/// A node with an agent running pods and its CSI driver, reporting to a scheduler. Dropped in
/// order: the pods' commands and namespaces, the mounts under the agent's state, the driver (and
/// its FUSE mounts), the agent, the scheduler, the local cloud (its disks' loop devices).
struct RunnerNode {
    _leftovers: RunnerLeftovers,
    _mounts: MountGuard,
    csi: CsiProcess,
    agent: AgentProcess,
    _agents_dir: tempfile::TempDir,
    _csi_link: tempfile::TempDir,
    scheduler: Scheduler,
    net: SampleNet,
    node: String,
    prefix: String,
    cloud: berth_cloud::HttpCloud,
    lc: LocalCloud,
}

impl RunnerNode {
    async fn start(vpc_cidr: &str, vswitch_cidr: &str) -> RunnerNode {
        Self::start_with(vpc_cidr, vswitch_cidr, Scheduler::start(&[])).await
    }

    /// With a scheduler of the test's own configuration.
    async fn start_with(vpc_cidr: &str, vswitch_cidr: &str, scheduler: Scheduler) -> RunnerNode {
        let lc = LocalCloud::start(LocalCloudOptions::default());
        let cloud = lc.client();
        let net = SampleNet::create(&cloud, vpc_cidr, vswitch_cidr).await;
        let node = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
        let prefix = berth_tests::unique("brv");
        let leftovers = RunnerLeftovers(vec![prefix.clone()]);
        // The agent is told the driver's socket before the driver (which asks the agent who the
        // node is) starts: a link made once it listens.
        let csi_link = tempfile::Builder::new().prefix("berth-csi-link-").tempdir().unwrap();
        let csi_socket = csi_link.path().join("csi.sock");
        let cni_path = berth_tests::cni::cni_path();
        let args = [
            "--min-idle-ips", "1", "--max-idle-ips", "2", "--scheduler-endpoint", &scheduler.url, "--report-secs", "1", "--pod-runner", "true", "--runner-cni-path", &cni_path, "--runner-netns-prefix", &prefix,
            "--runner-csi-socket", csi_socket.to_str().unwrap(),
        ];
        let agent = AgentProcess::start(&lc, &node, &args);
        let mounts = MountGuard(agent.dir.path().to_path_buf());
        let agents_dir = tempfile::Builder::new().prefix("berth-agents-").tempdir().unwrap();
        link_agent(agents_dir.path(), &agent);
        let csi = CsiProcess::start(&lc, &agent, agents_dir.path());
        std::os::unix::fs::symlink(csi.socket(), &csi_socket).unwrap();
        RunnerNode { _leftovers: leftovers, _mounts: mounts, csi, agent, _agents_dir: agents_dir, _csi_link: csi_link, scheduler, net, node, prefix, cloud, lc }
    }

    async fn client(&self) -> SchedulerClient<Channel> {
        let mut c = self.scheduler.client().await;
        wait_report(&mut c, &self.node, "a report", |r| r.allocatable.is_some()).await;
        c
    }

    /// The runner's own directory in the agent's state.
    fn runner_dir(&self) -> PathBuf {
        self.agent.dir.path().join("state/runner")
    }

    /// Makes a NAS file system; its export appears in the local cloud's state.
    async fn nas(&self) -> (String, PathBuf) {
        let fs = self.cloud.create_nas_file_system("local-1a", &self.net.vpc, &self.net.vsw, None).await.expect("CreateFileSystem");
        let export = self.lc.state_dir().join("nas").join(&fs.id);
        eventually("the NAS export", Duration::from_secs(10), || export.is_dir());
        (fs.id, export)
    }

    fn bucket(&self, name: &str) -> PathBuf {
        let dir = self.lc.state_dir().join("oss").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn attachments(&self) -> Vec<agent_pb::DiskAttachment> {
        self.agent.client().await.list_attachments(agent_pb::ListAttachmentsRequest {}).await.unwrap().into_inner().attachments
    }

    async fn allocations(&self) -> usize {
        self.agent.pool().await["allocations"].as_array().map_or(0, Vec::len)
    }

    /// Waits until the runner left nothing on the node: no namespace, no mount under its
    /// directory, no attached disk, no record.
    async fn wait_nothing_left(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let netns = runner_netns(&self.prefix);
            let mounts = mounts_under(&self.runner_dir());
            let attached = self.attachments().await;
            let records: Vec<_> = std::fs::read_dir(self.runner_dir().join("records")).into_iter().flatten().flatten().map(|e| e.path()).collect();
            if netns.is_empty() && mounts.is_empty() && attached.is_empty() && records.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: namespaces {netns:?}, mounts {mounts:?}, attachments {attached:?}, records {records:?}\n{}", self.agent.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Files named `name` anywhere under `dir`.
fn find_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(find_files(&p, name));
        } else if e.file_name() == name {
            found.push(p);
        }
    }
    found
}

fn volume(name: &str, kind: pb::VolumeKind, mount_path: &str, params: &[(&str, &str)]) -> pb::VolumeSpec {
    pb::VolumeSpec { name: name.into(), kind: kind as i32, mount_path: mount_path.into(), read_only: false, parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
}

fn pod(name: &str, volumes: Vec<pb::VolumeSpec>, script: &str) -> pb::PodSpec {
    pb::PodSpec { namespace: "default".into(), name: name.into(), cpu_millicores: 100, volumes, command: vec!["sh".into(), "-c".into(), script.into()], ..Default::default() }
}

async fn delete(client: &mut SchedulerClient<Channel>, name: &str) {
    client.delete_pod(pb::DeletePodRequest { namespace: "default".into(), name: name.into() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_disk_nas_and_oss_volumes_writes_into_each_and_leaves_nothing_when_deleted() {
    if !is_root() {
        eprintln!("skipped: needs root (namespaces, loop devices, mounts)");
        return;
    }
    let n = RunnerNode::start("10.88.0.0/16", "10.88.1.0/24").await;
    let mut client = n.client().await;
    let (fs_id, export) = n.nas().await;
    let bucket = n.bucket("runner-objects");
    let allocations_before = n.allocations().await;
    // The disk is kept (not ephemeral) so it can be read back after the pod is gone.
    let spec = pod(
        "vols",
        vec![
            volume("data", pb::VolumeKind::Disk, "/data", &[("category", "cloud_essd"), ("size", "1Gi")]),
            volume("shared", pb::VolumeKind::Nas, "/shared", &[("fileSystemId", &fs_id), ("ephemeral", "true")]),
            volume("objects", pb::VolumeKind::Oss, "/objects", &[("bucket", "runner-objects"), ("ephemeral", "true")]),
        ],
        "echo on-disk > data/f.txt && echo on-nas > shared/f.txt && echo on-oss > objects/f.txt && touch written && exec sleep 300",
    );
    client.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.unwrap();
    let st = wait_pod(&mut client, "vols", Duration::from_secs(60), "Running", |s| s.phase == pb::PodPhase::Running as i32).await;
    assert_eq!(st.node, n.node);
    let netns = runner_netns(&n.prefix);
    assert_eq!(netns.len(), 1, "{netns:?}");
    let dir = n.runner_dir().join("pods").join(&netns[0]);
    eventually("the command's writes", Duration::from_secs(20), || dir.join("written").exists());

    // The disk went through the agent's ledger and is attached to this node.
    let attached = n.attachments().await;
    assert_eq!(attached.len(), 1, "{attached:?}");
    let disk_id = attached[0].disk_id.clone();
    let disk = n.cloud.describe_disks(&berth_cloud::api::DiskFilter { ids: vec![disk_id.clone()], ..Default::default() }).await.unwrap();
    assert_eq!(disk[0].instance_id.as_deref(), Some(n.node.as_str()), "attached to this node");
    for v in ["data", "shared", "objects"] {
        assert_eq!(mount_count(&dir.join(v)), 1, "{v} is published once in the pod's directory");
    }
    // The files are on the volumes: in the NAS export and the bucket of the local cloud.
    let on_nas = find_files(&export, "f.txt");
    assert_eq!(on_nas.len(), 1, "{on_nas:?}");
    assert_eq!(std::fs::read_to_string(&on_nas[0]).unwrap(), "on-nas\n");
    eventually("the object in the bucket", Duration::from_secs(10), || find_files(&bucket, "f.txt").len() == 1);
    assert_eq!(std::fs::read_to_string(&find_files(&bucket, "f.txt")[0]).unwrap(), "on-oss\n");

    delete(&mut client, "vols").await;
    n.wait_nothing_left("the deleted pod left something").await;
    assert_eq!(n.allocations().await, allocations_before, "the pod's IP went back");
    assert!(!dir.exists(), "the pod's directory is gone");
    // Ephemeral volumes are deleted; the kept disk is detached, not deleted.
    assert!(find_files(&export, "f.txt").is_empty() && std::fs::read_dir(&export).unwrap().count() == 0, "the NAS volume is deleted");
    eventually("the OSS volume's deletion", Duration::from_secs(10), || find_files(&bucket, "f.txt").is_empty());
    let disk = n.cloud.describe_disks(&berth_cloud::api::DiskFilter { ids: vec![disk_id.clone()], ..Default::default() }).await.unwrap();
    assert_eq!(disk.len(), 1, "the disk without `ephemeral` is kept");
    assert!(disk[0].instance_id.is_none(), "and detached: {:?}", disk[0]);

    // Mounted again by hand, the disk holds what the pod wrote.
    let scratch = tempfile::tempdir().unwrap();
    let _scratch_mounts = MountGuard(scratch.path().to_path_buf());
    let cap = mount_cap("", csi::volume_capability::access_mode::Mode::SingleNodeWriter);
    let (staging, target) = (scratch.path().join("staging"), scratch.path().join("target"));
    let ctx = n.csi.controller().await.controller_publish_volume(csi::ControllerPublishVolumeRequest { volume_id: disk_id.clone(), node_id: n.node.clone(), volume_capability: Some(cap.clone()), ..Default::default() }).await.unwrap().into_inner().publish_context;
    let mut node = n.csi.node().await;
    node.node_stage_volume(csi::NodeStageVolumeRequest { volume_id: disk_id.clone(), publish_context: ctx.clone(), staging_target_path: staging.display().to_string(), volume_capability: Some(cap.clone()), ..Default::default() }).await.unwrap();
    node.node_publish_volume(csi::NodePublishVolumeRequest { volume_id: disk_id.clone(), publish_context: ctx, staging_target_path: staging.display().to_string(), target_path: target.display().to_string(), volume_capability: Some(cap), ..Default::default() }).await.unwrap();
    assert_eq!(std::fs::read_to_string(target.join("f.txt")).unwrap(), "on-disk\n", "the file is on the disk");
    node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest { volume_id: disk_id.clone(), target_path: target.display().to_string() }).await.unwrap();
    node.node_unstage_volume(csi::NodeUnstageVolumeRequest { volume_id: disk_id.clone(), staging_target_path: staging.display().to_string() }).await.unwrap();
    n.csi.controller().await.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest { volume_id: disk_id.clone(), node_id: n.node.clone(), ..Default::default() }).await.unwrap();
    n.csi.controller().await.delete_volume(csi::DeleteVolumeRequest { volume_id: disk_id, ..Default::default() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_adopts_its_running_pod_on_restart() {
    if !is_root() {
        eprintln!("skipped: needs root (namespaces, loop devices, mounts)");
        return;
    }
    let mut n = RunnerNode::start("10.87.0.0/16", "10.87.1.0/24").await;
    let mut client = n.client().await;
    let spec = pod("stays", vec![volume("data", pb::VolumeKind::Disk, "/data", &[("ephemeral", "true")])], "echo $$ > data/pid && exec sleep 300");
    client.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.unwrap();
    let before = wait_pod(&mut client, "stays", Duration::from_secs(60), "Running", |s| s.phase == pb::PodPhase::Running as i32).await;
    let netns = runner_netns(&n.prefix);
    assert_eq!(netns.len(), 1, "{netns:?}");
    let dir = n.runner_dir().join("pods").join(&netns[0]);
    eventually("the pid file", Duration::from_secs(20), || std::fs::read_to_string(dir.join("data/pid")).is_ok_and(|s| s.ends_with('\n')));
    let pid: i32 = std::fs::read_to_string(dir.join("data/pid")).unwrap().trim().parse().unwrap();
    assert_eq!(netns_pids(&netns[0]), vec![pid], "the command runs in the pod's namespace");
    let allocations = n.allocations().await;
    let disk_id = n.attachments().await.first().expect("the disk is attached").disk_id.clone();

    n.agent.kill9();
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the command outlives its agent");
    n.agent.restart();
    // A few reports later: the same pod, the same process, the same IP, nothing made twice.
    let mut client = n.scheduler.client().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = wait_pod(&mut client, "stays", Duration::from_secs(20), "Running", |s| s.phase == pb::PodPhase::Running as i32).await;
    assert_eq!(after.pod_ip, before.pod_ip);
    assert_eq!(netns_pids(&netns[0]), vec![pid], "the command keeps its pid");
    assert_eq!(n.allocations().await, allocations, "no second CNI ADD");
    assert_eq!(mount_count(&dir.join("data")), 1, "no second mount");
    assert_eq!(n.attachments().await.len(), 1);
    assert!(n.agent.log().contains("adopted a pod"), "{}", n.agent.log());

    // The adopted pod (its command no child of this agent) is still removed cleanly.
    delete(&mut client, "stays").await;
    n.wait_nothing_left("the adopted pod's removal left something").await;
    eventually("the command's end", Duration::from_secs(10), || !Path::new(&format!("/proc/{pid}/stat")).exists() || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")));
    let disks = n.cloud.describe_disks(&berth_cloud::api::DiskFilter { ids: vec![disk_id.clone()], ..Default::default() }).await.unwrap();
    assert!(disks.is_empty(), "the ephemeral disk {disk_id} is deleted: {disks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_volume_cannot_be_set_up_waits_with_its_reason_and_starts_once_the_cause_is_gone() {
    if !is_root() {
        eprintln!("skipped: needs root (namespaces, loop devices, mounts)");
        return;
    }
    let n = RunnerNode::start("10.86.0.0/16", "10.86.1.0/24").await;
    let mut client = n.client().await;
    let (fs_id, export) = n.nas().await;
    let allocations = n.allocations().await;
    // The NAS volume is made first, then the second one cannot be published: its directory does
    // not exist yet. The first is undone too, and the pod waits.
    let later = format!("nas:{fs_id}::/later");
    let spec = pod(
        "waits",
        vec![volume("scratch", pb::VolumeKind::Nas, "/scratch", &[("fileSystemId", &fs_id), ("ephemeral", "true")]), volume("data", pb::VolumeKind::Nas, "/data", &[("volumeId", &later)])],
        "echo started > data/f.txt && exec sleep 300",
    );
    client.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.unwrap();
    let st = wait_pod(&mut client, "waits", Duration::from_secs(60), "Pending with a reason", |s| s.phase == pb::PodPhase::Pending as i32 && !s.message.is_empty()).await;
    for word in ["\"data\"", "ControllerPublishVolume", "does not exist", "next try at 20"] {
        assert!(st.message.contains(word), "the message names {word}: {}", st.message);
    }
    assert!(runner_netns(&n.prefix).is_empty(), "no namespace");
    assert!(mounts_under(&n.runner_dir()).is_empty(), "no mount");
    assert_eq!(n.allocations().await, allocations, "no IP taken");
    assert_eq!(std::fs::read_dir(&export).unwrap().count(), 0, "the NAS volume made for it is deleted");
    // Retried with back-off (1 s, 2 s, …), each try reported.
    eventually("a second try", Duration::from_secs(10), || n.agent.log().matches("pod failed to start").count() >= 2);
    let again = wait_pod(&mut client, "waits", Duration::from_secs(10), "Pending, tried again", |s| s.message.contains("failed 2 time(s)")).await;
    assert_eq!(again.phase, pb::PodPhase::Pending as i32);
    // The cause goes: the pod starts by itself.
    std::fs::create_dir_all(export.join("later")).unwrap();
    wait_pod(&mut client, "waits", Duration::from_secs(30), "Running", |s| s.phase == pb::PodPhase::Running as i32).await;
    eventually("the command's write", Duration::from_secs(10), || export.join("later/f.txt").exists());
    delete(&mut client, "waits").await;
    n.wait_nothing_left("the pod's removal left something").await;
}

/// What a pod uses is measured on its node: its CPU from a cgroup of its own (what it forks
/// included), its traffic on its interface; both in the agent's metrics. Removing the pod kills
/// what it left running outside its process group and removes its cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_cpu_and_traffic_are_measured_and_its_cgroup_goes_with_it() {
    if !is_root() {
        eprintln!("skipped: needs root (namespaces, cgroups)");
        return;
    }
    let n = RunnerNode::start("10.89.0.0/16", "10.89.1.0/24").await;
    let mut client = n.client().await;
    // A session of its own escapes the pod's process group, not its cgroup.
    let spec = pod("busy", vec![], "setsid sleep 300 & echo $! > escaped; while :; do :; done");
    client.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.unwrap();
    let running = wait_pod(&mut client, "busy", Duration::from_secs(60), "Running", |s| s.phase == pb::PodPhase::Running as i32).await;
    let netns = runner_netns(&n.prefix);
    assert_eq!(netns.len(), 1, "{netns:?}");
    let dir = n.runner_dir().join("pods").join(&netns[0]);
    eventually("the escaped process's pid", Duration::from_secs(20), || std::fs::read_to_string(dir.join("escaped")).is_ok_and(|s| s.ends_with('\n')));
    let escaped: i32 = std::fs::read_to_string(dir.join("escaped")).unwrap().trim().parse().unwrap();
    // Its cgroup v2 path, as the kernel says, is the pod's under the agent's root.
    let member = std::fs::read_to_string(format!("/proc/{escaped}/cgroup")).unwrap();
    let relative = member.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 line").to_string();
    let mount = berth_nodenet::cgroup::cgroup2_mount().expect("a cgroup2 mount");
    let cgroup = mount.join(relative.trim_start_matches('/'));
    assert_eq!(cgroup, n.agent.pod_cgroups.clone().expect("the agent's pod cgroups").join(&netns[0]), "the escaped process is in the pod's cgroup");
    assert!(cgroup.is_dir(), "{}", cgroup.display());

    // Traffic into the pod from its node.
    let ping = std::process::Command::new("ip").args(["netns", "exec"]).arg(n.agent.netns.file_name().unwrap()).args(["ping", "-c", "5", "-i", "0.2", "-s", "1000", &running.pod_ip]).output().unwrap();
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
    let value = |metrics: &str, series: &str| metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok());
    let started = Instant::now();
    loop {
        let m = n.agent.metrics().await;
        let cpu = value(&m, "berth_agent_pod_cpu_seconds_total{pod=\"default/busy\"}").unwrap_or(0.0);
        let rx = value(&m, "berth_agent_pod_network_bytes_total{pod=\"default/busy\",direction=\"receive\"}").unwrap_or(0.0);
        let tx = value(&m, "berth_agent_pod_network_packets_total{pod=\"default/busy\",direction=\"transmit\"}").unwrap_or(0.0);
        // A core's busy loop for a few seconds; five 1 KB pings in, five replies out.
        if cpu >= 1.0 && rx >= 5000.0 && tx >= 5.0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "cpu {cpu} s, {rx} bytes in, {tx} packets out after 30 s:\n{}", m.lines().filter(|l| l.contains("pod_")).collect::<Vec<_>>().join("\n"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The node's report carries the rates to the scheduler, which serves them with the pod.
    let measured = wait_pod(&mut client, "busy", Duration::from_secs(30), "its CPU at the scheduler", |s| s.usage.is_some_and(|u| u.cpu_millicores >= 300)).await;
    assert!(measured.usage.unwrap().window_ms >= 500, "{:?}", measured.usage);

    delete(&mut client, "busy").await;
    n.wait_nothing_left("the busy pod's removal left something").await;
    eventually("the escaped process's end", Duration::from_secs(10), || !Path::new(&format!("/proc/{escaped}/stat")).exists() || std::fs::read_to_string(format!("/proc/{escaped}/stat")).is_ok_and(|s| s.contains(") Z ")));
    assert!(!cgroup.exists(), "{} is removed with the pod", cgroup.display());
}

/// A child process killed when dropped (a test's load generator).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn workload_replicas(client: &mut SchedulerClient<Channel>) -> (u32, u32) {
    let st = client.get_workload(pb::GetWorkloadRequest { namespace: "default".into(), name: "web".into() }).await.unwrap().into_inner();
    (st.workload.unwrap().replicas, st.running)
}

/// Real traffic into a workload's pod (1.4 KB pings, 100 a second, from its node) is measured by
/// the node's agent and raises the replicas through the HPA (receive bytes per pod against 20 KB/s)
/// within its interval and two reports; the new pods run. When the traffic stops, the replicas fall
/// back once the 4 s stabilisation window has passed. Then a cron job two seconds ahead raises the
/// HPA's minimum, and with it the replicas, on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_into_a_workloads_pods_scales_it_out_and_back_and_a_cron_job_raises_it_on_time() {
    if !is_root() {
        eprintln!("skipped: needs root (namespaces, cgroups)");
        return;
    }
    let scheduler = Scheduler::start_on(berth_tests::scheduler::free_port(), "[autoscaler]\nenabled = false\n[placement]\ntick_ms = 100\n[hpa]\ninterval_ms = 1000\n", &[]);
    let n = RunnerNode::start_with("10.89.0.0/16", "10.89.1.0/24", scheduler).await;
    let mut client = n.client().await;
    let labels: std::collections::HashMap<String, String> = [("app".to_string(), "web".to_string())].into();
    let template = pb::PodSpec { namespace: String::new(), name: String::new(), labels: labels.clone(), ..pod("", vec![], "exec sleep 600") };
    let w = pb::Workload { namespace: "default".into(), name: "web".into(), replicas: 1, selector: Some(pb::LabelSelector { match_labels: labels, ..Default::default() }), template: Some(template), ..Default::default() };
    client.apply_workload(pb::ApplyWorkloadRequest { workload: Some(w) }).await.unwrap();
    let t = Instant::now();
    while workload_replicas(&mut client).await.1 < 1 {
        assert!(t.elapsed() < Duration::from_secs(60), "the workload's pod never ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = wait_pod(&mut client, "web-1-0", Duration::from_secs(60), "Running", |s| s.phase == pb::PodPhase::Running as i32).await;
    let hpa = pb::HorizontalPodAutoscaler {
        namespace: "default".into(),
        name: "web".into(),
        target: "web".into(),
        min_replicas: 1,
        max_replicas: 3,
        metrics: vec![pb::HpaMetric { source: pb::MetricSource::PodReceiveBytes as i32, external_name: String::new(), target: Some(pb::MetricTarget { average_value_milli: 20_000_000, ..Default::default() }) }],
        scale_up: None,
        scale_down: Some(pb::ScalingRules { stabilization_window_secs: Some(4), ..Default::default() }),
        prediction: None,
    };
    client.apply_horizontal_pod_autoscaler(pb::ApplyHorizontalPodAutoscalerRequest { hpa: Some(hpa) }).await.unwrap();
    // The idle pod is measured (0 B/s, within the target): 1 stays.
    let get = pb::GetWorkloadRequest { namespace: "default".into(), name: "web".into() };
    let t = Instant::now();
    while client.get_horizontal_pod_autoscaler(get.clone()).await.unwrap().into_inner().current_metrics.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(20), "the HPA never read the pod's traffic");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(workload_replicas(&mut client).await.0, 1);

    let ping = std::process::Command::new("ip").args(["netns", "exec"]).arg(n.agent.netns.file_name().unwrap()).args(["ping", "-q", "-i", "0.01", "-s", "1400", &first.pod_ip]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let ping = KillOnDrop(ping);
    let step = Instant::now();
    loop {
        let (replicas, _) = workload_replicas(&mut client).await;
        if replicas == 3 {
            break;
        }
        // The HPA's interval, and two of the agent's 1 s reports for a rate to show.
        assert!(step.elapsed() < Duration::from_secs(5), "replicas {replicas} {:?} after the traffic step", step.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = client.get_horizontal_pod_autoscaler(get.clone()).await.unwrap().into_inner();
    assert!(st.current_metrics[0].current_milli > 20_000_000, "{st:?}");
    let t = Instant::now();
    while workload_replicas(&mut client).await.1 < 3 {
        assert!(t.elapsed() < Duration::from_secs(60), "the new replicas never ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(ping);
    let quiet = Instant::now();
    loop {
        let (replicas, _) = workload_replicas(&mut client).await;
        if replicas == 1 {
            break;
        }
        assert!(quiet.elapsed() < Duration::from_secs(15), "replicas {replicas} {:?} after the traffic stopped", quiet.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(quiet.elapsed() >= Duration::from_secs(3), "scaled in after {:?}, within the 4 s window\n{}", quiet.elapsed(), n.scheduler.log());

    // A cron job two seconds ahead (UTC) sets the HPA's minimum to 2; the HPA applies it at once.
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 2;
    let day = at % 86_400;
    let cron = pb::CronHorizontalPodAutoscaler { namespace: "default".into(), name: "web".into(), target: "web".into(), jobs: vec![pb::CronJob { name: "up".into(), schedule: format!("{} {} {} * * *", day % 60, day / 60 % 60, day / 3600), target_size: 2, run_once: true }], ..Default::default() };
    client.apply_cron_horizontal_pod_autoscaler(pb::ApplyCronHorizontalPodAutoscalerRequest { cron: Some(cron) }).await.unwrap();
    while workload_replicas(&mut client).await.0 != 2 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        assert!(now < Duration::from_secs(at) + Duration::from_millis(800), "replicas not 2 at {now:?} (the job was for {at} s)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    assert!(now >= Duration::from_secs(at), "raised at {now:?}, before {at} s");

    client.delete_workload(get).await.unwrap();
    n.wait_nothing_left("the workload's removal left something").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_disk_restored_from_a_snapshot_holds_the_data_of_the_snapshot() {
    if !is_root() {
        eprintln!("skipped: needs root (namespaces, loop devices, mounts)");
        return;
    }
    let n = RunnerNode::start("10.89.0.0/16", "10.89.1.0/24").await;
    let mut client = n.client().await;
    // A pod writes, syncs and waits; its disk is snapshotted; it then writes more.
    let spec = pod(
        "writer",
        vec![volume("data", pb::VolumeKind::Disk, "/data", &[("size", "1Gi"), ("ephemeral", "true")])],
        "echo before > data/f.txt && sync && touch written && while [ ! -e go-on ]; do sleep 0.1; done && echo after > data/f.txt && sync && touch rewritten && exec sleep 300",
    );
    client.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.unwrap();
    wait_pod(&mut client, "writer", Duration::from_secs(60), "Running", |s| s.phase == pb::PodPhase::Running as i32).await;
    let netns = runner_netns(&n.prefix);
    let writer_dir = n.runner_dir().join("pods").join(&netns[0]);
    eventually("the first write", Duration::from_secs(20), || writer_dir.join("written").exists());
    let disk_id = n.attachments().await[0].disk_id.clone();
    let snap = n.cloud.create_snapshot(&berth_cloud::api::CreateSnapshotRequest { disk_id, name: "runner-snap".into(), ..Default::default() }).await.unwrap();
    std::fs::write(writer_dir.join("go-on"), b"").unwrap();
    eventually("the second write", Duration::from_secs(20), || writer_dir.join("rewritten").exists());
    let ready = berth_cloud::wait::snapshot_settled(&n.cloud, &snap, Duration::from_secs(20)).await.unwrap().unwrap();
    assert_eq!(ready.status, berth_cloud::model::SnapshotStatus::Accomplished);

    // A new pod's disk made from the snapshot sees the first write only.
    let spec = pod("reader", vec![volume("data", pb::VolumeKind::Disk, "/data", &[("size", "1Gi"), ("snapshotId", &snap), ("ephemeral", "true")])], "cp data/f.txt seen.txt && exec sleep 300");
    client.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.unwrap();
    wait_pod(&mut client, "reader", Duration::from_secs(60), "Running", |s| s.phase == pb::PodPhase::Running as i32).await;
    eventually("the reader's copy", Duration::from_secs(20), || find_files(&n.runner_dir().join("pods"), "seen.txt").len() == 1);
    assert_eq!(std::fs::read_to_string(&find_files(&n.runner_dir().join("pods"), "seen.txt")[0]).unwrap(), "before\n");
    delete(&mut client, "reader").await;
    delete(&mut client, "writer").await;
    n.wait_nothing_left("the pods' removal left something").await;
    n.cloud.delete_snapshot(&snap, true).await.unwrap();
}
