//! Preemption: which pods of one node to evict so that a pending pod of higher priority fits —
//! the fewest, of the lowest priority, never one of equal or higher priority, and never past a
//! disruption budget. Pure: the caller gives the node's free counts, its pods and the budgets.

use berth_proto::cluster::v1 as pb;

use super::resources::Resources;
use super::rules::PodLabels;

/// A per-label disruption budget (`[[disruption_budget]]`): of the pods its selector matches in
/// its namespace, keep at least `min_available` bound, or have at most `max_unavailable` not
/// bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisruptionBudget {
    pub namespace: String,
    pub match_labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub min_available: Option<u32>,
    #[serde(default)]
    pub max_unavailable: Option<u32>,
}

impl DisruptionBudget {
    pub fn selects(&self, pod: &PodLabels) -> bool {
        let sel = pb::LabelSelector { match_labels: self.match_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), match_expressions: Vec::new() };
        pod.selected_by(std::slice::from_ref(&self.namespace), &sel)
    }

    /// How many more of its pods may be evicted, given how many it selects in all (`expected`)
    /// and how many of them are bound (`healthy`).
    pub fn allowance(&self, expected: u32, healthy: u32) -> u32 {
        let by_min = self.min_available.map(|m| healthy.saturating_sub(m));
        let by_max = self.max_unavailable.map(|m| m.saturating_sub(expected.saturating_sub(healthy)));
        match (by_min, by_max) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => u32::MAX,
        }
    }
}

/// A pod on the node that might be evicted.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub key: &'a str,
    pub priority: i32,
    pub demand: Resources,
    pub own: &'a PodLabels,
}

