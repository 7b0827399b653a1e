//! The CNI protocol: environment, network config, versions, errors. Pure code.

pub mod bandwidth;
pub mod config;
pub mod env;
pub mod error;
pub mod result;
pub mod version;
