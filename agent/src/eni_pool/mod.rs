//! The shared-ENI pool at run time: answers allocations from the ledger (recording each durably
//! before answering), and runs one upkeep task that carries out [`pool::plan`]'s cloud calls,
//! reconciles with the cloud and the node, and finishes what a crash interrupted.
//!
//! Only the upkeep task changes which IPs and ENIs the pool owns, so a reconciliation never races
//! a cloud call of the pool; allocations only change who holds an IP. Pods' own ENIs
//! (exclusive, [`exclusive`], and trunk members, [`trunk`]) are made by the allocation path
//! itself, kept warm for the next pod when released ([`warm`]), and deleted in batches by the
//! upkeep task when surplus, so that no DEL waits for the cloud; they never enter the pool, and
//! neither does the node's trunk ENI.

mod exclusive;
mod trunk;
mod warm;

pub use exclusive::PodEniRequest;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use berth_cloud::api::{Addresses, CreateEniRequest, EniFilter};
use berth_cloud::codes::Class;
use berth_cloud::error::code;
use berth_cloud::model::{EniKind, EniStatus, NetworkInterface};
use berth_cloud::{Cloud, CloudError, wait};
use tokio::sync::Notify;

use crate::identity::{self, NodeIdentity};
use crate::metrics::Metrics;
use crate::node::{Node, host_veth_name};
use crate::pool::ledger::{AllocationKey, AllocationRecord, EniPhase, Ledger, PodMode, PodRef, PoolEni};
use crate::pool::{self, PoolAction, PoolLimits, PoolTargets, Reaction};
use crate::store::{Event, Intent, Store, StoreError};

/// What the pool needs to know beyond its ledger.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub targets: PoolTargets,
    pub limits: PoolLimits,
    pub cooldown: Duration,
    pub inhibit: Duration,
    pub vswitch_id: String,
    pub security_group_ids: Vec<String>,
    pub allocate_timeout: Duration,
    pub attach_timeout: Duration,
    pub reconcile_every: Duration,
    pub metadata_url: String,
    pub release_queue_dir: PathBuf,
    /// Member ENIs the trunk may carry; 0 when the node serves no trunk mode.
    pub member_eni_quota: u32,
    /// Exclusive ENIs and member ENIs kept attached (bound) for pods that ask for the node's
    /// vSwitch and security groups, so that their ADD needs no cloud call.
    pub warm_exclusive_enis: u32,
    pub warm_member_enis: u32,
    /// Every pod gets an IPv6 address from its ENI too (the vSwitches must have IPv6 blocks).
    pub dual_stack: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("no IP available on this node: {0}")]
    Exhausted(String),
    /// The request cannot be served as asked (the message says why and what to do).
    #[error("{0}")]
    Refused(String),
    /// The pod asked for something that cannot exist (an unknown vSwitch, a security group of
    /// another VPC): retrying will not help.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An allocation with the ENI it lives on.
#[derive(Debug, Clone)]
pub struct Allocated {
    pub record: AllocationRecord,
    pub eni: PoolEni,
}

struct Books {
    ledger: Ledger,
    store: Store,
    waiting: u32,
    inhibit_until: Option<Instant>,
    /// No new ENI until then: the instance holds as many as the cloud lets it.
    no_new_enis_until: Option<Instant>,
    /// ENIs the cloud refused more addresses (the ENI-full codes), with the count they hold then.
    full_enis: BTreeMap<String, usize>,
    /// Why the pool last failed to grow, for STATUS and the operator.
    grow_error: Option<String>,
    last_busy: Instant,
    /// Intents whose ADD or DEL is still running (the upkeep task's own run within it). Any other
    /// intent in the store was left by a call that failed, and the upkeep finishes it.
    in_flight: BTreeSet<u64>,
    /// Pods' own ENIs being created (by an ADD or the warm top-up), by [`warm::PodEniKind`]: their
    /// slots are taken before the cloud is asked, so that two creations never race for the last.
    creating: [u32; 2],
}

pub struct EniPool<C> {
    cloud: C,
    settings: PoolSettings,
    identity: NodeIdentity,
    books: Mutex<Books>,
    node: Mutex<Node>,
    /// Deletes released pods' veths on its own thread and netlink socket: the kernel takes ~20 ms
    /// per veth, which must hold up neither DEL nor anything else the node socket does.
    unwire: std::sync::mpsc::Sender<u32>,
    /// Woken when IPs become ready to serve.
    grown: Notify,
    /// Wakes the upkeep task.
    wake: Notify,
    /// Every ENI the node waits on (pods' ENIs attaching, members binding) asked about together.
    waits: wait::EniWaits,
    metrics: Arc<Metrics>,
}

fn now_unix() -> i64 {
    (now_unix_ns() / 1_000_000_000) as i64
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default()
}

/// How a failed cloud call for a pod's own ENI answers the pod, by cause: a limit of the instance,
/// the trunk or the vSwitch (named, as the runtime retries or the scheduler moves the pod), a
/// passing condition of the cloud (retry), or a request the cloud refuses as wrong (`hint` says
/// what to check; retrying will not help).
fn pod_eni_refusal(what: &str, hint: &str, e: &CloudError) -> AllocError {
    let Some(a) = e.api() else {
        // Unreachable, timed out, undecodable: the cloud's trouble, not the pod's request.
        return AllocError::Refused(format!("{what}: {e}"));
    };
    let limit = match a.class() {
        Class::VSwitchExhausted => Some("the vSwitch has no free private IP left"),
        Class::InstanceEniLimit => Some("the instance holds as many ENIs as its type allows"),
        Class::MemberEniLimit => Some("the trunk carries as many member ENIs as its type allows"),
        _ if a.is_quota() => Some("an account or instance quota is reached"),
        _ => None,
    };
    match limit {
        Some(limit) => AllocError::Exhausted(format!("{what}: {limit} ({e})")),
        None if a.is_throttling() || a.is_retryable() || a.http_status >= 500 || matches!(a.class(), Class::WrongState | Class::Transient) => AllocError::Refused(format!("{what}: {e}")),
        None => AllocError::Invalid(format!("{what} ({hint}): {e}")),
    }
}

