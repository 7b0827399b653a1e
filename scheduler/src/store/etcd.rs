//! The replicated store: the scheduler's state as keys under one etcd prefix, written by the
//! leader only (every transaction is fenced by its term) and read by anyone.
//!
//! Keys (`<prefix>` is `store.etcd.prefix`):
//! - `<prefix>/pods/<ns>/<name>/spec`: `{"spec": <StoredSpec>, "order": n}`: the spec and its place
//!   in the queue; a zone pin rewrites it, a bind does not;
//! - `<prefix>/pods/<ns>/<name>/node`: the node the pod is bound to (absent: pending);
//! - `<prefix>/requested/<instance-id>`: a [`RequestedNode`] as JSON;
//! - `<prefix>/next_order`: the next submission order, in decimal;
//! - `<prefix>/leader`: the leader's record under its lease (see `crate::leader`).
//!
//! [`EtcdStore`] implements the synchronous [`Store`] trait for the scheduler's committer, a plain
//! std thread: it holds a tokio runtime [`Handle`] and blocks on it. Never call it from a runtime
//! worker thread (tokio panics there); [`Etcd`] is the async side that `crate::leader` shares.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use etcd_client::{Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, KeyValue, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};

use super::{Event, RequestedNode, ScaleUp, Snapshot, Store, StoreError, StoredPod, StoredPolicy, StoredSpec, StoredAutoscaler, StoredTaint, StoredWorkload};
use crate::config::EtcdConfig;
use crate::leader::{Term, TermLost};

/// etcd refuses a request over `--max-request-bytes` (1.5 MiB by default); a transaction stays
/// under this, leaving room for the fence and the gRPC framing.
pub const MAX_TXN_BYTES: usize = 1_400_000;
/// What one operation costs in a request besides its key and value (protobuf tags and lengths).
const OP_OVERHEAD: usize = 16;
/// Keys per page of a load: a few MiB at most with specs of some KiB.
const PAGE_KEYS: i64 = 500;
/// A page of large specs can pass tonic's default 4 MiB.
const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Between attempts at a request that found the cluster unavailable.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The shortest an attempt at a request is given.
const MIN_ATTEMPT: Duration = Duration::from_millis(250);
/// Attempts at a load whose revision etcd compacted between its pages.
const LOAD_ATTEMPTS: usize = 3;

