//! The error codes of the ECS, VPC and NAS RPC APIs that Berth acts on: one table, each code with
//! the HTTP status the service answers it with, what it means for Berth ([`Class`]) and where the
//! fact comes from (the public API reference of Alibaba Cloud). The client classifies errors with
//! it and the local cloud answers with it, so both ends agree on every code.

/// The codes by name, for matching and for answering.
pub mod code {
    pub const THROTTLING: &str = "Throttling";
    pub const THROTTLING_USER: &str = "Throttling.User";
    pub const THROTTLING_API: &str = "Throttling.Api";
    pub const SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";
    pub const INTERNAL_ERROR: &str = "InternalError";
    pub const OPERATION_CONFLICT: &str = "Operation.Conflict";
    pub const INVALID_ACTION: &str = "InvalidAction.NotFound";
    pub const MISSING_PARAMETER: &str = "MissingParameter";
    pub const INVALID_PARAMETER: &str = "InvalidParameter";
    pub const IDEMPOTENT_MISMATCH: &str = "IdempotentParameterMismatch";
    pub const DEPENDENCY_VIOLATION: &str = "DependencyViolation";

    pub const SIGNATURE_DOES_NOT_MATCH: &str = "SignatureDoesNotMatch";
    pub const INCOMPLETE_SIGNATURE: &str = "IncompleteSignature";
    pub const SIGNATURE_NONCE_USED: &str = "SignatureNonceUsed";
    pub const INVALID_TIMESTAMP_EXPIRED: &str = "InvalidTimeStamp.Expired";
    pub const INVALID_TIMESTAMP_FORMAT: &str = "InvalidTimeStamp.Format";
    pub const INVALID_ACCESS_KEY_ID: &str = "InvalidAccessKeyId.NotFound";
    pub const INVALID_SECURITY_TOKEN: &str = "InvalidSecurityToken.Expired";
    /// A security token that is not the one issued with the access key it came with.
    pub const SECURITY_TOKEN_MISMATCH: &str = "InvalidSecurityToken.MismatchWithAccessKey";
    /// A security token that was never issued.
    pub const SECURITY_TOKEN_MALFORMED: &str = "InvalidSecurityToken.Malformed";

    pub const INVALID_INSTANCE_ID: &str = "InvalidInstanceId.NotFound";
    pub const INVALID_INSTANCE_TYPE: &str = "InvalidInstanceType.NotSupported";
    pub const INCORRECT_INSTANCE_STATUS: &str = "IncorrectInstanceStatus";
    pub const INVALID_IMAGE_ID: &str = "InvalidImageId.NotFound";
    /// RunInstances' `RamRoleName` names no role of the account.
    pub const INVALID_RAM_ROLE: &str = "InvalidRamRole.NotFound";
    pub const INVALID_VPC_ID: &str = "InvalidVpcId.NotFound";
    pub const INVALID_VSWITCH_ID: &str = "InvalidVSwitchId.NotFound";
    pub const INVALID_SECURITY_GROUP_ID: &str = "InvalidSecurityGroupId.NotFound";
    pub const INVALID_CIDR_BLOCK: &str = "InvalidCidrBlock.Malformed";
    pub const CIDR_OVERLAP: &str = "InvalidCidrBlock.Overlapped";
    pub const INVALID_ZONE_ID: &str = "InvalidZoneId.NotFound";
    pub const INVALID_ENI_ID: &str = "InvalidEniId.NotFound";
    pub const INVALID_ENI_STATE: &str = "InvalidOperation.InvalidEniState";
    pub const INVALID_ENI_TYPE: &str = "InvalidOperation.InvalidEniType";
    pub const ZONE_MISMATCH: &str = "InvalidOperation.AvailabilityZoneMismatch";
    pub const VPC_MISMATCH: &str = "InvalidOperation.VpcMismatch";
    /// The instance holds as many ENIs as its type allows.
    pub const ENI_PER_INSTANCE_LIMIT: &str = "EniPerInstanceLimitExceeded";
    /// The trunk ENI carries as many member ENIs as the instance type allows.
    pub const MEMBER_ENI_LIMIT: &str = "QuotaExceeded.MemberEni";
    /// The ENI holds as many private IPv4 addresses as its instance type allows.
    pub const ENI_IPV4_FULL: &str = "InvalidOperation.Ipv4CountExceeded";
    /// The ENI holds as many IPv6 addresses as its instance type allows.
    pub const ENI_IPV6_FULL: &str = "InvalidOperation.Ipv6CountExceeded";
    /// The vSwitch has no free private IP for an ENI or a secondary address.
    pub const VSWITCH_IP_NOT_ENOUGH: &str = "InvalidVSwitchId.IpNotEnough";
    /// The vSwitch has no free private IP for a new instance (RunInstances' name of the same fact).
    pub const VSWITCH_PRIVATE_IP_QUOTA: &str = "QuotaExceeded.PrivateIpAddress";
    pub const IP_ASSIGNED: &str = "InvalidIp.IpAssigned";
    pub const IP_UNASSIGNED: &str = "InvalidIp.IpUnassigned";
    pub const IP_INVALID: &str = "InvalidVSwitchId.IpInvalid";

