//! Errors of the cloud API: the service's own error shape and its codes, plus what can go wrong
//! on the way to the service.

use serde::{Deserialize, Serialize};

/// The codes Berth acts on, by name; their statuses, meanings and sources are in [`crate::codes`].
pub use crate::codes::code;
use crate::codes::{Class, class_of};

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
    /// What the code means, from the table of codes.
    pub fn class(&self) -> Class {
        class_of(&self.code)
    }

    /// Whether the same request may succeed when sent again unchanged.
    pub fn is_retryable(&self) -> bool {
        is_retryable_code(&self.code) || self.http_status >= 500
    }

    pub fn is_throttling(&self) -> bool {
        self.class() == Class::Throttled
    }

    /// The account, instance, ENI or vSwitch has no room for more of something: waiting will not
    /// help soon.
    pub fn is_quota(&self) -> bool {
        matches!(
            self.class(),
            Class::VSwitchExhausted | Class::EniAddressesFull | Class::InstanceEniLimit | Class::MemberEniLimit | Class::InstanceDiskLimit
        ) || self.code.starts_with("QuotaExceed")
    }

    pub fn is_not_found(&self) -> bool {
        self.class() == Class::NotFound
    }
}

/// Codes that mean "try the same request again later".
pub fn is_retryable_code(code: &str) -> bool {
    matches!(class_of(code), Class::Throttled | Class::Transient)
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
    #[error("{action} is a {product} action, but the endpoint it was sent to ({endpoint}) does not serve it ({code}); set {setting} to the {product} endpoint of the region")]
    WrongEndpoint { action: String, product: &'static str, endpoint: String, setting: &'static str, code: String },
    #[error("invalid credentials file {path}: {reason}")]
    Credentials { path: String, reason: String },
    #[error("{setting}: {reason}")]
    Setting { setting: String, reason: String },
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

    /// What the service's code means, when the service answered with one.
    pub fn class(&self) -> Option<Class> {
        self.api().map(ApiError::class)
    }
}

pub type Result<T, E = CloudError> = std::result::Result<T, E>;
