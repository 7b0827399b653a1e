//! `berth-localcloud`: the ECS/VPC/NAS RPC API served on loopback, checked like the real service
//! (signatures, error codes, quotas, asynchronous attach), over a real data plane.

pub mod addressing;
pub mod api;
pub mod auth;
pub mod engine;
pub mod faults;
pub mod guest;
pub mod metadata;
pub mod metrics;
pub mod oss;
pub mod planes;
pub mod server;
pub mod state;
pub mod volumes;
pub mod vpcnet;
