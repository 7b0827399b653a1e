//! Checks of a signed request as the service makes them: the key (a long-term key or an STS key
//! with its security token), the signature (version 1.0 in the parameters, or version 3 in the
//! `Authorization` header), the clock and the nonce.

use std::collections::{BTreeMap, HashMap};

use berth_cloud::error::code;
use berth_cloud::model::Credentials;
use berth_cloud::signing::{self, v3};

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

/// Temporary credentials issued to an instance's RAM role.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_key_secret: String,
    pub security_token: String,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Every key the service knows: the account's long-term key and the STS keys it issued.
#[derive(Debug)]
pub struct Keys {
    pub root: Credentials,
    issued: HashMap<String, Issued>,
}

impl Keys {
    pub fn new(root: Credentials) -> Self {
        Keys { root, issued: HashMap::new() }
    }

    /// Records an STS key; keys expired for longer than a day are forgotten (their callers get
    /// `InvalidAccessKeyId.NotFound`, as for a key never issued).
    pub fn issue(&mut self, access_key_id: String, issued: Issued, now: u64) {
        self.issued.retain(|_, i| i.expires_at + 86_400 > now);
        self.issued.insert(access_key_id, issued);
    }

    /// The secret that signs for `key_id`, with the token check of an STS key.
    fn secret(&self, key_id: &str, token: Option<&str>, now: u64) -> Result<&str, ApiFailure> {
        if key_id == self.root.access_key_id {
            return Ok(&self.root.access_key_secret);
        }
        let Some(issued) = self.issued.get(key_id) else {
            return Err(ApiFailure::not_found(code::INVALID_ACCESS_KEY_ID, format!("The AccessKeyId \"{key_id}\" does not exist; check the credentials.")));
        };
        match token {
            None | Some("") => Err(ApiFailure::bad(
                code::SECURITY_TOKEN_MALFORMED,
                format!("The AccessKeyId \"{key_id}\" is an STS key: send its SecurityToken (x-acs-security-token with signature v3)."),
            )),
            Some(t) if t != issued.security_token => {
                Err(ApiFailure::bad(code::SECURITY_TOKEN_MISMATCH, format!("The SecurityToken is not the one issued with AccessKeyId \"{key_id}\".")))
            }
            Some(_) if now >= issued.expires_at => Err(ApiFailure::bad(
                code::INVALID_SECURITY_TOKEN,
                format!("Specified SecurityToken is expired (it expired at {}); fetch new role credentials.", signing::format_timestamp(issued.expires_at)),
            )),
            Some(_) => Ok(&issued.access_key_secret),
        }
    }
}

/// What a request presents for its signature: its method, its query parameters, the parameters of
/// its form body, its headers (lower-case names) and its raw body.
pub struct Presented<'a> {
    pub method: &'a str,
    pub query: &'a BTreeMap<String, String>,
    pub form: &'a BTreeMap<String, String>,
    pub headers: &'a BTreeMap<String, Vec<String>>,
    pub body: &'a [u8],
}

impl Presented<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.first()).map(|v| v.trim()).filter(|v| !v.is_empty())
    }
}

/// Checks a request signed with either version: version 3 when it has an `Authorization` header.
pub fn check(req: &Presented<'_>, keys: &Keys, now: u64, nonces: &mut NonceCache) -> Result<(), ApiFailure> {
    match req.header("authorization") {
        Some(auth) => check_v3(req, auth, keys, now, nonces),
        None => {
            let mut params = req.query.clone();
            params.extend(req.form.iter().map(|(k, v)| (k.clone(), v.clone())));
            check_v1(&params, req.method, keys, now, nonces)
        }
    }
}

fn incomplete(what: impl std::fmt::Display) -> ApiFailure {
    ApiFailure::bad(code::INCOMPLETE_SIGNATURE, format!("The request signature is incomplete: {what}."))
}

fn check_clock(ts: &str, field: &str, now: u64) -> Result<(), ApiFailure> {
    let Some(at) = signing::parse_timestamp(ts) else {
        return Err(ApiFailure::bad(code::INVALID_TIMESTAMP_FORMAT, format!("{field} \"{ts}\" is not YYYY-MM-DDThh:mm:ssZ in UTC.")));
    };
    if at.abs_diff(now) > signing::MAX_CLOCK_SKEW_SECS {
        return Err(ApiFailure::bad(code::INVALID_TIMESTAMP_EXPIRED, format!("{field} {ts} is more than 15 minutes from the server's clock; check the client's clock.")));
    }
    Ok(())
}