/// Where each piece of the state lives under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOf<'a> {
    Spec(&'a str),
    Node(&'a str),
    Requested(&'a str),
    ScaleUp(&'a str),
    Policy(&'a str),
    Namespace(&'a str),
    NodeTaints(&'a str),
    Workload(&'a str),
    Autoscaler(&'a str),
    NextOrder,
    Leader,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.trim_end_matches('/').to_string() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    pub fn spec(&self, pod: &str) -> String {
        format!("{}/pods/{pod}/spec", self.prefix)
    }

    pub fn node(&self, pod: &str) -> String {
        format!("{}/pods/{pod}/node", self.prefix)
    }

    pub fn requested(&self, instance_id: &str) -> String {
        format!("{}/requested/{instance_id}", self.prefix)
    }

    pub fn scale_up(&self, client_token: &str) -> String {
        format!("{}/scaleups/{client_token}", self.prefix)
    }

    pub fn policy(&self, key: &str) -> String {
        format!("{}/policies/{key}", self.prefix)
    }

    pub fn namespace(&self, ns: &str) -> String {
        format!("{}/namespaces/{ns}", self.prefix)
    }

    pub fn node_taints(&self, node: &str) -> String {
        format!("{}/node_taints/{node}", self.prefix)
    }

    pub fn workload(&self, key: &str) -> String {
        format!("{}/workloads/{key}", self.prefix)
    }

    pub fn autoscaler(&self, key: &str) -> String {
        format!("{}/autoscalers/{key}", self.prefix)
    }

    pub fn next_order(&self) -> String {
        format!("{}/next_order", self.prefix)
    }

    /// Every key of the scheduler starts with this.
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub fn parse<'a>(&self, key: &'a str) -> Option<KeyOf<'a>> {
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?;
        if rest == "leader" {
            return Some(KeyOf::Leader);
        }
        if rest == "next_order" {
            return Some(KeyOf::NextOrder);
        }
        if let Some(id) = rest.strip_prefix("requested/") {
            return Some(KeyOf::Requested(id));
        }
        if let Some(token) = rest.strip_prefix("scaleups/") {
            return Some(KeyOf::ScaleUp(token));
        }
        if let Some(key) = rest.strip_prefix("policies/") {
            return Some(KeyOf::Policy(key));
        }
        if let Some(ns) = rest.strip_prefix("namespaces/") {
            return Some(KeyOf::Namespace(ns));
        }
        if let Some(node) = rest.strip_prefix("node_taints/") {
            return Some(KeyOf::NodeTaints(node));
        }
        if let Some(key) = rest.strip_prefix("workloads/") {
            return Some(KeyOf::Workload(key));
        }
        if let Some(key) = rest.strip_prefix("autoscalers/") {
            return Some(KeyOf::Autoscaler(key));
        }
        let pod = rest.strip_prefix("pods/")?;
        if let Some(pod) = pod.strip_suffix("/spec") {
            return Some(KeyOf::Spec(pod));
        }
        pod.strip_suffix("/node").map(KeyOf::Node)
    }
}

/// The end of the range of keys starting with `prefix` (its last byte plus one).
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A pod's spec key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecValue {
    spec: StoredSpec,
    order: u64,
}

/// The fence of a term: a transaction applies only while the leader key still has this create
/// revision, i.e. while the term that created it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub revision: i64,
}

/// A connection to an etcd cluster with the scheduler's prefix and deadlines; cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    keys: Keys,
    endpoints: String,
    request_timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("endpoints", &self.endpoints).field("prefix", &self.keys.prefix).finish()
    }
}

impl Etcd {
    /// Sets up the channel to the members (TLS from the config's files). It contacts no member:
    /// an unreachable cluster shows at the first request.
    pub async fn connect(cfg: &EtcdConfig) -> Result<Etcd, StoreError> {
        let endpoints = cfg.endpoints.join(", ");
        // require_leader: a member cut off from the others answers UNAVAILABLE at once instead of
        // holding the request until its deadline. HTTP/2 pings no more often than etcd's
        // --grpc-keepalive-min-time (5 s) allows.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(cfg.dial_timeout())
            .with_require_leader(true)
            .with_keep_alive(Duration::from_secs(10), cfg.request_timeout());
        if cfg.tls() {
            let read = |path: &std::path::Path| std::fs::read(path).map_err(|source| StoreError::Io { path: path.to_path_buf(), source });
            let tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&cfg.ca_file)?)).identity(Identity::from_pem(read(&cfg.cert_file)?, read(&cfg.key_file)?));
            options = options.with_tls(tls);
        }
        let client = Client::connect(&cfg.endpoints, Some(options)).await.map_err(|e| classify(&endpoints, e))?;
        Ok(Etcd { client, keys: Keys::new(&cfg.prefix), endpoints, request_timeout: cfg.request_timeout() })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The endpoints, as errors name them.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Runs a request (made anew by `request` for each attempt) under the request deadline. An
    /// unavailable member or cluster (a connection refused, no etcd leader while it elects one) is
    /// tried again until the deadline; the scheduler's requests may be: its writes put and delete
    /// whole values under a fence, so a repeat changes nothing. Other errors return at once. An
    /// attempt unanswered for a quarter of the deadline is dropped and sent again (perhaps to
    /// another member): a member that passed it on to a leader just killed would hold it for
    /// etcd's own 7 s, past any deadline.
    pub async fn call<T, F, Fut>(&self, mut request: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut last: String;
        let attempt_for = (self.request_timeout / 4).max(MIN_ATTEMPT);
        loop {
            let attempt_deadline = deadline.min(tokio::time::Instant::now() + attempt_for);
            match tokio::time::timeout_at(attempt_deadline, request(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => match classify(&self.endpoints, e) {
                    StoreError::Unavailable { reason, .. } => last = reason,
                    other => return Err(other),
                },
                Err(_) => last = format!("no answer within {} ms", attempt_for.as_millis()),
            }
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        let reason = format!("{last}, still at the request deadline of {} ms", self.request_timeout.as_millis());
        Err(StoreError::Unavailable { endpoints: self.endpoints.clone(), reason })
    }

    /// Everything under the prefix at one revision (a linearizable first page, the next pages at
    /// its revision), with that revision: watching from it misses nothing.
    pub async fn load(&self) -> Result<(Snapshot, i64), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.load_once().await {
                Err(StoreError::Compacted { .. }) if attempt < LOAD_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    async fn load_once(&self) -> Result<(Snapshot, i64), StoreError> {
        let end = range_end(&self.keys.all());
        let mut start = self.keys.all().into_bytes();
        let mut revision = 0;
        let mut kvs = Vec::new();
        loop {
            let options = GetOptions::new().with_range(end.clone()).with_limit(PAGE_KEYS).with_revision(revision);
            let mut page = self
                .call(|c| {
                    let (key, options) = (start.clone(), options.clone());
                    async move { c.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES).get(key, Some(options)).await }
                })
                .await?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            let more = page.more();
            let got = page.take_kvs();
            if let Some(last) = got.last() {
                start = last.key().to_vec();
                start.push(0);
            }
            kvs.extend(got);
            if !more {
                break;
            }
        }
        Ok((decode(&self.keys, &kvs)?, revision))
    }

    /// Changes under the prefix after `revision`, one batch per etcd revision, until the receiver
    /// is dropped or the watch fails (its last item is then the error: load again and follow from
    /// the new revision).
    pub fn follow(&self, revision: i64) -> mpsc::Receiver<Result<Changes, StoreError>> {
        let (tx, rx) = mpsc::channel(64);
        let etcd = self.clone();
        tokio::spawn(async move {
            if let Err(e) = etcd.follow_into(revision, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    async fn follow_into(&self, revision: i64, tx: &mpsc::Sender<Result<Changes, StoreError>>) -> Result<(), StoreError> {
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut watch = self.call(|mut c| {
            let (key, options) = (self.keys.all(), options.clone());
            async move { c.watch(key, Some(options)).await }
        }).await?;
        loop {
            let resp = tokio::select! {
                resp = watch.message() => resp.map_err(|e| classify(&self.endpoints, e))?,
                () = tx.closed() => return Ok(()),
            };
            let Some(resp) = resp else {
                return Err(StoreError::Unavailable { endpoints: self.endpoints.clone(), reason: "the watch stream ended".into() });
            };
            if resp.canceled() {
                let reason = format!("watch canceled: {} (compacted at revision {})", resp.cancel_reason(), resp.compact_revision());
                return Err(if resp.compact_revision() > 0 { StoreError::Compacted { endpoints: self.endpoints.clone(), reason } } else { StoreError::Etcd { endpoints: self.endpoints.clone(), reason } });
            }
            let mut batch: Option<Changes> = None;
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let put = event.event_type() == EventType::Put;
                if let Some(b) = batch.take_if(|b| b.revision != kv.mod_revision())
                    && tx.send(Ok(b)).await.is_err()
                {
                    return Ok(());
                }
                let b = batch.get_or_insert_with(|| Changes { revision: kv.mod_revision(), changes: Vec::new() });
                if let Some(change) = change_of(&self.keys, kv, put)? {
                    b.changes.push(change);
                }
            }
            if let Some(b) = batch
                && tx.send(Ok(b)).await.is_err()
            {
                return Ok(());
            }
        }
    }
}

/// Maps an etcd client error to what the scheduler tells: an unavailable cluster (gRPC
/// UNAVAILABLE or DEADLINE_EXCEEDED, a transport failure) names the endpoints and the lost quorum.
pub fn classify(endpoints: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    let endpoints = endpoints.to_string();
    match e {
        // A call in flight on a connection that breaks (a member killed) ends as UNKNOWN
        // "transport error": another member may take the retry.
        E::GRpcStatus(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled) || (s.code() == Code::Unknown && s.message().contains("transport error")) => {
            StoreError::Unavailable { endpoints, reason: s.message().to_string() }
        }
        E::GRpcStatus(s) if s.code() == Code::OutOfRange => StoreError::Compacted { endpoints, reason: s.message().to_string() },
        E::TransportError(e) => StoreError::Unavailable { endpoints, reason: e.to_string() },
        E::IoError(e) => StoreError::Unavailable { endpoints, reason: e.to_string() },
        E::GRpcStatus(s) => StoreError::Etcd { endpoints, reason: format!("{:?}: {}", s.code(), s.message()) },
        other => StoreError::Etcd { endpoints, reason: other.to_string() },
    }
}

fn corrupt(key: &[u8], reason: impl std::fmt::Display) -> StoreError {
    StoreError::CorruptKey { key: String::from_utf8_lossy(key).into_owned(), reason: reason.to_string() }
}

/// The state the keys hold. A node key without its pod's spec key is left out, as `Snapshot::apply`
/// leaves out a bind of an unknown pod.
fn decode(keys: &Keys, kvs: &[KeyValue]) -> Result<Snapshot, StoreError> {
    let mut snapshot = Snapshot::default();
    let mut nodes = Vec::new();
    let mut next_order = 0;
    for kv in kvs {
        let key = kv.key_str().map_err(|e| corrupt(kv.key(), e))?;
        match keys.parse(key) {
            Some(KeyOf::Spec(pod)) => {
                let v: SpecValue = serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))?;
                snapshot.pods.insert(pod.to_string(), StoredPod { spec: v.spec, order: v.order, node: None });
            }
            Some(KeyOf::Node(pod)) => nodes.push((pod, kv.value_str().map_err(|e| corrupt(kv.key(), e))?.to_string())),
            Some(KeyOf::Requested(id)) => {
                let r: RequestedNode = serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))?;
                snapshot.requested.insert(id.to_string(), r);
            }
            Some(KeyOf::ScaleUp(token)) => {
                let u: ScaleUp = serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))?;
                snapshot.scale_ups.insert(token.to_string(), u);
            }
            Some(KeyOf::Policy(key)) => {
                snapshot.policies.insert(key.to_string(), StoredPolicy(kv.value_str().map_err(|e| corrupt(kv.key(), e))?.to_string()));
            }
            Some(KeyOf::Namespace(ns)) => {
                let labels: BTreeMap<String, String> = serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))?;
                snapshot.namespaces.insert(ns.to_string(), labels);
            }
            Some(KeyOf::NodeTaints(node)) => {
                let taints: Vec<StoredTaint> = serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))?;
                snapshot.node_taints.insert(node.to_string(), taints);
            }
            Some(KeyOf::Workload(key)) => {
                snapshot.workloads.insert(key.to_string(), StoredWorkload(kv.value_str().map_err(|e| corrupt(kv.key(), e))?.to_string()));
            }
            Some(KeyOf::Autoscaler(key)) => {
                snapshot.autoscalers.insert(key.to_string(), StoredAutoscaler(kv.value_str().map_err(|e| corrupt(kv.key(), e))?.to_string()));
            }
            Some(KeyOf::NextOrder) => next_order = kv.value_str().ok().and_then(|v| v.parse().ok()).ok_or_else(|| corrupt(kv.key(), "not a number"))?,
            Some(KeyOf::Leader) | None => {}
        }
    }
    for (pod, node) in nodes {
        if let Some(p) = snapshot.pods.get_mut(pod) {
            p.node = Some(node);
        }
    }
    // A batch split over transactions may have stored a pod and not yet the counter.
    snapshot.next_order = snapshot.pods.values().map(|p| p.order + 1).max().unwrap_or(0).max(next_order);
    Ok(snapshot)
}

