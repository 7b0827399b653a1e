//! `berthctl hpa|cronhpa apply|get|list|delete` and `berthctl metric set`: pod autoscalers from
//! a Kubernetes HorizontalPodAutoscaler (autoscaling/v2) or an ACK CronHorizontalPodAutoscaler
//! (autoscaling.alibabacloud.com/v1beta1) document, the fields Berth takes (any other is refused
//! by name); the scheduler checks the rest and scales the workload.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use berth_proto::cluster::v1 as pb;
use clap::{Args, Subcommand};
use serde::Deserialize;

use super::podfile;
use crate::Output;
use crate::cluster::{self, ClusterPaths};
use crate::table::Table;

#[derive(Subcommand)]
enum ObjectCommand {
    /// Create or replace the autoscaler of a YAML file.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// One autoscaler and its status.
    Get {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// The autoscalers of a namespace (every namespace with --all-namespaces).
    List {
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        #[arg(long, short = 'A')]
        all_namespaces: bool,
    },
    Delete {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
}

#[derive(Args)]
pub struct Hpa {
    #[command(subcommand)]
    command: ObjectCommand,
    #[command(flatten)]
    paths: ClusterPaths,
}

#[derive(Args)]
pub struct CronHpa {
    #[command(subcommand)]
    command: ObjectCommand,
    #[command(flatten)]
    paths: ClusterPaths,
}

#[derive(Args)]
pub struct Metric {
    #[command(subcommand)]
    command: MetricCommand,
    #[command(flatten)]
    paths: ClusterPaths,
}

#[derive(Subcommand)]
enum MetricCommand {
    /// Set an external metric's value (a Kubernetes quantity: 30, 1.5k, 250m) for HPAs'
    /// External metrics of this name.
    Set {
        name: String,
        value: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document<S> {
    api_version: String,
    kind: String,
    metadata: podfile::Metadata,
    spec: S,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TargetRef {
    #[serde(default)]
    api_version: Option<String>,
    kind: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HpaSpec {
    scale_target_ref: TargetRef,
    #[serde(default)]
    min_replicas: Option<u32>,
    max_replicas: u32,
    #[serde(default)]
    metrics: Vec<MetricSpec>,
    #[serde(default)]
    behavior: Option<Behavior>,
    /// Berth's predictive pre-scaling (not in autoscaling/v2).
    #[serde(default)]
    prediction: Option<PredictionSpec>,
}

/// `spec.prediction`: every field optional (0 or absent takes the scheduler's default).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PredictionSpec {
    #[serde(default)]
    step_ms: u64,
    #[serde(default)]
    period_ms: u64,
    #[serde(default)]
    periods: u32,
    #[serde(default)]
    boot_ms: u64,
    #[serde(default)]
    margin_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetricSpec {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    resource: Option<ResourceMetric>,
    #[serde(default)]
    pods: Option<NamedMetric>,
    #[serde(default)]
    external: Option<NamedMetric>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ResourceMetric {
    name: String,
    target: TargetSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamedMetric {
    metric: MetricName,
    target: TargetSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricName {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TargetSpec {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    average_utilization: Option<u32>,
    #[serde(default)]
    average_value: Option<Quantity>,
    #[serde(default)]
    value: Option<Quantity>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Quantity {
    Int(u64),
    Float(f64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Behavior {
    #[serde(default)]
    scale_up: Option<RulesSpec>,
    #[serde(default)]
    scale_down: Option<RulesSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RulesSpec {
    #[serde(default)]
    stabilization_window_seconds: Option<u32>,
    #[serde(default)]
    select_policy: Option<String>,
    #[serde(default)]
    policies: Vec<PolicySpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicySpec {
    #[serde(rename = "type")]
    kind: String,
    value: u32,
    period_seconds: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CronSpec {
    scale_target_ref: TargetRef,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    exclude_dates: Vec<String>,
    jobs: Vec<JobSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JobSpec {
    name: String,
    schedule: String,
    target_size: u32,
    #[serde(default)]
    run_once: bool,
}

/// The pod traffic metrics an HPA's Pods metric may name.
const RECEIVE: &str = "network_receive_bytes_per_second";
const TRANSMIT: &str = "network_transmit_bytes_per_second";

/// A Kubernetes quantity in thousandths: a number (decimals allowed) with m, k, M, G, T, Ki, Mi,
/// Gi or Ti, or none.
pub fn milli_quantity(q: &str) -> Option<u64> {
    const UNITS: [(&str, f64); 10] = [("Ki", 1024.0), ("Mi", 1048576.0), ("Gi", 1073741824.0), ("Ti", 1099511627776.0), ("m", 0.001), ("k", 1e3), ("K", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)];
    let (number, factor) = UNITS.iter().find_map(|(u, f)| q.strip_suffix(u).map(|n| (n, *f))).unwrap_or((q, 1.0));
    let n: f64 = number.parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let milli = (n * factor * 1000.0).round();
    (milli < u64::MAX as f64).then_some(milli as u64)
}

fn quantity(q: &Quantity, field: &str) -> anyhow::Result<u64> {
    let parsed = match q {
        Quantity::Int(n) => n.checked_mul(1000),
        Quantity::Float(f) => milli_quantity(&f.to_string()),
        Quantity::Text(t) => milli_quantity(t),
    };
    parsed.with_context(|| format!("{field} {q:?} is not a quantity (30, 1.5k, 250m, 1Mi)"))
}

fn workload_ref(r: &TargetRef, field: &str) -> anyhow::Result<String> {
    if r.kind != "Deployment" || r.api_version.as_deref().is_some_and(|v| v != "apps/v1") {
        bail!("{field}: kind {:?} apiVersion {:?}: an HPA scales a Berth workload: kind Deployment, apiVersion apps/v1", r.kind, r.api_version);
    }
    Ok(r.name.clone())
}

fn metric_of(m: &MetricSpec, i: usize) -> anyhow::Result<pb::HpaMetric> {
    let at = format!("spec.metrics[{i}]");
    let expect_type = |t: &TargetSpec, want: &str, field: &str| -> anyhow::Result<()> {
        if t.kind != want {
            bail!("{at}.{field}.target.type {:?}: this metric takes {want}", t.kind);
        }
        Ok(())
    };
    let mut out = pb::HpaMetric::default();
    match (m.kind.as_str(), &m.resource, &m.pods, &m.external) {
        ("Resource", Some(r), None, None) => {
            if r.name != "cpu" {
                bail!("{at}.resource.name {:?}: Berth measures cpu (against the pods' request)", r.name);
            }
            expect_type(&r.target, "Utilization", "resource")?;
            out.source = pb::MetricSource::CpuUtilization as i32;
            let u = r.target.average_utilization.with_context(|| format!("{at}.resource.target.averageUtilization is required"))?;
            out.target = Some(pb::MetricTarget { average_utilization: u, ..Default::default() });
        }
        ("Pods", None, Some(p), None) => {
            out.source = match p.metric.name.as_str() {
                RECEIVE => pb::MetricSource::PodReceiveBytes as i32,
                TRANSMIT => pb::MetricSource::PodTransmitBytes as i32,
                other => bail!("{at}.pods.metric.name {other:?}: Berth measures {RECEIVE} and {TRANSMIT} per pod"),
            };
            expect_type(&p.target, "AverageValue", "pods")?;
            let v = p.target.average_value.as_ref().with_context(|| format!("{at}.pods.target.averageValue is required"))?;
            out.target = Some(pb::MetricTarget { average_value_milli: quantity(v, &format!("{at}.pods.target.averageValue"))?, ..Default::default() });
        }
        ("External", None, None, Some(e)) => {
            out.source = pb::MetricSource::External as i32;
            out.external_name.clone_from(&e.metric.name);
            let t = &e.target;
            out.target = Some(match (t.kind.as_str(), &t.value, &t.average_value) {
                ("Value", Some(v), None) => pb::MetricTarget { value_milli: quantity(v, &format!("{at}.external.target.value"))?, ..Default::default() },
                ("AverageValue", None, Some(v)) => pb::MetricTarget { average_value_milli: quantity(v, &format!("{at}.external.target.averageValue"))?, ..Default::default() },
                (k, _, _) => bail!("{at}.external.target: type {k:?} with its field: Value with value, or AverageValue with averageValue"),
            });
        }
        (k, ..) => bail!("{at}: type {k:?} with its one block: Resource (resource), Pods (pods) or External (external)"),
    }
    Ok(out)
}

fn rules_of(r: &RulesSpec, at: &str) -> anyhow::Result<pb::ScalingRules> {
    let select_policy = match r.select_policy.as_deref() {
        None | Some("Max") => pb::SelectPolicy::Max,
        Some("Min") => pb::SelectPolicy::Min,
        Some("Disabled") => pb::SelectPolicy::Disabled,
        Some(other) => bail!("{at}.selectPolicy {other:?}: Max, Min or Disabled"),
    } as i32;
    let policies = r
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let kind = match p.kind.as_str() {
                "Pods" => pb::ScalingPolicyKind::Pods,
                "Percent" => pb::ScalingPolicyKind::Percent,
                other => bail!("{at}.policies[{i}].type {other:?}: Pods or Percent"),
            } as i32;
            Ok(pb::ScalingPolicy { kind, value: p.value, period_secs: p.period_seconds })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(pb::ScalingRules { stabilization_window_secs: r.stabilization_window_seconds, select_policy, policies })
}

/// The HPA of a HorizontalPodAutoscaler document; `namespace` when the document names none.
fn hpa_of(text: &str, namespace: &str) -> anyhow::Result<pb::HorizontalPodAutoscaler> {
    let d: Document<HpaSpec> = serde_yaml_ng::from_str(text).context("not a Kubernetes HorizontalPodAutoscaler this berthctl takes")?;
    if d.kind != "HorizontalPodAutoscaler" || d.api_version != "autoscaling/v2" {
        bail!("kind {:?} apiVersion {:?}: give a HorizontalPodAutoscaler of apiVersion autoscaling/v2", d.kind, d.api_version);
    }
    if !d.metadata.labels.is_empty() {
        bail!("metadata.labels: an HPA's labels are not kept; remove them");
    }
    let behavior = d.spec.behavior.as_ref();
    Ok(pb::HorizontalPodAutoscaler {
        namespace: d.metadata.namespace.unwrap_or_else(|| namespace.to_string()),
        name: d.metadata.name,
        target: workload_ref(&d.spec.scale_target_ref, "spec.scaleTargetRef")?,
        min_replicas: d.spec.min_replicas.unwrap_or(1),
        max_replicas: d.spec.max_replicas,
        metrics: d.spec.metrics.iter().enumerate().map(|(i, m)| metric_of(m, i)).collect::<anyhow::Result<_>>()?,
        scale_up: behavior.and_then(|b| b.scale_up.as_ref()).map(|r| rules_of(r, "spec.behavior.scaleUp")).transpose()?,
        scale_down: behavior.and_then(|b| b.scale_down.as_ref()).map(|r| rules_of(r, "spec.behavior.scaleDown")).transpose()?,
        prediction: d.spec.prediction.map(|p| pb::Prediction { step_ms: p.step_ms, period_ms: p.period_ms, periods: p.periods, boot_ms: p.boot_ms, margin_ms: p.margin_ms }),
    })
}

/// The cron autoscaler of a CronHorizontalPodAutoscaler document. Its scaleTargetRef is the
/// workload (a Deployment), or an HPA (as ACK lets it), which `hpa_target` resolves to its workload.
async fn cron_of(text: &str, namespace: &str, hpa_target: impl AsyncFnOnce(&str, &str) -> anyhow::Result<String>) -> anyhow::Result<pb::CronHorizontalPodAutoscaler> {
    let d: Document<CronSpec> = serde_yaml_ng::from_str(text).context("not an ACK CronHorizontalPodAutoscaler this berthctl takes")?;
    if d.kind != "CronHorizontalPodAutoscaler" || d.api_version != "autoscaling.alibabacloud.com/v1beta1" {
        bail!("kind {:?} apiVersion {:?}: give a CronHorizontalPodAutoscaler of apiVersion autoscaling.alibabacloud.com/v1beta1", d.kind, d.api_version);
    }
    let namespace = d.metadata.namespace.unwrap_or_else(|| namespace.to_string());
    let r = &d.spec.scale_target_ref;
    let target = if r.kind == "HorizontalPodAutoscaler" { hpa_target(&namespace, &r.name).await? } else { workload_ref(r, "spec.scaleTargetRef")? };
    Ok(pb::CronHorizontalPodAutoscaler {
        namespace,
        name: d.metadata.name,
        target,
        time_zone: d.spec.time_zone.unwrap_or_default(),
        exclude_dates: d.spec.exclude_dates,
        jobs: d.spec.jobs.into_iter().map(|j| pb::CronJob { name: j.name, schedule: j.schedule, target_size: j.target_size, run_once: j.run_once }).collect(),
    })
}

fn rpc(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", s.message())
}

fn source_name(m: i32, external: &str) -> String {
    match pb::MetricSource::try_from(m) {
        Ok(pb::MetricSource::CpuUtilization) => "cpu".into(),
        Ok(pb::MetricSource::PodReceiveBytes) => RECEIVE.into(),
        Ok(pb::MetricSource::PodTransmitBytes) => TRANSMIT.into(),
        Ok(pb::MetricSource::External) => format!("external/{external}"),
        _ => "?".into(),
    }
}

fn milli_text(v: u64) -> String {
    if v.is_multiple_of(1000) { (v / 1000).to_string() } else { format!("{}m", v) }
}

/// "current/target" per metric, as kubectl shows TARGETS.
fn targets_text(st: &pb::HorizontalPodAutoscalerStatus) -> String {
    let h = st.hpa.clone().unwrap_or_default();
    h.metrics
        .iter()
        .map(|m| {
            let t = m.target.unwrap_or_default();
            let current = st.current_metrics.iter().find(|c| c.source == m.source && c.external_name == m.external_name).map(|c| c.current_milli);
            let (cur, target) = match pb::MetricSource::try_from(m.source) {
                Ok(pb::MetricSource::CpuUtilization) => (current.map(|c| format!("{}%", c / 1000)), format!("{}%", t.average_utilization)),
                _ if t.average_value_milli > 0 => (current.map(milli_text), format!("{} (avg)", milli_text(t.average_value_milli))),
                _ => (current.map(milli_text), milli_text(t.value_milli)),
            };
            format!("{}: {}/{target}", source_name(m.source, &m.external_name), cur.unwrap_or_else(|| "<unknown>".into()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn ago(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    format!("{}s ago", now.saturating_sub(ms) / 1000)
}

fn hpa_json(st: &pb::HorizontalPodAutoscalerStatus) -> serde_json::Value {
    let h = st.hpa.clone().unwrap_or_default();
    serde_json::json!({
        "namespace": h.namespace, "name": h.name, "target": h.target, "minReplicas": h.min_replicas.max(1), "maxReplicas": h.max_replicas,
        "currentReplicas": st.current_replicas, "desiredReplicas": st.desired_replicas, "lastScaleTimeMs": st.last_scale_ms,
        "currentMetrics": st.current_metrics.iter().map(|m| serde_json::json!({"metric": source_name(m.source, &m.external_name), "currentMilli": m.current_milli, "desiredReplicas": m.desired_replicas})).collect::<Vec<_>>(),
        "conditions": st.conditions.iter().map(|c| serde_json::json!({"type": c.kind, "status": c.status, "reason": c.reason, "message": c.message})).collect::<Vec<_>>(),
        "prediction": h.prediction.map(|p| serde_json::json!({"stepMs": p.step_ms, "periodMs": p.period_ms, "periods": p.periods, "bootMs": p.boot_ms, "marginMs": p.margin_ms})),
        "predictedReplicas": st.predicted_replicas, "predictedForMs": st.predicted_for_ms,
    })
}

fn print_hpas(statuses: &[pb::HorizontalPodAutoscalerStatus], output: Output, detail: bool) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&statuses.iter().map(hpa_json).collect::<Vec<_>>())?);
        return Ok(());
    }
    let mut t = Table::new("HPAS", &["NAMESPACE", "NAME", "REFERENCE", "TARGETS", "MIN", "MAX", "REPLICAS", "DESIRED", "LAST SCALE"]);
    for st in statuses {
        let h = st.hpa.clone().unwrap_or_default();
        t.row(vec![h.namespace.clone(), h.name.clone(), format!("Deployment/{}", h.target), targets_text(st), h.min_replicas.max(1).to_string(), h.max_replicas.to_string(), st.current_replicas.to_string(), st.desired_replicas.to_string(), ago(st.last_scale_ms)]);
    }
    print!("{}", t.render());
    if detail {
        let mut c = Table::new("CONDITIONS", &["TYPE", "STATUS", "REASON", "MESSAGE"]);
        for cond in statuses.iter().flat_map(|s| &s.conditions) {
            c.row(vec![cond.kind.clone(), if cond.status { "True" } else { "False" }.into(), cond.reason.clone(), cond.message.clone()]);
        }
        print!("{}", c.render());
    }
    Ok(())
}

fn time_text(ms: u64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms as i64) {
        Some(t) if ms > 0 => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        _ => "-".into(),
    }
}

fn cron_json(st: &pb::CronHorizontalPodAutoscalerStatus) -> serde_json::Value {
    let c = st.cron.clone().unwrap_or_default();
    serde_json::json!({
        "namespace": c.namespace, "name": c.name, "target": c.target, "timeZone": c.time_zone, "excludeDates": c.exclude_dates,
        "jobs": c.jobs.iter().zip(&st.jobs).map(|(j, s)| serde_json::json!({"name": j.name, "schedule": j.schedule, "targetSize": j.target_size, "runOnce": j.run_once, "lastRunMs": s.last_run_ms, "nextRunMs": s.next_run_ms, "message": s.message})).collect::<Vec<_>>(),
    })
}

fn print_crons(statuses: &[pb::CronHorizontalPodAutoscalerStatus], output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&statuses.iter().map(cron_json).collect::<Vec<_>>())?);
        return Ok(());
    }
    let mut t = Table::new("CRON HPAS", &["NAMESPACE", "NAME", "TARGET", "JOB", "SCHEDULE", "TIME ZONE", "SIZE", "LAST RUN", "NEXT RUN", "LAST RESULT"]);
    for st in statuses {
        let c = st.cron.clone().unwrap_or_default();
        for (j, s) in c.jobs.iter().zip(&st.jobs) {
            let tz = if c.time_zone.is_empty() { "UTC".to_string() } else { c.time_zone.clone() };
            t.row(vec![c.namespace.clone(), c.name.clone(), c.target.clone(), j.name.clone(), j.schedule.clone(), tz, j.target_size.to_string(), time_text(s.last_run_ms), time_text(s.next_run_ms), s.message.clone()]);
        }
    }
    print!("{}", t.render());
    Ok(())
}

fn read(file: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

impl Hpa {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let mut c = cluster::scheduler(&self.paths, Duration::from_secs(5)).await?;
        let get = |namespace: String, name: String| pb::GetWorkloadRequest { namespace, name };
        match self.command {
            ObjectCommand::Apply { file } => {
                let h = hpa_of(&read(&file)?, "default").with_context(|| format!("{}", file.display()))?;
                let st = c.apply_horizontal_pod_autoscaler(pb::ApplyHorizontalPodAutoscalerRequest { hpa: Some(h) }).await.map_err(|s| rpc("applying the HPA", s))?.into_inner();
                print_hpas(&[st], output, false)
            }
            ObjectCommand::Get { name, namespace } => print_hpas(&[c.get_horizontal_pod_autoscaler(get(namespace, name)).await.map_err(|s| rpc("getting the HPA", s))?.into_inner()], output, true),
            ObjectCommand::List { namespace, all_namespaces } => {
                let ns = if all_namespaces { String::new() } else { namespace };
                print_hpas(&c.list_horizontal_pod_autoscalers(pb::ListWorkloadsRequest { namespace: ns }).await.map_err(|s| rpc("listing the HPAs", s))?.into_inner().hpas, output, false)
            }
            ObjectCommand::Delete { name, namespace } => {
                c.delete_horizontal_pod_autoscaler(get(namespace.clone(), name.clone())).await.map_err(|s| rpc("deleting the HPA", s))?;
                if output == Output::Table {
                    println!("HPA {namespace}/{name} deleted (its workload keeps its replicas)");
                }
                Ok(())
            }
        }
    }
}

impl CronHpa {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let mut c = cluster::scheduler(&self.paths, Duration::from_secs(5)).await?;
        let get = |namespace: String, name: String| pb::GetWorkloadRequest { namespace, name };
        match self.command {
            ObjectCommand::Apply { file } => {
                let mut lookup = c.clone();
                let hpa_target = async move |ns: &str, name: &str| -> anyhow::Result<String> {
                    let st = lookup.get_horizontal_pod_autoscaler(pb::GetWorkloadRequest { namespace: ns.into(), name: name.into() }).await.map_err(|s| rpc(&format!("spec.scaleTargetRef names HPA {ns}/{name}"), s))?.into_inner();
                    Ok(st.hpa.unwrap_or_default().target)
                };
                let cron = cron_of(&read(&file)?, "default", hpa_target).await.with_context(|| format!("{}", file.display()))?;
                let st = c.apply_cron_horizontal_pod_autoscaler(pb::ApplyCronHorizontalPodAutoscalerRequest { cron: Some(cron) }).await.map_err(|s| rpc("applying the cron autoscaler", s))?.into_inner();
                print_crons(&[st], output)
            }
            ObjectCommand::Get { name, namespace } => print_crons(&[c.get_cron_horizontal_pod_autoscaler(get(namespace, name)).await.map_err(|s| rpc("getting the cron autoscaler", s))?.into_inner()], output),
            ObjectCommand::List { namespace, all_namespaces } => {
                let ns = if all_namespaces { String::new() } else { namespace };
                print_crons(&c.list_cron_horizontal_pod_autoscalers(pb::ListWorkloadsRequest { namespace: ns }).await.map_err(|s| rpc("listing the cron autoscalers", s))?.into_inner().crons, output)
            }
            ObjectCommand::Delete { name, namespace } => {
                c.delete_cron_horizontal_pod_autoscaler(get(namespace.clone(), name.clone())).await.map_err(|s| rpc("deleting the cron autoscaler", s))?;
                if output == Output::Table {
                    println!("cron autoscaler {namespace}/{name} deleted");
                }
                Ok(())
            }
        }
    }
}

impl Metric {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let MetricCommand::Set { name, value, namespace } = self.command;
        let value_milli = milli_quantity(&value).with_context(|| format!("value {value:?} is not a quantity (30, 1.5k, 250m)"))?;
        let mut c = cluster::scheduler(&self.paths, Duration::from_secs(5)).await?;
        c.set_external_metric(pb::SetExternalMetricRequest { namespace: namespace.clone(), name: name.clone(), value_milli }).await.map_err(|s| rpc("setting the metric", s))?;
        if output == Output::Table {
            println!("metric {namespace}/{name} = {}", milli_text(value_milli));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HPA: &str = r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: web
spec:
  scaleTargetRef: { apiVersion: apps/v1, kind: Deployment, name: web }
  minReplicas: 2
  maxReplicas: 10
  metrics:
    - type: Resource
      resource: { name: cpu, target: { type: Utilization, averageUtilization: 60 } }
    - type: Pods
      pods: { metric: { name: network_receive_bytes_per_second }, target: { type: AverageValue, averageValue: 1Mi } }
    - type: External
      external: { metric: { name: queue-depth }, target: { type: AverageValue, averageValue: "30" } }
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 60
      policies: [{ type: Percent, value: 50, periodSeconds: 30 }]
    scaleUp:
      selectPolicy: Min
      policies: [{ type: Pods, value: 2, periodSeconds: 15 }]
  prediction: { stepMs: 1000, periodMs: 60000, bootMs: 5000 }
"#;

    #[test]
    fn an_hpa_document_becomes_the_hpa_the_scheduler_takes() {
        let h = hpa_of(HPA, "default").unwrap();
        assert_eq!((h.namespace.as_str(), h.target.as_str(), h.min_replicas, h.max_replicas), ("default", "web", 2, 10));
        assert_eq!(h.metrics[0].target.unwrap().average_utilization, 60);
        assert_eq!((h.metrics[1].source, h.metrics[1].target.unwrap().average_value_milli), (pb::MetricSource::PodReceiveBytes as i32, 1_048_576_000));
        assert_eq!((h.metrics[2].external_name.as_str(), h.metrics[2].target.unwrap().average_value_milli), ("queue-depth", 30_000));
        let down = h.scale_down.clone().unwrap();
        assert_eq!((down.stabilization_window_secs, down.policies[0].kind, down.policies[0].value), (Some(60), pb::ScalingPolicyKind::Percent as i32, 50));
        assert_eq!(h.scale_up.clone().unwrap().select_policy, pb::SelectPolicy::Min as i32);
        assert_eq!(h.prediction, Some(pb::Prediction { step_ms: 1000, period_ms: 60_000, periods: 0, boot_ms: 5000, margin_ms: 0 }));
        berth_scheduler::validation::hpa(&h).expect("the scheduler takes it");
        let bad = HPA.replace("bootMs: 5000", "bootSeconds: 5");
        assert!(format!("{:#}", hpa_of(&bad, "default").unwrap_err()).contains("bootSeconds"));
    }

    #[test]
    fn what_an_hpa_document_may_not_say_is_named() {
        let e = hpa_of(&HPA.replace("maxReplicas: 10", "maxReplicas: 10\n  paused: true"), "default").unwrap_err();
        assert!(format!("{e:#}").contains("paused"), "{e:#}");
        let e = hpa_of(&HPA.replace("name: cpu", "name: memory"), "default").unwrap_err();
        assert!(e.to_string().contains("spec.metrics[0].resource.name \"memory\""), "{e}");
        let e = hpa_of(&HPA.replace("network_receive_bytes_per_second", "requests"), "default").unwrap_err();
        assert!(e.to_string().contains("spec.metrics[1].pods.metric.name \"requests\""), "{e}");
        let e = hpa_of(&HPA.replace("averageValue: 1Mi", "averageValue: lots"), "default").unwrap_err();
        assert!(e.to_string().contains("spec.metrics[1].pods.target.averageValue"), "{e}");
        let e = hpa_of(&HPA.replace("kind: Deployment", "kind: StatefulSet"), "default").unwrap_err();
        assert!(e.to_string().contains("spec.scaleTargetRef"), "{e}");
        let e = hpa_of(&HPA.replace("type: Percent", "type: Share"), "default").unwrap_err();
        assert!(e.to_string().contains("spec.behavior.scaleDown.policies[0].type \"Share\""), "{e}");
        // What the scheduler refuses, it names in the same paths.
        let h = hpa_of(&HPA.replace("minReplicas: 2", "minReplicas: 20"), "default").unwrap();
        let e = berth_scheduler::validation::hpa(&h).unwrap_err();
        assert_eq!(e.field, "spec.minReplicas");
    }

    #[test]
    fn quantities_are_read_in_thousandths() {
        assert_eq!(milli_quantity("250m"), Some(250));
        assert_eq!(milli_quantity("1.5k"), Some(1_500_000));
        assert_eq!(milli_quantity("1Mi"), Some(1_048_576_000));
        assert_eq!(milli_quantity("30"), Some(30_000));
        assert_eq!(milli_quantity("-1"), None);
        assert_eq!(milli_quantity("lots"), None);
    }

    const CRON: &str = r#"
apiVersion: autoscaling.alibabacloud.com/v1beta1
kind: CronHorizontalPodAutoscaler
metadata:
  name: evening
spec:
  scaleTargetRef: { apiVersion: apps/v1, kind: Deployment, name: web }
  timeZone: Asia/Shanghai
  excludeDates: ["* * * 15 11 *"]
  jobs:
    - { name: up, schedule: "0 0 18 * * *", targetSize: 10 }
    - { name: down, schedule: "0 0 23 * * *", targetSize: 2, runOnce: true }
"#;

    #[tokio::test]
    async fn a_cron_document_becomes_the_cron_autoscaler_the_scheduler_takes() {
        let no_hpa = async |_: &str, _: &str| -> anyhow::Result<String> { bail!("not asked") };
        let c = cron_of(CRON, "default", no_hpa).await.unwrap();
        assert_eq!((c.target.as_str(), c.time_zone.as_str(), c.jobs.len(), c.jobs[1].run_once), ("web", "Asia/Shanghai", 2, true));
        berth_scheduler::validation::cron_hpa(&c).expect("the scheduler takes it");
        // An HPA as the target (ACK's way to combine them) stands for the HPA's workload.
        let via_hpa = CRON.replace("{ apiVersion: apps/v1, kind: Deployment, name: web }", "{ apiVersion: autoscaling/v2, kind: HorizontalPodAutoscaler, name: web-hpa }");
        let c = cron_of(&via_hpa, "default", async |ns: &str, name: &str| Ok(format!("{ns}-{name}-target"))).await.unwrap();
        assert_eq!(c.target, "default-web-hpa-target");
        let e = cron_of(&CRON.replace("targetSize: 10", "targetSize: 10, size: 3"), "default", no_hpa).await.unwrap_err();
        assert!(format!("{e:#}").contains("size"), "{e:#}");
        let bad = cron_of(&CRON.replace("0 0 18 * * *", "0 18 * * *"), "default", no_hpa).await.unwrap();
        let e = berth_scheduler::validation::cron_hpa(&bad).unwrap_err();
        assert!(e.to_string().starts_with("spec.jobs[0].schedule = \"0 18 * * *\": has 5 fields"), "{e}");
    }
}
