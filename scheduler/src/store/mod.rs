//! The scheduler's durable state: pods (their specs and bindings) and nodes asked of the cloud
//! that have not reported yet. Node capacity is not stored: agents report it again within a lease.
//!
//! [`Store`] is a trait so that a replicated store can take the embedded one's place for
//! replicated schedulers: the embedded [`JournalStore`] (one scheduler), [`EtcdStore`] (keys under
//! one etcd prefix, each batch as few fenced transactions as etcd's limits allow; one leader under
//! a lease writes, see `crate::leader`), and the in-memory [`MemoryStore`] for tests and benchmarks.

pub mod etcd;
pub mod etcd_member;
mod journal;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use berth_journal::{JournalError, Replay};
use berth_proto::cluster::v1 as pb;
use prost::Message as _;
use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Serialize, Serializer};

pub use etcd::EtcdStore;
pub use journal::JournalStore;

/// A pod spec as stored: its protobuf encoding in base64. The wire format already evolves safely
/// (field numbers), so the store needs no second schema of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoredSpec(pub String);

impl StoredSpec {
    pub fn of(spec: &pb::PodSpec) -> StoredSpec {
        StoredSpec(base64::engine::general_purpose::STANDARD.encode(spec.encode_to_vec()))
    }

    pub fn decode(&self) -> Result<pb::PodSpec, String> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(&self.0).map_err(|e| e.to_string())?;
        pb::PodSpec::decode(bytes.as_slice()).map_err(|e| e.to_string())
    }
}

/// A pod spec as the cluster holds it: its protobuf encoding, shared. Decoded, with its strings,
/// maps and volumes, a spec takes several times the room, and only binds, instructions and lists
/// need it whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSpec(Arc<[u8]>);

impl EncodedSpec {
    pub fn of(spec: &pb::PodSpec) -> EncodedSpec {
        EncodedSpec(spec.encode_to_vec().into())
    }

    pub fn decode(&self) -> pb::PodSpec {
        pb::PodSpec::decode(&*self.0).expect("a spec the scheduler encoded decodes")
    }

    pub fn stored(&self) -> StoredSpec {
        StoredSpec(base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

/// A NetworkPolicy as stored: its protobuf encoding (version included) in base64.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoredPolicy(pub String);

impl StoredPolicy {
    pub fn of(p: &pb::NetworkPolicy) -> StoredPolicy {
        StoredPolicy(base64::engine::general_purpose::STANDARD.encode(p.encode_to_vec()))
    }

    pub fn decode(&self) -> Result<pb::NetworkPolicy, String> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(&self.0).map_err(|e| e.to_string())?;
        pb::NetworkPolicy::decode(bytes.as_slice()).map_err(|e| e.to_string())
    }
}

/// A workload as stored: its protobuf encoding (revision and previous template included) in base64.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoredWorkload(pub String);

impl StoredWorkload {
    pub fn of(w: &pb::Workload) -> StoredWorkload {
        StoredWorkload(base64::engine::general_purpose::STANDARD.encode(w.encode_to_vec()))
    }

    pub fn decode(&self) -> Result<pb::Workload, String> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(&self.0).map_err(|e| e.to_string())?;
        pb::Workload::decode(bytes.as_slice()).map_err(|e| e.to_string())
    }
}

/// An HPA or a cron autoscaler as stored: a `StoredAutoscaler` message's encoding in base64.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoredAutoscaler(pub String);

impl StoredAutoscaler {
    pub fn of(kind: pb::stored_autoscaler::Kind) -> StoredAutoscaler {
        let m = pb::StoredAutoscaler { kind: Some(kind) };
        StoredAutoscaler(base64::engine::general_purpose::STANDARD.encode(m.encode_to_vec()))
    }

    pub fn decode(&self) -> Result<pb::stored_autoscaler::Kind, String> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(&self.0).map_err(|e| e.to_string())?;
        pb::StoredAutoscaler::decode(bytes.as_slice()).map_err(|e| e.to_string())?.kind.ok_or_else(|| "an autoscaler of no kind".to_string())
    }
}

/// A node asked of the cloud that has not reported yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedNode {
    pub instance_id: String,
    pub pool: String,
    pub instance_type: String,
    pub zone_id: String,
    pub vswitch_id: String,
    /// Unix time (ms) of the request, so a restarted scheduler still knows how long it waited.
    pub requested_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Submitted { pod: String, spec: StoredSpec },
    Bound { pod: String, node: String },
    /// The pod was pinned to the zone of its first node because its disk lives there: its spec
    /// from now on, with `pool_selector["zone"]` set.
    ZonePinned { pod: String, spec: StoredSpec },
    Unbound { pod: String },
    Deleted { pod: String },
    NodeRequested(RequestedNode),
    /// The node reported, or its request timed out, or it was deleted.
    NodeRequestCleared { instance_id: String },
    /// A RunInstances about to be called with this ClientToken: a leader that takes over repeats
    /// the call with the same token (the cloud answers with the same instances), so no node is
    /// created twice and none is forgotten.
    ScaleUpStarted(ScaleUp),
    /// Its instances are recorded as requested nodes, or the call failed.
    ScaleUpFinished { client_token: String },
    /// A NetworkPolicy created or replaced ("namespace/name").
    PolicyApplied { key: String, policy: StoredPolicy },
    PolicyDeleted { key: String },
    /// A namespace's labels from now on (all of them).
    NamespaceLabeled { namespace: String, labels: BTreeMap<String, String> },
    /// The taints the scheduler's API gave a node (a cordon among them), all of them from now on.
    NodeTainted { node: String, taints: Vec<StoredTaint> },
    /// A workload created or replaced ("namespace/name"), all of it from now on.
    WorkloadApplied { key: String, workload: StoredWorkload },
    WorkloadDeleted { key: String },
    /// An autoscaler created or replaced: key "hpa/namespace/name" or "cron/namespace/name".
    AutoscalerApplied { key: String, autoscaler: StoredAutoscaler },
    AutoscalerDeleted { key: String },
}

