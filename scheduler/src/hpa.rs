//! The horizontal pod autoscaler's algorithm as pure logic (Kubernetes' replica calculator and
//! its behaviour normalisation): what one metric recommends, then the stabilisation window and
//! the rate policies that bound a change. The controller around it (`Cluster::reconcile_hpas`)
//! gathers the pods' samples and scales the workload.

use berth_proto::cluster::v1 as pb;

/// A ratio this close to 1 changes nothing (Kubernetes' default `--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;

/// One pod of the target as a metric sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodSample {
    /// Running (a pod pending, bound or starting is "unready": it has no sample to trust yet).
    pub running: bool,
    /// Its value in thousandths of the metric's unit (CPU: millicores), if its node measured it.
    pub value_milli: Option<u64>,
    /// Its CPU request in millicores (utilisation targets only).
    pub request_milli: u64,
}

/// What a metric aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Percent of the pods' request, averaged over the pods.
    Utilization(u32),
    /// A value per pod (thousandths).
    AverageValue(u64),
    /// A value for the whole workload (external metrics, thousandths).
    Value(u64),
}

/// What one metric recommends, and the value it read (thousandths; utilisation in percent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recommendation {
    pub replicas: u32,
    pub current_milli: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    #[error("no Running pod of the target has a sample yet")]
    NoSamples,
    #[error("the target's pods request no CPU: a utilisation target needs spec.cpu_millicores")]
    NoRequest,
    #[error("no value was set for it (berthctl metric set)")]
    NoExternalValue,
}

fn ceil_u32(x: f64) -> u32 {
    if x <= 0.0 { 0 } else if x >= f64::from(u32::MAX) { u32::MAX } else { x.ceil() as u32 }
}

/// The ratio of the mean over the target: (usage / request × 100) / utilisation, or mean / value.
fn usage_ratio(samples: &[(u64, u64)], target: Target) -> Result<(f64, u64), MetricError> {
    let sum: u64 = samples.iter().map(|s| s.0).sum();
    match target {
        Target::Utilization(percent) => {
            let requests: u64 = samples.iter().map(|s| s.1).sum();
            if requests == 0 {
                return Err(MetricError::NoRequest);
            }
            let utilization = sum as f64 * 100.0 / requests as f64;
            Ok((utilization / f64::from(percent.max(1)), (utilization * 1000.0) as u64))
        }
        Target::AverageValue(v) | Target::Value(v) => {
            let mean = sum as f64 / samples.len().max(1) as f64;
            Ok((mean / v.max(1) as f64, mean as u64))
        }
    }
}

/// Kubernetes' replica count for a per-pod metric (utilisation or average value). Pods not
/// Running are ignored on a scale-down and taken as using 0 on a scale-up; Running pods without
/// a sample are taken as using 0 on a scale-up and the target (100 % of their request for a
/// utilisation target) on a scale-down; a change the assumptions reverse or bring within the
/// tolerance is no change.
pub fn pod_metric_replicas(current: u32, pods: &[PodSample], target: Target) -> Result<Recommendation, MetricError> {
    let measured: Vec<(u64, u64)> = pods.iter().filter(|p| p.running).filter_map(|p| p.value_milli.map(|v| (v, p.request_milli))).collect();
    if measured.is_empty() {
        return Err(MetricError::NoSamples);
    }
    let missing: Vec<u64> = pods.iter().filter(|p| p.running && p.value_milli.is_none()).map(|p| p.request_milli).collect();
    let unready: Vec<u64> = pods.iter().filter(|p| !p.running).map(|p| p.request_milli).collect();
    let (ratio, current_milli) = usage_ratio(&measured, target)?;
    let within = |r: f64| (r - 1.0).abs() <= TOLERANCE;
    if missing.is_empty() && unready.is_empty() {
        let replicas = if within(ratio) { current } else { ceil_u32(ratio * measured.len() as f64) };
        return Ok(Recommendation { replicas, current_milli });
    }
    let mut assumed = measured.clone();
    let at_target = |request: u64| match target {
        Target::Utilization(percent) => request * u64::from(percent) / 100,
        Target::AverageValue(v) | Target::Value(v) => v,
    };
    if ratio < 1.0 {
        // Scale-down: a pod without a sample might be at its target; unready pods are left out.
        assumed.extend(missing.iter().map(|&r| (match target { Target::Utilization(_) => r, _ => at_target(r) }, r)));
    } else {
        assumed.extend(missing.iter().chain(unready.iter()).map(|&r| (0, r)));
    }
    let (new_ratio, _) = usage_ratio(&assumed, target)?;
    if within(new_ratio) || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
        return Ok(Recommendation { replicas: current, current_milli });
    }
    let replicas = ceil_u32(new_ratio * assumed.len() as f64);
    let reversed = (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current);
    Ok(Recommendation { replicas: if reversed { current } else { replicas }, current_milli })
}

