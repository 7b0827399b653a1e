//! Least privilege: a daemon keeps only the capabilities it uses. Call before any thread is
//! started (capabilities are per thread; threads made later inherit the reduced sets).

pub use caps::Capability;
use caps::{CapSet, CapsHashSet};

/// How far the reduction reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// This process and every program it executes: the bounding set is reduced too.
    ProcessAndChildren,
    /// This process only: its effective and permitted sets shrink, the bounding set stays, so a
    /// program it executes as root starts with the full set again (the local cloud starting its
    /// instances' software, as a hypervisor boots a VM).
    ProcessOnly,
}

/// Keeps `keep` and drops every other capability from the inheritable, ambient, permitted and
/// effective sets of the calling thread (and the bounding set with [`Reach::ProcessAndChildren`]).
/// Without privileges to begin with (not root), there is nothing to do.
pub fn keep_only(keep: &[Capability], reach: Reach) -> Result<(), caps::errors::CapsError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        return Ok(());
    }
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes with the rest below.
    if reach == Reach::ProcessAndChildren {
        for cap in caps::all() {
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap)? {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
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

/// [`keep_only`] for a daemon's `main`: the error names the program and what it tried to keep.
pub fn keep_only_or_explain(
    program: &str,
    keep: &[Capability],
    reach: Reach,
) -> Result<(), String> {
    keep_only(keep, reach).map_err(|e| {
        let names: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
        format!(
            "{program}: cannot drop the capabilities it does not need (keeping {}): {e}",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(" ")
            }
        )
    })
}
