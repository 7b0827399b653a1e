//! Warm pools of pods' own ENIs: exclusive ENIs kept attached (their NIC on the node) and member
//! ENIs kept bound to the trunk, each known by its vSwitch and security groups, so that the ADD of a
//! pod that asks for those needs no cloud call. A released pod's ENI joins the warm pool while it
//! is short of its target (an exclusive one once its NIC is back on the node); only the surplus goes
//! back to the cloud, in the background ([`EniPool::retire_released`]). The upkeep task tops the
//! pools up with ENIs of the node's vSwitch and groups, one at a time, leaving the last slot to
//! pods. A pod whose groups no warm ENI has gets a warm ENI of its vSwitch with its groups changed
//! in place (ModifyNetworkInterfaceAttribute, one call); on a node whose slots are all taken, a warm
//! ENI of another vSwitch is deleted to make room, so what the node reports free is what an ADD can
//! get. Warm ENIs are not journaled as such: after a restart they are orphans, deleted, and made
//! anew.

use std::time::{Duration, Instant};

use berth_cloud::api::CreateEniRequest;
use berth_cloud::model::{EniStatus, NetworkInterface};
use berth_cloud::Cloud;

use super::exclusive::{PodEniRequest, pod_eni};
use super::{AllocError, Allocated, Books, EniPool, now_unix_ns};
use crate::pool::ledger::{AllocationKey, AllocationRecord, EniPhase, Nic, PodMode, PodRef, PoolEni};
use crate::store::{Event, Intent};

pub(super) const WARM_DESCRIPTION: &str = "berth warm ";

/// The two kinds of a pod's own ENI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PodEniKind {
    /// A whole ENI in the pod; takes one of the instance's ENI slots.
    Exclusive,
    /// A member ENI bound to the trunk; takes one of the trunk's member slots.
    Member,
}

impl PodEniKind {
    pub(super) fn warm(self) -> EniPhase {
        match self {
            PodEniKind::Exclusive => EniPhase::WarmExclusive,
            PodEniKind::Member => EniPhase::WarmMember,
        }
    }

    pub(super) fn held(self) -> EniPhase {
        match self {
            PodEniKind::Exclusive => EniPhase::Exclusive,
            PodEniKind::Member => EniPhase::Member,
        }
    }

