//! The API's actions as pure state transitions: parameters in, a response body (the real shape)
//! or an error (the real code and HTTP status) out. No HTTP, no clock, no randomness here: the
//! server passes what it needs in [`Ctx`].

mod disk;
mod eni;
mod instance;
mod nas;
mod params;
mod vpc;

use std::collections::HashMap;

pub use params::Params;
pub use vpc::refresh_available;
use serde::Serialize;
use serde_json::Value;

use crate::state::State;

/// An error answered to the client: the service's code, a message naming the bad value and what
/// to do, and the HTTP status the service uses for that code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiFailure {
    /// A failure with `code`; a code of the table in [`berth_cloud::codes`] is answered with the
    /// table's HTTP status whatever `status` says, so the two ends never disagree.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        let status = berth_cloud::codes::fact(code).map_or(status, |f| f.status);
        ApiFailure { status, code: code.to_string(), message: message.into() }
    }
    /// A failure with `code`, answered with the status the service uses for it.
    pub fn of(code: &str, message: impl Into<String>) -> Self {
        Self::new(berth_cloud::codes::status_of(code), code, message)
    }
    pub fn bad(code: &str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }
    pub fn forbidden(code: &str, message: impl Into<String>) -> Self {
        Self::new(403, code, message)
    }
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(404, code, message)
    }
}

pub type ApiResult<T> = Result<T, ApiFailure>;

/// What a transition needs from outside: region, zones, knobs, and fresh randomness.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub region_id: String,
    pub zones: Vec<String>,
    pub request_id: String,
    /// Random hex used in new IDs and MACs, so two local clouds never hand out the same ones.
    pub entropy: String,
    /// Optional cap of usable IPs per vSwitch, to simulate exhaustion.
    pub vswitch_ip_limit: HashMap<String, u64>,
    /// The time of the request, seconds since the Unix epoch (creation times).
    pub now_secs: u64,
    /// Manual snapshots a disk may hold.
    pub snapshot_quota: u32,
    /// The data disk space each zone and category has to sell.
    pub disk_stock: crate::faults::DiskStock,
    /// The account's RAM roles: those RunInstances' `RamRoleName` may name.
    pub ram_roles: Vec<String>,
}

/// A transition the control plane completes later (attach and detach take time on a real cloud).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Instance(String),
    Eni(String),
    Disk(String),
    /// A snapshot whose data is copied: progressing → accomplished.
    Snapshot(String),
}

/// The answer of one action.
#[derive(Debug, Default)]
pub struct Outcome {
    pub body: Value,
    pub pending: Vec<Pending>,
    /// Whether the state changed (and must be persisted and converged).
    pub mutated: bool,
}

fn reply(body: impl Serialize) -> ApiResult<Outcome> {
    let body = serde_json::to_value(body).map_err(|e| ApiFailure::new(500, berth_cloud::error::code::INTERNAL_ERROR, e.to_string()))?;
    Ok(Outcome { body, pending: Vec::new(), mutated: false })
}

fn changed(body: impl Serialize, pending: Vec<Pending>) -> ApiResult<Outcome> {
    let mut out = reply(body)?;
    out.pending = pending;
    out.mutated = true;
    Ok(out)
}

fn request_id(ctx: &Ctx) -> berth_cloud::wire::RequestIdOnly {
    berth_cloud::wire::RequestIdOnly { request_id: ctx.request_id.clone() }
}

