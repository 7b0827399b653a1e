//! The shared-ENI IP pool: what it holds ([`PoolView`]), how it should look ([`PoolTargets`]),
//! and the plan of cloud calls that gets it there ([`plan`]). Pure: the caller passes the clock and
//! carries the plan out.

pub mod ledger;
mod plan;
mod react;

pub use plan::{PoolAction, plan};
pub use react::{Reaction, react};

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The real API assigns at most this many private IPs per AssignPrivateIpAddresses call.
pub const MAX_IPS_PER_CALL: u32 = 10;

/// Warm targets of the pool, from the agent's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolTargets {
    /// Idle IPs kept ready beyond current demand.
    pub min_idle: u32,
    /// Idle IPs above this are released once the cool-down has passed.
    pub max_idle: u32,
}

/// What the instance type allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// ENIs of the instance, the primary included (which never serves pods).
    pub eni_quota: u32,
    /// Private IPv4 per ENI, the ENI's primary address included (which never serves pods).
    pub ipv4_per_eni: u32,
}

impl PoolLimits {
    pub fn max_secondary_enis(&self) -> u32 {
        self.eni_quota.saturating_sub(1)
    }
    pub fn pod_ips_per_eni(&self) -> u32 {
        self.ipv4_per_eni.saturating_sub(1)
    }
}

/// One secondary ENI as the pool sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniView {
    pub id: String,
    /// Secondary IPs assigned to the ENI.
    pub assigned: u32,
    /// Of those, the ones a pod holds.
    pub in_use: u32,
    /// The cloud refused this ENI more addresses: it is full at what it holds.
    pub full: bool,
}

impl EniView {
    pub fn idle(&self) -> u32 {
        self.assigned.saturating_sub(self.in_use)
    }
}

/// The pool at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolView {
    pub enis: Vec<EniView>,
    /// Allocations waiting for an IP right now.
    pub waiting: u32,
    /// No growing until then (after a quota or vSwitch-exhaustion error).
    pub inhibit_until: Option<Instant>,
    /// No new ENI until then (the instance holds as many as it may).
    pub no_new_enis_until: Option<Instant>,
    /// The pool last grew or served at this instant; surplus is kept for the cool-down after it.
    pub last_busy: Instant,
}

impl PoolView {
    pub fn idle(&self) -> u32 {
        self.enis.iter().map(EniView::idle).sum()
    }
}
