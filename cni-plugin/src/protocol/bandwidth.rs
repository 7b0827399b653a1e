//! A pod's bandwidth limits, from the CNI `bandwidth` capability (`runtimeConfig.bandwidth`:
//! `ingressRate`/`egressRate` in bits per second, `ingressBurst`/`egressBurst` in bits) or from
//! CNI_ARGS `BERTH_INGRESS_BANDWIDTH`/`BERTH_EGRESS_BANDWIDTH`, which carry a pod's
//! `kubernetes.io/ingress-bandwidth`/`egress-bandwidth` annotations as Kubernetes quantities
//! (`10M`, `1G`, `512Ki`). Pure.

use berth_nodenet::RateLimit;
use serde_json::Value;

use super::error::{CniError, code};

/// The smallest and largest rates accepted (as Kubernetes does: 1 kbit/s to 1 Pbit/s).
pub const MIN_RATE: u64 = 1_000;
pub const MAX_RATE: u64 = 1_000_000_000_000_000;

/// Ingress (what the pod receives) and egress (what it sends).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub ingress: Option<RateLimit>,
    pub egress: Option<RateLimit>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.ingress.is_none() && self.egress.is_none()
    }
}

/// The burst when none is given: 10 ms at the rate, at least 64 KiB, so a full-size frame and TCP's
/// bursts pass.
pub fn default_burst(rate_bits: u64) -> u64 {
    (rate_bits / 100).max(64 * 1024 * 8)
}

/// A Kubernetes quantity of bits per second: a decimal number with an optional suffix
/// (k, M, G, T, P; Ki, Mi, Gi, Ti, Pi).
pub fn parse_quantity(key: &str, text: &str) -> Result<u64, CniError> {
    let bad = |why: &str| CniError::new(code::INVALID_ENVIRONMENT, format!("{key}={text:?} is not a bandwidth: {why}"), "give bits per second as a Kubernetes quantity, e.g. 10M or 1G");
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad("no number"))?;
    let unit: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return Err(bad("unknown suffix")),
    };
    check_rate(key, (n * unit).round() as u64)
}

fn check_rate(key: &str, rate: u64) -> Result<u64, CniError> {
    if (MIN_RATE..=MAX_RATE).contains(&rate) {
        Ok(rate)
    } else {
        Err(CniError::new(code::INVALID_ENVIRONMENT, format!("{key} of {rate} bit/s is out of range"), "give a rate between 1k and 1P bits per second"))
    }
}

/// The limits a runtime passed in `runtimeConfig.bandwidth`.
pub fn from_runtime_config(runtime_config: Option<&Value>) -> Result<Limits, CniError> {
    let Some(bw) = runtime_config.and_then(|r| r.get("bandwidth")).filter(|b| !b.is_null()) else { return Ok(Limits::default()) };
    let field = |name: &str| -> Result<Option<u64>, CniError> {
        match bw.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| CniError::new(code::INVALID_NETWORK_CONFIG, format!("runtimeConfig.bandwidth.{name} is {v}, not a whole number"), "give bits per second (rates) and bits (bursts)")),
        }
    };
    let one = |rate: &str, burst: &str| -> Result<Option<RateLimit>, CniError> {
        match field(rate)? {
            None | Some(0) => Ok(None),
            Some(r) => {
                let rate_bits = check_rate(&format!("runtimeConfig.bandwidth.{rate}"), r)?;
                let burst_bits = field(burst)?.filter(|b| *b > 0).unwrap_or_else(|| default_burst(rate_bits));
                Ok(Some(RateLimit { rate_bits, burst_bits }))
            }
        }
    };
    Ok(Limits { ingress: one("ingressRate", "ingressBurst")?, egress: one("egressRate", "egressBurst")? })
}

/// The limits of one pod: CNI_ARGS (the pod's annotations) win over the runtime's capability.
pub fn merge(from_args: (Option<u64>, Option<u64>), runtime: Limits) -> Limits {
    let limit = |rate: u64| RateLimit { rate_bits: rate, burst_bits: default_burst(rate) };
    Limits { ingress: from_args.0.map(limit).or(runtime.ingress), egress: from_args.1.map(limit).or(runtime.egress) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_quantity("k", "10M").unwrap(), 10_000_000);
        assert_eq!(parse_quantity("k", "1.5G").unwrap(), 1_500_000_000);
        assert_eq!(parse_quantity("k", "512Ki").unwrap(), 524_288);
        assert_eq!(parse_quantity("k", "2000").unwrap(), 2_000);
        let e = parse_quantity("BERTH_EGRESS_BANDWIDTH", "10Mbps").unwrap_err();
        assert!(e.msg.contains("BERTH_EGRESS_BANDWIDTH") && e.msg.contains("10Mbps"), "{e}");
        assert!(parse_quantity("k", "10").unwrap_err().msg.contains("out of range"));
        assert!(parse_quantity("k", "fast").is_err());
    }

    #[test]
    fn runtime_config_and_args_merge() {
        let rc = serde_json::json!({"bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 80_000, "egressRate": 0}});
        let l = from_runtime_config(Some(&rc)).unwrap();
        assert_eq!(l.ingress, Some(RateLimit { rate_bits: 8_000_000, burst_bits: 80_000 }));
        assert_eq!(l.egress, None, "a zero rate is no limit");
        let m = merge((None, Some(20_000_000)), l);
        assert_eq!(m.ingress, l.ingress);
        assert_eq!(m.egress, Some(RateLimit { rate_bits: 20_000_000, burst_bits: default_burst(20_000_000) }));
        assert!(from_runtime_config(Some(&serde_json::json!({"bandwidth": {"egressRate": "fast"}}))).is_err());
        assert!(from_runtime_config(None).unwrap().is_empty());
    }
}
