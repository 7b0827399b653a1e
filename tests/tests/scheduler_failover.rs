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

/// A follower answers every read as the leader does (it asks the leader: the pods' live status
/// comes from the agents' reports, which only the leader receives), watches included, and sends
/// writers to the leader with its address in `berth-leader`.
#[test]
fn followers_answer_reads_through_the_leader_and_send_writes_to_it() {
    use berth_proto::cluster::v1 as pb;
    use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
    let rig = Rig::start(berth_tests::failover::Size { nodes: 2, node_ips: 40, max_pods: 30 });
    let leader = rig.leader().expect("a leader");
    rig.wait("30 pods acknowledged", Duration::from_secs(20), &|r| r.acked().len() >= 30);
    let url = |i: usize| rig.replicas[i].url.clone();
    let view = |pods: Vec<pb::PodStatus>| -> Vec<(String, String, i32, String)> {
        let mut v: Vec<_> = pods.into_iter().map(|p| (p.spec.unwrap().name, p.node, p.phase, p.pod_ip)).collect();
        v.sort();
        v
    };
    // Every pod bound and running as the leader sees it, so the views compared below are settled.
    rig.wait("30 pods running", Duration::from_secs(20), &|r| {
        r.rt.block_on(async {
            let mut c = SchedulerClient::connect(url(leader)).await.unwrap();
            berth_tests::scheduler::list_pods(&mut c, "load").await.unwrap().iter().filter(|p| p.phase == pb::PodPhase::Running as i32).count() == 30
        })
    });
    rig.rt.block_on(async {
        let mut at_leader = SchedulerClient::connect(url(leader)).await.unwrap();
        let expected = view(berth_tests::scheduler::list_pods(&mut at_leader, "load").await.unwrap());
        let nodes = at_leader.list_nodes(pb::ListNodesRequest::default()).await.unwrap().into_inner().nodes.len();
        assert_eq!(nodes, 2);
        // A deny-all-ingress policy for the namespace, applied at the leader.
        let policy = pb::NetworkPolicy { namespace: "load".into(), name: "deny-in".into(), spec: Some(pb::NetworkPolicySpec { pod_selector: Some(Default::default()), policy_types: vec!["Ingress".into()], ..Default::default() }), version: 0 };
        let stored = at_leader.apply_network_policy(pb::ApplyNetworkPolicyRequest { policy: Some(policy) }).await.unwrap().into_inner();
        let selecting = at_leader.get_pod_policies(pb::GetPodRequest { namespace: "load".into(), name: "p00003".into() }).await.unwrap().into_inner();
        assert_eq!(selecting.ingress_policies, vec!["load/deny-in".to_string()], "{selecting:?}");
        for follower in (0..3).filter(|&i| i != leader) {
            let mut c = SchedulerClient::connect(url(follower)).await.unwrap();
            let status = c.get_leader(pb::GetLeaderRequest {}).await.unwrap().into_inner();
            assert!(!status.leads, "replica {follower} leads too");
            // ListPods, by pages of 7 (the tokens are the leader's and pass through the follower).
            assert_eq!(view(berth_tests::scheduler::list_pods(&mut c, "load").await.unwrap()), expected, "ListPods at follower {follower}");
            let mut paged = Vec::new();
            let mut token = String::new();
            loop {
                let page = c.list_pods(pb::ListPodsRequest { namespace: "load".into(), page_size: 7, page_token: token }).await.unwrap().into_inner();
                paged.extend(page.pods);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            assert_eq!(view(paged), expected, "ListPods by pages at follower {follower}");
            let one = c.get_pod(pb::GetPodRequest { namespace: "load".into(), name: "p00003".into() }).await.unwrap().into_inner();
            assert_eq!(view(vec![one]), expected.iter().filter(|p| p.0 == "p00003").cloned().collect::<Vec<_>>());
            let missing = c.get_pod(pb::GetPodRequest { namespace: "load".into(), name: "nowhere".into() }).await.unwrap_err();
            assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
            assert_eq!(c.list_nodes(pb::ListNodesRequest::default()).await.unwrap().into_inner().nodes.len(), 2);
            // The NetworkPolicy reads, as the leader answers them.
            let policies = c.list_network_policies(pb::ListNetworkPoliciesRequest { namespace: "load".into() }).await.unwrap().into_inner().policies;
            assert_eq!(policies, vec![stored.clone()], "ListNetworkPolicies at follower {follower}");
            assert_eq!(c.get_network_policy(pb::GetNetworkPolicyRequest { namespace: "load".into(), name: "deny-in".into() }).await.unwrap().into_inner(), stored);
            assert_eq!(c.get_pod_policies(pb::GetPodRequest { namespace: "load".into(), name: "p00003".into() }).await.unwrap().into_inner(), selecting);
            let namespaces = c.list_namespaces(pb::ListNamespacesRequest {}).await.unwrap().into_inner().namespaces;
            assert!(namespaces.iter().any(|n| n.name == "load"), "{namespaces:?}");
            // A bad page token is the leader's INVALID_ARGUMENT, passed on unchanged.
            let bad = c.list_pods(pb::ListPodsRequest { page_token: "not a token".into(), ..Default::default() }).await.unwrap_err();
            assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
            // A write is sent to the leader.
            let spec = pb::PodSpec { namespace: "load".into(), name: format!("at-follower-{follower}"), cpu_millicores: 100, memory_bytes: 64 << 20, ..Default::default() };
            let refused = c.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
            let named = refused.metadata().get(berth_scheduler::replica::LEADER_METADATA).map(|v| format!("http://{}", v.to_str().unwrap()));
            assert_eq!(named.as_deref(), Some(url(leader).as_str()), "{refused:?}");
        }
        // A watch at a follower sees a deletion made at the leader.
        let follower = (0..3).find(|&i| i != leader).unwrap();
        let mut c = SchedulerClient::connect(url(follower)).await.unwrap();
        let listed = c.list_pods(pb::ListPodsRequest { namespace: "load".into(), page_size: 1, ..Default::default() }).await.unwrap().into_inner();
        let mut events = c.watch_pods(pb::WatchPodsRequest { namespace: "load".into(), name: "p00004".into(), revision: listed.revision, term: listed.term }).await.unwrap().into_inner();
        at_leader.delete_pod(pb::DeletePodRequest { namespace: "load".into(), name: "p00004".into() }).await.unwrap();
        let deleted = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(m) = events.message().await.unwrap() {
                if m.events.iter().any(|e| e.r#type == pb::PodEventType::Deleted as i32) {
                    return m;
                }
            }
            panic!("the watch ended without the deletion");
        })
        .await
        .expect("the deletion within 10 s");
        assert!(deleted.term == listed.term && deleted.revision > listed.revision, "{deleted:?}");
    });
}
