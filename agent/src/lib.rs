//! `berth-agent`: the per-node daemon. So far its pool planning (pure), which decides the cloud
//! calls that keep a shared-ENI pool between its warm targets.

pub mod pool;
