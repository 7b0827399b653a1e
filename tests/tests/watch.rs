//! WatchPods through the real `berth-scheduler` binary over gRPC, with nodes that report as agents
//! do: events in order, a resumed watch with no gap and no duplicate, a revision too old or of
//! another term answered OUT_OF_RANGE, a slow watcher closed (ABORTED, told where to resume)
//! while another and placement go on; and `berthctl pod add --wait` / `pod list --watch`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use berth_scheduler::client::NodeReporter;
use berth_scheduler::client::watch::{PodUpdate, PodWatch};
use berth_tests::bin;
use berth_tests::scheduler::{Scheduler, free_port};
use tonic::transport::Channel;

fn start(watch: &str) -> Scheduler {
    start_on(free_port(), watch)
}

fn start_on(port: u16, watch: &str) -> Scheduler {
    Scheduler::start_on(port, &format!("[placement]\ntick_ms = 50\n[autoscaler]\nenabled = false\n[watch]\n{watch}\n"), &[])
}

/// A free port below the kernel's ephemeral range: while a scheduler on it restarts, no other
/// process's bind to port 0 (a test's metrics server beside) can take it.
fn port_kept_across_restarts() -> u16 {
    let start = 20_000 + (std::process::id() % 8_000) as u16;
    (start..32_000).chain(20_000..start).find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()).expect("a free port under 32000")
}

/// How a simulated node reports a pod it was told to run: Failed for names starting with "bad".
fn pod_report(key: &str, ip: usize) -> pb::PodReport {
    let (namespace, name) = key.split_once('/').unwrap();
    if name.starts_with("bad") {
        return pb::PodReport { namespace: namespace.into(), name: name.into(), phase: pb::PodPhase::Failed as i32, message: "volume data: mount failed: no such device".into(), ..Default::default() };
    }
    pb::PodReport { namespace: namespace.into(), name: name.into(), phase: pb::PodPhase::Running as i32, pod_ip: format!("10.9.{}.{}", ip / 250, ip % 250 + 1), ..Default::default() }
}

fn node_report(id: &str, pods: &BTreeMap<String, usize>) -> pb::NodeReport {
    let all = pb::Resources { cpu_millicores: 64_000, memory_bytes: 256 << 30, pods: 500, shared_ips: 500, eni_slots: 4, member_eni_slots: 8, disk_slots: 8 };
    let used = pods.len() as u32;
    let free = pb::Resources { cpu_millicores: all.cpu_millicores - u64::from(used) * 100, pods: 500 - used, shared_ips: 500 - used, ..all };
    pb::NodeReport {
        identity: Some(pb::NodeIdentity { instance_id: id.into(), instance_type: "ecs.g7.large".into(), zone_id: "z1".into(), pool: "p".into(), vswitch_ids: vec!["vsw-1".into()], ..Default::default() }),
        allocatable: Some(all),
        free: Some(free),
        pods: pods.iter().map(|(k, ip)| pod_report(k, *ip)).collect(),
        ..Default::default()
    }
}

/// A node as its agent would be: reports every 200 ms, runs what it is told (at once).
fn start_node(url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut mine: BTreeMap<String, usize> = BTreeMap::new();
        let mut next_ip = 0;
        loop {
            let Ok(mut reporter) = NodeReporter::connect(&url, node_report("i-1", &mine)).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = tick.tick() => if reporter.report(node_report("i-1", &mine)).await.is_err() { break },
                    i = reporter.instruction() => match i {
                        Ok(Some(i)) => {
                            for k in i.remove {
                                mine.remove(&k);
                            }
                            for s in i.run {
                                next_ip += 1;
                                mine.insert(format!("{}/{}", s.namespace, s.name), next_ip);
                            }
                        }
                        _ => break,
                    },
                }
            }
        }
    })
}

