//! The API edge's check of a pod spec, before anything is stored: the spec's encoded size, names,
//! label syntax, enum values, volumes (names, mount paths, disk sizes), cloud IDs, command entries,
//! and CPU and memory against the largest instance type that could ever host the pod. Pure: what
//! depends on the config comes in as [`Limits`], computed once.

use std::collections::BTreeSet;

use berth_cloud::disk;
use berth_cloud::model::InstanceType;
use berth_proto::cluster::v1 as pb;
use prost::Message as _;

use crate::autoscaler::NodePool;

/// The largest encoded spec SubmitPod takes (README.md, the scheduler): agents are sent specs in
/// their instructions, and a spec this size is far beyond any real pod's.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

/// A spec refused: which field, its value (escaped, and cut when long), and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value}: {rule}")]
pub struct InvalidSpec {
    /// The field's path in the request, e.g. `spec.volumes[1].mount_path`.
    pub field: String,
    pub value: String,
    pub rule: Rule,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rule {
    #[error("must be a whole number, at least 2, of stepMs ({step} ms)")]
    PeriodOfSteps { step: u64 },
    #[error("the encoded spec may take at most {max} bytes (256 KiB); keep labels, commands and parameters small")]
    TooLarge { max: usize },
    #[error("must be a DNS-1123 label: 1 to 63 characters of a-z, 0-9 and '-', beginning and ending with a letter or digit")]
    Dns1123Label,
    #[error("is not a label key: an optional DNS-1123 subdomain (at most 253 characters) and '/', then a name of 1 to 63 characters of A-Z, a-z, 0-9, '-', '_' and '.', beginning and ending with a letter or digit")]
    LabelKey,
    #[error("is not a label value: empty, or at most 63 characters of A-Z, a-z, 0-9, '-', '_' and '.', beginning and ending with a letter or digit")]
    LabelValue,
    #[error("is not one of {known}")]
    UnknownEnum { known: &'static str },
    #[error("is given twice: {what} must be unique")]
    Duplicate { what: &'static str },
    #[error("must be an absolute path naming a directory (e.g. /data), without \"..\" components or NUL")]
    MountPath,
    #[error("a volume of no kind must name an existing volume (parameter volumeId); else give its kind: VOLUME_KIND_DISK, VOLUME_KIND_NAS or VOLUME_KIND_OSS")]
    KindWithoutVolume,
    #[error("is not a size: bytes above 0, or a number above 0 with K, M, G, T, Ki, Mi, Gi or Ti (e.g. 20Gi)")]
    Size,
    #[error("is not a disk category: one of cloud_essd (the default), cloud_ssd, cloud_efficiency, cloud_auto")]
    DiskCategory,
    #[error("is not a performance level of cloud_essd: one of PL0 (the default), PL1, PL2, PL3")]
    PerformanceLevel,
    #[error("is a performance level, which only cloud_essd disks have: remove it or set category = cloud_essd")]
    LevelWithoutEssd,
    #[error("asks for {gib} GiB; a {kind} disk holds at most {max} GiB")]
    DiskTooLarge { kind: String, gib: i64, max: i64 },
    #[error("is not a {what} ID: {prefix} followed by 1 to 64 lower-case letters, digits and inner '-'")]
    CloudId { what: &'static str, prefix: &'static str },
    #[error("contains NUL")]
    Nul,
    #[error("is not a label selector operator: one of In, NotIn, Exists, DoesNotExist")]
    SelectorOperator,
    #[error("is not a node selector operator: one of In, NotIn, Exists, DoesNotExist, Gt, Lt")]
    NodeSelectorOperator,
    #[error("Gt and Lt take exactly one integer value")]
    IntegerValue,
    #[error("is not a toleration operator: Equal (the default when empty) or Exists")]
    TolerationOperator,
    #[error("Exists tolerates every value: give no value, or use Equal")]
    ExistsWithValue,
    #[error("an empty key tolerates every taint only with operator Exists")]
    EmptyTolerationKey,
    #[error("is not a taint effect: one of NoSchedule, PreferNoSchedule, NoExecute (or empty for all)")]
    Effect,
    #[error("toleration_seconds applies to NoExecute taints only, and is at least 0")]
    TolerationSeconds,
    #[error("a node selector term needs at least one match expression (an empty term matches no node)")]
    EmptyTerm,
    #[error("a weight is 1 to 100")]
    Weight,
    #[error("a preferred term needs its term")]
    MissingTerm,
    #[error("is not a topology key: kubernetes.io/hostname (a node) or topology.kubernetes.io/zone")]
    TopologyKey,
    #[error("max_skew is at least 1")]
    MaxSkew,
    #[error("is not a whenUnsatisfiable: DoNotSchedule (the default when empty) or ScheduleAnyway")]
    WhenUnsatisfiable,
    #[error("min_domains is at least 0, and above 0 only with DoNotSchedule")]
    MinDomains,
    #[error("is not a priority class of the scheduler's config; known: {known}")]
    PriorityClass { known: String },
    #[error("is set by the scheduler from priority_class_name (here {expected}): leave it 0")]
    Priority { expected: i32 },
    #[error("In and NotIn need at least one value; Exists and DoesNotExist take none")]
    SelectorValues,
    #[error("is not a CIDR: an IPv4 or IPv6 network with its prefix length and no host bits set (e.g. 10.0.0.0/16, fd00::/64)")]
    Cidr,
    #[error("must lie inside the ipBlock's cidr {cidr}, of the same family")]
    ExceptOutside { cidr: String },
    #[error("an ipBlock peer takes no podSelector or namespaceSelector; give them as another peer")]
    IpBlockWithSelector,
    #[error("a peer needs a podSelector, a namespaceSelector or an ipBlock")]
    EmptyPeer,
    #[error("is not a protocol: one of TCP (the default), UDP, SCTP")]
    Protocol,
    #[error("is not a port: 1 to 65535 (named ports are not supported: pods declare no port names)")]
    Port,
    #[error("must be a port at or above port, and needs port")]
    EndPort,
    #[error("is not a policy type: Ingress or Egress")]
    PolicyType,
    #[error("give at least one label, as key=value (key= removes it)")]
    NoLabels,
    #[error("is set by the scheduler to the namespace's name")]
    NameLabel,
    #[error("must be a DNS-1123 label of at most {max} characters (its pods are named <name>-<revision>-<index>)")]
    WorkloadName { max: usize },
    #[error("may be at most {max}")]
    TooMany { max: u32 },
    #[error("is required")]
    Required,
    #[error("is not supported: select a workload's pods with matchLabels")]
    Unsupported,
    #[error("must also be among the template's labels (spec.template.metadata.labels), or the workload would not select its own pods")]
    SelectorNotInTemplate,
    #[error("is set by the scheduler on a workload's pods")]
    WorkloadLabel,
    #[error("a percent may be at most 100")]
    Percent,
    #[error("maxSurge and maxUnavailable may not both be 0: the rollout could not progress")]
    NoProgress,
    #[error("must be empty: the scheduler names each pod <workload>-<revision>-<index>")]
    SetByScheduler,
    #[error("must be empty or the workload's namespace")]
    OtherNamespace,
    #[error("must be between {min} and {max}")]
    Range { min: u64, max: u64 },
    #[error("may not be above maxReplicas ({max})")]
    MinAboveMax { max: u32 },
    #[error("is not a metric this scheduler has: Resource cpu (target.averageUtilization), Pods network_receive_bytes_per_second or network_transmit_bytes_per_second (target.averageValue), or External (a name set with berthctl metric set; target.value or target.averageValue)")]
    UnknownMetric,
    #[error("needs {what} above 0")]
    TargetRequired { what: &'static str },
    #[error("is not a scaling policy type: Pods or Percent")]
    ScalingPolicyType,
    #[error("{0}")]
    Cron(String),
    #[error("is a metric name: 1 to 253 characters of a-z, 0-9, '.', '_' and '-'")]
    MetricName,
    #[error("the encoded policy may take at most {max} bytes")]
    PolicyTooLarge { max: usize },
    #[error("{who} can ever host it: the largest instance type {whose} is {largest} ({cpu_millicores} millicores, {mib} MiB of memory)", who = if *.of_pools { "no pool" } else { "no node" }, whose = if *.of_pools { "of the configured pools" } else { "of the catalogue" }, mib = *.memory_bytes >> 20)]
    NoHost { largest: String, cpu_millicores: u64, memory_bytes: u64, of_pools: bool },
}

impl From<InvalidSpec> for tonic::Status {
    fn from(e: InvalidSpec) -> tonic::Status {
        tonic::Status::invalid_argument(format!("pod spec refused: {e}"))
    }
}

/// What a pod may ask for at most, from the config: the instance types of the configured pools,
/// or with no pool (nodes come only from agents) every type of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    types: Vec<HostType>,
    of_pools: bool,
    /// The config's priority classes: name → value.
    priority_classes: Vec<(String, i32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostType {
    id: String,
    cpu_millicores: u64,
    memory_bytes: u64,
}

impl Limits {
    pub fn of_pools(pools: &[NodePool]) -> Limits {
        let types: Vec<InstanceType> = pools.iter().flat_map(|p| &p.instance_types).filter_map(|t| berth_cloud::catalogue::instance_type(t)).collect();
        if types.is_empty() { Limits::of_types(berth_cloud::catalogue::instance_types(), false) } else { Limits::of_types(types, true) }
    }

    /// `of_pools`: the types are those of the configured pools (it says so when refusing).
    pub fn of_types(types: impl IntoIterator<Item = InstanceType>, of_pools: bool) -> Limits {
        let types = types.into_iter().map(|t| HostType { cpu_millicores: u64::from(t.vcpu) * 1000, memory_bytes: t.memory_mib << 20, id: t.id }).collect();
        Limits { types, of_pools, priority_classes: Vec::new() }
    }

    /// With the config's priority classes.
    pub fn with_priority_classes(mut self, classes: &[crate::config::PriorityClass]) -> Limits {
        self.priority_classes = classes.iter().map(|c| (c.name.clone(), c.value)).collect();
        self
    }

    /// The priority of a class the config has ("" is 0).
    pub fn priority_of(&self, class: &str) -> Option<i32> {
        if class.is_empty() {
            return Some(0);
        }
        self.priority_classes.iter().find(|(n, _)| n == class).map(|(_, v)| *v)
    }
}

/// Checks a submitted spec; the first rule broken is the answer.
pub fn pod(spec: &pb::PodSpec, limits: &Limits) -> Result<(), InvalidSpec> {
    let size = spec.encoded_len();
    if size > MAX_SPEC_BYTES {
        return Err(InvalidSpec { field: "spec".into(), value: format!("{size} bytes"), rule: Rule::TooLarge { max: MAX_SPEC_BYTES } });
    }
    check(dns1123_label(&spec.namespace), "spec.namespace", &spec.namespace, Rule::Dns1123Label)?;
    check(dns1123_label(&spec.name), "spec.name", &spec.name, Rule::Dns1123Label)?;
    resources(spec, limits)?;
    if pb::NetworkMode::try_from(spec.network_mode).is_err() {
        return Err(InvalidSpec { field: "spec.network_mode".into(), value: spec.network_mode.to_string(), rule: Rule::UnknownEnum { known: "NETWORK_MODE_UNSPECIFIED (shared), NETWORK_MODE_SHARED, NETWORK_MODE_EXCLUSIVE, NETWORK_MODE_TRUNK" } });
    }
    for (i, sg) in spec.security_group_ids.iter().enumerate() {
        check(cloud_id(sg, "sg-"), &format!("spec.security_group_ids[{i}]"), sg, Rule::CloudId { what: "security group", prefix: "sg-" })?;
    }
    if !spec.vswitch_id.is_empty() {
        check(cloud_id(&spec.vswitch_id, "vsw-"), "spec.vswitch_id", &spec.vswitch_id, Rule::CloudId { what: "vSwitch", prefix: "vsw-" })?;
    }
    labels(&spec.labels, "spec.labels")?;
    labels(&spec.pool_selector, "spec.pool_selector")?;
    volumes(&spec.volumes)?;
    placement_rules(spec)?;
    let Some(priority) = limits.priority_of(&spec.priority_class_name) else {
        let known = if limits.priority_classes.is_empty() { "none".to_string() } else { limits.priority_classes.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ") };
        return Err(InvalidSpec { field: "spec.priority_class_name".into(), value: shown(&spec.priority_class_name), rule: Rule::PriorityClass { known } });
    };
    check(spec.priority == 0 || spec.priority == priority, "spec.priority", &spec.priority.to_string(), Rule::Priority { expected: priority })?;
    for (i, arg) in spec.command.iter().enumerate() {
        check(!arg.contains('\0'), &format!("spec.command[{i}]"), arg, Rule::Nul)?;
    }
    Ok(())
}

/// The largest encoded NetworkPolicy ApplyNetworkPolicy takes.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;

/// Checks a NetworkPolicy as applied; the first rule broken is the answer, naming its field
/// (`spec.ingress[0].from[1].ipBlock.except[0]`, in the YAML's own names).
pub fn network_policy(p: &pb::NetworkPolicy) -> Result<(), InvalidSpec> {
    let size = p.encoded_len();
    if size > MAX_POLICY_BYTES {
        return Err(InvalidSpec { field: "spec".into(), value: format!("{size} bytes"), rule: Rule::PolicyTooLarge { max: MAX_POLICY_BYTES } });
    }
    check(dns1123_label(&p.namespace), "metadata.namespace", &p.namespace, Rule::Dns1123Label)?;
    check(dns1123_subdomain(&p.name) && p.name.len() <= 63, "metadata.name", &p.name, Rule::Dns1123Label)?;
    let spec = p.spec.clone().unwrap_or_default();
    if let Some(sel) = &spec.pod_selector {
        selector(sel, "spec.podSelector")?;
    }
    for (i, t) in spec.policy_types.iter().enumerate() {
        check(t == "Ingress" || t == "Egress", &format!("spec.policyTypes[{i}]"), t, Rule::PolicyType)?;
    }
    for (dir, peers, rules) in [("ingress", "from", &spec.ingress), ("egress", "to", &spec.egress)] {
        for (i, r) in rules.iter().enumerate() {
            let base = format!("spec.{dir}[{i}]");
            for (j, peer) in r.peers.iter().enumerate() {
                let field = format!("{base}.{peers}[{j}]");
                match (&peer.ip_block, &peer.pod_selector, &peer.namespace_selector) {
                    (Some(_), Some(_), _) | (Some(_), _, Some(_)) => return Err(InvalidSpec { field, value: "ipBlock and a selector".into(), rule: Rule::IpBlockWithSelector }),
                    (None, None, None) => return Err(InvalidSpec { field, value: "{}".into(), rule: Rule::EmptyPeer }),
                    (Some(b), None, None) => ip_block(b, &format!("{field}.ipBlock"))?,
                    (None, pods, namespaces) => {
                        if let Some(s) = pods {
                            selector(s, &format!("{field}.podSelector"))?;
                        }
                        if let Some(s) = namespaces {
                            selector(s, &format!("{field}.namespaceSelector"))?;
                        }
                    }
                }
            }
            for (j, port) in r.ports.iter().enumerate() {
                let field = format!("{base}.ports[{j}]");
                check(matches!(port.protocol.as_str(), "" | "TCP" | "UDP" | "SCTP"), &format!("{field}.protocol"), &port.protocol, Rule::Protocol)?;
                check((0..=65535).contains(&port.port), &format!("{field}.port"), &port.port.to_string(), Rule::Port)?;
                if port.end_port != 0 {
                    check(port.port != 0 && (port.port..=65535).contains(&port.end_port), &format!("{field}.endPort"), &port.end_port.to_string(), Rule::EndPort)?;
                }
            }
        }
    }
    Ok(())
}

/// Checks an applied workload; the first rule broken is the answer, naming its field in the
/// Deployment's own names (`spec.template.spec.cpu_millicores` for its pods' fields).
pub fn workload(w: &pb::Workload, limits: &Limits) -> Result<(), InvalidSpec> {
    use crate::workload::{MAX_NAME_LEN, MAX_REPLICAS, REVISION_LABEL, WORKLOAD_LABEL};
    check(dns1123_label(&w.namespace), "metadata.namespace", &w.namespace, Rule::Dns1123Label)?;
    check(dns1123_label(&w.name) && w.name.len() <= MAX_NAME_LEN, "metadata.name", &w.name, Rule::WorkloadName { max: MAX_NAME_LEN })?;
    labels(&w.labels, "metadata.labels")?;
    check(w.replicas <= MAX_REPLICAS, "spec.replicas", &w.replicas.to_string(), Rule::TooMany { max: MAX_REPLICAS })?;
    let Some(template) = &w.template else {
        return Err(InvalidSpec { field: "spec.template".into(), value: "none".into(), rule: Rule::Required });
    };
    let sel = w.selector.clone().unwrap_or_default();
    if let Some(e) = sel.match_expressions.first() {
        return Err(InvalidSpec { field: "spec.selector.matchExpressions[0]".into(), value: shown(&e.key), rule: Rule::Unsupported });
    }
    check(!sel.match_labels.is_empty(), "spec.selector.matchLabels", "{}", Rule::Required)?;
    labels(&sel.match_labels, "spec.selector.matchLabels")?;
    let mut keys: Vec<&String> = sel.match_labels.keys().collect();
    keys.sort();
    for k in keys {
        check(template.labels.get(k) == Some(&sel.match_labels[k]), &format!("spec.selector.matchLabels[{}]", shown(k)), &sel.match_labels[k], Rule::SelectorNotInTemplate)?;
    }
    for k in [WORKLOAD_LABEL, REVISION_LABEL] {
        check(!template.labels.contains_key(k), "spec.template.metadata.labels", k, Rule::WorkloadLabel)?;
    }
    let ru = w.rolling_update.unwrap_or_default();
    for (field, v) in [("spec.strategy.rollingUpdate.maxUnavailable", &ru.max_unavailable), ("spec.strategy.rollingUpdate.maxSurge", &ru.max_surge)] {
        if let Some(v) = v {
            check(!v.percent || v.value <= 100 || field.ends_with("maxSurge"), field, &format!("{}%", v.value), Rule::Percent)?;
            check(v.percent || v.value <= MAX_REPLICAS, field, &v.value.to_string(), Rule::TooMany { max: MAX_REPLICAS })?;
        }
    }
    if let (Some(s), Some(u)) = (&ru.max_surge, &ru.max_unavailable) {
        check(s.value != 0 || u.value != 0, "spec.strategy.rollingUpdate", "maxSurge 0, maxUnavailable 0", Rule::NoProgress)?;
    }
    check(template.name.is_empty(), "spec.template.metadata.name", &template.name, Rule::SetByScheduler)?;
    check(template.namespace.is_empty() || template.namespace == w.namespace, "spec.template.metadata.namespace", &template.namespace, Rule::OtherNamespace)?;
    let sample = crate::workload::pod_spec(w, crate::workload::pod_name(&w.name, u64::from(u32::MAX), MAX_REPLICAS));
    pod(&sample, limits).map_err(|mut e| {
        e.field = match e.field.strip_prefix("spec") {
            Some(rest) => format!("spec.template.spec{rest}"),
            None => e.field,
        };
        e
    })
}

/// Checks an applied HorizontalPodAutoscaler, naming its fields as autoscaling/v2 does.
pub fn hpa(h: &pb::HorizontalPodAutoscaler) -> Result<(), InvalidSpec> {
    use crate::workload::MAX_REPLICAS;
    check(dns1123_label(&h.namespace), "metadata.namespace", &h.namespace, Rule::Dns1123Label)?;
    check(dns1123_label(&h.name), "metadata.name", &h.name, Rule::Dns1123Label)?;
    check(dns1123_label(&h.target), "spec.scaleTargetRef.name", &h.target, Rule::Dns1123Label)?;
    check((1..=MAX_REPLICAS).contains(&h.max_replicas), "spec.maxReplicas", &h.max_replicas.to_string(), Rule::Range { min: 1, max: MAX_REPLICAS.into() })?;
    check(h.min_replicas <= h.max_replicas, "spec.minReplicas", &h.min_replicas.to_string(), Rule::MinAboveMax { max: h.max_replicas })?;
    check(!h.metrics.is_empty(), "spec.metrics", "[]", Rule::Required)?;
    check(h.metrics.len() <= 10, "spec.metrics", &h.metrics.len().to_string(), Rule::TooMany { max: 10 })?;
    for (i, m) in h.metrics.iter().enumerate() {
        let t = m.target.unwrap_or_default();
        match pb::MetricSource::try_from(m.source) {
            Ok(pb::MetricSource::CpuUtilization) => check(t.average_utilization > 0, &format!("spec.metrics[{i}].resource.target.averageUtilization"), "0", Rule::TargetRequired { what: "a percent" })?,
            Ok(pb::MetricSource::PodReceiveBytes | pb::MetricSource::PodTransmitBytes) => check(t.average_value_milli > 0, &format!("spec.metrics[{i}].pods.target.averageValue"), "0", Rule::TargetRequired { what: "bytes per second" })?,
            Ok(pb::MetricSource::External) => {
                check(metric_name(&m.external_name), &format!("spec.metrics[{i}].external.metric.name"), &m.external_name, Rule::MetricName)?;
                check((t.value_milli > 0) != (t.average_value_milli > 0), &format!("spec.metrics[{i}].external.target"), "", Rule::TargetRequired { what: "one of value and averageValue" })?;
            }
            _ => return Err(InvalidSpec { field: format!("spec.metrics[{i}].type"), value: m.source.to_string(), rule: Rule::UnknownMetric }),
        }
    }
    for (name, rules) in [("scaleUp", &h.scale_up), ("scaleDown", &h.scale_down)] {
        let Some(r) = rules else { continue };
        if let Some(w) = r.stabilization_window_secs {
            check(w <= 3600, &format!("spec.behavior.{name}.stabilizationWindowSeconds"), &w.to_string(), Rule::Range { min: 0, max: 3600 })?;
        }
        check(pb::SelectPolicy::try_from(r.select_policy).is_ok(), &format!("spec.behavior.{name}.selectPolicy"), &r.select_policy.to_string(), Rule::UnknownEnum { known: "Max, Min, Disabled" })?;
        for (j, p) in r.policies.iter().enumerate() {
            let field = format!("spec.behavior.{name}.policies[{j}]");
            check(matches!(pb::ScalingPolicyKind::try_from(p.kind), Ok(pb::ScalingPolicyKind::Pods | pb::ScalingPolicyKind::Percent)), &format!("{field}.type"), &p.kind.to_string(), Rule::ScalingPolicyType)?;
            check(p.value > 0, &format!("{field}.value"), &p.value.to_string(), Rule::Range { min: 1, max: u32::MAX.into() })?;
            check((1..=1800).contains(&p.period_secs), &format!("{field}.periodSeconds"), &p.period_secs.to_string(), Rule::Range { min: 1, max: 1800 })?;
        }
    }
    if let Some(p) = &h.prediction {
        prediction(p)?;
    }
    Ok(())
}

/// Checks an HPA's `spec.prediction` (zero fields take their defaults): a step of at most an
/// hour, a period of whole steps, 1 to 56 periods, and a lead (boot + margin) within a period.
fn prediction(p: &pb::Prediction) -> Result<(), InvalidSpec> {
    use crate::predict::{MAX_PERIODS, Spec};
    let s = Spec::of(p);
    check(s.step_ms <= 3_600_000, "spec.prediction.stepMs", &p.step_ms.to_string(), Rule::Range { min: 1, max: 3_600_000 })?;
    check(s.period_ms >= 2 * s.step_ms && s.period_ms.is_multiple_of(s.step_ms), "spec.prediction.periodMs", &p.period_ms.to_string(), Rule::PeriodOfSteps { step: s.step_ms })?;
    check(s.periods <= MAX_PERIODS, "spec.prediction.periods", &p.periods.to_string(), Rule::Range { min: 1, max: MAX_PERIODS.into() })?;
    check(p.margin_ms <= s.period_ms, "spec.prediction.marginMs", &p.margin_ms.to_string(), Rule::Range { min: 0, max: s.period_ms })?;
    let boot_max = s.period_ms - p.margin_ms;
    check(p.boot_ms <= boot_max, "spec.prediction.bootMs", &p.boot_ms.to_string(), Rule::Range { min: 0, max: boot_max })?;
    Ok(())
}

/// Checks an applied CronHorizontalPodAutoscaler: names, time zone, excluded days and each job's
/// schedule (six fields, seconds first) and size.
pub fn cron_hpa(c: &pb::CronHorizontalPodAutoscaler) -> Result<(), InvalidSpec> {
    use crate::cron::{Schedule, time_zone};
    check(dns1123_label(&c.namespace), "metadata.namespace", &c.namespace, Rule::Dns1123Label)?;
    check(dns1123_label(&c.name), "metadata.name", &c.name, Rule::Dns1123Label)?;
    check(dns1123_label(&c.target), "spec.scaleTargetRef.name", &c.target, Rule::Dns1123Label)?;
    time_zone(&c.time_zone).map_err(|e| InvalidSpec { field: "spec.timeZone".into(), value: shown(&c.time_zone), rule: Rule::Cron(e.to_string()) })?;
    for (i, d) in c.exclude_dates.iter().enumerate() {
        Schedule::parse(d).map_err(|e| InvalidSpec { field: format!("spec.excludeDates[{i}]"), value: shown(d), rule: Rule::Cron(e.to_string()) })?;
    }
    check(!c.jobs.is_empty(), "spec.jobs", "[]", Rule::Required)?;
    let mut names = BTreeSet::new();
    for (i, j) in c.jobs.iter().enumerate() {
        check(dns1123_label(&j.name), &format!("spec.jobs[{i}].name"), &j.name, Rule::Dns1123Label)?;
        check(names.insert(j.name.as_str()), &format!("spec.jobs[{i}].name"), &j.name, Rule::Duplicate { what: "job names" })?;
        Schedule::parse(&j.schedule).map_err(|e| InvalidSpec { field: format!("spec.jobs[{i}].schedule"), value: shown(&j.schedule), rule: Rule::Cron(e.to_string()) })?;
        check(j.target_size <= crate::workload::MAX_REPLICAS, &format!("spec.jobs[{i}].targetSize"), &j.target_size.to_string(), Rule::TooMany { max: crate::workload::MAX_REPLICAS })?;
    }
    Ok(())
}

/// An external metric's name (Kubernetes allows more; these are the characters we store).
pub fn metric_name(s: &str) -> bool {
    (1..=253).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a SetExternalMetric call.
pub fn external_metric(namespace: &str, name: &str) -> Result<(), InvalidSpec> {
    check(dns1123_label(namespace), "namespace", namespace, Rule::Dns1123Label)?;
    check(metric_name(name), "name", name, Rule::MetricName)
}

/// Checks a LabelNamespace call: the namespace's name and each label (a value "" removes it;
/// the label naming the namespace is set by the scheduler).
pub fn namespace_labels(namespace: &str, labels_given: &std::collections::HashMap<String, String>) -> Result<(), InvalidSpec> {
    check(dns1123_label(namespace), "namespace", namespace, Rule::Dns1123Label)?;
    check(!labels_given.is_empty(), "labels", "", Rule::NoLabels)?;
    check(!labels_given.contains_key(crate::netpol::NAME_LABEL), "labels", crate::netpol::NAME_LABEL, Rule::NameLabel)?;
    labels(labels_given, "labels")
}

fn selector(sel: &pb::LabelSelector, field: &str) -> Result<(), InvalidSpec> {
    labels(&sel.match_labels, &format!("{field}.matchLabels"))?;
    for (i, e) in sel.match_expressions.iter().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        check(label_key(&e.key), &format!("{f}.key"), &e.key, Rule::LabelKey)?;
        let values_needed = match e.operator.as_str() {
            "In" | "NotIn" => true,
            "Exists" | "DoesNotExist" => false,
            _ => return Err(InvalidSpec { field: format!("{f}.operator"), value: shown(&e.operator), rule: Rule::SelectorOperator }),
        };
        check(values_needed != e.values.is_empty(), &format!("{f}.values"), &e.values.join(","), Rule::SelectorValues)?;
        for (j, v) in e.values.iter().enumerate() {
            check(v.is_empty() || label_name(v), &format!("{f}.values[{j}]"), v, Rule::LabelValue)?;
        }
    }
    Ok(())
}

/// Tolerations, node affinity, pod (anti-)affinity and topology spread constraints.
fn placement_rules(spec: &pb::PodSpec) -> Result<(), InvalidSpec> {
    use crate::placement::labels::TOPOLOGY_KEYS;
    use crate::placement::plugins::taints::{EFFECTS, NO_EXECUTE};
    for (i, t) in spec.tolerations.iter().enumerate() {
        let f = |x: &str| format!("spec.tolerations[{i}].{x}");
        check(matches!(t.operator.as_str(), "" | "Equal" | "Exists"), &f("operator"), &t.operator, Rule::TolerationOperator)?;
        check(t.operator != "Exists" || t.value.is_empty(), &f("value"), &t.value, Rule::ExistsWithValue)?;
        check(!t.key.is_empty() || t.operator == "Exists", &f("key"), &t.key, Rule::EmptyTolerationKey)?;
        check(t.key.is_empty() || label_key(&t.key), &f("key"), &t.key, Rule::LabelKey)?;
        check(t.value.is_empty() || label_name(&t.value), &f("value"), &t.value, Rule::LabelValue)?;
        check(t.effect.is_empty() || EFFECTS.contains(&t.effect.as_str()), &f("effect"), &t.effect, Rule::Effect)?;
        if let Some(secs) = t.toleration_seconds {
            check(secs >= 0 && (t.effect == NO_EXECUTE || t.effect.is_empty()), &f("toleration_seconds"), &secs.to_string(), Rule::TolerationSeconds)?;
        }
    }
    if let Some(na) = &spec.node_affinity {
        for (i, term) in na.required.iter().enumerate() {
            node_term(term, &format!("spec.node_affinity.required[{i}]"))?;
        }
        for (i, p) in na.preferred.iter().enumerate() {
            let f = format!("spec.node_affinity.preferred[{i}]");
            check((1..=100).contains(&p.weight), &format!("{f}.weight"), &p.weight.to_string(), Rule::Weight)?;
            let Some(term) = &p.preference else { return Err(InvalidSpec { field: format!("{f}.preference"), value: "none".into(), rule: Rule::MissingTerm }) };
            node_term(term, &format!("{f}.preference"))?;
        }
    }
    for (name, a) in [("pod_affinity", &spec.pod_affinity), ("pod_anti_affinity", &spec.pod_anti_affinity)] {
        let Some(a) = a else { continue };
        for (i, t) in a.required.iter().enumerate() {
            pod_term(t, &format!("spec.{name}.required[{i}]"))?;
        }
        for (i, w) in a.preferred.iter().enumerate() {
            let f = format!("spec.{name}.preferred[{i}]");
            check((1..=100).contains(&w.weight), &format!("{f}.weight"), &w.weight.to_string(), Rule::Weight)?;
            let Some(t) = &w.term else { return Err(InvalidSpec { field: format!("{f}.term"), value: "none".into(), rule: Rule::MissingTerm }) };
            pod_term(t, &format!("{f}.term"))?;
        }
    }
    for (i, c) in spec.topology_spread_constraints.iter().enumerate() {
        let f = |x: &str| format!("spec.topology_spread_constraints[{i}].{x}");
        check(c.max_skew >= 1, &f("max_skew"), &c.max_skew.to_string(), Rule::MaxSkew)?;
        check(TOPOLOGY_KEYS.contains(&c.topology_key.as_str()), &f("topology_key"), &c.topology_key, Rule::TopologyKey)?;
        check(matches!(c.when_unsatisfiable.as_str(), "" | "DoNotSchedule" | "ScheduleAnyway"), &f("when_unsatisfiable"), &c.when_unsatisfiable, Rule::WhenUnsatisfiable)?;
        check(c.min_domains >= 0 && (c.min_domains == 0 || c.when_unsatisfiable != "ScheduleAnyway"), &f("min_domains"), &c.min_domains.to_string(), Rule::MinDomains)?;
        if let Some(sel) = &c.label_selector {
            selector(sel, &f("label_selector"))?;
        }
    }
    Ok(())
}

fn node_term(term: &pb::NodeSelectorTerm, field: &str) -> Result<(), InvalidSpec> {
    check(!term.match_expressions.is_empty(), &format!("{field}.match_expressions"), "[]", Rule::EmptyTerm)?;
    for (j, r) in term.match_expressions.iter().enumerate() {
        let f = format!("{field}.match_expressions[{j}]");
        check(label_key(&r.key), &format!("{f}.key"), &r.key, Rule::LabelKey)?;
        match r.operator.as_str() {
            "In" | "NotIn" => check(!r.values.is_empty(), &format!("{f}.values"), "", Rule::SelectorValues)?,
            "Exists" | "DoesNotExist" => check(r.values.is_empty(), &format!("{f}.values"), &r.values.join(","), Rule::SelectorValues)?,
            "Gt" | "Lt" => check(r.values.len() == 1 && r.values[0].parse::<i64>().is_ok(), &format!("{f}.values"), &r.values.join(","), Rule::IntegerValue)?,
            _ => return Err(InvalidSpec { field: format!("{f}.operator"), value: shown(&r.operator), rule: Rule::NodeSelectorOperator }),
        }
        for (k, v) in r.values.iter().enumerate() {
            check(v.is_empty() || label_name(v), &format!("{f}.values[{k}]"), v, Rule::LabelValue)?;
        }
    }
    Ok(())
}

fn pod_term(t: &pb::PodAffinityTerm, field: &str) -> Result<(), InvalidSpec> {
    check(crate::placement::labels::TOPOLOGY_KEYS.contains(&t.topology_key.as_str()), &format!("{field}.topology_key"), &t.topology_key, Rule::TopologyKey)?;
    for (k, ns) in t.namespaces.iter().enumerate() {
        check(dns1123_label(ns), &format!("{field}.namespaces[{k}]"), ns, Rule::Dns1123Label)?;
    }
    if let Some(sel) = &t.label_selector {
        selector(sel, &format!("{field}.label_selector"))?;
    }
    Ok(())
}

fn ip_block(b: &pb::IpBlock, field: &str) -> Result<(), InvalidSpec> {
    let cidr: Option<ipnetwork::IpNetwork> = strict_cidr(&b.cidr);
    let Some(cidr) = cidr else { return Err(InvalidSpec { field: format!("{field}.cidr"), value: shown(&b.cidr), rule: Rule::Cidr }) };
    for (i, e) in b.except.iter().enumerate() {
        let f = format!("{field}.except[{i}]");
        let Some(ex) = strict_cidr(e) else { return Err(InvalidSpec { field: f, value: shown(e), rule: Rule::Cidr }) };
        check(ex.is_ipv4() == cidr.is_ipv4() && cidr.contains(ex.network()) && ex.prefix() >= cidr.prefix(), &f, e, Rule::ExceptOutside { cidr: b.cidr.clone() })?;
    }
    Ok(())
}

/// A CIDR with its prefix length and no host bits.
fn strict_cidr(s: &str) -> Option<ipnetwork::IpNetwork> {
    let (_, len) = s.split_once('/')?;
    len.parse::<u8>().ok()?;
    let n: ipnetwork::IpNetwork = s.parse().ok()?;
    (n.network() == n.ip()).then_some(n)
}

fn check(ok: bool, field: &str, value: &str, rule: Rule) -> Result<(), InvalidSpec> {
    if ok { Ok(()) } else { Err(InvalidSpec { field: field.into(), value: shown(value), rule }) }
}

/// A value as an error shows it: quoted, escaped (newlines, NUL, anything unprintable), and cut
/// after 64 characters with its length in bytes.
pub fn shown(value: &str) -> String {
    const SHOWN: usize = 64;
    match value.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
        None => format!("{value:?}"),
    }
}

fn resources(spec: &pb::PodSpec, limits: &Limits) -> Result<(), InvalidSpec> {
    let (cpu, memory) = (spec.cpu_millicores, spec.memory_bytes);
    if limits.types.is_empty() || limits.types.iter().any(|t| t.cpu_millicores >= cpu && t.memory_bytes >= memory) {
        return Ok(());
    }
    let most_cpu = limits.types.iter().max_by_key(|t| (t.cpu_millicores, t.memory_bytes)).expect("some type");
    let most_memory = limits.types.iter().max_by_key(|t| (t.memory_bytes, t.cpu_millicores)).expect("some type");
    let (field, value, largest) = if cpu > most_cpu.cpu_millicores {
        ("spec.cpu_millicores", cpu.to_string(), most_cpu)
    } else if memory > most_memory.memory_bytes {
        ("spec.memory_bytes", memory.to_string(), most_memory)
    } else {
        // Each fits some type, but no type has both.
        ("spec.cpu_millicores", format!("{cpu} with memory_bytes {memory}"), most_cpu)
    };
    Err(InvalidSpec { field: field.into(), value, rule: Rule::NoHost { largest: largest.id.clone(), cpu_millicores: largest.cpu_millicores, memory_bytes: largest.memory_bytes, of_pools: limits.of_pools } })
}

fn labels(map: &std::collections::HashMap<String, String>, field: &str) -> Result<(), InvalidSpec> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for k in keys {
        check(label_key(k), field, k, Rule::LabelKey)?;
        let v = &map[k];
        check(v.is_empty() || label_name(v), &format!("{field}[{}]", shown(k)), v, Rule::LabelValue)?;
    }
    Ok(())
}

fn volumes(volumes: &[pb::VolumeSpec]) -> Result<(), InvalidSpec> {
    let mut names = BTreeSet::new();
    let mut paths = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let field = |f: &str| format!("spec.volumes[{i}].{f}");
        check(dns1123_label(&v.name), &field("name"), &v.name, Rule::Dns1123Label)?;
        check(names.insert(v.name.as_str()), &field("name"), &v.name, Rule::Duplicate { what: "volume names" })?;
        let Ok(kind) = pb::VolumeKind::try_from(v.kind) else {
            return Err(InvalidSpec { field: field("kind"), value: v.kind.to_string(), rule: Rule::UnknownEnum { known: "VOLUME_KIND_UNSPECIFIED (with parameter volumeId), VOLUME_KIND_DISK, VOLUME_KIND_NAS, VOLUME_KIND_OSS" } });
        };
        let existing = v.parameters.get("volumeId").is_some_and(|id| !id.is_empty());
        check(kind != pb::VolumeKind::Unspecified || existing, &field("kind"), kind.as_str_name(), Rule::KindWithoutVolume)?;
        let path = mount_path(&v.mount_path);
        check(path.is_some(), &field("mount_path"), &v.mount_path, Rule::MountPath)?;
        // The runner mounts by the path's components: /data, /data/ and /./data are one place.
        check(paths.insert(path.unwrap_or_default()), &field("mount_path"), &v.mount_path, Rule::Duplicate { what: "mount paths" })?;
        let param = |k: &str| format!("spec.volumes[{i}].parameters[\"{k}\"]");
        let size = match v.parameters.get("size") {
            Some(s) => Some(disk::parse_size(s).ok_or_else(|| InvalidSpec { field: param("size"), value: shown(s), rule: Rule::Size })?),
            None => None,
        };
        if kind == pb::VolumeKind::Disk && !existing {
            disk_volume(v, size, &param)?;
        }
        if let Some(id) = v.parameters.get("snapshotId") {
            check(cloud_id(id, "s-"), &param("snapshotId"), id, Rule::CloudId { what: "snapshot", prefix: "s-" })?;
        }
    }
    Ok(())
}

/// A disk made for the pod: a category the cloud has, and a size within its range. Below the
/// minimum is no error: the CSI driver makes the category's smallest disk.
fn disk_volume(v: &pb::VolumeSpec, size: Option<i64>, param: &dyn Fn(&str) -> String) -> Result<(), InvalidSpec> {
    let given = |k: &str| v.parameters.get(k).map(String::as_str).filter(|s| !s.is_empty());
    let category = given("category").unwrap_or(disk::DEFAULT_CATEGORY);
    check(disk::CATEGORIES.contains(&category), &param("category"), category, Rule::DiskCategory)?;
    let level = (category == "cloud_essd").then(|| given("performanceLevel").unwrap_or(disk::DEFAULT_ESSD_LEVEL));
    if let Some(l) = level {
        check(disk::ESSD_LEVELS.contains(&l), &param("performanceLevel"), l, Rule::PerformanceLevel)?;
    } else if let Some(l) = given("performanceLevel") {
        // Only ESSDs have levels: the CSI driver refuses one on another category.
        return Err(InvalidSpec { field: param("performanceLevel"), value: shown(l), rule: Rule::LevelWithoutEssd });
    }
    let Some(bytes) = size else { return Ok(()) };
    let (_, max) = disk::size_limits_gib(category, level);
    const GIB: i64 = 1 << 30;
    let gib = bytes / GIB + i64::from(bytes % GIB != 0);
    let kind = level.map_or_else(|| category.to_string(), |l| format!("{category} {l}"));
    check(gib <= max, &param("size"), &v.parameters["size"], Rule::DiskTooLarge { kind, gib, max })
}

/// The mount path's components joined, or `None` when it is not absolute, climbs (`..`), holds
/// NUL or names no directory.
fn mount_path(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.contains('\0') {
        return None;
    }
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.is_empty() || parts.contains(&"..") {
        return None;
    }
    Some(parts.join("/"))
}

fn dns1123_label(s: &str) -> bool {
    (1..=63).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') && alnum_ends(s)
}

fn dns1123_subdomain(s: &str) -> bool {
    (1..=253).contains(&s.len()) && s.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') && alnum_ends(part))
}

/// A label key: `[prefix/]name`, the prefix a DNS-1123 subdomain.
pub fn label_key(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => dns1123_subdomain(prefix) && label_name(name),
        None => label_name(k),
    }
}

/// A label key's name part, or a non-empty label value.
pub fn label_name(s: &str) -> bool {
    (1..=63).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) && alnum_ends(s)
}

fn alnum_ends(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric) && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// `sg-…`, `vsw-…`: the prefix, then lower-case letters and digits (the cloud's IDs), with inner
/// hyphens as test fixtures and the local cloud's zone-named vSwitches use.
fn cloud_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|tail| tail.len() <= 64 && dns1123_label(tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prediction_that_cannot_work_is_refused_naming_its_field_and_value() {
        let with = |p: pb::Prediction| pb::HorizontalPodAutoscaler {
            namespace: "d".into(),
            name: "web".into(),
            target: "web".into(),
            max_replicas: 9,
            metrics: vec![pb::HpaMetric { source: pb::MetricSource::CpuUtilization as i32, external_name: String::new(), target: Some(pb::MetricTarget { average_utilization: 50, ..Default::default() }) }],
            prediction: Some(p),
            ..Default::default()
        };
        let refused = |p: pb::Prediction| hpa(&with(p)).map_err(|e| (e.field, e.value));
        assert_eq!(refused(pb::Prediction::default()), Ok(()));
        assert_eq!(refused(pb::Prediction { step_ms: 1000, period_ms: 20_000, periods: 3, boot_ms: 5_000, margin_ms: 1_000 }), Ok(()));
        assert_eq!(refused(pb::Prediction { step_ms: 7_200_000, ..Default::default() }), Err(("spec.prediction.stepMs".into(), "\"7200000\"".into())));
        assert_eq!(refused(pb::Prediction { step_ms: 1000, period_ms: 1500, ..Default::default() }), Err(("spec.prediction.periodMs".into(), "\"1500\"".into())));
        assert_eq!(refused(pb::Prediction { step_ms: 1000, period_ms: 1000, ..Default::default() }), Err(("spec.prediction.periodMs".into(), "\"1000\"".into())));
        assert_eq!(refused(pb::Prediction { periods: 57, ..Default::default() }), Err(("spec.prediction.periods".into(), "\"57\"".into())));
        assert_eq!(refused(pb::Prediction { step_ms: 1000, period_ms: 20_000, boot_ms: 19_000, margin_ms: 2_000, ..Default::default() }), Err(("spec.prediction.bootMs".into(), "\"19000\"".into())));
        let e = hpa(&with(pb::Prediction { step_ms: 1000, period_ms: 1500, ..Default::default() })).unwrap_err();
        assert!(e.to_string().contains("whole number, at least 2, of stepMs (1000 ms)"), "{e}");
    }

    fn np(f: impl FnOnce(&mut pb::NetworkPolicySpec)) -> pb::NetworkPolicy {
        let mut spec = pb::NetworkPolicySpec {
            pod_selector: Some(pb::LabelSelector { match_labels: [("app".to_string(), "db".to_string())].into(), match_expressions: vec![] }),
            ingress: vec![pb::NetworkPolicyRule {
                peers: vec![pb::NetworkPolicyPeer { ip_block: Some(pb::IpBlock { cidr: "10.0.0.0/16".into(), except: vec!["10.0.1.0/24".into()] }), ..Default::default() }],
                ports: vec![pb::NetworkPolicyPort { protocol: "UDP".into(), port: 5000, end_port: 5010 }],
            }],
            ..Default::default()
        };
        f(&mut spec);
        pb::NetworkPolicy { namespace: "prod".into(), name: "db".into(), spec: Some(spec), version: 0 }
    }

    fn refused(p: &pb::NetworkPolicy) -> (String, String) {
        let e = network_policy(p).unwrap_err();
        (e.field.clone(), e.to_string())
    }

    #[test]
    fn a_network_policy_is_refused_naming_the_field_and_value() {
        network_policy(&np(|_| {})).unwrap();
        let (f, m) = refused(&np(|s| s.ingress[0].peers[0].ip_block.as_mut().unwrap().cidr = "10.0.0.1/16".into()));
        assert_eq!(f, "spec.ingress[0].from[0].ipBlock.cidr", "{m}");
        assert!(m.contains("10.0.0.1/16") && m.contains("host bits"), "{m}");
        let (f, m) = refused(&np(|s| s.ingress[0].peers[0].ip_block.as_mut().unwrap().except = vec!["10.9.0.0/24".into()]));
        assert_eq!(f, "spec.ingress[0].from[0].ipBlock.except[0]", "{m}");
        let (f, _) = refused(&np(|s| s.ingress[0].ports[0].protocol = "ICMP".into()));
        assert_eq!(f, "spec.ingress[0].ports[0].protocol");
        let (f, m) = refused(&np(|s| s.ingress[0].ports[0].end_port = 4000));
        assert_eq!(f, "spec.ingress[0].ports[0].endPort", "{m}");
        let (f, _) = refused(&np(|s| s.ingress[0].ports[0].port = 70000));
        assert_eq!(f, "spec.ingress[0].ports[0].port");
        let (f, _) = refused(&np(|s| s.egress = vec![pb::NetworkPolicyRule { peers: vec![pb::NetworkPolicyPeer::default()], ports: vec![] }]));
        assert_eq!(f, "spec.egress[0].to[0]");
        let (f, _) = refused(&np(|s| s.policy_types = vec!["Sideways".into()]));
        assert_eq!(f, "spec.policyTypes[0]");
        let (f, _) = refused(&np(|s| s.pod_selector.as_mut().unwrap().match_expressions = vec![pb::LabelSelectorRequirement { key: "app".into(), operator: "In".into(), values: vec![] }]));
        assert_eq!(f, "spec.podSelector.matchExpressions[0].values");
        let mut bad_name = np(|_| {});
        bad_name.name = "Not_A_Name".into();
        assert_eq!(refused(&bad_name).0, "metadata.name");
        assert_eq!(namespace_labels("prod", &[(crate::netpol::NAME_LABEL.to_string(), "x".to_string())].into()).unwrap_err().field, "labels");
        assert_eq!(namespace_labels("Prod", &[("a".to_string(), "b".to_string())].into()).unwrap_err().field, "namespace");
    }

    fn limits() -> Limits {
        Limits::of_types(["ecs.g7.large", "ecs.r7.large"].map(|t| berth_cloud::catalogue::instance_type(t).unwrap()), true)
    }

    fn volume(name: &str, kind: pb::VolumeKind, mount_path: &str, params: &[(&str, &str)]) -> pb::VolumeSpec {
        pb::VolumeSpec { name: name.into(), kind: kind as i32, mount_path: mount_path.into(), read_only: false, parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    /// A spec using every field, each at a valid value.
    fn valid() -> pb::PodSpec {
        pb::PodSpec {
            namespace: "team-a".into(),
            name: "web-0".into(),
            cpu_millicores: 2000,
            memory_bytes: 16 << 30,
            network_mode: pb::NetworkMode::Trunk as i32,
            security_group_ids: vec!["sg-bp1abc2def".into()],
            vswitch_id: "vsw-zone-a".into(),
            volumes: vec![
                volume("data", pb::VolumeKind::Disk, "/data", &[("size", "20Gi"), ("category", "cloud_essd"), ("performanceLevel", "PL1")]),
                volume("small", pb::VolumeKind::Disk, "/data/small/", &[("size", "1Gi"), ("category", "cloud_ssd")]),
                volume("shared", pb::VolumeKind::Nas, "/shared", &[("volumeId", "nas:fs-1::/")]),
                volume("old", pb::VolumeKind::Unspecified, "/old", &[("volumeId", "d-abc")]),
                volume("objects", pb::VolumeKind::Oss, "/objects", &[("bucket", "pods")]),
            ],
            pool_selector: [("pool".to_string(), "small".to_string()), ("zone".into(), "cn-hangzhou-a".into()), ("disk".into(), "".into())].into(),
            labels: [("app".to_string(), "Web_1.x".to_string()), ("berth.io/tier".into(), "front".into())].into(),
            command: vec!["sh".into(), "-c".into(), "echo hi\nsleep 1".into()],
            tolerations: vec![
                pb::Toleration { key: "dedicated".into(), operator: "Equal".into(), value: "gpu".into(), effect: "NoSchedule".into(), toleration_seconds: None },
                pb::Toleration { key: "spot".into(), operator: "Exists".into(), effect: "NoExecute".into(), toleration_seconds: Some(30), ..Default::default() },
                pb::Toleration { operator: "Exists".into(), ..Default::default() },
            ],
            node_affinity: Some(pb::NodeAffinity {
                required: vec![pb::NodeSelectorTerm { match_expressions: vec![requirement("kubernetes.io/arch", "In", &["amd64"]), requirement("gpus", "Gt", &["1"]), requirement("spot", "DoesNotExist", &[])] }],
                preferred: vec![pb::PreferredSchedulingTerm { weight: 50, preference: Some(pb::NodeSelectorTerm { match_expressions: vec![requirement("topology.kubernetes.io/zone", "NotIn", &["z9"])] }) }],
            }),
            pod_anti_affinity: Some(pb::PodAffinity {
                required: vec![pb::PodAffinityTerm { label_selector: Some(pb::LabelSelector { match_labels: [("app".to_string(), "web".to_string())].into(), match_expressions: vec![] }), namespaces: vec![], topology_key: "kubernetes.io/hostname".into() }],
                preferred: vec![pb::WeightedPodAffinityTerm { weight: 10, term: Some(pb::PodAffinityTerm { label_selector: None, namespaces: vec!["team-b".into()], topology_key: "topology.kubernetes.io/zone".into() }) }],
            }),
            topology_spread_constraints: vec![pb::TopologySpreadConstraint { max_skew: 1, topology_key: "topology.kubernetes.io/zone".into(), when_unsatisfiable: "DoNotSchedule".into(), label_selector: None, min_domains: 3 }],
            ..Default::default()
        }
    }

    fn requirement(key: &str, op: &str, values: &[&str]) -> pb::NodeSelectorRequirement {
        pb::NodeSelectorRequirement { key: key.into(), operator: op.into(), values: values.iter().map(|v| v.to_string()).collect() }
    }

    #[test]
    fn a_spec_using_every_field_passes() {
        assert_eq!(pod(&valid(), &limits()), Ok(()));
        let mut at_most = valid();
        at_most.volumes[0].parameters.insert("size".into(), "64Ti".into());
        at_most.name = "a".repeat(63);
        assert_eq!(pod(&at_most, &limits()), Ok(()));
    }

    type Row = (&'static str, fn(&mut pb::PodSpec), &'static str, Rule);

    fn row(what: &'static str, change: fn(&mut pb::PodSpec), field: &'static str, rule: Rule) -> Row {
        (what, change, field, rule)
    }

    /// One row per bad input: what is changed in a valid spec, the field named, the rule.
    fn rows() -> Vec<Row> {
        let label = Rule::Dns1123Label;
        let sg = Rule::CloudId { what: "security group", prefix: "sg-" };
        let vsw = Rule::CloudId { what: "vSwitch", prefix: "vsw-" };
        let host = |largest: &str, cpu, mib: u64| Rule::NoHost { largest: largest.into(), cpu_millicores: cpu, memory_bytes: mib << 20, of_pools: true };
        let network = Rule::UnknownEnum { known: "NETWORK_MODE_UNSPECIFIED (shared), NETWORK_MODE_SHARED, NETWORK_MODE_EXCLUSIVE, NETWORK_MODE_TRUNK" };
        let kind = Rule::UnknownEnum { known: "VOLUME_KIND_UNSPECIFIED (with parameter volumeId), VOLUME_KIND_DISK, VOLUME_KIND_NAS, VOLUME_KIND_OSS" };
        let essd = |level: &str, gib| Rule::DiskTooLarge { kind: format!("cloud_essd {level}"), gib, max: 65_536 };
        vec![
            row("a 3 MiB name", |s| s.name = "a".repeat(3 << 20), "spec", Rule::TooLarge { max: MAX_SPEC_BYTES }),
            row("a 300 KiB command", |s| s.command.push("x".repeat(300 << 10)), "spec", Rule::TooLarge { max: MAX_SPEC_BYTES }),
            row("no namespace", |s| s.namespace.clear(), "spec.namespace", label.clone()),
            row("a namespace with a slash", |s| s.namespace = "a/b".into(), "spec.namespace", label.clone()),
            row("no name", |s| s.name.clear(), "spec.name", label.clone()),
            row("a name with a space", |s| s.name = "my pod".into(), "spec.name", label.clone()),
            row("a name with a newline", |s| s.name = "web\n".into(), "spec.name", label.clone()),
            row("a name with NUL", |s| s.name = "we\0b".into(), "spec.name", label.clone()),
            row("an upper-case name", |s| s.name = "Web".into(), "spec.name", label.clone()),
            row("a name with an underscore", |s| s.name = "web_1".into(), "spec.name", label.clone()),
            row("a name starting with '-'", |s| s.name = "-web".into(), "spec.name", label.clone()),
            row("a name ending with '-'", |s| s.name = "web-".into(), "spec.name", label.clone()),
            row("a name of 64 characters", |s| s.name = "a".repeat(64), "spec.name", label.clone()),
            row("a non-ASCII name", |s| s.name = "wéb".into(), "spec.name", label.clone()),
            row("CPU beyond every type", |s| s.cpu_millicores = u64::MAX, "spec.cpu_millicores", host("ecs.r7.large", 2000, 16 << 10)),
            row("memory beyond every type", |s| s.memory_bytes = 17 << 30, "spec.memory_bytes", host("ecs.r7.large", 2000, 16 << 10)),
            row("network mode 99", |s| s.network_mode = 99, "spec.network_mode", network.clone()),
            row("a negative network mode", |s| s.network_mode = -1, "spec.network_mode", network.clone()),
            row("an empty security group", |s| s.security_group_ids.push(String::new()), "spec.security_group_ids[1]", sg.clone()),
            row("a security group of another prefix", |s| s.security_group_ids[0] = "vsw-1".into(), "spec.security_group_ids[0]", sg.clone()),
            row("an upper-case security group", |s| s.security_group_ids[0] = "sg-ABC".into(), "spec.security_group_ids[0]", sg.clone()),
            row("a bare prefix as security group", |s| s.security_group_ids[0] = "sg-".into(), "spec.security_group_ids[0]", sg.clone()),
            row("a vSwitch of another prefix", |s| s.vswitch_id = "sg-1".into(), "spec.vswitch_id", vsw.clone()),
            row("a vSwitch with a space", |s| s.vswitch_id = "vsw-a b".into(), "spec.vswitch_id", vsw.clone()),
            row("an empty label key", |s| _ = s.labels.insert(String::new(), "x".into()), "spec.labels", Rule::LabelKey),
            row("a label key with a space", |s| _ = s.labels.insert("my app".into(), "x".into()), "spec.labels", Rule::LabelKey),
            row("a label key of 64 characters", |s| _ = s.labels.insert("k".repeat(64), "x".into()), "spec.labels", Rule::LabelKey),
            row("a label key with an upper-case prefix", |s| _ = s.labels.insert("Berth.io/x".into(), "x".into()), "spec.labels", Rule::LabelKey),
            row("a label key with an empty prefix", |s| _ = s.labels.insert("/x".into(), "x".into()), "spec.labels", Rule::LabelKey),
            row("a label key with an empty name", |s| _ = s.labels.insert("berth.io/".into(), "x".into()), "spec.labels", Rule::LabelKey),
            row("a label key with two slashes", |s| _ = s.labels.insert("a/b/c".into(), "x".into()), "spec.labels", Rule::LabelKey),
            row("a label key with a prefix of 254 characters", |s| _ = s.labels.insert(format!("{}/x", "a".repeat(254)), "x".into()), "spec.labels", Rule::LabelKey),
            row("a label key ending with '.'", |s| _ = s.labels.insert("app.".into(), "x".into()), "spec.labels", Rule::LabelKey),
            row("a label value of 64 characters", |s| _ = s.labels.insert("app".into(), "v".repeat(64)), "spec.labels[\"app\"]", Rule::LabelValue),
            row("a label value with a slash", |s| _ = s.labels.insert("app".into(), "a/b".into()), "spec.labels[\"app\"]", Rule::LabelValue),
            row("a label value starting with '_'", |s| _ = s.labels.insert("app".into(), "_a".into()), "spec.labels[\"app\"]", Rule::LabelValue),
            row("a selector key with a space", |s| _ = s.pool_selector.insert("the pool".into(), "x".into()), "spec.pool_selector", Rule::LabelKey),
            row("a selector value with a newline", |s| _ = s.pool_selector.insert("pool".into(), "a\nb".into()), "spec.pool_selector[\"pool\"]", Rule::LabelValue),
            row("a volume without a name", |s| s.volumes[0].name.clear(), "spec.volumes[0].name", label.clone()),
            row("an upper-case volume name", |s| s.volumes[1].name = "Data".into(), "spec.volumes[1].name", label.clone()),
            row("two volumes of one name", |s| s.volumes[2].name = "data".into(), "spec.volumes[2].name", Rule::Duplicate { what: "volume names" }),
            row("volume kind 99", |s| s.volumes[1].kind = 99, "spec.volumes[1].kind", kind.clone()),
            row("no kind and no volumeId", |s| s.volumes[4].kind = 0, "spec.volumes[4].kind", Rule::KindWithoutVolume),
            row("a relative mount path", |s| s.volumes[1].mount_path = "relative".into(), "spec.volumes[1].mount_path", Rule::MountPath),
            row("a climbing mount path", |s| s.volumes[1].mount_path = "../../etc".into(), "spec.volumes[1].mount_path", Rule::MountPath),
            row("an absolute path climbing", |s| s.volumes[1].mount_path = "/data/../../etc".into(), "spec.volumes[1].mount_path", Rule::MountPath),
            row("no mount path", |s| s.volumes[1].mount_path.clear(), "spec.volumes[1].mount_path", Rule::MountPath),
            row("the root as mount path", |s| s.volumes[1].mount_path = "/./".into(), "spec.volumes[1].mount_path", Rule::MountPath),
            row("a mount path with NUL", |s| s.volumes[1].mount_path = "/da\0ta".into(), "spec.volumes[1].mount_path", Rule::MountPath),
            row("two volumes at one path", |s| s.volumes[3].mount_path = "//shared/.".into(), "spec.volumes[3].mount_path", Rule::Duplicate { what: "mount paths" }),
            row("disk size 0", |s| _ = s.volumes[0].parameters.insert("size".into(), "0".into()), "spec.volumes[0].parameters[\"size\"]", Rule::Size),
            row("disk size 0Gi", |s| _ = s.volumes[0].parameters.insert("size".into(), "0Gi".into()), "spec.volumes[0].parameters[\"size\"]", Rule::Size),
            row("a size of an unknown unit", |s| _ = s.volumes[0].parameters.insert("size".into(), "1Pi".into()), "spec.volumes[0].parameters[\"size\"]", Rule::Size),
            row("a NAS size that is no number", |s| _ = s.volumes[2].parameters.insert("size".into(), "big".into()), "spec.volumes[2].parameters[\"size\"]", Rule::Size),
            row("a size beyond i64", |s| _ = s.volumes[0].parameters.insert("size".into(), "99999999999Ti".into()), "spec.volumes[0].parameters[\"size\"]", Rule::Size),
            row("a PL1 disk beyond 64 TiB", |s| _ = s.volumes[0].parameters.insert("size".into(), "65537Gi".into()), "spec.volumes[0].parameters[\"size\"]", essd("PL1", 65_537)),
            row("a default disk a byte beyond 64 TiB", |s| s.volumes[0].parameters = [("size".into(), ((65_536_i64 << 30) + 1).to_string())].into(), "spec.volumes[0].parameters[\"size\"]", essd("PL0", 65_537)),
            row("a cloud_ssd disk beyond 32 TiB", |s| _ = s.volumes[1].parameters.insert("size".into(), "33Ti".into()), "spec.volumes[1].parameters[\"size\"]", Rule::DiskTooLarge { kind: "cloud_ssd".into(), gib: 33 << 10, max: 32_768 }),
            row("a cloud_efficiency disk beyond 32 TiB", |s| s.volumes[1].parameters = [("size".into(), "32769Gi".into()), ("category".into(), "cloud_efficiency".into())].into(), "spec.volumes[1].parameters[\"size\"]", Rule::DiskTooLarge { kind: "cloud_efficiency".into(), gib: 32_769, max: 32_768 }),
            row("a cloud_auto disk beyond 64 TiB", |s| s.volumes[1].parameters = [("size".into(), "65Ti".into()), ("category".into(), "cloud_auto".into())].into(), "spec.volumes[1].parameters[\"size\"]", Rule::DiskTooLarge { kind: "cloud_auto".into(), gib: 65 << 10, max: 65_536 }),
            row("an unknown disk category", |s| _ = s.volumes[0].parameters.insert("category".into(), "cloud".into()), "spec.volumes[0].parameters[\"category\"]", Rule::DiskCategory),
            row("an unknown performance level", |s| _ = s.volumes[0].parameters.insert("performanceLevel".into(), "PL9".into()), "spec.volumes[0].parameters[\"performanceLevel\"]", Rule::PerformanceLevel),
            row("a performance level on a disk that is no ESSD", |s| {
                s.volumes[0].parameters.insert("category".into(), "cloud_ssd".into());
                s.volumes[0].parameters.insert("performanceLevel".into(), "PL1".into());
            }, "spec.volumes[0].parameters[\"performanceLevel\"]", Rule::LevelWithoutEssd),
            row("a command entry with NUL", |s| s.command[2] = "echo\0hi".into(), "spec.command[2]", Rule::Nul),
            row("an unknown toleration operator", |s| s.tolerations[0].operator = "Is".into(), "spec.tolerations[0].operator", Rule::TolerationOperator),
            row("Exists with a value", |s| s.tolerations[1].value = "x".into(), "spec.tolerations[1].value", Rule::ExistsWithValue),
            row("an empty key with Equal", |s| s.tolerations[2].operator = "Equal".into(), "spec.tolerations[2].key", Rule::EmptyTolerationKey),
            row("an unknown effect", |s| s.tolerations[0].effect = "NoRun".into(), "spec.tolerations[0].effect", Rule::Effect),
            row("toleration seconds on NoSchedule", |s| s.tolerations[0].toleration_seconds = Some(5), "spec.tolerations[0].toleration_seconds", Rule::TolerationSeconds),
            row("an unknown node operator", |s| s.node_affinity.as_mut().unwrap().required[0].match_expressions[0].operator = "Has".into(), "spec.node_affinity.required[0].match_expressions[0].operator", Rule::NodeSelectorOperator),
            row("Gt without an integer", |s| s.node_affinity.as_mut().unwrap().required[0].match_expressions[1].values = vec!["many".into()], "spec.node_affinity.required[0].match_expressions[1].values", Rule::IntegerValue),
            row("an empty node term", |s| s.node_affinity.as_mut().unwrap().required[0].match_expressions.clear(), "spec.node_affinity.required[0].match_expressions", Rule::EmptyTerm),
            row("a weight of 0", |s| s.node_affinity.as_mut().unwrap().preferred[0].weight = 0, "spec.node_affinity.preferred[0].weight", Rule::Weight),
            row("a topology key of no domain", |s| s.pod_anti_affinity.as_mut().unwrap().required[0].topology_key = "rack".into(), "spec.pod_anti_affinity.required[0].topology_key", Rule::TopologyKey),
            row("a bad namespace in a term", |s| s.pod_anti_affinity.as_mut().unwrap().preferred[0].term.as_mut().unwrap().namespaces[0] = "B".into(), "spec.pod_anti_affinity.preferred[0].term.namespaces[0]", label.clone()),
            row("a max skew of 0", |s| s.topology_spread_constraints[0].max_skew = 0, "spec.topology_spread_constraints[0].max_skew", Rule::MaxSkew),
            row("an unknown whenUnsatisfiable", |s| s.topology_spread_constraints[0].when_unsatisfiable = "Never".into(), "spec.topology_spread_constraints[0].when_unsatisfiable", Rule::WhenUnsatisfiable),
            row("an unknown priority class", |s| s.priority_class_name = "urgent".into(), "spec.priority_class_name", Rule::PriorityClass { known: "none".into() }),
            row("a priority of one's own", |s| s.priority = 7, "spec.priority", Rule::Priority { expected: 0 }),
            row("min domains with ScheduleAnyway", |s| s.topology_spread_constraints[0].when_unsatisfiable = "ScheduleAnyway".into(), "spec.topology_spread_constraints[0].min_domains", Rule::MinDomains),
        ]
    }

    #[test]
    fn every_bad_input_is_refused_naming_its_field_and_rule() {
        let mut seen = BTreeSet::new();
        for (what, change, field, rule) in rows() {
            assert!(seen.insert(what), "two rows named {what:?}");
            let mut spec = valid();
            change(&mut spec);
            let err = pod(&spec, &limits()).expect_err(what);
            assert_eq!((err.field.as_str(), &err.rule), (field, &rule), "{what}: {err}");
            assert!(err.to_string().starts_with(&format!("{field} = ")), "{what}: {err}");
            assert!(err.to_string().len() < 500, "{what}: the message stays short: {err}");
        }
    }

    #[test]
    fn values_are_escaped_and_cut() {
        assert_eq!(shown("we\0b\n"), "\"we\\0b\\n\"");
        let long = shown(&"é".repeat(1000));
        assert!(long.ends_with("… (2000 bytes)") && long.chars().count() < 90, "{long}");
        let mut spec = valid();
        spec.name = "x\n".repeat(100);
        let msg = pod(&spec, &limits()).unwrap_err().to_string();
        assert!(msg.starts_with("spec.name = \"x\\nx\\n") && !msg.contains('\n'), "{msg}");
    }

    #[test]
    fn limits_come_from_the_pools_or_else_the_catalogue() {
        let mut spec = valid();
        spec.cpu_millicores = 4000;
        spec.memory_bytes = 1 << 30;
        let err = pod(&spec, &limits()).unwrap_err();
        assert!(err.to_string().contains("no pool can ever host it: the largest instance type of the configured pools is ecs.r7.large"), "{err}");
        // No single type has both: each resource fits some type.
        let both = Limits::of_types(["ecs.c7.4xlarge", "ecs.r7.2xlarge"].map(|t| berth_cloud::catalogue::instance_type(t).unwrap()), true);
        spec.cpu_millicores = 12_000;
        spec.memory_bytes = 48 << 30;
        assert_eq!(pod(&spec, &both).unwrap_err().field, "spec.cpu_millicores");
        spec.memory_bytes = 32 << 30;
        assert_eq!(pod(&spec, &both), Ok(()));
        // Without pools, the catalogue's largest type bounds a pod.
        let none = Limits::of_pools(&[]);
        spec.cpu_millicores = 16_000;
        spec.memory_bytes = 128 << 30;
        assert_eq!(pod(&spec, &none), Ok(()));
        spec.cpu_millicores = 16_001;
        let err = pod(&spec, &none).unwrap_err();
        assert!(err.to_string().contains("no node can ever host it: the largest instance type of the catalogue is ecs.r7.4xlarge"), "{err}");
    }
}
