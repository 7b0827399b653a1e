//! Counts of what a node offers and what a pod needs, in the units the filters compare.

use berth_proto::cluster::v1 as pb;

/// Every resource a placement filters on. One type for capacity, free counts and demands, so
/// "does it fit" and "take it" are single comparisons without allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    pub pods: u32,
    pub shared_ips: u32,
    pub eni_slots: u32,
    pub member_eni_slots: u32,
    pub disk_slots: u32,
}

impl Resources {
    /// Whether `demand` fits in `self` on every resource.
    pub fn fits(&self, demand: &Resources) -> bool {
        demand.cpu_millicores <= self.cpu_millicores
            && demand.memory_bytes <= self.memory_bytes
            && demand.pods <= self.pods
            && demand.shared_ips <= self.shared_ips
            && demand.eni_slots <= self.eni_slots
            && demand.member_eni_slots <= self.member_eni_slots
            && demand.disk_slots <= self.disk_slots
    }

    pub fn saturating_sub(&self, o: &Resources) -> Resources {
        Resources {
            cpu_millicores: self.cpu_millicores.saturating_sub(o.cpu_millicores),
            memory_bytes: self.memory_bytes.saturating_sub(o.memory_bytes),
            pods: self.pods.saturating_sub(o.pods),
            shared_ips: self.shared_ips.saturating_sub(o.shared_ips),
            eni_slots: self.eni_slots.saturating_sub(o.eni_slots),
            member_eni_slots: self.member_eni_slots.saturating_sub(o.member_eni_slots),
            disk_slots: self.disk_slots.saturating_sub(o.disk_slots),
        }
    }

    pub fn saturating_add(&self, o: &Resources) -> Resources {
        Resources {
            cpu_millicores: self.cpu_millicores.saturating_add(o.cpu_millicores),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            pods: self.pods.saturating_add(o.pods),
            shared_ips: self.shared_ips.saturating_add(o.shared_ips),
            eni_slots: self.eni_slots.saturating_add(o.eni_slots),
            member_eni_slots: self.member_eni_slots.saturating_add(o.member_eni_slots),
            disk_slots: self.disk_slots.saturating_add(o.disk_slots),
        }
    }

    /// The component-wise minimum: free counts never exceed what the node has in all.
    pub fn min(&self, o: &Resources) -> Resources {
        Resources {
            cpu_millicores: self.cpu_millicores.min(o.cpu_millicores),
            memory_bytes: self.memory_bytes.min(o.memory_bytes),
            pods: self.pods.min(o.pods),
            shared_ips: self.shared_ips.min(o.shared_ips),
            eni_slots: self.eni_slots.min(o.eni_slots),
            member_eni_slots: self.member_eni_slots.min(o.member_eni_slots),
            disk_slots: self.disk_slots.min(o.disk_slots),
        }
    }

    /// Used fraction per resource the node has at all (`self` is allocatable, `free` what is
    /// left), in the order cpu, memory, pods, shared IPs, ENI slots, member-ENI slots, disk slots.
    /// A resource the node lacks (allocatable 0) reads as `None`.
    pub fn used_fractions(&self, free: &Resources) -> [Option<f64>; 7] {
        fn frac(all: u64, free: u64) -> Option<f64> {
            (all > 0).then(|| all.saturating_sub(free) as f64 / all as f64)
        }
        [
            frac(self.cpu_millicores, free.cpu_millicores),
            frac(self.memory_bytes, free.memory_bytes),
            frac(self.pods.into(), free.pods.into()),
            frac(self.shared_ips.into(), free.shared_ips.into()),
            frac(self.eni_slots.into(), free.eni_slots.into()),
            frac(self.member_eni_slots.into(), free.member_eni_slots.into()),
            frac(self.disk_slots.into(), free.disk_slots.into()),
        ]
    }

    /// The mean used fraction over the resources `counted` names (same order as
    /// [`Resources::used_fractions`]) that the node has at all; 0 when it has none of them.
    /// Placement's score: called for hundreds of nodes per pod, so it divides only what counts.
    pub fn mean_used_fraction(&self, free: &Resources, counted: [bool; 7]) -> f64 {
        let pairs: [(u64, u64); 7] = [
            (self.cpu_millicores, free.cpu_millicores),
            (self.memory_bytes, free.memory_bytes),
            (self.pods.into(), free.pods.into()),
            (self.shared_ips.into(), free.shared_ips.into()),
            (self.eni_slots.into(), free.eni_slots.into()),
            (self.member_eni_slots.into(), free.member_eni_slots.into()),
            (self.disk_slots.into(), free.disk_slots.into()),
        ];
        let (mut sum, mut k) = (0.0, 0.0);
        for ((all, free), counted) in pairs.into_iter().zip(counted) {
            if counted && all > 0 {
                sum += all.saturating_sub(free) as f64 / all as f64;
                k += 1.0;
            }
        }
        if k > 0.0 { sum / k } else { 0.0 }
    }

