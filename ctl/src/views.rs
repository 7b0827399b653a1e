//! The scheduler's pods and nodes as berthctl shows them (tables or JSON): one place, used by
//! `up`, `pod list|get|add` and `nodes`.

use std::collections::HashMap;

use berth_cloud::model::NetworkInterface;
use berth_proto::cluster::v1 as pb;
use serde::Serialize;

use crate::Output;
use crate::table::Table;

/// One pod: the scheduler's status, and the ENI holding its IP when the cloud is known.
#[derive(Debug, Clone, Serialize)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub phase: &'static str,
    pub node: String,
    pub pod_ip: String,
    pub eni: String,
    pub mode: &'static str,
    pub volumes: Vec<String>,
    pub message: String,
}

/// One node: its identity, state and free/allocatable counts.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub instance_id: String,
    pub state: String,
    pub pool: String,
    pub zone: String,
    pub instance_type: String,
    /// `[free, allocatable]` each.
    pub cpu_millicores: [u64; 2],
    pub shared_ips: [u32; 2],
    pub eni_slots: [u32; 2],
    pub member_eni_slots: [u32; 2],
    pub disk_slots: [u32; 2],
    pub pods: usize,
    pub conditions: Vec<String>,
    /// `key=value:Effect`, the pool's and the agent's.
    pub taints: Vec<String>,
    /// Its labels (the well-known ones derived from its identity left out), `key=value`.
    pub labels: Vec<String>,
}

pub fn phase(p: i32) -> &'static str {
    match pb::PodPhase::try_from(p).unwrap_or(pb::PodPhase::Unspecified) {
        pb::PodPhase::Pending => "Pending",
        pb::PodPhase::Bound => "Bound",
        pb::PodPhase::Running => "Running",
        pb::PodPhase::Succeeded => "Succeeded",
        pb::PodPhase::Failed => "Failed",
        pb::PodPhase::Terminating => "Terminating",
        pb::PodPhase::Unspecified => "Unknown",
    }
}

pub fn mode(m: i32) -> &'static str {
    match pb::NetworkMode::try_from(m).unwrap_or(pb::NetworkMode::Unspecified) {
        pb::NetworkMode::Exclusive => "exclusive",
        pb::NetworkMode::Trunk => "trunk",
        pb::NetworkMode::Shared | pb::NetworkMode::Unspecified => "shared",
    }
}

/// `data=disk:/data`, `shared=nas:/shared(ro)`.
pub fn volume(v: &pb::VolumeSpec) -> String {
    let kind = match pb::VolumeKind::try_from(v.kind).unwrap_or(pb::VolumeKind::Unspecified) {
        pb::VolumeKind::Disk => "disk",
        pb::VolumeKind::Nas => "nas",
        pb::VolumeKind::Oss => "oss",
        pb::VolumeKind::Unspecified => "volume",
    };
    // A disk restored from a snapshot says which, in the form `--disk` takes it.
    let source = v.parameters.get("snapshotId").map(|s| format!("(snapshot={s})")).unwrap_or_default();
    format!("{}={kind}:{}{source}{}", v.name, v.mount_path, if v.read_only { "(ro)" } else { "" })
}

/// The ENI holding each IP: a shared pod's secondary IP, an exclusive or member ENI's primary.
pub fn enis_by_ip(enis: &[NetworkInterface]) -> HashMap<String, String> {
    let mut by_ip = HashMap::new();
    for e in enis {
        for ip in &e.secondary_ips {
            by_ip.insert(ip.to_string(), e.id.clone());
        }
        by_ip.entry(e.primary_ip.to_string()).or_insert_with(|| e.id.clone());
    }
    by_ip
}

pub fn pod_view(p: &pb::PodStatus, enis: &HashMap<String, String>) -> PodView {
    let s = p.spec.clone().unwrap_or_default();
    PodView {
        phase: phase(p.phase),
        node: p.node.clone(),
        eni: enis.get(&p.pod_ip).cloned().unwrap_or_default(),
        pod_ip: p.pod_ip.clone(),
        mode: mode(s.network_mode),
        volumes: s.volumes.iter().map(volume).collect(),
        message: p.message.clone(),
        namespace: s.namespace,
        name: s.name,
    }
}