    pub const INVALID_DISK_ID: &str = "InvalidDiskId.NotFound";
    pub const INCORRECT_DISK_STATUS: &str = "IncorrectDiskStatus";
    pub const DISK_LIMIT: &str = "InstanceDiskNumber.LimitExceed";
    pub const INVALID_DISK_CATEGORY: &str = "InvalidDiskCategory.ValueNotSupported";
    pub const INVALID_DISK_SIZE: &str = "InvalidDiskSize.ValueNotSupported";
    pub const DISK_SIZE_SHRINK: &str = "InvalidDiskSize.TooSmall";
    pub const SYSTEM_DISK_OPERATION: &str = "InvalidDiskType.NotSupported";
    pub const INVALID_SNAPSHOT_ID: &str = "InvalidSnapshotId.NotFound";
    /// The snapshot is still being made: no disk can be created from it yet.
    pub const SNAPSHOT_NOT_READY: &str = "InvalidSnapshotId.NotReady";
    /// The disk holds as many manual snapshots as it may.
    pub const SNAPSHOT_QUOTA: &str = "QuotaExceed.Snapshot";
    /// Disks were created from the snapshot: delete it with Force.
    pub const SNAPSHOT_CREATED_DISK: &str = "SnapshotCreatedDisk";
    /// The zone has no stock left of what was asked (a disk category, an instance type).
    pub const NO_STOCK: &str = "OperationDenied.NoStock";
    /// The performance level is not one the disk's category and size allow.
    pub const INVALID_PERFORMANCE_LEVEL: &str = "InvalidPerformanceLevel.Malformed";

    pub const INVALID_FILE_SYSTEM_ID: &str = "InvalidFileSystem.NotFound";
    /// A mount target's permission group (AccessGroupName) that does not exist.
    pub const INVALID_ACCESS_GROUP: &str = "InvalidAccessGroup.NotFound";
}

/// What an error code means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// The account or the API is over its request rate: back off, then send it again.
    Throttled,
    /// A passing failure of the service (or a conflicting operation still running): send it again.
    Transient,
    /// The vSwitch has no private IP left: nothing more in that vSwitch until addresses are freed.
    VSwitchExhausted,
    /// The ENI holds as many addresses as it may: use another ENI.
    EniAddressesFull,
    /// The instance holds as many ENIs as its type allows.
    InstanceEniLimit,
    /// The trunk carries as many member ENIs as its type allows.
    MemberEniLimit,
    /// The instance holds as many data disks as its type allows.
    InstanceDiskLimit,
    /// The zone has no stock of the resource: try another zone or category, or later.
    SoldOut,
    /// The resource named does not exist.
    NotFound,
    /// The resource is not in a state the action needs (attaching, in use, running…).
    WrongState,
    /// A ClientToken was reused with other parameters.
    TokenConflict,
    /// Something still depends on the resource (a group with members, a VPC with vSwitches).
    DependencyViolation,
    /// The credentials or the signature were refused.
    Auth,
    /// The request itself is wrong: fix it, sending it again will not help.
    Invalid,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fact {
    pub code: &'static str,
    /// The HTTP status the service answers the code with.
    pub status: u16,
    pub class: Class,
    /// Where the fact comes from: the public API reference page that lists it.
    pub source: &'static str,
}