/// Kubernetes' replica count for an external metric: a Value target scales the Running pods by
/// value / target, an AverageValue target divides the value among pods.
pub fn external_replicas(current: u32, running: u32, value_milli: u64, target: Target) -> Recommendation {
    let (ratio, replicas) = match target {
        Target::AverageValue(per_pod) => {
            let per_pod = per_pod.max(1) as f64;
            (value_milli as f64 / (per_pod * f64::from(current.max(1))), ceil_u32(value_milli as f64 / per_pod))
        }
        Target::Value(v) => {
            let ratio = value_milli as f64 / v.max(1) as f64;
            (ratio, ceil_u32(ratio * f64::from(running)))
        }
        Target::Utilization(_) => (1.0, current),
    };
    let replicas = if (ratio - 1.0).abs() <= TOLERANCE { current } else { replicas };
    Recommendation { replicas, current_milli: value_milli }
}

/// A rate policy: at most `value` pods or percent of change per `period_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Pods { value: u32, period_secs: u32 },
    Percent { value: u32, period_secs: u32 },
}

impl Policy {
    fn period_ms(&self) -> u64 {
        let (Policy::Pods { period_secs, .. } | Policy::Percent { period_secs, .. }) = self;
        u64::from(*period_secs) * 1000
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

/// One direction's rules (Kubernetes' HPAScalingRules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub window_secs: u32,
    pub select: Select,
    pub policies: Vec<Policy>,
}

impl Rules {
    /// Kubernetes' defaults for scaling up: no window; 4 pods or 100 % per 15 s, the larger.
    pub fn default_up() -> Rules {
        Rules { window_secs: 0, select: Select::Max, policies: vec![Policy::Pods { value: 4, period_secs: 15 }, Policy::Percent { value: 100, period_secs: 15 }] }
    }

    /// Kubernetes' defaults for scaling down: a 300 s window; 100 % per 15 s.
    pub fn default_down() -> Rules {
        Rules { window_secs: 300, select: Select::Max, policies: vec![Policy::Percent { value: 100, period_secs: 15 }] }
    }

    /// The rules an HPA's message gives, defaults filled in as Kubernetes does.
    pub fn of(msg: Option<&pb::ScalingRules>, up: bool) -> Rules {
        let mut rules = if up { Rules::default_up() } else { Rules::default_down() };
        let Some(m) = msg else { return rules };
        if let Some(w) = m.stabilization_window_secs {
            rules.window_secs = w;
        }
        rules.select = match pb::SelectPolicy::try_from(m.select_policy) {
            Ok(pb::SelectPolicy::Min) => Select::Min,
            Ok(pb::SelectPolicy::Disabled) => Select::Disabled,
            _ => Select::Max,
        };
        if !m.policies.is_empty() {
            rules.policies = m
                .policies
                .iter()
                .map(|p| match pb::ScalingPolicyKind::try_from(p.kind) {
                    Ok(pb::ScalingPolicyKind::Percent) => Policy::Percent { value: p.value, period_secs: p.period_secs },
                    _ => Policy::Pods { value: p.value, period_secs: p.period_secs },
                })
                .collect();
        }
        rules
    }
}

/// A scale the HPA made: when, and by how many pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleEvent {
    pub at_ms: u64,
    pub change: u32,
}

