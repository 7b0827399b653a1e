//! The node's capacity report to the scheduler (ARCHITECTURE.md flow 4): what the node offers
//! (allocatable) and still has (free) — CPU, memory, pods, shared IPs, ENI slots, member-ENI slots,
//! disk slots — and conditions (a resource gone for good, e.g. no IP left and the pool cannot
//! grow), sent on one gRPC stream every few seconds. [`capacity`] is pure; [`run`] keeps the
//! stream open, reconnecting with back-off when the scheduler is away.

use std::sync::Arc;
use std::time::Duration;

use berth_cloud::Cloud;
use berth_cloud::model::InstanceType;
use berth_proto::cluster::v1 as pb;

use crate::attach::DiskAttacher;
use crate::eni_pool::{EniPool, SlotCounts};
use crate::runner::PodRunner;

/// What the report needs of the node, read at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCounts {
    pub slots: SlotCounts,
    pub disk_limit: u32,
    pub disk_free: u32,
}

/// Allocatable and free resources and the conditions of a node. Pods the scheduler binds are
/// not known to the agent yet (no pod runner), so CPU and memory are free in full.
pub fn capacity(itype: &InstanceType, c: &NodeCounts) -> (pb::Resources, pb::Resources, Vec<pb::Condition>) {
    let s = &c.slots;
    let allocatable = pb::Resources {
        cpu_millicores: u64::from(itype.vcpu) * 1000,
        memory_bytes: itype.memory_mib * 1024 * 1024,
        pods: s.max_ips + s.eni_slots + s.member_slots,
        shared_ips: s.max_ips,
        eni_slots: s.eni_slots,
        member_eni_slots: s.member_slots,
        disk_slots: c.disk_limit,
    };
    let free_ips = s.max_ips.saturating_sub(s.allocated_ips);
    let free_enis = s.eni_slots.saturating_sub(s.eni_slots_used);
    let free_members = s.member_slots.saturating_sub(s.members_used);
    let free = pb::Resources {
        cpu_millicores: allocatable.cpu_millicores,
        memory_bytes: allocatable.memory_bytes,
        pods: free_ips + free_enis + free_members,
        shared_ips: free_ips,
        eni_slots: free_enis,
        member_eni_slots: free_members,
        disk_slots: c.disk_free,
    };
    let condition = |kind: &str, reason: String| pb::Condition { r#type: kind.into(), status: true, reason, since: 0 };
    let mut conditions = Vec::new();
    // No idle IP and none coming: the pool is at the type's limit or may not grow now.
    if s.idle_ips == 0 && (free_ips == 0 || s.cannot_grow) {
        conditions.push(condition("IpExhausted", s.grow_error.clone().unwrap_or_else(|| format!("all {} pod IPs are in use", s.max_ips))));
    }
    if free_enis == 0 {
        conditions.push(condition("EniExhausted", format!("all {} secondary ENI slots are taken", s.eni_slots)));
    }
    if s.member_slots > 0 && free_members == 0 {
        conditions.push(condition("MemberEniExhausted", format!("all {} member ENI slots are taken", s.member_slots)));
    }
    if c.disk_free == 0 {
        conditions.push(condition("DiskExhausted", format!("all {} disk slots are taken", c.disk_limit)));
    }
    (allocatable, free, conditions)
}

/// Where the reports go and how often.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    pub endpoint: String,
    pub every: Duration,
    pub pool: String,
    pub labels: std::collections::HashMap<String, String>,
}

