//! The pool's ledger: the secondary ENIs the pool owns, the IPs on them, and which pod holds which
//! IP. Pure: the cloud and the node are told about elsewhere; this only keeps the books straight
//! (one holder per IP, IPs only from ENIs ready on the node).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{EniView, PoolView};

/// A pod interface: the runtime's container ID and the interface name in the container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AllocationKey {
    pub container_id: String,
    pub ifname: String,
}

impl std::fmt::Display for AllocationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// Who the pod is, as the runtime said in CNI_ARGS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub infra_container_id: String,
}

/// One pod interface's IP, as recorded durably before the plugin hears of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationRecord {
    pub key: AllocationKey,
    pub ip: Ipv4Addr,
    pub eni_id: String,
    pub netns: String,
    pub pod: PodRef,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix nanoseconds, to order the allocation against a release the plugin queued.
    #[serde(default)]
    pub created_ns: u64,
    #[serde(default)]
    pub mode: PodMode,
    /// The pod's IPv6 address on a dual-stack node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
}

/// Where an ENI is in its life on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EniPhase {
    /// Created or attaching; its IPs count as coming but serve nobody yet.
    Attaching,
    /// Attached and its NIC configured on the node: its IPs serve pods.
    Ready,
    /// Being detached and deleted: nothing new is placed on it.
    Draining,
    /// A whole ENI given to one pod (exclusive mode); never part of the shared pool.
    Exclusive,
    /// The node's trunk ENI, which carries its members' VLAN-tagged frames; never part of the pool.
    Trunk,
    /// A pod's member ENI bound to the trunk; takes a member slot, not an ENI slot.
    Member,
    /// Attached and waiting for an exclusive pod that asks for the node's vSwitch and groups.
    WarmExclusive,
    /// Bound to the trunk and waiting for a trunk pod that asks for the node's vSwitch and groups.
    WarmMember,
}

impl EniPhase {
    /// Whether the ENI is one of the instance's ENI slots that the shared pool cannot use.
    pub fn outside_pool(self) -> bool {
        matches!(self, EniPhase::Exclusive | EniPhase::Trunk | EniPhase::WarmExclusive)
    }

    /// Whether the ENI is a pod's own (exclusive or member).
    pub fn pod_owned(self) -> bool {
        matches!(self, EniPhase::Exclusive | EniPhase::Member)
    }
}

/// How a pod interface is networked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodMode {
    /// A secondary IP of a pool ENI, behind a veth.
    #[default]
    Shared,
    /// A whole ENI moved into the pod.
    Exclusive,
    /// A member ENI of the node's trunk, its VLAN-tagged frames to and from the pod's veth.
    Trunk,
}

/// The ENI's NIC on the node, once configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    pub name: String,
    pub index: u32,
    pub route_table: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolEni {
    pub id: String,
    pub mac: String,
    pub vswitch_id: String,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// The ENI's own address (an exclusive pod's IP; never a shared pod's).
    pub primary_ip: Ipv4Addr,
    pub phase: EniPhase,
    pub nic: Option<Nic>,
    /// Secondary IPs the cloud has assigned to the ENI (its primary address never serves pods).
    pub ips: BTreeSet<Ipv4Addr>,
    /// For a member ENI: its trunk and VLAN ID.
    pub vlan: Option<VlanRef>,
    /// A pod's own ENI: its security groups, sorted (with the vSwitch, what decides which pod may
    /// take it when it is warm). Empty for the pool's ENIs and the trunk.
    pub security_groups: Vec<String>,
    /// IPv6 addresses the cloud has assigned to the ENI (dual-stack), and the vSwitch's IPv6
    /// gateway (link-local) with its prefix length.
    pub ips6: BTreeSet<Ipv6Addr>,
    pub gateway6: Option<(Ipv6Addr, u8)>,
}

/// Where a member ENI's frames travel: the trunk ENI, its NIC on the node, and the VLAN ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VlanRef {
    pub id: u16,
    pub trunk_eni_id: String,
    pub trunk_nic: String,
}