pub fn node_view(n: &pb::NodeState, pods: &[PodView]) -> NodeView {
    let r = n.last_report.clone().unwrap_or_default();
    let id = r.identity.unwrap_or_default();
    let (all, free) = (r.allocatable.unwrap_or_default(), r.free.unwrap_or_default());
    NodeView {
        pods: pods.iter().filter(|p| p.node == id.instance_id).count(),
        instance_id: id.instance_id,
        state: if n.taints.iter().any(|t| t.key == berth_scheduler::placement::plugins::taints::UNSCHEDULABLE) { format!("{},Cordoned", n.state) } else { n.state.clone() },
        pool: id.pool,
        zone: id.zone_id,
        instance_type: id.instance_type,
        cpu_millicores: [free.cpu_millicores, all.cpu_millicores],
        shared_ips: [free.shared_ips, all.shared_ips],
        eni_slots: [free.eni_slots, all.eni_slots],
        member_eni_slots: [free.member_eni_slots, all.member_eni_slots],
        disk_slots: [free.disk_slots, all.disk_slots],
        conditions: r.conditions.iter().filter(|c| c.status).map(|c| c.r#type.clone()).collect(),
        taints: n.taints.iter().map(berth_scheduler::placement::plugins::taints::shown).collect(),
        labels: {
            let derived = berth_scheduler::placement::labels::WELL_KNOWN;
            let mut l: Vec<String> = n.labels.iter().filter(|(k, _)| !derived.contains(&k.as_str())).map(|(k, v)| format!("{k}={v}")).collect();
            l.sort();
            l
        },
    }
}

pub fn pods_table(pods: &[PodView]) -> String {
    let mut t = Table::new("PODS", &["NAME", "PHASE", "NODE", "IP", "ENI", "MODE", "VOLUMES", "MESSAGE"]);
    for p in pods {
        let name = if p.namespace == "default" { p.name.clone() } else { format!("{}/{}", p.namespace, p.name) };
        t.row(vec![name, p.phase.into(), p.node.clone(), p.pod_ip.clone(), p.eni.clone(), p.mode.into(), p.volumes.join(","), p.message.clone()]);
    }
    t.render()
}

pub fn nodes_table(nodes: &[NodeView]) -> String {
    let mut t = Table::new("NODES (free/allocatable)", &["ID", "STATE", "POOL", "ZONE", "TYPE", "PODS", "CPU", "IPS", "ENI SLOTS", "MEMBER SLOTS", "DISK SLOTS", "CONDITIONS", "TAINTS", "LABELS"]);
    let pair = |p: [u32; 2]| format!("{}/{}", p[0], p[1]);
    for n in nodes {
        t.row(vec![
            n.instance_id.clone(),
            n.state.clone(),
            n.pool.clone(),
            n.zone.clone(),
            n.instance_type.clone(),
            n.pods.to_string(),
            format!("{}/{}m", n.cpu_millicores[0], n.cpu_millicores[1]),
            pair(n.shared_ips),
            pair(n.eni_slots),
            pair(n.member_eni_slots),
            pair(n.disk_slots),
            n.conditions.join(","),
            n.taints.join(","),
            n.labels.join(","),
        ]);
    }
    t.render()
}

/// The header of `pod list --watch`'s rows, under the listing's table.
pub fn watch_header() -> String {
    watch_cells(&["EVENT", "REVISION", "NAME", "PHASE", "NODE", "IP", "ENI", "MESSAGE"])
}

/// One change as `pod list --watch` prints it: columns of fixed width, as rows come one by one.
pub fn watch_row(event: &str, revision: u64, p: &PodView) -> String {
    let name = if p.namespace == "default" { p.name.clone() } else { format!("{}/{}", p.namespace, p.name) };
    watch_cells(&[event, &revision.to_string(), &name, p.phase, &p.node, &p.pod_ip, &p.eni, &p.message])
}

fn watch_cells(cells: &[&str]) -> String {
    const WIDTHS: [usize; 7] = [15, 9, 24, 12, 22, 16, 22];
    let mut line = String::new();
    for (i, c) in cells.iter().enumerate() {
        match WIDTHS.get(i) {
            Some(w) => line.push_str(&format!("{c:<w$} ")),
            None => line.push_str(c),
        }
    }
    line.trim_end().to_string()
}

/// One change as a JSON line: `{"event": …, "revision": …, "pod": {…}}`.
pub fn watch_line_json(event: &str, revision: u64, p: &PodView) -> String {
    serde_json::json!({ "event": event, "revision": revision, "pod": p }).to_string()
}

pub fn print_pods(pods: &[PodView], output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(pods)?),
        Output::Table => print!("{}", pods_table(pods)),
    }
    Ok(())
}

