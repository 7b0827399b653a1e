//! Exclusive mode: a whole ENI for one pod, created with the pod's vSwitch and security groups (or
//! the node's), attached, and handed to the plugin by its NIC on the node, which moves it into the
//! pod. It takes one of the instance's ENI slots away from the shared pool while it lives; on
//! release it waits warm for the next pod that fits it ([`super::warm`]) or is detached and deleted
//! in the background. Every step is journaled so that no ENI is lost to a crash.

use std::time::{Duration, Instant};

use berth_cloud::api::CreateEniRequest;
use berth_cloud::model::{EniStatus, NetworkInterface};
use berth_cloud::Cloud;

use super::warm::{PodEniKind, sorted_groups};
use super::{AllocError, Allocated, EniPool, now_unix_ns};
use crate::pool::ledger::{AllocationKey, AllocationRecord, EniPhase, Nic, PodMode, PodRef, PoolEni};
use crate::store::{Event, Intent, StoreError};

const DESCRIPTION_PREFIX: &str = "berth exclusive ";

/// Whether the cloud's ENI is a pod's own (made by this mode, or kept warm for pods).
pub(super) fn is_exclusive(eni: &NetworkInterface) -> bool {
    // Warm ones too: made for pods, never part of the shared pool.
    eni.description.starts_with(DESCRIPTION_PREFIX) || eni.description.starts_with(super::warm::WARM_DESCRIPTION)
}

/// A pod's own ENI (exclusive or member) as the ledger keeps it: no secondary IPs, no routing
/// table of its own.
pub(super) fn pod_eni(eni: &NetworkInterface, gateway: std::net::Ipv4Addr, prefix_len: u8, nic: Option<Nic>, phase: EniPhase) -> PoolEni {
    PoolEni {
        id: eni.id.clone(),
        mac: eni.mac.clone(),
        vswitch_id: eni.vswitch_id.clone(),
        gateway,
        prefix_len,
        primary_ip: eni.primary_ip,
        phase,
        nic,
        ips: Default::default(),
        vlan: None,
        security_groups: sorted_groups(&eni.security_group_ids),
        ips6: eni.ipv6_addresses.iter().copied().collect(),
        gateway6: None,
    }
}

/// What a pod asks for its own ENI (exclusive or member).
#[derive(Debug, Clone, Default)]
pub struct PodEniRequest {
    pub vswitch_id: Option<String>,
    pub security_group_ids: Vec<String>,
}

impl<C: Cloud> EniPool<C> {
    /// A whole ENI for the pod interface `key`; the same one again for a repeated ADD.
    pub async fn allocate_exclusive(&self, key: AllocationKey, netns: String, pod: PodRef, request: PodEniRequest) -> Result<Allocated, AllocError> {
        let started = Instant::now();
        {
            let mut b = self.books();
            if let Some(mut r) = b.ledger.allocation(&key).cloned() {
                if r.mode != PodMode::Exclusive {
                    return Err(AllocError::Refused(format!("{key} already holds a shared IP ({}); DEL it before asking for an exclusive ENI", r.ip)));
                }
                if let Some(eni) = b.ledger.eni(&r.eni_id).cloned() {
                    r.created_ns = now_unix_ns();
                    b.store.append(Event::Allocated(r.clone()))?;
                    b.ledger.record(r.clone()).expect("the key's own IP");
                    return Ok(Allocated { record: r, eni });
                }
            }
        }
        let deadline = started + self.settings.allocate_timeout;
        if let Some(warm) = self.obtain_pod_eni(&key, &netns, &pod, &request, PodEniKind::Exclusive, deadline).await? {
            self.metrics.allocation_seconds.observe(started.elapsed().as_secs_f64());
            return Ok(warm);
        }
        let placed = async {
            let (eni, intent) = self.create_pod_eni("berth-x", request, format!("{DESCRIPTION_PREFIX}{key}"), "the pod's ENI").await?;
            let placed = self.place_exclusive(&key, netns, pod, &eni).await;
            self.settle_pod_eni(&eni.id, intent, placed, started).await
        }
        .await;
        self.unreserve(PodEniKind::Exclusive);
        placed
    }