/// Runs one action against the state.
pub fn dispatch(state: &mut State, ctx: &Ctx, action: &str, p: &Params<'_>) -> ApiResult<Outcome> {
    match action {
        "CreateVpc" => vpc::create_vpc(state, ctx, p),
        "DescribeVpcs" => vpc::describe_vpcs(state, ctx, p),
        "CreateVSwitch" => vpc::create_vswitch(state, ctx, p),
        "DescribeVSwitches" => vpc::describe_vswitches(state, ctx, p),
        "CreateSecurityGroup" => vpc::create_security_group(state, ctx, p),
        "DeleteSecurityGroup" => vpc::delete_security_group(state, ctx, p),
        "AuthorizeSecurityGroup" => vpc::change_rule(state, ctx, p, berth_cloud::model::Direction::Ingress, true),
        "AuthorizeSecurityGroupEgress" => vpc::change_rule(state, ctx, p, berth_cloud::model::Direction::Egress, true),
        "RevokeSecurityGroup" => vpc::change_rule(state, ctx, p, berth_cloud::model::Direction::Ingress, false),
        "RevokeSecurityGroupEgress" => vpc::change_rule(state, ctx, p, berth_cloud::model::Direction::Egress, false),
        "DescribeSecurityGroupAttribute" => vpc::describe_security_group_attribute(state, ctx, p),
        "DescribeSecurityGroups" => vpc::describe_security_groups(state, ctx, p),
        "DescribeInstanceTypes" => instance::describe_instance_types(ctx, p),
        "RunInstances" => instance::run_instances(state, ctx, p),
        "DeleteInstances" => instance::delete_instances(state, ctx, p, "InstanceId.1"),
        "DeleteInstance" => instance::delete_instances(state, ctx, p, "InstanceId"),
        "DescribeInstances" => instance::describe_instances(state, ctx, p),
        "CreateNetworkInterface" => eni::create(state, ctx, p),
        "AttachNetworkInterface" => eni::attach(state, ctx, p),
        "DetachNetworkInterface" => eni::detach(state, ctx, p),
        "DeleteNetworkInterface" => eni::delete(state, ctx, p),
        "ModifyNetworkInterfaceAttribute" => eni::modify_attribute(state, ctx, p),
        "DescribeNetworkInterfaces" => eni::describe(state, ctx, p),
        "AssignPrivateIpAddresses" => eni::assign_private_ips(state, ctx, p),
        "UnassignPrivateIpAddresses" => eni::unassign_private_ips(state, ctx, p),
        "AssignIpv6Addresses" => eni::assign_ipv6(state, ctx, p),
        "UnassignIpv6Addresses" => eni::unassign_ipv6(state, ctx, p),
        "CreateDisk" => disk::create(state, ctx, p),
        "AttachDisk" => disk::attach(state, ctx, p),
        "DetachDisk" => disk::detach(state, ctx, p),
        "DeleteDisk" => disk::delete(state, ctx, p),
        "ResizeDisk" => disk::resize(state, ctx, p),
        "DescribeDisks" => disk::describe(state, ctx, p),
        "DescribeAvailableResource" => disk::describe_available_resource(state, ctx, p),
        "ModifyDiskSpec" => disk::modify_spec(state, ctx, p),
        "CreateSnapshot" => disk::create_snapshot(state, ctx, p),
        "DescribeSnapshots" => disk::describe_snapshots(state, ctx, p),
        "DeleteSnapshot" => disk::delete_snapshot(state, ctx, p),
        "CreateFileSystem" => nas::create_file_system(state, ctx, p),
        "CreateMountTarget" => nas::create_mount_target(state, ctx, p),
        "DescribeFileSystems" => nas::describe_file_systems(state, ctx, p),
        "DeleteFileSystem" => nas::delete_file_system(state, ctx, p),
        _ => Err(ApiFailure::not_found(
            berth_cloud::error::code::INVALID_ACTION,
            format!("The specified action \"{action}\" is not supported; check the Action parameter."),
        )),
    }
}

