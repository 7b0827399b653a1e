//! The pod autoscalers' controller: HorizontalPodAutoscalers read their workload's pods every
//! `hpa.interval_ms` and set its replicas ([`crate::hpa`]); cron autoscalers fire their jobs at
//! their schedules' times ([`crate::cron`]). As ACK's CronHPA does, a job whose workload has an
//! HPA sets that HPA's minReplicas (and maxReplicas when below) instead of the replicas, and the
//! HPA is evaluated at once: the larger of the two sizes wins. Without an HPA the job sets the
//! replicas. What the controller remembers (recommendations, scale events, jobs' next runs,
//! external metrics) is in memory, as in Kubernetes' controller: a new leader starts afresh.

use std::collections::{BTreeMap, HashMap};

use berth_proto::cluster::v1 as pb;
use pb::stored_autoscaler::Kind;

use crate::cron::{self, Schedule};
use crate::hpa::{self, History, PodSample, Rules, Target};
use crate::predict;
use crate::store::{Event, StoredAutoscaler};

/// A workload as the controller sees it: its replicas and its live pods.
#[derive(Debug, Clone, Default)]
pub struct TargetView {
    pub replicas: u32,
    pub pods: Vec<PodView>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PodView {
    pub running: bool,
    pub usage: Option<pb::PodUsage>,
    pub cpu_request: u64,
}

/// What one round asks of the cluster: workloads ("namespace/name") to set to a size, and the
/// events to store (autoscalers a cron job changed).
#[derive(Debug, Default)]
pub struct Round {
    pub scale: Vec<(String, u32)>,
    pub events: Vec<Event>,
}

#[derive(Debug, Default)]
struct HpaState {
    history: History,
    next_ms: u64,
    status: pb::HorizontalPodAutoscalerStatus,
    /// With a prediction: the workload's demand sampled every step, and the chunks of it stored.
    demand: predict::History,
    stored_chunks: std::collections::BTreeSet<u64>,
}

#[derive(Debug, Clone, Default)]
struct JobState {
    /// None once a run-once job ran, or when the schedule names no time within 5 years.
    next_run_ms: Option<u64>,
    last_run_ms: u64,
    message: String,
}

#[derive(Debug, Default)]
pub struct Autoscalers {
    /// By "namespace/name".
    pub hpas: BTreeMap<String, pb::HorizontalPodAutoscaler>,
    pub crons: BTreeMap<String, pb::CronHorizontalPodAutoscaler>,
    hpa_state: HashMap<String, HpaState>,
    /// Per cron autoscaler, its jobs' state in job order (absent until its first round).
    cron_state: HashMap<String, Vec<JobState>>,
    /// External metrics' values by "namespace/name" (SetExternalMetric), in thousandths.
    pub external: HashMap<String, u64>,
}

pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The store's key of an autoscaler: "hpa/namespace/name" or "cron/namespace/name".
pub fn store_key(kind: &Kind) -> String {
    match kind {
        Kind::Hpa(h) => format!("hpa/{}", key(&h.namespace, &h.name)),
        Kind::Cron(c) => format!("cron/{}", key(&c.namespace, &c.name)),
        Kind::History(r) => history_key(&key(&r.namespace, &r.name), r.chunk),
    }
}

fn history_key(hpa: &str, chunk: u64) -> String {
    format!("history/{hpa}/{chunk}")
}

/// The store's event for one chunk of an HPA's ("namespace/name") demand history.
fn history_event(hpa: &str, chunk: u64, demand: &predict::History) -> Event {
    let (namespace, name) = hpa.split_once('/').unwrap_or(("", hpa));
    let samples = demand.chunk(chunk).map(|s| pb::ReplicaSample { slot: s.slot, replicas: s.replicas, desired: s.desired }).collect();
    let kind = Kind::History(pb::ReplicaHistory { namespace: namespace.into(), name: name.into(), chunk, samples });
    Event::AutoscalerApplied { key: history_key(hpa, chunk), autoscaler: StoredAutoscaler::of(kind) }
}

fn condition(kind: &str, status: bool, reason: &str, message: String) -> pb::HpaCondition {
    pb::HpaCondition { kind: kind.into(), status, reason: reason.into(), message }
}

impl Autoscalers {
    /// Takes the autoscalers a store holds.
    pub fn restore(&mut self, stored: &BTreeMap<String, StoredAutoscaler>) -> Result<(), String> {
        for (k, s) in stored {
            match s.decode().map_err(|e| format!("autoscaler {k} in the store does not decode: {e}"))? {
                Kind::Hpa(h) => self.hpas.insert(key(&h.namespace, &h.name), h).map(|_| ()),
                Kind::Cron(c) => self.crons.insert(key(&c.namespace, &c.name), c).map(|_| ()),
                Kind::History(r) => {
                    self.restore_history(r);
                    None
                }
            };
        }
        Ok(())
    }