/// One key's change as a follower applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A pod submitted or its spec rewritten (a zone pin): its binding, if any, stays.
    Pod { pod: String, spec: StoredSpec, order: u64 },
    PodDeleted { pod: String },
    Bound { pod: String, node: String },
    Unbound { pod: String },
    Requested(RequestedNode),
    RequestCleared { instance_id: String },
    ScaleUp(ScaleUp),
    ScaleUpFinished { client_token: String },
    Policy { key: String, policy: StoredPolicy },
    PolicyDeleted { key: String },
    Namespace { namespace: String, labels: BTreeMap<String, String> },
    NodeTaints { node: String, taints: Vec<StoredTaint> },
    Workload { key: String, workload: StoredWorkload },
    WorkloadDeleted { key: String },
    Autoscaler { key: String, autoscaler: StoredAutoscaler },
    AutoscalerDeleted { key: String },
    NextOrder(u64),
}

/// The changes of one etcd revision (one transaction of the leader).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    pub revision: i64,
    pub changes: Vec<Change>,
}

impl Change {
    pub fn apply(&self, s: &mut Snapshot) {
        match self {
            Change::Pod { pod, spec, order } => {
                let p = s.pods.entry(pod.clone()).or_default();
                p.spec = spec.clone();
                p.order = *order;
                s.next_order = s.next_order.max(order + 1);
            }
            Change::PodDeleted { pod } => {
                s.pods.remove(pod);
            }
            Change::Bound { pod, node } => {
                if let Some(p) = s.pods.get_mut(pod) {
                    p.node = Some(node.clone());
                }
            }
            Change::Unbound { pod } => {
                if let Some(p) = s.pods.get_mut(pod) {
                    p.node = None;
                }
            }
            Change::Requested(r) => {
                s.requested.insert(r.instance_id.clone(), r.clone());
            }
            Change::RequestCleared { instance_id } => {
                s.requested.remove(instance_id);
            }
            Change::ScaleUp(u) => {
                s.scale_ups.insert(u.client_token.clone(), u.clone());
            }
            Change::ScaleUpFinished { client_token } => {
                s.scale_ups.remove(client_token);
            }
            Change::Policy { key, policy } => {
                s.policies.insert(key.clone(), policy.clone());
            }
            Change::PolicyDeleted { key } => {
                s.policies.remove(key);
            }
            Change::NodeTaints { node, taints } => {
                if taints.is_empty() {
                    s.node_taints.remove(node);
                } else {
                    s.node_taints.insert(node.clone(), taints.clone());
                }
            }
            Change::Namespace { namespace, labels } => {
                if labels.is_empty() {
                    s.namespaces.remove(namespace);
                } else {
                    s.namespaces.insert(namespace.clone(), labels.clone());
                }
            }
            Change::Workload { key, workload } => {
                s.workloads.insert(key.clone(), workload.clone());
            }
            Change::WorkloadDeleted { key } => {
                s.workloads.remove(key);
            }
            Change::Autoscaler { key, autoscaler } => {
                s.autoscalers.insert(key.clone(), autoscaler.clone());
            }
            Change::AutoscalerDeleted { key } => {
                s.autoscalers.remove(key);
            }
            Change::NextOrder(n) => s.next_order = s.next_order.max(*n),
        }
    }
}

