//! The scheduler's state on real etcd (three members of Debian's etcd-server per test): every event
//! kind and a batch over max_txn_ops round-trip; a follower's watch keeps up; a deposed leader's
//! write is fenced; a killed leader (kill -9 of its process) is replaced within the lease TTL; one
//! member down changes nothing, two down fail writes by the request deadline naming the lost
//! quorum, and writes succeed again when they return.

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_proto::cluster::v1 as pb;
use berth_scheduler::config::EtcdConfig;
use berth_scheduler::leader::{self, Candidate, LeaderRecord, Term, TermLost};
use berth_scheduler::store::etcd::Etcd;
use berth_scheduler::store::{EtcdStore, Event, MemoryStore, RequestedNode, Store, StoreError, StoredAutoscaler, StoredPolicy, StoredSpec, StoredWorkload};
use berth_tests::etcd::EtcdCluster;
use tokio::runtime::Runtime;

const TTL: Duration = Duration::from_secs(2);
/// Above the ~1.2 s the two members left take to elect a leader when the killed one led.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

fn config(endpoints: Vec<String>, prefix: &str) -> EtcdConfig {
    EtcdConfig { endpoints, prefix: prefix.into(), request_timeout_ms: REQUEST_TIMEOUT.as_millis() as u64, dial_timeout_ms: 500, ..EtcdConfig::default() }
}

/// Runs `f` on the runtime for at most `d`.
fn within<T>(rt: &Runtime, d: Duration, f: impl std::future::Future<Output = T>) -> Result<T, tokio::time::error::Elapsed> {
    rt.block_on(async { tokio::time::timeout(d, f).await })
}

fn spec(name: &str) -> StoredSpec {
    StoredSpec::of(&pb::PodSpec { namespace: "d".into(), name: name.into(), cpu_millicores: 250, ..Default::default() })
}

fn requested(id: &str) -> RequestedNode {
    RequestedNode { instance_id: id.into(), pool: "p".into(), instance_type: "ecs.g7.large".into(), zone_id: "z".into(), vswitch_id: "vsw".into(), requested_at_ms: 7 }
}

/// A replica: its connection and, once it leads, its term and a store fenced by it.
struct Replica {
    etcd: Etcd,
    candidate: Candidate,
}

impl Replica {
    fn new(rt: &Runtime, cfg: &EtcdConfig, address: &str) -> Replica {
        let etcd = rt.block_on(Etcd::connect(cfg)).unwrap();
        let candidate = Candidate::new(etcd.clone(), LeaderRecord::new(address), cfg.lease_ttl());
        Replica { etcd, candidate }
    }

    fn lead(&self, rt: &Runtime) -> (Term, EtcdStore) {
        let term = within(rt, Duration::from_secs(10), self.candidate.campaign()).expect("leads within 10 s").unwrap();
        let mut store = EtcdStore::new(rt.handle().clone(), self.etcd.clone(), 128);
        store.fence(&term);
        (term, store)
    }
}

fn scale_up(token: &str) -> berth_scheduler::store::ScaleUp {
    berth_scheduler::store::ScaleUp { client_token: token.into(), pool: "p".into(), instance_type: "ecs.g7.large".into(), zone_id: "z".into(), vswitch_id: "vsw-1".into(), count: 2, started_at_ms: 5 }
}

