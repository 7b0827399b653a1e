//! Request signing of the ECS/VPC/NAS RPC API, shared by the client that signs and the local cloud
//! that verifies: signature version 1.0 (HMAC-SHA1, parameters signed) here, version 3
//! (ACS3-HMAC-SHA256, headers signed) in [`v3`]. Pure code: no clock, no randomness, no I/O.
//!
//! The string to sign is `METHOD&%2F&` followed by the percent-encoded canonical query (parameters
//! sorted by name, each name and value percent-encoded, joined with `=` and `&`); the key is the
//! access key secret followed by `&`; the signature is the base64 of the HMAC-SHA1.

use std::collections::BTreeMap;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

pub mod v3;

/// Which signature a client sends: `v3` (ACS3-HMAC-SHA256, the SDKs' default) or `v1` (HMAC-SHA1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    #[default]
    V3,
}

pub const SIGNATURE_METHOD: &str = "HMAC-SHA1";
pub const SIGNATURE_VERSION: &str = "1.0";
/// How far a request's Timestamp may be from the server's clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 15 * 60;

/// Percent-encoding as the service requires: RFC 3986 unreserved characters stay, everything else
/// is `%XX` in upper case (so a space is `%20`, `*` is `%2A` and `~` stays).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
            out.push(char::from(b"0123456789ABCDEF"[(b & 0xf) as usize]));
        }
    }
    out
}

/// The canonical query of every parameter but `Signature`, sorted by name.
pub fn canonical_query(params: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (k, v) in params.iter().filter(|(k, _)| k.as_str() != "Signature") {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&percent_encode(k));
        out.push('=');
        out.push_str(&percent_encode(v));
    }
    out
}

pub fn string_to_sign(method: &str, params: &BTreeMap<String, String>) -> String {
    format!("{method}&{}&{}", percent_encode("/"), percent_encode(&canonical_query(params)))
}

fn mac(secret: &str, string_to_sign: &str) -> Hmac<Sha1> {
    let key = format!("{secret}&");
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(string_to_sign.as_bytes());
    mac
}

/// The signature of a request's parameters.
pub fn signature(secret: &str, method: &str, params: &BTreeMap<String, String>) -> String {
    let tag = mac(secret, &string_to_sign(method, params)).finalize().into_bytes();
    base64::engine::general_purpose::STANDARD.encode(tag)
}

/// The parameters every signed request carries besides its own.
pub struct CommonParams<'a> {
    pub action: &'a str,
    pub version: &'a str,
    pub access_key_id: &'a str,
    pub region_id: &'a str,
    /// Unique per request: the service refuses a nonce it has already seen.
    pub nonce: &'a str,
    /// `YYYY-MM-DDThh:mm:ssZ`, see [`format_timestamp`].
    pub timestamp: &'a str,
}

/// Adds the common parameters and the `Signature` to `params`.
pub fn sign(secret: &str, method: &str, common: &CommonParams<'_>, params: &mut BTreeMap<String, String>) {
    let mut put = |k: &str, v: &str| {
        params.insert(k.to_string(), v.to_string());
    };
    put("Action", common.action);
    put("Version", common.version);
    put("AccessKeyId", common.access_key_id);
    put("RegionId", common.region_id);
    put("Format", "JSON");
    put("SignatureMethod", SIGNATURE_METHOD);
    put("SignatureVersion", SIGNATURE_VERSION);
    put("SignatureNonce", common.nonce);
    put("Timestamp", common.timestamp);
    let sig = signature(secret, method, params);
    params.insert("Signature".to_string(), sig);
}

/// Whether `params` carry a valid signature for `secret`; compared in constant time.
pub fn verify(secret: &str, method: &str, params: &BTreeMap<String, String>) -> bool {
    let Some(given) = params.get("Signature") else { return false };
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(given) else { return false };
    mac(secret, &string_to_sign(method, params)).verify_slice(&given).is_ok()
}

/// Formats seconds since the Unix epoch as the service's `YYYY-MM-DDThh:mm:ssZ` (UTC).
pub fn format_timestamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Parses `YYYY-MM-DDThh:mm:ssZ` back into seconds since the Unix epoch.
pub fn parse_timestamp(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    u64::try_from(days).ok().map(|days| days * 86_400 + h * 3600 + mi * 60 + se)
}

// Howard Hinnant's civil calendar algorithms (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn encodes_like_the_service() {
        assert_eq!(percent_encode("a b*c~d/e"), "a%20b%2Ac~d%2Fe");
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_encode("A-Z_a.z~09"), "A-Z_a.z~09");
    }

    #[test]
    fn canonical_query_is_sorted_and_skips_the_signature() {
        let p = params(&[("b", "2"), ("a", "x y"), ("Signature", "zzz")]);
        assert_eq!(canonical_query(&p), "a=x%20y&b=2");
        assert_eq!(string_to_sign("GET", &p), "GET&%2F&a%3Dx%2520y%26b%3D2");
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // HMAC-SHA1 with key "testsecret&" over a fixed string, computed independently.
        let p = params(&[
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ]);
        assert_eq!(signature("testsecret", "GET", &p), "OLeaidS1JvxuMvnyHOwuJ+uX5qY=");
    }

    #[test]
    fn sign_then_verify_and_tamper() {
        let mut p = params(&[("VSwitchId", "vsw-1")]);
        let common = CommonParams {
            action: "CreateNetworkInterface",
            version: "2014-05-26",
            access_key_id: "ak",
            region_id: "local-1",
            nonce: "n1",
            timestamp: "2026-11-25T00:00:00Z",
        };
        sign("secret", "POST", &common, &mut p);
        assert!(verify("secret", "POST", &p));
        assert!(!verify("other", "POST", &p));
        assert!(!verify("secret", "GET", &p));
        p.insert("VSwitchId".into(), "vsw-2".into());
        assert!(!verify("secret", "POST", &p));
        p.remove("Signature");
        assert!(!verify("secret", "POST", &p));
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_timestamp(1_456_231_584), "2016-02-23T12:46:24Z");
        assert_eq!(parse_timestamp("2016-02-23T12:46:24Z"), Some(1_456_231_584));
        assert_eq!(parse_timestamp("2016-02-23 12:46:24"), None);
        assert_eq!(parse_timestamp("2016-13-23T12:46:24Z"), None);
    }

    proptest! {
        #[test]
        fn any_time_round_trips(t in 0u64..8_000_000_000) {
            prop_assert_eq!(parse_timestamp(&format_timestamp(t)), Some(t));
        }

        #[test]
        fn any_value_verifies(v in ".*", k in "[A-Za-z][A-Za-z0-9.]{0,20}") {
            let mut p = BTreeMap::new();
            p.insert(k, v);
            let common = CommonParams { action: "A", version: "1", access_key_id: "k", region_id: "r", nonce: "n", timestamp: "2026-01-01T00:00:00Z" };
            sign("s", "POST", &common, &mut p);
            prop_assert!(verify("s", "POST", &p));
        }
    }
}
