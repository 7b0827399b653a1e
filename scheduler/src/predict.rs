//! Predictive pre-scaling as pure logic (issue 20, item 5): a workload's replica history sampled
//! at a fixed step and kept for a bounded number of periods (days), and a predictor that reads
//! the replicas needed ahead of time from the same time on earlier periods plus their trend.
//!
//! The prediction is a floor: the controller raises the HPA's minReplicas to it, as a CronHPA job
//! does, so the larger of the prediction, the cron size and the HPA's own count wins. Because a
//! floor that is too low costs latency while one that is too high only costs pods until the HPA
//! scales in, the periodic part takes the largest of the earlier periods at that time, and the
//! trend can only raise it.

use std::collections::VecDeque;

use berth_proto::cluster::v1 as pb;

/// How a workload's history is sampled and read, and how far ahead it acts (checked at the API
/// edge by `validation::hpa`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// One sample per this many milliseconds (a minute by default).
    pub step_ms: u64,
    /// The length of the pattern that repeats (a day by default; a few seconds in tests): a
    /// whole number, at least 2, of steps.
    pub period_ms: u64,
    /// How many earlier periods the prediction reads, and the history keeps (plus the current one).
    pub periods: u32,
    /// How far ahead the floor is raised: the pool's node boot time plus the margin.
    pub lead_ms: u64,
    /// How long after the predicted step the raised floor (and the grown warm pools) is held.
    pub margin_ms: u64,
}

pub const DEFAULT_STEP_MS: u64 = 60_000;
pub const DEFAULT_PERIOD_MS: u64 = 86_400_000;
pub const DEFAULT_PERIODS: u32 = 7;
/// At most this many earlier periods are read (and kept): eight weeks of days.
pub const MAX_PERIODS: u32 = 56;

impl Spec {
    /// An HPA's prediction with its zero fields at their defaults.
    pub fn of(p: &pb::Prediction) -> Spec {
        let or = |v: u64, d: u64| if v == 0 { d } else { v };
        Spec {
            step_ms: or(p.step_ms, DEFAULT_STEP_MS),
            period_ms: or(p.period_ms, DEFAULT_PERIOD_MS),
            periods: if p.periods == 0 { DEFAULT_PERIODS } else { p.periods },
            lead_ms: p.boot_ms.saturating_add(p.margin_ms),
            margin_ms: p.margin_ms,
        }
    }

    /// How long samples are kept: the periods read plus the current one.
    pub fn keep_ms(&self) -> u64 {
        self.period_ms.saturating_mul(u64::from(self.periods) + 1)
    }
}

/// The store keeps a history in chunks of this many steps, one key each.
pub const CHUNK_STEPS: u64 = 60;

/// One sample: the workload's replicas and what its HPA wanted, in the step starting at `slot × step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub slot: u64,
    pub replicas: u32,
    pub desired: u32,
}

impl Sample {
    /// The demand the sample shows: the larger of what ran and what the HPA asked for.
    pub fn demand(&self) -> u32 {
        self.replicas.max(self.desired)
    }
}

