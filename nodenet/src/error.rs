//! The crate's one error type.
//!
//! Every variant names the object it was about (a link, an address, a route, a
//! namespace path, a sysctl key) and, where the kernel answered, its errno, so a
//! log line alone says what failed and why.

use std::io;
use std::path::PathBuf;

/// Errnos that mean "the object is not there (any more)": for teardown they are success.
///
/// `EADDRNOTAVAIL` is what the kernel answers to `RTM_DELADDR` for an address the
/// link does not hold.
const NOT_FOUND: [i32; 4] = [libc::ENODEV, libc::ESRCH, libc::ENOENT, libc::EADDRNOTAVAIL];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused a netlink request.
    #[error("{op} {object} (netns {netns}): {source}{}", detail_suffix(.detail))]
    Netlink {
        /// What was asked, e.g. "add route".
        op: &'static str,
        /// The object, written the way `ip(8)` would print it.
        object: String,
        /// The namespace the socket lives in ("current" or a path).
        netns: String,
        /// The kernel's extended-ack message, when it sent one.
        detail: Option<String>,
        #[source]
        source: io::Error,
    },

    /// Opening or talking over the netlink socket itself failed.
    #[error("netlink socket (netns {netns}): {what}: {source}")]
    Socket {
        what: &'static str,
        netns: String,
        #[source]
        source: io::Error,
    },

    /// The kernel's reply could not be decoded.
    #[error("decode netlink reply to {op} {object}: {message}")]
    Decode {
        op: &'static str,
        object: String,
        message: String,
    },

    /// A namespace operation (create, open, enter, delete) failed.
    #[error("network namespace {path}: {op}: {source}", path = .path.display())]
    Netns {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Writing or reading a sysctl inside a namespace failed.
    #[error("sysctl {key} in netns {netns}: {source}", netns = .netns.display())]
    Sysctl {
        key: String,
        netns: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An argument was rejected before anything was sent to the kernel.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    /// A helper thread (namespace entry) panicked.
    #[error("thread that entered network namespace {path} panicked", path = .path.display())]
    ThreadPanicked { path: PathBuf },
}

fn detail_suffix(detail: &Option<String>) -> String {
    match detail {
        Some(d) => format!(" ({d})"),
        None => String::new(),
    }
}

impl Error {
    /// The errno behind this error, when the kernel or a syscall gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. }
            | Error::Socket { source, .. }
            | Error::Netns { source, .. }
            | Error::Sysctl { source, .. } => source.raw_os_error(),
            Error::Invalid { .. } => Some(libc::EINVAL),
            Error::Decode { .. } | Error::ThreadPanicked { .. } => None,
        }
    }

    /// The object is already gone (ENODEV, ESRCH, ENOENT, or EADDRNOTAVAIL for an
    /// address): teardown treats this as success.
    pub fn is_not_found(&self) -> bool {
        self.errno().is_some_and(|e| NOT_FOUND.contains(&e))
    }

    /// The object already exists (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The kernel lacks what was asked (EOPNOTSUPP), e.g. a link kind whose module it has not.
    pub fn is_unsupported(&self) -> bool {
        self.errno() == Some(libc::EOPNOTSUPP)
    }

    pub(crate) fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: &'static str,
    ) -> Self {
        Error::Invalid {
            what,
            value: value.into(),
            reason,
        }
    }

    pub(crate) fn netns(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<io::Error>,
    ) -> Self {
        Error::Netns {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error a kernel would give for `errno`, as [`Error::Netlink`]; the fake uses it.
pub(crate) fn kernel_error(
    op: &'static str,
    object: impl Into<String>,
    netns: &str,
    errno: i32,
) -> Error {
    Error::Netlink {
        op,
        object: object.into(),
        netns: netns.to_owned(),
        detail: None,
        source: io::Error::from_raw_os_error(errno),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_and_exists_are_told_apart() {
        for errno in [libc::ENODEV, libc::ESRCH, libc::ENOENT, libc::EADDRNOTAVAIL] {
            let e = kernel_error("delete link", "veth0", "current", errno);
            assert!(e.is_not_found(), "{e}");
            assert!(!e.is_exists());
        }
        let e = kernel_error("add route", "10.0.0.0/24 dev 3", "current", libc::EEXIST);
        assert!(e.is_exists());
        assert!(!e.is_not_found());
        assert_eq!(e.errno(), Some(libc::EEXIST));
    }

    #[test]
    fn message_names_object_namespace_and_errno() {
        let e = Error::Netlink {
            op: "add route",
            object: "0.0.0.0/0 via 169.254.1.1 dev 2".into(),
            netns: "/run/netns/pod".into(),
            detail: Some("Nexthop has invalid gateway".into()),
            source: io::Error::from_raw_os_error(libc::ENETUNREACH),
        };
        let text = e.to_string();
        assert!(
            text.contains("add route 0.0.0.0/0 via 169.254.1.1 dev 2"),
            "{text}"
        );
        assert!(text.contains("/run/netns/pod"), "{text}");
        assert!(text.contains("os error 101"), "{text}");
        assert!(text.contains("Nexthop has invalid gateway"), "{text}");
    }

    #[test]
    fn invalid_argument_reads_as_einval() {
        let e = Error::invalid(
            "link name",
            "a-name-that-is-far-too-long",
            "longer than 15 bytes",
        );
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert!(e.to_string().contains("a-name-that-is-far-too-long"));
    }
}
