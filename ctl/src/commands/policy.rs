//! `berthctl policy apply|list|get|delete` and `berthctl namespace label|list`: NetworkPolicies
//! (Kubernetes' `networking.k8s.io/v1` YAML) and namespaces' labels, stored by the scheduler,
//! which checks them and tells each node what its pods need.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use berth_proto::cluster::v1 as pb;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::Output;
use crate::cluster::{self, ClusterPaths};
use crate::table::Table;

#[derive(Args)]
pub struct Policy {
    #[command(subcommand)]
    command: PolicyCommand,
    #[command(flatten)]
    paths: ClusterPaths,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Create or replace the NetworkPolicies of a YAML file (documents separated by `---`).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// The policies of a namespace (every namespace with --all-namespaces).
    List {
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        #[arg(long, short = 'A')]
        all_namespaces: bool,
    },
    /// One policy, as YAML (JSON with --output json).
    Get {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    Delete {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
}

#[derive(Args)]
pub struct Namespace {
    #[command(subcommand)]
    command: NamespaceCommand,
    #[command(flatten)]
    paths: ClusterPaths,
}

#[derive(Subcommand)]
enum NamespaceCommand {
    /// Set labels of a namespace: KEY=VALUE, or KEY- to remove one.
    Label {
        namespace: String,
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// The namespaces (named by a pod, a policy or a label) and their labels.
    List,
}

/// A Kubernetes NetworkPolicy document, in its own field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Document {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Spec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub pod_selector: Selector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
}

pub fn selector_pb(s: &Selector) -> pb::LabelSelector {
    pb::LabelSelector {
        match_labels: s.match_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        match_expressions: s.match_expressions.iter().map(|r| pb::LabelSelectorRequirement { key: r.key.clone(), operator: r.operator.clone(), values: r.values.clone() }).collect(),
    }
}

fn selector_of(s: &pb::LabelSelector) -> Selector {
    Selector {
        match_labels: s.match_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        match_expressions: s.match_expressions.iter().map(|r| Requirement { key: r.key.clone(), operator: r.operator.clone(), values: r.values.clone() }).collect(),
    }
}

fn peer_pb(p: &Peer) -> pb::NetworkPolicyPeer {
    pb::NetworkPolicyPeer {
        pod_selector: p.pod_selector.as_ref().map(selector_pb),
        namespace_selector: p.namespace_selector.as_ref().map(selector_pb),
        ip_block: p.ip_block.as_ref().map(|b| pb::IpBlock { cidr: b.cidr.clone(), except: b.except.clone() }),
    }
}

fn peer_of(p: &pb::NetworkPolicyPeer) -> Peer {
    Peer { pod_selector: p.pod_selector.as_ref().map(selector_of), namespace_selector: p.namespace_selector.as_ref().map(selector_of), ip_block: p.ip_block.as_ref().map(|b| IpBlock { cidr: b.cidr.clone(), except: b.except.clone() }) }
}

fn ports_pb(ports: &[Port], field: &str) -> anyhow::Result<Vec<pb::NetworkPolicyPort>> {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let port = match &p.port {
                None => 0,
                Some(serde_yaml_ng::Value::Number(n)) => n.as_i64().filter(|n| (0..=i64::from(i32::MAX)).contains(n)).ok_or_else(|| anyhow::anyhow!("{field}.ports[{i}].port {n}: not a port (1 to 65535)"))? as i32,
                Some(serde_yaml_ng::Value::String(s)) => bail!("{field}.ports[{i}].port {s:?}: named ports are not supported (pods declare no port names); give the number"),
                Some(v) => bail!("{field}.ports[{i}].port {v:?}: not a port (1 to 65535)"),
            };
            Ok(pb::NetworkPolicyPort { protocol: p.protocol.clone().unwrap_or_default(), port, end_port: p.end_port.unwrap_or(0) })
        })
        .collect()
}

fn ports_of(ports: &[pb::NetworkPolicyPort]) -> Vec<Port> {
    ports
        .iter()
        .map(|p| Port { protocol: Some(p.protocol.clone()).filter(|s| !s.is_empty()), port: (p.port != 0).then(|| serde_yaml_ng::Value::Number(p.port.into())), end_port: (p.end_port != 0).then_some(p.end_port) })
        .collect()
}