#[derive(Debug, Default)]
pub struct Ledger {
    enis: BTreeMap<String, PoolEni>,
    allocations: BTreeMap<AllocationKey, AllocationRecord>,
    holders: BTreeMap<Ipv4Addr, AllocationKey>,
    holders6: BTreeMap<Ipv6Addr, AllocationKey>,
    /// Every shared allocation gets an IPv6 address too.
    dual_stack: bool,
}

/// Why the ledger refused a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("{ip} is already held by {holder}")]
    IpHeld { ip: std::net::IpAddr, holder: AllocationKey },
}

impl Ledger {
    /// A ledger whose shared allocations take an IPv6 address beside the IPv4 one.
    pub fn dual_stack() -> Ledger {
        Ledger { dual_stack: true, ..Ledger::default() }
    }

    pub fn is_dual_stack(&self) -> bool {
        self.dual_stack
    }

    pub fn enis(&self) -> impl Iterator<Item = &PoolEni> {
        self.enis.values()
    }

    pub fn eni(&self, id: &str) -> Option<&PoolEni> {
        self.enis.get(id)
    }

    pub fn eni_mut(&mut self, id: &str) -> Option<&mut PoolEni> {
        self.enis.get_mut(id)
    }

    pub fn insert_eni(&mut self, eni: PoolEni) {
        self.enis.insert(eni.id.clone(), eni);
    }

    pub fn remove_eni(&mut self, id: &str) -> Option<PoolEni> {
        self.enis.remove(id)
    }

    pub fn allocations(&self) -> impl Iterator<Item = &AllocationRecord> {
        self.allocations.values()
    }

    pub fn allocation(&self, key: &AllocationKey) -> Option<&AllocationRecord> {
        self.allocations.get(key)
    }

    pub fn holder(&self, ip: Ipv4Addr) -> Option<&AllocationKey> {
        self.holders.get(&ip)
    }

    /// IPs of this ENI no pod holds.
    pub fn idle_ips_of(&self, eni: &PoolEni) -> Vec<Ipv4Addr> {
        eni.ips.iter().copied().filter(|ip| !self.holders.contains_key(ip)).collect()
    }

    /// IPv6 addresses of this ENI no pod holds.
    pub fn idle_ips6_of(&self, eni: &PoolEni) -> Vec<Ipv6Addr> {
        eni.ips6.iter().copied().filter(|ip| !self.holders6.contains_key(ip)).collect()
    }

    pub fn holder6(&self, ip: Ipv6Addr) -> Option<&AllocationKey> {
        self.holders6.get(&ip)
    }

    /// Idle pod slots of an ENI: its idle IPv4 addresses, and on a dual-stack node no more than its
    /// idle IPv6 addresses.
    fn idle_slots(&self, e: &PoolEni) -> usize {
        let v4 = e.ips.iter().filter(|ip| !self.holders.contains_key(ip)).count();
        if self.dual_stack { v4.min(e.ips6.iter().filter(|ip| !self.holders6.contains_key(ip)).count()) } else { v4 }
    }

    /// ENIs given whole to pods.
    pub fn exclusive_enis(&self) -> usize {
        self.enis.values().filter(|e| e.phase == EniPhase::Exclusive).count()
    }

    /// ENI slots the shared pool cannot use: pods' exclusive ENIs and the trunk.
    pub fn enis_outside_pool(&self) -> usize {
        // A pod's exclusive ENI on its way back to the cloud holds its slot until detached.
        let draining_own = |e: &PoolEni| e.phase == EniPhase::Draining && !e.security_groups.is_empty() && e.vlan.is_none();
        self.enis.values().filter(|e| e.phase.outside_pool() || draining_own(e)).count()
    }

    /// Secondary ENI slots taken: members take none; a draining ENI holds its slot until the cloud
    /// has detached it, as the cloud counts it.
    pub fn eni_slots_used(&self) -> usize {
        self.enis.values().filter(|e| e.vlan.is_none() && !matches!(e.phase, EniPhase::Member | EniPhase::WarmMember)).count()
    }

    /// Member ENIs bound to the trunk (draining ones included: the cloud counts them until deleted).
    pub fn member_enis(&self) -> usize {
        self.enis.values().filter(|e| e.vlan.is_some()).count()
    }