/// What an HPA remembers between rounds (in memory, as Kubernetes' controller does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// (when, replicas) recommendations before stabilisation.
    pub recommendations: Vec<(u64, u32)>,
    pub up: Vec<ScaleEvent>,
    pub down: Vec<ScaleEvent>,
}

impl History {
    /// Records a scale from `from` to `to` and forgets what no window or period still counts.
    pub fn record_scale(&mut self, from: u32, to: u32, now_ms: u64, up: &Rules, down: &Rules) {
        match to.cmp(&from) {
            std::cmp::Ordering::Greater => self.up.push(ScaleEvent { at_ms: now_ms, change: to - from }),
            std::cmp::Ordering::Less => self.down.push(ScaleEvent { at_ms: now_ms, change: from - to }),
            std::cmp::Ordering::Equal => {}
        }
        let longest = |r: &Rules| r.policies.iter().map(Policy::period_ms).max().unwrap_or(0);
        let (up_ms, down_ms) = (longest(up), longest(down));
        self.up.retain(|e| e.at_ms + up_ms > now_ms);
        self.down.retain(|e| e.at_ms + down_ms > now_ms);
    }
}

fn changed_within(events: &[ScaleEvent], period_ms: u64, now_ms: u64) -> u32 {
    events.iter().filter(|e| e.at_ms + period_ms > now_ms).map(|e| e.change).sum()
}

/// The most replicas the up policies allow now (Kubernetes' calculateScaleUpLimitWithScalingRules).
fn scale_up_limit(current: u32, h: &History, rules: &Rules, now_ms: u64) -> u32 {
    let mut result: Option<u32> = None;
    if rules.select == Select::Disabled {
        return current;
    }
    for p in &rules.policies {
        let start = (u64::from(current) + u64::from(changed_within(&h.down, p.period_ms(), now_ms))).saturating_sub(u64::from(changed_within(&h.up, p.period_ms(), now_ms)));
        let proposed = match *p {
            Policy::Pods { value, .. } => start + u64::from(value),
            Policy::Percent { value, .. } => (start as f64 * (1.0 + f64::from(value) / 100.0)).ceil() as u64,
        };
        let proposed = u32::try_from(proposed).unwrap_or(u32::MAX);
        result = Some(match (result, rules.select) {
            (None, _) => proposed,
            (Some(r), Select::Min) => r.min(proposed),
            (Some(r), _) => r.max(proposed),
        });
    }
    result.unwrap_or(current)
}

/// The fewest replicas the down policies allow now.
fn scale_down_limit(current: u32, h: &History, rules: &Rules, now_ms: u64) -> u32 {
    let mut result: Option<u32> = None;
    if rules.select == Select::Disabled {
        return current;
    }
    for p in &rules.policies {
        let start = (u64::from(current) + u64::from(changed_within(&h.down, p.period_ms(), now_ms))).saturating_sub(u64::from(changed_within(&h.up, p.period_ms(), now_ms)));
        let proposed = match *p {
            Policy::Pods { value, .. } => start.saturating_sub(u64::from(value)),
            Policy::Percent { value, .. } => (start as f64 * (1.0 - f64::from(value.min(100)) / 100.0)) as u64,
        };
        let proposed = u32::try_from(proposed).unwrap_or(u32::MAX);
        result = Some(match (result, rules.select) {
            (None, _) => proposed,
            (Some(r), Select::Min) => r.max(proposed),
            (Some(r), _) => r.min(proposed),
        });
    }
    result.unwrap_or(current)
}