    /// CreateNetworkInterface of a pod's own ENI (exclusive or member) with the pod's vSwitch and
    /// groups, or the node's, under a journaled intent; `what` names it in errors.
    pub(super) async fn create_pod_eni(&self, token_prefix: &str, request: PodEniRequest, description: String, what: &str) -> Result<(NetworkInterface, u64), AllocError> {
        let token = format!("{token_prefix}-{}-{:016x}", self.identity.instance_id, rand::random::<u64>());
        let intent = {
            let mut b = self.books();
            let id = b.store.intend(Intent::CreateExclusiveEni { client_token: token.clone() })?;
            b.in_flight.insert(id);
            id
        };
        let vswitch = request.vswitch_id.unwrap_or_else(|| self.settings.vswitch_id.clone());
        let groups = if request.security_group_ids.is_empty() { self.settings.security_group_ids.clone() } else { request.security_group_ids };
        let mut req = CreateEniRequest::secondary(vswitch, groups);
        req.description = description;
        req.ipv6_count = u32::from(self.settings.dual_stack);
        req.client_token = Some(token);
        match self.cloud.create_network_interface(&req).await {
            Ok(eni) => Ok((eni, intent)),
            Err(e) => {
                // The intent stays for the upkeep: the cloud may have made the ENI all the same.
                self.books().in_flight.remove(&intent);
                Err(super::pod_eni_refusal(&format!("cannot create {what}"), "check BERTH_VSWITCH_ID and BERTH_SECURITY_GROUP_IDS", &e))
            }
        }
    }

    /// After placing a pod's new ENI: a failed placement deletes it (never keep an ENI nobody
    /// holds); the intent is done unless that deletion failed too (the next start retries it).
    pub(super) async fn settle_pod_eni(&self, eni_id: &str, intent: u64, placed: Result<Allocated, AllocError>, started: Instant) -> Result<Allocated, AllocError> {
        if placed.is_err()
            && let Err(e) = self.delete_eni_calls(eni_id).await
        {
            tracing::error!(eni = %eni_id, error = %e, "cannot delete the ENI of a failed ADD; the upkeep retries");
            self.books().in_flight.remove(&intent);
            return placed;
        }
        {
            let mut b = self.books();
            b.in_flight.remove(&intent);
            b.store.done(intent)?;
        }
        if placed.is_ok() {
            self.metrics.allocation_seconds.observe(started.elapsed().as_secs_f64());
        }
        placed
    }

    /// Attaches the pod's new ENI, finds its NIC, and records the allocation.
    async fn place_exclusive(&self, key: &AllocationKey, netns: String, pod: PodRef, eni: &NetworkInterface) -> Result<Allocated, AllocError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| AllocError::Refused(format!("{what} for {}: {e}", eni.id));
        self.cloud.attach_network_interface(&eni.id, &self.identity.instance_id, None).await.map_err(|e| super::pod_eni_refusal(&format!("cannot attach the pod's ENI {}", eni.id), "is its vSwitch in the node's zone and VPC?", &e))?;
        self.waits.eni_status(&self.cloud, &eni.id, EniStatus::InUse, self.settings.attach_timeout).await.map_err(|e| fail("the pod's ENI did not attach", &e))?;
        let (gateway, prefix_len) = self.eni_addressing(&eni.mac).map_err(|e| fail("no addressing", &e))?;
        let mut nic = None;
        for _ in 0..50 {
            nic = self.node().find_nic(&eni.mac).map_err(|e| fail("cannot look for the NIC", &e))?;
            if nic.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (name, index) = nic.ok_or_else(|| AllocError::Refused(format!("ENI {} is attached but no link with MAC {} appeared on the node", eni.id, eni.mac)))?;
        let mut pool_eni = pod_eni(eni, gateway, prefix_len, Some(Nic { name, index, route_table: 0 }), EniPhase::Exclusive);
        pool_eni.gateway6 = self.eni_addressing6(&eni.mac).map_err(|e| fail("no IPv6 addressing", &e))?;
        let created_ns = now_unix_ns();
        let record = AllocationRecord { key: key.clone(), ip: eni.primary_ip, eni_id: eni.id.clone(), netns, pod, created_at: (created_ns / 1_000_000_000) as i64, created_ns, mode: PodMode::Exclusive, ip6: eni.ipv6_addresses.first().copied() };
        let mut b = self.books();
        b.store.append(Event::Allocated(record.clone()))?;
        b.ledger.insert_eni(pool_eni.clone());
        b.ledger.record(record.clone()).map_err(|e| AllocError::Refused(e.to_string()))?;
        self.update_gauges(&b);
        Ok(Allocated { record, eni: pool_eni })
    }

