//! Warm pools of pods' own ENIs: exclusive ENIs kept attached (their NIC on the node) and member
//! ENIs kept bound to the trunk, made with the node's vSwitch and security groups, so that the ADD
//! of a pod that asks for nothing else needs no cloud call. The upkeep task tops them up one ENI at
//! a time; a released pod's ENI is deleted, never handed to the next pod. Warm ENIs are not
//! journaled as such: after a restart they are orphans, deleted, and made anew.

use std::time::Duration;

use berth_cloud::api::CreateEniRequest;
use berth_cloud::model::{EniStatus, NetworkInterface};
use berth_cloud::{Cloud, wait};

use super::exclusive::{PodEniRequest, pod_eni};
use super::{AllocError, Allocated, EniPool, now_unix_ns};
use crate::pool::ledger::{AllocationKey, AllocationRecord, EniPhase, Nic, PodMode, PodRef};
use crate::store::{Event, Intent};

pub(super) const WARM_DESCRIPTION: &str = "berth warm ";

impl<C: Cloud> EniPool<C> {
    /// Gives the pod a warm ENI of `warm` phase if it asks for the node's vSwitch and groups and one
    /// waits; `None` otherwise.
    pub(super) fn take_warm(&self, key: &AllocationKey, netns: &str, pod: &PodRef, request: &PodEniRequest, warm: EniPhase) -> Result<Option<Allocated>, AllocError> {
        if request.vswitch_id.is_some() || !request.security_group_ids.is_empty() {
            return Ok(None);
        }
        let (to, mode) = match warm {
            EniPhase::WarmExclusive => (EniPhase::Exclusive, PodMode::Exclusive),
            _ => (EniPhase::Member, PodMode::Trunk),
        };
        let mut b = self.books();
        let Some(eni) = b.ledger.enis().find(|e| e.phase == warm).cloned() else { return Ok(None) };
        let created_ns = now_unix_ns();
        let record = AllocationRecord { key: key.clone(), ip: eni.primary_ip, eni_id: eni.id.clone(), netns: netns.to_string(), pod: pod.clone(), created_at: (created_ns / 1_000_000_000) as i64, created_ns, mode, ip6: eni.ips6.iter().next().copied() };
        b.store.append(Event::Allocated(record.clone()))?;
        let eni = b.ledger.take_warm(warm, to).filter(|e| e.id == record.eni_id).expect("the warm ENI looked up above");
        b.ledger.record(record.clone()).map_err(|e| AllocError::Refused(e.to_string()))?;
        self.update_gauges(&b);
        drop(b);
        self.wake.notify_one();
        Ok(Some(Allocated { record, eni }))
    }

    /// Adds one warm ENI where a warm pool is short and there is room; returns whether it did.
    pub(super) async fn top_up_warm(&self) -> anyhow::Result<bool> {
        let (exclusive, member) = {
            let b = self.books();
            let s = &self.settings;
            let exclusive = (b.ledger.warm(EniPhase::WarmExclusive) as u32) < s.warm_exclusive_enis && (b.ledger.eni_slots_used() as u32) < s.limits.max_secondary_enis();
            let member = (b.ledger.warm(EniPhase::WarmMember) as u32) < s.warm_member_enis && (b.ledger.member_enis() as u32) < s.member_eni_quota && b.ledger.trunk().is_some();
            (exclusive, member)
        };
        if exclusive {
            self.make_warm(EniPhase::WarmExclusive).await?;
        }
        if member {
            self.make_warm(EniPhase::WarmMember).await?;
        }
        Ok(exclusive || member)
    }

    async fn make_warm(&self, phase: EniPhase) -> anyhow::Result<()> {
        let token = format!("berth-w-{}-{:016x}", self.identity.instance_id, rand::random::<u64>());
        let intent = self.books().store.intend(Intent::CreateExclusiveEni { client_token: token.clone() })?;
        let mut req = CreateEniRequest::secondary(self.settings.vswitch_id.clone(), self.settings.security_group_ids.clone());
        req.description = format!("{WARM_DESCRIPTION}{}", if phase == EniPhase::WarmMember { "member" } else { "exclusive" });
        req.ipv6_count = u32::from(self.settings.dual_stack);
        req.client_token = Some(token);
        let eni = self.cloud.create_network_interface(&req).await?;
        let placed = self.place_warm(&eni, phase).await;
        if placed.is_err() {
            self.delete_eni_calls(&eni.id).await?;
        }
        self.books().store.done(intent)?;
        placed
    }

    async fn place_warm(&self, eni: &NetworkInterface, phase: EniPhase) -> anyhow::Result<()> {
        let trunk = self.books().ledger.trunk().cloned();
        let trunk_id = if phase == EniPhase::WarmMember { Some(trunk.as_ref().ok_or_else(|| anyhow::anyhow!("no trunk"))?.id.clone()) } else { None };
        self.cloud.attach_network_interface(&eni.id, &self.identity.instance_id, trunk_id.as_deref()).await?;
        let bound = wait::eni_status(&self.cloud, &eni.id, EniStatus::InUse, self.settings.attach_timeout).await?;
        let ready = match (phase, trunk) {
            (EniPhase::WarmMember, Some(trunk)) => {
                let mut m = self.member_eni(&bound, &trunk)?;
                m.phase = EniPhase::WarmMember;
                m
            }
            _ => {
                let (gateway, prefix_len) = self.eni_addressing(&bound.mac)?;
                let mut nic = None;
                for _ in 0..50 {
                    nic = self.node().find_nic(&bound.mac)?;
                    if nic.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let (name, index) = nic.ok_or_else(|| anyhow::anyhow!("warm ENI {} is attached but no link with MAC {} appeared", bound.id, bound.mac))?;
                let mut warm = pod_eni(&bound, gateway, prefix_len, Some(Nic { name, index, route_table: 0 }), EniPhase::WarmExclusive);
                warm.gateway6 = self.eni_addressing6(&bound.mac)?;
                warm
            }
        };
        let mut b = self.books();
        b.ledger.insert_eni(ready);
        self.update_gauges(&b);
        Ok(())
    }
}
