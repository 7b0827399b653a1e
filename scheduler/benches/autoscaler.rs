//! Scale-up decisions with 5,000 simulated nodes whose IPs and slots are all taken:
//! 1. the autoscaler round that turns pods pending beyond the threshold into a cloud request
//!    (the scheduler's own `autoscale_once`, store and locking included, provisioner recording),
//!    p50/p99 over 200 rounds of 1–50 new pods each; the requested nodes then report full;
//! 2. the same end to end through the running scheduler's loops (`serve`, default
//!    `interval_ms` 1000, `pending_threshold_secs` 0 so that only the scheduler's own delay is
//!    measured): from SubmitPod of a pod no node can host to the cloud request, 30 times;
//! 3. 30,000 pending pods (30% with spread or anti-affinity rules) over 10 pools x 5 types x 3
//!    zones planned until every one has a node requested (repeated plans, nodes
//!    requested by earlier plans counted).
//!
//! `cargo bench -p berth-scheduler --bench autoscaler`

mod common;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use berth_cloud::catalogue;
use berth_proto::cluster::v1 as pb;
use berth_scheduler::autoscaler::driver::NodeProvisioner;
use berth_scheduler::autoscaler::{Expander, NodePool, PoolNodes, ScaleUpPlan, plan_scale_up};
use berth_scheduler::cluster::Cluster;
use berth_scheduler::config::SchedulerConfig;
use berth_scheduler::placement::{PodRequest, Strategy};
use berth_scheduler::server::{self, Shared, autoscale_once};
use berth_scheduler::store::{MemoryStore, RequestedNode};
use common::{Rng, node_report, percentile, pod_spec, pools};

/// Each plan executed, with the IDs it returned.
type Created = Arc<Mutex<Vec<(ScaleUpPlan, Vec<String>)>>>;

#[derive(Clone, Default)]
struct Recording {
    created: Created,
    at: Arc<Mutex<Vec<Instant>>>,
}

impl NodeProvisioner for Recording {
    async fn create(&self, _pool: &NodePool, plan: &ScaleUpPlan, _token: &str) -> Result<Vec<String>, String> {
        let mut c = self.created.lock().unwrap();
        let ids: Vec<String> = (0..plan.count).map(|k| format!("i-new-{}-{k}", c.len())).collect();
        c.push((plan.clone(), ids.clone()));
        self.at.lock().unwrap().push(Instant::now());
        Ok(ids)
    }

    async fn delete(&self, _ids: &[String]) -> Result<(), String> {
        Ok(())
    }
}

fn full(mut r: pb::NodeReport) -> pb::NodeReport {
    let mut free = r.free.unwrap_or_default();
    (free.shared_ips, free.eni_slots, free.member_eni_slots) = (0, 0, 0);
    r.free = Some(free);
    r
}

