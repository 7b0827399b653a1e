//! `berth-cni`: the CNI plugin's protocol (environment, network config, versions, errors), its
//! commands, the shared-ENI datapath, and the client of the node agent; `main.rs` is the `berth`
//! binary a container runtime executes.

pub mod agent_client;
pub mod commands;
pub mod datapath;
pub mod libcni;
pub mod protocol;
