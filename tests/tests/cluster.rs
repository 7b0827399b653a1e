//! The main command's cluster: `berthctl up` brings up the local cloud (its instances boot the
//! Berth node image), the scheduler with a pool of two nodes and the sample workload through it;
//! `pod add/del`, `nodes`, `pools`, `inspect` (a node, a pod, every node) work on it; `up` twice makes nothing twice;
//! `down` leaves nothing: no namespace, mount, loop device or process of the cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::guest::GuestLeftovers;
use berth_tests::scheduler::{RunnerLeftovers, free_port};
use berth_tests::{bin, is_root, unique};
use serde_json::Value;

struct Cluster {
    env: Vec<(String, String)>,
    /// The cluster's directories, canonical (as the processes name them).
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::Builder::new().prefix("berth-cluster-").tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let env = vec![
            ("BERTH_STATE_DIR".to_string(), root.join("state").display().to_string()),
            ("BERTH_RUN_DIR".to_string(), root.join("run").display().to_string()),
            ("BERTH_NETNS_PREFIX".to_string(), unique("bc")),
            ("BERTH_LOCALCLOUD_LISTEN".to_string(), format!("127.0.0.1:{}", free_port())),
            ("BERTH_SCHEDULER_LISTEN".to_string(), format!("127.0.0.1:{}", free_port())),
            ("BERTH_VPC_LISTEN".to_string(), format!("127.0.0.1:{}", free_port())),
            ("BERTH_NAS_LISTEN".to_string(), format!("127.0.0.1:{}", free_port())),
        ];
        Cluster { env, root, _dir: dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("berthctl"));
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn berthctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(bin("berthctl")).args(args).envs(self.env.iter().map(|(k, v)| (k, v))).output().unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    /// `berthctl ARGS --output json`, parsed; panics with the output and the logs if it fails.
    fn json(&self, args: &[&str]) -> Value {
        let out = Command::new(bin("berthctl")).args(args).args(["--output", "json"]).envs(self.env.iter().map(|(k, v)| (k, v))).output().unwrap();
        assert!(out.status.success(), "berthctl {args:?}: {}{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr), self.logs());
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("berthctl {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    fn prefix(&self) -> &str {
        &self.env[2].1
    }

    /// The scheduler's log and the nodes' logs, for failure messages.
    fn logs(&self) -> String {
        let mut text = format!("--- scheduler.log\n{}", std::fs::read_to_string(self.root.join("run/scheduler.log")).unwrap_or_default());
        // `up --ha`: the replicas' and the etcd members' logs.
        for i in 0..3 {
            for log in [format!("run/scheduler-{i}.log"), format!("run/etcd-{i}.log")] {
                if let Ok(t) = std::fs::read_to_string(self.root.join(&log)) {
                    let tail: Vec<&str> = t.lines().rev().take(40).collect();
                    text += &format!("\n--- {log}\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                }
            }
        }
        for guest in std::fs::read_dir(self.root.join("state/guests")).into_iter().flatten().flatten() {
            for log in ["agent.log", "csi.log"] {
                let tail: String = std::fs::read_to_string(guest.path().join(log)).unwrap_or_default().lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                text += &format!("\n--- {}\n{tail}", guest.path().join(log).display());
            }
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.berthctl(&["down"]);
        // What down did not remove (it failed, or the test did before it): processes, pods'
        // namespaces, guests' mounts; then the scheduler and the local cloud by their pid files.
        drop(GuestLeftovers { guests_dir: self.root.join("state/guests"), netns_tag: self.prefix().to_string() });
        drop(RunnerLeftovers(vec![self.prefix().to_string()]));
        for pid in processes_of(&self.root) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Processes whose command line or environment names a path under `root`.
fn processes_of(root: &Path) -> Vec<i32> {
    let needle = root.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32)
        .filter(|pid| ["cmdline", "environ"].iter().any(|f| std::fs::read(format!("/proc/{pid}/{f}")).is_ok_and(|b| String::from_utf8_lossy(&b).contains(&needle))))
        .filter(|pid| berth_tests::guest::process_runs(*pid))
        .collect()
}

fn mounts_under(root: &Path) -> Vec<String> {
    let needle = root.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&needle)).map(str::to_string).collect()
}

/// Loop devices whose backing file is under `root`.
fn loops_of(root: &Path) -> Vec<String> {
    let needle = root.display().to_string();
    std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).is_ok_and(|b| b.starts_with(&needle)))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// GET /metrics of a loopback address.
fn scrape(address: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(address).unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: berth\r\nconnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "GET http://{address}/metrics: {reply}");
    reply
}

#[test]
fn up_runs_pods_on_two_nodes_and_down_leaves_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let c = Cluster::new();
    let started = Instant::now();
    let (ok, out) = c.berthctl(&["up"]);
    assert!(ok, "berthctl up: {out}\n{}", c.logs());
    eprintln!("up took {:?}", started.elapsed());
    assert!(out.contains("PODS") && out.contains("NODES (free/allocatable)"), "up prints the two tables:\n{out}");
    assert_eq!(out.matches(": reachable").count(), 7, "the first pod reaches the seven others:\n{out}");

    // Every sample pod runs with an IP: each network mode, the disk, the shared NAS, the OSS.
    let pods = c.json(&["pod", "list"]);
    let pods = pods.as_array().unwrap();
    assert_eq!(pods.len(), 8, "{pods:#?}");
    for p in pods {
        assert!(p["phase"] == "Running" && !p["pod_ip"].as_str().unwrap().is_empty() && p["eni"].as_str().unwrap().starts_with("eni-"), "{p:#}");
    }
    let by_name = |n: &str| pods.iter().find(|p| p["name"] == n).unwrap_or_else(|| panic!("no pod {n}"));
    for (name, mode) in [("shared-1", "shared"), ("shared-2", "shared"), ("exclusive-1", "exclusive"), ("trunk-1", "trunk")] {
        assert_eq!(by_name(name)["mode"], mode);
    }
    for (name, volume) in [("disk-1", "data=disk:/data"), ("nas-1", "shared=nas:/shared"), ("nas-2", "shared=nas:/shared"), ("oss-1", "objects=oss:/objects")] {
        assert_eq!(by_name(name)["volumes"][0], volume);
    }
    let nodes_used: std::collections::BTreeSet<&str> = pods.iter().map(|p| p["node"].as_str().unwrap()).collect();
    assert_eq!(nodes_used.len(), 2, "the pods run on both nodes: {pods:#?}");
    assert_ne!(by_name("shared-1")["node"], by_name("shared-2")["node"], "the scheduler spreads the two shared pods");
    // The two NAS pods wrote into the same file system.
    let nas = c.root.join("state/nas");
    let written: Vec<String> = std::fs::read_dir(&nas).unwrap().flatten().flat_map(|fs| std::fs::read_dir(fs.path()).unwrap().flatten().map(|f| f.file_name().to_string_lossy().into_owned())).collect();
    assert!(written.contains(&"nas-1.txt".to_string()) && written.contains(&"nas-2.txt".to_string()), "{written:?}");

    let nodes = c.json(&["nodes"]);
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:#?}");
    for n in nodes {
        assert_eq!((n["state"].as_str(), n["pool"].as_str()), (Some("Ready"), Some("sample")), "{n:#}");
        for count in ["shared_ips", "eni_slots", "member_eni_slots", "disk_slots"] {
            let [free, all] = [n[count][0].as_u64().unwrap(), n[count][1].as_u64().unwrap()];
            assert!(free <= all && all > 0, "{count} of {}: {free}/{all}", n["instance_id"]);
        }
        assert!(n["shared_ips"][0].as_u64().unwrap() > 0 && n["disk_slots"][0].as_u64().unwrap() > 0, "{n:#}");
    }
    let zones: std::collections::BTreeSet<&str> = nodes.iter().map(|n| n["zone"].as_str().unwrap()).collect();
    assert_eq!(zones.len(), 2, "the pool's two nodes are spread over its two zones: {nodes:#?}");
    let pools = c.json(&["pools"]);
    assert_eq!((pools[0]["name"].as_str(), pools[0]["ready"].as_u64()), (Some("sample"), Some(2)), "{pools:#}");

    // Every daemon of the cluster serves /metrics where README says.
    let state = c.root.join("state");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).trim().to_string();
    let scheduler = scrape(&read(state.join("scheduler/metrics.address")));
    assert!(scheduler.lines().any(|l| l == "berth_scheduler_pods{phase=\"Running\"} 8"), "{scheduler}");
    let cloud = scrape(read(state.join("endpoint")).trim_start_matches("http://").trim_end_matches('/'));
    assert!(cloud.lines().any(|l| l.starts_with("berth_localcloud_api_calls_total{action=\"RunInstances\",outcome=\"ok\"}")), "{cloud}");
    // VPC and NAS listen apart from ECS, where `--vpc-listen` / `--nas-listen` say, and no binary
    // of the cluster sent a call to another product's listener.
    let (vpc, nas) = (read(state.join("vpc-endpoint")), read(state.join("nas-endpoint")));
    assert_eq!((vpc.as_str(), nas.as_str()), (format!("http://{}", c.env[5].1).as_str(), format!("http://{}", c.env[6].1).as_str()));
    assert!(cloud.lines().any(|l| l.starts_with("berth_localcloud_api_calls_total{action=\"DescribeFileSystems\",outcome=\"ok\"}")), "{cloud}");
    assert!(!cloud.contains("InvalidAction.NotFound"), "a call reached another product's listener:\n{cloud}");
    let mut published = 0;
    for n in nodes {
        let guest = state.join("guests").join(n["instance_id"].as_str().unwrap());
        let agent = scrape(&read(guest.join("agent.metrics")));
        assert!(agent.contains("berth_agent_pool_allocated_ips "), "{agent}");
        let csi = scrape(&read(guest.join("csi.metrics")));
        assert!(csi.contains("berth_csi_oss_mounts{health=\"alive\"} "), "{csi}");
        published += csi.lines().filter(|l| l.starts_with("berth_csi_operations_total{method=\"NodePublishVolume\",code=\"Ok\"}")).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum::<u64>();
    }
    assert!(published >= 4, "the drivers count the sample pods' four volume publications: {published}");

