//! The main command's cluster: `berthctl up` brings up the local cloud, an agent per node and demo
//! pods that reach each other; `pod add/del`, `inspect --node` work on it; `down` leaves nothing.

use std::process::Command;

use berth_tests::{bin, is_root, unique};

struct Cluster {
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::Builder::new().prefix("berth-cluster-").tempdir().unwrap();
        let port = |l: std::net::TcpListener| l.local_addr().unwrap().port();
        let api = port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let agents = port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let env = vec![
            ("BERTH_STATE_DIR".to_string(), dir.path().join("state").display().to_string()),
            ("BERTH_RUN_DIR".to_string(), dir.path().join("run").display().to_string()),
            ("BERTH_NETNS_PREFIX".to_string(), unique("bc")),
            ("BERTH_LOCALCLOUD_LISTEN".to_string(), format!("127.0.0.1:{api}")),
            ("BERTH_AGENT_PORT_BASE".to_string(), agents.to_string()),
        ];
        Cluster { env, dir }
    }

    fn berthctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(bin("berthctl")).args(args).envs(self.env.iter().map(|(k, v)| (k, v))).output().unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    fn prefix(&self) -> &str {
        &self.env[2].1
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.berthctl(&["down"]);
        let _ = &self.dir;
    }
}

#[test]
fn up_runs_pods_on_two_nodes_and_down_leaves_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let c = Cluster::new();
    let (ok, out) = c.berthctl(&["up"]);
    assert!(ok, "berthctl up: {out}");
    assert_eq!(out.matches(": reachable").count(), 3, "demo-1 reaches the three other demo pods:\n{out}");
    let (ok, out) = c.berthctl(&["pod", "list", "--output", "json"]);
    assert!(ok, "{out}");
    let pods: serde_json::Value = serde_json::from_str(&out).unwrap();
    let nodes: std::collections::BTreeSet<&str> = pods.as_array().unwrap().iter().map(|p| p["node"].as_str().unwrap()).collect();
    assert_eq!((pods.as_array().unwrap().len(), nodes.len()), (4, 2), "{out}");

    let (ok, out) = c.berthctl(&["pod", "add", "web", "--output", "json"]);
    assert!(ok, "pod add: {out}");
    let web: serde_json::Value = serde_json::from_str(&out).unwrap();
    let node = web[0]["node"].as_str().unwrap().to_string();
    let (ok, out) = c.berthctl(&["inspect", "--node", &node]);
    assert!(ok && out.contains("pod-web"), "inspect: {out}");
    let (ok, out) = c.berthctl(&["pod", "add", "web"]);
    assert!(!ok && out.contains("exists"), "a second pod of one name is refused: {out}");
    let (ok, out) = c.berthctl(&["pod", "del", "web"]);
    assert!(ok, "pod del: {out}");

    let (ok, out) = c.berthctl(&["down"]);
    assert!(ok, "down: {out}");
    let left: Vec<String> = std::fs::read_dir("/run/netns").unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(c.prefix())).collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!c.dir.path().join("state").exists() && !c.dir.path().join("run").exists(), "state left behind");
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
    for path in ["usr/local/bin/berth-agent", "usr/local/bin/berthctl", "opt/cni/bin/berth", "etc/systemd/system/berth-agent.service", "etc/berth/agent.toml", "usr/local/bin/berth-csi", "etc/systemd/system/berth-csi.service", "etc/berth/csi.toml"] {
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