/// Every action [`dispatch`] serves. The metrics label calls with these names only, so a caller
/// cannot grow the label set with made-up actions.
pub const ACTIONS: [&str; 42] = [
    "CreateVpc", "DescribeVpcs", "CreateVSwitch", "DescribeVSwitches", "CreateSecurityGroup", "DeleteSecurityGroup", "AuthorizeSecurityGroup", "AuthorizeSecurityGroupEgress",
    "RevokeSecurityGroup", "RevokeSecurityGroupEgress", "DescribeSecurityGroupAttribute", "DescribeSecurityGroups", "DescribeInstanceTypes", "RunInstances",
    "DeleteInstances", "DeleteInstance", "DescribeInstances", "CreateNetworkInterface", "AttachNetworkInterface", "DetachNetworkInterface",
    "DeleteNetworkInterface", "DescribeNetworkInterfaces", "AssignPrivateIpAddresses", "UnassignPrivateIpAddresses", "AssignIpv6Addresses",
    "UnassignIpv6Addresses", "CreateDisk", "AttachDisk", "DetachDisk", "DeleteDisk", "ResizeDisk", "DescribeDisks", "CreateFileSystem",
    "CreateMountTarget", "DescribeFileSystems", "DeleteFileSystem", "ModifyDiskSpec", "CreateSnapshot", "DescribeSnapshots", "DeleteSnapshot", "ModifyNetworkInterfaceAttribute",
    "DescribeAvailableResource",
];

/// The name an action is counted under: itself if this service serves it, else `unknown`.
pub fn action_label(action: &str) -> &'static str {
    ACTIONS.iter().find(|a| **a == action).copied().unwrap_or("unknown")
}

/// Completes a pending transition: Attaching → InUse, Detaching → Available, Pending → Running.
/// Returns whether anything changed.
pub fn complete(state: &mut State, pending: &Pending) -> bool {
    use berth_cloud::model::{DiskStatus, EniStatus, InstanceStatus};
    match pending {
        Pending::Instance(id) => match state.instances.get_mut(id) {
            Some(i) if i.status == InstanceStatus::Pending || i.status == InstanceStatus::Starting => {
                i.status = InstanceStatus::Running;
                true
            }
            _ => false,
        },
        Pending::Eni(id) => match state.enis.get_mut(id) {
            Some(e) if e.status == EniStatus::Attaching => {
                e.status = EniStatus::InUse;
                true
            }
            Some(e) if e.status == EniStatus::Detaching => {
                eni::finish_detach(e);
                true
            }
            _ => false,
        },
        Pending::Disk(id) => match state.disks.get_mut(id) {
            Some(d) if d.status == DiskStatus::Attaching => {
                d.status = DiskStatus::InUse;
                true
            }
            Some(d) if d.status == DiskStatus::Detaching => {
                d.status = DiskStatus::Available;
                d.instance_id = None;
                d.device = None;
                true
            }
            _ => false,
        },
        Pending::Snapshot(id) => match state.snapshots.get_mut(id) {
            Some(s) if s.status == berth_cloud::model::SnapshotStatus::Progressing => {
                s.status = berth_cloud::model::SnapshotStatus::Accomplished;
                s.progress_percent = 100;
                true
            }
            _ => false,
        },
    }
}

/// Every transition left unfinished (after a restart).
pub fn unfinished(state: &State) -> Vec<Pending> {
    use berth_cloud::model::{DiskStatus, EniStatus, InstanceStatus};
    let mut out = Vec::new();
    out.extend(state.instances.values().filter(|i| matches!(i.status, InstanceStatus::Pending | InstanceStatus::Starting)).map(|i| Pending::Instance(i.id.clone())));
    out.extend(state.enis.values().filter(|e| matches!(e.status, EniStatus::Attaching | EniStatus::Detaching)).map(|e| Pending::Eni(e.id.clone())));
    out.extend(state.disks.values().filter(|d| matches!(d.status, DiskStatus::Attaching | DiskStatus::Detaching)).map(|d| Pending::Disk(d.id.clone())));
    out.extend(state.snapshots.values().filter(|s| s.status == berth_cloud::model::SnapshotStatus::Progressing).map(|s| Pending::Snapshot(s.id.clone())));
    out
}

/// A new resource ID like the service's: a prefix and a unique lower-case tail.
fn new_id(state: &mut State, ctx: &Ctx, prefix: &str) -> String {
    state.next_serial += 1;
    format!("{prefix}-{}{:06x}", &ctx.entropy[..ctx.entropy.len().min(8)], state.next_serial)
}