/// Waits until the simulated node's first report is in.
async fn wait_node(c: &mut SchedulerClient<Channel>) {
    let t = Instant::now();
    while berth_tests::scheduler::node_state(c, "i-1").await.is_none() {
        assert!(t.elapsed() < Duration::from_secs(10), "the node never reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spec(namespace: &str, name: &str) -> pb::PodSpec {
    pb::PodSpec { namespace: namespace.into(), name: name.into(), cpu_millicores: 100, memory_bytes: 64 << 20, command: vec!["sleep".into(), "infinity".into()], ..Default::default() }
}

async fn submit(c: &mut SchedulerClient<Channel>, s: pb::PodSpec) {
    c.submit_pod(pb::SubmitPodRequest { spec: Some(s) }).await.unwrap();
}

async fn watch(c: &mut SchedulerClient<Channel>, namespace: &str, revision: u64, term: u64) -> Result<tonic::Streaming<pb::WatchPodsResponse>, tonic::Status> {
    c.watch_pods(pb::WatchPodsRequest { namespace: namespace.into(), name: String::new(), revision, term }).await.map(|r| r.into_inner())
}

/// Reads events until `done` says the collected ones suffice (or panics after 20 s); returns the
/// events and the revision of the last message.
async fn collect(stream: &mut tonic::Streaming<pb::WatchPodsResponse>, done: impl Fn(&[pb::PodEvent]) -> bool) -> (Vec<pb::PodEvent>, u64) {
    let mut events = Vec::new();
    let mut revision = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, stream.message()).await.unwrap_or_else(|_| panic!("events missing after 20 s; got {} of them: {:?}", events.len(), events.iter().map(describe).collect::<Vec<_>>()));
        let m = m.unwrap().expect("the stream stays open");
        revision = m.revision;
        events.extend(m.events);
    }
    (events, revision)
}

fn name_of(e: &pb::PodEvent) -> String {
    e.pod.as_ref().and_then(|p| p.spec.as_ref()).map(|s| s.name.clone()).unwrap_or_default()
}