fn change_of(keys: &Keys, kv: &KeyValue, put: bool) -> Result<Option<Change>, StoreError> {
    let key = kv.key_str().map_err(|e| corrupt(kv.key(), e))?;
    Ok(match (keys.parse(key), put) {
        (Some(KeyOf::Spec(pod)), true) => {
            let v: SpecValue = serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))?;
            Some(Change::Pod { pod: pod.to_string(), spec: v.spec, order: v.order })
        }
        (Some(KeyOf::Spec(pod)), false) => Some(Change::PodDeleted { pod: pod.to_string() }),
        (Some(KeyOf::Node(pod)), true) => Some(Change::Bound { pod: pod.to_string(), node: kv.value_str().map_err(|e| corrupt(kv.key(), e))?.to_string() }),
        (Some(KeyOf::Node(pod)), false) => Some(Change::Unbound { pod: pod.to_string() }),
        (Some(KeyOf::Requested(_)), true) => Some(Change::Requested(serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))?)),
        (Some(KeyOf::Requested(id)), false) => Some(Change::RequestCleared { instance_id: id.to_string() }),
        (Some(KeyOf::ScaleUp(_)), true) => Some(Change::ScaleUp(serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))?)),
        (Some(KeyOf::ScaleUp(token)), false) => Some(Change::ScaleUpFinished { client_token: token.to_string() }),
        (Some(KeyOf::Policy(key)), true) => Some(Change::Policy { key: key.to_string(), policy: StoredPolicy(kv.value_str().map_err(|e| corrupt(kv.key(), e))?.to_string()) }),
        (Some(KeyOf::Policy(key)), false) => Some(Change::PolicyDeleted { key: key.to_string() }),
        (Some(KeyOf::Namespace(ns)), true) => Some(Change::Namespace { namespace: ns.to_string(), labels: serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))? }),
        (Some(KeyOf::Namespace(ns)), false) => Some(Change::Namespace { namespace: ns.to_string(), labels: BTreeMap::new() }),
        (Some(KeyOf::NodeTaints(node)), true) => Some(Change::NodeTaints { node: node.to_string(), taints: serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))? }),
        (Some(KeyOf::NodeTaints(node)), false) => Some(Change::NodeTaints { node: node.to_string(), taints: Vec::new() }),
        (Some(KeyOf::Workload(key)), true) => Some(Change::Workload { key: key.to_string(), workload: StoredWorkload(kv.value_str().map_err(|e| corrupt(kv.key(), e))?.to_string()) }),
        (Some(KeyOf::Workload(key)), false) => Some(Change::WorkloadDeleted { key: key.to_string() }),
        (Some(KeyOf::Autoscaler(key)), true) => Some(Change::Autoscaler { key: key.to_string(), autoscaler: StoredAutoscaler(kv.value_str().map_err(|e| corrupt(kv.key(), e))?.to_string()) }),
        (Some(KeyOf::Autoscaler(key)), false) => Some(Change::AutoscalerDeleted { key: key.to_string() }),
        (Some(KeyOf::NextOrder), true) => Some(Change::NextOrder(kv.value_str().ok().and_then(|v| v.parse().ok()).ok_or_else(|| corrupt(kv.key(), "not a number"))?)),
        _ => None,
    })
}

