//! Trunk mode: the node has one trunk ENI (taking one ENI slot from the shared pool), and each
//! trunk pod gets a member ENI of its own — created with the pod's vSwitch and security groups,
//! bound to the trunk, told apart on the wire by the VLAN ID the cloud gives it. The pod keeps a
//! veth like a shared pod; the plugin's tc program tags its frames and sends them out of the trunk
//! NIC, whose own program ([`crate::node::Node::configure_trunk`]) untags what comes back.
//! Members take the type's member-ENI slots; each step is journaled like exclusive mode's, so no
//! member is lost to a crash.

use std::time::{Duration, Instant};

use berth_cloud::api::{CreateEniRequest, EniFilter};
use berth_cloud::model::{EniKind, EniStatus, NetworkInterface};
use berth_cloud::Cloud;

use super::exclusive::{PodEniRequest, pod_eni};
use super::warm::PodEniKind;
use super::{AllocError, Allocated, EniPool, now_unix_ns};
use crate::pool::ledger::{AllocationKey, AllocationRecord, EniPhase, Nic, PodMode, PodRef, PoolEni, VlanRef};
use crate::store::{Event, Intent};

const MEMBER_PREFIX: &str = "berth member ";
const TRUNK_PREFIX: &str = "berth trunk of ";

/// Whether the cloud's ENI is a pod's member ENI (bound to this node's trunk, or made for it).
pub(super) fn is_member(eni: &NetworkInterface) -> bool {
    eni.kind == EniKind::Member || eni.description.starts_with(MEMBER_PREFIX)
}

impl<C: Cloud> EniPool<C> {
    /// Makes sure the node has its trunk ENI, attached and its NIC programmed, when trunk mode is
    /// on: adopts the one the cloud has on this instance, or creates and attaches one.
    pub(super) async fn ensure_trunk(&self) -> anyhow::Result<()> {
        if self.settings.member_eni_quota == 0 {
            return Ok(());
        }
        let known = self.books().ledger.trunk().cloned();
        let eni = match known {
            Some(t) => self.waits.eni_status(&self.cloud, &t.id, EniStatus::InUse, self.settings.attach_timeout).await?,
            None => {
                let filter = EniFilter { instance_id: Some(self.identity.instance_id.clone()), kind: Some(EniKind::Trunk), ..Default::default() };
                match self.cloud.describe_network_interfaces(&filter).await?.into_iter().next() {
                    Some(t) if t.status == EniStatus::InUse => t,
                    Some(t) => self.waits.eni_status(&self.cloud, &t.id, EniStatus::InUse, self.settings.attach_timeout).await?,
                    None => self.create_trunk().await?,
                }
            }
        };
        let (gateway, prefix_len) = self.eni_addressing(&eni.mac)?;
        let mut nic = None;
        for _ in 0..50 {
            nic = self.node().configure_trunk(&eni.mac)?;
            if nic.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let nic = nic.ok_or_else(|| anyhow::anyhow!("trunk ENI {} is attached but no link with MAC {} appeared on the node", eni.id, eni.mac))?;
        tracing::info!(eni = %eni.id, nic = %nic.name, "trunk ENI ready");
        let mut b = self.books();
        b.ledger.insert_eni(PoolEni {
            id: eni.id.clone(),
            mac: eni.mac.clone(),
            vswitch_id: eni.vswitch_id.clone(),
            gateway,
            prefix_len,
            primary_ip: eni.primary_ip,
            phase: EniPhase::Trunk,
            nic: Some(nic),
            ips: Default::default(),
            vlan: None,
            security_groups: Vec::new(),
            ips6: Default::default(),
            gateway6: None,
        });
        self.update_gauges(&b);
        Ok(())
    }

    async fn create_trunk(&self) -> anyhow::Result<NetworkInterface> {
        let token = format!("berth-t-{}", self.identity.instance_id);
        let intent = self.books().store.intend(Intent::CreateTrunkEni { client_token: token.clone() })?;
        let eni = self.create_trunk_call(&token).await?;
        if eni.instance_id.is_none() {
            self.cloud.attach_network_interface(&eni.id, &self.identity.instance_id, None).await?;
        }
        let eni = self.waits.eni_status(&self.cloud, &eni.id, EniStatus::InUse, self.settings.attach_timeout).await?;
        self.books().store.done(intent)?;
        Ok(eni)
    }

    /// CreateNetworkInterface of the trunk; the same token returns the same ENI after a crash.
    pub(super) async fn create_trunk_call(&self, token: &str) -> Result<NetworkInterface, berth_cloud::CloudError> {
        let mut req = CreateEniRequest::secondary(self.settings.vswitch_id.clone(), self.settings.security_group_ids.clone());
        req.kind = EniKind::Trunk;
        req.description = format!("{TRUNK_PREFIX}{}", self.identity.instance_id);
        req.client_token = Some(token.to_string());
        self.cloud.create_network_interface(&req).await
    }

    /// A member ENI for the pod interface `key`; the same one again for a repeated ADD.
    pub async fn allocate_trunk(&self, key: AllocationKey, netns: String, pod: PodRef, request: PodEniRequest) -> Result<Allocated, AllocError> {
        let started = Instant::now();
        {
            let mut b = self.books();
            if let Some(mut r) = b.ledger.allocation(&key).cloned() {
                if r.mode != PodMode::Trunk {
                    return Err(AllocError::Refused(format!("{key} already holds a {:?} allocation ({}); DEL it before asking for trunk mode", r.mode, r.ip)));
                }
                if let Some(eni) = b.ledger.eni(&r.eni_id).cloned() {
                    r.created_ns = now_unix_ns();
                    b.store.append(Event::Allocated(r.clone()))?;
                    b.ledger.record(r.clone()).expect("the key's own IP");
                    return Ok(Allocated { record: r, eni });
                }
            }
            if self.settings.member_eni_quota == 0 {
                return Err(AllocError::Invalid(format!(
                    "this node serves no trunk mode: set pool.trunk = true in the agent's config on an instance type with member ENIs ({} is the node's type); or ask for shared or exclusive mode",
                    self.identity.instance_type
                )));
            }
        }
        let Some(trunk) = self.books().ledger.trunk().cloned() else {
            return Err(AllocError::Refused("the node's trunk ENI is not ready yet (see the agent's log); try again".into()));
        };
        let deadline = started + self.settings.allocate_timeout;
        if let Some(warm) = self.obtain_pod_eni(&key, &netns, &pod, &request, PodEniKind::Member, deadline).await? {
            self.metrics.allocation_seconds.observe(started.elapsed().as_secs_f64());
            return Ok(warm);
        }
        let placed = async {
            let (eni, intent) = self.create_pod_eni("berth-m", request, format!("{MEMBER_PREFIX}{key}"), "the pod's member ENI").await?;
            let placed = self.place_member(&key, netns, pod, &eni, &trunk).await;
            self.settle_pod_eni(&eni.id, intent, placed, started).await
        }
        .await;
        self.unreserve(PodEniKind::Member);
        placed
    }

    /// Binds the pod's new member ENI to the trunk and records the allocation.
    async fn place_member(&self, key: &AllocationKey, netns: String, pod: PodRef, eni: &NetworkInterface, trunk: &PoolEni) -> Result<Allocated, AllocError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| AllocError::Refused(format!("{what} for {}: {e}", eni.id));
        self.cloud.attach_network_interface(&eni.id, &self.identity.instance_id, Some(&trunk.id)).await.map_err(|e| super::pod_eni_refusal(&format!("cannot bind member ENI {} to the trunk", eni.id), "is its vSwitch in the node's zone and VPC?", &e))?;
        let bound = self.waits.eni_status(&self.cloud, &eni.id, EniStatus::InUse, self.settings.attach_timeout).await.map_err(|e| fail("the member ENI did not bind", &e))?;
        let member = self.member_eni(&bound, trunk).map_err(|e| fail("no addressing", &e))?;
        let created_ns = now_unix_ns();
        let record = AllocationRecord { key: key.clone(), ip: bound.primary_ip, eni_id: bound.id.clone(), netns, pod, created_at: (created_ns / 1_000_000_000) as i64, created_ns, mode: PodMode::Trunk, ip6: bound.ipv6_addresses.first().copied() };
        let mut b = self.books();
        b.store.append(Event::Allocated(record.clone()))?;
        b.ledger.insert_eni(member.clone());
        b.ledger.record(record.clone()).map_err(|e| AllocError::Refused(e.to_string()))?;
        self.update_gauges(&b);
        Ok(Allocated { record, eni: member })
    }

