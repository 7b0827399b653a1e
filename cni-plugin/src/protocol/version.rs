//! Which CNI versions `berth` speaks, and which commands each version has.

use super::error::{CniError, code};

pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// A version as (major, minor, patch), or `None` when it is not `X.Y.Z`.
pub fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let version = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(version)
}

/// Refuses a version we do not speak with code 1, listing the ones we do.
pub fn check(v: &str) -> Result<(), CniError> {
    if SUPPORTED.contains(&v) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("incompatible CNI version \"{v}\""),
            format!("berth supports {}; set cniVersion in the network config to one of them", SUPPORTED.join(", ")),
        ))
    }
}

/// Whether `v` is at least `min` (both valid).
pub fn at_least(v: &str, min: &str) -> bool {
    matches!((parse(v), parse(min)), (Some(a), Some(b)) if a >= b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        assert_eq!(parse("1.1.0"), Some((1, 1, 0)));
        assert_eq!(parse("1.1"), None);
        assert_eq!(parse("1.1.0.0"), None);
        assert!(at_least("1.1.0", "0.4.0"));
        assert!(!at_least("0.3.1", "0.4.0"));
        assert!(check("0.4.0").is_ok());
        let e = check("0.2.0").unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.msg.contains("0.2.0") && e.details.contains("1.1.0"));
    }
}
