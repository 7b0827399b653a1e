//! Instance types and instances.

use berth_cloud::catalogue;
use berth_cloud::error::code;
use berth_cloud::model::{DiskStatus, EniKind, EniStatus, Instance, InstanceStatus, InstanceType, NetworkInterface};
use berth_cloud::wire;

use super::params::invalid;
use super::{ApiFailure, ApiResult, Ctx, Outcome, Params, Pending, by_token, changed, eni, page, remember_token, reply, vpc};
use crate::state::State;

pub fn instance<'s>(state: &'s State, id: &str) -> ApiResult<&'s Instance> {
    state
        .instances
        .get(id)
        .ok_or_else(|| ApiFailure::not_found(code::INVALID_INSTANCE_ID, format!("The specified instance \"{id}\" does not exist.")))
}

pub fn instance_type(id: &str) -> ApiResult<InstanceType> {
    catalogue::instance_type(id).ok_or_else(|| {
        let known: Vec<String> = catalogue::instance_types().into_iter().map(|t| t.id).collect();
        ApiFailure::forbidden(code::INVALID_INSTANCE_TYPE, format!("The instance type \"{id}\" is not supported; use one of {}.", known.join(", ")))
    })
}

pub fn describe_instance_types(ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let wanted = p.list("InstanceTypes");
    let items: Vec<wire::InstanceTypeItem> = catalogue::instance_types()
        .iter()
        .filter(|t| wanted.is_empty() || wanted.contains(&t.id))
        .map(wire::InstanceTypeItem::from_model)
        .collect();
    let (items, next_token) = page(&items, p, 250, 1600)?;
    reply(wire::DescribeInstanceTypesResponse { request_id: ctx.request_id.clone(), instance_types: items.into(), next_token })
}

/// System disk categories RunInstances takes.
const SYSTEM_DISK_CATEGORIES: [&str; 6] = ["cloud", "cloud_efficiency", "cloud_ssd", "cloud_essd", "cloud_auto", "cloud_essd_entry"];
/// The system disk's size range in GiB.
const SYSTEM_DISK_GIB: std::ops::RangeInclusive<u32> = 20..=2048;
/// User data: at most this many bytes before Base64.
const USER_DATA_MAX: usize = 32 * 1024;
/// Tags per instance.
const MAX_TAGS: usize = 20;

/// What RunInstances checks of how the instance boots: one of ImageId, ImageFamily or
/// LaunchTemplateId; the system disk's category and size; user data Base64 and within its size;
/// tags numbered from 1, keys given and not in the provider's reserved prefixes.
fn boot_settings(p: &Params<'_>) -> ApiResult<()> {
    if ["ImageId", "ImageFamily", "LaunchTemplateId"].iter().all(|k| p.opt(k).is_none()) {
        return Err(ApiFailure::bad(code::MISSING_PARAMETER, "The input parameter \"ImageId\" that is mandatory for processing this request is not supplied: give ImageId, ImageFamily or LaunchTemplateId."));
    }
    if p.opt("LaunchTemplateVersion").is_some() && p.opt("LaunchTemplateId").is_none() {
        return Err(ApiFailure::bad(code::MISSING_PARAMETER, "LaunchTemplateVersion names a version of LaunchTemplateId, which is not supplied."));
    }
    if let Some(category) = p.opt("SystemDisk.Category")
        && !SYSTEM_DISK_CATEGORIES.contains(&category)
    {
        return Err(invalid("SystemDisk.Category", category));
    }
    if let Some(size) = p.parse::<u32>("SystemDisk.Size")?
        && !SYSTEM_DISK_GIB.contains(&size)
    {
        return Err(ApiFailure::bad(code::INVALID_PARAMETER, format!("SystemDisk.Size {size} is out of range: a system disk has {} to {} GiB.", SYSTEM_DISK_GIB.start(), SYSTEM_DISK_GIB.end())));
    }
    if let Some(encoded) = p.opt("UserData") {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| ApiFailure::bad(code::INVALID_PARAMETER, "UserData is not Base64."))?;
        if raw.len() > USER_DATA_MAX {
            return Err(ApiFailure::bad(code::INVALID_PARAMETER, format!("UserData holds {} bytes; at most {USER_DATA_MAX} before Base64.", raw.len())));
        }
    }
    for n in 1..=MAX_TAGS + 1 {
        let (key, value) = (p.opt(&format!("Tag.{n}.Key")), p.opt(&format!("Tag.{n}.Value")));
        match (key, value) {
            (None, None) => break,
            (None, Some(_)) => return Err(ApiFailure::bad(code::MISSING_PARAMETER, format!("Tag.{n}.Value is given without Tag.{n}.Key."))),
            (Some(_), _) if n > MAX_TAGS => return Err(ApiFailure::bad(code::INVALID_PARAMETER, format!("At most {MAX_TAGS} tags per instance."))),
            (Some(k), _) if k.len() > 128 || k.starts_with("aliyun") || k.starts_with("acs:") => return Err(invalid(&format!("Tag.{n}.Key"), k)),
            (Some(_), Some(v)) if v.len() > 128 => return Err(invalid(&format!("Tag.{n}.Value"), v)),
            _ => {}
        }
    }
    Ok(())
}