    /// A bound member as the ledger keeps it: the trunk's NIC and the member's VLAN ID.
    pub(super) fn member_eni(&self, eni: &NetworkInterface, trunk: &PoolEni) -> anyhow::Result<PoolEni> {
        let vlan = eni.vlan_id.ok_or_else(|| anyhow::anyhow!("the cloud gives member ENI {} no VLAN ID", eni.id))?;
        let (gateway, prefix_len) = self.eni_addressing(&eni.mac)?;
        let mut member = pod_eni(eni, gateway, prefix_len, None, EniPhase::Member);
        member.gateway6 = self.eni_addressing6(&eni.mac)?;
        let trunk_nic = trunk.nic.as_ref().map(|n| n.name.clone()).unwrap_or_default();
        member.vlan = Some(VlanRef { id: vlan, trunk_eni_id: trunk.id.clone(), trunk_nic });
        Ok(member)
    }

    /// Knows again, after a restart, a member ENI an allocation holds.
    pub(super) fn adopt_member(&self, eni: &NetworkInterface) -> anyhow::Result<()> {
        let trunk = self.books().ledger.trunk().cloned().unwrap_or_else(|| PoolEni {
            id: eni.trunk_eni_id.clone().unwrap_or_default(),
            mac: String::new(),
            vswitch_id: String::new(),
            gateway: std::net::Ipv4Addr::UNSPECIFIED,
            prefix_len: 32,
            primary_ip: std::net::Ipv4Addr::UNSPECIFIED,
            phase: EniPhase::Trunk,
            nic: None::<Nic>,
            ips: Default::default(),
            vlan: None,
            security_groups: Vec::new(),
            ips6: Default::default(),
            gateway6: None,
        });
        let member = self.member_eni(eni, &trunk)?;
        let mut b = self.books();
        b.ledger.insert_eni(member);
        self.update_gauges(&b);
        Ok(())
    }
}
