//! Cloud disks.

use berth_cloud::disk::CATEGORIES;
use berth_cloud::error::code;
use berth_cloud::model::{DataDiskStock, Disk, DiskStatus, InstanceStatus, Snapshot, SnapshotStatus};
use berth_cloud::wire;

use super::params::invalid;
use super::{ApiFailure, ApiResult, Ctx, Outcome, Params, Pending, by_token, changed, instance, page, remember_token, reply, vpc};
use crate::state::State;

pub fn disk<'s>(state: &'s State, id: &str) -> ApiResult<&'s Disk> {
    state.disks.get(id).ok_or_else(|| ApiFailure::not_found(code::INVALID_DISK_ID, format!("The specified disk \"{id}\" does not exist.")))
}

/// Size limits in GiB of a category and performance level, as the service publishes them.
pub fn size_limits(category: &str, level: &str) -> Option<(u64, u64)> {
    berth_cloud::disk::published_size_limits_gib(category, level).map(|(min, max)| (min as u64, max as u64))
}

/// The size limits of a category whatever its level (an ESSD's smallest is PL0's).
fn category_limits(category: &str) -> (u64, u64) {
    size_limits(category, if category == "cloud_essd" { "PL0" } else { "" }).unwrap_or((1, 0))
}

/// The GiB of `category` the zone has left to sell: its stock less its data disks of that category.
pub fn stock_left_gib(state: &State, ctx: &Ctx, zone: &str, category: &str) -> u64 {
    let used: u64 = state.disks.values().filter(|d| !d.system && d.zone_id == zone && d.category == category).map(|d| d.size_gib).sum();
    ctx.disk_stock.gib(zone, category).saturating_sub(used)
}

