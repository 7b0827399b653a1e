//! `berth-scheduler`: the central scheduler and autoscaler. Agents stream their nodes' live
//! capacity (IPs, ENI and member-ENI slots, disk slots besides CPU and memory); the scheduler
//! places pods with those counts, reserves what it binds until the agent counts it, and grows and
//! shrinks node pools from the instance-type catalogue.
//!
//! Pure logic ([`placement`], [`cluster`], [`autoscaler`]'s planners) is apart from I/O
//! ([`store`], [`leader`], [`server`], [`autoscaler::driver`], [`client`]).

pub mod autoscaler;
pub mod client;
pub mod cluster;
pub mod config;
pub mod leader;
pub mod metrics;
pub mod placement;
pub mod server;
pub mod store;
