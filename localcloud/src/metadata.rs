//! Instance metadata: what a VM reads about itself from the metadata service, with the real paths
//! under `/latest/meta-data/`.

use berth_cloud::model::{EniStatus, NetworkInterface};

use crate::addressing;
use crate::state::State;

fn eni_by_mac<'s>(state: &'s State, instance_id: &str, mac: &str) -> Option<&'s NetworkInterface> {
    state.enis.values().find(|e| e.instance_id.as_deref() == Some(instance_id) && e.mac == mac && e.status == EniStatus::InUse)
}

/// The body served for `path` (relative to `/latest/meta-data/`) of an instance, or `None` (404).
pub fn lookup(state: &State, instance_id: &str, path: &str) -> Option<String> {
    let inst = state.instances.get(instance_id)?;
    let vsw = state.vswitches.get(&inst.vswitch_id)?;
    let vpc = state.vpcs.get(&inst.vpc_id)?;
    let primary = state.enis.get(&inst.primary_eni_id)?;
    let path = path.trim_start_matches('/');
    let value = match path {
        "" => "instance-id\ninstance/\nregion-id\nzone-id\nvpc-id\nvpc-cidr-block\nvswitch-id\nvswitch-cidr-block\nprivate-ipv4\nmac\nnetwork/\n".to_string(),
        "instance-id" => inst.id.clone(),
        "instance/" => "instance-type\n".to_string(),
        "instance/instance-type" => inst.instance_type.clone(),
        "region-id" => state.region_id.clone(),
        "zone-id" => inst.zone_id.clone(),
        "vpc-id" => inst.vpc_id.clone(),
        "vpc-cidr-block" => vpc.cidr_block.to_string(),
        "vswitch-id" => inst.vswitch_id.clone(),
        "vswitch-cidr-block" => vsw.cidr_block.to_string(),
        "private-ipv4" => inst.primary_ip.to_string(),
        "mac" => primary.mac.clone(),
        "network/" => "interfaces/\n".to_string(),
        "network/interfaces/" => "macs/\n".to_string(),
        "network/interfaces/macs/" => {
            let mut macs: Vec<String> = state
                .enis
                .values()
                .filter(|e| e.instance_id.as_deref() == Some(instance_id) && e.status == EniStatus::InUse && e.trunk_eni_id.is_none())
                .map(|e| format!("{}/", e.mac))
                .collect();
            macs.sort();
            macs.join("\n") + "\n"
        }
        other => {
            let rest = other.strip_prefix("network/interfaces/macs/")?;
            let (mac, key) = rest.split_once('/')?;
            let eni = eni_by_mac(state, instance_id, mac)?;
            let eni_vsw = state.vswitches.get(&eni.vswitch_id)?;
            match key {
                "" => "network-interface-id\nprimary-ip-address\ngateway\nnetmask\nvswitch-id\nvswitch-cidr-block\nvpc-id\nvpc-cidr-block\nprivate-ipv4s\nipv6s\nipv6-gateway\nvswitch-ipv6-cidr-block\n".to_string(),
                "network-interface-id" => eni.id.clone(),
                "primary-ip-address" => eni.primary_ip.to_string(),
                "gateway" => addressing::gateway(eni_vsw.cidr_block).to_string(),
                "netmask" => eni_vsw.cidr_block.mask().to_string(),
                "vswitch-id" => eni.vswitch_id.clone(),
                "vswitch-cidr-block" => eni_vsw.cidr_block.to_string(),
                "vpc-id" => eni.vpc_id.clone(),
                "vpc-cidr-block" => vpc.cidr_block.to_string(),
                "private-ipv4s" => {
                    let all: Vec<String> = std::iter::once(eni.primary_ip).chain(eni.secondary_ips.iter().copied()).map(|ip| ip.to_string()).collect();
                    serde_json::to_string(&all).ok()?
                }
                "ipv6s" => serde_json::to_string(&eni.ipv6_addresses.iter().map(ToString::to_string).collect::<Vec<_>>()).ok()?,
                "ipv6-gateway" => eni_vsw.ipv6_cidr_block.map(|_| "fe80::eeff:ffff:feff:ffff".to_string())?,
                "vswitch-ipv6-cidr-block" => eni_vsw.ipv6_cidr_block?.to_string(),
                _ => return None,
            }
        }
    };
    Some(value)
}