/// Refuses `more_gib` of `category` in the zone beyond what it has left, as the service does.
fn take_stock(state: &State, ctx: &Ctx, zone: &str, category: &str, more_gib: u64) -> ApiResult<()> {
    let left = stock_left_gib(state, ctx, zone, category);
    if more_gib > left {
        return Err(ApiFailure::of(
            code::NO_STOCK,
            format!("The zone {zone} has {left} GiB of {category} left and {more_gib} GiB more were asked: sold out; try another category or zone, or a smaller disk."),
        ));
    }
    Ok(())
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
    let id = match by_token(state, ctx, "CreateDisk", p) {
        Some(id) => id,
        None => {
            let zone = p.req("ZoneId")?;
            vpc::zone(ctx, zone)?;
            let category = p.opt("DiskCategory").unwrap_or("cloud_efficiency");
            if !CATEGORIES.contains(&category) {
                return Err(ApiFailure::bad(
                    code::INVALID_DISK_CATEGORY,
                    format!("DiskCategory \"{category}\" is not supported; use cloud_essd, cloud_ssd, cloud_efficiency or cloud_auto."),
                ));
            }
            let level = if category == "cloud_essd" { p.opt("PerformanceLevel").unwrap_or("PL1") } else { "" };
            if category == "cloud_essd" && !matches!(level, "PL0" | "PL1" | "PL2" | "PL3") {
                return Err(invalid("PerformanceLevel", level));
            }
            // A disk from a snapshot takes the snapshot's data, so at least its source's size.
            let source = match p.opt("SnapshotId") {
                Some(sid) => {
                    let snap = snapshot(state, sid)?;
                    if snap.status != SnapshotStatus::Accomplished {
                        return Err(ApiFailure::of(code::SNAPSHOT_NOT_READY, format!("The snapshot {sid} is {}; wait until it is accomplished.", snap.status.as_str())));
                    }
                    Some(snap.clone())
                }
                None => None,
            };
            let size = match (&source, p.parse::<u64>("Size")?) {
                (Some(snap), Some(size)) if size < snap.source_disk_size_gib => {
                    return Err(ApiFailure::bad(
                        code::INVALID_DISK_SIZE,
                        format!("Size {size} GiB is smaller than the {} GiB of snapshot {}; give at least that.", snap.source_disk_size_gib, snap.id),
                    ));
                }
                (_, Some(size)) => size,
                (Some(snap), None) => snap.source_disk_size_gib,
                (None, None) => p.req_parse::<u64>("Size")?,
            };
            check_size(category, level, size)?;
            take_stock(state, ctx, zone, category, size)?;
            let description = p.opt("Description").unwrap_or_default();
            if description.chars().count() > 256 || description.starts_with("http://") || description.starts_with("https://") {
                return Err(ApiFailure::bad(code::INVALID_PARAMETER, format!("Description \"{description}\" is malformed: at most 256 characters, not starting with \"http://\" or \"https://\".")));
            }
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
                    source_snapshot_id: source.map(|s| s.id),
                    description: description.to_string(),
                },
            );
            remember_token(state, ctx, "CreateDisk", p, &id);
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
    take_stock(state, ctx, &d.zone_id, &d.category, size - d.size_gib)?;
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

/// DescribeAvailableResource of data disks bought alone (`DestinationResource=DataDisk`,
/// `ResourceType=disk`): per zone and category, `Available` while the stock left holds the
/// category's smallest disk, with `Max` the largest disk that fits now.
pub fn describe_available_resource(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    match p.req("DestinationResource")? {
        "DataDisk" => {}
        other => {
            return Err(ApiFailure::bad(
                code::INVALID_PARAMETER,
                format!("DestinationResource \"{other}\" is not served by the local cloud; it reports data disks only (DestinationResource=DataDisk, ResourceType=disk)."),
            ));
        }
    }
    match p.opt("ResourceType") {
        Some("disk") => {}
        other => {
            return Err(ApiFailure::bad(
                code::INVALID_PARAMETER,
                format!("ResourceType \"{}\" needs an instance type the local cloud does not model; give ResourceType=disk for data disks bought alone.", other.unwrap_or("instance")),
            ));
        }
    }
    let zones: Vec<&String> = match p.opt("ZoneId") {
        Some(z) => {
            vpc::zone(ctx, z)?;
            ctx.zones.iter().filter(|x| *x == z).collect()
        }
        None => ctx.zones.iter().collect(),
    };
    let categories: Vec<&str> = match p.opt("DataDiskCategory") {
        Some(c) if CATEGORIES.contains(&c) => vec![c],
        Some(c) => return Err(ApiFailure::bad(code::INVALID_DISK_CATEGORY, format!("DataDiskCategory \"{c}\" is not supported; use one of {}.", CATEGORIES.join(", ")))),
        None => CATEGORIES.to_vec(),
    };
    let available_zones: Vec<wire::AvailableZoneItem> = zones
        .into_iter()
        .map(|zone| {
            let stocks: Vec<DataDiskStock> = categories
                .iter()
                .map(|category| {
                    let (min, max) = category_limits(category);
                    let left = stock_left_gib(state, ctx, zone, category);
                    DataDiskStock { zone_id: zone.clone(), category: category.to_string(), available: left >= min, min_gib: min, max_gib: max.min(left) }
                })
                .collect();
            wire::AvailableZoneItem::from_data_disks(&ctx.region_id, zone, &stocks)
        })
        .collect();
    reply(wire::DescribeAvailableResourceResponse { request_id: ctx.request_id.clone(), available_zones: available_zones.into() })
}

pub fn modify_spec(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let d = disk(state, p.req("DiskId")?)?.clone();
    let level = p.req("PerformanceLevel")?;
    if d.category != "cloud_essd" {
        return Err(ApiFailure::bad(code::INVALID_DISK_CATEGORY, format!("The disk {} is {}; only cloud_essd disks have performance levels.", d.id, d.category)));
    }
    if !matches!(level, "PL0" | "PL1" | "PL2" | "PL3") {
        return Err(ApiFailure::bad(code::INVALID_PERFORMANCE_LEVEL, format!("PerformanceLevel \"{level}\" is not one of PL0, PL1, PL2, PL3.")));
    }
    let (min, _) = size_limits(&d.category, level).unwrap_or((1, 0));
    if d.size_gib < min {
        return Err(ApiFailure::bad(
            code::INVALID_PERFORMANCE_LEVEL,
            format!("The disk {} has {} GiB; {level} needs at least {min} GiB: resize it first.", d.id, d.size_gib),
        ));
    }
    state.disks.get_mut(&d.id).expect("checked above").performance_level = level.to_string();
    changed(super::request_id(ctx), vec![])
}

pub fn snapshot<'s>(state: &'s State, id: &str) -> ApiResult<&'s Snapshot> {
    state.snapshots.get(id).ok_or_else(|| ApiFailure::not_found(code::INVALID_SNAPSHOT_ID, format!("The specified snapshot \"{id}\" does not exist.")))
}

