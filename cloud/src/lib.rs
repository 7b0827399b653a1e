//! `berth-cloud`: the cloud as a trait ([`Cloud`]), its HTTP client for the ECS/VPC/NAS RPC API
//! ([`HttpCloud`]), the request signing both ends share, the wire shapes of each action, and the
//! instance-type catalogue.

pub mod api;
pub mod catalogue;
pub mod client;
pub mod codes;
pub mod credentials;
pub mod disk;
pub mod endpoints;
pub mod error;
pub mod guest;
pub mod model;
pub mod params;
pub mod ratelimit;
pub mod retry;
pub mod signing;
pub mod trace;
pub mod wait;
pub mod wire;

pub use api::Cloud;
pub use client::{ClientConfig, HttpCloud};
pub use error::{ApiError, CloudError, Result};
