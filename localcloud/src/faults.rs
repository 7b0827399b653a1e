//! Fault injection: latency, throttling and chosen failures, set at start or at run time through the
//! admin API, so that clients can be tested against a misbehaving cloud.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::api::ApiFailure;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every API call.
    pub latency_ms: u64,
    /// The share (0.0–1.0) of API calls answered `Throttling`.
    pub throttle_rate: f64,
    /// Actions answered with an error code instead of being carried out.
    pub fail_actions: HashMap<String, FailAction>,
    /// How long an attach, a detach or an instance start takes.
    pub attach_delay_ms: u64,
    /// Caps the usable addresses of a vSwitch, to make it run out early.
    pub vswitch_ip_limit: HashMap<String, u64>,
    /// Manual snapshots a disk may hold (the service allows 256).
    pub snapshot_quota: u32,
    /// How much data disk space each zone has to sell, by category.
    pub disk_stock: DiskStock,
}

/// The stock of data disk space, in GiB, of each zone and category: what the data disks of that
/// zone and category may add up to. CreateDisk and ResizeDisk take from it, DeleteDisk gives back;
/// a disk beyond what is left is refused `OperationDenied.NoStock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskStock {
    /// The stock of a zone and category not listed in `of`.
    pub default_gib: u64,
    /// The stock of a zone and category, keyed `<zone>/<category>` (`local-1a/cloud_essd`).
    pub of: HashMap<String, u64>,
}

impl Default for DiskStock {
    /// 1 PiB of each category in each zone: more than a test machine's disks, so only a test that
    /// sets a stock sees one run out.
    fn default() -> Self {
        DiskStock { default_gib: 1 << 20, of: HashMap::new() }
    }
}

impl DiskStock {
    pub fn gib(&self, zone: &str, category: &str) -> u64 {
        self.of.get(&format!("{zone}/{category}")).copied().unwrap_or(self.default_gib)
    }
}

impl Default for Faults {
    fn default() -> Self {
        Faults { latency_ms: 0, throttle_rate: 0.0, fail_actions: HashMap::new(), attach_delay_ms: 200, vswitch_ip_limit: HashMap::new(), snapshot_quota: 256, disk_stock: DiskStock::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailAction {
    pub code: String,
    /// Fail this many calls, then behave (absent: every call, or at `rate`).
    #[serde(default)]
    pub count: Option<u32>,
    /// Fail this share of calls (absent: every call).
    #[serde(default)]
    pub rate: Option<f64>,
}

impl Faults {
    /// The faults a `PUT /_localcloud/faults` body sets: each top-level field it names replaces
    /// that field, and a field it leaves out takes its value at the local cloud's start (its
    /// flags), not the built-in default, so that resetting latency keeps a `--disk-stock`.
    pub fn put_over(start: &Faults, body: &[u8]) -> Result<Faults, String> {
        let body: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("faults JSON rejected: {e}"))?;
        let serde_json::Value::Object(given) = body else { return Err("faults JSON rejected: a JSON object of fields was expected".into()) };
        let mut merged = match serde_json::to_value(start) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => unreachable!("Faults serialises to an object"),
        };
        merged.extend(given);
        let faults: Faults = serde_json::from_value(serde_json::Value::Object(merged)).map_err(|e| format!("faults JSON rejected: {e}"))?;
        faults.validate()?;
        Ok(faults)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.throttle_rate) {
            return Err(format!("throttle_rate {} must be between 0.0 and 1.0", self.throttle_rate));
        }
        for key in self.disk_stock.of.keys() {
            if key.split_once('/').is_none_or(|(zone, category)| zone.is_empty() || category.is_empty()) {
                return Err(format!("disk_stock.of key {key:?} is not <zone>/<category>, e.g. local-1a/cloud_essd"));
            }
        }
        for (action, f) in &self.fail_actions {
            if f.rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
                return Err(format!("fail_actions.{action}.rate must be between 0.0 and 1.0"));
            }
            if f.code.is_empty() {
                return Err(format!("fail_actions.{action}.code is empty; give the error code to answer"));
            }
        }
        Ok(())
    }

    /// The injected failure for this call, if any, and which knob injected it; `roll` is uniform
    /// in [0, 1). Counts down `count`.
    pub fn decide(&mut self, action: &str, roll: f64) -> Option<(FaultKind, ApiFailure)> {
        if roll < self.throttle_rate {
            return Some((FaultKind::Throttling, ApiFailure::bad(berth_cloud::error::code::THROTTLING, "Request was denied due to request throttling.")));
        }
        let f = self.fail_actions.get_mut(action)?;
        if f.rate.is_some_and(|r| roll >= r) {
            return None;
        }
        match &mut f.count {
            Some(0) => return None,
            Some(n) => *n -= 1,
            None => {}
        }
        Some((FaultKind::FailAction, ApiFailure::of(&f.code, format!("{action} failed by fault injection with {}.", f.code))))
    }
}

/// Which knob a fault came from (the `kind` label of `berth_localcloud_faults_injected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// `latency_ms` delayed the call.
    Latency,
    /// `throttle_rate` answered `Throttling`.
    Throttling,
    /// `fail_actions` answered its code.
    FailAction,
}

impl FaultKind {
    pub const ALL: [FaultKind; 3] = [FaultKind::Latency, FaultKind::Throttling, FaultKind::FailAction];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Latency => "latency",
            FaultKind::Throttling => "throttling",
            FaultKind::FailAction => "fail_action",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_rates() {
        let mut f = Faults::default();
        f.fail_actions.insert("AttachDisk".into(), FailAction { code: "InternalError".into(), count: Some(2), rate: None });
        assert_eq!(f.decide("AttachDisk", 0.5).map(|(k, e)| (k, e.status)), Some((FaultKind::FailAction, 500)));
        assert!(f.decide("AttachDisk", 0.5).is_some());
        assert!(f.decide("AttachDisk", 0.5).is_none());
        assert!(f.decide("DetachDisk", 0.0).is_none());
        f.throttle_rate = 0.3;
        assert_eq!(f.decide("X", 0.29).map(|(k, e)| (k, e.code)), Some((FaultKind::Throttling, "Throttling".into())));
        assert!(f.decide("X", 0.31).is_none());
        f.throttle_rate = 1.5;
        assert!(f.validate().is_err());
    }

    #[test]
    fn a_put_keeps_the_start_value_of_each_field_it_leaves_out() {
        let mut start = Faults { attach_delay_ms: 20, ..Faults::default() };
        start.disk_stock.of.insert("z1/cloud_essd".into(), 40);
        let put = Faults::put_over(&start, br#"{"latency_ms": 5}"#).unwrap();
        assert_eq!((put.latency_ms, put.attach_delay_ms, put.disk_stock.gib("z1", "cloud_essd")), (5, 20, 40));
        let put = Faults::put_over(&start, br#"{"disk_stock": {"default_gib": 7}}"#).unwrap();
        assert_eq!((put.disk_stock.gib("z1", "cloud_essd"), put.disk_stock.gib("z2", "cloud_essd")), (7, 7), "a field named is replaced whole");
        assert!(Faults::put_over(&start, br#"{"latncy_ms": 5}"#).unwrap_err().contains("latncy_ms"));
        assert!(Faults::put_over(&start, br#"{"throttle_rate": 2.0}"#).is_err());
        assert!(Faults::put_over(&start, b"[1]").is_err());
    }
}