    // A pod of one's own, through the scheduler; inspect shows it on its node.
    let web = c.json(&["pod", "add", "web", "--mode", "trunk", "--wait"]);
    let node = web[0]["node"].as_str().unwrap().to_string();
    assert_eq!(web[0]["phase"], "Running", "{web:#}");
    let (ok, out) = c.berthctl(&["inspect", &node]);
    assert!(ok && out.contains(web[0]["pod_ip"].as_str().unwrap()), "inspect NODE: {out}");
    let (ok, out) = c.berthctl(&["inspect", "--node", &node]);
    assert!(ok && out.contains(&format!("PODS ON {node}")), "inspect --node: {out}");
    // Nothing named: every node of the cluster, each with its table.
    let (ok, out) = c.berthctl(&["inspect"]);
    let nodes = c.json(&["nodes"]);
    assert!(ok && nodes.as_array().unwrap().iter().all(|n| out.contains(&format!("PODS ON {}", n["instance_id"].as_str().unwrap()))), "inspect: {out}\nnodes: {nodes:#}");
    // inspect POD explains the pod: where it runs and what its agent holds for it.
    let why = c.json(&["inspect", "web"]);
    let ip = web[0]["pod_ip"].as_str().unwrap();
    let lines: Vec<&str> = why["explanation"].as_array().unwrap().iter().filter_map(|l| l.as_str()).collect();
    assert!(lines.iter().any(|l| l.starts_with("Running on") && l.contains(ip)), "{why:#}");
    assert!(lines.iter().any(|l| l.starts_with(&format!("its agent holds {ip} for it")) && l.ends_with("(trunk)")), "{why:#}");
    let (ok, out) = c.berthctl(&["inspect", "nobody"]);
    assert!(!ok && out.contains("no pod default/nobody"), "{out}");
    let (ok, out) = c.berthctl(&["pod", "add", "web"]);
    assert!(!ok && out.contains("exists"), "a second pod of one name is refused: {out}");
    let (ok, out) = c.berthctl(&["pod", "del", "web"]);
    assert!(ok, "pod del: {out}");