/// A taint set through the API, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredTaint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

/// A scale-up whose RunInstances may have been sent and whose instances are not recorded yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleUp {
    pub client_token: String,
    pub pool: String,
    pub instance_type: String,
    pub zone_id: String,
    pub vswitch_id: String,
    pub count: u32,
    pub started_at_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredPod {
    pub spec: StoredSpec,
    /// Submission order, so pending pods keep their place in the queue across a restart.
    pub order: u64,
    pub node: Option<String>,
}

/// What a store holds; the checkpoint's format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub pods: BTreeMap<String, StoredPod>,
    pub requested: BTreeMap<String, RequestedNode>,
    pub next_order: u64,
    /// Scale-ups begun and not finished, by ClientToken.
    #[serde(default)]
    pub scale_ups: BTreeMap<String, ScaleUp>,
    /// NetworkPolicies by "namespace/name".
    #[serde(default)]
    pub policies: BTreeMap<String, StoredPolicy>,
    /// Namespaces' own labels.
    #[serde(default)]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Taints given to nodes through the API, by instance ID.
    #[serde(default)]
    pub node_taints: BTreeMap<String, Vec<StoredTaint>>,
    /// Workloads by "namespace/name".
    #[serde(default)]
    pub workloads: BTreeMap<String, StoredWorkload>,
    /// HPAs and cron autoscalers by "hpa/namespace/name" or "cron/namespace/name".
    #[serde(default)]
    pub autoscalers: BTreeMap<String, StoredAutoscaler>,
}

impl Snapshot {
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Submitted { pod, spec } => {
                let order = self.next_order;
                self.next_order += 1;
                self.pods.insert(pod.clone(), StoredPod { spec: spec.clone(), order, node: None });
            }
            Event::Bound { pod, node } => {
                if let Some(p) = self.pods.get_mut(pod) {
                    p.node = Some(node.clone());
                }
            }
            Event::ZonePinned { pod, spec } => {
                if let Some(p) = self.pods.get_mut(pod) {
                    p.spec = spec.clone();
                }
            }
            Event::Unbound { pod } => {
                if let Some(p) = self.pods.get_mut(pod) {
                    p.node = None;
                }
            }
            Event::Deleted { pod } => {
                self.pods.remove(pod);
            }
            Event::NodeRequested(r) => {
                self.requested.insert(r.instance_id.clone(), r.clone());
            }
            Event::NodeRequestCleared { instance_id } => {
                self.requested.remove(instance_id);
            }
            Event::ScaleUpStarted(u) => {
                self.scale_ups.insert(u.client_token.clone(), u.clone());
            }
            Event::ScaleUpFinished { client_token } => {
                self.scale_ups.remove(client_token);
            }
            Event::PolicyApplied { key, policy } => {
                self.policies.insert(key.clone(), policy.clone());
            }
            Event::PolicyDeleted { key } => {
                self.policies.remove(key);
            }
            Event::NamespaceLabeled { namespace, labels } => {
                if labels.is_empty() {
                    self.namespaces.remove(namespace);
                } else {
                    self.namespaces.insert(namespace.clone(), labels.clone());
                }
            }
            Event::NodeTainted { node, taints } => {
                if taints.is_empty() {
                    self.node_taints.remove(node);
                } else {
                    self.node_taints.insert(node.clone(), taints.clone());
                }
            }
            Event::WorkloadApplied { key, workload } => {
                self.workloads.insert(key.clone(), workload.clone());
            }
            Event::WorkloadDeleted { key } => {
                self.workloads.remove(key);
            }
            Event::AutoscalerApplied { key, autoscaler } => {
                self.autoscalers.insert(key.clone(), autoscaler.clone());
            }
            Event::AutoscalerDeleted { key } => {
                self.autoscalers.remove(key);
            }
        }
    }
}

impl Replay<Event> for Snapshot {
    fn apply(&mut self, event: &Event) {
        Snapshot::apply(self, event);
    }
}