/// What the store must know of the state to turn events into keys: each pod's order (a zone pin
/// rewrites the spec key, order included) and the next order. Not the specs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    orders: HashMap<String, u64>,
    next_order: u64,
}

impl Index {
    pub fn of(snapshot: &Snapshot) -> Index {
        Index { orders: snapshot.pods.iter().map(|(k, p)| (k.clone(), p.order)).collect(), next_order: snapshot.next_order }
    }
}

/// A write of one key: a value, or `None` to delete it.
pub type KeyWrite = (String, Option<Vec<u8>>);

/// The key writes of a batch, one per key (etcd refuses a key twice in a transaction): the last
/// write of a key wins, at the place of its first. Events mean what `Snapshot::apply` makes of them.
pub fn plan(keys: &Keys, index: &mut Index, events: &[Event]) -> Vec<KeyWrite> {
    let mut writes: Vec<KeyWrite> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut write = |key: String, value: Option<Vec<u8>>| match at.get(&key) {
        Some(&i) => writes[i].1 = value,
        None => {
            at.insert(key.clone(), writes.len());
            writes.push((key, value));
        }
    };
    let spec_value = |spec: &StoredSpec, order| serde_json::to_vec(&SpecValue { spec: spec.clone(), order }).expect("a spec serializes");
    for e in events {
        match e {
            Event::Submitted { pod, spec } => {
                let order = index.next_order;
                index.next_order += 1;
                if index.orders.insert(pod.clone(), order).is_some() {
                    write(keys.node(pod), None);
                }
                write(keys.spec(pod), Some(spec_value(spec, order)));
                write(keys.next_order(), Some(index.next_order.to_string().into_bytes()));
            }
            Event::Bound { pod, node } => {
                if index.orders.contains_key(pod) {
                    write(keys.node(pod), Some(node.clone().into_bytes()));
                }
            }
            Event::ZonePinned { pod, spec } => {
                if let Some(&order) = index.orders.get(pod) {
                    write(keys.spec(pod), Some(spec_value(spec, order)));
                }
            }
            Event::Unbound { pod } => {
                if index.orders.contains_key(pod) {
                    write(keys.node(pod), None);
                }
            }
            Event::Deleted { pod } => {
                if index.orders.remove(pod).is_some() {
                    write(keys.spec(pod), None);
                    write(keys.node(pod), None);
                }
            }
            Event::NodeRequested(r) => write(keys.requested(&r.instance_id), Some(serde_json::to_vec(r).expect("a request serializes"))),
            Event::NodeRequestCleared { instance_id } => write(keys.requested(instance_id), None),
            Event::ScaleUpStarted(u) => write(keys.scale_up(&u.client_token), Some(serde_json::to_vec(u).expect("a scale-up serializes"))),
            Event::ScaleUpFinished { client_token } => write(keys.scale_up(client_token), None),
            Event::PolicyApplied { key, policy } => write(keys.policy(key), Some(policy.0.clone().into_bytes())),
            Event::PolicyDeleted { key } => write(keys.policy(key), None),
            Event::NamespaceLabeled { namespace, labels } => write(keys.namespace(namespace), (!labels.is_empty()).then(|| serde_json::to_vec(labels).expect("labels serialize"))),
            Event::NodeTainted { node, taints } => write(keys.node_taints(node), (!taints.is_empty()).then(|| serde_json::to_vec(taints).expect("taints serialize"))),
            Event::WorkloadApplied { key, workload } => write(keys.workload(key), Some(workload.0.clone().into_bytes())),
            Event::WorkloadDeleted { key } => write(keys.workload(key), None),
            Event::AutoscalerApplied { key, autoscaler } => write(keys.autoscaler(key), Some(autoscaler.0.clone().into_bytes())),
            Event::AutoscalerDeleted { key } => write(keys.autoscaler(key), None),
        }
    }
    writes
}