fn report<C: Cloud + 'static>(pool: &EniPool<C>, disks: &DiskAttacher<C>, itype: &InstanceType, settings: &ReportSettings, runner: Option<&PodRunner>) -> pb::NodeReport {
    let disk = disks.slots();
    let counts = NodeCounts { slots: pool.slot_counts(), disk_limit: disk.limit, disk_free: disk.free };
    let (allocatable, mut free, conditions) = capacity(itype, &counts);
    let pods = runner.map(PodRunner::statuses).unwrap_or_default();
    // The pods this node runs hold their CPU and memory (their IPs and slots are counted above).
    for p in pods.iter().filter(|p| matches!(pb::PodPhase::try_from(p.report.phase), Ok(pb::PodPhase::Running | pb::PodPhase::Pending))) {
        free.cpu_millicores = free.cpu_millicores.saturating_sub(p.cpu_millicores);
        free.memory_bytes = free.memory_bytes.saturating_sub(p.memory_bytes);
    }
    let id = pool.identity();
    pb::NodeReport {
        identity: Some(pb::NodeIdentity {
            instance_id: id.instance_id.clone(),
            instance_type: id.instance_type.clone(),
            zone_id: id.zone_id.clone(),
            pool: settings.pool.clone(),
            vswitch_ids: vec![pool.settings().vswitch_id.clone()],
            labels: settings.labels.clone(),
            taints: Vec::new(),
        }),
        allocatable: Some(allocatable),
        free: Some(free),
        conditions,
        sequence: 0,
        sent_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default(),
        pods: pods.into_iter().map(|p| p.report).collect(),
    }
}

/// What to tell the operator when the scheduler refused the node's report as too large.
pub fn refusal_note(e: &berth_scheduler_client::ReporterError, (bytes, pods): (usize, usize)) -> Option<String> {
    e.report_too_big().then(|| {
        format!(
            "the scheduler refused this node's report as too large: the last one was {bytes} bytes for {pods} pods (its limit is {} bytes); reports carry pod keys and status only, so some pods have very long names: delete them, or move pods to other nodes",
            berth_scheduler_client::REPORT_LIMIT_BYTES
        )
    })
}

