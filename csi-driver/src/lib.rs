//! `berth-csi`: the CSI driver. Identity ([`identity`]), Controller ([`controller`]: disks, NAS
//! sub-directories and OSS prefixes through the cloud; disk attaches through the target node's
//! agent) and Node ([`node`]: stage, publish, stats, expand) on a unix socket. What a volume is
//! and what it may be asked is pure ([`volume`]); mounts are read back from the kernel ([`mounts`]);
//! every call is counted for `/metrics` ([`metrics`]).

pub mod config;
pub mod controller;
pub mod driver;
pub mod identity;
pub mod metrics;
pub mod mounts;
pub mod node;
pub mod oss;
pub mod volume;
