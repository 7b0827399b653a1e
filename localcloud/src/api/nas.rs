//! NAS file systems and their mount targets.

use berth_cloud::error::code;
use berth_cloud::model::NasFileSystem;
use berth_cloud::wire;

use super::params::invalid;
use super::{ApiFailure, ApiResult, Ctx, Outcome, Params, by_token, changed, remember_token, reply, vpc};
use crate::state::State;

fn file_system<'s>(state: &'s State, id: &str) -> ApiResult<&'s NasFileSystem> {
    state
        .file_systems
        .get(id)
        .ok_or_else(|| ApiFailure::not_found(code::INVALID_FILE_SYSTEM_ID, format!("The specified file system \"{id}\" does not exist.")))
}

pub fn create_file_system(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let id = match by_token(state, ctx, "CreateFileSystem", p) {
        Some(id) => id,
        None => {
            let protocol = p.req("ProtocolType")?;
            if protocol != "NFS" {
                return Err(invalid("ProtocolType", protocol));
            }
            let zone = p.req("ZoneId")?;
            vpc::zone(ctx, zone)?;
            state.next_serial += 1;
            let id = format!("{}{:06x}", &ctx.entropy[..ctx.entropy.len().min(4)], state.next_serial);
            state.file_systems.insert(
                id.clone(),
                NasFileSystem { id: id.clone(), zone_id: zone.to_string(), vpc_id: String::new(), protocol: "NFS".into(), mount_target: String::new(), capacity_gib: 10_240 },
            );
            remember_token(state, ctx, "CreateFileSystem", p, &id);
            id
        }
    };
    changed(wire::CreateFileSystemResponse { request_id: ctx.request_id.clone(), file_system_id: id }, vec![])
}

pub fn create_mount_target(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let fs = file_system(state, p.req("FileSystemId")?)?.clone();
    let vpc_id = p.req("VpcId")?;
    vpc::vpc(state, vpc_id)?;
    let vsw = vpc::vswitch(state, p.req("VSwitchId")?)?.clone();
    if vsw.vpc_id != vpc_id {
        return Err(ApiFailure::forbidden(code::VPC_MISMATCH, format!("vSwitch {} is not in VPC {vpc_id}.", vsw.id)));
    }
    // Every file system here is general-purpose, whose mount targets need a permission group;
    // the account's default VPC group is the only one (no CreateAccessGroup here).
    let group = p.req("AccessGroupName")?;
    if group != wire::DEFAULT_VPC_ACCESS_GROUP {
        return Err(ApiFailure::not_found(
            code::INVALID_ACCESS_GROUP,
            format!("The specified access group \"{group}\" does not exist; use {}.", wire::DEFAULT_VPC_ACCESS_GROUP),
        ));
    }
    let domain = format!("{}-{}.{}.nas.localcloud", fs.id, vsw.id.trim_start_matches("vsw-"), fs.zone_id);
    let entry = state.file_systems.get_mut(&fs.id).expect("checked above");
    entry.vpc_id = vpc_id.to_string();
    entry.mount_target = domain.clone();
    changed(wire::CreateMountTargetResponse { request_id: ctx.request_id.clone(), mount_target_domain: domain }, vec![])
}

pub fn describe_file_systems(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let wanted = p.opt("FileSystemId");
    let items: Vec<wire::FileSystemItem> = state
        .file_systems
        .values()
        .filter(|f| wanted.is_none_or(|w| w == f.id))
        .map(|f| wire::FileSystemItem {
            file_system_id: f.id.clone(),
            protocol_type: f.protocol.clone(),
            zone_id: f.zone_id.clone(),
            capacity: f.capacity_gib,
            mount_targets: if f.mount_target.is_empty() {
                Vec::new().into()
            } else {
                vec![wire::MountTargetItem { mount_target_domain: f.mount_target.clone(), vpc_id: f.vpc_id.clone(), vsw_id: String::new(), status: "Active".into() }].into()
            },
        })
        .collect();
    let (total, items) = super::page_number(items, p, 10, 100)?;
    reply(wire::DescribeFileSystemsResponse { request_id: ctx.request_id.clone(), total_count: total, file_systems: items.into() })
}

pub fn delete_file_system(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let fs = file_system(state, p.req("FileSystemId")?)?.clone();
    state.file_systems.remove(&fs.id);
    changed(super::request_id(ctx), vec![])
}