    /// Pods' own ENIs (those with security groups of their own) on their way back to the cloud, of
    /// the kind of `warm` (exclusive or member).
    pub fn draining_pod_enis(&self, warm: EniPhase) -> usize {
        let member = warm == EniPhase::WarmMember;
        self.enis.values().filter(|e| e.phase == EniPhase::Draining && e.vlan.is_some() == member && !e.security_groups.is_empty()).count()
    }

    /// How many ENIs wait in a warm phase.
    pub fn warm(&self, phase: EniPhase) -> usize {
        self.enis.values().filter(|e| e.phase == phase).count()
    }

    /// A warm ENI of phase `warm` made with this vSwitch and these security groups (sorted).
    pub fn fitting_warm(&self, warm: EniPhase, vswitch_id: &str, groups: &[String]) -> Option<&PoolEni> {
        self.enis.values().find(|e| e.phase == warm && e.vswitch_id == vswitch_id && e.security_groups == groups)
    }

    /// Gives the warm ENI `id` to a pod: it leaves its warm phase for `to`.
    pub fn take_warm(&mut self, id: &str, to: EniPhase) -> Option<PoolEni> {
        let e = self.enis.get_mut(id).filter(|e| matches!(e.phase, EniPhase::WarmExclusive | EniPhase::WarmMember))?;
        e.phase = to;
        Some(e.clone())
    }

    /// The node's trunk ENI, when it has one.
    pub fn trunk(&self) -> Option<&PoolEni> {
        self.enis.values().find(|e| e.phase == EniPhase::Trunk)
    }

    /// Idle IPs that can serve a pod now (on ready ENIs).
    pub fn ready_idle(&self) -> usize {
        self.enis.values().filter(|e| e.phase == EniPhase::Ready).map(|e| self.idle_slots(e)).sum()
    }

    /// Records an allocation that was made before (loaded from the store, or just chosen).
    pub fn record(&mut self, record: AllocationRecord) -> Result<(), LedgerError> {
        if let Some(holder) = self.holders.get(&record.ip)
            && *holder != record.key
        {
            return Err(LedgerError::IpHeld { ip: record.ip.into(), holder: holder.clone() });
        }
        if let Some(ip6) = record.ip6
            && let Some(holder) = self.holders6.get(&ip6)
            && *holder != record.key
        {
            return Err(LedgerError::IpHeld { ip: ip6.into(), holder: holder.clone() });
        }
        if let Some(old) = self.allocations.get(&record.key) {
            self.holders.remove(&old.ip);
            if let Some(ip6) = old.ip6 {
                self.holders6.remove(&ip6);
            }
        }
        self.holders.insert(record.ip, record.key.clone());
        if let Some(ip6) = record.ip6 {
            self.holders6.insert(ip6, record.key.clone());
        }
        self.allocations.insert(record.key.clone(), record);
        Ok(())
    }

    /// Chooses an idle IP for a new allocation without recording it: the ready ENI with the most
    /// pods first (so that surplus drains whole ENIs), its lowest idle IP (and on a dual-stack node
    /// its lowest idle IPv6 address: an ENI without one is passed over).
    pub fn choose(&self) -> Option<(&PoolEni, Ipv4Addr, Option<Ipv6Addr>)> {
        let mut best: Option<(&PoolEni, Ipv4Addr, Option<Ipv6Addr>, usize)> = None;
        for e in self.enis.values().filter(|e| e.phase == EniPhase::Ready && e.nic.is_some()) {
            let Some(ip) = e.ips.iter().copied().find(|ip| !self.holders.contains_key(ip)) else { continue };
            let ip6 = e.ips6.iter().copied().find(|ip| !self.holders6.contains_key(ip));
            if self.dual_stack && ip6.is_none() {
                continue;
            }
            let used = e.ips.iter().filter(|ip| self.holders.contains_key(ip)).count();
            if best.as_ref().is_none_or(|(_, _, _, u)| used > *u) {
                best = Some((e, ip, ip6, used));
            }
        }
        best.map(|(e, ip, ip6, _)| (e, ip, ip6))
    }

