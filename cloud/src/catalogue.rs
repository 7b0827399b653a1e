//! The instance-type catalogue: what each ECS type offers in ENIs, IPs, member ENIs, disks, CPU and
//! memory. The local cloud serves it through DescribeInstanceTypes and enforces its quotas; the
//! autoscaler simulates template nodes from it.

use crate::model::InstanceType;

struct Row {
    id: &'static str,
    vcpu: u32,
    memory_gib: u64,
    eni_quota: u32,
    ipv4_per_eni: u32,
    member_eni_quota: u32,
    disk_quota: u32,
    price_per_hour: f64,
}

// The numbers follow the published limits of each type (ENIs, private IPv4 per ENI, data disks);
// member-ENI quotas and prices are representative. IPv6 per ENI equals IPv4 per ENI on these types.
const ROWS: &[Row] = &[
    row("ecs.t6-c1m2.large", 2, 4, 2, 6, 0, 16, 0.08),
    row("ecs.c7.large", 2, 4, 3, 6, 6, 16, 0.21),
    row("ecs.c7.xlarge", 4, 8, 4, 15, 12, 16, 0.42),
    row("ecs.c7.2xlarge", 8, 16, 6, 15, 25, 16, 0.84),
    row("ecs.c7.4xlarge", 16, 32, 8, 30, 50, 16, 1.68),
    row("ecs.g7.large", 2, 8, 3, 6, 6, 16, 0.27),
    row("ecs.g7.xlarge", 4, 16, 4, 15, 12, 16, 0.54),
    row("ecs.g7.2xlarge", 8, 32, 6, 15, 25, 16, 1.08),
    row("ecs.g7.4xlarge", 16, 64, 8, 30, 50, 16, 2.16),
    row("ecs.r7.large", 2, 16, 3, 6, 6, 16, 0.35),
    row("ecs.r7.xlarge", 4, 32, 4, 15, 12, 16, 0.70),
    row("ecs.r7.2xlarge", 8, 64, 6, 15, 25, 16, 1.40),
    row("ecs.r7.4xlarge", 16, 128, 8, 30, 50, 16, 2.80),
];

#[allow(clippy::too_many_arguments)]
const fn row(
    id: &'static str,
    vcpu: u32,
    memory_gib: u64,
    eni_quota: u32,
    ipv4_per_eni: u32,
    member_eni_quota: u32,
    disk_quota: u32,
    price_per_hour: f64,
) -> Row {
    Row { id, vcpu, memory_gib, eni_quota, ipv4_per_eni, member_eni_quota, disk_quota, price_per_hour }
}

fn family_of(id: &str) -> String {
    // "ecs.g7.large" -> "ecs.g7"; "ecs.t6-c1m2.large" -> "ecs.t6"
    let mut parts = id.split('.');
    let prefix = parts.next().unwrap_or_default();
    let family = parts.next().unwrap_or_default();
    let family = family.split('-').next().unwrap_or(family);
    format!("{prefix}.{family}")
}

/// Every instance type the catalogue knows.
pub fn instance_types() -> Vec<InstanceType> {
    ROWS.iter()
        .map(|r| InstanceType {
            id: r.id.to_string(),
            family: family_of(r.id),
            vcpu: r.vcpu,
            memory_mib: r.memory_gib * 1024,
            eni_quota: r.eni_quota,
            ipv4_per_eni: r.ipv4_per_eni,
            ipv6_per_eni: r.ipv4_per_eni,
            member_eni_quota: r.member_eni_quota,
            disk_quota: r.disk_quota,
            price_per_hour: r.price_per_hour,
        })
        .collect()
}

/// One instance type by its ID, e.g. `ecs.g7.large`.
pub fn instance_type(id: &str) -> Option<InstanceType> {
    instance_types().into_iter().find(|t| t.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_can_host_pods_in_shared_mode() {
        for t in instance_types() {
            assert!(t.eni_quota >= 2, "{} needs a secondary ENI", t.id);
            assert!(t.max_shared_eni_pods() > 0, "{}", t.id);
            assert!(t.disk_quota > 0, "{}", t.id);
        }
    }

    #[test]
    fn capacity_follows_the_quotas() {
        let g7 = instance_type("ecs.g7.large").unwrap();
        assert_eq!(g7.family, "ecs.g7");
        assert_eq!(g7.max_shared_eni_pods(), 2 * 5);
        assert_eq!(g7.max_exclusive_eni_pods(), 2);
        let t6 = instance_type("ecs.t6-c1m2.large").unwrap();
        assert_eq!(t6.family, "ecs.t6");
        assert!(!t6.supports_trunk());
        assert!(instance_type("ecs.nope.large").is_none());
    }

    #[test]
    fn ids_are_unique() {
        let mut ids: Vec<_> = instance_types().into_iter().map(|t| t.id).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }
}