pub fn print_nodes(nodes: &[NodeView], output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(nodes)?),
        Output::Table => print!("{}", nodes_table(nodes)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_row_shows_its_cordon_taints_and_own_labels() {
        let identity = pb::NodeIdentity { instance_id: "i-1".into(), pool: "gpu".into(), ..Default::default() };
        let n = pb::NodeState {
            last_report: Some(pb::NodeReport { identity: Some(identity), ..Default::default() }),
            state: "Ready".into(),
            taints: vec![pb::Taint { key: "node.kubernetes.io/unschedulable".into(), value: String::new(), effect: "NoSchedule".into() }, pb::Taint { key: "dedicated".into(), value: "gpu".into(), effect: "NoSchedule".into() }],
            labels: [("berth.io/pool".to_string(), "gpu".to_string()), ("gpus".to_string(), "4".to_string())].into(),
        };
        let v = node_view(&n, &[]);
        assert_eq!(v.state, "Ready,Cordoned");
        assert_eq!(v.taints, ["node.kubernetes.io/unschedulable:NoSchedule", "dedicated=gpu:NoSchedule"]);
        assert_eq!(v.labels, ["gpus=4"], "the well-known labels are other columns");
    }

    #[test]
    fn a_pod_row_names_its_eni_mode_and_volumes() {
        let spec = pb::PodSpec {
            namespace: "default".into(),
            name: "web".into(),
            network_mode: pb::NetworkMode::Trunk as i32,
            volumes: vec![pb::VolumeSpec { name: "data".into(), kind: pb::VolumeKind::Disk as i32, mount_path: "/data".into(), read_only: true, parameters: HashMap::new() }],
            ..Default::default()
        };
        let st = pb::PodStatus { spec: Some(spec), phase: pb::PodPhase::Running as i32, node: "i-1".into(), pod_ip: "10.0.0.7".into(), message: String::new(), usage: None };
        let enis = HashMap::from([("10.0.0.7".to_string(), "eni-9".to_string())]);
        let v = pod_view(&st, &enis);
        assert_eq!((v.phase, v.mode, v.eni.as_str(), v.volumes[0].as_str()), ("Running", "trunk", "eni-9", "data=disk:/data(ro)"));
        let table = pods_table(&[v]);
        let row: Vec<&str> = table.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(row, ["web", "Running", "i-1", "10.0.0.7", "eni-9", "trunk", "data=disk:/data(ro)"], "{table}");
    }

    #[test]
    fn a_restored_disk_names_its_snapshot() {
        let restored = pb::VolumeSpec {
            name: "data".into(),
            kind: pb::VolumeKind::Disk as i32,
            mount_path: "/data".into(),
            read_only: false,
            parameters: HashMap::from([("snapshotId".to_string(), "s-abc1".to_string()), ("size".to_string(), "20Gi".to_string())]),
        };
        assert_eq!(volume(&restored), "data=disk:/data(snapshot=s-abc1)");
        let spec = pb::PodSpec { namespace: "default".into(), name: "db".into(), volumes: vec![restored], ..Default::default() };
        let st = pb::PodStatus { spec: Some(spec), phase: pb::PodPhase::Running as i32, node: "i-1".into(), ..Default::default() };
        let table = pods_table(&[pod_view(&st, &HashMap::new())]);
        assert!(table.lines().nth(2).unwrap().split_whitespace().any(|c| c == "data=disk:/data(snapshot=s-abc1)"), "{table}");
    }
}