impl<C: Cloud> EniPool<C> {
    /// Loads the durable state; [`EniPool::recover`] must run before serving.
    pub fn new(cloud: C, settings: PoolSettings, identity: NodeIdentity, node: Node, store: Store, metrics: Arc<Metrics>) -> EniPool<C> {
        let ledger = if settings.dual_stack { Ledger::dual_stack() } else { Ledger::default() };
        EniPool {
            cloud,
            settings,
            identity,
            books: Mutex::new(Books { ledger, store, waiting: 0, inhibit_until: None, no_new_enis_until: None, full_enis: BTreeMap::new(), grow_error: None, last_busy: Instant::now(), in_flight: BTreeSet::new(), creating: [0; 2] }),
            unwire: node.spawn_link_deleter(),
            node: Mutex::new(node),
            grown: Notify::new(),
            wake: Notify::new(),
            waits: wait::EniWaits::default(),
            metrics,
        }
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node(&self) -> MutexGuard<'_, Node> {
        self.node.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    fn update_gauges(&self, b: &Books) {
        self.metrics.idle_ips.set(b.ledger.ready_idle() as i64);
        self.metrics.allocated_ips.set(b.ledger.allocations().count() as i64);
        self.metrics.enis.set(b.ledger.enis().count() as i64);
        self.metrics.waiting.set(b.waiting as i64);
    }

    // ---- serving ----

    /// An IP for the pod interface `key`, the same one again if it already has one.
    pub async fn allocate(&self, key: AllocationKey, netns: String, pod: PodRef) -> Result<Allocated, AllocError> {
        let started = Instant::now();
        let deadline = started + self.settings.allocate_timeout;
        let mut counted = false;
        let result = loop {
            let grown = self.grown.notified();
            {
                let mut b = self.books();
                if let Some(mut r) = b.ledger.allocation(&key).cloned() {
                    let eni = b.ledger.eni(&r.eni_id).cloned();
                    if let Some(eni) = eni {
                        // The same IP for a repeated ADD, stamped anew: a release the plugin queued
                        // before this ADD must not take it away afterwards.
                        r.created_ns = now_unix_ns();
                        if let Err(e) = b.store.append(Event::Allocated(r.clone())) {
                            break Err(e.into());
                        }
                        b.ledger.record(r.clone()).expect("the key's own IP");
                        break Ok(Allocated { record: r, eni });
                    }
                }
                if let Some((eni, ip, ip6)) = b.ledger.choose().map(|(e, ip, ip6)| (e.clone(), ip, ip6)) {
                    let created_ns = now_unix_ns();
                    let record = AllocationRecord { key: key.clone(), ip, eni_id: eni.id.clone(), netns: netns.clone(), pod: pod.clone(), created_at: (created_ns / 1_000_000_000) as i64, created_ns, mode: PodMode::Shared, ip6 };
                    // Durable before anyone hears of it.
                    if let Err(e) = b.store.append(Event::Allocated(record.clone())) {
                        break Err(e.into());
                    }
                    b.ledger.record(record.clone()).expect("choose() returns an IP nobody holds");
                    b.last_busy = Instant::now();
                    if counted {
                        b.waiting -= 1;
                        counted = false;
                    }
                    self.update_gauges(&b);
                    break Ok(Allocated { record, eni });
                }
                if !counted {
                    b.waiting += 1;
                    counted = true;
                    self.update_gauges(&b);
                }
                if Instant::now() >= deadline {
                    let why = b.grow_error.clone().unwrap_or_else(|| format!("the pool did not grow within {:?}", self.settings.allocate_timeout));
                    break Err(AllocError::Exhausted(why));
                }
            }
            self.wake.notify_one();
            let _ = tokio::time::timeout_at(deadline.into(), grown).await;
        };
        if counted {
            let mut b = self.books();
            b.waiting -= 1;
            self.update_gauges(&b);
        }
        match &result {
            Ok(_) => self.metrics.allocation_seconds.observe(started.elapsed().as_secs_f64()),
            Err(_) => {
                self.metrics.allocations_failed.inc();
            }
        }
        self.wake.notify_one();
        result
    }

    /// Gives the IP of `key` back to the pool; `None` when it held none.
    pub fn release(&self, key: &AllocationKey) -> Result<Option<AllocationRecord>, StoreError> {
        let mut b = self.books();
        if b.ledger.allocation(key).is_none() {
            return Ok(None);
        }
        b.store.append(Event::Released { key: key.clone() })?;
        let r = b.ledger.release(key);
        b.last_busy = Instant::now();
        self.update_gauges(&b);
        drop(b);
        // A waiting allocation may take this IP now.
        self.grown.notify_waiters();
        self.wake.notify_one();
        Ok(r)
    }

    /// Releases `key` and then deletes the host end of its veth, by the index it had before the
    /// release (a new ADD of the same interface makes a new link, which this never touches). The
    /// plugin's DEL returns without waiting for the kernel's slow veth deletion.
    pub async fn release_and_unwire(&self, key: &AllocationKey) -> Result<Option<AllocationRecord>, StoreError> {
        let mode = self.books().ledger.allocation(key).map(|r| r.mode);
        // Every mode has a veth: shared and trunk pods' only link, an exclusive pod's way to the node.
        let veth = self.node().link_index(&host_veth_name(&key.container_id, &key.ifname));
        let released = match mode {
            Some(PodMode::Exclusive | PodMode::Trunk) => self.release_pod_eni(key).await?,
            _ => self.release(key)?,
        };
        if let Some(index) = veth {
            let _ = self.unwire.send(index);
        }
        Ok(released)
    }

    pub fn get(&self, key: &AllocationKey) -> Option<Allocated> {
        let b = self.books();
        let record = b.ledger.allocation(key)?.clone();
        let eni = b.ledger.eni(&record.eni_id)?.clone();
        Some(Allocated { record, eni })
    }

    pub fn list(&self) -> Vec<Allocated> {
        let b = self.books();
        b.ledger.allocations().filter_map(|r| Some(Allocated { record: r.clone(), eni: b.ledger.eni(&r.eni_id)?.clone() })).collect()
    }

    /// Whether an ADD could succeed now, and if not why.
    pub fn status(&self) -> PoolStatus {
        let b = self.books();
        let idle = b.ledger.ready_idle() as u32;
        let allocated = b.ledger.allocations().count() as u32;
        let max = self.settings.limits.max_secondary_enis() * self.settings.limits.pod_ips_per_eni();
        let inhibited = b.inhibit_until.is_some_and(|t| Instant::now() < t);
        let reason = if idle > 0 {
            None
        } else if allocated >= max {
            Some(format!("all {max} pod IPs of this instance type are in use"))
        } else if inhibited {
            Some(b.grow_error.clone().unwrap_or_else(|| "the pool cannot grow right now".into()))
        } else {
            None
        };
        PoolStatus { ready: reason.is_none(), reason: reason.unwrap_or_default(), idle, allocated, max }
    }

    /// The ledger as JSON, for the introspection endpoint.
    pub fn describe(&self) -> serde_json::Value {
        let b = self.books();
        let enis: Vec<_> = b
            .ledger
            .enis()
            .map(|e| {
                serde_json::json!({
                    "id": e.id, "mac": e.mac, "phase": e.phase, "nic": e.nic, "gateway": e.gateway,
                    "ips": e.ips, "idle": b.ledger.idle_ips_of(e),
                })
            })
            .collect();
        let allocations: Vec<_> = b
            .ledger
            .allocations()
            .map(|r| {
                let mut v = serde_json::to_value(r).expect("records serialize");
                v["host_veth"] = serde_json::json!(host_veth_name(&r.key.container_id, &r.key.ifname));
                v
            })
            .collect();
        drop(b);
        // What the node really has, read after the books: an ADD records before it builds.
        let (rules, veths) = {
            let mut node = self.node();
            (node.pod_rules().unwrap_or_default(), node.host_veth_names().unwrap_or_default())
        };
        let rules: Vec<_> = rules.iter().map(|(priority, ip, table)| serde_json::json!({ "priority": priority, "ip": ip, "table": table })).collect();
        let b = self.books();
        serde_json::json!({
            "datapath": { "rules": rules, "host_veths": veths },
            "node": self.identity,
            "enis": enis,
            "allocations": allocations,
            "waiting": b.waiting,
            "pending_intents": b.store.snapshot().intents.len(),
            "status": self.status_locked(&b),
        })
    }

    fn status_locked(&self, b: &Books) -> serde_json::Value {
        serde_json::json!({ "idle": b.ledger.ready_idle(), "grow_error": b.grow_error })
    }

    // ---- upkeep ----

    /// Brings the ledger in line with the store, the cloud and the node, finishing interrupted
    /// intents. Runs before serving and then periodically from the upkeep task.
    pub async fn recover(&self) -> anyhow::Result<()> {
        {
            let mut b = self.books();
            let records: Vec<AllocationRecord> = b.store.snapshot().allocations.values().cloned().collect();
            for r in records {
                if let Err(e) = b.ledger.record(r.clone()) {
                    tracing::error!(key = %r.key, error = %e, "two allocations hold one IP in the store; keeping the first");
                }
            }
        }
        self.node().prepare()?;
        self.finish_intents().await?;
        if let Err(e) = self.ensure_trunk().await {
            // Shared and exclusive pods are served anyway; trunk ADDs say the trunk is not ready.
            tracing::error!(error = %format!("{e:#}"), "cannot set up the node's trunk ENI; trunk mode is unavailable until a restart");
        }
        self.reconcile(true).await
    }

    async fn finish_intents(&self) -> anyhow::Result<()> {
        let intents: Vec<(u64, Intent)> = {
            let b = self.books();
            b.store.snapshot().intents.iter().filter(|(id, _)| !b.in_flight.contains(id)).map(|(id, i)| (*id, i.clone())).collect()
        };
        for (id, intent) in intents {
            tracing::info!(?intent, "finishing an interrupted cloud call");
            match intent {
                Intent::CreateEni { client_token, secondary_ips } => {
                    // The same token returns the same ENI if the first call went through.
                    let eni = self.create_eni_call(secondary_ips, &client_token).await?;
                    if eni.instance_id.is_none() {
                        self.attach(&eni).await?;
                    }
                }
                Intent::DeleteEni { eni_id } => self.delete_eni_calls(&eni_id).await?,
                Intent::UnassignIps { eni_id, ips, ips6 } => {
                    self.unassign_call(&eni_id, &ips).await?;
                    self.unassign6_call(&eni_id, &ips6).await?;
                }
                Intent::CreateExclusiveEni { client_token } => self.finish_pod_eni_create(&client_token).await?,
                Intent::CreateTrunkEni { client_token } => {
                    let eni = self.create_trunk_call(&client_token).await?;
                    if eni.instance_id.is_none() {
                        self.cloud.attach_network_interface(&eni.id, &self.identity.instance_id, None).await?;
                    }
                }
            }
            self.books().store.done(id)?;
        }
        Ok(())
    }

    /// Compares the ledger with the cloud's view of this instance's ENIs and the node's links.
    /// `at_start`: nothing is in flight, so a pod's own ENI that no allocation holds is an orphan.
    pub async fn reconcile(&self, at_start: bool) -> anyhow::Result<()> {
        let filter = EniFilter { instance_id: Some(self.identity.instance_id.clone()), ..Default::default() };
        let cloud: Vec<NetworkInterface> = self.cloud.describe_network_interfaces(&filter).await?.into_iter().filter(|e| e.kind != EniKind::Primary).collect();
        let mut to_configure = Vec::new();
        let mut to_reassign = Vec::new();
        let mut to_assign6: Vec<(String, u32)> = Vec::new();
        let mut exclusive_to_adopt = Vec::new();
        let mut exclusive_orphans = Vec::new();
        {
            let mut b = self.books();
            let mut seen = BTreeSet::new();
            for ce in &cloud {
                seen.insert(ce.id.clone());
                if ce.kind == EniKind::Trunk {
                    // The node's trunk: set up by ensure_trunk, never part of the pool.
                    continue;
                }
                if exclusive::is_exclusive(ce) || trunk::is_member(ce) {
                    // A pod's own ENI, kept by its allocation: known again after a restart, or
                    // deleted when nothing holds it.
                    let held = b.ledger.allocations().any(|r| r.eni_id == ce.id);
                    if held && b.ledger.eni(&ce.id).is_none() {
                        exclusive_to_adopt.push(ce.clone());
                    } else if !held && at_start {
                        exclusive_orphans.push(ce.clone());
                    }
                    continue;
                }
                let cloud_ips: BTreeSet<Ipv4Addr> = ce.secondary_ips.iter().copied().collect();
                match b.ledger.eni_mut(&ce.id) {
                    Some(pe) => {
                        if pe.phase == EniPhase::Draining {
                            continue;
                        }
                        let added: Vec<_> = cloud_ips.difference(&pe.ips).copied().collect();
                        let gone: Vec<_> = pe.ips.difference(&cloud_ips).copied().collect();
                        if !added.is_empty() {
                            tracing::warn!(eni = %ce.id, ips = ?added, "the cloud has IPs the pool did not know; adopting them as idle");
                            self.metrics.reconcile_fixes.get_or_create(&vec![("kind", "ip_adopted".to_string())]).inc_by(added.len() as u64);
                        }
                        pe.ips.extend(added);
                        for ip in gone {
                            pe.ips.remove(&ip);
                            to_reassign.push((ce.id.clone(), ip));
                        }
                        // IPv6: the cloud's addresses are the ENI's; a dual-stack ENI short of
                        // IPv6 addresses (a crash between the two assign calls) gets the rest.
                        let cloud6: BTreeSet<std::net::Ipv6Addr> = ce.ipv6_addresses.iter().copied().collect();
                        pe.ips6 = cloud6;
                        if self.settings.dual_stack && pe.phase == EniPhase::Ready && pe.ips6.len() < pe.ips.len() {
                            to_assign6.push((ce.id.clone(), (pe.ips.len() - pe.ips6.len()) as u32));
                        }
                        if ce.status == EniStatus::InUse && (pe.phase != EniPhase::Ready || pe.nic.is_none()) {
                            to_configure.push(ce.id.clone());
                        }
                    }
                    None => {
                        let phase = match ce.status {
                            EniStatus::InUse | EniStatus::Attaching => EniPhase::Attaching,
                            _ => EniPhase::Draining,
                        };
                        b.ledger.insert_eni(PoolEni {
                            id: ce.id.clone(),
                            mac: ce.mac.clone(),
                            vswitch_id: ce.vswitch_id.clone(),
                            gateway: Ipv4Addr::UNSPECIFIED,
                            prefix_len: 32,
                            primary_ip: ce.primary_ip,
                            phase,
                            nic: None,
                            ips: cloud_ips,
                            vlan: None,
                            security_groups: Vec::new(),
                            ips6: ce.ipv6_addresses.iter().copied().collect(),
                            gateway6: None,
                        });
                        if phase == EniPhase::Attaching {
                            to_configure.push(ce.id.clone());
                        }
                    }
                }
            }
            let vanished: Vec<String> = b.ledger.enis().filter(|e| !seen.contains(&e.id)).map(|e| e.id.clone()).collect();
            for id in vanished {
                tracing::warn!(eni = %id, "the ENI is no longer on this instance in the cloud; dropping it from the pool");
                if let Some(e) = b.ledger.remove_eni(&id) {
                    for ip in e.ips {
                        to_reassign.push((id.clone(), ip));
                    }
                }
            }
            // An IP the cloud lost while a pod holds it must come back to that pod's ENI.
            to_reassign.retain(|(_, ip)| b.ledger.holder(*ip).is_some());
        }
        for (eni, ip) in to_reassign {
            tracing::error!(%eni, %ip, "a pod's IP is missing from the cloud; assigning it again");
            self.metrics.reconcile_fixes.get_or_create(&vec![("kind", "ip_reassigned".to_string())]).inc();
            match self.cloud.assign_private_ips(&eni, &Addresses::These(vec![ip]), None).await {
                Ok(_) => {
                    if let Some(e) = self.books().ledger.eni_mut(&eni) {
                        e.ips.insert(ip);
                    }
                }
                Err(e) => tracing::error!(%eni, %ip, error = %e, "cannot give the pod its IP back; `berthctl inspect` reports it"),
            }
        }
        for (eni, count) in to_assign6 {
            match self.cloud.assign_ipv6(&eni, &Addresses::Count(count), None).await {
                Ok(ips6) => {
                    if let Some(e) = self.books().ledger.eni_mut(&eni) {
                        e.ips6.extend(ips6);
                    }
                }
                Err(e) => tracing::warn!(%eni, error = %e, "cannot give the ENI its IPv6 addresses yet"),
            }
        }
        for eni in exclusive_to_adopt {
            if trunk::is_member(&eni) {
                self.adopt_member(&eni)?;
            } else {
                self.adopt_exclusive(&eni)?;
            }
        }
        for eni in exclusive_orphans {
            if self.adopt_warm(&eni)? {
                tracing::info!(eni = %eni.id, "keeping a pod ENI no allocation holds as a warm one");
                continue;
            }
            let id = eni.id;
            tracing::warn!(eni = %id, "a pod ENI no allocation holds and no warm pool needs; deleting it");
            self.metrics.reconcile_fixes.get_or_create(&vec![("kind", "exclusive_orphan".to_string())]).inc();
            self.delete_eni_calls(&id).await?;
        }
        for id in to_configure {
            let eni = self.waits.eni_status(&self.cloud, &id, EniStatus::InUse, self.settings.attach_timeout).await?;
            self.make_ready(&eni).await?;
        }
        self.drain_release_queue().await;
        self.release_gone_pods().await;
        self.remove_node_leftovers();
        let b = self.books();
        self.update_gauges(&b);
        Ok(())
    }

    /// Releases what the plugin queued while the agent was down (`<containerID>.<ifname>` files
    /// holding the DEL's time): only an allocation made before that DEL, never a later ADD's.
    async fn drain_release_queue(&self) {
        let dir = &self.settings.release_queue_dir;
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A file without a time (an older plugin) releases whatever the key holds.
            let deleted_at: u64 = std::fs::read_to_string(entry.path()).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(u64::MAX);
            // Container IDs and interface names may both hold dots: try every split.
            let found = name.match_indices('.').find_map(|(i, _)| {
                let key = AllocationKey { container_id: name[..i].to_string(), ifname: name[i + 1..].to_string() };
                let created = self.books().ledger.allocation(&key).map(|r| r.created_ns)?;
                Some((key, created))
            });
            match found {
                Some((key, created)) if created <= deleted_at => match self.release_and_unwire(&key).await {
                    Ok(_) => tracing::info!(%key, "released an allocation the plugin queued while the agent was down"),
                    Err(e) => {
                        berth_daemon::limited!(error, "release-queue", %key, error = %e, "cannot release a queued allocation; will retry");
                        continue;
                    }
                },
                Some((key, _)) => tracing::info!(%key, "a queued release predates the current allocation of its key; dropped"),
                None => {}
            }
            let _ = std::fs::remove_file(entry.path());
        }
    }