/// A workload's samples, oldest first, one per step at most, none older than `Spec::keep_ms`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Records what the workload ran and its HPA wanted at `now_ms`. Within one step the largest
    /// of each is kept (a short spike is demand too); samples older than the kept periods go.
    /// Returns the step's sample when it is new or changed (what the store writes).
    pub fn record(&mut self, spec: &Spec, now_ms: u64, replicas: u32, desired: u32) -> Option<Sample> {
        let changed = self.put(Sample { slot: now_ms / spec.step_ms, replicas, desired });
        self.compact(spec, now_ms);
        changed
    }

    /// Merges a sample in (the largest of each count within its step); Some when that changed it.
    pub fn put(&mut self, s: Sample) -> Option<Sample> {
        match self.samples.binary_search_by_key(&s.slot, |x| x.slot) {
            Ok(i) => {
                let x = &mut self.samples[i];
                let merged = Sample { slot: s.slot, replicas: x.replicas.max(s.replicas), desired: x.desired.max(s.desired) };
                (merged != *x).then(|| {
                    *x = merged;
                    merged
                })
            }
            Err(i) => {
                self.samples.insert(i, s);
                Some(s)
            }
        }
    }

    /// The samples of one chunk of [`CHUNK_STEPS`] steps (as the store keeps them).
    pub fn chunk(&self, chunk: u64) -> impl Iterator<Item = &Sample> {
        let start = self.samples.partition_point(|s| s.slot < chunk * CHUNK_STEPS);
        self.samples.iter().skip(start).take_while(move |s| s.slot / CHUNK_STEPS == chunk)
    }

    /// The chunk of the oldest sample kept: every chunk below it is gone (None: no sample).
    pub fn oldest_chunk(&self) -> Option<u64> {
        self.samples.front().map(|s| s.slot / CHUNK_STEPS)
    }

    /// Drops the samples older than the kept periods.
    pub fn compact(&mut self, spec: &Spec, now_ms: u64) {
        let oldest = now_ms.saturating_sub(spec.keep_ms()) / spec.step_ms;
        while self.samples.front().is_some_and(|s| s.slot < oldest) {
            self.samples.pop_front();
        }
    }

    /// The demand around `slot`: the largest in the step before, the step and the step after
    /// (so a pattern that drifts by a step still counts), or None when none was sampled.
    fn demand_near(&self, slot: u64) -> Option<u32> {
        let from = slot.saturating_sub(1);
        let start = self.samples.partition_point(|s| s.slot < from);
        self.samples.iter().skip(start).take_while(|s| s.slot <= slot + 1).map(Sample::demand).max()
    }
}

/// The replicas the history predicts for the step holding `at_ms`, or None when no earlier
/// period has a sample near that time. With `v1` the demand at that time one period earlier,
/// `v2` two periods earlier, and so on over `spec.periods`: the larger of the largest `vd` and
/// `v1` plus the least-squares slope per period of the `vd` (the trend, when it rises).
pub fn predict_at(spec: &Spec, history: &History, at_ms: u64) -> Option<u32> {
    let slot = at_ms / spec.step_ms;
    let per = spec.period_ms / spec.step_ms;
    // (periods ago, demand), nearest first.
    let seen: Vec<(u64, f64)> = (1..=u64::from(spec.periods))
        .filter_map(|d| slot.checked_sub(d * per).map(|s| (d, s)))
        .filter_map(|(d, s)| history.demand_near(s).map(|v| (d, f64::from(v))))
        .collect();
    let largest = seen.iter().map(|p| p.1).fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))?;
    let trended = match seen.as_slice() {
        [(1, v1), _, ..] => {
            // Against time running forward: x = -d.
            let n = seen.len() as f64;
            let mx = seen.iter().map(|p| -(p.0 as f64)).sum::<f64>() / n;
            let my = seen.iter().map(|p| p.1).sum::<f64>() / n;
            let sxx: f64 = seen.iter().map(|p| (-(p.0 as f64) - mx).powi(2)).sum();
            let sxy: f64 = seen.iter().map(|p| (-(p.0 as f64) - mx) * (p.1 - my)).sum();
            v1 + sxy / sxx
        }
        _ => largest,
    };
    Some(largest.max(trended).max(0.0).ceil().min(f64::from(u32::MAX)) as u32)
}

/// The largest prediction over `[now_ms, now_ms + lead_ms]`, and the time of the step it is
/// for: raised to it now, the workload's pods are Running when that demand arrives, however far
/// within the lead it is.
pub fn needed_within(spec: &Spec, history: &History, now_ms: u64, lead_ms: u64) -> Option<(u32, u64)> {
    let first = now_ms / spec.step_ms;
    let last = now_ms.saturating_add(lead_ms) / spec.step_ms;
    (first..=last)
        .filter_map(|slot| predict_at(spec, history, slot * spec.step_ms).map(|n| (n, slot * spec.step_ms)))
        .fold(None, |best: Option<(u32, u64)>, (n, at)| match best {
            Some((b, _)) if b >= n => best,
            _ => Some((n, at)),
        })
}