#[test]
fn every_event_kind_and_a_batch_over_max_txn_ops_round_trip() {
    let cluster = EtcdCluster::start(3);
    let rt = Runtime::new().unwrap();
    let cfg = config(cluster.endpoints(), "/t/roundtrip");
    let replica = Replica::new(&rt, &cfg, "127.0.0.1:1");
    let (_term, mut store) = replica.lead(&rt);
    let mut memory = MemoryStore::default();
    assert_eq!(store.load().unwrap(), memory.load().unwrap());

    let every_kind = vec![
        Event::Submitted { pod: "d/a".into(), spec: spec("a") },
        Event::Submitted { pod: "d/b".into(), spec: spec("b") },
        Event::Submitted { pod: "d/c".into(), spec: spec("c") },
        Event::Bound { pod: "d/a".into(), node: "i-1".into() },
        Event::Bound { pod: "d/b".into(), node: "i-1".into() },
        Event::ZonePinned { pod: "d/a".into(), spec: spec("a-pinned") },
        Event::Unbound { pod: "d/b".into() },
        Event::Deleted { pod: "d/c".into() },
        Event::NodeRequested(requested("i-8")),
        Event::NodeRequested(requested("i-9")),
        Event::NodeRequestCleared { instance_id: "i-8".into() },
        Event::ScaleUpStarted(scale_up("t-1")),
        Event::ScaleUpStarted(scale_up("t-2")),
        Event::ScaleUpFinished { client_token: "t-1".into() },
        Event::PolicyApplied { key: "d/deny".into(), policy: StoredPolicy::of(&pb::NetworkPolicy { namespace: "d".into(), name: "deny".into(), spec: Some(Default::default()), version: 1 }) },
        Event::PolicyApplied { key: "d/gone".into(), policy: StoredPolicy::of(&pb::NetworkPolicy { namespace: "d".into(), name: "gone".into(), spec: None, version: 2 }) },
        Event::PolicyDeleted { key: "d/gone".into() },
        Event::NamespaceLabeled { namespace: "d".into(), labels: [("team".to_string(), "a".to_string())].into() },
        Event::WorkloadApplied { key: "d/web".into(), workload: StoredWorkload::of(&pb::Workload { namespace: "d".into(), name: "web".into(), replicas: 10, revision: 2, ..Default::default() }) },
        Event::WorkloadApplied { key: "d/gone".into(), workload: StoredWorkload::of(&pb::Workload { namespace: "d".into(), name: "gone".into(), ..Default::default() }) },
        Event::WorkloadDeleted { key: "d/gone".into() },
        Event::AutoscalerApplied { key: "hpa/d/web".into(), autoscaler: StoredAutoscaler::of(pb::stored_autoscaler::Kind::Hpa(pb::HorizontalPodAutoscaler { namespace: "d".into(), name: "web".into(), target: "web".into(), max_replicas: 5, ..Default::default() })) },
        Event::AutoscalerApplied { key: "cron/d/gone".into(), autoscaler: StoredAutoscaler::of(pb::stored_autoscaler::Kind::Cron(pb::CronHorizontalPodAutoscaler { namespace: "d".into(), name: "gone".into(), ..Default::default() })) },
        Event::AutoscalerDeleted { key: "cron/d/gone".into() },
    ];
    for batch in [&every_kind[..4], &every_kind[4..]] {
        store.append(batch).unwrap();
        memory.append(batch).unwrap();
    }
    assert_eq!(store.load().unwrap(), memory.load().unwrap());

    // 300 pods submitted and bound, 50 nodes requested in one batch: 651 writes, 6 transactions.
    let mut big: Vec<Event> = (0..300).map(|i| Event::Submitted { pod: format!("d/p{i}"), spec: spec(&format!("p{i}")) }).collect();
    big.extend((0..300).map(|i| Event::Bound { pod: format!("d/p{i}"), node: format!("i-{}", i % 7) }));
    big.extend((0..50).map(|i| Event::NodeRequested(requested(&format!("i-r{i}")))));
    let t = Instant::now();
    store.append(&big).unwrap();
    println!("a batch of {} events (651 keys, 6 transactions) appended in {:?}", big.len(), t.elapsed());
    memory.append(&big).unwrap();

    // Another replica reads the same from etcd.
    let mut other = EtcdStore::new(rt.handle().clone(), Replica::new(&rt, &cfg, "127.0.0.1:2").etcd, 128);
    let (loaded, revision) = other.load_at().unwrap();
    assert_eq!(loaded, memory.load().unwrap());
    assert_eq!(loaded.pods["d/a"].spec, spec("a-pinned"));
    assert_eq!(loaded.pods["d/a"].node.as_deref(), Some("i-1"));
    assert_eq!(loaded.scale_ups.keys().collect::<Vec<_>>(), vec!["t-2"], "a scale-up under way is there for the next leader");

    // A follower watching from the revision it loaded keeps up with the leader's batches.
    let mut changes = other.follow(revision);
    let more = vec![Event::Deleted { pod: "d/p0".into() }, Event::Unbound { pod: "d/p1".into() }, Event::ZonePinned { pod: "d/p2".into(), spec: spec("p2-pinned") }, Event::Submitted { pod: "d/new".into(), spec: spec("new") }, Event::NodeRequestCleared { instance_id: "i-r0".into() }];
    store.append(&more).unwrap();
    memory.append(&more).unwrap();
    let (now, now_revision) = other.load_at().unwrap();
    let mut followed = loaded;
    let mut at = revision;
    while at < now_revision {
        let batch = within(&rt, Duration::from_secs(5), changes.recv()).expect("changes within 5 s").expect("open").unwrap();
        batch.changes.iter().for_each(|c| c.apply(&mut followed));
        at = batch.revision;
    }
    assert_eq!(followed, now);
    assert_eq!(now, memory.load().unwrap());
}