    /// Releases allocations whose network namespace is gone (the runtime never called DEL).
    async fn release_gone_pods(&self) {
        let grace = 60;
        let gone: Vec<AllocationKey> = self
            .books()
            .ledger
            .allocations()
            // Gone only when the path is reported missing: an unreadable path is not a dead pod.
            .filter(|r| !r.netns.is_empty() && now_unix() - r.created_at > grace && std::fs::symlink_metadata(&r.netns).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound))
            .map(|r| r.key.clone())
            .collect();
        for key in gone {
            tracing::info!(%key, "the pod's network namespace is gone; releasing its IP");
            self.metrics.reconcile_fixes.get_or_create(&vec![("kind", "pod_gone".to_string())]).inc();
            // Its own ENI (exclusive or member) goes with it.
            if let Err(e) = self.release_and_unwire(&key).await {
                tracing::error!(%key, error = %e, "cannot release");
            }
        }
    }

    fn remove_node_leftovers(&self) {
        let held = || {
            let b = self.books();
            let ips = b.ledger.allocations().map(|r| r.ip).collect();
            let veths = b.ledger.allocations().map(|r| host_veth_name(&r.key.container_id, &r.key.ifname)).collect();
            (ips, veths)
        };
        match self.node().remove_leftovers(held) {
            Ok(removed) if !removed.is_empty() => {
                self.metrics.reconcile_fixes.get_or_create(&vec![("kind", "node_leftover".to_string())]).inc_by(removed.len() as u64);
                tracing::info!(?removed, "removed datapath leftovers of pods that are gone");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot scan the node for leftovers"),
        }
    }

    /// Runs forever: plans and carries out cloud calls, reconciles periodically.
    pub async fn upkeep(self: Arc<Self>) {
        let mut next_reconcile = Instant::now() + self.settings.reconcile_every;
        loop {
            // Pods' ENIs that DELs gave back, deleted together off the DELs' clock.
            self.retire_released().await;
            if Instant::now() >= next_reconcile {
                // Intents a failed ADD, DEL or pool action left (a cloud call that failed, e.g.
                // while the cloud was unreachable) are finished now, not only at the next start.
                if let Err(e) = self.finish_intents().await {
                    berth_daemon::limited!(warn, "intents", error = %format!("{e:#}"), "cannot finish a cloud call left undone; will retry");
                }
                if let Err(e) = self.reconcile(false).await {
                    berth_daemon::limited!(warn, "reconcile", error = %e, "reconciliation failed; will retry");
                }
                next_reconcile = Instant::now() + self.settings.reconcile_every;
            }
            let actions = {
                let b = self.books();
                let mut view = b.ledger.view(b.waiting, b.inhibit_until, b.last_busy);
                view.no_new_enis_until = b.no_new_enis_until;
                for e in &mut view.enis {
                    // Full at what it held when refused; once it holds fewer the cloud may take more.
                    e.full = b.full_enis.get(&e.id).is_some_and(|&held| e.assigned as usize >= held);
                }
                // ENIs given whole to pods, and the trunk, take slots the pool cannot use.
                let mut limits = self.settings.limits;
                limits.eni_quota = limits.eni_quota.saturating_sub(b.ledger.enis_outside_pool() as u32);
                pool::plan(&view, self.settings.targets, limits, self.settings.cooldown, Instant::now())
            };
            if actions.is_empty() {
                match self.top_up_warm().await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        berth_daemon::limited!(warn, "warm-enis", error = %format!("{e:#}"), "cannot top up the warm ENIs; will retry");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                // Nothing to grow, yet someone may wait: an IP freed while it checked.
                self.grown.notify_waiters();
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                continue;
            }
            let mut failed = false;
            let mut backoff = Duration::from_millis(500);
            for action in actions {
                if let Err(e) = self.execute(&action).await {
                    failed = true;
                    let mut b = self.books();
                    let class = e.downcast_ref::<CloudError>().and_then(CloudError::class);
                    let reaction = pool::react(&action, class);
                    let until = Instant::now() + self.settings.inhibit;
                    match &reaction {
                        Reaction::InhibitGrowth => b.inhibit_until = Some(until),
                        Reaction::NoNewEnis => b.no_new_enis_until = Some(until),
                        Reaction::EniFull { eni } => {
                            let held = b.ledger.eni(eni).map_or(0, |e| e.ips.len());
                            b.full_enis.insert(eni.clone(), held);
                        }
                        Reaction::BackOff => backoff = Duration::from_secs(5),
                        Reaction::Retry => {}
                    }
                    b.grow_error = Some(format!("{e:#}"));
                    berth_daemon::limited!(warn, "pool-action", ?action, error = %format!("{e:#}"), ?reaction, "pool action failed");
                    break;
                }
            }
            if !failed {
                self.books().grow_error = None;
            } else {
                // Let waiters see the error, and do not spin on a failing call.
                self.grown.notify_waiters();
                tokio::time::sleep(backoff).await;
            }
        }
    }

    async fn execute(&self, action: &PoolAction) -> anyhow::Result<()> {
        match action {
            PoolAction::AssignIps { eni, count } => {
                let ips = self.cloud.assign_private_ips(eni, &Addresses::Count(*count), None).await?;
                let ips6 = if self.settings.dual_stack { self.cloud.assign_ipv6(eni, &Addresses::Count(*count), None).await? } else { Vec::new() };
                let mut b = self.books();
                if let Some(e) = b.ledger.eni_mut(eni) {
                    e.ips.extend(ips);
                    e.ips6.extend(ips6);
                }
                b.last_busy = Instant::now();
                self.update_gauges(&b);
                drop(b);
                self.grown.notify_waiters();
            }
            PoolAction::CreateEni { secondary_ips } => {
                let token = format!("berth-{}-{:016x}", self.identity.instance_id, rand::random::<u64>());
                let id = self.books().store.intend(Intent::CreateEni { client_token: token.clone(), secondary_ips: *secondary_ips })?;
                let eni = self.create_eni_call(*secondary_ips, &token).await?;
                let attached = self.attach(&eni).await;
                if attached.is_err() {
                    // Not ours to keep if it never attached: give it back rather than leak it.
                    if let Err(e) = self.delete_eni_calls(&eni.id).await {
                        tracing::error!(eni = %eni.id, error = %e, "cannot delete an ENI that failed to attach; the next start retries");
                        return attached;
                    }
                }
                self.books().store.done(id)?;
                attached?;
            }
            PoolAction::UnassignIps { eni, count } => {
                let (id, ips) = {
                    let mut b = self.books();
                    let Some(e) = b.ledger.eni(eni) else { return Ok(()) };
                    let ips: Vec<Ipv4Addr> = b.ledger.idle_ips_of(e).into_iter().rev().take(*count as usize).collect();
                    if ips.is_empty() {
                        return Ok(());
                    }
                    // Out of the ledger first: from here on no pod can be given these IPs.
                    let e = b.ledger.eni_mut(eni).expect("looked up above");
                    for ip in &ips {
                        e.ips.remove(ip);
                    }
                    // As many idle IPv6 addresses go with them.
                    let ips6: Vec<std::net::Ipv6Addr> = b.ledger.eni(eni).map(|e| b.ledger.idle_ips6_of(e)).unwrap_or_default().into_iter().rev().take(ips.len()).collect();
                    let e = b.ledger.eni_mut(eni).expect("looked up above");
                    for ip in &ips6 {
                        e.ips6.remove(ip);
                    }
                    let id = b.store.intend(Intent::UnassignIps { eni_id: eni.clone(), ips: ips.clone(), ips6: ips6.clone() })?;
                    self.update_gauges(&b);
                    (id, (ips, ips6))
                };
                let (ips, ips6) = ips;
                self.unassign_call(eni, &ips).await?;
                self.unassign6_call(eni, &ips6).await?;
                self.books().store.done(id)?;
            }
            PoolAction::DeleteEni { eni } => {
                let id = {
                    let mut b = self.books();
                    let Some(e) = b.ledger.eni(eni) else { return Ok(()) };
                    if !b.ledger.idle_ips_of(e).len().eq(&e.ips.len()) {
                        return Ok(()); // a pod took one of its IPs since the plan
                    }
                    b.ledger.eni_mut(eni).expect("looked up above").phase = EniPhase::Draining;
                    b.store.intend(Intent::DeleteEni { eni_id: eni.clone() })?
                };
                self.delete_eni_calls(eni).await?;
                self.books().store.done(id)?;
            }
        }
        Ok(())
    }

    async fn create_eni_call(&self, secondary_ips: u32, token: &str) -> Result<NetworkInterface, CloudError> {
        let mut req = CreateEniRequest::secondary(self.settings.vswitch_id.clone(), self.settings.security_group_ids.clone());
        req.secondary_ip_count = secondary_ips;
        req.ipv6_count = if self.settings.dual_stack { secondary_ips } else { 0 };
        req.description = format!("berth pool of {}", self.identity.instance_id);
        req.client_token = Some(token.to_string());
        self.cloud.create_network_interface(&req).await
    }

    /// Attaches a new ENI, waits as the cloud requires, and makes it serve.
    async fn attach(&self, eni: &NetworkInterface) -> anyhow::Result<()> {
        self.books().ledger.insert_eni(PoolEni {
            id: eni.id.clone(),
            mac: eni.mac.clone(),
            vswitch_id: eni.vswitch_id.clone(),
            gateway: Ipv4Addr::UNSPECIFIED,
            prefix_len: 32,
            primary_ip: eni.primary_ip,
            phase: EniPhase::Attaching,
            nic: None,
            ips: eni.secondary_ips.iter().copied().collect(),
            vlan: None,
            security_groups: Vec::new(),
            ips6: eni.ipv6_addresses.iter().copied().collect(),
            gateway6: None,
        });
        let result = async {
            self.cloud.attach_network_interface(&eni.id, &self.identity.instance_id, None).await?;
            let attached = self.waits.eni_status(&self.cloud, &eni.id, EniStatus::InUse, self.settings.attach_timeout).await?;
            self.make_ready(&attached).await
        }
        .await;
        if result.is_err() {
            self.books().ledger.remove_eni(&eni.id);
        }
        result
    }

    /// The gateway and prefix length of an ENI's vSwitch, as the instance metadata tells them.
    fn eni_addressing(&self, mac: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
        let base = &self.settings.metadata_url;
        let node = self.node();
        let netns = node.netns();
        let gw = identity::get(netns, base, &format!("network/interfaces/macs/{mac}/gateway"))?;
        let cidr = identity::get(netns, base, &format!("network/interfaces/macs/{mac}/vswitch-cidr-block"))?;
        let gateway: Ipv4Addr = gw.parse().map_err(|_| anyhow::anyhow!("metadata gives gateway {gw:?} for {mac}, not an IPv4 address"))?;
        let prefix_len = cidr.rsplit_once('/').and_then(|(_, p)| p.parse().ok()).ok_or_else(|| anyhow::anyhow!("metadata gives vSwitch CIDR {cidr:?} for {mac}"))?;
        Ok((gateway, prefix_len))
    }

    /// Configures the NIC of an attached ENI on the node and opens its IPs to pods.
    async fn make_ready(&self, eni: &NetworkInterface) -> anyhow::Result<()> {
        let mac = eni.mac.clone();
        let (gateway, prefix_len) = self.eni_addressing(&mac)?;
        let v6 = self.eni_addressing6(&mac)?;
        // The NIC shows up once the attach completed; give the kernel a moment if needed.
        let mut nic = None;
        for _ in 0..50 {
            nic = self.node().configure_eni(&mac, gateway, v6.map(|(gw, _)| gw))?;
            if nic.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let nic = nic.ok_or_else(|| anyhow::anyhow!("ENI {} is attached but no link with MAC {mac} appeared on the node", eni.id))?;
        let mut b = self.books();
        if let Some(e) = b.ledger.eni_mut(&eni.id) {
            e.gateway = gateway;
            e.prefix_len = prefix_len;
            e.nic = Some(nic);
            e.gateway6 = v6;
            e.phase = EniPhase::Ready;
        }
        b.last_busy = Instant::now();
        self.update_gauges(&b);
        drop(b);
        self.grown.notify_waiters();
        Ok(())
    }

    async fn unassign_call(&self, eni: &str, ips: &[Ipv4Addr]) -> anyhow::Result<()> {
        match self.cloud.unassign_private_ips(eni, ips).await {
            Ok(()) => Ok(()),
            // Already gone (a repeat after a crash, or the ENI went away): the goal is met.
            Err(e) if e.is_code(code::INVALID_ENI_ID) || e.is_code(code::IP_UNASSIGNED) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn unassign6_call(&self, eni: &str, ips: &[std::net::Ipv6Addr]) -> anyhow::Result<()> {
        if ips.is_empty() {
            return Ok(());
        }
        match self.cloud.unassign_ipv6(eni, ips).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_code(code::INVALID_ENI_ID) || e.is_code(code::IP_UNASSIGNED) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The IPv6 gateway (link-local) and prefix length of an ENI's vSwitch on a dual-stack node.
    fn eni_addressing6(&self, mac: &str) -> anyhow::Result<Option<(std::net::Ipv6Addr, u8)>> {
        if !self.settings.dual_stack {
            return Ok(None);
        }
        let base = &self.settings.metadata_url;
        let node = self.node();
        let netns = node.netns();
        let gw = identity::get(netns, base, &format!("network/interfaces/macs/{mac}/ipv6-gateway"))
            .map_err(|e| anyhow::anyhow!("{e}; pool.ip_stack = \"dual\" needs vSwitches with IPv6 blocks"))?;
        let cidr = identity::get(netns, base, &format!("network/interfaces/macs/{mac}/vswitch-ipv6-cidr-block"))?;
        let gateway: std::net::Ipv6Addr = gw.parse().map_err(|_| anyhow::anyhow!("metadata gives IPv6 gateway {gw:?} for {mac}"))?;
        let prefix_len = cidr.rsplit_once('/').and_then(|(_, p)| p.parse().ok()).ok_or_else(|| anyhow::anyhow!("metadata gives IPv6 block {cidr:?} for {mac}"))?;
        Ok(Some((gateway, prefix_len)))
    }

    async fn delete_eni_calls(&self, eni_id: &str) -> anyhow::Result<()> {
        match self.delete_enis(&[eni_id.to_string()]).await.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Detaches and deletes these ENIs together: one DescribeNetworkInterfaces per poll for all of
    /// them, each detach and delete sent without waiting for the others. Returns the ENIs that could
    /// not be deleted, with why; the others are gone from the cloud and the ledger.
    async fn delete_enis(&self, ids: &[String]) -> Vec<(String, anyhow::Error)> {
        let mut failed: Vec<(String, anyhow::Error)> = Vec::new();
        for id in ids {
            let nic = self.books().ledger.eni(id).and_then(|e| e.nic.clone());
            if let Some(nic) = nic
                && let Err(e) = self.node().release_eni(&nic)
            {
                failed.push((id.clone(), e.into()));
            }
        }
        let mut left: Vec<String> = ids.iter().filter(|id| !failed.iter().any(|(f, _)| f == *id)).cloned().collect();
        let batch_failed = |left: &mut Vec<String>, failed: &mut Vec<(String, anyhow::Error)>, e: CloudError| {
            let why = format!("{e:#}");
            failed.extend(left.drain(..).map(|id| (id, anyhow::anyhow!("{why}"))));
        };
        let found = match self.cloud.describe_network_interfaces(&EniFilter { ids: left.clone(), ..Default::default() }).await {
            Ok(found) => found,
            Err(e) => {
                batch_failed(&mut left, &mut failed, e);
                return failed;
            }
        };
        let timeout = self.settings.attach_timeout;
        // An attach in flight (a crash interrupted it) must finish before the ENI can be detached.
        let attaching: Vec<String> = found.iter().filter(|e| e.status == EniStatus::Attaching).map(|e| e.id.clone()).collect();
        let mut in_use: Vec<NetworkInterface> = found.iter().filter(|e| e.status == EniStatus::InUse).cloned().collect();
        match wait::enis_status(&self.cloud, &attaching, EniStatus::InUse, timeout).await {
            Ok(attached) => in_use.extend(attached),
            Err(e) => {
                batch_failed(&mut left, &mut failed, e);
                return failed;
            }
        }
        for e in &in_use {
            if let Err(err) = self.cloud.detach_network_interface(&e.id, &self.identity.instance_id, e.trunk_eni_id.as_deref()).await
                && !err.is_code(code::INVALID_ENI_ID)
            {
                left.retain(|id| id != &e.id);
                failed.push((e.id.clone(), err.into()));
            }
        }
        let present: Vec<String> = found.iter().map(|e| e.id.clone()).filter(|id| left.contains(id)).collect();
        let unattached = match wait::enis_status(&self.cloud, &present, EniStatus::Available, timeout).await {
            Ok(unattached) => unattached,
            Err(e) => {
                batch_failed(&mut left, &mut failed, e);
                return failed;
            }
        };
        for e in &unattached {
            match self.cloud.delete_network_interface(&e.id).await {
                Ok(()) => {}
                Err(err) if err.is_code(code::INVALID_ENI_ID) => {}
                Err(err) => {
                    left.retain(|id| id != &e.id);
                    failed.push((e.id.clone(), err.into()));
                }
            }
        }
        let mut b = self.books();
        for id in &left {
            b.ledger.remove_eni(id);
        }
        self.update_gauges(&b);
        drop(b);
        // An ADD may wait for the slot these held.
        self.grown.notify_waiters();
        failed
    }

    /// Finishes in one batch the deletions of ENIs that DELs handed over (journaled intents no call
    /// is carrying out), so that no DEL waits for the cloud.
    async fn retire_released(&self) {
        let pending: Vec<(u64, String)> = {
            let mut b = self.books();
            let pending: Vec<(u64, String)> = b
                .store
                .snapshot()
                .intents
                .iter()
                .filter(|(id, _)| !b.in_flight.contains(id))
                .filter_map(|(id, i)| match i {
                    Intent::DeleteEni { eni_id } => Some((*id, eni_id.clone())),
                    _ => None,
                })
                // The most IDs one DescribeNetworkInterfaces takes.
                .take(100)
                .collect();
            b.in_flight.extend(pending.iter().map(|(id, _)| *id));
            pending
        };
        if pending.is_empty() {
            return;
        }
        let ids: Vec<String> = pending.iter().map(|(_, eni)| eni.clone()).collect();
        let failed = self.delete_enis(&ids).await;
        let mut b = self.books();
        for (intent, eni) in &pending {
            b.in_flight.remove(intent);
            if failed.iter().any(|(f, _)| f == eni) {
                continue;
            }
            if let Err(e) = b.store.done(*intent) {
                tracing::error!(%eni, error = %e, "cannot record a deleted ENI as done; the next start repeats it");
            }
        }
        drop(b);
        for (eni, e) in failed {
            berth_daemon::limited!(warn, "retire", %eni, error = %format!("{e:#}"), "cannot delete a released ENI yet; will retry");
        }
    }

    /// The node's network capacity, for the scheduler.
    pub fn slot_counts(&self) -> SlotCounts {
        let b = self.books();
        let limits = self.settings.limits;
        let shared_enis = limits.max_secondary_enis().saturating_sub(b.ledger.enis_outside_pool() as u32);
        SlotCounts {
            max_ips: shared_enis * limits.pod_ips_per_eni(),
            allocated_ips: b.ledger.allocations().filter(|r| r.mode == PodMode::Shared).count() as u32,
            idle_ips: b.ledger.ready_idle() as u32,
            eni_slots: limits.max_secondary_enis(),
            // A warm exclusive ENI is a slot an ADD can have: it is given or deleted to make room.
            eni_slots_used: (b.ledger.eni_slots_used() - b.ledger.warm(EniPhase::WarmExclusive)) as u32,
            member_slots: self.settings.member_eni_quota,
            members_used: b.ledger.allocations().filter(|r| r.mode == PodMode::Trunk).count() as u32,
            cannot_grow: b.inhibit_until.is_some_and(|t| Instant::now() < t),
            grow_error: b.grow_error.clone(),
        }
    }

    /// Counts of the ledger for tests and reports.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let b = self.books();
        BTreeMap::from([
            ("idle", b.ledger.ready_idle()),
            ("allocated", b.ledger.allocations().count()),
            ("enis", b.ledger.enis().count()),
            ("assigned", b.ledger.enis().map(|e| e.ips.len()).sum()),
        ])
    }
}

/// The node's network capacity for the scheduler's report, at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotCounts {
    /// Shared-mode pod IPs the node can hold (ENI slots of pods' own ENIs and the trunk excluded).
    pub max_ips: u32,
    pub allocated_ips: u32,
    pub idle_ips: u32,
    /// Secondary ENI slots, and those taken (pool ENIs, pods' own, the trunk; warm ones count as free).
    pub eni_slots: u32,
    pub eni_slots_used: u32,
    /// Member ENIs the trunk may carry (0 without trunk mode), and those pods hold.
    pub member_slots: u32,
    pub members_used: u32,
    /// The pool may not grow now (inhibited after a quota or vSwitch-exhaustion error).
    pub cannot_grow: bool,
    pub grow_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub ready: bool,
    pub reason: String,
    pub idle: u32,
    pub allocated: u32,
    pub max: u32,
}

#[cfg(test)]
mod tests {
    use berth_cloud::error::ApiError;
    use berth_cloud::error::code;

    use super::*;

    fn api(code: &str, http_status: u16) -> CloudError {
        CloudError::Api(ApiError { action: "CreateNetworkInterface".into(), code: code.into(), message: "refused".into(), request_id: "r-1".into(), http_status })
    }

    #[test]
    fn a_pods_eni_refusal_answers_by_cause() {
        let refusal = |e: &CloudError| pod_eni_refusal("cannot create the pod's ENI", "check BERTH_VSWITCH_ID", e);
        // Limits: try again later, naming the limit (CNI 11).
        match refusal(&api(code::MEMBER_ENI_LIMIT, 403)) {
            AllocError::Exhausted(m) => assert!(m.contains("member ENIs") && m.contains(code::MEMBER_ENI_LIMIT), "{m}"),
            other => panic!("{other:?}"),
        }
        match refusal(&api(code::ENI_PER_INSTANCE_LIMIT, 403)) {
            AllocError::Exhausted(m) => assert!(m.contains("as many ENIs as its type allows"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Passing conditions of the cloud: try again (CNI 11), no configuration hint.
        assert!(matches!(refusal(&api("Throttling.User", 400)), AllocError::Refused(m) if !m.contains("BERTH_VSWITCH_ID")));
        assert!(matches!(refusal(&api("InternalError", 500)), AllocError::Refused(_)));
        assert!(matches!(refusal(&CloudError::Timeout { what: "ENI eni-1 to become InUse".into(), waited: Duration::from_secs(5) }), AllocError::Refused(_)));
        // A request the cloud calls wrong: the configuration (CNI 7), with what to check.
        assert!(matches!(refusal(&api(code::INVALID_VSWITCH_ID, 404)), AllocError::Invalid(m) if m.contains("check BERTH_VSWITCH_ID")));
    }
}