/// The policy a document describes; a policy without a namespace goes to `default_namespace`.
pub fn to_pb(d: &Document, default_namespace: &str) -> anyhow::Result<pb::NetworkPolicy> {
    if d.api_version != "networking.k8s.io/v1" || d.kind != "NetworkPolicy" {
        bail!("apiVersion {:?} kind {:?}: only networking.k8s.io/v1 NetworkPolicy is taken", d.api_version, d.kind);
    }
    let s = &d.spec;
    let mut ingress = Vec::new();
    for (i, r) in s.ingress.iter().flatten().enumerate() {
        ingress.push(pb::NetworkPolicyRule { peers: r.from.iter().map(peer_pb).collect(), ports: ports_pb(&r.ports, &format!("spec.ingress[{i}]"))? });
    }
    let mut egress = Vec::new();
    for (i, r) in s.egress.iter().flatten().enumerate() {
        egress.push(pb::NetworkPolicyRule { peers: r.to.iter().map(peer_pb).collect(), ports: ports_pb(&r.ports, &format!("spec.egress[{i}]"))? });
    }
    Ok(pb::NetworkPolicy {
        namespace: d.metadata.namespace.clone().unwrap_or_else(|| default_namespace.to_string()),
        name: d.metadata.name.clone(),
        spec: Some(pb::NetworkPolicySpec { pod_selector: Some(selector_pb(&s.pod_selector)), ingress, egress, policy_types: s.policy_types.clone() }),
        version: 0,
    })
}

/// The document of a stored policy (its version as `metadata.resourceVersion`).
pub fn document_of(p: &pb::NetworkPolicy) -> Document {
    let s = p.spec.clone().unwrap_or_default();
    let (has_ingress, has_egress) = (!s.ingress.is_empty() || s.policy_types.iter().any(|t| t == "Ingress"), !s.egress.is_empty());
    Document {
        api_version: "networking.k8s.io/v1".into(),
        kind: "NetworkPolicy".into(),
        metadata: Metadata { name: p.name.clone(), namespace: Some(p.namespace.clone()), resource_version: Some(p.version.to_string()) },
        spec: Spec {
            pod_selector: s.pod_selector.as_ref().map(selector_of).unwrap_or_default(),
            ingress: has_ingress.then(|| s.ingress.iter().map(|r| IngressRule { from: r.peers.iter().map(peer_of).collect(), ports: ports_of(&r.ports) }).collect()),
            egress: has_egress.then(|| s.egress.iter().map(|r| EgressRule { to: r.peers.iter().map(peer_of).collect(), ports: ports_of(&r.ports) }).collect()),
            policy_types: s.policy_types.clone(),
        },
    }
}

/// Every document of a YAML text (empty ones skipped).
pub fn parse_documents(text: &str) -> anyhow::Result<Vec<Document>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(doc).with_context(|| format!("document {} is not YAML", i + 1))?;
        if value.is_null() {
            continue;
        }
        out.push(serde_yaml_ng::from_value(value).with_context(|| format!("document {} is not a NetworkPolicy", i + 1))?);
    }
    Ok(out)
}

/// `KEY=VALUE` sets, `KEY-` (or `KEY=`) removes.
pub fn label_changes(items: &[String]) -> anyhow::Result<std::collections::HashMap<String, String>> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => match item.strip_suffix('-') {
                Some(k) => Ok((k.to_string(), String::new())),
                None => bail!("label {item:?}: give KEY=VALUE, or KEY- to remove it"),
            },
        })
        .collect()
}

fn rpc(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", s.message())
}

fn selector_text(s: Option<&pb::LabelSelector>) -> String {
    let Some(s) = s else { return "(all)".into() };
    let mut parts: Vec<String> = s.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.sort();
    parts.extend(s.match_expressions.iter().map(|e| format!("{} {} ({})", e.key, e.operator, e.values.join(","))));
    if parts.is_empty() { "(all)".into() } else { parts.join(",") }
}

impl Policy {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let mut c = cluster::scheduler(&self.paths, std::time::Duration::from_secs(5)).await?;
        match self.command {
            PolicyCommand::Apply { file } => {
                let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
                let docs = parse_documents(&text).with_context(|| format!("{}", file.display()))?;
                if docs.is_empty() {
                    bail!("{} holds no NetworkPolicy", file.display());
                }
                for d in &docs {
                    let p = to_pb(d, "default").with_context(|| format!("{}: {}", file.display(), d.metadata.name))?;
                    let stored = c.apply_network_policy(pb::ApplyNetworkPolicyRequest { policy: Some(p) }).await.map_err(|s| rpc(&format!("applying {}", d.metadata.name), s))?.into_inner();
                    match output {
                        Output::Json => println!("{}", serde_json::to_string(&document_of(&stored))?),
                        Output::Table => println!("networkpolicy {}/{} applied (version {})", stored.namespace, stored.name, stored.version),
                    }
                }
            }
            PolicyCommand::List { namespace, all_namespaces } => {
                let ns = if all_namespaces { String::new() } else { namespace };
                let list = c.list_network_policies(pb::ListNetworkPoliciesRequest { namespace: ns }).await.map_err(|s| rpc("listing the policies", s))?.into_inner();
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&list.policies.iter().map(document_of).collect::<Vec<_>>())?),
                    Output::Table => {
                        let mut t = Table::new("NETWORK POLICIES", &["NAMESPACE", "NAME", "POD SELECTOR", "TYPES", "INGRESS RULES", "EGRESS RULES", "VERSION"]);
                        for p in &list.policies {
                            let s = p.spec.clone().unwrap_or_default();
                            let types = if s.policy_types.is_empty() { if s.egress.is_empty() { "Ingress".to_string() } else { "Ingress,Egress".to_string() } } else { s.policy_types.join(",") };
                            t.row(vec![p.namespace.clone(), p.name.clone(), selector_text(s.pod_selector.as_ref()), types, s.ingress.len().to_string(), s.egress.len().to_string(), p.version.to_string()]);
                        }
                        print!("{}", t.render());
                    }
                }
            }
            PolicyCommand::Get { name, namespace } => {
                let p = c.get_network_policy(pb::GetNetworkPolicyRequest { namespace, name }).await.map_err(|s| rpc("getting the policy", s))?.into_inner();
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&document_of(&p))?),
                    Output::Table => print!("{}", serde_yaml_ng::to_string(&document_of(&p))?),
                }
            }
            PolicyCommand::Delete { name, namespace } => {
                c.delete_network_policy(pb::GetNetworkPolicyRequest { namespace: namespace.clone(), name: name.clone() }).await.map_err(|s| rpc("deleting the policy", s))?;
                if output == Output::Table {
                    println!("networkpolicy {namespace}/{name} deleted");
                }
            }
        }
        Ok(())
    }
}