/// What the controller does for one predictive workload now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The floor for the HPA's minReplicas (or the workload's replicas without an HPA).
    pub floor: u32,
    /// How many pods beyond the current count the floor brings: the warm IPs / ENIs to grow ahead.
    pub extra: u32,
    /// Until when the warm pools stay grown: the predicted step's end plus the margin.
    pub deadline_ms: u64,
}

/// The plan for a workload with `current` replicas: None when the history predicts nothing
/// above what runs within the lead time.
pub fn plan(spec: &Spec, history: &History, now_ms: u64, current: u32) -> Option<Plan> {
    let (floor, at) = needed_within(spec, history, now_ms, spec.lead_ms)?;
    (floor > current).then(|| Plan { floor, extra: floor - current, deadline_ms: at + spec.step_ms + spec.margin_ms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SPEC: Spec = Spec { step_ms: 1000, period_ms: 60_000, periods: 3, lead_ms: 9_000, margin_ms: 2_000 };

    /// A day of 60 steps at 2 replicas with a spike to `peak` in steps 40..45, over `days` days.
    fn daily(days: u64, peak: impl Fn(u64) -> u32) -> History {
        let mut h = History::default();
        for day in 0..days {
            for step in 0..60 {
                let at = day * SPEC.period_ms + step * SPEC.step_ms;
                let n = if (40..45).contains(&step) { peak(day) } else { 2 };
                h.record(&SPEC, at, n, n);
            }
        }
        h
    }

    #[test]
    fn zero_fields_take_the_defaults_and_the_lead_is_boot_plus_margin() {
        let s = Spec::of(&pb::Prediction { boot_ms: 7_000, margin_ms: 2_000, ..Default::default() });
        assert_eq!(s, Spec { step_ms: 60_000, period_ms: 86_400_000, periods: 7, lead_ms: 9_000, margin_ms: 2_000 });
        assert_eq!(s.keep_ms(), 8 * 86_400_000);
    }

    #[test]
    fn one_sample_per_step_keeps_the_largest_and_old_periods_are_dropped() {
        let mut h = History::default();
        assert_eq!(h.record(&SPEC, 10_100, 3, 5), Some(Sample { slot: 10, replicas: 3, desired: 5 }));
        assert_eq!(h.record(&SPEC, 10_900, 4, 1), Some(Sample { slot: 10, replicas: 4, desired: 5 }));
        // Nothing larger: nothing to store.
        assert_eq!(h.record(&SPEC, 10_950, 2, 5), None);
        assert_eq!(h.len(), 1);
        // Kept: three earlier periods plus the current one (240 s).
        h.record(&SPEC, 250_000, 1, 1);
        assert_eq!(h.samples().map(|s| s.slot).collect::<Vec<_>>(), vec![10, 250]);
        h.record(&SPEC, 251_000, 1, 1);
        assert_eq!(h.samples().map(|s| s.slot).collect::<Vec<_>>(), vec![250, 251]);
        assert_eq!(h.oldest_chunk(), Some(4));
        assert_eq!(h.chunk(4).map(|s| s.slot).collect::<Vec<_>>(), vec![250, 251]);
        assert_eq!(h.chunk(3).count(), 0);
    }

    #[test]
    fn history_rebuilt_from_stored_samples_is_the_same_whatever_their_order() {
        let h = daily(2, |_| 9);
        let mut stored: Vec<Sample> = h.samples().copied().collect();
        stored.reverse();
        let mut back = History::default();
        for s in stored {
            back.put(s);
        }
        assert_eq!(back, h);
    }

    #[test]
    fn the_same_time_on_earlier_days_predicts_the_spike_and_nothing_else() {
        let h = daily(3, |_| 10);
        let day3 = 3 * SPEC.period_ms;
        assert_eq!(predict_at(&SPEC, &h, day3 + 42_000), Some(10));
        assert_eq!(predict_at(&SPEC, &h, day3 + 20_000), Some(2));
        // A step before the spike sees it through the one-step tolerance, two steps do not.
        assert_eq!(predict_at(&SPEC, &h, day3 + 39_000), Some(10));
        assert_eq!(predict_at(&SPEC, &h, day3 + 38_000), Some(2));
    }

    #[test]
    fn a_rising_trend_raises_the_prediction_past_every_earlier_day() {
        // Spikes of 6, 8, 10: the next is 12.
        let h = daily(3, |d| 6 + 2 * d as u32);
        assert_eq!(predict_at(&SPEC, &h, 3 * SPEC.period_ms + 42_000), Some(12));
        // A falling trend keeps the largest earlier day.
        let h = daily(3, |d| 10 - 2 * d as u32);
        assert_eq!(predict_at(&SPEC, &h, 3 * SPEC.period_ms + 42_000), Some(10));
    }

    #[test]
    fn without_an_earlier_day_there_is_no_prediction() {
        let h = daily(1, |_| 10);
        assert_eq!(predict_at(&SPEC, &h, 30_000), None);
        assert_eq!(predict_at(&SPEC, &History::default(), 500_000), None);
        // Only the periods read count: day 0 is four days before day 4.
        assert_eq!(predict_at(&SPEC, &h, 4 * SPEC.period_ms + 42_000), None);
    }

    #[test]
    fn the_plan_raises_the_floor_a_lead_time_before_the_spike() {
        let h = daily(3, |_| 10);
        let day3 = 3 * SPEC.period_ms;
        // Lead 9 s, margin 2 s. 30 s before the spike's first step (40): nothing yet.
        assert_eq!(plan(&SPEC, &h, day3 + 25_000, 2), None);
        // 9 s before step 39 (which sees the spike): raised to 10, 8 beyond the 2 running.
        let p = plan(&SPEC, &h, day3 + 30_000, 2).unwrap();
        assert_eq!(p, Plan { floor: 10, extra: 8, deadline_ms: day3 + 39_000 + 1_000 + 2_000 });
        // Already at 10: nothing to do.
        assert_eq!(plan(&SPEC, &h, day3 + 30_000, 10), None);
    }

    proptest! {
        #[test]
        fn the_prediction_is_within_the_earlier_days_and_their_extrapolation(
            days in proptest::collection::vec(proptest::collection::vec(0u32..50, 60), 1..6),
            at in 0u64..60, periods in 1u32..5,
        ) {
            let spec = Spec { periods, ..SPEC };
            let mut h = History::default();
            for (d, day) in days.iter().enumerate() {
                for (s, &n) in day.iter().enumerate() {
                    h.record(&spec, d as u64 * spec.period_ms + s as u64 * spec.step_ms, n, 0);
                }
            }
            prop_assert!(h.len() <= (spec.keep_ms() / spec.step_ms + 1) as usize);
            let today = days.len() as u64;
            let at_ms = today * spec.period_ms + at * spec.step_ms;
            // The history's steps run on across days: the step before a day's first is the day before's last.
            let flat = days.concat();
            let near = |d: usize| { let i = d as u64 * 60 + at; (i.saturating_sub(1)..=i + 1).filter_map(|s| flat.get(s as usize)).copied().max().unwrap() };
            let read: Vec<u32> = (1..=periods as usize).filter(|&back| back <= days.len()).map(|back| near(days.len() - back)).collect();
            let got = predict_at(&spec, &h, at_ms);
            match read.iter().max() {
                None => prop_assert_eq!(got, None),
                Some(&largest) => {
                    let got = got.unwrap();
                    // Never under the largest earlier day; above it only by the rising trend,
                    // which is at most the largest day-over-day rise per day read.
                    prop_assert!(got >= largest);
                    prop_assert!(got <= largest + 50 * read.len() as u32);
                    if read.iter().all(|&v| v == largest) {
                        prop_assert_eq!(got, largest);
                    }
                }
            }
        }
    }
}