/// Why the replicas an HPA sets differ from what its metrics asked, if they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Within,
    TooManyReplicas,
    TooFewReplicas,
    ScaleUpLimit,
    ScaleDownLimit,
}

impl Limit {
    pub fn reason(self) -> &'static str {
        match self {
            Limit::Within => "DesiredWithinRange",
            Limit::TooManyReplicas => "TooManyReplicas",
            Limit::TooFewReplicas => "TooFewReplicas",
            Limit::ScaleUpLimit => "ScaleUpLimit",
            Limit::ScaleDownLimit => "ScaleDownLimit",
        }
    }
}

/// The replicas to set from the metrics' (largest) recommendation: stabilised (the lowest
/// recommendation of the up window, the highest of the down window, both counting this one),
/// then held to the rate policies and to [min, max]. The recommendation joins the history.
pub fn normalize(current: u32, recommended: u32, (min, max): (u32, u32), up: &Rules, down: &Rules, h: &mut History, now_ms: u64) -> (u32, Limit) {
    let (up_ms, down_ms) = (u64::from(up.window_secs) * 1000, u64::from(down.window_secs) * 1000);
    let (mut up_rec, mut down_rec) = (recommended, recommended);
    for &(at, r) in &h.recommendations {
        if at + up_ms > now_ms {
            up_rec = up_rec.min(r);
        }
        if at + down_ms > now_ms {
            down_rec = down_rec.max(r);
        }
    }
    let keep = u64::from(up.window_secs.max(down.window_secs)) * 1000;
    h.recommendations.retain(|&(at, _)| at + keep > now_ms);
    h.recommendations.push((now_ms, recommended));
    let stabilized = current.max(up_rec).min(down_rec);

    let min = min.max(1);
    if stabilized > current {
        let limit = scale_up_limit(current, h, up, now_ms).max(current);
        let (allowed, why) = if max > limit { (limit, Limit::ScaleUpLimit) } else { (max, Limit::TooManyReplicas) };
        if stabilized > allowed {
            return (allowed, why);
        }
    } else if stabilized < current {
        let limit = scale_down_limit(current, h, down, now_ms).min(current);
        let (allowed, why) = if min < limit { (limit, Limit::ScaleDownLimit) } else { (min, Limit::TooFewReplicas) };
        if stabilized < allowed {
            return (allowed, why);
        }
    }
    (stabilized, Limit::Within)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn running(v: u64, request: u64) -> PodSample {
        PodSample { running: true, value_milli: Some(v), request_milli: request }
    }

    #[test]
    fn utilisation_over_target_scales_by_the_ratio_rounded_up() {
        // 3 pods at 90 % of 500m against 50 %: ceil(3 × 1.8) = 6.
        let pods = vec![running(450, 500); 3];
        let r = pod_metric_replicas(3, &pods, Target::Utilization(50)).unwrap();
        assert_eq!(r, Recommendation { replicas: 6, current_milli: 90_000 });
    }

    #[test]
    fn a_ratio_within_the_tolerance_changes_nothing() {
        let pods = vec![running(270, 500); 4]; // 54 % against 50 %: ratio 1.08
        assert_eq!(pod_metric_replicas(4, &pods, Target::Utilization(50)).unwrap().replicas, 4);
        let pods = vec![running(280, 500); 4]; // 56 %: ratio 1.12
        assert_eq!(pod_metric_replicas(4, &pods, Target::Utilization(50)).unwrap().replicas, 5);
    }

    #[test]
    fn pods_without_samples_are_assumed_idle_on_scale_up_and_at_their_request_on_scale_down() {
        // Scale-up: 2 hot pods (100 %), 2 without a sample taken as 0: ratio (200/4)/50 = 1 → no change.
        let mut pods = vec![running(500, 500); 2];
        pods.extend([PodSample { running: true, value_milli: None, request_milli: 500 }; 2]);
        assert_eq!(pod_metric_replicas(4, &pods, Target::Utilization(50)).unwrap().replicas, 4);
        // Scale-down: 2 idle pods, 2 without a sample taken as 100 %: ratio (200/4)/50 = 1 → no change.
        let mut pods = vec![running(0, 500); 2];
        pods.extend([PodSample { running: true, value_milli: None, request_milli: 500 }; 2]);
        assert_eq!(pod_metric_replicas(4, &pods, Target::Utilization(50)).unwrap().replicas, 4);
    }

    #[test]
    fn unready_pods_count_as_idle_on_scale_up_and_are_left_out_of_a_scale_down() {
        // 2 Running at 200 %, 2 pending: (400 + 0 + 0) / 4 = 100 % → ratio 2 → 8.
        let mut pods = vec![running(1000, 500); 2];
        pods.extend([PodSample { running: false, value_milli: None, request_milli: 500 }; 2]);
        assert_eq!(pod_metric_replicas(4, &pods, Target::Utilization(50)).unwrap().replicas, 8);
        // 2 Running at 10 %, 1 pending: only the two count: ceil(2 × 0.2) = 1.
        let mut pods = vec![running(50, 500); 2];
        pods.push(PodSample { running: false, value_milli: None, request_milli: 500 });
        assert_eq!(pod_metric_replicas(3, &pods, Target::Utilization(50)).unwrap().replicas, 1);
    }

    #[test]
    fn a_metric_without_any_sample_or_request_is_an_error() {
        assert_eq!(pod_metric_replicas(2, &[PodSample { running: true, value_milli: None, request_milli: 1 }], Target::Utilization(50)), Err(MetricError::NoSamples));
        assert_eq!(pod_metric_replicas(2, &[running(10, 0)], Target::Utilization(50)), Err(MetricError::NoRequest));
    }

    #[test]
    fn traffic_per_pod_against_an_average_value() {
        // 2 pods at 3 MB/s each against 1 MB/s: 6.
        let pods = vec![running(3_000_000_000, 0); 2];
        assert_eq!(pod_metric_replicas(2, &pods, Target::AverageValue(1_000_000_000)).unwrap().replicas, 6);
    }

    #[test]
    fn external_values_scale_the_running_pods_or_divide_among_them() {
        assert_eq!(external_replicas(2, 2, 300_000, Target::Value(100_000)).replicas, 6);
        assert_eq!(external_replicas(2, 2, 105_000, Target::Value(100_000)).replicas, 2);
        assert_eq!(external_replicas(2, 2, 1_000_000, Target::AverageValue(100_000)).replicas, 10);
    }

    #[test]
    fn scale_down_waits_for_the_window_to_forget_higher_recommendations() {
        let (up, down) = (Rules::default_up(), Rules { window_secs: 60, ..Rules::default_down() });
        let mut h = History::default();
        assert_eq!(normalize(2, 6, (1, 10), &up, &down, &mut h, 0), (6, Limit::Within));
        // The load went: 1 is recommended, but 6 was within the last 60 s.
        assert_eq!(normalize(6, 1, (1, 10), &up, &down, &mut h, 30_000).0, 6);
        assert_eq!(normalize(6, 1, (1, 10), &up, &down, &mut h, 59_000).0, 6);
        assert_eq!(normalize(6, 1, (1, 10), &up, &down, &mut h, 61_000).0, 1);
    }

    #[test]
    fn rate_policies_bound_a_scale_up_per_period() {
        let up = Rules { window_secs: 0, select: Select::Max, policies: vec![Policy::Pods { value: 2, period_secs: 60 }] };
        let down = Rules::default_down();
        let mut h = History::default();
        assert_eq!(normalize(2, 10, (1, 20), &up, &down, &mut h, 0), (4, Limit::ScaleUpLimit));
        h.record_scale(2, 4, 0, &up, &down);
        // Within the same minute, 2 were already added: no more.
        assert_eq!(normalize(4, 10, (1, 20), &up, &down, &mut h, 30_000), (4, Limit::ScaleUpLimit));
        assert_eq!(normalize(4, 10, (1, 20), &up, &down, &mut h, 61_000), (6, Limit::ScaleUpLimit));
        // A disabled direction never moves.
        let off = Rules { select: Select::Disabled, ..up };
        assert_eq!(normalize(4, 10, (1, 20), &off, &down, &mut History::default(), 0).0, 4);
    }

    #[test]
    fn select_min_takes_the_policy_of_the_smallest_change() {
        let up = Rules { window_secs: 0, select: Select::Min, policies: vec![Policy::Pods { value: 4, period_secs: 15 }, Policy::Percent { value: 50, period_secs: 15 }] };
        assert_eq!(normalize(10, 40, (1, 100), &up, &Rules::default_down(), &mut History::default(), 0).0, 14);
        let up = Rules { select: Select::Max, ..up };
        assert_eq!(normalize(10, 40, (1, 100), &up, &Rules::default_down(), &mut History::default(), 0).0, 15);
    }

    #[test]
    fn min_and_max_bound_the_result() {
        let (up, down) = (Rules::default_up(), Rules { window_secs: 0, ..Rules::default_down() });
        assert_eq!(normalize(3, 8, (1, 5), &up, &down, &mut History::default(), 0), (5, Limit::TooManyReplicas));
        assert_eq!(normalize(3, 0, (2, 5), &up, &down, &mut History::default(), 0), (2, Limit::TooFewReplicas));
    }

    proptest! {
        #[test]
        fn results_stay_in_bounds_and_honour_the_tolerance_and_the_window(
            current in 1u32..50, min in 1u32..10, span in 0u32..40,
            usage in proptest::collection::vec(0u64..2000, 1..30), percent in 10u32..150,
            steps in proptest::collection::vec((0u32..80, 1u64..40_000), 1..20),
        ) {
            let max = min + span;
            let current = current.clamp(min, max);
            // Pods near the target: within the tolerance the count never changes.
            let near: Vec<PodSample> = (0..usage.len()).map(|i| running((500.0 * f64::from(percent) / 100.0 * (0.91 + 0.18 * (i % 7) as f64 / 6.0)).round() as u64, 500)).collect();
            let near_mean = near.iter().map(|p| p.value_milli.unwrap()).sum::<u64>() as f64 * 100.0 / (500.0 * near.len() as f64);
            if ((near_mean / f64::from(percent)) - 1.0).abs() <= TOLERANCE {
                prop_assert_eq!(pod_metric_replicas(current, &near, Target::Utilization(percent)).unwrap().replicas, current);
            }
            let pods: Vec<PodSample> = usage.iter().map(|&u| running(u, 500)).collect();
            let r = pod_metric_replicas(current, &pods, Target::Utilization(percent)).unwrap();
            let mean = usage.iter().sum::<u64>() as f64 * 100.0 / (500.0 * usage.len() as f64);
            if ((mean / f64::from(percent)) - 1.0).abs() <= TOLERANCE {
                prop_assert_eq!(r.replicas, current);
            }
            let (up, down) = (Rules::default_up(), Rules { window_secs: 30, ..Rules::default_down() });
            let mut h = History::default();
            let mut replicas = current;
            let mut now = 0u64;
            for (recommended, dt) in steps {
                now += dt;
                let before = h.recommendations.clone();
                let (next, _) = normalize(replicas, recommended, (min, max), &up, &down, &mut h, now);
                prop_assert!(next >= min && next <= max, "{} outside [{}, {}]", next, min, max);
                if next < replicas {
                    // Never below a recommendation of the last 30 s.
                    let floor = before.iter().filter(|(at, _)| at + 30_000 > now).map(|r| r.1).max().unwrap_or(0).max(recommended);
                    prop_assert!(next >= floor.min(replicas).max(min), "{} below {} within the window", next, floor);
                }
                h.record_scale(replicas, next, now, &up, &down);
                replicas = next;
            }
        }
    }
}
