//! Guests: with `serve --image`, a Running instance runs the image's services (substituted for it,
//! in sessions of their own, recorded under its directory), a deleted instance's guest is stopped
//! with everything it left (processes, namespaces, mounts, directory), a restarted local cloud
//! adopts live guests instead of starting them twice, failed services are restarted, and a bad
//! image stops `serve` naming the problem. Last, a real Berth node image: agent and CSI driver.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_cloud::Cloud as _;
use berth_proto::cluster::v1 as pb;
use berth_tests::agent::unix_channel;
use berth_tests::csi::mounts_under;
use berth_tests::guest::{GuestLeftovers, NodeImage, guest_processes, process_runs, recorded_pids};
use berth_tests::scheduler::{Scheduler, netns_pids, runner_netns};
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, bin, is_root, unique};

/// An image file in a directory of its own.
fn write_image(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("berth-image-").tempdir().unwrap();
    let path = dir.path().join("image.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Polls `ok` every 50 ms until it holds; panics after `timeout` with `what` and the guest's logs.
async fn wait_until(lc: &LocalCloud, instance: &str, what: &str, timeout: Duration, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} not within {timeout:?}\n{}", lc.guest_logs(instance));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

/// The session of a process (field 6 of its stat).
fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(3)?.parse().ok()
}

/// Waits until the instance's guest is entirely gone: no process, namespace, mount or directory.
async fn assert_guest_gone(lc: &LocalCloud, instance: &str, pids: &[i32], netns_tag: &str) {
    let dir = lc.guest_dir(instance);
    let netns_left = || std::fs::read_dir("/run/netns").into_iter().flatten().flatten().any(|e| e.file_name().to_string_lossy().contains(netns_tag));
    wait_until(lc, instance, "the guest's processes gone", Duration::from_secs(30), || pids.iter().all(|p| !process_runs(*p)) && guest_processes(&dir).is_empty()).await;
    wait_until(lc, instance, "the guest's directory gone", Duration::from_secs(10), || !dir.exists()).await;
    assert!(mounts_under(&dir).is_empty(), "mounts left under {}: {:?}", dir.display(), mounts_under(&dir));
    if !netns_tag.is_empty() {
        assert!(!netns_left(), "a namespace with {netns_tag} is left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_instance_runs_its_image_and_deleting_it_removes_everything() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tag = unique("gt");
    let (_image_dir, image) = write_image(&format!(
        r#"
stop_grace_secs = 3

[[service]]
name = "probe"
command = ["sh", "-c", "printf '%s\n' \"$@\" > args; env > env.txt; touch probe.ready; exec sleep 1000", "probe",
  "{{instance_id}}", "{{instance_type}}", "{{zone_id}}", "{{region_id}}", "{{vpc_id}}", "{{vswitch_id}}", "{{netns}}", "{{dir}}",
  "{{cloud_endpoint}}", "{{vpc_endpoint}}", "{{nas_endpoint}}", "{{oss_endpoint}}", "{{credentials}}", "{{nas_export_root}}", "{{metadata_url}}", "{{{{literal}}}}"]
env = {{ PROBE_INSTANCE = "{{instance_id}}" }}
ready_file = "{{dir}}/probe.ready"

[[service]]
name = "mounter"
command = ["sh", "-c", "ip netns add {{instance_id}}-{tag} && mkdir -p mnt && mount -t tmpfs guest-test mnt && mkdir mnt/inner && mount -t tmpfs guest-test mnt/inner && (setsid ip netns exec {{instance_id}}-{tag} sleep 1000 >/dev/null 2>&1 &) && touch mounter.ready && exec sleep 1000"]
ready_file = "{{dir}}/mounter.ready"

[cleanup]
netns_prefixes = ["{{instance_id}}-{tag}"]
"#
    ));
    // Each product on its own listener: the guest is given each one's URL.
    let lc = LocalCloud::start(LocalCloudOptions { image: Some(image), products_apart: true, ..Default::default() });
    let _leftovers = GuestLeftovers::new(&lc, &tag);
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.93.0.0/16", "10.93.1.0/24").await;
    let started = Instant::now();
    let id = net.run(&cloud, "ecs.g7.large", &net.sg).await;
    let dir = lc.guest_dir(&id);

    // Both services run within seconds, each with its instance's values.
    wait_until(&lc, &id, "the mounter's ready file", Duration::from_secs(10), || dir.join("mounter.ready").exists()).await;
    eprintln!("guest ready {:?} after RunInstances", started.elapsed());
    let state = std::fs::canonicalize(lc.state_dir()).unwrap();
    let oss = std::fs::read_to_string(lc.state_dir().join("oss-endpoint")).unwrap();
    let credentials = std::fs::canonicalize(lc.dir.path().join("credentials.json")).unwrap();
    let want = [
        id.as_str(),
        "ecs.g7.large",
        "local-1a",
        "local-1",
        &net.vpc,
        &net.vsw,
        &lc.instance_netns(&id).display().to_string(),
        &state.join("guests").join(&id).display().to_string(),
        &lc.endpoint,
        &lc.vpc_endpoint,
        &lc.nas_endpoint,
        oss.trim(),
        &credentials.display().to_string(),
        &state.join("nas").display().to_string(),
        "http://127.0.0.1:8100/latest/meta-data",
        "{literal}",
    ]
    .map(str::to_string);
    assert_eq!(lines(&dir.join("args")), want);
    let env = lines(&dir.join("env.txt"));
    assert!(env.contains(&format!("PROBE_INSTANCE={id}")), "{env:?}");
    assert!(env.contains(&format!("BERTH_GUEST_DIR={}", dir.display())), "{env:?}");
    assert!(dir.join("probe.log").exists() && dir.join("mounter.log").exists());
    let pids: Vec<i32> = recorded_pids(&dir).into_iter().map(|(_, p)| p).collect();
    assert_eq!(pids.len(), 2, "{:?}", recorded_pids(&dir));
    for pid in &pids {
        assert!(process_runs(*pid), "service {pid} does not run");
        assert_eq!(session_of(*pid), Some(*pid), "service {pid} does not lead a session of its own");
    }
    assert!(lc.instance_netns(&id).exists());
    let pod_netns = PathBuf::from(format!("/run/netns/{id}-{tag}"));
    assert!(pod_netns.exists(), "the mounter's namespace is missing");
    assert_eq!(mounts_under(&dir).len(), 2, "{:?}", mounts_under(&dir));
    let strays = guest_processes(&dir);
    assert!(strays.len() >= 3, "the services and the sleeper in the namespace: {strays:?}");

    // DeleteInstances(force): services, the sleeper in the namespace, the namespace, the mounts and
    // the directory all go.
    let deleting = Instant::now();
    cloud.delete_instances(std::slice::from_ref(&id), true).await.expect("DeleteInstances");
    assert_guest_gone(&lc, &id, &strays, &tag).await;
    eprintln!("guest gone {:?} after DeleteInstances", deleting.elapsed());
    assert!(!pod_netns.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_local_cloud_adopts_live_guests_and_a_later_delete_still_stops_them() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (_image_dir, image) = write_image(
        r#"
[[service]]
name = "sleeper"
command = ["sh", "-c", "echo $$ >> starts; exec sleep 1000"]
restart = "on-failure"
"#,
    );
    let mut lc = LocalCloud::start(LocalCloudOptions { image: Some(image), ..Default::default() });
    let _leftovers = GuestLeftovers::new(&lc, "");
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.94.0.0/16", "10.94.1.0/24").await;
    let id = net.run(&cloud, "ecs.g7.large", &net.sg).await;
    let dir = lc.guest_dir(&id);
    wait_until(&lc, &id, "the service's start", Duration::from_secs(10), || lines(&dir.join("starts")).len() == 1 && recorded_pids(&dir).len() == 1).await;
    let pid = recorded_pids(&dir)[0].1;
    assert_eq!(lines(&dir.join("starts")), [pid.to_string()]);

    // kill -9 of the local cloud: the guest lives on and the next run adopts it.
    lc.restart();
    let cloud = lc.client();
    wait_until(&lc, &id, "the adoption in the log", Duration::from_secs(10), || lc.log().contains("adopted a running guest service")).await;
    // A few supervisor ticks: a duplicate would show by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(process_runs(pid), "the adopted service died");
    assert_eq!(recorded_pids(&dir), [("sleeper".to_string(), pid)]);
    assert_eq!(lines(&dir.join("starts")).len(), 1, "the service was started again: {:?}", lines(&dir.join("starts")));
    assert_eq!(guest_processes(&dir), [pid]);

    cloud.delete_instances(std::slice::from_ref(&id), true).await.expect("DeleteInstances");
    assert_guest_gone(&lc, &id, &[pid], "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_fails_is_restarted_by_its_policy() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (_image_dir, image) = write_image(
        r#"
[[service]]
name = "once"
command = ["sh", "-c", "echo run >> once; exit 1"]
restart = "no"

[[service]]
name = "flaky"
command = ["sh", "-c", "date +%s.%N >> runs; exit 3"]
restart = "on-failure"

[[service]]
name = "done"
command = ["sh", "-c", "echo run >> done; exit 0"]
restart = "on-failure"
"#,
    );
    let lc = LocalCloud::start(LocalCloudOptions { image: Some(image), ..Default::default() });
    let _leftovers = GuestLeftovers::new(&lc, "");
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.95.0.0/16", "10.95.1.0/24").await;
    let id = net.run(&cloud, "ecs.g7.large", &net.sg).await;
    let dir = lc.guest_dir(&id);
    // Back-offs of 0.5 s, then 1 s: a third run within a few seconds, not at once.
    wait_until(&lc, &id, "three runs of the on-failure service", Duration::from_secs(15), || lines(&dir.join("runs")).len() >= 3).await;
    let runs: Vec<f64> = lines(&dir.join("runs")).iter().map(|l| l.parse().unwrap()).collect();
    assert!(runs[2] - runs[0] >= 1.4, "no back-off between restarts: {runs:?}");
    assert_eq!(lines(&dir.join("once")).len(), 1, "a restart = \"no\" service ran again");
    assert_eq!(lines(&dir.join("done")).len(), 1, "a service that exited 0 ran again");
    assert!(lc.log().contains("restarting it"), "{}", lc.log());

    cloud.delete_instances(std::slice::from_ref(&id), true).await.expect("DeleteInstances");
    assert_guest_gone(&lc, &id, &[], "").await;
}

/// `serve` with `image`: its exit status and stderr (killed after 20 s if it keeps running).
fn serve_with_image(image: &Path) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials.json");
    std::fs::write(&creds, r#"{"access_key_id":"LTAItest","access_key_secret":"s"}"#).unwrap();
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut child = Command::new(bin("berth-localcloud"))
        .args(["serve", "--listen", "127.0.0.1:0", "--oss-listen", "127.0.0.1:0", "--netns-prefix", &unique("lcb")])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--credentials")
        .arg(&creds)
        .arg("--image")
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn an_image_with_an_unknown_placeholder_or_key_stops_serve_naming_it() {
    let (_d1, bad_placeholder) = write_image("[[service]]\nname = \"agent\"\ncommand = [\"/bin/true\", \"--node\", \"{instance_idd}\"]\n");
    let (ok, err) = serve_with_image(&bad_placeholder);
    assert!(!ok, "serve accepted an unknown placeholder");
    assert!(err.contains("{instance_idd}") && err.contains("service[0] (agent).command[2]"), "{err}");
    assert!(!err.contains("serving"), "{err}");

    let (_d2, bad_key) = write_image("[[service]]\nname = \"agent\"\ncommand = [\"/bin/true\"]\nrestart_policy = \"no\"\n");
    let (ok, err) = serve_with_image(&bad_key);
    assert!(!ok, "serve accepted an unknown key");
    assert!(err.contains("restart_policy"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_berth_node_image_runs_an_agent_and_a_csi_driver_on_each_instance() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let image = NodeImage::write(&["--min-idle-ips", "0", "--max-idle-ips", "0"]);
    let lc = LocalCloud::start(LocalCloudOptions { image: Some(image.path.clone()), ..Default::default() });
    let _leftovers = GuestLeftovers::new(&lc, "");
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.96.0.0/16", "10.96.1.0/24").await;
    let started = Instant::now();
    let id = net.run(&cloud, "ecs.g7.large", &net.sg).await;
    let dir = lc.guest_dir(&id);

    // The agent writes its conflist once it can serve; then the CSI driver binds its socket.
    wait_until(&lc, &id, "the agent's conflist", Duration::from_secs(60), || dir.join("net.d/10-berth.conflist").exists()).await;
    wait_until(&lc, &id, "the CSI socket", Duration::from_secs(30), || dir.join("csi.sock").exists()).await;
    eprintln!("node ready {:?} after RunInstances", started.elapsed());
    let conflist: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("net.d/10-berth.conflist")).unwrap()).unwrap();
    assert_eq!(conflist["plugins"][0]["type"], "berth", "{conflist}");
    let info = berth_proto::csi::v1::identity_client::IdentityClient::new(unix_channel(&dir.join("csi.sock")).await)
        .get_plugin_info(berth_proto::csi::v1::GetPluginInfoRequest {})
        .await
        .expect("GetPluginInfo")
        .into_inner();
    assert_eq!(info.name, "csi.berth.io");
    let pids = recorded_pids(&dir);
    assert_eq!(pids.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["agent", "csi"]);
    assert!(pids.iter().all(|(_, p)| process_runs(*p)), "{pids:?}");

    let deleting = Instant::now();
    cloud.delete_instances(std::slice::from_ref(&id), true).await.expect("DeleteInstances");
    assert_guest_gone(&lc, &id, &pids.iter().map(|(_, p)| *p).collect::<Vec<_>>(), "").await;
    eprintln!("node gone {:?} after DeleteInstances", deleting.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_stops_the_guests_of_a_killed_local_cloud() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (_image_dir, image) = write_image("[[service]]\nname = \"sleeper\"\ncommand = [\"sleep\", \"1000\"]\n");
    let mut lc = LocalCloud::start(LocalCloudOptions { image: Some(image), ..Default::default() });
    let _leftovers = GuestLeftovers::new(&lc, "");
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.97.0.0/16", "10.97.1.0/24").await;
    let id = net.run(&cloud, "ecs.g7.large", &net.sg).await;
    let dir = lc.guest_dir(&id);
    wait_until(&lc, &id, "the service's start", Duration::from_secs(10), || recorded_pids(&dir).len() == 1).await;
    let pid = recorded_pids(&dir)[0].1;

    lc.kill();
    assert!(process_runs(pid), "the guest died with the local cloud");
    let status = Command::new(bin("berth-localcloud")).arg("down").arg("--state-dir").arg(lc.state_dir()).args(["--netns-prefix", &lc.prefix]).stderr(Stdio::null()).status().unwrap();
    assert!(status.success(), "berth-localcloud down failed");
    assert!(!process_runs(pid), "down left the guest's service running");
    assert!(!dir.exists(), "down left {}", dir.display());
}


/// What an autoscaler relies on: a new instance of a node image reports to the scheduler and runs
/// the pods bound to it; deleting the instance takes its agent, driver and pods away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_image_reports_to_the_scheduler_and_its_pods_go_with_the_instance() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let scheduler = Scheduler::start(&[]);
    let image = NodeImage::write(&["--min-idle-ips", "1", "--max-idle-ips", "2", "--scheduler-endpoint", &scheduler.url, "--report-secs", "1", "--pod-runner", "true", "--node-pool", "guests"]);
    let lc = LocalCloud::start(LocalCloudOptions { image: Some(image.path.clone()), ..Default::default() });
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.98.0.0/16", "10.98.1.0/24").await;
    let id = net.run(&cloud, "ecs.g7.large", &net.sg).await;
    let pod_prefix = format!("{id}-p");
    let _leftovers = GuestLeftovers::new(&lc, &pod_prefix);
    let mut client = scheduler.client().await;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = berth_tests::scheduler::list_nodes(&mut client).await.unwrap();
        let identity = nodes.iter().filter_map(|n| n.last_report.as_ref()?.identity.clone()).find(|i| i.instance_id == id);
        if let Some(i) = identity {
            assert_eq!((i.pool.as_str(), i.instance_type.as_str()), ("guests", "ecs.g7.large"));
            break;
        }
        assert!(Instant::now() < deadline, "the scheduler never heard of {id}\n{}", lc.guest_logs(&id));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The agent reports only once it is ready, its conflist written.
    wait_until(&lc, &id, "the agent's conflist", Duration::from_secs(60), || lc.guest_dir(&id).join("net.d/10-berth.conflist").exists()).await;
    let spec = pb::PodSpec { namespace: "default".into(), name: "web".into(), cpu_millicores: 100, memory_bytes: 64 << 20, command: vec!["sleep".into(), "300".into()], ..Default::default() };
    client.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = client.get_pod(pb::GetPodRequest { namespace: "default".into(), name: "web".into() }).await.unwrap().into_inner();
        if st.phase == pb::PodPhase::Running as i32 {
            assert_eq!(st.node, id);
            break;
        }
        assert!(Instant::now() < deadline, "the pod never ran: {st:?}\n{}", lc.guest_logs(&id));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pod_pids = runner_netns(&pod_prefix).iter().flat_map(|n| netns_pids(n)).collect::<Vec<i32>>();
    assert!(!pod_pids.is_empty(), "no process in the runner's namespaces {pod_prefix}*");
    let mut pids: Vec<i32> = recorded_pids(&lc.guest_dir(&id)).into_iter().map(|(_, p)| p).collect();
    pids.extend(&pod_pids);

    cloud.delete_instances(std::slice::from_ref(&id), true).await.expect("DeleteInstances");
    assert_guest_gone(&lc, &id, &pids, &pod_prefix).await;
}