pub fn run_instances(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    if let Some(ids) = by_token(state, ctx, "RunInstances", p) {
        let ids: Vec<String> = ids.split(',').map(str::to_string).collect();
        return changed(wire::RunInstancesResponse { request_id: ctx.request_id.clone(), instance_id_sets: ids.into() }, vec![]);
    }
    let type_id = p.req("InstanceType")?;
    instance_type(type_id)?;
    let vsw = vpc::vswitch(state, p.req("VSwitchId")?)?.clone();
    let groups = vpc::security_groups_of(state, p, &vsw)?;
    let amount = p.parse::<u32>("Amount")?.unwrap_or(1);
    if !(1..=100).contains(&amount) {
        return Err(invalid("Amount", &amount.to_string()));
    }
    let spot = match p.opt("SpotStrategy").unwrap_or("NoSpot") {
        "NoSpot" => false,
        "SpotAsPriceGo" | "SpotWithPriceLimit" => true,
        other => return Err(invalid("SpotStrategy", other)),
    };
    boot_settings(p)?;
    let role = p.opt("RamRoleName").filter(|r| !r.is_empty());
    if let Some(role) = role
        && !ctx.ram_roles.iter().any(|r| r == role)
    {
        return Err(ApiFailure::of(code::INVALID_RAM_ROLE, format!("The specified parameter \"RAMRoleName\" does not exist: {role} is not a RAM role of this account (the local cloud's: {}).", ctx.ram_roles.join(", "))));
    }
    // RunInstances names a full vSwitch by its own code (the ENI actions say IpNotEnough).
    let ips = vpc::take_ips(state, ctx, &vsw.id, amount as usize).map_err(|e| {
        if e.code == code::VSWITCH_IP_NOT_ENOUGH { ApiFailure::of(code::VSWITCH_PRIVATE_IP_QUOTA, "Don't have enough private IPs in this switch.") } else { e }
    })?;
    let name = p.opt("InstanceName").unwrap_or_default();
    let mut ids = Vec::new();
    let mut pending = Vec::new();
    for ip in ips {
        let id = super::new_id(state, ctx, "i");
        let eni_id = super::new_id(state, ctx, "eni");
        let mac = eni::new_mac(state, ctx);
        state.enis.insert(
            eni_id.clone(),
            NetworkInterface {
                id: eni_id.clone(),
                kind: EniKind::Primary,
                status: EniStatus::InUse,
                mac,
                vpc_id: vsw.vpc_id.clone(),
                vswitch_id: vsw.id.clone(),
                zone_id: vsw.zone_id.clone(),
                security_group_ids: groups.clone(),
                instance_id: Some(id.clone()),
                trunk_eni_id: None,
                vlan_id: None,
                primary_ip: ip,
                secondary_ips: Vec::new(),
                ipv6_addresses: Vec::new(),
                description: String::new(),
            },
        );
        state.instances.insert(
            id.clone(),
            Instance {
                id: id.clone(),
                name: if name.is_empty() { id.clone() } else { name.to_string() },
                instance_type: type_id.to_string(),
                zone_id: vsw.zone_id.clone(),
                vpc_id: vsw.vpc_id.clone(),
                vswitch_id: vsw.id.clone(),
                status: InstanceStatus::Pending,
                primary_ip: ip,
                primary_eni_id: eni_id,
                security_group_ids: groups.clone(),
                spot,
            },
        );
        if let Some(role) = role {
            state.instance_roles.insert(id.clone(), role.to_string());
        }
        pending.push(Pending::Instance(id.clone()));
        ids.push(id);
    }
    remember_token(state, ctx, "RunInstances", p, &ids.join(","));
    vpc::refresh_available(state, ctx);
    changed(wire::RunInstancesResponse { request_id: ctx.request_id.clone(), instance_id_sets: ids.into() }, pending)
}

pub fn delete_instances(state: &mut State, ctx: &Ctx, p: &Params<'_>, first_key: &str) -> ApiResult<Outcome> {
    let ids = if first_key == "InstanceId" { vec![p.req("InstanceId")?.to_string()] } else { p.list("InstanceId") };
    if ids.is_empty() {
        return Err(ApiFailure::bad(code::MISSING_PARAMETER, "The input parameter \"InstanceId.1\" that is mandatory for processing this request is not supplied."));
    }
    let force = p.bool("Force")?;
    for id in &ids {
        let i = instance(state, id)?;
        if i.status == InstanceStatus::Running && !force {
            return Err(ApiFailure::forbidden(code::INCORRECT_INSTANCE_STATUS, format!("The instance {id} is Running; stop it first or pass Force=true.")));
        }
    }
    for id in &ids {
        state.instances.remove(id);
        state.instance_roles.remove(id);
        state.enis.retain(|_, e| !(e.kind == EniKind::Primary && e.instance_id.as_deref() == Some(id.as_str())));
        for e in state.enis.values_mut().filter(|e| e.instance_id.as_deref() == Some(id.as_str())) {
            eni::finish_detach(e);
        }
        for d in state.disks.values_mut().filter(|d| d.instance_id.as_deref() == Some(id.as_str())) {
            d.status = DiskStatus::Available;
            d.instance_id = None;
            d.device = None;
        }
    }
    vpc::refresh_available(state, ctx);
    changed(super::request_id(ctx), vec![])
}