const COMMON: &str = "Alibaba Cloud RPC API reference, common error codes";
const ASSIGN_IPS: &str = "ECS API reference (2014-05-26), AssignPrivateIpAddresses, error codes";
const ASSIGN_IPV6: &str = "ECS API reference (2014-05-26), AssignIpv6Addresses, error codes";
const RUN_INSTANCES: &str = "ECS API reference (2014-05-26), RunInstances / CreateInstance, error codes";
const ATTACH_ENI: &str = "ECS API reference (2014-05-26), AttachNetworkInterface, error codes";
const ATTACH_DISK: &str = "ECS API reference (2014-05-26), AttachDisk, error codes";
const DELETE_SG: &str = "ECS API reference (2014-05-26), DeleteSecurityGroup, error codes";
const STS: &str = "Alibaba Cloud RPC API reference, STS credentials (SecurityToken), error codes";
const LOCAL: &str = "not in the public reference: the code the local cloud answers for a fact the reference gives no code for";

/// Every code Berth acts on.
pub const TABLE: &[Fact] = &[
    Fact { code: code::THROTTLING, status: 400, class: Class::Throttled, source: COMMON },
    Fact { code: code::THROTTLING_USER, status: 400, class: Class::Throttled, source: COMMON },
    Fact { code: code::THROTTLING_API, status: 400, class: Class::Throttled, source: COMMON },
    Fact { code: code::SERVICE_UNAVAILABLE, status: 503, class: Class::Transient, source: COMMON },
    Fact { code: code::INTERNAL_ERROR, status: 500, class: Class::Transient, source: COMMON },
    Fact { code: code::OPERATION_CONFLICT, status: 403, class: Class::Transient, source: ASSIGN_IPS },
    Fact { code: code::INVALID_ACTION, status: 404, class: Class::Invalid, source: COMMON },
    Fact { code: code::MISSING_PARAMETER, status: 400, class: Class::Invalid, source: COMMON },
    Fact { code: code::INVALID_PARAMETER, status: 400, class: Class::Invalid, source: COMMON },
    Fact { code: code::IDEMPOTENT_MISMATCH, status: 400, class: Class::TokenConflict, source: COMMON },
    Fact { code: code::DEPENDENCY_VIOLATION, status: 403, class: Class::DependencyViolation, source: DELETE_SG },
    Fact { code: code::SIGNATURE_DOES_NOT_MATCH, status: 400, class: Class::Auth, source: COMMON },
    Fact { code: code::INCOMPLETE_SIGNATURE, status: 400, class: Class::Auth, source: COMMON },
    Fact { code: code::SIGNATURE_NONCE_USED, status: 400, class: Class::Auth, source: COMMON },
    Fact { code: code::INVALID_TIMESTAMP_EXPIRED, status: 400, class: Class::Auth, source: COMMON },
    Fact { code: code::INVALID_TIMESTAMP_FORMAT, status: 400, class: Class::Auth, source: COMMON },
    Fact { code: code::INVALID_ACCESS_KEY_ID, status: 404, class: Class::Auth, source: COMMON },
    Fact { code: code::INVALID_SECURITY_TOKEN, status: 400, class: Class::Auth, source: STS },
    Fact { code: code::SECURITY_TOKEN_MISMATCH, status: 400, class: Class::Auth, source: STS },
    Fact { code: code::SECURITY_TOKEN_MALFORMED, status: 400, class: Class::Auth, source: STS },
    Fact { code: code::INVALID_INSTANCE_ID, status: 404, class: Class::NotFound, source: ASSIGN_IPS },
    Fact { code: code::INVALID_INSTANCE_TYPE, status: 403, class: Class::Invalid, source: RUN_INSTANCES },
    Fact { code: code::INCORRECT_INSTANCE_STATUS, status: 403, class: Class::WrongState, source: ATTACH_DISK },
    Fact { code: code::INVALID_IMAGE_ID, status: 404, class: Class::NotFound, source: RUN_INSTANCES },
    Fact { code: code::INVALID_RAM_ROLE, status: 404, class: Class::NotFound, source: RUN_INSTANCES },
    Fact { code: code::INVALID_VPC_ID, status: 404, class: Class::NotFound, source: RUN_INSTANCES },
    Fact { code: code::INVALID_VSWITCH_ID, status: 404, class: Class::NotFound, source: ASSIGN_IPS },
    Fact { code: code::INVALID_SECURITY_GROUP_ID, status: 404, class: Class::NotFound, source: ASSIGN_IPS },
    Fact { code: code::INVALID_CIDR_BLOCK, status: 400, class: Class::Invalid, source: "VPC API reference (2016-04-28), CreateVSwitch, error codes" },
    Fact { code: code::CIDR_OVERLAP, status: 400, class: Class::Invalid, source: "VPC API reference (2016-04-28), CreateVSwitch, error codes" },
    Fact { code: code::INVALID_ZONE_ID, status: 404, class: Class::NotFound, source: RUN_INSTANCES },
    Fact { code: code::INVALID_ENI_ID, status: 404, class: Class::NotFound, source: ASSIGN_IPS },
    Fact { code: code::INVALID_ENI_STATE, status: 400, class: Class::WrongState, source: ASSIGN_IPS },
    Fact { code: code::INVALID_ENI_TYPE, status: 403, class: Class::Invalid, source: ASSIGN_IPS },
    Fact { code: code::ZONE_MISMATCH, status: 403, class: Class::Invalid, source: ASSIGN_IPS },
    Fact { code: code::VPC_MISMATCH, status: 403, class: Class::Invalid, source: ASSIGN_IPS },
    Fact { code: code::ENI_PER_INSTANCE_LIMIT, status: 403, class: Class::InstanceEniLimit, source: ATTACH_ENI },
    Fact { code: code::MEMBER_ENI_LIMIT, status: 403, class: Class::MemberEniLimit, source: LOCAL },
    Fact { code: code::ENI_IPV4_FULL, status: 403, class: Class::EniAddressesFull, source: ASSIGN_IPS },
    Fact { code: code::ENI_IPV6_FULL, status: 403, class: Class::EniAddressesFull, source: ASSIGN_IPV6 },
    Fact { code: code::VSWITCH_IP_NOT_ENOUGH, status: 403, class: Class::VSwitchExhausted, source: ASSIGN_IPS },
    Fact { code: code::VSWITCH_PRIVATE_IP_QUOTA, status: 400, class: Class::VSwitchExhausted, source: RUN_INSTANCES },
    Fact { code: code::IP_ASSIGNED, status: 403, class: Class::Invalid, source: ASSIGN_IPS },
    Fact { code: code::IP_UNASSIGNED, status: 403, class: Class::NotFound, source: "ECS API reference (2014-05-26), UnassignPrivateIpAddresses, error codes" },
    Fact { code: code::IP_INVALID, status: 403, class: Class::Invalid, source: ASSIGN_IPS },
    Fact { code: code::INVALID_DISK_ID, status: 404, class: Class::NotFound, source: ATTACH_DISK },
    Fact { code: code::INCORRECT_DISK_STATUS, status: 403, class: Class::WrongState, source: ATTACH_DISK },
    Fact { code: code::DISK_LIMIT, status: 400, class: Class::InstanceDiskLimit, source: RUN_INSTANCES },
    Fact { code: code::INVALID_DISK_CATEGORY, status: 400, class: Class::Invalid, source: "ECS API reference (2014-05-26), CreateDisk, error codes" },
    Fact { code: code::INVALID_DISK_SIZE, status: 400, class: Class::Invalid, source: "ECS API reference (2014-05-26), CreateDisk, error codes" },
    Fact { code: code::DISK_SIZE_SHRINK, status: 400, class: Class::Invalid, source: "ECS API reference (2014-05-26), ResizeDisk, error codes" },
    Fact { code: code::SYSTEM_DISK_OPERATION, status: 403, class: Class::Invalid, source: "ECS API reference (2014-05-26), DetachDisk, error codes" },
    Fact { code: code::INVALID_SNAPSHOT_ID, status: 404, class: Class::NotFound, source: "ECS API reference (2014-05-26), CreateDisk / DeleteSnapshot, error codes" },
    Fact { code: code::SNAPSHOT_NOT_READY, status: 403, class: Class::WrongState, source: "ECS API reference (2014-05-26), CreateDisk, error codes" },
    Fact { code: code::SNAPSHOT_QUOTA, status: 403, class: Class::Invalid, source: "ECS API reference (2014-05-26), CreateSnapshot, error codes" },
    Fact { code: code::SNAPSHOT_CREATED_DISK, status: 403, class: Class::DependencyViolation, source: "ECS API reference (2014-05-26), DeleteSnapshot, error codes" },
    Fact { code: code::NO_STOCK, status: 403, class: Class::SoldOut, source: "ECS API reference (2014-05-26), CreateDisk / RunInstances, error codes" },
    Fact { code: code::INVALID_PERFORMANCE_LEVEL, status: 400, class: Class::Invalid, source: "ECS API reference (2014-05-26), ModifyDiskSpec, error codes" },
    Fact { code: code::INVALID_FILE_SYSTEM_ID, status: 404, class: Class::NotFound, source: "NAS API reference (2017-06-26), DescribeFileSystems, error codes" },
    Fact { code: code::INVALID_ACCESS_GROUP, status: 404, class: Class::NotFound, source: "NAS API reference (2017-06-26), CreateMountTarget, error codes" },
];

