//! Workloads as pure logic: what one reconcile step of a workload creates and deletes, given its
//! pods. A workload's pods carry its name and their template's revision as labels
//! ([`WORKLOAD_LABEL`], [`REVISION_LABEL`]) and are named `<workload>-<revision>-<index>`, the
//! smallest index free in their revision, so names are unique and the same after a restart.
//!
//! A step (Kubernetes' rolling update): failed pods go (deleted before the step's creations, so a
//! replacement may take the name back); without old
//! pods, the current revision is scaled to `replicas`; during a rollout new pods are added while
//! all pods stay within `replicas + max_surge`, and old pods are deleted — those not Running
//! freely, Running ones only while at least `replicas - max_unavailable` pods stay Running.

use berth_proto::cluster::v1 as pb;

/// The label naming a pod's workload.
pub const WORKLOAD_LABEL: &str = "berth.io/workload";
/// The label giving the revision of the template a pod was made from.
pub const REVISION_LABEL: &str = "berth.io/revision";
/// The longest workload name: its pods' names (`-<revision>-<index>`) must stay DNS labels.
pub const MAX_NAME_LEN: usize = 42;
/// The most replicas one workload may ask for.
pub const MAX_REPLICAS: u32 = 10_000;

/// One pod of a workload as a step sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOf {
    pub name: String,
    pub revision: u64,
    pub running: bool,
    /// Failed or Succeeded: it serves no more and is replaced.
    pub done: bool,
}

/// What one step does: pods to create (their names; each of the current revision) and to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<String>,
    pub delete: Vec<String>,
}

/// "namespace/name".
pub fn workload_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// A count or percent of `replicas`, unset meaning 25 %; percents round up (surge) or down.
fn resolve(v: Option<&pb::IntOrPercent>, replicas: u32, round_up: bool) -> u32 {
    let (value, percent) = v.map(|v| (v.value, v.percent)).unwrap_or((25, true));
    if !percent {
        return value;
    }
    let scaled = u64::from(replicas) * u64::from(value);
    let n = if round_up { scaled.div_ceil(100) } else { scaled / 100 };
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// (max surge, max unavailable) in pods. Both 0 after rounding: one may be unavailable, so a
/// rollout always progresses (as Kubernetes does).
pub fn bounds(w: &pb::Workload) -> (u32, u32) {
    let ru = w.rolling_update.as_ref();
    let surge = resolve(ru.and_then(|r| r.max_surge.as_ref()), w.replicas, true);
    let unavailable = resolve(ru.and_then(|r| r.max_unavailable.as_ref()), w.replicas, false);
    if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable) }
}

pub fn pod_name(workload: &str, revision: u64, index: u32) -> String {
    format!("{workload}-{revision}-{index}")
}

/// The index of a pod's name within its revision, if it is one of `workload`'s names.
fn index_of(workload: &str, revision: u64, name: &str) -> Option<u32> {
    name.strip_prefix(&format!("{workload}-{revision}-"))?.parse().ok()
}

/// The pods to create and delete in one step.
pub fn plan(w: &pb::Workload, pods: &[PodOf]) -> Plan {
    let mut plan = Plan::default();
    let desired = w.replicas as usize;
    let (surge, unavailable) = bounds(w);
    plan.delete.extend(pods.iter().filter(|p| p.done).map(|p| p.name.clone()));
    let live: Vec<&PodOf> = pods.iter().filter(|p| !p.done).collect();
    let (mut new, old): (Vec<&PodOf>, Vec<&PodOf>) = live.iter().partition(|p| p.revision == w.revision);
    // Excess pods of the current revision: those not Running first, then the highest indexes.
    new.sort_by_key(|p| (p.running, std::cmp::Reverse(index_of(&w.name, w.revision, &p.name))));
    let excess = new.len().saturating_sub(desired);
    plan.delete.extend(new[..excess].iter().map(|p| p.name.clone()));
    let kept_new = new.len() - excess;
    let mut running = live.iter().filter(|p| p.running).count() - new[..excess].iter().filter(|p| p.running).count();
    let total = kept_new + old.len();
    let want = if old.is_empty() { desired.saturating_sub(kept_new) } else { (desired + surge as usize).saturating_sub(total).min(desired.saturating_sub(kept_new)) };
    let used: std::collections::HashSet<u32> = new[excess..].iter().filter_map(|p| index_of(&w.name, w.revision, &p.name)).collect();
    let mut index = 0;
    while plan.create.len() < want {
        if !used.contains(&index) {
            plan.create.push(pod_name(&w.name, w.revision, index));
        }
        index += 1;
    }
    // Old pods not serving cost nothing to delete; serving ones only down to the floor.
    let floor = desired.saturating_sub(unavailable as usize);
    let mut old_sorted = old;
    old_sorted.sort_by_key(|p| (p.running, p.revision, p.name.clone()));
    for p in old_sorted {
        if !p.running {
            plan.delete.push(p.name.clone());
        } else if running > floor {
            plan.delete.push(p.name.clone());
            running -= 1;
        }
    }
    plan
}