    pub fn release(&mut self, key: &AllocationKey) -> Option<AllocationRecord> {
        let record = self.allocations.remove(key)?;
        self.holders.remove(&record.ip);
        if let Some(ip6) = record.ip6 {
            self.holders6.remove(&ip6);
        }
        Some(record)
    }

    /// The pool as the planner sees it.
    pub fn view(&self, waiting: u32, inhibit_until: Option<Instant>, last_busy: Instant) -> PoolView {
        let enis = self
            .enis
            .values()
            .filter(|e| !matches!(e.phase, EniPhase::Draining | EniPhase::Exclusive | EniPhase::Trunk | EniPhase::Member | EniPhase::WarmExclusive | EniPhase::WarmMember))
            .map(|e| EniView { id: e.id.clone(), assigned: e.ips.len() as u32, in_use: e.ips.iter().filter(|ip| self.holders.contains_key(ip)).count() as u32, full: false })
            .collect();
        PoolView { enis, waiting, inhibit_until, no_new_enis_until: None, last_busy }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni(id: &str, ips: &[[u8; 4]], phase: EniPhase) -> PoolEni {
        PoolEni {
            id: id.into(),
            mac: "02:00:00:00:00:01".into(),
            vswitch_id: "vsw-1".into(),
            gateway: Ipv4Addr::new(10, 0, 0, 253),
            prefix_len: 24,
            primary_ip: Ipv4Addr::new(10, 0, 0, 2),
            phase,
            nic: Some(Nic { name: "eth1".into(), index: 3, route_table: 1003 }),
            ips: ips.iter().map(|o| Ipv4Addr::from(*o)).collect(),
            vlan: None,
            security_groups: Vec::new(),
            ips6: Default::default(),
            gateway6: None,
        }
    }

    fn rec(c: &str, ip: [u8; 4], eni: &str) -> AllocationRecord {
        AllocationRecord { key: AllocationKey { container_id: c.into(), ifname: "eth0".into() }, ip: ip.into(), eni_id: eni.into(), netns: String::new(), pod: PodRef::default(), created_at: 0, created_ns: 0, mode: PodMode::Shared, ip6: None }
    }

    #[test]
    fn an_ip_has_one_holder() {
        let mut l = Ledger::default();
        l.insert_eni(eni("eni-a", &[[10, 0, 0, 5]], EniPhase::Ready));
        l.record(rec("c1", [10, 0, 0, 5], "eni-a")).unwrap();
        assert!(matches!(l.record(rec("c2", [10, 0, 0, 5], "eni-a")), Err(LedgerError::IpHeld { .. })));
        // Recording the same key again is idempotent.
        l.record(rec("c1", [10, 0, 0, 5], "eni-a")).unwrap();
        assert_eq!(l.ready_idle(), 0);
        assert!(l.choose().is_none());
        l.release(&rec("c1", [10, 0, 0, 5], "eni-a").key).unwrap();
        assert_eq!(l.ready_idle(), 1);
    }

    #[test]
    fn chooses_only_ready_enis_and_packs_the_busiest() {
        let mut l = Ledger::default();
        l.insert_eni(eni("eni-a", &[[10, 0, 0, 5], [10, 0, 0, 6]], EniPhase::Ready));
        l.insert_eni(eni("eni-b", &[[10, 0, 0, 7], [10, 0, 0, 8]], EniPhase::Ready));
        l.insert_eni(eni("eni-c", &[[10, 0, 0, 9]], EniPhase::Attaching));
        l.record(rec("c1", [10, 0, 0, 8], "eni-b")).unwrap();
        let (e, ip, _) = l.choose().unwrap();
        assert_eq!((e.id.as_str(), ip), ("eni-b", Ipv4Addr::new(10, 0, 0, 7)));
        let view = l.view(0, None, Instant::now());
        assert_eq!(view.enis.len(), 3);
        assert_eq!(view.idle(), 4, "attaching IPs count as coming");
        assert_eq!(l.ready_idle(), 3);
    }

    #[test]
    fn a_dual_stack_allocation_takes_an_ipv6_address_of_the_same_eni() {
        let mut l = Ledger::dual_stack();
        let mut a = eni("eni-a", &[[10, 0, 0, 5], [10, 0, 0, 6]], EniPhase::Ready);
        a.ips6.insert("fd00::5".parse().unwrap());
        l.insert_eni(a);
        assert_eq!(l.ready_idle(), 1, "two IPv4 but one IPv6: one pod");
        let (e, ip, ip6) = l.choose().map(|(e, ip, ip6)| (e.id.clone(), ip, ip6)).unwrap();
        assert_eq!((e.as_str(), ip6), ("eni-a", Some("fd00::5".parse().unwrap())));
        let mut r = rec("c1", ip.octets(), "eni-a");
        r.ip6 = ip6;
        l.record(r).unwrap();
        assert!(l.choose().is_none(), "no IPv6 left: no dual-stack pod fits");
        let mut other = rec("c2", [10, 0, 0, 6], "eni-a");
        other.ip6 = ip6;
        assert!(matches!(l.record(other), Err(LedgerError::IpHeld { .. })), "an IPv6 address has one holder too");
        l.release(&rec("c1", [10, 0, 0, 5], "eni-a").key);
        assert_eq!(l.idle_ips6_of(l.eni("eni-a").unwrap()).len(), 1);
    }

    #[test]
    fn trunk_and_members_stay_out_of_the_pool_and_count_their_own_slots() {
        let mut l = Ledger::default();
        l.insert_eni(eni("eni-a", &[[10, 0, 0, 5]], EniPhase::Ready));
        l.insert_eni(eni("eni-t", &[], EniPhase::Trunk));
        let mut m = eni("eni-m", &[], EniPhase::Member);
        m.vlan = Some(VlanRef { id: 3, trunk_eni_id: "eni-t".into(), trunk_nic: "eth2".into() });
        l.insert_eni(m);
        let view = l.view(0, None, Instant::now());
        assert_eq!(view.enis.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["eni-a"]);
        assert_eq!((l.eni_slots_used(), l.enis_outside_pool(), l.member_enis()), (2, 1, 1));
        assert_eq!(l.trunk().map(|e| e.id.as_str()), Some("eni-t"));
        assert_eq!(l.choose().map(|(e, _, _)| e.id.as_str()), Some("eni-a"));
    }

    #[test]
    fn a_warm_eni_serves_only_a_pod_of_its_vswitch_and_groups_and_a_draining_one_holds_its_slot() {
        let mut l = Ledger::default();
        let mut warm = eni("eni-w", &[], EniPhase::WarmExclusive);
        warm.security_groups = vec!["sg-a".into(), "sg-b".into()];
        l.insert_eni(warm);
        let groups = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(l.fitting_warm(EniPhase::WarmExclusive, "vsw-1", &groups(&["sg-a"])).is_none(), "other groups");
        assert!(l.fitting_warm(EniPhase::WarmExclusive, "vsw-2", &groups(&["sg-a", "sg-b"])).is_none(), "another vSwitch");
        assert!(l.fitting_warm(EniPhase::WarmMember, "vsw-1", &groups(&["sg-a", "sg-b"])).is_none(), "another kind");
        let id = l.fitting_warm(EniPhase::WarmExclusive, "vsw-1", &groups(&["sg-a", "sg-b"])).map(|e| e.id.clone()).unwrap();
        assert_eq!(l.take_warm(&id, EniPhase::Exclusive).map(|e| e.phase), Some(EniPhase::Exclusive));
        assert!(l.take_warm(&id, EniPhase::Exclusive).is_none(), "taken once");
        assert_eq!((l.eni_slots_used(), l.enis_outside_pool()), (1, 1));
        // Released and on its way back to the cloud: still attached, its slot still taken.
        l.eni_mut(&id).unwrap().phase = EniPhase::Draining;
        assert_eq!((l.eni_slots_used(), l.enis_outside_pool(), l.draining_pod_enis(EniPhase::WarmExclusive), l.draining_pod_enis(EniPhase::WarmMember)), (1, 1, 1, 0));
    }
}
