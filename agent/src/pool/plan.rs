//! Planning the pool's cloud calls.

use std::time::{Duration, Instant};

use super::{EniView, MAX_IPS_PER_CALL, PoolLimits, PoolTargets, PoolView};

/// A cloud call the pool should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolAction {
    /// AssignPrivateIpAddresses on an attached ENI.
    AssignIps { eni: String, count: u32 },
    /// CreateNetworkInterface with this many secondary IPs, then attach it.
    CreateEni { secondary_ips: u32 },
    /// UnassignPrivateIpAddresses of this many idle IPs.
    UnassignIps { eni: String, count: u32 },
    /// Detach and delete an ENI none of whose IPs a pod holds.
    DeleteEni { eni: String },
}

/// The calls that bring the pool towards its targets now. Growing covers the waiting allocations
/// plus `min_idle`, filling attached ENIs before creating new ones, in batches the API accepts;
/// shrinking happens only with nothing waiting, after `cooldown`, down to `max_idle`, and never
/// touches an IP a pod holds.
pub fn plan(view: &PoolView, targets: PoolTargets, limits: PoolLimits, cooldown: Duration, now: Instant) -> Vec<PoolAction> {
    let idle = view.idle();
    let want = view.waiting + targets.min_idle;
    if idle < want {
        if view.inhibit_until.is_some_and(|until| now < until) {
            return Vec::new();
        }
        let new_enis_allowed = view.no_new_enis_until.is_none_or(|until| now >= until);
        return grow(&view.enis, want - idle, limits, new_enis_allowed);
    }
    let surplus = idle.saturating_sub(targets.max_idle.max(targets.min_idle));
    if view.waiting == 0 && surplus > 0 && now.saturating_duration_since(view.last_busy) >= cooldown {
        return shrink(&view.enis, surplus);
    }
    Vec::new()
}

fn grow(enis: &[EniView], mut need: u32, limits: PoolLimits, new_enis_allowed: bool) -> Vec<PoolAction> {
    let per_eni = limits.pod_ips_per_eni();
    let mut actions = Vec::new();
    for e in enis.iter().filter(|e| !e.full) {
        let mut room = per_eni.saturating_sub(e.assigned);
        while need > 0 && room > 0 {
            let count = need.min(room).min(MAX_IPS_PER_CALL);
            actions.push(PoolAction::AssignIps { eni: e.id.clone(), count });
            need -= count;
            room -= count;
        }
    }
    let mut new_enis = if new_enis_allowed { limits.max_secondary_enis().saturating_sub(enis.len() as u32) } else { 0 };
    while need > 0 && new_enis > 0 && per_eni > 0 {
        let count = need.min(per_eni).min(MAX_IPS_PER_CALL);
        actions.push(PoolAction::CreateEni { secondary_ips: count });
        need -= count;
        new_enis -= 1;
    }
    actions
}