    // up twice makes nothing twice.
    let (ok, out) = c.berthctl(&["up"]);
    assert!(ok, "second up: {out}");
    let status = c.json(&["status"]);
    assert_eq!(status["instances"].as_array().unwrap().len(), 2, "{status:#}");
    assert_eq!(status["vpcs"].as_array().unwrap().len(), 1);
    assert_eq!(status["schedulers"][0]["leads"], serde_json::json!(true), "the local cluster's one scheduler leads: {status:#}");
    assert_eq!(c.json(&["pod", "list"]).as_array().unwrap().len(), 8);

    let started = Instant::now();
    let (ok, out) = c.berthctl(&["down"]);
    assert!(ok, "down: {out}");
    eprintln!("down took {:?}", started.elapsed());
    let left: Vec<String> = std::fs::read_dir("/run/netns").unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(c.prefix())).collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert_eq!(mounts_under(&c.root), Vec::<String>::new(), "mounts left");
    assert_eq!(loops_of(&c.root), Vec::<String>::new(), "loop devices left");
    assert_eq!(processes_of(&c.root), Vec::<i32>::new(), "processes left");
    assert!(!c.root.join("state").exists() && !c.root.join("run").exists(), "state left behind");
}

#[test]
fn up_ha_runs_three_schedulers_on_a_three_member_etcd_and_another_leads_when_the_leader_is_killed() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let c = Cluster::new();
    let started = Instant::now();
    let (ok, out) = c.berthctl(&["up", "--ha"]);
    assert!(ok, "berthctl up --ha: {out}\n{}", c.logs());
    eprintln!("up --ha took {:?}", started.elapsed());
    let pods = c.json(&["pod", "list"]);
    assert!(pods.as_array().unwrap().iter().all(|p| p["phase"] == "Running"), "{pods:#}");

    // status: three replicas, one leads and the two others name it; three healthy etcd members.
    let leader_of = |status: &Value| -> Vec<String> { status["schedulers"].as_array().unwrap().iter().filter(|s| s["leads"] == serde_json::json!(true)).map(|s| s["endpoint"].as_str().unwrap().to_string()).collect() };
    let status = c.json(&["status"]);
    let schedulers = status["schedulers"].as_array().unwrap();
    assert_eq!(schedulers.len(), 3, "{status:#}");
    let leaders = leader_of(&status);
    assert_eq!(leaders.len(), 1, "one replica leads: {status:#}");
    let leader = leaders[0].clone();
    for s in schedulers {
        assert_eq!(format!("http://{}", s["leader"].as_str().unwrap()), leader, "every replica names the leader: {status:#}");
    }
    let etcd = status["etcd"].as_array().unwrap();
    assert!(etcd.len() == 3 && etcd.iter().all(|m| m["healthy"] == serde_json::json!(true)), "{status:#}");
    let (ok, table) = c.berthctl(&["status"]);
    assert!(ok && table.contains("SCHEDULERS") && table.contains("leader") && table.matches("follower").count() == 2 && table.contains("ETCD"), "{table}");

    // A watching berthctl, through the failover.
    let mut watcher = c.command(&["pod", "list", "--watch", "--output", "json"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<Value>();
    let stdout = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = lines_tx.send(v);
            }
        }
    });
    let first = lines.recv_timeout(Duration::from_secs(20)).expect("the watch's listing");
    assert_eq!(first["event"], "listed", "{first}");

    // kill -9 the leader: another replica leads, and the agents find it by themselves.
    let index = schedulers.iter().position(|s| s["endpoint"] == leader.as_str()).unwrap();
    let pid: i32 = std::fs::read_to_string(c.root.join(format!("run/scheduler-{index}.pid"))).unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let next = loop {
        let status = c.json(&["status"]);
        let leaders = leader_of(&status);
        if leaders.len() == 1 && leaders[0] != leader {
            break leaders[0].clone();
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "no other replica leads 20 s after the leader was killed: {status:#}\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("leader {leader} killed with SIGKILL; {next} leads {:?} later", killed.elapsed());
    let status = c.json(&["status"]);
    let dead = &status["schedulers"][index];
    assert!(dead["error"].is_string(), "the killed replica shows unreachable: {status:#}");
    let web = c.json(&["pod", "add", "web", "--wait"]);
    assert_eq!(web[0]["phase"], "Running", "a pod through the new leader runs: {web:#}");
    let pods = c.json(&["pod", "list"]);
    assert_eq!(pods.as_array().unwrap().len(), 9, "{pods:#}");
    // The watch went on at the new leader (listing again: a new term) and saw web start.
    let t = Instant::now();
    loop {
        let l = lines.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("the watch printed nothing of web after the failover\n{}", c.logs()));
        if l["pod"]["name"] == "web" && l["pod"]["phase"] == "Running" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60));
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    // up again starts the killed replica on its port; three answer, one leads.
    let (ok, out) = c.berthctl(&["up"]);
    assert!(ok, "up again: {out}\n{}", c.logs());
    let status = c.json(&["status"]);
    assert!(status["schedulers"].as_array().unwrap().iter().all(|s| s["error"].is_null()), "{status:#}");
    assert_eq!(leader_of(&status).len(), 1, "{status:#}");

    let (ok, out) = c.berthctl(&["down"]);
    assert!(ok, "down: {out}");
    assert_eq!(processes_of(&c.root), Vec::<i32>::new(), "processes left (etcd members, replicas)");
    assert!(!c.root.join("state").exists() && !c.root.join("run").exists(), "state left behind");
}

