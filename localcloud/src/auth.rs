//! Checks of a signed request as the service makes them: the key, the signature, the clock and the
//! nonce.

use std::collections::{BTreeMap, HashMap};

use berth_cloud::error::code;
use berth_cloud::model::Credentials;
use berth_cloud::signing;

use crate::api::ApiFailure;

/// Nonces seen within the clock-skew window; a nonce seen again is a replay.
#[derive(Debug, Default)]
pub struct NonceCache {
    seen: HashMap<String, u64>,
}

impl NonceCache {
    /// Records `nonce`; false if it was already used within the window.
    fn admit(&mut self, nonce: &str, now: u64) -> bool {
        if self.seen.len() > 100_000 {
            self.seen.retain(|_, at| now.saturating_sub(*at) <= 2 * signing::MAX_CLOCK_SKEW_SECS);
        }
        match self.seen.get(nonce) {
            Some(at) if now.saturating_sub(*at) <= 2 * signing::MAX_CLOCK_SKEW_SECS => false,
            _ => {
                self.seen.insert(nonce.to_string(), now);
                true
            }
        }
    }
}

pub fn check(params: &BTreeMap<String, String>, method: &str, creds: &Credentials, now: u64, nonces: &mut NonceCache) -> Result<(), ApiFailure> {
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    for k in ["AccessKeyId", "Signature", "SignatureMethod", "SignatureVersion", "SignatureNonce", "Timestamp"] {
        if get(k).is_none() {
            return Err(ApiFailure::bad(code::INCOMPLETE_SIGNATURE, format!("The request signature is incomplete: \"{k}\" is missing.")));
        }
    }
    let key = get("AccessKeyId").unwrap_or_default();
    if key != creds.access_key_id {
        return Err(ApiFailure::not_found(code::INVALID_ACCESS_KEY_ID, format!("The AccessKeyId \"{key}\" does not exist; check the credentials file.")));
    }
    let method_param = get("SignatureMethod").unwrap_or_default();
    let version = get("SignatureVersion").unwrap_or_default();
    if method_param != signing::SIGNATURE_METHOD || version != signing::SIGNATURE_VERSION {
        return Err(ApiFailure::bad(
            code::INCOMPLETE_SIGNATURE,
            format!("SignatureMethod \"{method_param}\" / SignatureVersion \"{version}\" is not supported; use HMAC-SHA1 / 1.0."),
        ));
    }
    let ts = get("Timestamp").unwrap_or_default();
    let Some(at) = signing::parse_timestamp(ts) else {
        return Err(ApiFailure::bad(code::INVALID_TIMESTAMP_FORMAT, format!("Timestamp \"{ts}\" is not YYYY-MM-DDThh:mm:ssZ in UTC.")));
    };
    if at.abs_diff(now) > signing::MAX_CLOCK_SKEW_SECS {
        return Err(ApiFailure::bad(code::INVALID_TIMESTAMP_EXPIRED, format!("Timestamp {ts} is more than 15 minutes from the server's clock; check the client's clock.")));
    }
    if !signing::verify(&creds.access_key_secret, method, params) {
        return Err(ApiFailure::bad(
            code::SIGNATURE_DOES_NOT_MATCH,
            format!("Specified signature does not match our calculation; the string to sign was: {}", signing::string_to_sign(method, params)),
        ));
    }
    if !nonces.admit(get("SignatureNonce").unwrap_or_default(), now) {
        return Err(ApiFailure::bad(code::SIGNATURE_NONCE_USED, "Specified signature nonce was used already; send a fresh SignatureNonce with each request."));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(secret: &str, nonce: &str, ts: &str) -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        let common = signing::CommonParams { action: "DescribeVpcs", version: "2016-04-28", access_key_id: "ak", region_id: "local-1", nonce, timestamp: ts };
        signing::sign(secret, "POST", &common, &mut p);
        p
    }

    #[test]
    fn accepts_once_then_refuses_replay_skew_and_bad_signature() {
        let creds = Credentials { access_key_id: "ak".into(), access_key_secret: "sk".into() };
        let now = signing::parse_timestamp("2026-11-25T00:00:00Z").unwrap();
        let mut nonces = NonceCache::default();
        let p = signed("sk", "n1", "2026-11-25T00:00:00Z");
        assert!(check(&p, "POST", &creds, now, &mut nonces).is_ok());
        assert_eq!(check(&p, "POST", &creds, now, &mut nonces).unwrap_err().code, code::SIGNATURE_NONCE_USED);
        let stale = signed("sk", "n2", "2026-11-24T00:00:00Z");
        assert_eq!(check(&stale, "POST", &creds, now, &mut nonces).unwrap_err().code, code::INVALID_TIMESTAMP_EXPIRED);
        let wrong = signed("nope", "n3", "2026-11-25T00:00:00Z");
        let err = check(&wrong, "POST", &creds, now, &mut nonces).unwrap_err();
        assert_eq!((err.code.as_str(), err.status), (code::SIGNATURE_DOES_NOT_MATCH, 400));
        let mut missing = signed("sk", "n4", "2026-11-25T00:00:00Z");
        missing.remove("SignatureNonce");
        assert_eq!(check(&missing, "POST", &creds, now, &mut nonces).unwrap_err().code, code::INCOMPLETE_SIGNATURE);
    }
}
