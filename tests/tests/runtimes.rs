//! Real container runtimes with `berth` as their network: podman (CNI backend) and containerd's
//! `ctr run --cni`, on a local-cloud node served by an agent. Containers reach each other, and
//! their IPs go back to the pool when they go.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::agent::AgentProcess;
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, is_root};

/// The runtimes keep caches and state in fixed host paths (libcni's result cache, podman's blob
/// cache, containerd's shim sockets and fifos). The runtime tests run one at a time, and remove the
/// paths that did not exist before them.
static HOST_PATHS: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct HostPaths {
    created: Vec<PathBuf>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl HostPaths {
    fn claim(paths: &[&str]) -> HostPaths {
        let serial = HOST_PATHS.lock().unwrap_or_else(|p| p.into_inner());
        HostPaths { created: paths.iter().map(PathBuf::from).filter(|p| !p.exists()).collect(), _serial: serial }
    }
}

impl Drop for HostPaths {
    fn drop(&mut self) {
        for p in &self.created {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn need(tool: &str) {
    assert!(Command::new("sh").args(["-c", &format!("command -v {tool}")]).status().unwrap().success(), "{tool} is missing: install it (./run test does)");
}

/// A directory holding a busybox-static root file system as a tarball.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "ping", "ip", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let tar = dir.join("rootfs.tar");
    assert!(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status().unwrap().success());
    tar
}

/// podman with its own store, the CNI backend, `berth` first in its plugin path, and the agent's
/// conflist directory as its network config directory, run inside the node's namespace.
struct Podman {
    dir: PathBuf,
    node: PathBuf,
}

impl Podman {
    fn new(dir: &Path, node: &Path, net_d: &Path) -> Podman {
        let berth_dir = berth_tests::bin("berth").parent().unwrap().to_path_buf();
        let conf = format!(
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\n[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{}\"\n\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{}\"\nruntime = \"runc\"\n",
            berth_dir.display(),
            net_d.display(),
            dir.join("events.log").display()
        );
        std::fs::write(dir.join("containers.conf"), conf).unwrap();
        Podman { dir: dir.to_path_buf(), node: node.to_path_buf() }
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.node.display()))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("TMPDIR", &self.dir)
            .env("HOME", &self.dir)
            .output()
            .unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.run(args);
        assert!(ok, "podman {args:?}: {out}");
        out
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-af", "-t", "0"]);
        let _ = self.run(&["system", "reset", "-f"]);
        // vfs layers and the run root may hold mounts; unmount what is under our directory.
        let _ = Command::new("sh").arg("-c").arg(format!("grep -o ' {}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l", self.dir.display())).status();
    }
}

async fn allocations(agent: &AgentProcess) -> Vec<serde_json::Value> {
    agent.pool().await["allocations"].as_array().cloned().unwrap_or_default()
}

async fn wait_for_allocations(agent: &AgentProcess, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while allocations(agent).await.len() != n {
        assert!(Instant::now() < deadline, "expected {n} allocations: {:#?}", allocations(agent).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn node_with_agent(lc: &LocalCloud, cidr: &str, vsw: &str) -> AgentProcess {
    node_with_agent_flags(lc, cidr, vsw, &[]).await
}

async fn node_with_agent_flags(lc: &LocalCloud, cidr: &str, vsw: &str, extra: &[&str]) -> AgentProcess {
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, cidr, vsw).await;
    net.open_to(&cloud, "10.0.0.0/8").await;
    let node = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    AgentProcess::start(lc, &node, &[&["--min-idle-ips", "2"][..], extra].concat())
}

/// The mode the agent gave each container it holds an allocation for.
async fn modes(agent: &AgentProcess) -> std::collections::BTreeMap<String, String> {
    allocations(agent).await.iter().map(|a| (a["ip"].as_str().unwrap().to_string(), a["mode"].as_str().unwrap_or_default().to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_containers_get_vpc_ips_from_berth() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    need("podman");
    need("runc");
    let _host = HostPaths::claim(&["/var/lib/cni", "/var/lib/containers", "/run/containers"]);
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let agent = node_with_agent(&lc, "10.98.0.0/16", "10.98.1.0/24").await;
    let dir = tempfile::Builder::new().prefix("berth-podman-").tempdir().unwrap();
    let tar = busybox_rootfs(dir.path());
    let podman = Podman::new(dir.path(), &agent.netns, agent.conflist_path().parent().unwrap());
    podman.ok(&["import", tar.to_str().unwrap(), "localhost/berth-busybox"]);

    for name in ["c1", "c2"] {
        podman.ok(&["run", "-d", "--name", name, "--network", "berth", "localhost/berth-busybox", "/bin/sleep", "600"]);
    }
    wait_for_allocations(&agent, 2).await;
    let ip_of = |name: &str| {
        let out = podman.ok(&["exec", name, "/bin/ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        out.split_whitespace().skip_while(|w| *w != "inet").nth(1).and_then(|a| a.split('/').next()).unwrap_or_else(|| panic!("no address in {out}")).to_string()
    };
    let (ip1, ip2) = (ip_of("c1"), ip_of("c2"));
    let held: Vec<String> = allocations(&agent).await.iter().map(|a| a["ip"].as_str().unwrap().to_string()).collect();
    assert!(held.contains(&ip1) && held.contains(&ip2), "the containers' IPs {ip1}, {ip2} are the agent's allocations {held:?}");
    let out = podman.ok(&["exec", "c1", "/bin/ping", "-c", "3", "-W", "2", &ip2]);
    assert!(out.contains("0% packet loss") && !out.contains("100% packet loss"), "{out}");

    podman.ok(&["rm", "-f", "-t", "0", "c1", "c2"]);
    wait_for_allocations(&agent, 0).await;
}

/// podman passes no CNI_ARGS of ours: the network it is told picks the mode. `berth-trunk` gives
/// a trunk pod (a member ENI of the node's trunk), `berth-exclusive` a pod with its own ENI, and a
/// network config with a bad mode fails with the CNI error naming the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_picks_the_mode_by_the_network_it_names() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    need("podman");
    need("runc");
    let _host = HostPaths::claim(&["/var/lib/cni", "/var/lib/containers", "/run/containers"]);
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let agent = node_with_agent_flags(&lc, "10.97.0.0/16", "10.97.1.0/24", &["--trunk", "true"]).await;
    let net_d = agent.conflist_path().parent().unwrap().to_path_buf();
    let mut bad: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(net_d.join("12-berth-trunk.conflist")).unwrap()).unwrap();
    bad["name"] = "berth-bad".into();
    bad["plugins"][0]["networkMode"] = "turbo".into();
    std::fs::write(net_d.join("13-berth-bad.conflist"), bad.to_string()).unwrap();
    let dir = tempfile::Builder::new().prefix("berth-podman-").tempdir().unwrap();
    let tar = busybox_rootfs(dir.path());
    let podman = Podman::new(dir.path(), &agent.netns, &net_d);
    podman.ok(&["import", tar.to_str().unwrap(), "localhost/berth-busybox"]);
    let networks = podman.ok(&["network", "ls", "--format", "{{.Name}}"]);
    for n in ["berth", "berth-exclusive", "berth-trunk"] {
        assert!(networks.lines().any(|l| l.trim() == n), "podman sees the network {n}: {networks}");
    }
    for (name, network) in [("ct", "berth-trunk"), ("cx", "berth-exclusive"), ("cs", "berth")] {
        podman.ok(&["run", "-d", "--name", name, "--network", network, "localhost/berth-busybox", "/bin/sleep", "600"]);
    }
    wait_for_allocations(&agent, 3).await;
    let ip_of = |name: &str| {
        let out = podman.ok(&["exec", name, "/bin/ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        out.split_whitespace().skip_while(|w| *w != "inet").nth(1).and_then(|a| a.split('/').next()).unwrap_or_else(|| panic!("no address in {out}")).to_string()
    };
    let held = modes(&agent).await;
    for (name, mode) in [("ct", "trunk"), ("cx", "exclusive"), ("cs", "shared")] {
        let ip = ip_of(name);
        assert_eq!(held.get(&ip).map(String::as_str), Some(mode), "{name} ({ip}) is a {mode} pod: {held:?}");
    }
    let cloud = lc.client();
    let member = berth_cloud::Cloud::describe_network_interfaces(&cloud, &berth_cloud::api::EniFilter { instance_id: Some(agent.instance_id.clone()), ..Default::default() }).await.unwrap().into_iter().find(|e| e.primary_ip.to_string() == ip_of("ct"));
    assert_eq!(member.map(|e| e.kind), Some(berth_cloud::model::EniKind::Member), "the trunk container's address is a member ENI's");
    let out = podman.ok(&["exec", "ct", "/bin/ping", "-c", "2", "-W", "2", &ip_of("cs")]);
    assert!(out.contains(" 0% packet loss"), "trunk → shared: {out}");

    let (ok, out) = podman.run(&["run", "--rm", "--name", "cb", "--network", "berth-bad", "localhost/berth-busybox", "/bin/true"]);
    assert!(!ok && out.contains("turbo") && out.contains("networkMode"), "a bad networkMode is refused, naming it: {out}");
    podman.ok(&["rm", "-f", "-t", "0", "ct", "cx", "cs"]);
    wait_for_allocations(&agent, 0).await;
}

/// A file this test put on the host, removed (with the directories it created) when dropped.
struct Placed {
    path: PathBuf,
    created_dirs: Vec<PathBuf>,
}

impl Placed {
    /// Writes `bytes` to `path` the way CNI binaries are installed: a temp file, then a rename.
    fn write(path: &Path, bytes: &[u8], mode: u32) -> Placed {
        use std::os::unix::fs::PermissionsExt as _;
        let mut created_dirs = Vec::new();
        let mut missing: Vec<&Path> = path.ancestors().skip(1).take_while(|d| !d.exists()).collect();
        missing.reverse();
        for d in missing {
            std::fs::create_dir(d).unwrap();
            created_dirs.push(d.to_path_buf());
        }
        let tmp = path.with_extension("berth-tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, path).unwrap();
        created_dirs.reverse();
        Placed { path: path.to_path_buf(), created_dirs }
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        for d in &self.created_dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// An OCI image layout tarball of the busybox root file system, for `ctr images import`.
fn oci_image(dir: &Path, rootfs_tar: &Path, reference: &str) -> PathBuf {
    use sha2::{Digest as _, Sha256};
    let hex = |bytes: &[u8]| Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let layout = dir.join("oci");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer = std::fs::read(rootfs_tar).unwrap();
    let layer_digest = hex(&layer);
    std::fs::write(blobs.join(&layer_digest), &layer).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
    })
    .to_string();
    let config_digest = hex(config.as_bytes());
    std::fs::write(blobs.join(&config_digest), &config).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_digest}"), "size": layer.len() }],
    })
    .to_string();
    let manifest_digest = hex(manifest.as_bytes());
    std::fs::write(blobs.join(&manifest_digest), &manifest).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{manifest_digest}"), "size": manifest.len(), "annotations": { "org.opencontainers.image.ref.name": reference } }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let tar = dir.join("image.tar");
    assert!(Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&tar).arg(".").status().unwrap().success());
    tar
}

/// A private containerd (own root, state and socket), stopped and cleaned up when dropped.
struct Containerd {
    dir: PathBuf,
    node: PathBuf,
    child: std::process::Child,
}

impl Containerd {
    fn start(dir: &Path, node: &Path) -> Containerd {
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/containerd.sock\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{0}/opt\"\n",
            dir.display()
        );
        std::fs::write(dir.join("containerd.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd").arg("--config").arg(dir.join("containerd.toml")).stdout(std::process::Stdio::null()).stderr(log).spawn().expect("start containerd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dir.join("containerd.sock").exists() {
            assert!(Instant::now() < deadline, "containerd did not start: {}", std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(50));
        }
        Containerd { dir: dir.to_path_buf(), node: node.to_path_buf(), child }
    }

    fn ctr(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.node.display()))
            .arg("ctr")
            .arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", "berth"])
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.ctr(args);
        assert!(ok, "ctr {args:?}: {out}");
        out
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in ["c1", "c2"] {
            let _ = self.ctr(&["task", "kill", "-s", "KILL", id]);
            std::thread::sleep(Duration::from_millis(100));
            let _ = self.ctr(&["task", "delete", "-f", id]);
            let _ = self.ctr(&["container", "delete", id]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("sh").arg("-c").arg(format!("grep -o ' {}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l", self.dir.display())).status();
        // runc leaves the namespace's parent cgroup (`/berth`) in every hierarchy, empty once the
        // tasks are deleted (these tests run one at a time).
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for point in mounts.lines().filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            matches!(right.split(' ').next(), Some("cgroup" | "cgroup2")).then(|| left.split(' ').nth(4)).flatten()
        }) {
            let _ = std::fs::remove_dir(Path::new(point).join("berth"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_ctr_containers_get_vpc_ips_from_berth() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    need("containerd");
    need("ctr");
    need("runc");
    let _host = HostPaths::claim(&["/var/lib/cni", "/run/containerd", "/opt/containerd", "/opt/cni"]);
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let agent = node_with_agent(&lc, "10.99.0.0/16", "10.99.1.0/24").await;
    let dir = tempfile::Builder::new().prefix("berth-ctr-").tempdir().unwrap();
    // ctr reads the first file of /etc/cni/net.d and finds plugins in /opt/cni/bin.
    let conflist = std::fs::read(agent.conflist_path()).unwrap();
    let _conf = Placed::write(Path::new("/etc/cni/net.d/00-berth-test.conflist"), &conflist, 0o644);
    let _plugin = Placed::write(Path::new("/opt/cni/bin/berth"), &std::fs::read(berth_tests::bin("berth")).unwrap(), 0o755);
    let tar = busybox_rootfs(dir.path());
    let image = oci_image(dir.path(), &tar, "localhost/berth-busybox:1");
    let containerd = Containerd::start(dir.path(), &agent.netns);
    containerd.ok(&["images", "import", "--no-unpack", image.to_str().unwrap()]);

    // c1 runs detached; c2 runs in the foreground, pings c1 and exits.
    containerd.ok(&["run", "-d", "--cni", "--snapshotter", "native", "localhost/berth-busybox:1", "c1", "/bin/sleep", "600"]);
    wait_for_allocations(&agent, 1).await;
    let c1 = allocations(&agent).await[0].clone();
    assert_eq!(c1["key"]["container_id"], "berth-c1", "ctr names the container <namespace>-<id>");
    let ip1 = c1["ip"].as_str().unwrap().to_string();
    let out = containerd.ok(&["run", "--cni", "--snapshotter", "native", "localhost/berth-busybox:1", "c2", "/bin/ping", "-c", "3", "-W", "2", &ip1]);
    assert!(out.contains("0% packet loss") && !out.contains("100% packet loss"), "c2 cannot reach c1 at {ip1}: {out}");
    // ctr called DEL for c2 after it exited (with CNI_NETNS empty): only c1's IP is still held.
    wait_for_allocations(&agent, 1).await;

    // A detached ctr container never gets a DEL: GC with the list of live attachments reclaims it.
    containerd.ok(&["task", "kill", "-s", "KILL", "c1"]);
    let gc = serde_json::json!({ "cniVersion": "1.1.0", "name": "berth", "type": "berth", "agentSocket": agent.socket(), "cni.dev/valid-attachments": [] });
    let out = berth_tests::cni::exec(Some(&agent.netns), &berth_tests::cni::cni_path(), "berth", &gc, &berth_tests::cni::Invocation { command: "GC", container_id: "", netns: "", ifname: "", args: "" });
    assert!(out.ok, "GC: {out:?}");
    wait_for_allocations(&agent, 0).await;
}

/// `ctr run --cni` takes the first conflist of /etc/cni/net.d: with the agent's `berth-trunk` one
/// there, its container is a trunk pod, with no CNI_ARGS at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_ctr_gets_a_trunk_pod_from_the_trunk_network() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    need("containerd");
    need("ctr");
    need("runc");
    let _host = HostPaths::claim(&["/var/lib/cni", "/run/containerd", "/opt/containerd", "/opt/cni"]);
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let agent = node_with_agent_flags(&lc, "10.96.0.0/16", "10.96.1.0/24", &["--trunk", "true"]).await;
    let dir = tempfile::Builder::new().prefix("berth-ctr-").tempdir().unwrap();
    let conflist = std::fs::read(agent.conflist_path().parent().unwrap().join("12-berth-trunk.conflist")).unwrap();
    let _conf = Placed::write(Path::new("/etc/cni/net.d/00-berth-test.conflist"), &conflist, 0o644);
    let _plugin = Placed::write(Path::new("/opt/cni/bin/berth"), &std::fs::read(berth_tests::bin("berth")).unwrap(), 0o755);
    let tar = busybox_rootfs(dir.path());
    let image = oci_image(dir.path(), &tar, "localhost/berth-busybox:1");
    let containerd = Containerd::start(dir.path(), &agent.netns);
    containerd.ok(&["images", "import", "--no-unpack", image.to_str().unwrap()]);
    containerd.ok(&["run", "-d", "--cni", "--snapshotter", "native", "localhost/berth-busybox:1", "c1", "/bin/sleep", "600"]);
    wait_for_allocations(&agent, 1).await;
    let a = allocations(&agent).await[0].clone();
    assert_eq!((a["key"]["container_id"].as_str(), a["mode"].as_str()), (Some("berth-c1"), Some("trunk")), "{a}");
    let ip = a["ip"].as_str().unwrap().to_string();
    let cloud = lc.client();
    let enis = berth_cloud::Cloud::describe_network_interfaces(&cloud, &berth_cloud::api::EniFilter { instance_id: Some(agent.instance_id.clone()), ..Default::default() }).await.unwrap();
    assert!(enis.iter().any(|e| e.kind == berth_cloud::model::EniKind::Member && e.primary_ip.to_string() == ip), "{ip} is a member ENI's: {enis:#?}");
    // c2, in the foreground, reaches it and exits; ctr's DEL (CNI_NETNS empty) gives its member back.
    let out = containerd.ok(&["run", "--cni", "--snapshotter", "native", "localhost/berth-busybox:1", "c2", "/bin/ping", "-c", "3", "-W", "2", &ip]);
    assert!(out.contains(" 0% packet loss"), "c2 cannot reach c1 at {ip}: {out}");
    wait_for_allocations(&agent, 1).await;
    containerd.ok(&["task", "kill", "-s", "KILL", "c1"]);
    let gc = serde_json::json!({ "cniVersion": "1.1.0", "name": "berth-trunk", "type": "berth", "networkMode": "trunk", "agentSocket": agent.socket(), "cni.dev/valid-attachments": [] });
    let out = berth_tests::cni::exec(Some(&agent.netns), &berth_tests::cni::cni_path(), "berth", &gc, &berth_tests::cni::Invocation { command: "GC", container_id: "", netns: "", ifname: "", args: "" });
    assert!(out.ok, "GC: {out:?}");
    wait_for_allocations(&agent, 0).await;
}