/// How long the local cloud honours a ClientToken after the request that used it first. The
/// public ECS reference ("How to ensure idempotence", help/doc-detail/25693, and the ClientToken
/// parameter of each action) documents no validity window, only that a token is unique per
/// request and that a reuse with other parameters is refused; so this is our own choice, long
/// enough for any retry Berth makes and short enough that a token is not held for ever.
pub const CLIENT_TOKEN_VALIDITY_SECS: u64 = 24 * 3600;

/// What a request with this `Action/ClientToken` key did, while the token is still valid.
pub(crate) fn token_result<'s>(state: &'s State, ctx: &Ctx, key: &str) -> Option<&'s String> {
    // A token remembered before tokens had a time (an older state file) counts as fresh.
    let used = state.client_token_used_secs.get(key).copied().unwrap_or(ctx.now_secs);
    (ctx.now_secs < used.saturating_add(CLIENT_TOKEN_VALIDITY_SECS)).then(|| state.client_tokens.get(key)).flatten()
}

/// Remembers what the request with this key did, and forgets every token past its validity.
pub(crate) fn remember_token_key(state: &mut State, ctx: &Ctx, key: String, result: String) {
    let now = ctx.now_secs;
    let expired: Vec<String> = state
        .client_token_used_secs
        .iter()
        .filter(|(_, used)| now >= used.saturating_add(CLIENT_TOKEN_VALIDITY_SECS))
        .map(|(k, _)| k.clone())
        .collect();
    for k in expired {
        state.client_tokens.remove(&k);
        state.client_token_used_secs.remove(&k);
    }
    state.client_token_used_secs.insert(key.clone(), now);
    state.client_tokens.insert(key, result);
}

/// Idempotency by ClientToken: the resource a request with the same Action and a still-valid
/// token created.
fn by_token(state: &State, ctx: &Ctx, action: &str, p: &Params<'_>) -> Option<String> {
    let token = p.opt("ClientToken")?;
    token_result(state, ctx, &format!("{action}/{token}")).cloned()
}

fn remember_token(state: &mut State, ctx: &Ctx, action: &str, p: &Params<'_>, id: &str) {
    if let Some(token) = p.opt("ClientToken") {
        remember_token_key(state, ctx, format!("{action}/{token}"), id.to_string());
    }
}

/// One page of `items` by PageNumber and PageSize (clamped to 1..=`max`, as the VPC and NAS
/// APIs do), with the total count.
fn page_number<T>(items: Vec<T>, p: &Params<'_>, default: usize, max: usize) -> ApiResult<(u64, Vec<T>)> {
    let size = p.parse::<usize>("PageSize")?.unwrap_or(default).clamp(1, max);
    let number = p.parse::<usize>("PageNumber")?.unwrap_or(1).max(1);
    let total = items.len() as u64;
    Ok((total, items.into_iter().skip((number - 1) * size).take(size).collect()))
}

