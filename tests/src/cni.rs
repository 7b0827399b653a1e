//! Running CNI plugins as libcni does (`berth_cni::libcni`), with the paths of this workspace.

pub use berth_cni::libcni::*;

/// Where the reference plugins of Debian's containernetworking-plugins live.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The directory holding `berth` (the workspace's build) and, after it, the reference plugins.
pub fn cni_path() -> String {
    let berth = crate::bin("berth");
    format!("{}:{REFERENCE_PLUGINS}", berth.parent().unwrap().display())
}
