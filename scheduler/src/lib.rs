//! `berth-scheduler`: the central scheduler and autoscaler. Agents stream their nodes' live
//! capacity (IPs, ENI and member-ENI slots, disk slots besides CPU and memory); the scheduler
//! places pods with those counts, reserves what it binds until the agent counts it, and grows and
//! shrinks node pools from the instance-type catalogue.
//!
//! Pure logic ([`placement`], [`cluster`], [`validation`], [`autoscaler`]'s planners, [`instruction`],
//! [`page`] and [`watch`]'s window that keep messages under the gRPC limit) is apart from I/O
//! ([`store`], [`committer`], [`leader`], [`replica`], [`server`], [`autoscaler::driver`]).

pub mod autoscaler;
pub mod autoscaling;
/// The client side of cluster.proto (`berth-scheduler-client`): the scheduler keeps the same
/// message limits its agents do.
pub use berth_scheduler_client as client;
pub mod cluster;
pub mod committer;
pub mod config;
pub mod hpa;
pub mod cron;
pub mod instruction;
pub mod leader;
pub mod metrics;
pub mod netpol;
pub mod page;
pub mod placement;
pub mod predict;
pub mod replica;
pub mod report_stream;
pub mod server;
pub mod store;
pub mod validation;
pub mod watch;
pub mod workload;