/// How far a workload is, from its pods.
pub fn status(w: &pb::Workload, pods: &[PodOf]) -> pb::WorkloadStatus {
    let live = pods.iter().filter(|p| !p.done);
    let count = |f: &dyn Fn(&PodOf) -> bool| pods.iter().filter(|p| !p.done && f(p)).count() as u32;
    let updated = count(&|p| p.revision == w.revision);
    let updated_running = count(&|p| p.revision == w.revision && p.running);
    let running = count(&|p| p.running);
    let n = live.count() as u32;
    pb::WorkloadStatus { workload: Some(w.clone()), pods: n, updated, updated_running, running, rolled_out: n == w.replicas && updated_running == w.replicas }
}

/// The workload as applied over what is stored (`old`): a changed template is a new revision and
/// the one before it is kept for undo; the same template keeps its revision.
pub fn applied(mut w: pb::Workload, old: Option<&pb::Workload>) -> pb::Workload {
    if let Some(t) = w.template.as_mut() {
        t.namespace = w.namespace.clone();
    }
    match old {
        None => {
            w.revision = 1;
            w.previous_template = None;
        }
        Some(o) if o.template == w.template => {
            w.revision = o.revision;
            w.previous_template = o.previous_template.clone();
        }
        Some(o) => {
            w.revision = o.revision + 1;
            w.previous_template = o.template.clone();
        }
    }
    w
}

/// Back to the previous template, as a new revision; None when there is none.
pub fn undone(w: &pb::Workload) -> Option<pb::Workload> {
    let previous = w.previous_template.clone()?;
    let mut u = w.clone();
    u.previous_template = u.template.replace(previous);
    u.revision += 1;
    Some(u)
}