fn shrink(enis: &[EniView], mut surplus: u32) -> Vec<PoolAction> {
    let mut actions = Vec::new();
    // Whole idle ENIs first (fewest ENIs held), the emptiest first.
    let mut empty: Vec<&EniView> = enis.iter().filter(|e| e.in_use == 0 && e.assigned > 0).collect();
    empty.sort_by_key(|e| e.assigned);
    let mut deleted = Vec::new();
    for e in empty {
        if e.assigned <= surplus {
            actions.push(PoolAction::DeleteEni { eni: e.id.clone() });
            surplus -= e.assigned;
            deleted.push(e.id.as_str());
        }
    }
    // Then idle IPs of the least used ENIs.
    let mut rest: Vec<&EniView> = enis.iter().filter(|e| !deleted.contains(&e.id.as_str()) && e.idle() > 0).collect();
    rest.sort_by_key(|e| e.in_use);
    for e in rest {
        if surplus == 0 {
            break;
        }
        let count = e.idle().min(surplus);
        actions.push(PoolAction::UnassignIps { eni: e.id.clone(), count });
        surplus -= count;
    }
    actions
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMITS: PoolLimits = PoolLimits { eni_quota: 4, ipv4_per_eni: 15 };
    const TARGETS: PoolTargets = PoolTargets { min_idle: 2, max_idle: 6 };
    const COOLDOWN: Duration = Duration::from_secs(60);

    fn view(enis: &[(u32, u32)], waiting: u32, now: Instant) -> PoolView {
        PoolView {
            enis: enis.iter().enumerate().map(|(i, (assigned, in_use))| EniView { id: format!("eni-{i}"), assigned: *assigned, in_use: *in_use, full: false }).collect(),
            waiting,
            inhibit_until: None,
            no_new_enis_until: None,
            last_busy: now,
        }
    }

    #[test]
    fn an_empty_node_creates_an_eni_with_its_warm_ips() {
        let now = Instant::now();
        assert_eq!(plan(&view(&[], 0, now), TARGETS, LIMITS, COOLDOWN, now), vec![PoolAction::CreateEni { secondary_ips: 2 }]);
    }

    #[test]
    fn demand_fills_attached_enis_first_in_batches() {
        let now = Instant::now();
        // 14 pod IPs per ENI: eni-0 has room for 4, then new ENIs take 10 at most per call.
        let v = view(&[(10, 10)], 20, now);
        assert_eq!(
            plan(&v, TARGETS, LIMITS, COOLDOWN, now),
            vec![PoolAction::AssignIps { eni: "eni-0".into(), count: 4 }, PoolAction::CreateEni { secondary_ips: 10 }, PoolAction::CreateEni { secondary_ips: 8 }]
        );
    }

    #[test]
    fn an_inhibited_pool_does_not_grow() {
        let now = Instant::now();
        let mut v = view(&[], 5, now);
        v.inhibit_until = Some(now + Duration::from_secs(30));
        assert!(plan(&v, TARGETS, LIMITS, COOLDOWN, now).is_empty());
        assert!(!plan(&v, TARGETS, LIMITS, COOLDOWN, now + Duration::from_secs(31)).is_empty());
    }

    #[test]
    fn a_full_eni_grows_on_the_next_eni() {
        let now = Instant::now();
        // eni-0 was refused more addresses at 6 (the cloud's limit is below the catalogue's 14).
        let mut v = view(&[(6, 6), (2, 2)], 3, now);
        v.enis[0].full = true;
        assert_eq!(plan(&v, TARGETS, LIMITS, COOLDOWN, now), vec![PoolAction::AssignIps { eni: "eni-1".into(), count: 5 }]);
        v.enis[1].full = true;
        assert_eq!(plan(&v, TARGETS, LIMITS, COOLDOWN, now), vec![PoolAction::CreateEni { secondary_ips: 5 }]);
    }

    #[test]
    fn at_the_instance_eni_limit_only_attached_enis_grow() {
        let now = Instant::now();
        let mut v = view(&[(12, 12)], 5, now);
        v.no_new_enis_until = Some(now + Duration::from_secs(30));
        assert_eq!(plan(&v, TARGETS, LIMITS, COOLDOWN, now), vec![PoolAction::AssignIps { eni: "eni-0".into(), count: 2 }]);
        assert_eq!(plan(&v, TARGETS, LIMITS, COOLDOWN, now + Duration::from_secs(31)).len(), 2);
    }

    #[test]
    fn surplus_goes_after_the_cooldown_whole_enis_first() {
        let now = Instant::now();
        let v = view(&[(5, 0), (10, 7)], 0, now);
        assert!(plan(&v, TARGETS, LIMITS, COOLDOWN, now).is_empty(), "not before the cool-down");
        let later = now + COOLDOWN;
        // idle 8, keep 6: the empty ENI holds 5, too many to delete whole; 2 of its IPs go, so it drains.
        assert_eq!(plan(&v, TARGETS, LIMITS, COOLDOWN, later), vec![PoolAction::UnassignIps { eni: "eni-0".into(), count: 2 }]);
        let v = view(&[(3, 0), (10, 2)], 0, now);
        // idle 11, keep 6: the empty ENI (3) goes whole, then 2 idle IPs.
        assert_eq!(
            plan(&v, TARGETS, LIMITS, COOLDOWN, later),
            vec![PoolAction::DeleteEni { eni: "eni-0".into() }, PoolAction::UnassignIps { eni: "eni-1".into(), count: 2 }]
        );
    }

    proptest! {
        #[test]
        fn plans_stay_within_quotas_and_never_touch_used_ips(
            enis in proptest::collection::vec((0u32..=14, 0u32..=14), 0..=3),
            waiting in 0u32..60,
            min_idle in 0u32..10,
            extra in 0u32..10,
            elapsed in 0u64..120,
        ) {
            let now = Instant::now();
            let enis: Vec<(u32, u32)> = enis.into_iter().map(|(a, u)| (a, u.min(a))).collect();
            let v = view(&enis, waiting, now);
            let targets = PoolTargets { min_idle, max_idle: min_idle + extra };
            let actions = plan(&v, targets, LIMITS, COOLDOWN, now + Duration::from_secs(elapsed));
            let mut assigned: Vec<u32> = v.enis.iter().map(|e| e.assigned).collect();
            let mut created = 0u32;
            let mut gained = 0u32;
            for a in &actions {
                match a {
                    PoolAction::AssignIps { eni, count } => {
                        prop_assert!(*count > 0 && *count <= MAX_IPS_PER_CALL);
                        let i: usize = eni.trim_start_matches("eni-").parse().unwrap();
                        assigned[i] += count;
                        prop_assert!(assigned[i] <= LIMITS.pod_ips_per_eni());
                        gained += count;
                    }
                    PoolAction::CreateEni { secondary_ips } => {
                        prop_assert!(*secondary_ips > 0 && *secondary_ips <= MAX_IPS_PER_CALL.min(LIMITS.pod_ips_per_eni()));
                        created += 1;
                        gained += secondary_ips;
                    }
                    PoolAction::UnassignIps { eni, count } => {
                        let e = v.enis.iter().find(|e| &e.id == eni).unwrap();
                        prop_assert!(*count <= e.idle(), "never unassigns an IP a pod holds");
                    }
                    PoolAction::DeleteEni { eni } => {
                        let e = v.enis.iter().find(|e| &e.id == eni).unwrap();
                        prop_assert_eq!(e.in_use, 0, "never deletes an ENI a pod uses");
                    }
                }
            }
            prop_assert!(v.enis.len() as u32 + created <= LIMITS.max_secondary_enis());
            // Growing asks for all that is missing, up to what one round of calls can add: the room
            // on attached ENIs plus one create call (at most MAX_IPS_PER_CALL) per ENI the type still allows.
            let room: u32 = v.enis.iter().map(|e| LIMITS.pod_ips_per_eni() - e.assigned).sum();
            let new_enis = LIMITS.max_secondary_enis() - v.enis.len() as u32;
            let one_round = room + new_enis * LIMITS.pod_ips_per_eni().min(MAX_IPS_PER_CALL);
            let want = waiting + min_idle;
            if v.idle() < want {
                prop_assert_eq!(gained, (want - v.idle()).min(one_round));
            }
        }
    }
}