    /// Knows again, after a restart, a pod's own ENI that an allocation holds. Its NIC is in the
    /// pod's namespace then, not on the node.
    pub(super) fn adopt_exclusive(&self, eni: &NetworkInterface) -> anyhow::Result<()> {
        let (gateway, prefix_len) = self.eni_addressing(&eni.mac)?;
        let nic = self.node().find_nic(&eni.mac)?.map(|(name, index)| Nic { name, index, route_table: 0 });
        let mut b = self.books();
        let mut adopted = pod_eni(eni, gateway, prefix_len, nic, EniPhase::Exclusive);
        adopted.gateway6 = self.eni_addressing6(&eni.mac)?;
        b.ledger.insert_eni(adopted);
        self.update_gauges(&b);
        Ok(())
    }

    /// Releases an allocation with its own ENI (exclusive or member), journaled; the ENI waits warm
    /// for the next pod that fits it (an exclusive one once the plugin moved its NIC back to the
    /// node), or goes back to the cloud in the background under a journaled intent. No cloud call.
    pub(super) async fn release_pod_eni(&self, key: &AllocationKey) -> Result<Option<AllocationRecord>, StoreError> {
        let Some((eni_id, mac, kind)) = ({
            let b = self.books();
            b.ledger.allocation(key).and_then(|r| b.ledger.eni(&r.eni_id)).map(|e| (e.id.clone(), e.mac.clone(), if e.vlan.is_some() { PodEniKind::Member } else { PodEniKind::Exclusive }))
        }) else {
            // An allocation whose ENI the ledger does not know (yet): released, nothing to keep.
            let mut b = self.books();
            let Some(record) = b.ledger.allocation(key).cloned() else { return Ok(None) };
            b.store.append(Event::Released { key: key.clone() })?;
            b.ledger.release(key);
            return Ok(Some(record));
        };
        // An exclusive ENI can serve again only from the node's namespace.
        let nic = match kind {
            PodEniKind::Exclusive => self.node().find_nic(&mac).ok().flatten().map(|(name, index)| Nic { name, index, route_table: 0 }),
            PodEniKind::Member => None,
        };
        let mut b = self.books();
        let Some(record) = b.ledger.allocation(key).cloned().filter(|r| r.eni_id == eni_id) else { return Ok(None) };
        b.store.append(Event::Released { key: key.clone() })?;
        b.ledger.release(key);
        let warm = self.keeps_warm(&b, kind) && (kind == PodEniKind::Member || nic.is_some());
        if warm {
            let e = b.ledger.eni_mut(&eni_id).expect("looked up above");
            e.phase = kind.warm();
            if nic.is_some() {
                e.nic = nic;
            }
        } else {
            // Not in flight: the upkeep task deletes it with the others DELs left it.
            b.store.intend(Intent::DeleteEni { eni_id: eni_id.clone() })?;
            b.ledger.eni_mut(&eni_id).expect("looked up above").phase = EniPhase::Draining;
        }
        self.update_gauges(&b);
        drop(b);
        // A waiting ADD may take it now, or the upkeep deletes it.
        self.grown.notify_waiters();
        self.wake.notify_one();
        Ok(Some(record))
    }

    /// A CreateExclusiveEni (a pod's own ENI, exclusive or member) interrupted by a crash: the
    /// same token finds the ENI if it was made; unless an allocation holds it, it goes.
    pub(super) async fn finish_pod_eni_create(&self, client_token: &str) -> anyhow::Result<()> {
        let mut req = CreateEniRequest::secondary(self.settings.vswitch_id.clone(), self.settings.security_group_ids.clone());
        req.description = format!("{DESCRIPTION_PREFIX}(interrupted)");
        req.client_token = Some(client_token.to_string());
        let eni = self.cloud.create_network_interface(&req).await?;
        let held = self.books().ledger.allocations().any(|r| r.eni_id == eni.id);
        if !held {
            self.delete_eni_calls(&eni.id).await?;
        }
        Ok(())
    }
}
