//! Least privilege in the processes: each daemon drops the capabilities it does not need once it
//! has started, on every thread. The agent's own check sits with its systemd test (agent_pool.rs).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::agent::AgentProcess;
use berth_tests::csi::{CsiProcess, MountGuard};
use berth_tests::privileges::{mask, own_bounding, pid_with_args, threads};
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, bin, is_root};

// Capability numbers (linux/capability.h).
const DAC_OVERRIDE: u32 = 1;
const FOWNER: u32 = 3;
const KILL: u32 = 5;
const NET_BIND_SERVICE: u32 = 10;
const NET_ADMIN: u32 = 12;
const NET_RAW: u32 = 13;
const SYS_PTRACE: u32 = 19;
const SYS_ADMIN: u32 = 21;
const SYS_RESOURCE: u32 = 24;

/// Every thread of `pid` holds exactly `expected`: (effective = permitted, bounding).
fn assert_every_thread(what: &str, pid: u32, expected: (u64, u64)) {
    let (effective_and_permitted, bounding) = expected;
    for (tid, sets) in threads(pid) {
        assert_eq!(sets.effective, effective_and_permitted, "{what}: CapEff of thread {tid} is {:#x}", sets.effective);
        assert_eq!(sets.permitted, effective_and_permitted, "{what}: CapPrm of thread {tid} is {:#x}", sets.permitted);
        assert_eq!(sets.bounding, bounding, "{what}: CapBnd of thread {tid} is {:#x}", sets.bounding);
    }
}

#[test]
fn the_scheduler_runs_without_any_capability() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("scheduler.toml"), "[autoscaler]\nenabled = false\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(bin("berth-scheduler"))
        .arg("--config")
        .arg(dir.path().join("scheduler.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "berth-scheduler exited");
        assert!(Instant::now() < deadline, "berth-scheduler does not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let child = Kill(child);
    // Serving, with its runtime's threads: none holds anything, nor may anything it runs.
    assert_every_thread("berth-scheduler", child.0.id(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csi_driver_and_the_local_cloud_keep_only_what_they_use() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.88.0.0/16", "10.88.1.0/24").await;
    let node = net.run(&cloud, "ecs.c7.large", &net.sg).await;
    let agent = AgentProcess::start(&lc, &node, &["--min-idle-ips", "1"]);
    let agents = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(agent.socket(), agents.path().join(format!("{node}.sock"))).unwrap();
    let csi = CsiProcess::start(&lc, &agent, agents.path());
    let _mounts = MountGuard(csi.state_dir());
    let own = own_bounding();

    // The CSI driver: mounting, growing, publishing into others' paths — bounding set included,
    // so mkfs, mount and s3fs run with no more.
    let wanted = mask(&[SYS_ADMIN, SYS_RESOURCE, DAC_OVERRIDE, FOWNER]) & own;
    assert_every_thread("berth-csi", csi.pid().unwrap(), (wanted, wanted));

    // The local cloud: its own sets shrink, its bounding set stays (what it runs starts whole).
    let lc_pid = pid_with_args(&["berth-localcloud", "serve", &lc.dir.path().display().to_string()]).expect("the local cloud's process");
    let wanted = mask(&[NET_ADMIN, SYS_ADMIN, NET_RAW, DAC_OVERRIDE, SYS_PTRACE, KILL, NET_BIND_SERVICE]) & own;
    assert_every_thread("berth-localcloud", lc_pid, (wanted, own));
}