/// The spec of a workload's pod.
pub fn pod_spec(w: &pb::Workload, name: String) -> pb::PodSpec {
    let mut spec = w.template.clone().unwrap_or_default();
    spec.namespace = w.namespace.clone();
    spec.name = name;
    spec.labels.insert(WORKLOAD_LABEL.into(), w.name.clone());
    spec.labels.insert(REVISION_LABEL.into(), w.revision.to_string());
    spec
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn workload(replicas: u32, surge: Option<(u32, bool)>, unavailable: Option<(u32, bool)>, revision: u64) -> pb::Workload {
        let iop = |v: Option<(u32, bool)>| v.map(|(value, percent)| pb::IntOrPercent { value, percent });
        pb::Workload { namespace: "d".into(), name: "web".into(), replicas, revision, rolling_update: Some(pb::RollingUpdate { max_surge: iop(surge), max_unavailable: iop(unavailable) }), template: Some(pb::PodSpec::default()), ..Default::default() }
    }

    /// Applies a plan: created pods start not Running, deleted ones go.
    fn apply(pods: &mut Vec<PodOf>, plan: &Plan, revision: u64) {
        pods.retain(|p| !plan.delete.contains(&p.name));
        for name in &plan.create {
            assert!(!pods.iter().any(|p| &p.name == name), "{name} is created twice");
            pods.push(PodOf { name: name.clone(), revision, running: false, done: false });
        }
    }

    #[test]
    fn bounds_follow_kubernetes_rounding() {
        assert_eq!(bounds(&workload(10, None, None, 1)), (3, 2), "25 % of 10: surge rounds up, unavailable down");
        assert_eq!(bounds(&workload(1, Some((0, false)), Some((0, true)), 1)), (0, 1), "both 0: one may be unavailable");
        assert_eq!(bounds(&workload(4, Some((2, false)), Some((50, true)), 1)), (2, 2));
    }

    #[test]
    fn scales_up_and_down_with_stable_names() {
        let w = workload(3, None, None, 1);
        let mut pods = Vec::new();
        let p = plan(&w, &pods);
        assert_eq!(p.create, ["web-1-0", "web-1-1", "web-1-2"]);
        apply(&mut pods, &p, 1);
        pods[1].done = true;
        let p = plan(&w, &pods);
        assert_eq!((p.delete.as_slice(), p.create.as_slice()), (["web-1-1".to_string()].as_slice(), ["web-1-1".to_string()].as_slice()), "a failed pod is replaced under its name");
        apply(&mut pods, &p, 1);
        assert_eq!(plan(&w, &pods), Plan::default());
        let w = workload(1, None, None, 1);
        pods[0].running = true;
        let p = plan(&w, &pods);
        assert_eq!(p.delete, ["web-1-2", "web-1-1"], "scaling down keeps the Running pod, and deletes the highest indexes first");
        assert!(p.create.is_empty());
    }

    #[test]
    fn a_rollout_with_no_surge_replaces_one_pod_at_a_time() {
        let mut pods: Vec<PodOf> = (0..3).map(|i| PodOf { name: pod_name("web", 1, i), revision: 1, running: true, done: false }).collect();
        let w = workload(3, Some((0, false)), Some((1, false)), 2);
        let p = plan(&w, &pods);
        assert!(p.create.is_empty(), "no room above replicas");
        assert_eq!(p.delete.len(), 1);
        apply(&mut pods, &p, 2);
        let p = plan(&w, &pods);
        assert_eq!(p.create, ["web-2-0"]);
        assert!(p.delete.is_empty(), "two Running is the floor");
    }

    proptest! {
        /// Whatever the bounds and whichever pods become Running between steps, a rollout from a
        /// workload all Running never has fewer Running than replicas - max_unavailable, never
        /// more pods than replicas + max_surge, and ends with every pod new and Running.
        #[test]
        fn a_rollout_keeps_its_floor_and_ceiling_and_finishes(replicas in 1u32..30, surge in 0u32..5, unavailable in 0u32..5, percent in any::<bool>(), seed in any::<u64>()) {
            let (s, u) = if percent { ((surge * 20, true), (unavailable * 20, true)) } else { ((surge, false), (unavailable, false)) };
            let w = workload(replicas, Some(s), Some(u), 2);
            let (max_surge, max_unavailable) = bounds(&w);
            let floor = replicas.saturating_sub(max_unavailable) as usize;
            let mut pods: Vec<PodOf> = (0..replicas).map(|i| PodOf { name: pod_name("web", 1, i), revision: 1, running: true, done: false }).collect();
            let mut rng = seed;
            for _ in 0..10_000 {
                let p = plan(&w, &pods);
                apply(&mut pods, &p, 2);
                prop_assert!(pods.iter().filter(|p| p.running).count() >= floor, "fewer Running than {floor}: {pods:?}");
                prop_assert!(pods.len() <= (replicas + max_surge) as usize, "more pods than replicas + surge: {pods:?}");
                if status(&w, &pods).rolled_out {
                    break;
                }
                // Some of the starting pods become Running.
                for p in pods.iter_mut().filter(|p| !p.running) {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    p.running = (rng >> 33) % 3 == 0;
                }
            }
            prop_assert!(status(&w, &pods).rolled_out, "the rollout did not finish: {pods:?}");
        }
    }

    #[test]
    fn apply_and_undo_keep_revisions() {
        let mut a = workload(2, None, None, 0);
        a.template.as_mut().unwrap().command = vec!["v1".into()];
        let first = applied(a.clone(), None);
        assert_eq!(first.revision, 1);
        let mut scaled = a.clone();
        scaled.replicas = 5;
        assert_eq!(applied(scaled, Some(&first)).revision, 1, "scaling is not a new revision");
        let mut b = a.clone();
        b.template.as_mut().unwrap().command = vec!["v2".into()];
        let second = applied(b, Some(&first));
        assert_eq!((second.revision, second.previous_template.as_ref().unwrap().command.clone()), (2, vec!["v1".to_string()]));
        let back = undone(&second).unwrap();
        assert_eq!((back.revision, back.template.unwrap().command), (3, vec!["v1".to_string()]));
        assert!(undone(&first).is_none());
        let spec = pod_spec(&second, pod_name("web", 2, 0));
        assert_eq!((spec.labels[WORKLOAD_LABEL].as_str(), spec.labels[REVISION_LABEL].as_str(), spec.name.as_str()), ("web", "2", "web-2-0"));
    }
}
