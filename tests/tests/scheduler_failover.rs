//! The replicated control plane under load (see [`berth_tests::failover`]): the leader killed with
//! SIGKILL, another binds again within 3 s; etcd members lost, one changes nothing, two refuse every
//! write until they return. Every acknowledged pod is stored and bound once, no pod runs on two
//! nodes and no node is over its capacity.

use std::time::{Duration, Instant};

use berth_tests::failover::{Attempt, Rig, SMALL};

#[test]
fn killing_the_leader_under_load_loses_no_pod_and_binds_again_within_3_s() {
    let mut rig = Rig::start(SMALL);
    let first = rig.leader().expect("a leader");
    rig.wait("40 pods acknowledged", Duration::from_secs(20), &|r| r.acked().len() >= 40);
    rig.replicas[first].kill();
    let killed_at = Instant::now();
    // The first pod acknowledged as Bound after the kill was bound by the new leader.
    rig.wait("a pod acknowledged by the new leader", Duration::from_secs(10), &|r| r.acked().iter().any(|a| a.started >= killed_at));
    let took = rig.acked().iter().find(|a| a.started >= killed_at).map(|a| a.ended - killed_at).unwrap();
    println!("leader killed with SIGKILL: the next pod was bound by the new leader {took:?} later");
    assert!(took < Duration::from_secs(3), "failover took {took:?}");
    rig.wait("40 more pods acknowledged", Duration::from_secs(20), &|r| r.acked().iter().filter(|a| a.started >= killed_at).count() >= 40);
    let second = rig.leader().expect("a leader");
    assert_ne!(second, first);
    rig.stop_and_verify();
}

/// etcd keeps a quorum with one member of three down: the scheduler goes on without a refused
/// call. With two down it has none: every write is refused with UNAVAILABLE naming the quorum and
/// nothing is acknowledged; once the members are back, submits succeed again, and nothing that
/// was acknowledged is lost or bound twice.
#[test]
fn etcd_members_lost_under_load_one_changes_nothing_two_refuse_writes_until_they_return() {
    let mut rig = Rig::start(SMALL);
    let leader = rig.leader().expect("a leader");
    rig.wait("20 pods acknowledged", Duration::from_secs(20), &|r| r.acked().len() >= 20);

    // One member down, not the raft leader (that one would cost an election, ~1 s).
    let raft_leader = rig.etcd.raft_leader().expect("etcd has a raft leader");
    let first = (0..3).find(|&i| i != raft_leader).unwrap();
    rig.etcd.kill(first);
    let one_down = Instant::now();
    rig.wait("20 more pods with one etcd member down", Duration::from_secs(20), &|r| r.acked().iter().filter(|a| a.started >= one_down).count() >= 20);
    let since: Vec<Attempt> = rig.attempts.lock().unwrap().iter().filter(|a| a.ended >= one_down).cloned().collect();
    let refused: Vec<_> = since.iter().filter_map(|a| a.error.clone()).collect();
    assert!(refused.is_empty(), "with one etcd member of three down, calls were refused: {refused:?}");
    let slowest = since.iter().map(|a| a.ended - a.started).max().unwrap();
    println!("one etcd member down: {} pods acknowledged, none refused, slowest SubmitPod {slowest:?}", since.len());
    assert!(slowest < Duration::from_secs(1), "a SubmitPod took {slowest:?} with one member down");
    assert_eq!(rig.leader(), Some(leader), "the scheduler leader changed though etcd kept its quorum");

    // A second member down: no quorum.
    let second = (0..3).find(|&i| i != first && Some(i) != rig.etcd.raft_leader()).or_else(|| (0..3).find(|&i| i != first)).unwrap();
    rig.etcd.kill(second);
    let two_down = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    let during: Vec<Attempt> = rig.attempts.lock().unwrap().iter().filter(|a| a.started >= two_down).cloned().collect();
    assert!(!during.is_empty(), "the client made no call in 8 s without quorum");
    let acked: Vec<_> = during.iter().filter(|a| a.error.is_none()).map(|a| a.pod.clone()).collect();
    assert!(acked.is_empty(), "pods acknowledged without an etcd quorum: {acked:?}");
    for a in &during {
        let (code, message) = a.error.as_ref().unwrap();
        assert_eq!(*code, tonic::Code::Unavailable, "a call without quorum was answered {code:?}: {message}");
    }
    let named = during.iter().filter(|a| a.error.as_ref().is_some_and(|(_, m)| m.contains("quorum"))).count();
    println!("two etcd members down: {} calls refused, {named} naming the quorum; first: {}", during.len(), during[0].error.as_ref().unwrap().1);
    assert!(named > 0, "no refusal names the lost quorum: {:?}", during.iter().map(|a| &a.error).collect::<Vec<_>>());

    // Both back: writes are acknowledged again.
    rig.etcd.restart(first);
    rig.etcd.restart(second);
    let back = Instant::now();
    rig.wait("a pod acknowledged once the members are back", Duration::from_secs(30), &|r| r.acked().iter().any(|a| a.started >= back));
    let recovered = rig.acked().iter().find(|a| a.started >= back).map(|a| a.ended - back).unwrap();
    println!("etcd members restarted: the next pod was acknowledged {recovered:?} later");
    rig.wait("20 pods after the recovery", Duration::from_secs(20), &|r| r.acked().iter().filter(|a| a.started >= back).count() >= 20);
    rig.stop_and_verify();
}
