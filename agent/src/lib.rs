//! `berth-agent`: the per-node daemon. It keeps the shared-ENI IP pool ([`eni_pool`]) between its
//! warm targets ([`pool::plan`]), records every allocation durably ([`store`]) and serves the CNI
//! plugin over gRPC ([`server`]); metrics and introspection on loopback ([`http`]); keeps the
//! ledger of the node's disks ([`attach`]) and reports the node's capacity to the scheduler
//! ([`report`]).

pub mod attach;
pub mod cniconf;
pub mod config;
pub mod eni_pool;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod netpol;
pub mod node;
pub mod pool;
pub mod report;
pub mod runner;
pub mod server;
pub mod store;
pub mod systemd;