/// Splits writes, in order, into transactions of at most `max_ops` writes and `max_bytes` bytes
/// (a write larger than that goes alone, for etcd to refuse by name).
pub fn split(writes: &[KeyWrite], max_ops: usize, max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut txns = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (key, value)) in writes.iter().enumerate() {
        let size = key.len() + value.as_ref().map_or(0, Vec::len) + OP_OVERHEAD;
        if i > start && (i - start == max_ops || bytes + size > max_bytes) {
            txns.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < writes.len() {
        txns.push(start..writes.len());
    }
    txns
}

/// The scheduler's state on etcd. `append` writes under the term set by [`EtcdStore::fence`]; a
/// replica whose term is over gets [`StoreError::Fenced`] and nothing of its batch is written.
pub struct EtcdStore {
    runtime: Handle,
    etcd: Etcd,
    max_txn_ops: usize,
    fence: Option<(Fence, watch::Receiver<Option<TermLost>>)>,
    /// Known after a load; dropped after a failed append (the next append loads again).
    index: Option<Index>,
}

impl EtcdStore {
    /// `runtime` runs the requests: the store blocks on it, so it must be called from a thread that
    /// is not one of its workers (the scheduler's committer is a plain std thread).
    pub fn new(runtime: Handle, etcd: Etcd, max_txn_ops: usize) -> EtcdStore {
        EtcdStore { runtime, etcd, max_txn_ops: max_txn_ops.max(1), fence: None, index: None }
    }

    /// Connects with the config (see [`Etcd::connect`]).
    pub fn connect(runtime: Handle, cfg: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        let etcd = runtime.block_on(Etcd::connect(cfg))?;
        Ok(EtcdStore::new(runtime, etcd, cfg.max_txn_ops))
    }

    /// Writes from now on only while this term lasts: every transaction compares the leader key's
    /// create revision to the term's, and nothing is sent once the term is lost here (its lease
    /// may outlive the renewals by up to TTL/3, but this replica has stopped acting).
    pub fn fence(&mut self, term: &Term) {
        self.fence = Some((term.fence(), term.lost_signal()));
    }

    /// Fences by the leader key's revision alone, with no loss signal: only etcd's compare guards.
    pub fn fence_at(&mut self, fence: Fence) {
        self.fence = Some((fence, watch::channel(None).1));
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// Everything the store holds and the revision it was read at (to [`follow`](Self::follow) from).
    pub fn load_at(&mut self) -> Result<(Snapshot, i64), StoreError> {
        let (snapshot, revision) = self.runtime.block_on(self.etcd.load())?;
        self.index = Some(Index::of(&snapshot));
        Ok((snapshot, revision))
    }

    /// The changes after `revision` (from [`load_at`](Self::load_at)), for a follower; see [`Etcd::follow`].
    pub fn follow(&self, revision: i64) -> mpsc::Receiver<Result<Changes, StoreError>> {
        let _guard = self.runtime.enter();
        self.etcd.follow(revision)
    }

    async fn write(&self, fence: &Fence, writes: &[KeyWrite]) -> Result<(), StoreError> {
        for range in split(writes, self.max_txn_ops, MAX_TXN_BYTES) {
            let ops: Vec<TxnOp> = writes[range]
                .iter()
                .map(|(key, value)| match value {
                    Some(v) => TxnOp::put(key.as_str(), v.as_slice(), None),
                    None => TxnOp::delete(key.as_str(), None),
                })
                .collect();
            let txn = Txn::new()
                .when([Compare::create_revision(fence.key.as_str(), CompareOp::Equal, fence.revision)])
                .and_then(ops)
                .or_else([TxnOp::get(fence.key.as_str(), None)]);
            let resp = self.etcd.call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            }).await?;
            if !resp.succeeded() {
                let leader = resp.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| crate::leader::LeaderRecord::decode(kv.value()).map_or_else(|_| String::from_utf8_lossy(kv.value()).into_owned(), |r| r.address)),
                    _ => None,
                });
                return Err(StoreError::Fenced { key: fence.key.clone(), revision: fence.revision, leader });
            }
        }
        Ok(())
    }
}

