//! `berth-cloud`: the cloud as a trait ([`Cloud`]), its HTTP client for the ECS/VPC RPC API
//! ([`client::HttpCloud`]), the signing both ends share, the wire shapes of each action, and the
//! instance-type catalogue.

pub mod catalogue;
pub mod error;
pub mod model;
pub mod signing;
pub mod wire;

pub use error::{ApiError, CloudError, Result};