    /// A stored chunk of demand history, merged into its HPA's (a new leader reads the periods
    /// before it led from these).
    fn restore_history(&mut self, r: pb::ReplicaHistory) {
        let state = self.hpa_state.entry(key(&r.namespace, &r.name)).or_default();
        for s in r.samples {
            state.demand.put(predict::Sample { slot: s.slot, replicas: s.replicas, desired: s.desired });
        }
        state.stored_chunks.insert(r.chunk);
    }

    pub fn checkpoint(&self) -> BTreeMap<String, StoredAutoscaler> {
        let hpas = self.hpas.values().map(|h| Kind::Hpa(h.clone()));
        let crons = self.crons.values().map(|c| Kind::Cron(c.clone()));
        let mut out: BTreeMap<String, StoredAutoscaler> = hpas.chain(crons).map(|k| (store_key(&k), StoredAutoscaler::of(k))).collect();
        for (k, state) in self.hpa_state.iter().filter(|(k, _)| self.hpas.contains_key(*k)) {
            for &chunk in &state.stored_chunks {
                if let Event::AutoscalerApplied { key, autoscaler } = history_event(k, chunk, &state.demand) {
                    out.insert(key, autoscaler);
                }
            }
        }
        out
    }

    /// The HPA other than `name` that scales `namespace/target`, if any.
    pub fn hpa_of(&self, namespace: &str, target: &str, except: &str) -> Option<&pb::HorizontalPodAutoscaler> {
        self.hpas.values().find(|h| h.namespace == namespace && h.target == target && h.name != except)
    }

    /// Creates or replaces an autoscaler checked by the API edge; it acts from the next round.
    pub fn apply(&mut self, kind: Kind) -> Event {
        let event = Event::AutoscalerApplied { key: store_key(&kind), autoscaler: StoredAutoscaler::of(kind.clone()) };
        match kind {
            Kind::Hpa(h) => {
                let k = key(&h.namespace, &h.name);
                self.hpa_state.entry(k.clone()).or_default().next_ms = 0;
                self.hpas.insert(k, h);
            }
            Kind::Cron(c) => {
                let k = key(&c.namespace, &c.name);
                self.cron_state.remove(&k);
                self.crons.insert(k, c);
            }
            Kind::History(r) => self.restore_history(r),
        }
        event
    }

    /// Deletes an HPA and its stored demand history.
    pub fn delete_hpa(&mut self, k: &str) -> Option<Vec<Event>> {
        let h = self.hpas.remove(k)?;
        let chunks = self.hpa_state.remove(k).map(|s| s.stored_chunks).unwrap_or_default();
        let history = chunks.into_iter().map(|c| Event::AutoscalerDeleted { key: history_key(k, c) });
        Some(std::iter::once(Event::AutoscalerDeleted { key: store_key(&Kind::Hpa(h)) }).chain(history).collect())
    }

    pub fn delete_cron(&mut self, k: &str) -> Option<Event> {
        let c = self.crons.remove(k)?;
        self.cron_state.remove(k);
        Some(Event::AutoscalerDeleted { key: store_key(&Kind::Cron(c)) })
    }

    pub fn hpa_status(&self, k: &str) -> Option<pb::HorizontalPodAutoscalerStatus> {
        let h = self.hpas.get(k)?;
        let status = self.hpa_state.get(k).map(|s| s.status.clone()).unwrap_or_default();
        Some(pb::HorizontalPodAutoscalerStatus { hpa: Some(h.clone()), ..status })
    }