fn describe(e: &pb::PodEvent) -> String {
    format!("{}:{}:{:?}", e.revision, name_of(e), pb::PodEventType::try_from(e.r#type).unwrap_or_default())
}

/// Revisions only grow.
fn assert_increasing(events: &[pb::PodEvent], after: u64) {
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    assert!(revisions.first().is_none_or(|r| *r > after) && revisions.windows(2).all(|w| w[0] < w[1]), "{:?}", events.iter().map(describe).collect::<Vec<_>>());
}

/// Every event's revision follows the previous one's by one (a watch of every pod).
fn assert_consecutive(events: &[pb::PodEvent], after: u64) {
    for (k, e) in events.iter().enumerate() {
        assert_eq!(e.revision, after + 1 + k as u64, "a gap or a duplicate at {k}: {:?}", events.iter().map(describe).collect::<Vec<_>>());
    }
}

fn running_count(events: &[pb::PodEvent]) -> usize {
    events.iter().filter(|e| e.r#type == pb::PodEventType::StatusChanged as i32 && e.pod.as_ref().is_some_and(|p| p.phase == pb::PodPhase::Running as i32)).map(name_of).collect::<BTreeSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_come_in_order_and_a_resumed_watch_has_no_gap_and_no_duplicate() {
    let s = start("");
    let mut c = s.client().await;
    let _node = start_node(s.url.clone());
    wait_node(&mut c).await;
    let listed = c.list_pods(pb::ListPodsRequest { namespace: "w".into(), ..Default::default() }).await.unwrap().into_inner();
    assert!(listed.pods.is_empty() && listed.term != 0, "{listed:?}");
    // One watcher stays connected throughout; the other is cut and resumes.
    let mut whole = watch(&mut c, "w", listed.revision, listed.term).await.unwrap();
    let mut cut = watch(&mut c, "w", listed.revision, listed.term).await.unwrap();
    for k in 0..10 {
        submit(&mut c, spec("w", &format!("p{k}"))).await;
        submit(&mut c, spec("other", &format!("p{k}"))).await;
    }
    let (first, at) = collect(&mut cut, |e| running_count(e) == 10).await;
    assert_increasing(&first, listed.revision);
    // Each pod: added (pending), bound to the node, then running with its IP; in that order.
    for k in 0..10 {
        let name = format!("p{k}");
        let mine: Vec<&pb::PodEvent> = first.iter().filter(|e| name_of(e) == name).collect();
        let kinds: Vec<i32> = mine.iter().map(|e| e.r#type).collect();
        assert_eq!(kinds, vec![pb::PodEventType::Added as i32, pb::PodEventType::Bound as i32, pb::PodEventType::StatusChanged as i32], "{name}: {:?}", mine.iter().map(|e| describe(e)).collect::<Vec<_>>());
        let (added, bound, running) = (mine[0].pod.as_ref().unwrap(), mine[1].pod.as_ref().unwrap(), mine[2].pod.as_ref().unwrap());
        assert_eq!((added.phase, added.node.as_str()), (pb::PodPhase::Pending as i32, ""));
        assert_eq!((bound.phase, bound.node.as_str()), (pb::PodPhase::Bound as i32, "i-1"));
        assert!(running.phase == pb::PodPhase::Running as i32 && !running.pod_ip.is_empty(), "{running:?}");
        assert_eq!(added.spec, Some(spec("w", &name)), "an event carries the pod's status as ListPods gives it");
    }
    // The cut watcher goes away; more happens; it resumes from the last revision it saw.
    drop(cut);
    for k in 10..20 {
        submit(&mut c, spec("w", &format!("p{k}"))).await;
    }
    c.delete_pod(pb::DeletePodRequest { namespace: "w".into(), name: "p0".into() }).await.unwrap();
    let mut resumed = watch(&mut c, "w", at, listed.term).await.unwrap();
    let (rest, _) = collect(&mut resumed, |e| running_count(e) == 10 && e.iter().any(|e| e.r#type == pb::PodEventType::Deleted as i32)).await;
    assert_increasing(&rest, at);
    let (all, _) = collect(&mut whole, |e| e.len() >= first.len() + rest.len()).await;
    let cut_and_resumed: Vec<pb::PodEvent> = first.into_iter().chain(rest).collect();
    assert_eq!(all[..cut_and_resumed.len()], cut_and_resumed[..], "the resumed watch saw exactly what the one never cut saw");
    let deleted = cut_and_resumed.iter().find(|e| e.r#type == pb::PodEventType::Deleted as i32).unwrap();
    assert_eq!(name_of(deleted), "p0");
    // A listing now and a watch from its revision: the state, then only what follows.
    let now = c.list_pods(pb::ListPodsRequest { namespace: "w".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!((now.pods.len(), now.term), (19, listed.term));
    let mut after = watch(&mut c, "w", now.revision, now.term).await.unwrap();
    submit(&mut c, spec("w", "late")).await;
    let (late, _) = collect(&mut after, |e| !e.is_empty()).await;
    assert_eq!((name_of(&late[0]), late[0].revision), ("late".to_string(), now.revision + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_too_old_or_of_another_term_is_answered_out_of_range_and_a_client_lists_again() {
    let mut s = start_on(port_kept_across_restarts(), "window_events = 40\nmax_lag_events = 20\n");
    let mut c = s.client().await;
    let start_at = c.list_pods(pb::ListPodsRequest::default()).await.unwrap().into_inner();
    for k in 0..40 {
        submit(&mut c, spec("old", &format!("p{k:02}"))).await;
    }
    let e = watch(&mut c, "", 0, start_at.term).await.map(|_| ()).unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("too old: the oldest change this leader keeps is revision"), "{}", e.message());
    let e = watch(&mut c, "", 1, start_at.term + 1).await.map(|_| ()).unwrap_err();
    assert!(e.code() == tonic::Code::OutOfRange && e.message().contains("of term"), "{e:?}");
    // The client helper lists, then watches from the listing.
    let eps = vec![s.url.clone()];
    let mut w = PodWatch::list_then_watch(&eps, "old", "");
    let PodUpdate::Listed(pods) = w.next().await.unwrap() else { panic!("a listing first") };
    assert_eq!(pods.len(), 40);
    // The scheduler restarts: a new term. The watch lists again by itself, then goes on.
    s.restart();
    let mut c = s.client().await;
    let t = Instant::now();
    let relisted = loop {
        match tokio::time::timeout(Duration::from_secs(20), w.next()).await.expect("an update after the restart").unwrap() {
            PodUpdate::Listed(pods) => break pods,
            PodUpdate::Event(_) => assert!(t.elapsed() < Duration::from_secs(20)),
        }
    };
    assert_eq!(relisted.len(), 40, "the pods outlive the restart");
    submit(&mut c, spec("old", "new")).await;
    let next = tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("the new pod's event").unwrap();
    assert!(matches!(&next, PodUpdate::Event(e) if name_of(e) == "new" && e.r#type == pb::PodEventType::Added as i32), "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_closed_and_resumes_while_another_and_placement_go_on() {
    let s = start("window_events = 5000\nmax_lag_events = 100\n");
    let mut c = s.client().await;
    let listed = c.list_pods(pb::ListPodsRequest::default()).await.unwrap().into_inner();
    // Each on a connection of its own: the slow one never reads until the end, and its HTTP/2
    // windows hold 64 KiB (not hyper's 2 MiB), so the server soon has to hold what it owes it.
    let endpoint = tonic::transport::Endpoint::from_shared(s.url.clone()).unwrap().initial_stream_window_size(65_535).initial_connection_window_size(65_535);
    let mut slow_client = SchedulerClient::new(endpoint.connect().await.unwrap());
    let mut slow = watch(&mut slow_client, "", listed.revision, listed.term).await.unwrap();
    let fast_events: Arc<Mutex<Vec<pb::PodEvent>>> = Default::default();
    let fast = {
        let (url, events) = (s.url.clone(), fast_events.clone());
        tokio::spawn(async move {
            let mut c = SchedulerClient::connect(url).await.unwrap();
            let mut stream = watch(&mut c, "", listed.revision, listed.term).await.unwrap();
            while let Ok(Some(m)) = stream.message().await {
                events.lock().unwrap().extend(m.events);
            }
        })
    };
    // 400 pods with a 2 KiB command each (no node: each is added, then told why it waits).
    let started = Instant::now();
    let submitters: Vec<_> = (0..8)
        .map(|j| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let mut took = Vec::new();
                for k in (j..400).step_by(8) {
                    let mut p = spec("slow", &format!("p{k:03}"));
                    p.command = vec!["sh".into(), "-c".into(), format!("echo {}", "x".repeat(2 << 10))];
                    let t = Instant::now();
                    submit(&mut c, p).await;
                    took.push(t.elapsed());
                }
                took
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for s in submitters {
        latencies.extend(s.await.unwrap());
    }
    latencies.sort();
    let submitting = started.elapsed();
    let t = Instant::now();
    while fast_events.lock().unwrap().len() < 800 {
        assert!(t.elapsed() < Duration::from_secs(20), "the fast watcher has {} of 800 events", fast_events.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fast_seen = fast_events.lock().unwrap().clone();
    assert_consecutive(&fast_seen[..800], listed.revision);
    println!("400 submits in {submitting:?} (p50 {:?}, max {:?}) with a watcher that does not read; the other had all 800 events {:?} after the last submit", latencies[200], latencies[399], t.elapsed());
    assert!(!fast.is_finished(), "the fast watcher is still open");
    // The slow one reads now: what was buffered for it, in order, then the close telling it where to resume.
    let mut got: Vec<pb::PodEvent> = Vec::new();
    let mut last = listed.revision;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.message()).await.expect("the slow watcher was closed") {
            Ok(Some(m)) => {
                got.extend(m.events);
                last = m.revision;
            }
            Ok(None) => panic!("closed without a status"),
            Err(st) => break st,
        }
    };
    assert_consecutive(&got, listed.revision);
    assert!(got.len() < 800, "it was closed before it had everything: {}", got.len());
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(status.message().contains(&format!("resume from revision {last}")), "{} (last revision received {last})", status.message());
    let mut resumed = watch(&mut slow_client, "", last, listed.term).await.unwrap();
    let (rest, _) = collect(&mut resumed, |e| got.len() + e.len() >= 800).await;
    assert_consecutive(&rest, last);
    fast.abort();
}

/// `berthctl` against this scheduler only (its own run and state directories).
struct Ctl {
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Ctl {
    fn new(s: &Scheduler) -> Ctl {
        let dir = tempfile::tempdir().unwrap();
        let env = vec![
            ("BERTH_SCHEDULER_LISTEN".to_string(), s.url.trim_start_matches("http://").to_string()),
            ("BERTH_RUN_DIR".to_string(), dir.path().join("run").display().to_string()),
            ("BERTH_STATE_DIR".to_string(), dir.path().join("state").display().to_string()),
        ];
        Ctl { env, _dir: dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("berthctl"));
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn run(&self, args: &[&str]) -> (bool, String, Duration) {
        let t = Instant::now();
        let out = self.command(args).output().unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)), t.elapsed())
    }
}

/// Kills the child when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_add_wait_returns_once_running_or_fails_with_the_pods_message_and_pod_list_watch_prints_changes() {
    let s = start("");
    let ctl = Ctl::new(&s);
    let mut c = s.client().await;
    submit(&mut c, spec("default", "before")).await;
    // `pod list --watch --output json`: the listing, then each change as a JSON line.
    let mut child = Killed(ctl.command(&["pod", "list", "--watch", "--output", "json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
    let (lines_tx, lines) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")));
        }
    });
    let first = lines.recv_timeout(Duration::from_secs(10)).expect("the listing");
    assert_eq!((first["event"].as_str(), first["pod"]["name"].as_str(), first["pod"]["phase"].as_str()), (Some("listed"), Some("before"), Some("Pending")), "{first}");

    let _node = start_node(s.url.clone());
    // Once `before` is bound the node has reported: web then sees a node from its first decision.
    let t = Instant::now();
    loop {
        let l = lines.recv_timeout(Duration::from_secs(10)).expect("before's binding");
        assert!(t.elapsed() < Duration::from_secs(20));
        if l["pod"]["name"] == "before" && l["event"] == "bound" {
            break;
        }
    }
    let (ok, out, took) = ctl.run(&["pod", "add", "web", "--wait", "--output", "json"]);
    assert!(ok, "pod add --wait: {out}\n{}", s.log());
    let shown: serde_json::Value = serde_json::from_str(&out[out.find('[').unwrap_or(0)..]).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!((shown[0]["name"].as_str(), shown[0]["phase"].as_str()), (Some("web"), Some("Running")), "{out}");
    assert!(!shown[0]["pod_ip"].as_str().unwrap().is_empty(), "{out}");
    println!("pod add --wait returned once the pod ran, after {took:?}");

    // The watching berthctl printed web's life: added, bound, running.
    let mut web = Vec::new();
    let t = Instant::now();
    while !web.iter().any(|l: &serde_json::Value| l["pod"]["phase"] == "Running") {
        let l = lines.recv_timeout(Duration::from_secs(10)).expect("a change line");
        assert!(t.elapsed() < Duration::from_secs(20));
        if l["pod"]["name"] == "web" {
            web.push(l);
        }
    }
    let events: Vec<&str> = web.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["added", "bound", "status_changed"], "{web:#?}");
    assert!(web.windows(2).all(|w| w[0]["revision"].as_u64() < w[1]["revision"].as_u64()), "{web:#?}");
    assert_eq!(web[1]["pod"]["node"], "i-1");

    // A pod its node reports Failed: --wait fails with the pod's message.
    let (ok, out, _) = ctl.run(&["pod", "add", "bad-1", "--wait"]);
    assert!(!ok && out.contains("pod bad-1 failed on i-1: volume data: mount failed: no such device"), "{out}");
    // A pod no node can take: --wait gives up after --timeout, saying why it waits.
    let (ok, out, took) = ctl.run(&["pod", "add", "stuck", "--selector", "pool=nowhere", "--wait", "--timeout", "2"]);
    assert!(!ok && out.contains("pods not running within 2s: stuck (Pending") && out.contains("nowhere"), "{out}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // pod del waits (watching) until the pod is gone.
    let (ok, out, _) = ctl.run(&["pod", "del", "web"]);
    assert!(ok, "{out}");
    let t = Instant::now();
    loop {
        let l = lines.recv_timeout(Duration::from_secs(10)).expect("the deletion line");
        if l["pod"]["name"] == "web" && l["event"] == "deleted" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20));
    }
}