/// The row of `code`, when the table has one.
pub fn fact(code: &str) -> Option<&'static Fact> {
    TABLE.iter().find(|f| f.code == code)
}

/// What `code` means; a code the table does not list is read by the service's naming rules
/// (`Throttling.*`, `*.NotFound`), else as a refusal of the request.
pub fn class_of(code: &str) -> Class {
    match fact(code) {
        Some(f) => f.class,
        None if code.starts_with("Throttling") => Class::Throttled,
        None if code.ends_with(".NotFound") => Class::NotFound,
        None => Class::Invalid,
    }
}

/// The HTTP status the service answers `code` with; for a code outside the table, by the naming
/// habits of the reference (`*.NotFound` 404, `Throttling*`, `Missing*` and `Invalid*` outside
/// `InvalidOperation.*` 400, the rest 403).
pub fn status_of(code: &str) -> u16 {
    match fact(code) {
        Some(f) => f.status,
        None if code.ends_with(".NotFound") => 404,
        None if code.starts_with("Throttling") || code.starts_with("Missing") => 400,
        None if code.starts_with("Invalid") && !code.starts_with("InvalidOperation") => 400,
        None => 403,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once_with_a_source() {
        for (i, f) in TABLE.iter().enumerate() {
            assert!(TABLE[i + 1..].iter().all(|g| g.code != f.code), "{} is listed twice", f.code);
            assert!(!f.source.is_empty(), "{} has no source", f.code);
            assert!((400..600).contains(&f.status), "{}: HTTP {}", f.code, f.status);
        }
    }

    #[test]
    fn the_three_growth_limits_are_told_apart() {
        assert_eq!(class_of(code::VSWITCH_IP_NOT_ENOUGH), Class::VSwitchExhausted);
        // On the real ECS API this code means the vSwitch is out of addresses, not the ENI.
        assert_eq!(class_of(code::VSWITCH_PRIVATE_IP_QUOTA), Class::VSwitchExhausted);
        assert_eq!(class_of(code::ENI_IPV4_FULL), Class::EniAddressesFull);
        assert_eq!(class_of(code::ENI_IPV6_FULL), Class::EniAddressesFull);
        assert_eq!(class_of(code::ENI_PER_INSTANCE_LIMIT), Class::InstanceEniLimit);
    }

    #[test]
    fn unlisted_codes_follow_the_naming_rules() {
        assert_eq!(class_of("Throttling.Resource"), Class::Throttled);
        assert_eq!(class_of("InvalidRouteTableId.NotFound"), Class::NotFound);
        assert_eq!(status_of("InvalidRouteTableId.NotFound"), 404);
        assert_eq!(class_of("Forbidden.RAM"), Class::Invalid);
        assert_eq!(status_of(code::INTERNAL_ERROR), 500);
        assert_eq!(status_of(code::VSWITCH_PRIVATE_IP_QUOTA), 400);
    }
}