impl Store for EtcdStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.load_at().map(|(snapshot, _)| snapshot)
    }

    fn append(&mut self, events: &[Event]) -> Result<(), StoreError> {
        let (fence, lost) = self.fence.as_ref().ok_or(StoreError::NoTerm)?;
        if let Some(why) = lost.borrow().clone() {
            return Err(StoreError::TermLost { revision: fence.revision, reason: why.to_string() });
        }
        let fence = fence.clone();
        if self.index.is_none() {
            self.load_at()?;
        }
        let mut index = self.index.take().expect("loaded");
        let writes = plan(&self.etcd.keys, &mut index, events);
        if writes.is_empty() {
            self.index = Some(index);
            return Ok(());
        }
        self.runtime.block_on(self.write(&fence, &writes))?;
        self.index = Some(index);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::cluster::v1 as pb;

    use super::*;

    /// A broken connection is retried on another member; an answer etcd gave is not.
    #[test]
    fn a_broken_connection_is_unavailable_and_an_answer_is_not() {
        let status = |code, message: &str| etcd_client::Error::GRpcStatus(tonic::Status::new(code, message));
        assert!(matches!(classify("e", status(tonic::Code::Unknown, "transport error")), StoreError::Unavailable { .. }));
        assert!(matches!(classify("e", status(tonic::Code::Unavailable, "no leader")), StoreError::Unavailable { .. }));
        assert!(matches!(classify("e", status(tonic::Code::Unknown, "etcdserver: something else")), StoreError::Etcd { .. }));
        assert!(matches!(classify("e", status(tonic::Code::InvalidArgument, "bad key")), StoreError::Etcd { .. }));
    }

    fn spec(name: &str, zone: &str) -> StoredSpec {
        let mut s = pb::PodSpec { namespace: "d".into(), name: name.into(), ..Default::default() };
        if !zone.is_empty() {
            s.pool_selector.insert("zone".into(), zone.into());
        }
        StoredSpec::of(&s)
    }

    fn decode_writes(keys: &Keys, writes: &[KeyWrite]) -> Snapshot {
        let kvs: Vec<(String, Vec<u8>)> = writes.iter().filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v))).collect();
        // decode() takes etcd's KeyValue; rebuild the same from plain pairs through the follower path.
        let mut s = Snapshot::default();
        for (k, v) in &kvs {
            match keys.parse(k).unwrap() {
                KeyOf::Spec(pod) => {
                    let sv: SpecValue = serde_json::from_slice(v).unwrap();
                    Change::Pod { pod: pod.into(), spec: sv.spec, order: sv.order }.apply(&mut s);
                }
                KeyOf::Node(pod) => Change::Bound { pod: pod.into(), node: String::from_utf8(v.clone()).unwrap() }.apply(&mut s),
                KeyOf::Requested(_) => Change::Requested(serde_json::from_slice(v).unwrap()).apply(&mut s),
                KeyOf::ScaleUp(_) => Change::ScaleUp(serde_json::from_slice(v).unwrap()).apply(&mut s),
                KeyOf::NextOrder => Change::NextOrder(std::str::from_utf8(v).unwrap().parse().unwrap()).apply(&mut s),
                KeyOf::Policy(_) | KeyOf::Namespace(_) | KeyOf::NodeTaints(_) | KeyOf::Workload(_) | KeyOf::Autoscaler(_) | KeyOf::Leader => {}
            }
        }
        s
    }

    #[test]
    fn policies_and_namespace_labels_are_keys_of_their_own() {
        let keys = Keys::new("/berth");
        let policy = StoredPolicy::of(&berth_proto::cluster::v1::NetworkPolicy { namespace: "prod".into(), name: "db".into(), spec: None, version: 3 });
        let events = [
            Event::PolicyApplied { key: "prod/db".into(), policy: policy.clone() },
            Event::NamespaceLabeled { namespace: "prod".into(), labels: [("team".to_string(), "a".to_string())].into() },
            Event::PolicyApplied { key: "prod/gone".into(), policy: policy.clone() },
            Event::PolicyDeleted { key: "prod/gone".into() },
            Event::NodeTainted { node: "i-1".into(), taints: vec![StoredTaint { key: "node.kubernetes.io/unschedulable".into(), value: String::new(), effect: "NoSchedule".into() }] },
            Event::NodeTainted { node: "i-2".into(), taints: vec![StoredTaint { key: "k".into(), value: "v".into(), effect: "NoExecute".into() }] },
            Event::NodeTainted { node: "i-2".into(), taints: vec![] },
        ];
        let writes = plan(&keys, &mut Index::default(), &events);
        assert_eq!(keys.parse("/berth/policies/prod/db"), Some(KeyOf::Policy("prod/db")));
        assert_eq!(keys.parse("/berth/namespaces/prod"), Some(KeyOf::Namespace("prod")));
        let mut s = Snapshot::default();
        for (k, v) in &writes {
            let change = match (keys.parse(k).unwrap(), v) {
                (KeyOf::Policy(key), Some(v)) => Change::Policy { key: key.into(), policy: StoredPolicy(String::from_utf8(v.clone()).unwrap()) },
                (KeyOf::Policy(key), None) => Change::PolicyDeleted { key: key.into() },
                (KeyOf::Namespace(ns), Some(v)) => Change::Namespace { namespace: ns.into(), labels: serde_json::from_slice(v).unwrap() },
                (KeyOf::NodeTaints(node), Some(v)) => Change::NodeTaints { node: node.into(), taints: serde_json::from_slice(v).unwrap() },
                (KeyOf::NodeTaints(node), None) => Change::NodeTaints { node: node.into(), taints: vec![] },
                other => panic!("unexpected write {other:?}"),
            };
            change.apply(&mut s);
        }
        let mut expected = Snapshot::default();
        for e in &events {
            expected.apply(e);
        }
        assert_eq!(s, expected);
        assert_eq!(s.policies.keys().collect::<Vec<_>>(), ["prod/db"]);
        assert_eq!(s.node_taints.keys().collect::<Vec<_>>(), ["i-1"]);
        assert_eq!(s.policies["prod/db"].decode().unwrap().version, 3);
    }

    #[test]
    fn workloads_are_keys_of_their_own_and_round_trip() {
        let keys = Keys::new("/berth");
        let w = berth_proto::cluster::v1::Workload { namespace: "prod".into(), name: "web".into(), replicas: 10, revision: 2, ..Default::default() };
        let events = [
            Event::WorkloadApplied { key: "prod/web".into(), workload: StoredWorkload::of(&w) },
            Event::WorkloadApplied { key: "prod/gone".into(), workload: StoredWorkload::of(&w) },
            Event::WorkloadDeleted { key: "prod/gone".into() },
        ];
        let writes = plan(&keys, &mut Index::default(), &events);
        assert_eq!(keys.parse(&keys.workload("prod/web")), Some(KeyOf::Workload("prod/web")));
        let mut s = Snapshot::default();
        for (k, v) in &writes {
            let change = match (keys.parse(k).unwrap(), v) {
                (KeyOf::Workload(key), Some(v)) => Change::Workload { key: key.into(), workload: StoredWorkload(String::from_utf8(v.clone()).unwrap()) },
                (KeyOf::Workload(key), None) => Change::WorkloadDeleted { key: key.into() },
                other => panic!("unexpected write {other:?}"),
            };
            change.apply(&mut s);
        }
        let mut expected = Snapshot::default();
        for e in &events {
            expected.apply(e);
        }
        assert_eq!(s, expected);
        assert_eq!(s.workloads["prod/web"].decode().unwrap(), w);
    }

    #[test]
    fn autoscalers_are_keys_of_their_own_and_round_trip() {
        use berth_proto::cluster::v1 as pb;
        let keys = Keys::new("/berth");
        let hpa = pb::stored_autoscaler::Kind::Hpa(pb::HorizontalPodAutoscaler { namespace: "prod".into(), name: "web".into(), target: "web".into(), max_replicas: 9, ..Default::default() });
        let cron = pb::stored_autoscaler::Kind::Cron(pb::CronHorizontalPodAutoscaler { namespace: "prod".into(), name: "web".into(), time_zone: "Asia/Shanghai".into(), ..Default::default() });
        let events = [
            Event::AutoscalerApplied { key: "hpa/prod/web".into(), autoscaler: StoredAutoscaler::of(hpa.clone()) },
            Event::AutoscalerApplied { key: "cron/prod/web".into(), autoscaler: StoredAutoscaler::of(cron.clone()) },
            Event::AutoscalerApplied { key: "hpa/prod/gone".into(), autoscaler: StoredAutoscaler::of(hpa.clone()) },
            Event::AutoscalerDeleted { key: "hpa/prod/gone".into() },
        ];
        let mut s = Snapshot::default();
        for (k, v) in &plan(&keys, &mut Index::default(), &events) {
            let change = match (keys.parse(k).unwrap(), v) {
                (KeyOf::Autoscaler(key), Some(v)) => Change::Autoscaler { key: key.into(), autoscaler: StoredAutoscaler(String::from_utf8(v.clone()).unwrap()) },
                (KeyOf::Autoscaler(key), None) => Change::AutoscalerDeleted { key: key.into() },
                other => panic!("unexpected write {other:?}"),
            };
            change.apply(&mut s);
        }
        let mut expected = Snapshot::default();
        for e in &events {
            expected.apply(e);
        }
        assert_eq!(s, expected);
        assert_eq!((s.autoscalers["hpa/prod/web"].decode().unwrap(), s.autoscalers["cron/prod/web"].decode().unwrap()), (hpa, cron));
    }

    #[test]
    fn keys_parse_back() {
        let k = Keys::new("/berth/scheduler");
        assert_eq!(k.parse(&k.spec("d/a")), Some(KeyOf::Spec("d/a")));
        assert_eq!(k.parse(&k.node("d/a")), Some(KeyOf::Node("d/a")));
        assert_eq!(k.parse(&k.requested("i-1")), Some(KeyOf::Requested("i-1")));
        assert_eq!(k.parse(&k.next_order()), Some(KeyOf::NextOrder));
        assert_eq!(k.parse(&k.leader()), Some(KeyOf::Leader));
        assert_eq!(k.parse("/berth/schedulerx/leader"), None);
        assert_eq!(range_end(&k.all()), b"/berth/scheduler0".to_vec());
    }

    /// From an empty store, the writes of a batch hold what applying its events makes.
    #[test]
    fn a_batch_plans_to_one_write_per_key_with_the_last_winning() {
        let keys = Keys::new("/p");
        let events = vec![
            Event::Submitted { pod: "d/a".into(), spec: spec("a", "") },
            Event::Bound { pod: "d/a".into(), node: "i-1".into() },
            Event::ZonePinned { pod: "d/a".into(), spec: spec("a", "z1") },
            Event::Submitted { pod: "d/b".into(), spec: spec("b", "") },
            Event::Bound { pod: "d/b".into(), node: "i-2".into() },
            Event::Unbound { pod: "d/b".into() },
            Event::Bound { pod: "d/ghost".into(), node: "i-3".into() },
            Event::Submitted { pod: "d/c".into(), spec: spec("c", "") },
            Event::Deleted { pod: "d/c".into() },
            Event::NodeRequested(RequestedNode { instance_id: "i-9".into(), pool: "p".into(), instance_type: "t".into(), zone_id: "z".into(), vswitch_id: "v".into(), requested_at_ms: 1 }),
            Event::NodeRequested(RequestedNode { instance_id: "i-8".into(), pool: "p".into(), instance_type: "t".into(), zone_id: "z".into(), vswitch_id: "v".into(), requested_at_ms: 2 }),
            Event::NodeRequestCleared { instance_id: "i-8".into() },
        ];
        let mut index = Index::default();
        let writes = plan(&keys, &mut index, &events);
        let mut seen = std::collections::HashSet::new();
        assert!(writes.iter().all(|(k, _)| seen.insert(k.clone())), "a key twice: {writes:?}");
        let mut expected = Snapshot::default();
        events.iter().for_each(|e| expected.apply(e));
        assert_eq!(decode_writes(&keys, &writes), expected);
        assert_eq!(index, Index::of(&expected));
        // A bind never rewrites the spec.
        let bind = plan(&keys, &mut index, &[Event::Bound { pod: "d/a".into(), node: "i-4".into() }]);
        assert_eq!(bind, vec![(keys.node("d/a"), Some(b"i-4".to_vec()))]);
    }

    #[test]
    fn writes_split_by_count_and_size_in_order() {
        let w = |n: usize, size: usize| -> Vec<KeyWrite> { (0..n).map(|i| (format!("k{i:03}"), Some(vec![b'x'; size]))).collect() };
        assert_eq!(split(&w(300, 10), 128, MAX_TXN_BYTES), vec![0..128, 128..256, 256..300]);
        assert_eq!(split(&w(128, 10), 128, MAX_TXN_BYTES), vec![0..128]);
        assert_eq!(split(&[], 128, MAX_TXN_BYTES), Vec::<std::ops::Range<usize>>::new());
        // 100 writes of 100 kB: 13 per transaction under 1.4 MB.
        let big = split(&w(100, 100_000), 128, MAX_TXN_BYTES);
        assert!(big.iter().all(|r| r.len() == 13 || r.end == 100), "{big:?}");
        // A write over the limit goes alone.
        assert_eq!(split(&w(2, 2_000_000), 128, MAX_TXN_BYTES), vec![0..1, 1..2]);
    }
}
