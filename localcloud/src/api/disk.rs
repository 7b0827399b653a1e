//! Cloud disks.

use berth_cloud::error::code;
use berth_cloud::model::{Disk, DiskStatus, InstanceStatus};
use berth_cloud::wire;

use super::params::invalid;
use super::{ApiFailure, ApiResult, Ctx, Outcome, Params, Pending, by_token, changed, instance, page, remember_token, reply, vpc};
use crate::state::State;

pub fn disk<'s>(state: &'s State, id: &str) -> ApiResult<&'s Disk> {
    state.disks.get(id).ok_or_else(|| ApiFailure::not_found(code::INVALID_DISK_ID, format!("The specified disk \"{id}\" does not exist.")))
}

/// Size limits in GiB of a category and performance level, as the service publishes them.
pub fn size_limits(category: &str, level: &str) -> Option<(u64, u64)> {
    match (category, level) {
        ("cloud_essd", "PL0") => Some((1, 65_536)),
        ("cloud_essd", "PL1") => Some((20, 65_536)),
        ("cloud_essd", "PL2") => Some((461, 65_536)),
        ("cloud_essd", "PL3") => Some((1_261, 65_536)),
        ("cloud_ssd" | "cloud_efficiency", "") => Some((20, 32_768)),
        ("cloud_auto", "") => Some((1, 65_536)),
        _ => None,
    }
}

fn check_size(category: &str, level: &str, size: u64) -> ApiResult<()> {
    let (min, max) = size_limits(category, level).unwrap_or((1, 0));
    if size < min || size > max {
        let level_note = if level.is_empty() { String::new() } else { format!(" {level}") };
        return Err(ApiFailure::bad(code::INVALID_DISK_SIZE, format!("Size {size} GiB is outside {min}..={max} GiB for {category}{level_note}.")));
    }
    Ok(())
}

pub fn create(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let id = match by_token(state, "CreateDisk", p) {
        Some(id) => id,
        None => {
            let zone = p.req("ZoneId")?;
            vpc::zone(ctx, zone)?;
            let category = p.opt("DiskCategory").unwrap_or("cloud_efficiency");
            if !matches!(category, "cloud_essd" | "cloud_ssd" | "cloud_efficiency" | "cloud_auto") {
                return Err(ApiFailure::bad(
                    code::INVALID_DISK_CATEGORY,
                    format!("DiskCategory \"{category}\" is not supported; use cloud_essd, cloud_ssd, cloud_efficiency or cloud_auto."),
                ));
            }
            let level = if category == "cloud_essd" { p.opt("PerformanceLevel").unwrap_or("PL1") } else { "" };
            if category == "cloud_essd" && !matches!(level, "PL0" | "PL1" | "PL2" | "PL3") {
                return Err(invalid("PerformanceLevel", level));
            }
            let size = p.req_parse::<u64>("Size")?;
            check_size(category, level, size)?;
            let id = super::new_id(state, ctx, "d");
            let serial = id.trim_start_matches("d-").to_string();
            state.disks.insert(
                id.clone(),
                Disk {
                    id: id.clone(),
                    name: p.opt("DiskName").unwrap_or_default().to_string(),
                    zone_id: zone.to_string(),
                    category: category.to_string(),
                    performance_level: level.to_string(),
                    size_gib: size,
                    status: DiskStatus::Available,
                    instance_id: None,
                    serial,
                    device: None,
                    system: false,
                },
            );
            remember_token(state, "CreateDisk", p, &id);
            id
        }
    };
    changed(wire::CreateDiskResponse { request_id: ctx.request_id.clone(), disk_id: id }, vec![])
}

