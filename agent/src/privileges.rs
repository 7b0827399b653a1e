//! Least privilege: the agent keeps only the capabilities it uses, dropped before any thread is
//! started (capabilities are per thread; threads made later inherit the reduced sets).

use caps::{CapSet, Capability, CapsHashSet};

/// Netlink changes on the node (CAP_NET_ADMIN), entering a node's network namespace
/// (CAP_SYS_ADMIN), and looking at pods' namespaces under /proc/<pid>/ns of other processes
/// (CAP_SYS_PTRACE), which tells a gone pod from a live one.
pub const KEPT: [Capability; 3] = [Capability::CAP_NET_ADMIN, Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE];

/// Drops every other capability from the bounding, inheritable, ambient, permitted and effective
/// sets of the calling thread. Without privileges to begin with (not root), there is nothing to do.
pub fn drop_unneeded() -> Result<(), caps::errors::CapsError> {
    let keep: CapsHashSet = KEPT.into_iter().collect();
    if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        return Ok(());
    }
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes with the rest below.
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap)? {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let permitted = caps::read(None, CapSet::Permitted)?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    Ok(())
}