    pub fn cron_status(&self, k: &str) -> Option<pb::CronHorizontalPodAutoscalerStatus> {
        let c = self.crons.get(k)?;
        let state = self.cron_state.get(k);
        let jobs = c
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| {
                let s = state.and_then(|s| s.get(i)).cloned().unwrap_or_default();
                pb::CronJobStatus { name: j.name.clone(), last_run_ms: s.last_run_ms, next_run_ms: s.next_run_ms.unwrap_or(0), message: s.message }
            })
            .collect();
        Some(pb::CronHorizontalPodAutoscalerStatus { cron: Some(c.clone()), jobs })
    }

    /// One round at `now_ms`: cron jobs that are due fire, then every HPA that is due (or whose
    /// minimum a job just set) reads its metrics. `view` gives a workload ("namespace/name").
    pub fn round(&mut self, now_ms: u64, interval_ms: u64, view: impl Fn(&str) -> Option<TargetView>) -> Round {
        let mut round = Round::default();
        let mut forced = Vec::new();
        self.fire_crons(now_ms, &mut round, &mut forced);
        let keys: Vec<String> = self.hpas.keys().cloned().collect();
        for k in keys {
            let h = self.hpas[&k].clone();
            let target = key(&h.namespace, &h.target);
            let state = self.hpa_state.entry(k.clone()).or_default();
            // A prediction samples every round and acts as soon as its floor is above the replicas.
            let mut seen = None;
            let mut floor = 0;
            if let Some(p) = &h.prediction {
                seen = Some(view(&target));
                if let Some(Some(w)) = &seen {
                    floor = predict_floor(&predict::Spec::of(p), state, w, now_ms, &k, &mut round.events);
                }
            }
            let raised = seen.as_ref().and_then(|w| w.as_ref()).is_some_and(|w| floor > w.replicas);
            if now_ms < state.next_ms && !forced.contains(&k) && !raised {
                continue;
            }
            state.next_ms = now_ms + interval_ms;
            let Some(w) = seen.unwrap_or_else(|| view(&target)) else {
                state.status.conditions = vec![condition("AbleToScale", false, "FailedGetScale", format!("there is no workload {target}"))];
                continue;
            };
            let external = |name: &str| self.external.get(&key(&h.namespace, name)).copied();
            let state = self.hpa_state.get_mut(&k).expect("made above");
            if let Some(replicas) = evaluate(&h, &w, state, now_ms, floor, external) {
                let metrics: Vec<String> = state.status.current_metrics.iter().map(|m| format!("{}={}m→{}", m.source().as_str_name(), m.current_milli, m.desired_replicas)).collect();
                tracing::info!(hpa = %k, from = w.replicas, to = replicas, metrics = %metrics.join(" "), recent = ?state.history.recommendations, "HPA scaling its workload");
                round.scale.push((target, replicas));
            }
        }
        round
    }

    fn fire_crons(&mut self, now_ms: u64, round: &mut Round, forced: &mut Vec<String>) {
        let keys: Vec<String> = self.crons.keys().cloned().collect();
        for k in keys {
            let c = self.crons[&k].clone();
            let (Ok(tz), Ok(excluded)) = (cron::time_zone(&c.time_zone), c.exclude_dates.iter().map(|d| Schedule::parse(d)).collect::<Result<Vec<Schedule>, _>>()) else { continue };
            let schedules: Vec<Option<Schedule>> = c.jobs.iter().map(|j| Schedule::parse(&j.schedule).ok()).collect();
            let states = self.cron_state.entry(k.clone()).or_insert_with(|| schedules.iter().map(|s| JobState { next_run_ms: s.as_ref().and_then(|s| cron::next_run(s, &excluded, &tz, now_ms)), ..Default::default() }).collect());
            let mut due = Vec::new();
            for (i, (job, state)) in c.jobs.iter().zip(states.iter_mut()).enumerate() {
                if state.next_run_ms.is_some_and(|at| at <= now_ms) {
                    state.last_run_ms = now_ms;
                    state.next_run_ms = if job.run_once { None } else { schedules[i].as_ref().and_then(|s| cron::next_run(s, &excluded, &tz, now_ms)) };
                    due.push(i);
                }
            }
            // Jobs due at once: the last in the list wins (each is applied in turn).
            for i in due {
                let job = &c.jobs[i];
                let message = match self.hpa_of(&c.namespace, &c.target, "").cloned() {
                    Some(mut h) => {
                        h.min_replicas = job.target_size.max(1);
                        h.max_replicas = h.max_replicas.max(job.target_size);
                        let hk = key(&h.namespace, &h.name);
                        let text = format!("set HPA {}'s minReplicas to {} (maxReplicas {})", h.name, h.min_replicas, h.max_replicas);
                        self.hpas.insert(hk.clone(), h.clone());
                        round.events.push(Event::AutoscalerApplied { key: store_key(&Kind::Hpa(h.clone())), autoscaler: StoredAutoscaler::of(Kind::Hpa(h)) });
                        forced.push(hk);
                        text
                    }
                    None => {
                        round.scale.push((key(&c.namespace, &c.target), job.target_size));
                        format!("set workload {}'s replicas to {}", c.target, job.target_size)
                    }
                };
                tracing::info!(cron = %k, job = %job.name, "{message}");
                if let Some(s) = self.cron_state.get_mut(&k).and_then(|s| s.get_mut(i)) {
                    s.message = message;
                }
            }
        }
    }
}