    /// The highest used fraction over every resource the node has: a node is as busy as its
    /// scarcest resource (a node with every IP taken is full whatever its CPU says).
    pub fn utilisation(&self, free: &Resources) -> f64 {
        self.used_fractions(free).into_iter().flatten().fold(0.0, f64::max)
    }
}

impl From<&pb::Resources> for Resources {
    fn from(r: &pb::Resources) -> Self {
        Resources {
            cpu_millicores: r.cpu_millicores,
            memory_bytes: r.memory_bytes,
            pods: r.pods,
            shared_ips: r.shared_ips,
            eni_slots: r.eni_slots,
            member_eni_slots: r.member_eni_slots,
            disk_slots: r.disk_slots,
        }
    }
}

impl From<&Resources> for pb::Resources {
    fn from(r: &Resources) -> Self {
        pb::Resources {
            cpu_millicores: r.cpu_millicores,
            memory_bytes: r.memory_bytes,
            pods: r.pods,
            shared_ips: r.shared_ips,
            eni_slots: r.eni_slots,
            member_eni_slots: r.member_eni_slots,
            disk_slots: r.disk_slots,
        }
    }
}

/// Whether a pod's volume is a cloud disk (a disk slot, and a zone): of kind DISK, or of no kind
/// naming an existing disk (`volumeId` `d-…`; NAS and OSS IDs start `nas:` and `oss:`).
pub fn is_disk(v: &pb::VolumeSpec) -> bool {
    v.kind == pb::VolumeKind::Disk as i32 || (v.kind == pb::VolumeKind::Unspecified as i32 && v.parameters.get("volumeId").is_some_and(|id| id.starts_with("d-")))
}

/// What a pod needs of a node: its CPU and memory, one pod slot, one address of its network mode
/// (a shared IP, an ENI slot, or a member-ENI slot) and one disk slot per disk volume.
pub fn demand_of(spec: &pb::PodSpec) -> Resources {
    let mode = pb::NetworkMode::try_from(spec.network_mode).unwrap_or(pb::NetworkMode::Shared);
    let disks = spec.volumes.iter().filter(|v| is_disk(v)).count();
    Resources {
        cpu_millicores: spec.cpu_millicores,
        memory_bytes: spec.memory_bytes,
        pods: 1,
        shared_ips: u32::from(matches!(mode, pb::NetworkMode::Shared | pb::NetworkMode::Unspecified)),
        eni_slots: u32::from(mode == pb::NetworkMode::Exclusive),
        member_eni_slots: u32::from(mode == pb::NetworkMode::Trunk),
        disk_slots: u32::try_from(disks).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_takes_one_address_of_its_mode_and_one_slot_per_disk() {
        let disk = pb::VolumeSpec { kind: pb::VolumeKind::Disk as i32, ..Default::default() };
        let nas = pb::VolumeSpec { kind: pb::VolumeKind::Nas as i32, ..Default::default() };
        let spec = pb::PodSpec { cpu_millicores: 250, volumes: vec![disk.clone(), nas, disk], ..Default::default() };
        let d = demand_of(&spec);
        assert_eq!((d.pods, d.shared_ips, d.eni_slots, d.disk_slots), (1, 1, 0, 2));
        let trunk = demand_of(&pb::PodSpec { network_mode: pb::NetworkMode::Trunk as i32, ..Default::default() });
        assert_eq!((trunk.shared_ips, trunk.member_eni_slots), (0, 1));
        let excl = demand_of(&pb::PodSpec { network_mode: pb::NetworkMode::Exclusive as i32, ..Default::default() });
        assert_eq!((excl.shared_ips, excl.eni_slots), (0, 1));
    }

    #[test]
    fn an_existing_volume_of_no_kind_is_a_disk_by_its_id() {
        let existing = |id: &str| pb::VolumeSpec { parameters: [("volumeId".to_string(), id.to_string())].into(), ..Default::default() };
        let spec = pb::PodSpec { volumes: vec![existing("d-0a1b"), existing("nas:fs-1::/"), existing("oss:b:/"), pb::VolumeSpec::default()], ..Default::default() };
        assert_eq!(demand_of(&spec).disk_slots, 1);
    }

    #[test]
    fn utilisation_is_the_scarcest_resource() {
        let all = Resources { cpu_millicores: 4000, memory_bytes: 8 << 30, pods: 20, shared_ips: 10, eni_slots: 2, member_eni_slots: 0, disk_slots: 16 };
        let free = Resources { cpu_millicores: 3900, memory_bytes: 8 << 30, pods: 19, shared_ips: 1, eni_slots: 2, member_eni_slots: 0, disk_slots: 16 };
        assert!((all.utilisation(&free) - 0.9).abs() < 1e-9, "9 of 10 IPs taken");
        assert!(!free.fits(&Resources { shared_ips: 2, ..Default::default() }));
        assert!(free.fits(&Resources { shared_ips: 1, pods: 1, ..Default::default() }));
    }
}