    fn mode(self) -> PodMode {
        match self {
            PodEniKind::Exclusive => PodMode::Exclusive,
            PodEniKind::Member => PodMode::Trunk,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What an ADD of a pod's own ENI does next.
enum Step {
    /// A warm ENI that fits was given to the pod.
    Took(Box<Allocated>),
    /// A slot is reserved: create the pod's ENI in it.
    Create,
    /// This warm ENI of the pod's vSwitch is the pod's once its security groups are the pod's
    /// (one call); it is out of the warm pool meanwhile.
    Regroup(String),
    /// Every slot is taken and this warm ENI does not fit: delete it to make room.
    Evict { eni_id: String, intent: u64 },
    /// Every slot is taken, but one is coming free (an ENI on its way back to the cloud, or a warm
    /// one being made).
    Wait(String),
    /// Every slot is held by a pod.
    Full(String),
}

/// Security groups as the ledger keys them: sorted, each once.
pub(super) fn sorted_groups(groups: &[String]) -> Vec<String> {
    let mut g = groups.to_vec();
    g.sort();
    g.dedup();
    g
}

impl<C: Cloud> EniPool<C> {
    /// The vSwitch and security groups a pod's ENI is made with: the pod's, or the node's.
    pub(super) fn pod_eni_fit(&self, request: &PodEniRequest) -> (String, Vec<String>) {
        let vswitch = request.vswitch_id.clone().unwrap_or_else(|| self.settings.vswitch_id.clone());
        let groups = if request.security_group_ids.is_empty() { &self.settings.security_group_ids } else { &request.security_group_ids };
        (vswitch, sorted_groups(groups))
    }

    /// Slots of `kind` taken (by pods, warm ENIs, ENIs being made or on their way out) and the
    /// node's quota of them.
    fn pod_eni_slots(&self, b: &Books, kind: PodEniKind) -> (u32, u32) {
        let creating = b.creating[kind.index()];
        match kind {
            PodEniKind::Exclusive => (b.ledger.eni_slots_used() as u32 + creating, self.settings.limits.max_secondary_enis()),
            PodEniKind::Member => (b.ledger.member_enis() as u32 + creating, self.settings.member_eni_quota),
        }
    }

    fn warm_target(&self, kind: PodEniKind) -> u32 {
        match kind {
            PodEniKind::Exclusive => self.settings.warm_exclusive_enis,
            PodEniKind::Member => self.settings.warm_member_enis,
        }
    }

    /// Why no slot of `kind` is left, naming the limit.
    fn slots_full(&self, b: &Books, kind: PodEniKind, quota: u32) -> String {
        match kind {
            PodEniKind::Exclusive => {
                let trunk = if b.ledger.trunk().is_some() { ", 1 by the trunk" } else { "" };
                let pool = b.ledger.enis().filter(|e| !e.phase.outside_pool() && e.security_groups.is_empty()).count();
                format!("all {quota} secondary ENI slots of this {} are taken ({} by pods' own ENIs, {pool} by the shared pool{trunk}); the instance's ENI limit is reached", self.identity.instance_type, b.ledger.exclusive_enis())
            }
            PodEniKind::Member => format!("all {quota} member ENI slots of this {}'s trunk are taken by pods; the trunk's member ENI quota is reached", self.identity.instance_type),
        }
    }

    /// Gets the pod a warm ENI that fits, or reserves a slot to create one in (`None`; the caller
    /// gives it back with [`EniPool::unreserve`]): deleting a warm ENI that does not fit when every
    /// slot is taken, waiting until `deadline` for a slot on its way back.
    pub(super) async fn obtain_pod_eni(&self, key: &AllocationKey, netns: &str, pod: &PodRef, request: &PodEniRequest, kind: PodEniKind, deadline: Instant) -> Result<Option<Allocated>, AllocError> {
        let (vswitch, groups) = self.pod_eni_fit(request);
        loop {
            let freed = self.grown.notified();
            match self.next_step(key, netns, pod, kind, &vswitch, &groups)? {
                Step::Took(a) => {
                    self.wake.notify_one();
                    return Ok(Some(*a));
                }
                Step::Create => return Ok(None),
                Step::Regroup(eni_id) => return self.regroup(key, netns, pod, kind, &eni_id, &groups).await.map(Some),
                Step::Evict { eni_id, intent } => {
                    tracing::info!(eni = %eni_id, %vswitch, ?groups, "every slot is taken: deleting a warm ENI of another vSwitch or groups for the pod");
                    let deleted = self.delete_eni_calls(&eni_id).await;
                    let mut b = self.books();
                    b.in_flight.remove(&intent);
                    match deleted {
                        Ok(()) => b.store.done(intent)?,
                        // The intent stays for the upkeep; this ADD cannot have the slot now.
                        Err(e) => return Err(AllocError::Refused(format!("cannot delete warm ENI {eni_id} to make room for the pod: {e:#}"))),
                    }
                }
                Step::Wait(why) => {
                    if Instant::now() >= deadline {
                        return Err(AllocError::Exhausted(why));
                    }
                    self.wake.notify_one();
                    let _ = tokio::time::timeout_at(deadline.into(), freed).await;
                }
                Step::Full(why) => return Err(AllocError::Exhausted(why)),
            }
        }
    }

    fn next_step(&self, key: &AllocationKey, netns: &str, pod: &PodRef, kind: PodEniKind, vswitch: &str, groups: &[String]) -> Result<Step, AllocError> {
        let mut b = self.books();
        if let Some(eni) = b.ledger.fitting_warm(kind.warm(), vswitch, groups).cloned() {
            let created_ns = now_unix_ns();
            let record = AllocationRecord { key: key.clone(), ip: eni.primary_ip, eni_id: eni.id.clone(), netns: netns.to_string(), pod: pod.clone(), created_at: (created_ns / 1_000_000_000) as i64, created_ns, mode: kind.mode(), ip6: eni.ips6.iter().next().copied() };
            b.store.append(Event::Allocated(record.clone()))?;
            let eni = b.ledger.take_warm(&eni.id, kind.held()).expect("the warm ENI looked up above");
            b.ledger.record(record.clone()).map_err(|e| AllocError::Refused(e.to_string()))?;
            self.update_gauges(&b);
            return Ok(Step::Took(Box::new(Allocated { record, eni })));
        }
        // One call that changes a warm ENI's groups costs less than the five to make one.
        let regroup = b.ledger.enis().find(|e| e.phase == kind.warm() && e.vswitch_id == vswitch).map(|e| e.id.clone());
        if let Some(id) = regroup {
            b.ledger.take_warm(&id, kind.held()).expect("found above");
            return Ok(Step::Regroup(id));
        }
        let (used, quota) = self.pod_eni_slots(&b, kind);
        if used < quota {
            b.creating[kind.index()] += 1;
            return Ok(Step::Create);
        }
        let other = b.ledger.enis().find(|e| e.phase == kind.warm()).map(|e| e.id.clone());
        if let Some(other) = other {
            let intent = b.store.intend(Intent::DeleteEni { eni_id: other.clone() })?;
            b.in_flight.insert(intent);
            b.ledger.eni_mut(&other).expect("found above").phase = EniPhase::Draining;
            self.update_gauges(&b);
            return Ok(Step::Evict { eni_id: other, intent });
        }
        let why = self.slots_full(&b, kind, quota);
        if b.creating[kind.index()] > 0 || b.ledger.draining_pod_enis(kind.warm()) > 0 {
            return Ok(Step::Wait(format!("{why}; none came free in time")));
        }
        Ok(Step::Full(why))
    }

    /// Gives the pod warm ENI `eni_id` (taken out of the warm pool by [`EniPool::next_step`]) with
    /// its security groups changed to the pod's; back to the warm pool if the cloud refuses.
    async fn regroup(&self, key: &AllocationKey, netns: &str, pod: &PodRef, kind: PodEniKind, eni_id: &str, groups: &[String]) -> Result<Allocated, AllocError> {
        if let Err(e) = self.cloud.set_eni_security_groups(eni_id, groups).await {
            let mut b = self.books();
            if let Some(eni) = b.ledger.eni_mut(eni_id) {
                eni.phase = kind.warm();
            }
            drop(b);
            self.grown.notify_waiters();
            return Err(super::pod_eni_refusal(&format!("cannot give warm ENI {eni_id} the pod's security groups {groups:?}"), "check BERTH_SECURITY_GROUP_IDS: groups of the node's VPC", &e));
        }
        let mut b = self.books();
        let eni = b.ledger.eni_mut(eni_id).expect("out of the warm pool, so no one else removes it");
        eni.security_groups = groups.to_vec();
        let eni = eni.clone();
        let created_ns = now_unix_ns();
        let record = AllocationRecord { key: key.clone(), ip: eni.primary_ip, eni_id: eni.id.clone(), netns: netns.to_string(), pod: pod.clone(), created_at: (created_ns / 1_000_000_000) as i64, created_ns, mode: kind.mode(), ip6: eni.ips6.iter().next().copied() };
        b.store.append(Event::Allocated(record.clone()))?;
        b.ledger.record(record.clone()).map_err(|e| AllocError::Refused(e.to_string()))?;
        self.update_gauges(&b);
        drop(b);
        self.wake.notify_one();
        Ok(Allocated { record, eni })
    }

    /// Gives back the slot [`EniPool::obtain_pod_eni`] reserved, once the ENI made in it is in the
    /// ledger (or was never made).
    pub(super) fn unreserve(&self, kind: PodEniKind) {
        let mut b = self.books();
        b.creating[kind.index()] -= 1;
        drop(b);
        self.grown.notify_waiters();
    }

    /// Whether a released pod ENI of `kind` stays warm for the next pod (the warm pool is short of
    /// its target) rather than go back to the cloud.
    pub(super) fn keeps_warm(&self, b: &Books, kind: PodEniKind) -> bool {
        (b.ledger.warm(kind.warm()) as u32) < self.warm_target(kind)
    }

    /// Adds one warm ENI where a warm pool is short and a slot is free beyond the last one, which is
    /// left to pods; returns whether it did.
    pub(super) async fn top_up_warm(&self) -> anyhow::Result<bool> {
        let mut made = false;
        for kind in [PodEniKind::Exclusive, PodEniKind::Member] {
            let short = {
                let mut b = self.books();
                let (used, quota) = self.pod_eni_slots(&b, kind);
                let warm = b.ledger.warm(kind.warm()) as u32 + b.creating[kind.index()];
                let ready = kind == PodEniKind::Exclusive || b.ledger.trunk().is_some();
                let short = ready && warm < self.warm_target(kind) && used + 1 < quota;
                if short {
                    b.creating[kind.index()] += 1;
                }
                short
            };
            if short {
                let result = self.make_warm(kind).await;
                self.unreserve(kind);
                result?;
                made = true;
            }
        }
        Ok(made)
    }

    async fn make_warm(&self, kind: PodEniKind) -> anyhow::Result<()> {
        let token = format!("berth-w-{}-{:016x}", self.identity.instance_id, rand::random::<u64>());
        let intent = self.books().store.intend(Intent::CreateExclusiveEni { client_token: token.clone() })?;
        let mut req = CreateEniRequest::secondary(self.settings.vswitch_id.clone(), self.settings.security_group_ids.clone());
        req.description = format!("{WARM_DESCRIPTION}{}", if kind == PodEniKind::Member { "member" } else { "exclusive" });
        req.ipv6_count = u32::from(self.settings.dual_stack);
        req.client_token = Some(token);
        let eni = self.cloud.create_network_interface(&req).await?;
        let placed = self.place_warm(&eni, kind).await;
        if placed.is_err() {
            self.delete_eni_calls(&eni.id).await?;
        }
        self.books().store.done(intent)?;
        placed
    }

    async fn place_warm(&self, eni: &NetworkInterface, kind: PodEniKind) -> anyhow::Result<()> {
        let trunk = self.books().ledger.trunk().cloned();
        let trunk_id = if kind == PodEniKind::Member { Some(trunk.as_ref().ok_or_else(|| anyhow::anyhow!("no trunk"))?.id.clone()) } else { None };
        self.cloud.attach_network_interface(&eni.id, &self.identity.instance_id, trunk_id.as_deref()).await?;
        let bound = self.waits.eni_status(&self.cloud, &eni.id, EniStatus::InUse, self.settings.attach_timeout).await?;
        let nic = match kind {
            PodEniKind::Member => None,
            PodEniKind::Exclusive => {
                let mut nic = None;
                for _ in 0..50 {
                    nic = self.node().find_nic(&bound.mac)?;
                    if nic.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some(nic.ok_or_else(|| anyhow::anyhow!("warm ENI {} is attached but no link with MAC {} appeared", bound.id, bound.mac))?)
            }
        };
        let ready = self.warm_eni(&bound, kind, trunk.as_ref(), nic)?;
        let mut b = self.books();
        b.ledger.insert_eni(ready);
        self.update_gauges(&b);
        drop(b);
        self.grown.notify_waiters();
        Ok(())
    }

    /// A bound ENI of `kind` as the ledger keeps it warm; `nic` is an exclusive one's link on the
    /// node (name, index).
    fn warm_eni(&self, eni: &NetworkInterface, kind: PodEniKind, trunk: Option<&PoolEni>, nic: Option<(String, u32)>) -> anyhow::Result<PoolEni> {
        Ok(match (kind, trunk, nic) {
            (PodEniKind::Member, Some(trunk), _) => PoolEni { phase: EniPhase::WarmMember, ..self.member_eni(eni, trunk)? },
            (PodEniKind::Exclusive, _, Some((name, index))) => {
                let (gateway, prefix_len) = self.eni_addressing(&eni.mac)?;
                let mut warm = pod_eni(eni, gateway, prefix_len, Some(Nic { name, index, route_table: 0 }), EniPhase::WarmExclusive);
                warm.gateway6 = self.eni_addressing6(&eni.mac)?;
                warm
            }
            (PodEniKind::Member, None, _) => anyhow::bail!("member ENI {} cannot be kept warm: the node has no trunk", eni.id),
            (PodEniKind::Exclusive, _, None) => anyhow::bail!("exclusive ENI {} cannot be kept warm: its NIC is not in the node's namespace", eni.id),
        })
    }

    /// At start, a pod's ENI no allocation holds (a warm one, or a pod's released while the agent
    /// was down) is kept warm, with no cloud call, when it can serve the next pod as it is —
    /// attached here and in use, an exclusive one's NIC in the node's namespace, a member bound to
    /// this node's trunk — and its warm pool is short by the rule the top-up follows (never the
    /// last free slot). Returns whether it was kept; the caller deletes it otherwise.
    pub(super) fn adopt_warm(&self, eni: &NetworkInterface) -> anyhow::Result<bool> {
        let kind = if super::trunk::is_member(eni) { PodEniKind::Member } else { PodEniKind::Exclusive };
        let trunk = self.books().ledger.trunk().cloned();
        let bound_here = match kind {
            PodEniKind::Member => trunk.as_ref().is_some_and(|t| eni.trunk_eni_id.as_deref() == Some(t.id.as_str())),
            PodEniKind::Exclusive => eni.instance_id.as_deref() == Some(self.identity.instance_id.as_str()),
        };
        if eni.status != EniStatus::InUse || !bound_here {
            return Ok(false);
        }
        let nic = match kind {
            PodEniKind::Member => None,
            PodEniKind::Exclusive => match self.node().find_nic(&eni.mac)? {
                Some(nic) => Some(nic),
                None => return Ok(false),
            },
        };
        let short = {
            let b = self.books();
            let (used, quota) = self.pod_eni_slots(&b, kind);
            // This ENI holds a slot the ledger does not count yet.
            (b.ledger.warm(kind.warm()) as u32) < self.warm_target(kind) && used + 2 <= quota
        };
        if !short {
            return Ok(false);
        }
        let warm = self.warm_eni(eni, kind, trunk.as_ref(), nic)?;
        let mut b = self.books();
        b.ledger.insert_eni(warm);
        self.update_gauges(&b);
        Ok(true)
    }
}