/// Samples the workload's demand for its HPA's prediction and returns the floor the prediction
/// sets now (0: none). The demand sampled is what the metrics and the HPA's own minReplicas ask
/// for, and the replicas unless the prediction's floor is what holds them: pods the prediction
/// added are not demand, or each period would raise the next one earlier.
///
/// A changed sample rewrites its chunk in the store; chunks older than the periods kept are deleted.
fn predict_floor(spec: &predict::Spec, state: &mut HpaState, w: &TargetView, now_ms: u64, hpa: &str, events: &mut Vec<Event>) -> u32 {
    let held = state.status.predicted_replicas > 0 && w.replicas <= state.status.predicted_replicas;
    let metrics = state.status.current_metrics.iter().map(|m| m.desired_replicas).max().unwrap_or(0);
    if let Some(s) = state.demand.record(spec, now_ms, if held { 0 } else { w.replicas }, metrics) {
        let chunk = s.slot / predict::CHUNK_STEPS;
        state.stored_chunks.insert(chunk);
        events.push(history_event(hpa, chunk, &state.demand));
    }
    let oldest = state.demand.oldest_chunk().unwrap_or(u64::MAX);
    while let Some(&c) = state.stored_chunks.first().filter(|&&c| c < oldest) {
        state.stored_chunks.remove(&c);
        events.push(Event::AutoscalerDeleted { key: history_key(hpa, c) });
    }
    match predict::plan(spec, &state.demand, now_ms, 0) {
        Some(p) => {
            state.status.predicted_replicas = p.floor;
            state.status.predicted_for_ms = p.deadline_ms - spec.step_ms - spec.margin_ms;
            p.floor
        }
        None => {
            state.status.predicted_replicas = 0;
            state.status.predicted_for_ms = 0;
            0
        }
    }
}

fn target_of(m: &pb::HpaMetric) -> Target {
    let t = m.target.unwrap_or_default();
    match pb::MetricSource::try_from(m.source) {
        Ok(pb::MetricSource::CpuUtilization) => Target::Utilization(t.average_utilization),
        _ if t.average_value_milli > 0 => Target::AverageValue(t.average_value_milli),
        _ => Target::Value(t.value_milli),
    }
}

