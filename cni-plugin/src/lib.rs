//! `berth-cni`: the CNI plugin's protocol (environment, network config, versions, errors) and
//! commands; `main.rs` is the `berth` binary a container runtime executes.

pub mod commands;
pub mod protocol;