impl Namespace {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let mut c = cluster::scheduler(&self.paths, std::time::Duration::from_secs(5)).await?;
        let namespaces = match self.command {
            NamespaceCommand::Label { namespace, labels } => {
                let labels = label_changes(&labels)?;
                vec![c.label_namespace(pb::LabelNamespaceRequest { namespace, labels }).await.map_err(|s| rpc("labelling the namespace", s))?.into_inner()]
            }
            NamespaceCommand::List => c.list_namespaces(pb::ListNamespacesRequest {}).await.map_err(|s| rpc("listing the namespaces", s))?.into_inner().namespaces,
        };
        match output {
            Output::Json => {
                let v: Vec<serde_json::Value> = namespaces.iter().map(|n| serde_json::json!({ "name": n.name, "labels": n.labels.iter().collect::<BTreeMap<_, _>>() })).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            Output::Table => {
                let mut t = Table::new("NAMESPACES", &["NAME", "LABELS"]);
                for n in &namespaces {
                    let mut l: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    l.sort();
                    t.row(vec![n.name.clone(), l.join(",")]);
                }
                print!("{}", t.render());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-from-web
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: db
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: web}
      namespaceSelector:
        matchLabels: {team: shop}
    - ipBlock:
        cidr: 10.0.0.0/16
        except: [10.0.1.0/24]
    ports:
    - protocol: TCP
      port: 5432
    - protocol: UDP
      port: 5000
      endPort: 5010
  egress: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
spec:
  podSelector: {}
"#;

    #[test]
    fn kubernetes_yaml_becomes_the_policy_and_back() {
        let docs = parse_documents(YAML).unwrap();
        assert_eq!(docs.len(), 2);
        let p = to_pb(&docs[0], "default").unwrap();
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("shop", "db-from-web"));
        let s = p.spec.clone().unwrap();
        assert_eq!(s.policy_types, ["Ingress", "Egress"]);
        assert_eq!(s.ingress[0].peers.len(), 2);
        assert_eq!(s.ingress[0].peers[0].namespace_selector.as_ref().unwrap().match_labels["team"], "shop");
        assert_eq!(s.ingress[0].peers[1].ip_block.as_ref().unwrap().except, ["10.0.1.0/24"]);
        assert_eq!((s.ingress[0].ports[1].port, s.ingress[0].ports[1].end_port), (5000, 5010));
        assert!(s.egress.is_empty());
        let deny = to_pb(&docs[1], "default").unwrap();
        assert_eq!(deny.namespace, "default");
        assert!(deny.spec.unwrap().ingress.is_empty());
        let back = to_pb(&document_of(&p), "x").unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn what_is_not_taken_says_where() {
        let named = YAML.replace("port: 5432", "port: postgres");
        let e = to_pb(&parse_documents(&named).unwrap()[0], "default").unwrap_err();
        assert!(e.to_string().contains("spec.ingress[0].ports[0].port") && e.to_string().contains("named ports"), "{e}");
        let typo = YAML.replace("podSelector:\n    matchLabels:\n      app: db", "podSelectr: {}");
        assert!(format!("{:#}", parse_documents(&typo).unwrap_err()).contains("podSelectr"));
        assert_eq!(label_changes(&["team=a".into(), "old-".into()]).unwrap(), [("team".to_string(), "a".to_string()), ("old".to_string(), String::new())].into());
        assert!(label_changes(&["bad".into()]).is_err());
    }
}