/// Paging by NextToken (an offset) and MaxResults; a MaxResults above the action's maximum is
/// clamped to it, as the service does, and 0 is refused.
fn page<T: Clone>(items: &[T], p: &Params<'_>, default: usize, max: usize) -> ApiResult<(Vec<T>, String)> {
    let size = p.parse::<usize>("MaxResults")?.unwrap_or(default);
    if size == 0 {
        return Err(ApiFailure::bad(berth_cloud::error::code::INVALID_PARAMETER, format!("MaxResults {size} is out of range; use 1 to {max}.")));
    }
    let size = size.min(max);
    let start = match p.opt("NextToken") {
        None | Some("") => 0,
        Some(t) => t.parse::<usize>().map_err(|_| ApiFailure::bad(berth_cloud::error::code::INVALID_PARAMETER, format!("NextToken \"{t}\" is not a token this service issued.")))?,
    };
    let end = (start + size).min(items.len());
    let chunk = items.get(start..end).map(<[T]>::to_vec).unwrap_or_default();
    let next = if end < items.len() { end.to_string() } else { String::new() };
    Ok((chunk, next))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn max_results_above_the_maximum_is_clamped_and_zero_refused() {
        let items: Vec<u32> = (0..30).collect();
        let params = BTreeMap::from([("MaxResults".to_string(), "5000".to_string())]);
        let (chunk, next) = page(&items, &Params(&params), 10, 20).unwrap();
        assert_eq!((chunk.len(), next.as_str()), (20, "20"));
        let params = BTreeMap::from([("MaxResults".to_string(), "0".to_string())]);
        assert!(page(&items, &Params(&params), 10, 20).is_err());
    }

    /// A ClientToken is honoured for its validity and no longer: within it a repeat returns what
    /// the first request made, after it the same token makes a new resource.
    #[test]
    fn a_client_token_expires_after_its_validity() {
        let mut ctx = Ctx { region_id: "r".into(), zones: vec!["z".into()], request_id: "R".into(), entropy: "0123456789".into(), vswitch_ip_limit: HashMap::new(), now_secs: 1_000, snapshot_quota: 256, disk_stock: Default::default(), ram_roles: vec![] };
        let mut state = State::default();
        state.vpcs.insert("vpc-1".into(), berth_cloud::model::Vpc { id: "vpc-1".into(), name: "v".into(), cidr_block: "10.0.0.0/16".parse().unwrap(), ipv6_cidr_block: None });
        let params: BTreeMap<String, String> = [("VpcId", "vpc-1"), ("ClientToken", "tok-1")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let create = |state: &mut State, ctx: &Ctx| {
            let out = dispatch(state, ctx, "CreateSecurityGroup", &Params(&params)).map_err(|f| f.message).unwrap();
            out.body["SecurityGroupId"].as_str().unwrap().to_string()
        };
        let first = create(&mut state, &ctx);
        ctx.now_secs += CLIENT_TOKEN_VALIDITY_SECS - 1;
        assert_eq!(create(&mut state, &ctx), first, "a repeat within the validity is the same request");
        assert_eq!(state.security_groups.len(), 1);
        ctx.now_secs += 1;
        let second = create(&mut state, &ctx);
        assert_ne!(second, first, "an expired token is a new request");
        assert_eq!(state.security_groups.len(), 2);
        assert_eq!(state.client_token_used_secs.len(), 1, "the expired token is forgotten");
        ctx.now_secs += 10;
        assert_eq!(create(&mut state, &ctx), second, "the token is honoured again from its new use");
    }

    /// `Permissions.N.*`, as the SDKs send rules: every rule of the call is added (or revoked)
    /// together; a bad one, a gap in N or a top-level rule beside them changes nothing and is named.
    #[test]
    fn security_group_rules_are_taken_as_permissions_n() {
        let ctx = Ctx { region_id: "r".into(), zones: vec!["z".into()], request_id: "R".into(), entropy: "0123456789".into(), vswitch_ip_limit: HashMap::new(), now_secs: 0, snapshot_quota: 256, disk_stock: Default::default(), ram_roles: vec![] };
        let mut state = State::default();
        state.security_groups.insert("sg-1".into(), berth_cloud::model::SecurityGroup { id: "sg-1".into(), ..Default::default() });
        let call = |state: &mut State, action: &str, pairs: &[(&str, &str)]| {
            let params: BTreeMap<String, String> = [("SecurityGroupId", "sg-1")].iter().chain(pairs).map(|(k, v)| (k.to_string(), v.to_string())).collect();
            dispatch(state, &ctx, action, &Params(&params)).map(|_| ()).map_err(|f| f.message)
        };
        let two = [
            ("Permissions.1.IpProtocol", "tcp"),
            ("Permissions.1.PortRange", "80/80"),
            ("Permissions.1.SourceCidrIp", "10.0.0.0/8"),
            ("Permissions.2.IpProtocol", "udp"),
            ("Permissions.2.PortRange", "53/53"),
            ("Permissions.2.Ipv6SourceCidrIp", "fd00::/8"),
            ("Permissions.2.Policy", "drop"),
            ("Permissions.2.Priority", "5"),
        ];
        call(&mut state, "AuthorizeSecurityGroup", &two).unwrap();
        let rules = state.security_groups["sg-1"].rules.clone();
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!((rules[0].ports, rules[0].peer_cidr.to_string()), (Some((80, 80)), "10.0.0.0/8".to_string()));
        assert_eq!((rules[1].ports, rules[1].peer_cidr.to_string(), rules[1].policy, rules[1].priority), (Some((53, 53)), "fd00::/8".to_string(), berth_cloud::model::Policy::Drop, 5));

        let bad_second = [("Permissions.1.IpProtocol", "tcp"), ("Permissions.1.PortRange", "22/22"), ("Permissions.2.IpProtocol", "tcp"), ("Permissions.2.PortRange", "9/1")];
        let err = call(&mut state, "AuthorizeSecurityGroup", &bad_second).unwrap_err();
        assert!(err.contains("Permissions.2.PortRange") && err.contains("9/1"), "{err}");
        let gap = [("Permissions.1.IpProtocol", "tcp"), ("Permissions.1.PortRange", "22/22"), ("Permissions.3.IpProtocol", "tcp"), ("Permissions.3.PortRange", "23/23")];
        assert!(call(&mut state, "AuthorizeSecurityGroup", &gap).unwrap_err().contains("without gaps"));
        let both = [("IpProtocol", "tcp"), ("PortRange", "22/22"), ("Permissions.1.IpProtocol", "tcp"), ("Permissions.1.PortRange", "23/23")];
        assert!(call(&mut state, "AuthorizeSecurityGroup", &both).unwrap_err().contains("beside Permissions.N"));
        assert_eq!(state.security_groups["sg-1"].rules, rules, "a refused call changed the rules");

        // The older top-level form still works, and Revoke takes Permissions.N too.
        call(&mut state, "AuthorizeSecurityGroup", &[("IpProtocol", "icmp"), ("PortRange", "-1/-1")]).unwrap();
        assert_eq!(state.security_groups["sg-1"].rules.len(), 3);
        call(&mut state, "RevokeSecurityGroup", &two).unwrap();
        let left = &state.security_groups["sg-1"].rules;
        assert_eq!((left.len(), left[0].protocol), (1, berth_cloud::model::IpProtocol::Icmp), "{left:?}");
    }

    /// CreateDisk and ResizeDisk take from a zone's stock of their category, DeleteDisk gives it
    /// back; what is left is what DescribeAvailableResource reports, SoldOut below the smallest disk.
    #[test]
    fn data_disks_draw_on_the_stock_of_their_zone_and_category() {
        let mut stock = crate::faults::DiskStock::default();
        stock.of.insert("a/cloud_ssd".into(), 100);
        let ctx = Ctx { region_id: "r".into(), zones: vec!["a".into(), "b".into()], request_id: "R".into(), entropy: "0123456789".into(), vswitch_ip_limit: HashMap::new(), now_secs: 0, snapshot_quota: 256, disk_stock: stock, ram_roles: vec![] };
        let mut state = State::default();
        let call = |state: &mut State, action: &str, pairs: &[(&str, &str)]| {
            let params: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            dispatch(state, &ctx, action, &Params(&params))
        };
        let ssd_in_a = |state: &mut State| {
            let out = call(state, "DescribeAvailableResource", &[("DestinationResource", "DataDisk"), ("ResourceType", "disk"), ("ZoneId", "a"), ("DataDiskCategory", "cloud_ssd")]).unwrap();
            let zones: berth_cloud::wire::AvailableZoneList = serde_json::from_value(out.body["AvailableZones"].clone()).unwrap();
            let all = zones.items.iter().flat_map(|z| z.data_disks().unwrap()).collect::<Vec<_>>();
            assert_eq!(all.len(), 1, "{all:?}");
            (all[0].available, all[0].min_gib, all[0].max_gib)
        };
        assert_eq!(ssd_in_a(&mut state), (true, 20, 100));
        let first = call(&mut state, "CreateDisk", &[("ZoneId", "a"), ("DiskCategory", "cloud_ssd"), ("Size", "60")]).unwrap().body["DiskId"].as_str().unwrap().to_string();
        assert_eq!(ssd_in_a(&mut state), (true, 20, 40));
        let refused = call(&mut state, "CreateDisk", &[("ZoneId", "a"), ("DiskCategory", "cloud_ssd"), ("Size", "41")]).unwrap_err();
        assert_eq!((refused.code.as_str(), refused.status), (berth_cloud::error::code::NO_STOCK, 403));
        assert!(refused.message.contains("40 GiB of cloud_ssd left"), "{}", refused.message);
        // Another category or zone has its own stock.
        call(&mut state, "CreateDisk", &[("ZoneId", "b"), ("DiskCategory", "cloud_ssd"), ("Size", "41")]).unwrap();
        call(&mut state, "CreateDisk", &[("ZoneId", "a"), ("DiskCategory", "cloud_efficiency"), ("Size", "41")]).unwrap();
        let resize = call(&mut state, "ResizeDisk", &[("DiskId", &first), ("NewSize", "101")]).unwrap_err();
        assert_eq!(resize.code, berth_cloud::error::code::NO_STOCK);
        call(&mut state, "ResizeDisk", &[("DiskId", &first), ("NewSize", "90")]).unwrap();
        assert_eq!(ssd_in_a(&mut state), (false, 20, 10), "10 GiB left hold no cloud_ssd disk");
        call(&mut state, "DeleteDisk", &[("DiskId", &first)]).unwrap();
        assert_eq!(ssd_in_a(&mut state), (true, 20, 100), "a deleted disk gives its space back");
        // Every zone and category without a filter; bad filters named.
        let out = call(&mut state, "DescribeAvailableResource", &[("DestinationResource", "DataDisk"), ("ResourceType", "disk")]).unwrap();
        let zones: berth_cloud::wire::AvailableZoneList = serde_json::from_value(out.body["AvailableZones"].clone()).unwrap();
        assert_eq!(zones.items.iter().map(|z| z.data_disks().unwrap().len()).collect::<Vec<_>>(), vec![4, 4]);
        let unknown = call(&mut state, "DescribeAvailableResource", &[("DestinationResource", "DataDisk"), ("ResourceType", "disk"), ("ZoneId", "c")]).unwrap_err();
        assert_eq!(unknown.code, berth_cloud::error::code::INVALID_ZONE_ID);
        let other = call(&mut state, "DescribeAvailableResource", &[("DestinationResource", "InstanceType"), ("ResourceType", "disk")]).unwrap_err();
        assert!(other.message.contains("\"InstanceType\""), "{}", other.message);
        let category = call(&mut state, "DescribeAvailableResource", &[("DestinationResource", "DataDisk"), ("ResourceType", "disk"), ("DataDiskCategory", "tape")]).unwrap_err();
        assert!(category.message.contains("\"tape\""), "{}", category.message);
    }

    #[test]
    fn every_counted_action_is_served_and_others_are_unknown() {
        let ctx = Ctx { region_id: "r".into(), zones: vec!["z".into()], request_id: "R".into(), entropy: "0123456789".into(), vswitch_ip_limit: HashMap::new(), now_secs: 0, snapshot_quota: 256, disk_stock: Default::default(), ram_roles: vec![] };
        let params = BTreeMap::new();
        for action in ACTIONS {
            let answer = dispatch(&mut State::default(), &ctx, action, &Params(&params));
            assert!(answer.err().is_none_or(|f| f.code != berth_cloud::error::code::INVALID_ACTION), "{action} is counted but not served");
            assert_eq!(action_label(action), action);
        }
        assert_eq!(action_label("DescribeEverything"), "unknown");
        assert_eq!(action_label(""), "unknown");
    }
}