fn decision_latency(nodes: usize) {
    let mut cfg = SchedulerConfig::default();
    cfg.autoscaler.pending_threshold_secs = 0;
    cfg.pool = pools(100_000);
    let shared = Shared::new(cfg, Box::new(MemoryStore::default())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut rng = Rng(7);
    for i in 0..nodes {
        rt.block_on(shared.report(&full(node_report(i, &mut rng)))).unwrap();
    }
    let prov = Recording::default();
    let mut lat = Vec::new();
    let mut k = 0;
    for round in 0..200 {
        let n = 1 + rng.below(50) as usize;
        let mut keys = Vec::new();
        for _ in 0..n {
            let mut spec = pod_spec(k, &mut rng);
            // Shared-mode pods: every node is out of IPs, so they wait for new nodes.
            spec.network_mode = pb::NetworkMode::Shared as i32;
            k += 1;
            keys.push(format!("{}/{}", spec.namespace, spec.name));
            rt.block_on(shared.submit(spec)).unwrap();
        }
        let before = prov.created.lock().unwrap().len();
        let t = Instant::now();
        rt.block_on(autoscale_once(&shared, &prov));
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        let created = prov.created.lock().unwrap()[before..].to_vec();
        assert!(!created.is_empty(), "round {round}: no scale-up for {n} pending pods");
        // The new nodes boot and report full; the pods are deleted for the next round.
        for (plan, ids) in created {
            for id in ids {
                let t = catalogue::instance_type(&plan.instance_type).unwrap();
                let cap = pb::Resources::from(&berth_scheduler::autoscaler::template_capacity(&t));
                let r = pb::NodeReport {
                    identity: Some(pb::NodeIdentity { instance_id: id, instance_type: t.id.clone(), zone_id: plan.zone_id.clone(), pool: plan.pool.clone(), vswitch_ids: vec![plan.vswitch_id.clone()], ..Default::default() }),
                    allocatable: Some(cap),
                    free: Some(cap),
                    sequence: 1,
                    ..Default::default()
                };
                rt.block_on(shared.report(&full(r))).unwrap();
            }
        }
        for key in keys {
            let _ = rt.block_on(shared.delete(&key));
        }
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "scale-up decision with {nodes} full nodes, 10 pools x 5 types x 3 vSwitches, 1-50 pods pending per round: round p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (pending to decision = pending_threshold_secs + at most interval_ms + this)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
}

fn end_to_end(nodes: usize) {
    let mut cfg = SchedulerConfig::default();
    cfg.autoscaler.pending_threshold_secs = 0;
    cfg.pool = pools(100_000);
    let shared = Shared::new(cfg, Box::new(MemoryStore::default())).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut rng = Rng(5);
    for i in 0..nodes {
        rt.block_on(shared.report(&full(node_report(i, &mut rng)))).unwrap();
    }
    let prov = Recording::default();
    let mut lat = Vec::new();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(server::serve(shared.clone(), Some(prov.clone()), listener, async {
            let _ = stopped.await;
        }));
        for k in 0..40 {
            let mut spec = pod_spec(1_000_000 + k, &mut rng);
            spec.network_mode = pb::NetworkMode::Shared as i32;
            spec.pool_selector.clear();
            spec.vswitch_id.clear();
            let key = format!("{}/{}", spec.namespace, spec.name);
            // Pods arrive at any point of the autoscaler's interval.
            tokio::time::sleep(std::time::Duration::from_millis(rng.below(1000))).await;
            let before = prov.at.lock().unwrap().len();
            let t = Instant::now();
            shared.submit(spec).await.unwrap();
            loop {
                if let Some(at) = prov.at.lock().unwrap().get(before) {
                    lat.push(at.duration_since(t).as_secs_f64() * 1e3);
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            shared.delete(&key).await.unwrap();
            // The requested node boots full, so the next pod needs another.
            let (plan, ids) = prov.created.lock().unwrap().last().cloned().unwrap();
            for id in ids {
                let r = pb::NodeReport {
                    identity: Some(pb::NodeIdentity { instance_id: id, instance_type: plan.instance_type.clone(), zone_id: plan.zone_id.clone(), pool: plan.pool.clone(), vswitch_ids: vec![plan.vswitch_id.clone()], ..Default::default() }),
                    allocatable: Some(pb::Resources { cpu_millicores: 1000, memory_bytes: 1 << 30, pods: 10, shared_ips: 5, ..Default::default() }),
                    free: Some(pb::Resources { cpu_millicores: 1000, memory_bytes: 1 << 30, pods: 10, ..Default::default() }),
                    sequence: 1,
                    ..Default::default()
                };
                shared.report(&r).await.unwrap();
            }
        }
        let _ = stop.send(());
        let _ = server.await;
    });
    lat.sort_by(f64::total_cmp);
    println!(
        "pending to scale-up decision through the running loops ({nodes} full nodes, interval_ms 1000, threshold 0): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} pods",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
        lat.len()
    );
}

fn full_plan(pods: usize) {
    let mut rng = Rng(11);
    let mut cluster = Cluster::new(Strategy::BinPack, 0, 15_000);
    for i in 0..5_000 {
        cluster.report(&full(node_report(i, &mut rng)), 0);
    }
    let reqs: Vec<PodRequest> = (0..pods).map(|k| PodRequest::of(&pod_spec(k, &mut rng))).collect();
    let pools = pools(100_000);
    let pool_nodes = PoolNodes::of_cluster(&cluster);
    let t = Instant::now();
    let mut requested: Vec<RequestedNode> = Vec::new();
    let mut plans = 0;
    let mut last_covered = 0;
    loop {
        let refs: Vec<&PodRequest> = reqs.iter().collect();
        let round = plan_scale_up(&refs, &pools, &catalogue::instance_type, &pool_nodes, &requested, Expander::LeastWaste);
        if round.is_empty() {
            break;
        }
        last_covered = round[0].pods_on_requested + round.iter().map(|p| p.pods).sum::<usize>();
        for plan in round {
            plans += 1;
            for k in 0..plan.count {
                requested.push(RequestedNode { instance_id: format!("i-{plans}-{k}"), pool: plan.pool.clone(), instance_type: plan.instance_type.clone(), zone_id: plan.zone_id.clone(), vswitch_id: plan.vswitch_id.clone(), requested_at_ms: 0 });
            }
        }
        assert!(plans < 1_000, "planning does not converge");
    }
    println!(
        "{pods} pending pods fully planned in {:.2} s: {plans} plans, {} nodes requested, {last_covered} pods covered by the last plan and the nodes before it",
        t.elapsed().as_secs_f64(),
        requested.len()
    );
}

fn main() {
    decision_latency(5_000);
    end_to_end(5_000);
    full_plan(30_000);
}