fn check_nonce(nonce: &str, field: &str, now: u64, nonces: &mut NonceCache) -> Result<(), ApiFailure> {
    if nonces.admit(nonce, now) {
        Ok(())
    } else {
        Err(ApiFailure::bad(code::SIGNATURE_NONCE_USED, format!("Specified signature nonce was used already; send a fresh {field} with each request.")))
    }
}

fn check_v1(params: &BTreeMap<String, String>, method: &str, keys: &Keys, now: u64, nonces: &mut NonceCache) -> Result<(), ApiFailure> {
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    for k in ["AccessKeyId", "Signature", "SignatureMethod", "SignatureVersion", "SignatureNonce", "Timestamp"] {
        if get(k).is_none() {
            return Err(incomplete(format_args!("\"{k}\" is missing")));
        }
    }
    let secret = keys.secret(get("AccessKeyId").unwrap_or_default(), get("SecurityToken"), now)?;
    let method_param = get("SignatureMethod").unwrap_or_default();
    let version = get("SignatureVersion").unwrap_or_default();
    if method_param != signing::SIGNATURE_METHOD || version != signing::SIGNATURE_VERSION {
        return Err(incomplete(format_args!(
            "SignatureMethod \"{method_param}\" / SignatureVersion \"{version}\" is not supported; use HMAC-SHA1 / 1.0, or signature v3 ({})",
            v3::ALGORITHM
        )));
    }
    check_clock(get("Timestamp").unwrap_or_default(), "Timestamp", now)?;
    if !signing::verify(secret, method, params) {
        return Err(ApiFailure::bad(
            code::SIGNATURE_DOES_NOT_MATCH,
            format!("Specified signature does not match our calculation; the string to sign was: {}", signing::string_to_sign(method, params)),
        ));
    }
    check_nonce(get("SignatureNonce").unwrap_or_default(), "SignatureNonce", now, nonces)
}