pub fn describe_instances(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let ids = p.json_list("InstanceIds")?;
    let (vpc_id, vsw, zone, status) = (p.opt("VpcId"), p.opt("VSwitchId"), p.opt("ZoneId"), p.opt("Status"));
    let all: Vec<wire::InstanceItem> = state
        .instances
        .values()
        .filter(|i| {
            (ids.is_empty() || ids.contains(&i.id))
                && vpc_id.is_none_or(|v| v == i.vpc_id)
                && vsw.is_none_or(|v| v == i.vswitch_id)
                && zone.is_none_or(|v| v == i.zone_id)
                && status.is_none_or(|v| v == i.status.as_str())
        })
        .map(|i| item(state, i))
        .collect();
    let (items, next) = page(&all, p, 10, 100)?;
    reply(wire::DescribeInstancesResponse { request_id: ctx.request_id.clone(), total_count: all.len() as u64, next_token: next, instances: items.into() })
}

fn item(state: &State, i: &Instance) -> wire::InstanceItem {
    let t = catalogue::instance_type(&i.instance_type);
    let nics: Vec<wire::InstanceNetworkInterface> = state
        .enis
        .values()
        .filter(|e| e.instance_id.as_deref() == Some(i.id.as_str()) && e.kind != EniKind::Member && e.status == EniStatus::InUse)
        .map(|e| wire::InstanceNetworkInterface {
            network_interface_id: e.id.clone(),
            mac_address: e.mac.clone(),
            primary_ip_address: e.primary_ip,
            kind: e.kind.as_str().to_string(),
        })
        .collect();
    wire::InstanceItem {
        instance_id: i.id.clone(),
        instance_name: i.name.clone(),
        instance_type: i.instance_type.clone(),
        zone_id: i.zone_id.clone(),
        status: i.status.as_str().to_string(),
        cpu: t.as_ref().map(|t| t.vcpu).unwrap_or_default(),
        memory: t.as_ref().map(|t| t.memory_mib).unwrap_or_default(),
        vpc_attributes: wire::VpcAttributes { vpc_id: i.vpc_id.clone(), vswitch_id: i.vswitch_id.clone(), private_ip_address: vec![i.primary_ip].into() },
        security_group_ids: i.security_group_ids.clone().into(),
        network_interfaces: nics.into(),
        spot_strategy: if i.spot { "SpotAsPriceGo" } else { "NoSpot" }.into(),
    }
}

#[cfg(test)]
mod boot_tests {
    use std::collections::BTreeMap;

    use base64::Engine as _;

    use super::*;

    fn check(pairs: &[(&str, String)]) -> Result<(), String> {
        let params: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        boot_settings(&Params(&params)).map_err(|f| format!("{}: {}", f.code, f.message))
    }

    /// RunInstances needs what the instance boots, and checks its disk, user data and tags.
    #[test]
    fn run_instances_needs_an_image_and_checks_disk_user_data_and_tags() {
        let image = ("ImageId", "m-1".to_string());
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        check(&[image.clone(), ("SystemDisk.Category", "cloud_essd".into()), ("SystemDisk.Size", "40".into()), ("UserData", b64("#!/bin/sh\necho boot\n")), ("Tag.1.Key", "berth:pool".into()), ("Tag.1.Value", "p".into())]).unwrap();
        check(&[("ImageFamily", "f".into())]).unwrap();
        check(&[("LaunchTemplateId", "lt-1".into()), ("LaunchTemplateVersion", "2".into())]).unwrap();
        let refused = |pairs: &[(&str, String)], says: &str| {
            let err = check(pairs).unwrap_err();
            assert!(err.contains(says), "{err} should name {says}");
        };
        refused(&[], "MissingParameter: The input parameter \"ImageId\"");
        refused(&[("ImageId", "m-1".into()), ("LaunchTemplateVersion", "2".into())], "LaunchTemplateId");
        refused(&[image.clone(), ("SystemDisk.Category", "floppy".into())], "floppy");
        refused(&[image.clone(), ("SystemDisk.Size", "10".into())], "20 to 2048 GiB");
        refused(&[image.clone(), ("UserData", "not base64!".into())], "not Base64");
        refused(&[image.clone(), ("UserData", b64(&"x".repeat(32 * 1024 + 1)))], "32768");
        refused(&[image.clone(), ("Tag.1.Value", "v".into())], "Tag.1.Key");
        refused(&[image.clone(), ("Tag.1.Key", "acs:reserved".into())], "acs:reserved");
        let mut many: BTreeMap<String, String> = (1..=21).map(|n| (format!("Tag.{n}.Key"), format!("k{n}"))).collect();
        many.insert("ImageId".into(), "m-1".into());
        let err = boot_settings(&Params(&many)).unwrap_err();
        assert!(err.message.contains("At most 20 tags"), "{}", err.message);
    }
}