/// A SnapshotName as the service takes it: 2 to 128 characters, starting with a letter, of letters,
/// digits, `.`, `_`, `-` and `:`, and not starting with `auto` (the prefix of automatic snapshots)
/// or `http://`/`https://`.
fn check_snapshot_name(name: &str) -> ApiResult<()> {
    let ok = (2..=128).contains(&name.chars().count())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
        && !name.starts_with("auto");
    if !ok {
        return Err(ApiFailure::bad(
            code::INVALID_PARAMETER,
            format!("SnapshotName \"{name}\" is malformed: 2 to 128 letters, digits, \".\", \"_\", \"-\" or \":\", starting with a letter and not with \"auto\"."),
        ));
    }
    Ok(())
}

pub fn create_snapshot(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    if let Some(id) = by_token(state, ctx, "CreateSnapshot", p) {
        return reply(wire::CreateSnapshotResponse { request_id: ctx.request_id.clone(), snapshot_id: id });
    }
    let d = disk(state, p.req("DiskId")?)?.clone();
    if !matches!(d.status, DiskStatus::Available | DiskStatus::InUse) {
        return Err(ApiFailure::forbidden(code::INCORRECT_DISK_STATUS, format!("The disk {} is {}; a snapshot needs it Available or In_use.", d.id, d.status.as_str())));
    }
    let name = p.opt("SnapshotName").unwrap_or_default();
    if !name.is_empty() {
        check_snapshot_name(name)?;
    }
    let held = state.snapshots.values().filter(|s| s.source_disk_id == d.id).count();
    if held >= ctx.snapshot_quota as usize {
        return Err(ApiFailure::of(code::SNAPSHOT_QUOTA, format!("The disk {} already has {held} snapshots, its quota; delete some first.", d.id)));
    }
    let id = super::new_id(state, ctx, "s");
    state.snapshots.insert(
        id.clone(),
        Snapshot {
            id: id.clone(),
            name: name.to_string(),
            source_disk_id: d.id.clone(),
            source_disk_size_gib: d.size_gib,
            status: SnapshotStatus::Progressing,
            progress_percent: 0,
            creation_time: berth_cloud::signing::format_timestamp(ctx.now_secs),
        },
    );
    remember_token(state, ctx, "CreateSnapshot", p, &id);
    changed(wire::CreateSnapshotResponse { request_id: ctx.request_id.clone(), snapshot_id: id.clone() }, vec![Pending::Snapshot(id)])
}

pub fn describe_snapshots(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let ids = p.json_list("SnapshotIds")?;
    let (disk_id, name) = (p.opt("DiskId"), p.opt("SnapshotName"));
    let status = match p.opt("Status").unwrap_or("all") {
        "all" => None,
        s @ ("progressing" | "accomplished" | "failed") => Some(SnapshotStatus::parse_open(s)),
        other => return Err(invalid("Status", other)),
    };
    let all: Vec<wire::SnapshotItem> = state
        .snapshots
        .values()
        .filter(|s| {
            (ids.is_empty() || ids.contains(&s.id))
                && disk_id.is_none_or(|v| v == s.source_disk_id)
                && name.is_none_or(|v| v == s.name)
                && status.is_none_or(|v| v == s.status)
        })
        .map(|s| wire::SnapshotItem::from_model(s, state.disks.values().any(|d| d.source_snapshot_id.as_deref() == Some(s.id.as_str()))))
        .collect();
    let (items, next) = page(&all, p, 10, 100)?;
    reply(wire::DescribeSnapshotsResponse { request_id: ctx.request_id.clone(), total_count: all.len() as u64, next_token: next, snapshots: items.into() })
}

pub fn delete_snapshot(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let s = snapshot(state, p.req("SnapshotId")?)?.clone();
    let force = p.bool("Force")?;
    if let Some(d) = state.disks.values().find(|d| d.source_snapshot_id.as_deref() == Some(s.id.as_str()))
        && !force
    {
        return Err(ApiFailure::of(code::SNAPSHOT_CREATED_DISK, format!("The snapshot {} was used to create the disk {}; delete it with Force=true.", s.id, d.id)));
    }
    state.snapshots.remove(&s.id);
    changed(super::request_id(ctx), vec![])
}