#[test]
fn a_deposed_leaders_write_is_fenced_and_nothing_of_it_is_stored() {
    let cluster = EtcdCluster::start(3);
    let rt = Runtime::new().unwrap();
    let cfg = config(cluster.endpoints(), "/t/fence");
    let a = Replica::new(&rt, &cfg, "10.0.0.1:19470");
    let b = Replica::new(&rt, &cfg, "10.0.0.2:19470");

    let mut unfenced = EtcdStore::new(rt.handle().clone(), a.etcd.clone(), 128);
    assert!(matches!(unfenced.append(&[Event::Deleted { pod: "d/x".into() }]), Err(StoreError::NoTerm)));

    let (term_a, mut store_a) = a.lead(&rt);
    store_a.append(&[Event::Submitted { pod: "d/a".into(), spec: spec("a") }]).unwrap();

    // A's lease ends behind its back (as when it stalls past its TTL); B takes the lead.
    let mut client = a.etcd.client().clone();
    rt.block_on(client.lease_revoke(term_a.lease_id)).unwrap();
    let (term_b, mut store_b) = b.lead(&rt);
    assert!(term_b.revision > term_a.revision);
    let lost = within(&rt, Duration::from_secs(2), term_a.lost()).expect("A learns within 2 s that its term is over");
    assert_eq!(lost, TermLost::KeyDeleted);

    // Its store refuses on its own once the term is lost; a write that got past that check (a
    // leader stalled between check and send) is refused by etcd's compare.
    let stale = vec![Event::Submitted { pod: "d/stale".into(), spec: spec("stale") }, Event::Bound { pod: "d/a".into(), node: "i-stale".into() }];
    match store_a.append(&stale) {
        Err(StoreError::TermLost { revision, .. }) => assert_eq!(revision, term_a.revision),
        other => panic!("A's store wrote after its term: {other:?}"),
    }
    let err = fenced_append(&rt, &a.etcd, &term_a, &stale);
    match &err {
        StoreError::Fenced { revision, leader, .. } => {
            assert_eq!(*revision, term_a.revision);
            assert_eq!(leader.as_deref(), Some("10.0.0.2:19470"), "{err}");
        }
        other => panic!("not fenced: {other}"),
    }
    println!("refused: {err}");

    store_b.append(&[Event::Bound { pod: "d/a".into(), node: "i-b".into() }]).unwrap();
    let state = store_b.load().unwrap();
    assert!(!state.pods.contains_key("d/stale"));
    assert_eq!(state.pods["d/a"].node.as_deref(), Some("i-b"));
    assert_eq!(rt.block_on(leader::leader(&a.etcd)).unwrap().map(|r| r.address).as_deref(), Some("10.0.0.2:19470"));
}

/// An append whose only guard is etcd's compare: a store fenced by a term that does not yet know
/// it is lost (its loss signal not fired), as a leader stalled between its check and its write.
fn fenced_append(rt: &Runtime, etcd: &Etcd, stale: &Term, events: &[Event]) -> StoreError {
    let mut store = EtcdStore::new(rt.handle().clone(), etcd.clone(), 128);
    store.fence_at(stale.fence());
    store.append(events).unwrap_err()
}