/// One HPA's round (Kubernetes' reconcileAutoscaler): the replicas to set, if they change.
/// `floor` is the prediction's (0: none): it raises minReplicas, up to maxReplicas.
fn evaluate(h: &pb::HorizontalPodAutoscaler, w: &TargetView, state: &mut HpaState, now_ms: u64, floor: u32, external: impl Fn(&str) -> Option<u64>) -> Option<u32> {
    let current = w.replicas;
    let (min, max) = (h.min_replicas.max(1).max(floor.min(h.max_replicas)), h.max_replicas);
    let (up, down) = (Rules::of(h.scale_up.as_ref(), true), Rules::of(h.scale_down.as_ref(), false));
    let mut conditions = vec![condition("AbleToScale", true, "SucceededGetScale", "the HPA reads and sets its workload's replicas".into())];
    state.status.current_replicas = current;
    let desired = if current == 0 {
        conditions.push(condition("ScalingActive", false, "ScalingDisabled", "the workload has 0 replicas: scaling is off until it has some".into()));
        state.status.conditions = conditions;
        state.status.desired_replicas = 0;
        return None;
    } else if current > max {
        conditions.push(condition("ScalingLimited", true, "TooManyReplicas", format!("{current} replicas is above maxReplicas {max}")));
        max
    } else if current < min {
        let why = if min > h.min_replicas.max(1) { format!("{current} replicas is below the predicted {min}") } else { format!("{current} replicas is below minReplicas {min}") };
        conditions.push(condition("ScalingLimited", true, "TooFewReplicas", why));
        min
    } else {
        let running = w.pods.iter().filter(|p| p.running).count() as u32;
        let mut best: Option<u32> = None;
        let mut failed = Vec::new();
        let mut values = Vec::new();
        for m in &h.metrics {
            let target = target_of(m);
            let source = pb::MetricSource::try_from(m.source).unwrap_or_default();
            let result = match source {
                pb::MetricSource::External => external(&m.external_name).map(|v| hpa::external_replicas(current, running, v, target)).ok_or(hpa::MetricError::NoExternalValue),
                _ => {
                    let samples: Vec<PodSample> = w
                        .pods
                        .iter()
                        .map(|p| PodSample {
                            running: p.running,
                            value_milli: p.usage.map(|u| match source {
                                pb::MetricSource::PodReceiveBytes => u.rx_bytes_per_sec.saturating_mul(1000),
                                pb::MetricSource::PodTransmitBytes => u.tx_bytes_per_sec.saturating_mul(1000),
                                _ => u.cpu_millicores,
                            }),
                            request_milli: p.cpu_request,
                        })
                        .collect();
                    hpa::pod_metric_replicas(current, &samples, target)
                }
            };
            match result {
                Ok(r) => {
                    values.push(pb::HpaMetricValue { source: m.source, external_name: m.external_name.clone(), current_milli: r.current_milli, desired_replicas: r.replicas });
                    best = Some(best.map_or(r.replicas, |b| b.max(r.replicas)));
                }
                Err(e) => failed.push(format!("{}: {e}", source.as_str_name())),
            }
        }
        state.status.current_metrics = values;
        // Kubernetes: with a metric unread, scale up on the others but never down.
        let proposal = match best {
            Some(b) if failed.is_empty() || b > current => b,
            _ => {
                conditions.push(condition("ScalingActive", false, "FailedGetMetrics", failed.join("; ")));
                state.status.conditions = conditions;
                state.status.desired_replicas = current;
                return None;
            }
        };
        conditions.push(condition("ScalingActive", true, "ValidMetricFound", "the HPA computes replicas from its metrics".into()));
        let (desired, limit) = hpa::normalize(current, proposal, (min, max), &up, &down, &mut state.history, now_ms);
        let limited = limit != hpa::Limit::Within;
        let why = if limited { format!("the metrics ask for {proposal} replicas; {} holds it to {desired}", limit.reason()) } else { "the desired count is within the acceptable range".into() };
        conditions.push(condition("ScalingLimited", limited, limit.reason(), why));
        desired
    };
    state.status.conditions = conditions;
    state.status.desired_replicas = desired;
    if desired == current {
        return None;
    }
    state.history.record_scale(current, desired, now_ms, &up, &down);
    state.status.last_scale_ms = now_ms;
    Some(desired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa(min: u32, max: u32) -> pb::HorizontalPodAutoscaler {
        pb::HorizontalPodAutoscaler {
            namespace: "d".into(),
            name: "web".into(),
            target: "web".into(),
            min_replicas: min,
            max_replicas: max,
            metrics: vec![pb::HpaMetric { source: pb::MetricSource::CpuUtilization as i32, external_name: String::new(), target: Some(pb::MetricTarget { average_utilization: 50, ..Default::default() }) }],
            scale_up: None,
            scale_down: Some(pb::ScalingRules { stabilization_window_secs: Some(10), ..Default::default() }),
            prediction: None,
        }
    }

    fn view(replicas: u32, cpu: Option<u64>) -> TargetView {
        TargetView { replicas, pods: (0..replicas).map(|_| PodView { running: true, usage: cpu.map(|c| pb::PodUsage { cpu_millicores: c, ..Default::default() }), cpu_request: 100 }).collect() }
    }

    #[test]
    fn an_hpa_scales_on_its_interval_and_down_after_the_window() {
        let mut a = Autoscalers::default();
        a.apply(Kind::Hpa(hpa(1, 10)));
        // 2 pods at 100 % of their request against 50 %: 4.
        assert_eq!(a.round(0, 1000, |_| Some(view(2, Some(100)))).scale, vec![("d/web".to_string(), 4)]);
        // Not due again before the interval.
        assert!(a.round(500, 1000, |_| Some(view(4, Some(0)))).scale.is_empty());
        // Idle, but a higher recommendation is within the 10 s window.
        assert!(a.round(1000, 1000, |_| Some(view(4, Some(0)))).scale.is_empty());
        assert_eq!(a.round(10_500, 1000, |_| Some(view(4, Some(0)))).scale, vec![("d/web".to_string(), 1)]);
        let st = a.hpa_status("d/web").unwrap();
        assert_eq!((st.current_replicas, st.desired_replicas, st.last_scale_ms), (4, 1, 10_500));
    }

    #[test]
    fn a_cron_job_without_an_hpa_sets_the_size_and_with_one_sets_its_minimum() {
        let mut a = Autoscalers::default();
        let cron = pb::CronHorizontalPodAutoscaler { namespace: "d".into(), name: "evening".into(), target: "web".into(), jobs: vec![pb::CronJob { name: "up".into(), schedule: "5 * * * * *".into(), target_size: 6, run_once: false }], ..Default::default() };
        a.apply(Kind::Cron(cron));
        // First round at :00 learns the next run (:05); nothing fires.
        assert!(a.round(0, 1000, |_| Some(view(2, Some(50)))).scale.is_empty());
        assert_eq!(a.round(5_000, 1000, |_| Some(view(2, Some(50)))).scale, vec![("d/web".to_string(), 6)]);
        assert_eq!(a.cron_status("d/evening").unwrap().jobs[0].next_run_ms, 65_000);
        // With an HPA: its minReplicas becomes 6 and it scales at once, whatever its interval.
        a.apply(Kind::Hpa(hpa(1, 4)));
        a.round(6_000, 60_000, |_| Some(view(2, Some(50))));
        let r = a.round(65_000, 60_000, |_| Some(view(2, Some(50))));
        assert_eq!(r.scale, vec![("d/web".to_string(), 6)]);
        let h = &a.hpas["d/web"];
        assert_eq!((h.min_replicas, h.max_replicas), (6, 6));
        assert!(matches!(&r.events[..], [Event::AutoscalerApplied { key, .. }] if key == "hpa/d/web"));
    }

    #[test]
    fn a_metric_that_cannot_be_read_never_scales_down() {
        let mut a = Autoscalers::default();
        let mut h = hpa(1, 10);
        h.metrics.push(pb::HpaMetric { source: pb::MetricSource::External as i32, external_name: "queue".into(), target: Some(pb::MetricTarget { value_milli: 10_000, ..Default::default() }) });
        a.apply(Kind::Hpa(h));
        assert!(a.round(0, 1000, |_| Some(view(4, Some(0)))).scale.is_empty());
        let st = a.hpa_status("d/web").unwrap();
        assert!(st.conditions.iter().any(|c| c.kind == "ScalingActive" && !c.status && c.message.contains("berthctl metric set")), "{st:?}");
        // Once it is set (30 against 10 for 4 running pods): 12, of which the default up policies
        // (4 pods or 100 % per 15 s) allow 8.
        a.external.insert("d/queue".into(), 30_000);
        assert_eq!(a.round(1000, 1000, |_| Some(view(4, Some(0)))).scale, vec![("d/web".to_string(), 8)]);
    }

    #[test]
    fn a_replayed_daily_spike_is_met_ahead_by_the_lead_time_from_the_second_day_across_a_leader_change() {
        // A "day" of 4 s in steps of 100 ms; a spike (400 millicores of load, 8 pods at 50 % of
        // 100m) from 2.4 s to 3 s, 2 pods' worth (100m) otherwise. Boot 300 ms + margin 100 ms.
        const DAY: u64 = 4000;
        const SPIKE: std::ops::Range<u64> = 2400..3000;
        let mut h = hpa(1, 20);
        let fast = |p| pb::ScalingRules { stabilization_window_secs: Some(0), select_policy: pb::SelectPolicy::Max as i32, policies: vec![pb::ScalingPolicy { kind: pb::ScalingPolicyKind::Pods as i32, value: p, period_secs: 1 }] };
        (h.scale_up, h.scale_down) = (Some(fast(20)), Some(fast(20)));
        h.prediction = Some(pb::Prediction { step_ms: 100, period_ms: DAY, periods: 2, boot_ms: 300, margin_ms: 100 });
        let mut a = Autoscalers::default();
        // What the store holds (journal or etcd alike): the events applied in turn.
        let mut store: BTreeMap<String, StoredAutoscaler> = BTreeMap::new();
        let keep = |events: Vec<Event>, store: &mut BTreeMap<String, StoredAutoscaler>| {
            for e in events {
                match e {
                    Event::AutoscalerApplied { key, autoscaler } => store.insert(key, autoscaler).map(|_| ()),
                    Event::AutoscalerDeleted { key } => store.remove(&key).map(|_| ()),
                    other => panic!("{other:?}"),
                };
            }
        };
        keep(vec![a.apply(Kind::Hpa(h))], &mut store);
        let mut replicas = 2u32;
        let mut most_chunks = 0;
        // Per day: the first time 8 pods ran, relative to the spike's start.
        let mut first_eight: Vec<Option<i64>> = vec![None; 5];
        for now in (0..5 * DAY).step_by(50) {
            if now == 2 * DAY {
                // A leader change: the new leader has only what the store holds.
                a = Autoscalers::default();
                a.restore(&store).unwrap();
            }
            let load = if SPIKE.contains(&(now % DAY)) { 400 } else { 100 };
            let w = TargetView { replicas, pods: (0..replicas).map(|_| PodView { running: true, usage: Some(pb::PodUsage { cpu_millicores: load / u64::from(replicas), ..Default::default() }), cpu_request: 100 }).collect() };
            let round = a.round(now, 100, |_| Some(w.clone()));
            keep(round.events, &mut store);
            most_chunks = most_chunks.max(store.keys().filter(|k| k.starts_with("history/d/web/")).count());
            if let Some((_, n)) = round.scale.into_iter().next_back() {
                replicas = n;
            }
            let day = (now / DAY) as usize;
            if replicas >= 8 && first_eight[day].is_none() {
                first_eight[day] = Some(now as i64 - (day as u64 * DAY + SPIKE.start) as i64);
            }
        }
        // Day 0 has no history: the HPA meets the spike once it arrives.
        assert!(first_eight[0].is_some_and(|t| t >= 0), "{first_eight:?}");
        // Later days: 8 run before the spike, at least the boot time ahead, but not a step more
        // than the lead time and the one-step tolerance.
        for t in &first_eight[1..] {
            assert!(t.is_some_and(|t| (-600..=-300).contains(&t)), "{first_eight:?}");
        }
        // Between the spikes the prediction's pods are not taken as demand: 2 again by the day's end.
        assert_eq!(replicas, 2);
        let st = a.hpa_status("d/web").unwrap();
        assert_eq!(st.predicted_replicas, 2, "{st:?}");
        // Three periods kept (12 s, 120 steps): at most 3 chunks of 60 steps; after 20 s the
        // first (slots 0 to 59) is gone.
        assert!((2..=3).contains(&most_chunks), "{most_chunks}");
        assert!(!store.contains_key("history/d/web/0"), "{:?}", store.keys());
        // The checkpoint holds the keys the events wrote, and the same history once compacted (a
        // chunk partly out of the periods kept is left as it was last written).
        let checkpoint = a.checkpoint();
        assert!(checkpoint.keys().eq(store.keys()), "{:?}", checkpoint.keys());
        let spec = predict::Spec::of(a.hpas["d/web"].prediction.as_ref().unwrap());
        let [mut from_store, mut from_checkpoint] = [&store, &checkpoint].map(|s| {
            let mut b = Autoscalers::default();
            b.restore(s).unwrap();
            b.hpa_state.remove("d/web").unwrap().demand
        });
        from_store.compact(&spec, 5 * DAY - 50);
        from_checkpoint.compact(&spec, 5 * DAY - 50);
        assert_eq!(from_store, from_checkpoint);
        assert_eq!(from_store, a.hpa_state["d/web"].demand);
        // Deleting the HPA deletes its history.
        keep(a.delete_hpa("d/web").unwrap(), &mut store);
        assert!(store.is_empty(), "{:?}", store.keys());
    }
}