/// The victims (indices into `pods`) that make `demand` fit in `free`, lowest priority first,
/// with the fewest pods; None when even every allowed victim does not make room. `allowance`
/// holds each budget's remaining evictions and is taken from.
pub fn victims(free: &Resources, demand: &Resources, priority: i32, pods: &[Candidate<'_>], budgets: &[DisruptionBudget], allowance: &mut [u32]) -> Option<Vec<usize>> {
    if free.fits(demand) {
        return Some(Vec::new());
    }
    let mut order: Vec<usize> = (0..pods.len()).filter(|&i| pods[i].priority < priority).collect();
    order.sort_by_key(|&i| (pods[i].priority, std::cmp::Reverse(pods[i].demand.cpu_millicores), std::cmp::Reverse(pods[i].demand.memory_bytes)));
    let mut left = allowance.to_vec();
    let mut room = *free;
    let mut chosen = Vec::new();
    for i in order {
        let hit: Vec<usize> = budgets.iter().enumerate().filter(|(_, b)| b.selects(pods[i].own)).map(|(k, _)| k).collect();
        if hit.iter().any(|&k| left[k] == 0) {
            continue;
        }
        for &k in &hit {
            left[k] -= 1;
        }
        room = room.saturating_add(&pods[i].demand);
        chosen.push(i);
        if room.fits(demand) {
            // Put back what is not needed: a victim whose demand the room can spare, latest first.
            let mut k = chosen.len();
            while k > 0 {
                k -= 1;
                let without = room.saturating_sub(&pods[chosen[k]].demand);
                if chosen.len() > 1 && without.fits(demand) {
                    for (b, budget) in budgets.iter().enumerate() {
                        if budget.selects(pods[chosen[k]].own) {
                            left[b] += 1;
                        }
                    }
                    room = without;
                    chosen.remove(k);
                }
            }
            allowance.copy_from_slice(&left);
            return Some(chosen);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn labels(app: u8) -> PodLabels {
        PodLabels::of(&pb::PodSpec { namespace: "d".into(), labels: [("app".to_string(), format!("a{app}"))].into(), ..Default::default() })
    }

    proptest! {
        /// Whatever the node's pods and budgets: victims are all of lower priority than the
        /// preemptor, no budget loses more pods than it allows, and the victims make room.
        #[test]
        fn never_evicts_equal_or_higher_priority_nor_breaks_a_budget(
            pods in proptest::collection::vec((-3i32..4, 1u64..5, 0u8..3), 0..12),
            priority in -2i32..5,
            need in 1u64..12,
            free in 0u64..4,
            budgets in proptest::collection::vec((0u8..3, 0u32..3), 0..3),
        ) {
            let owns: Vec<PodLabels> = pods.iter().map(|p| labels(p.2)).collect();
            let keys: Vec<String> = (0..pods.len()).map(|i| format!("d/p{i}")).collect();
            let cands: Vec<Candidate<'_>> = pods.iter().enumerate().map(|(i, p)| Candidate { key: &keys[i], priority: p.0, demand: Resources { cpu_millicores: p.1 * 1000, ..Default::default() }, own: &owns[i] }).collect();
            let budgets: Vec<DisruptionBudget> = budgets.iter().map(|(app, min)| DisruptionBudget { namespace: "d".into(), match_labels: [("app".to_string(), format!("a{app}"))].into(), min_available: Some(*min), max_unavailable: None }).collect();
            let mut allowance: Vec<u32> = budgets.iter().map(|b| { let n = owns.iter().filter(|o| b.selects(o)).count() as u32; b.allowance(n, n) }).collect();
            let before = allowance.clone();
            let free_r = Resources { cpu_millicores: free * 1000, ..Default::default() };
            let demand = Resources { cpu_millicores: need * 1000, ..Default::default() };
            if let Some(v) = victims(&free_r, &demand, priority, &cands, &budgets, &mut allowance) {
                prop_assert!(v.iter().all(|&i| cands[i].priority < priority), "a victim of priority >= {priority}");
                for (k, b) in budgets.iter().enumerate() {
                    let hit = v.iter().filter(|&&i| b.selects(cands[i].own)).count() as u32;
                    prop_assert!(hit <= before[k], "budget {k} allows {} and lost {hit}", before[k]);
                    prop_assert_eq!(allowance[k], before[k] - hit);
                }
                let room = v.iter().fold(free_r, |r, &i| r.saturating_add(&cands[i].demand));
                prop_assert!(room.fits(&demand));
            } else {
                prop_assert_eq!(&allowance, &before, "a failed search takes nothing");
            }
        }
    }

    #[test]
    fn the_fewest_lowest_victims_are_chosen() {
        let owns: Vec<PodLabels> = (0..3).map(labels).collect();
        let c = |key: &'static str, priority, cpu: u64, own| Candidate { key, priority, demand: Resources { cpu_millicores: cpu, ..Default::default() }, own };
        let pods = [c("d/a", 0, 1000, &owns[0]), c("d/b", -5, 1000, &owns[1]), c("d/c", -5, 3000, &owns[2]), c("d/high", 10, 4000, &owns[0])];
        let need = Resources { cpu_millicores: 3000, ..Default::default() };
        assert_eq!(victims(&Resources::default(), &need, 5, &pods, &[], &mut []), Some(vec![2]), "one pod of the lowest priority is enough");
        // A budget keeping app a2 whole: the two smaller ones go instead... but a0 is priority 0 > -5.
        let keep = DisruptionBudget { namespace: "d".into(), match_labels: [("app".to_string(), "a2".to_string())].into(), min_available: Some(1), max_unavailable: None };
        let mut allowance = [keep.allowance(1, 1)];
        let v = victims(&Resources { cpu_millicores: 1000, ..Default::default() }, &need, 5, &pods, std::slice::from_ref(&keep), &mut allowance).unwrap();
        assert_eq!(v, vec![1, 0]);
        assert_eq!(victims(&Resources::default(), &Resources { cpu_millicores: 9000, ..Default::default() }, 5, &pods, &[], &mut []), None, "the higher pod is never a victim");
    }
}
