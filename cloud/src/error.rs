//! Errors of the cloud API: the service's own error shape and its codes, plus what can go wrong
//! on the way to the service.

use serde::{Deserialize, Serialize};

/// Error codes the ECS/VPC/NAS APIs answer with and that Berth acts on. The local cloud answers
/// with exactly these, so code written against it behaves the same against the real service.
pub mod code {
    pub const THROTTLING: &str = "Throttling";
    pub const THROTTLING_USER: &str = "Throttling.User";
    pub const SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";
    pub const INTERNAL_ERROR: &str = "InternalError";
    pub const OPERATION_CONFLICT: &str = "Operation.Conflict";
    pub const INVALID_ACTION: &str = "InvalidAction.NotFound";
    pub const MISSING_PARAMETER: &str = "MissingParameter";
    pub const INVALID_PARAMETER: &str = "InvalidParameter";

    pub const SIGNATURE_DOES_NOT_MATCH: &str = "SignatureDoesNotMatch";
    pub const INCOMPLETE_SIGNATURE: &str = "IncompleteSignature";
    pub const SIGNATURE_NONCE_USED: &str = "SignatureNonceUsed";
    pub const INVALID_TIMESTAMP_EXPIRED: &str = "InvalidTimeStamp.Expired";
    pub const INVALID_TIMESTAMP_FORMAT: &str = "InvalidTimeStamp.Format";
    pub const INVALID_ACCESS_KEY_ID: &str = "InvalidAccessKeyId.NotFound";

    pub const INVALID_INSTANCE_ID: &str = "InvalidInstanceId.NotFound";
    pub const INVALID_INSTANCE_TYPE: &str = "InvalidInstanceType.NotSupported";
    pub const INCORRECT_INSTANCE_STATUS: &str = "IncorrectInstanceStatus";
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
    pub const ENI_PER_INSTANCE_LIMIT: &str = "EniPerInstanceLimitExceeded";
    pub const MEMBER_ENI_LIMIT: &str = "QuotaExceeded.MemberEni";
    pub const PRIVATE_IP_QUOTA: &str = "QuotaExceeded.PrivateIpAddress";
    pub const IPV6_QUOTA: &str = "QuotaExceeded.Ipv6Address";
    pub const VSWITCH_IP_NOT_ENOUGH: &str = "InvalidVSwitchId.IpNotEnough";
    pub const IP_ASSIGNED: &str = "InvalidIp.IpAssigned";
    pub const IP_UNASSIGNED: &str = "InvalidIp.IpUnassigned";
    pub const IP_INVALID: &str = "InvalidVSwitchId.IpInvalid";

    pub const INVALID_DISK_ID: &str = "InvalidDiskId.NotFound";
    pub const INCORRECT_DISK_STATUS: &str = "IncorrectDiskStatus";
    pub const DISK_LIMIT: &str = "InstanceDiskNumber.LimitExceed";
    pub const INVALID_DISK_CATEGORY: &str = "InvalidDiskCategory.ValueNotSupported";
    pub const INVALID_DISK_SIZE: &str = "InvalidDiskSize.ValueNotSupported";
    pub const DISK_SIZE_SHRINK: &str = "InvalidDiskSize.TooSmall";

    pub const INVALID_FILE_SYSTEM_ID: &str = "InvalidFileSystem.NotFound";
}

/// An error answered by the cloud service: the service's own JSON error body plus the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{action}: {code}: {message} (RequestId {request_id}, HTTP {http_status})")]
pub struct ApiError {
    pub action: String,
    pub code: String,
    pub message: String,
    pub request_id: String,
    pub http_status: u16,
}

impl ApiError {
    /// Whether the same request may succeed when sent again unchanged.
    pub fn is_retryable(&self) -> bool {
        is_retryable_code(&self.code) || self.http_status >= 500
    }

    pub fn is_throttling(&self) -> bool {
        self.code == code::THROTTLING || self.code.starts_with("Throttling.")
    }

    /// The account, instance or ENI has no room for more of something: waiting will not help soon.
    pub fn is_quota(&self) -> bool {
        self.code.starts_with("QuotaExceed")
            || self.code == code::ENI_PER_INSTANCE_LIMIT
            || self.code == code::DISK_LIMIT
    }

    pub fn is_not_found(&self) -> bool {
        self.code.ends_with(".NotFound")
    }
}

/// Codes that mean "try the same request again later".
pub fn is_retryable_code(code: &str) -> bool {
    code == code::THROTTLING
        || code.starts_with("Throttling.")
        || code == code::SERVICE_UNAVAILABLE
        || code == code::INTERNAL_ERROR
        || code == code::OPERATION_CONFLICT
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{action}: cannot reach the cloud endpoint {endpoint}: {reason}; check the endpoint in the config and that the service is up")]
    Transport { action: String, endpoint: String, reason: String },
    #[error("{action}: the response could not be decoded ({reason}); body starts with: {body}")]
    Decode { action: String, reason: String, body: String },
    #[error("{action}: gave up after {attempts} attempts, last error: {last}")]
    RetriesExhausted { action: String, attempts: u32, last: Box<CloudError> },
    #[error("timed out after {waited:?} waiting for {what}; the cloud may be slow or the resource stuck, check it with Describe*")]
    Timeout { what: String, waited: std::time::Duration },
    #[error("invalid credentials file {path}: {reason}")]
    Credentials { path: String, reason: String },
}

impl CloudError {
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            CloudError::Api(e) => Some(e),
            CloudError::RetriesExhausted { last, .. } => last.api(),
            _ => None,
        }
    }

    /// The service's error code, when the service answered with one.
    pub fn code(&self) -> Option<&str> {
        self.api().map(|e| e.code.as_str())
    }

    pub fn is_code(&self, code: &str) -> bool {
        self.code() == Some(code)
    }
}

pub type Result<T, E = CloudError> = std::result::Result<T, E>;