/// Streams reports until the process stops; a lost scheduler is retried with back-off (0.2 s up to
/// 30 s). The scheduler's instructions go to the pod runner when it is on (removals first), one
/// after the other on a worker of their own, so reports keep their period while a pod is set up
/// (an attach may take a minute, longer than the scheduler's lease); a report follows each
/// instruction done. Without a runner they are logged.
pub async fn run<C: Cloud + 'static>(pool: Arc<EniPool<C>>, disks: Arc<DiskAttacher<C>>, itype: InstanceType, settings: ReportSettings, runner: Option<Arc<PodRunner>>) {
    let done = Arc::new(tokio::sync::Notify::new());
    let work = runner.clone().map(|r| {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<pb::NodeInstruction>();
        let done = done.clone();
        tokio::spawn(async move {
            // Pods waiting for their volumes are looked at on this tick, between instructions.
            let mut retry = tokio::time::interval(Duration::from_millis(500));
            retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let i = tokio::select! {
                    i = rx.recv() => match i {
                        Some(i) => i,
                        None => break,
                    },
                    _ = retry.tick() => {
                        let r = r.clone();
                        if tokio::task::spawn_blocking(move || r.retry_waiting()).await.unwrap_or(0) > 0 {
                            done.notify_one();
                        }
                        continue;
                    }
                };
                let r = r.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    // Policies first, so a pod starts with its policies in force.
                    if let Some(u) = &i.policy {
                        r.apply_policy(u);
                    }
                    for key in &i.remove {
                        r.remove(key);
                    }
                    for spec in i.run {
                        r.run(spec);
                    }
                })
                .await;
                done.notify_one();
            }
        });
        tx
    });
    // The first retry is quick: a scheduler replica that stopped leading ends the stream, and the
    // next leader should hear from every node within a failover's time.
    const FIRST_RETRY: Duration = Duration::from_millis(200);
    let mut backoff = FIRST_RETRY;
    loop {
        let first = report(&pool, &disks, &itype, &settings, runner.as_deref());
        match berth_scheduler_client::NodeReporter::connect(&settings.endpoint, first).await {
            Ok(mut reporter) => {
                tracing::info!(endpoint = %settings.endpoint, "reporting the node's capacity to the scheduler");
                let mut tick = tokio::time::interval(settings.every);
                tick.tick().await;
                loop {
                    let sent = tokio::select! {
                        _ = tick.tick() => reporter.report(report(&pool, &disks, &itype, &settings, runner.as_deref())).await,
                        _ = done.notified() => reporter.report(report(&pool, &disks, &itype, &settings, runner.as_deref())).await,
                        instruction = reporter.instruction() => match instruction {
                            Ok(Some(i)) => {
                                // The scheduler took the stream: a later loss starts the back-off again.
                                backoff = FIRST_RETRY;
                                // Several instructions may follow one another: the worker applies them in order.
                                match &work {
                                    _ if i.run.is_empty() && i.remove.is_empty() && i.policy.is_none() => {}
                                    Some(work) => {
                                        let _ = work.send(i);
                                    }
                                    None => tracing::info!(run = i.run.len(), remove = i.remove.len(), "the scheduler bound pods to this node; the pod runner is off (runner.enabled)"),
                                }
                                Ok(())
                            }
                            Ok(None) => Err(berth_scheduler_client::ReporterError::Closed),
                            Err(e) => Err(e),
                        },
                    };
                    if let Err(e) = sent {
                        // A report that could not be sent: the stream ended, and its status says why.
                        let e = match e {
                            berth_scheduler_client::ReporterError::Closed => match tokio::time::timeout(Duration::from_secs(1), reporter.instruction()).await {
                                Ok(Err(status)) => status,
                                _ => e,
                            },
                            e => e,
                        };
                        match refusal_note(&e, reporter.last_report()) {
                            Some(note) => berth_daemon::limited!(error, "report-refused", error = %e, retry_in = ?backoff, "{note}"),
                            None => berth_daemon::limited!(warn, "report-stream", error = %e, retry_in = ?backoff, "the report stream to the scheduler ended; reconnecting"),
                        }
                        break;
                    }
                }
            }
            Err(e) => berth_daemon::limited!(warn, "report-connect", error = %e, retry_in = ?backoff, "cannot report to the scheduler"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn itype() -> InstanceType {
        berth_cloud::catalogue::instance_type("ecs.c7.xlarge").unwrap()
    }

    #[test]
    fn a_refused_report_says_it_was_too_large_and_how_large() {
        let too_big = berth_scheduler_client::ReporterError::Refused(tonic::Status::resource_exhausted("the node report is too large"));
        let note = refusal_note(&too_big, (5 << 20, 3)).unwrap();
        assert!(note.contains("5242880 bytes for 3 pods") && note.contains("delete them"), "{note}");
        assert_eq!(refusal_note(&berth_scheduler_client::ReporterError::Closed, (10, 1)), None);
    }

    #[test]
    fn free_counts_and_conditions_follow_the_node() {
        let slots = SlotCounts { max_ips: 42, allocated_ips: 10, idle_ips: 4, eni_slots: 3, eni_slots_used: 2, member_slots: 12, members_used: 3, cannot_grow: false, grow_error: None };
        let (all, free, conditions) = capacity(&itype(), &NodeCounts { slots: slots.clone(), disk_limit: 16, disk_free: 15 });
        assert_eq!((all.cpu_millicores, all.shared_ips, all.disk_slots), (4000, 42, 16));
        assert_eq!((free.shared_ips, free.eni_slots, free.member_eni_slots, free.disk_slots), (32, 1, 9, 15));
        assert!(conditions.is_empty(), "{conditions:?}");
        // The pool may not grow and has nothing idle: the scheduler must not send shared pods.
        let stuck = SlotCounts { idle_ips: 0, cannot_grow: true, grow_error: Some("InvalidVSwitchId.IpNotEnough".into()), eni_slots_used: 3, ..slots };
        let (_, _, conditions) = capacity(&itype(), &NodeCounts { slots: stuck, disk_limit: 16, disk_free: 0 });
        let kinds: Vec<&str> = conditions.iter().map(|c| c.r#type.as_str()).collect();
        assert_eq!(kinds, ["IpExhausted", "EniExhausted", "DiskExhausted"]);
        assert!(conditions[0].reason.contains("IpNotEnough"));
    }
}