pub fn attach(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let d = disk(state, p.req("DiskId")?)?.clone();
    let inst = instance::instance(state, p.req("InstanceId")?)?.clone();
    if !matches!(inst.status, InstanceStatus::Running | InstanceStatus::Stopped) {
        return Err(ApiFailure::forbidden(code::INCORRECT_INSTANCE_STATUS, format!("The instance {} is {}; wait until it is Running.", inst.id, inst.status.as_str())));
    }
    if d.status != DiskStatus::Available {
        let holder = d.instance_id.as_deref().map(|i| format!(" (attached to {i})")).unwrap_or_default();
        return Err(ApiFailure::forbidden(code::INCORRECT_DISK_STATUS, format!("The disk {} is {}{holder}; it must be Available to attach.", d.id, d.status.as_str())));
    }
    if d.zone_id != inst.zone_id {
        return Err(ApiFailure::forbidden(code::ZONE_MISMATCH, format!("The disk {} is in {} but the instance {} is in {}.", d.id, d.zone_id, inst.id, inst.zone_id)));
    }
    let t = instance::instance_type(&inst.instance_type)?;
    let held: Vec<&Disk> = state.disks.values().filter(|x| x.instance_id.as_deref() == Some(inst.id.as_str())).collect();
    if held.len() as u32 >= t.disk_quota {
        return Err(ApiFailure::forbidden(code::DISK_LIMIT, format!("The instance {} of type {} already holds {} of its {} data disks.", inst.id, t.id, held.len(), t.disk_quota)));
    }
    // The guest names data disks vdb, vdc, … in attach order.
    let taken: Vec<String> = held.iter().filter_map(|x| x.device.clone()).collect();
    let device = (b'b'..=b'z').map(|c| format!("/dev/vd{}", c as char)).find(|d| !taken.contains(d));
    let entry = state.disks.get_mut(&d.id).expect("checked above");
    entry.status = DiskStatus::Attaching;
    entry.instance_id = Some(inst.id.clone());
    entry.device = device;
    changed(super::request_id(ctx), vec![Pending::Disk(d.id)])
}

pub fn detach(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let d = disk(state, p.req("DiskId")?)?.clone();
    let instance_id = p.req("InstanceId")?;
    instance::instance(state, instance_id)?;
    if d.status != DiskStatus::InUse || d.instance_id.as_deref() != Some(instance_id) {
        return Err(ApiFailure::forbidden(code::INCORRECT_DISK_STATUS, format!("The disk {} is {} and not attached to {instance_id}.", d.id, d.status.as_str())));
    }
    state.disks.get_mut(&d.id).expect("checked above").status = DiskStatus::Detaching;
    changed(super::request_id(ctx), vec![Pending::Disk(d.id)])
}

pub fn delete(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let d = disk(state, p.req("DiskId")?)?.clone();
    if d.status != DiskStatus::Available {
        return Err(ApiFailure::forbidden(code::INCORRECT_DISK_STATUS, format!("The disk {} is {}; detach it before deleting.", d.id, d.status.as_str())));
    }
    state.disks.remove(&d.id);
    changed(super::request_id(ctx), vec![])
}

pub fn resize(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let d = disk(state, p.req("DiskId")?)?.clone();
    let size = p.req_parse::<u64>("NewSize")?;
    if size < d.size_gib {
        return Err(ApiFailure::bad(code::DISK_SIZE_SHRINK, format!("NewSize {size} GiB is smaller than the disk's {} GiB; disks only grow.", d.size_gib)));
    }
    check_size(&d.category, &d.performance_level, size)?;
    match p.opt("Type").unwrap_or("offline") {
        "online" | "offline" => {}
        other => return Err(invalid("Type", other)),
    }
    state.disks.get_mut(&d.id).expect("checked above").size_gib = size;
    changed(super::request_id(ctx), vec![])
}

pub fn describe(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let ids = p.json_list("DiskIds")?;
    let (inst, zone, status) = (p.opt("InstanceId"), p.opt("ZoneId"), p.opt("Status"));
    let all: Vec<wire::DiskItem> = state
        .disks
        .values()
        .filter(|d| {
            (ids.is_empty() || ids.contains(&d.id))
                && inst.is_none_or(|v| d.instance_id.as_deref() == Some(v))
                && zone.is_none_or(|v| v == d.zone_id)
                && status.is_none_or(|v| v == d.status.as_str())
        })
        .map(wire::DiskItem::from_model)
        .collect();
    let (items, next) = page(&all, p, 10, 500)?;
    reply(wire::DescribeDisksResponse { request_id: ctx.request_id.clone(), total_count: all.len() as u64, next_token: next, disks: items.into() })
}