fn check_v3(req: &Presented<'_>, auth: &str, keys: &Keys, now: u64, nonces: &mut NonceCache) -> Result<(), ApiFailure> {
    let auth = v3::Authorization::parse(auth).map_err(incomplete)?;
    if auth.algorithm != v3::ALGORITHM {
        return Err(incomplete(format_args!("the algorithm \"{}\" is not supported; use {}", auth.algorithm, v3::ALGORITHM)));
    }
    for h in [v3::DATE, v3::NONCE, v3::CONTENT_SHA256, "host"] {
        if req.header(h).is_none() {
            return Err(incomplete(format_args!("the header \"{h}\" is missing")));
        }
    }
    // Every header that must be signed and is present is signed; every signed header is present.
    if let Some(unsigned) = req.headers.keys().find(|h| v3::must_sign(h) && !auth.signed_headers.contains(h)) {
        return Err(incomplete(format_args!("the header \"{unsigned}\" is sent but not in SignedHeaders")));
    }
    let mut signed = BTreeMap::new();
    for h in &auth.signed_headers {
        let Some(values) = req.headers.get(h) else {
            return Err(incomplete(format_args!("SignedHeaders names \"{h}\", which the request does not carry")));
        };
        signed.insert(h.clone(), values.clone());
    }
    let token = req.header(v3::SECURITY_TOKEN);
    if let Some(id) = req.header(v3::ACCESS_KEY_ID).filter(|id| *id != auth.credential) {
        return Err(ApiFailure::bad(code::SECURITY_TOKEN_MISMATCH, format!("x-acs-accesskey-id \"{id}\" is not the Credential \"{}\" of the Authorization header.", auth.credential)));
    }
    let secret = keys.secret(&auth.credential, token, now)?;
    check_clock(req.header(v3::DATE).unwrap_or_default(), v3::DATE, now)?;
    let payload = req.header(v3::CONTENT_SHA256).unwrap_or_default();
    let body_hash = v3::hex_sha256(req.body);
    if !payload.eq_ignore_ascii_case(&body_hash) {
        return Err(ApiFailure::bad(code::SIGNATURE_DOES_NOT_MATCH, format!("x-acs-content-sha256 \"{payload}\" is not the SHA-256 of the body ({body_hash}).")));
    }
    let canonical = v3::canonical_request(req.method, "/", req.query, &signed, payload);
    let string_to_sign = v3::string_to_sign(&canonical);
    if !v3::verify(secret, &string_to_sign, &auth.signature) {
        return Err(ApiFailure::bad(
            code::SIGNATURE_DOES_NOT_MATCH,
            format!("Specified signature does not match our calculation; the canonical request was: {canonical:?}"),
        ));
    }
    check_nonce(req.header(v3::NONCE).unwrap_or_default(), v3::NONCE, now, nonces)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-25T00:00:00Z";

    fn keys() -> Keys {
        Keys::new(Credentials { access_key_id: "ak".into(), access_key_secret: "sk".into() })
    }

    fn now() -> u64 {
        signing::parse_timestamp(NOW).unwrap()
    }

    fn v1(secret: &str, nonce: &str, ts: &str) -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        let common = signing::CommonParams { action: "DescribeVpcs", version: "2016-04-28", access_key_id: "ak", region_id: "local-1", nonce, timestamp: ts };
        signing::sign(secret, "POST", &common, &mut p);
        p
    }

    fn check_form(p: &BTreeMap<String, String>, keys: &Keys, nonces: &mut NonceCache) -> Result<(), ApiFailure> {
        let none = BTreeMap::new();
        check(&Presented { method: "POST", query: &none, form: p, headers: &none_headers(), body: b"" }, keys, now(), nonces)
    }

    fn none_headers() -> BTreeMap<String, Vec<String>> {
        BTreeMap::new()
    }

    #[test]
    fn v1_accepts_once_then_refuses_replay_skew_and_bad_signature() {
        let keys = keys();
        let mut nonces = NonceCache::default();
        let p = v1("sk", "n1", NOW);
        assert!(check_form(&p, &keys, &mut nonces).is_ok());
        assert_eq!(check_form(&p, &keys, &mut nonces).unwrap_err().code, code::SIGNATURE_NONCE_USED);
        let stale = v1("sk", "n2", "2026-11-24T00:00:00Z");
        assert_eq!(check_form(&stale, &keys, &mut nonces).unwrap_err().code, code::INVALID_TIMESTAMP_EXPIRED);
        let wrong = v1("nope", "n3", NOW);
        let err = check_form(&wrong, &keys, &mut nonces).unwrap_err();
        assert_eq!((err.code.as_str(), err.status), (code::SIGNATURE_DOES_NOT_MATCH, 400));
        let mut missing = v1("sk", "n4", NOW);
        missing.remove("SignatureNonce");
        assert_eq!(check_form(&missing, &keys, &mut nonces).unwrap_err().code, code::INCOMPLETE_SIGNATURE);
    }

    struct V3 {
        query: BTreeMap<String, String>,
        headers: BTreeMap<String, Vec<String>>,
        body: Vec<u8>,
    }

    fn v3_signed(key: &str, secret: &str, token: Option<&str>, nonce: &str, date: &str) -> V3 {
        let query: BTreeMap<String, String> = [("VpcId".to_string(), "vpc-1".to_string())].into();
        let req = v3::Request { method: "POST", host: "127.0.0.1:9", action: "DescribeVSwitches", version: "2016-04-28", date, nonce, access_key_id: key, security_token: token };
        let headers = v3::sign(secret, &req, &query, b"").into_iter().map(|(k, v)| (k, vec![v])).collect();
        V3 { query, headers, body: Vec::new() }
    }

    fn check_v3_req(r: &V3, keys: &Keys, at: u64, nonces: &mut NonceCache) -> Result<(), ApiFailure> {
        let form = BTreeMap::new();
        check(&Presented { method: "POST", query: &r.query, form: &form, headers: &r.headers, body: &r.body }, keys, at, nonces)
    }

    #[test]
    fn v3_accepts_once_then_refuses_replay_skew_tampering_and_unsigned_headers() {
        let keys = keys();
        let mut nonces = NonceCache::default();
        let ok = v3_signed("ak", "sk", None, "n1", NOW);
        check_v3_req(&ok, &keys, now(), &mut nonces).unwrap();
        assert_eq!(check_v3_req(&ok, &keys, now(), &mut nonces).unwrap_err().code, code::SIGNATURE_NONCE_USED);
        let stale = v3_signed("ak", "sk", None, "n2", "2026-11-24T00:00:00Z");
        assert_eq!(check_v3_req(&stale, &keys, now(), &mut nonces).unwrap_err().code, code::INVALID_TIMESTAMP_EXPIRED);
        let wrong = v3_signed("ak", "nope", None, "n3", NOW);
        assert_eq!(check_v3_req(&wrong, &keys, now(), &mut nonces).unwrap_err().code, code::SIGNATURE_DOES_NOT_MATCH);
        let mut tampered = v3_signed("ak", "sk", None, "n4", NOW);
        tampered.query.insert("VpcId".into(), "vpc-2".into());
        assert_eq!(check_v3_req(&tampered, &keys, now(), &mut nonces).unwrap_err().code, code::SIGNATURE_DOES_NOT_MATCH);
        let mut body = v3_signed("ak", "sk", None, "n5", NOW);
        body.body = b"VpcId=vpc-3".to_vec();
        let err = check_v3_req(&body, &keys, now(), &mut nonces).unwrap_err();
        assert!(err.code == code::SIGNATURE_DOES_NOT_MATCH && err.message.contains("x-acs-content-sha256"), "{err:?}");
        let mut unsigned = v3_signed("ak", "sk", None, "n6", NOW);
        unsigned.headers.insert("x-acs-extra".into(), vec!["1".into()]);
        let err = check_v3_req(&unsigned, &keys, now(), &mut nonces).unwrap_err();
        assert!(err.code == code::INCOMPLETE_SIGNATURE && err.message.contains("x-acs-extra"), "{err:?}");
        let mut no_date = v3_signed("ak", "sk", None, "n7", NOW);
        no_date.headers.remove(v3::DATE);
        assert_eq!(check_v3_req(&no_date, &keys, now(), &mut nonces).unwrap_err().code, code::INCOMPLETE_SIGNATURE);
        let unknown = v3_signed("LTAIwho", "sk", None, "n8", NOW);
        assert_eq!(check_v3_req(&unknown, &keys, now(), &mut nonces).unwrap_err().code, code::INVALID_ACCESS_KEY_ID);
    }

    #[test]
    fn sts_keys_need_their_token_and_expire() {
        let mut keys = keys();
        let mut nonces = NonceCache::default();
        let at = now();
        keys.issue("STS.a".into(), Issued { access_key_secret: "tmp".into(), security_token: "tok".into(), expires_at: at + 60 }, at);
        check_v3_req(&v3_signed("STS.a", "tmp", Some("tok"), "s1", NOW), &keys, at, &mut nonces).unwrap();
        let err = check_v3_req(&v3_signed("STS.a", "tmp", Some("tok"), "s2", NOW), &keys, at + 60, &mut nonces).unwrap_err();
        assert_eq!((err.code.as_str(), err.status), (code::INVALID_SECURITY_TOKEN, 400));
        assert_eq!(check_v3_req(&v3_signed("STS.a", "tmp", Some("other"), "s3", NOW), &keys, at, &mut nonces).unwrap_err().code, code::SECURITY_TOKEN_MISMATCH);
        assert_eq!(check_v3_req(&v3_signed("STS.a", "tmp", None, "s4", NOW), &keys, at, &mut nonces).unwrap_err().code, code::SECURITY_TOKEN_MALFORMED);
        // Version 1 carries the token as SecurityToken.
        let mut p = BTreeMap::new();
        p.insert("SecurityToken".to_string(), "tok".to_string());
        let common = signing::CommonParams { action: "DescribeVpcs", version: "2016-04-28", access_key_id: "STS.a", region_id: "local-1", nonce: "s5", timestamp: NOW };
        signing::sign("tmp", "POST", &common, &mut p);
        check_form(&p, &keys, &mut nonces).unwrap();
    }
}