#[test]
fn install_is_idempotent_and_uninstall_reverses_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(bin("berthctl")).args(args).arg("--root").arg(root.path()).output().unwrap();
        assert!(out.status.success(), "berthctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run(&["install"]);
    for path in ["usr/local/bin/berth-agent", "usr/local/bin/berthctl", "opt/cni/bin/berth", "etc/systemd/system/berth-agent.service", "etc/berth/agent.toml", "usr/local/bin/berth-csi", "etc/systemd/system/berth-csi.service", "etc/berth/csi.toml", "usr/local/bin/berth-scheduler", "etc/systemd/system/berth-scheduler.service", "etc/berth/scheduler.toml", "usr/local/share/berth/node-bootstrap.sh"] {
        assert!(root.path().join(path).exists(), "{path} missing after install:\n{first}");
    }
    assert_eq!(std::fs::metadata(root.path().join("opt/cni/bin/berth")).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(std::fs::metadata(root.path().join("etc/berth/agent.toml")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(root.path().join("opt/cni/bin/berth")).unwrap(), std::fs::read(bin("berth")).unwrap());
    // The operator's config is never overwritten; a second install changes nothing.
    std::fs::write(root.path().join("etc/berth/agent.toml"), "[cloud]\nendpoint = \"http://127.0.0.1:1\"\n").unwrap();
    let second = run(&["install"]);
    assert!(second.contains("nothing changed"), "{second}");
    assert!(std::fs::read_to_string(root.path().join("etc/berth/agent.toml")).unwrap().contains("127.0.0.1:1"));
    run(&["uninstall"]);
    assert!(!root.path().join("usr/local/bin/berth-agent").exists() && !root.path().join("opt/cni/bin/berth").exists() && !root.path().join("etc/systemd/system/berth-agent.service").exists());
    assert!(root.path().join("etc/berth/agent.toml").exists(), "uninstall keeps the config");
    run(&["uninstall", "--purge"]);
    assert!(!root.path().join("etc/berth").exists());
}