/// The state as of one batch, for a store that folds its journal into a checkpoint
/// ([`Store::checkpoint_due`]). Taken from the cluster under its lock — the encoded specs are
/// shared, not copied, so that is quick — and written by the committer without any lock. It
/// serializes as a [`Snapshot`], so the checkpoint loads as one.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// In key order.
    pub pods: Vec<(String, CheckpointPod)>,
    pub requested: BTreeMap<String, RequestedNode>,
    pub next_order: u64,
    pub scale_ups: BTreeMap<String, ScaleUp>,
    pub policies: BTreeMap<String, StoredPolicy>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub workloads: BTreeMap<String, StoredWorkload>,
    pub autoscalers: BTreeMap<String, StoredAutoscaler>,
}

#[derive(Debug, Clone)]
pub struct CheckpointPod {
    pub spec: EncodedSpec,
    pub order: u64,
    pub node: Option<String>,
}

impl Serialize for Checkpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Pods<'a>(&'a [(String, CheckpointPod)]);
        impl Serialize for Pods<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(key, p)| (key, p)))
            }
        }
        let mut s = serializer.serialize_struct("Snapshot", 8)?;
        s.serialize_field("pods", &Pods(&self.pods))?;
        s.serialize_field("requested", &self.requested)?;
        s.serialize_field("next_order", &self.next_order)?;
        s.serialize_field("scale_ups", &self.scale_ups)?;
        s.serialize_field("policies", &self.policies)?;
        s.serialize_field("namespaces", &self.namespaces)?;
        s.serialize_field("workloads", &self.workloads)?;
        s.serialize_field("autoscalers", &self.autoscalers)?;
        s.end()
    }
}

/// As a [`StoredPod`], its spec in base64 only now.
impl Serialize for CheckpointPod {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("StoredPod", 3)?;
        s.serialize_field("spec", &self.spec.stored())?;
        s.serialize_field("order", &self.order)?;
        s.serialize_field("node", &self.node)?;
        s.end()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("scheduler state directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}{} is not valid: {source} (move it away to start empty; the pods in it would be forgotten)", .line.map(|n| format!(" line {n}")).unwrap_or_default())]
    Corrupt { path: PathBuf, line: Option<usize>, source: serde_json::Error },
    #[error("the etcd cluster at {endpoints} has no quorum or cannot be reached ({reason}); check that most of its members run and that this host reaches their client URLs")]
    Unavailable { endpoints: String, reason: String },
    #[error("etcd at {endpoints} refused the request: {reason}")]
    Etcd { endpoints: String, reason: String },
    #[error("etcd at {endpoints} no longer holds the revision asked for ({reason}): load the state again")]
    Compacted { endpoints: String, reason: String },
    /// A write of a replica whose term as leader is over: nothing of it was stored.
    #[error("this scheduler no longer leads: the leader key {key} is not the one its term created at revision {revision} (leader now: {}); no transaction of the batch was written after it", .leader.as_deref().unwrap_or("none"))]
    Fenced { key: String, revision: i64, leader: Option<String> },
    #[error("this scheduler's term as leader (revision {revision}) is over: {reason}; nothing of the batch was written (campaign again)")]
    TermLost { revision: i64, reason: String },
    #[error("no term to write under: campaign for the lead and fence the etcd store with the term first")]
    NoTerm,
    #[error("etcd key {key} holds a value the scheduler cannot read: {reason} (was it written by something else? delete it or restore the key from a backup)")]
    CorruptKey { key: String, reason: String },
}

impl From<JournalError> for StoreError {
    fn from(e: JournalError) -> StoreError {
        match e {
            JournalError::Io { path, source } => StoreError::Io { path, source },
            JournalError::Corrupt { path, line, source } => StoreError::Corrupt { path, line, source },
            JournalError::Encode { path, source } => StoreError::Io { path, source: std::io::Error::new(std::io::ErrorKind::InvalidData, source) },
        }
    }
}

/// Where the scheduler keeps its state. `append` returns once the events are durable (for a
/// replicated store: committed by a quorum); the scheduler answers a client only after that.
/// Calls come from one thread at a time (the scheduler's committer), which batches the events of
/// many concurrent calls into one `append`.
pub trait Store: Send {
    /// Everything the store holds now: at start, or when this replica becomes the leader.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Makes the events durable, in order, as one batch (one sync, or as few transactions as the
    /// store allows); returns once they are.
    fn append(&mut self, events: &[Event]) -> Result<(), StoreError>;
    /// Whether the store wants the whole state as a [`Checkpoint`] (its journal grew long). The
    /// store keeps no copy of the state for that: the committer asks the cluster for one.
    fn checkpoint_due(&self) -> bool {
        false
    }
    /// Replaces what the store holds with `state`, which holds every event appended so far and
    /// no other. Stores without a journal to fold (etcd, memory) have nothing to do.
    fn checkpoint(&mut self, _state: &Checkpoint) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Keeps state in memory only: for tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Snapshot,
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        Ok(self.state.clone())
    }

    fn append(&mut self, events: &[Event]) -> Result<(), StoreError> {
        for e in events {
            self.state.apply(e);
        }
        Ok(())
    }
}