/// The leader that `a_killed_leader_is_replaced_within_the_ttl` runs in a process of its own (this
/// test binary again) and kills with SIGKILL; without its environment it does nothing.
#[test]
fn leader_child_process() {
    let Ok(endpoints) = std::env::var("BERTH_ETCD_CHILD_ENDPOINTS") else { return };
    let rt = Runtime::new().unwrap();
    let cfg = config(endpoints.split(',').map(str::to_string).collect(), &std::env::var("BERTH_ETCD_CHILD_PREFIX").unwrap());
    let (term, _store) = Replica::new(&rt, &cfg, "10.0.0.9:19470").lead(&rt);
    println!("leading {}", term.revision);
    std::thread::sleep(Duration::from_secs(60));
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_leader_is_replaced_within_the_ttl() {
    let cluster = EtcdCluster::start(3);
    let rt = Runtime::new().unwrap();
    let prefix = "/t/election";
    let cfg = config(cluster.endpoints(), prefix);
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "leader_child_process", "--nocapture", "--test-threads", "1"])
            .env("BERTH_ETCD_CHILD_ENDPOINTS", cluster.endpoints().join(","))
            .env("BERTH_ETCD_CHILD_PREFIX", prefix)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufReader::new(child.0.stdout.take().unwrap()).lines();
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l.contains("leading ")), "the child process did not lead");

    let b = Replica::new(&rt, &cfg, "10.0.0.2:19470");
    let leaders = rt.block_on(async { leader::watch_leader(&b.etcd) });
    let candidate = b.candidate.clone();
    let campaign = rt.spawn(async move { candidate.campaign().await });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!campaign.is_finished(), "B led while the child process did");
    assert_eq!(leaders.borrow().as_ref().map(|r| r.address.clone()).as_deref(), Some("10.0.0.9:19470"));

    // kill -9: no resign; B leads once etcd expires the child's lease.
    let killed = Instant::now();
    drop(child);
    let term_b = within(&rt, TTL + Duration::from_secs(3), campaign).expect("B leads").unwrap().unwrap();
    let takeover = killed.elapsed();
    println!("a kill -9 of the leader: the other candidate led {takeover:?} later (lease TTL {TTL:?})");
    assert!(takeover < TTL + Duration::from_secs(1), "takeover took {takeover:?}");

    // A resign hands over at once.
    let c = Replica::new(&rt, &cfg, "10.0.0.3:19470");
    let candidate = c.candidate.clone();
    let campaign = rt.spawn(async move { candidate.campaign().await });
    std::thread::sleep(Duration::from_millis(300));
    let resigned = Instant::now();
    rt.block_on(term_b.resign()).unwrap();
    let term_c = within(&rt, Duration::from_secs(2), campaign).expect("C leads").unwrap().unwrap();
    println!("after a resign the next candidate led {:?} later", resigned.elapsed());
    assert!(resigned.elapsed() < Duration::from_millis(500));
    assert!(term_c.is_lost().is_none());

    let deadline = Instant::now() + Duration::from_secs(2);
    while leaders.borrow().as_ref().map(|r| r.address.clone()).as_deref() != Some("10.0.0.3:19470") {
        assert!(Instant::now() < deadline, "the leader watch did not see C: {:?}", leaders.borrow());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_member_down_writes_go_on_two_down_they_fail_naming_the_quorum_and_resume() {
    let mut cluster = EtcdCluster::start(3);
    let rt = Runtime::new().unwrap();
    let cfg = config(cluster.endpoints(), "/t/quorum");
    let a = Replica::new(&rt, &cfg, "10.0.0.1:19470");
    let (term, mut store) = a.lead(&rt);
    store.append(&[Event::Submitted { pod: "d/a".into(), spec: spec("a") }]).unwrap();

    // A follower member: the raft leader stays, and so does the term. (Killing the raft leader
    // costs the two left an election of 1 to 2 s, which can pass a 2 s lease's renew deadline.)
    let raft_leader = cluster.raft_leader().unwrap_or_else(|| panic!("no raft leader:\n{}", cluster.logs()));
    let follower = (raft_leader + 1) % 3;
    cluster.kill(follower);
    for i in 0..5 {
        let t = Instant::now();
        store.append(&[Event::Bound { pod: "d/a".into(), node: format!("i-{i}") }]).unwrap_or_else(|e| panic!("write {i} with one member down: {e}\n{}", cluster.logs()));
        println!("one member down: write {i} in {:?}", t.elapsed());
    }
    assert!(term.is_lost().is_none(), "the term was lost with a quorum left: {:?}", term.is_lost());

    cluster.kill(raft_leader);
    let survivor = 3 - raft_leader - follower;
    let t = Instant::now();
    let err = store.append(&[Event::Unbound { pod: "d/a".into() }]).unwrap_err();
    let failed_after = t.elapsed();
    println!("two members down: the write failed after {failed_after:?}: {err}");
    assert!(matches!(err, StoreError::Unavailable { .. } | StoreError::TermLost { .. }), "{err}");
    if let StoreError::Unavailable { .. } = err {
        let text = err.to_string();
        assert!(text.contains("no quorum or cannot be reached") && text.contains(&cluster.endpoints()[survivor]), "{text}");
    }
    assert!(failed_after < REQUEST_TIMEOUT + Duration::from_millis(500), "{failed_after:?}");
    // The leader stops before its lease could expire: at its renew deadline.
    let lost = within(&rt, TTL, term.lost()).expect("the term is lost within the TTL");
    assert!(matches!(lost, TermLost::RenewDeadline(_)), "{lost}");
    assert!(matches!(store.append(&[Event::Unbound { pod: "d/a".into() }]), Err(StoreError::TermLost { .. })));

    cluster.restart(follower);
    cluster.restart(raft_leader);
    cluster.wait_healthy(&[0, 1, 2], Duration::from_secs(20));
    let t = Instant::now();
    let (term, mut store) = a.lead(&rt);
    println!("quorum back: led again after {:?}", t.elapsed());
    store.append(&[Event::Unbound { pod: "d/a".into() }]).unwrap();
    let state = store.load().unwrap();
    assert_eq!(state.pods["d/a"].node, None);
    assert!(term.is_lost().is_none());
}
