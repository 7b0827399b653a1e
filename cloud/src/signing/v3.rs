//! Signature version 3 (`ACS3-HMAC-SHA256`), the official SDKs' default: the action, version, date
//! and nonce travel in `x-acs-*` headers, the parameters in the query (RPC style), and the
//! `Authorization` header signs a canonical request. Pure code: no clock, no randomness, no I/O.
//!
//! - canonical request: `METHOD\nPATH\nQUERY\nHEADERS\nSIGNED\nPAYLOAD` where QUERY is every
//!   parameter sorted by name as `name=value` (percent-encoded as in v1) joined by `&`, HEADERS is
//!   `name:value\n` per signed header (names in lower case, sorted, values trimmed, repeated values
//!   sorted and joined by `,`), SIGNED the names joined by `;` and PAYLOAD the hex SHA-256 of the
//!   body (also sent as `x-acs-content-sha256`);
//! - string to sign: `ACS3-HMAC-SHA256\n` and the hex SHA-256 of the canonical request;
//! - signature: the hex HMAC-SHA256 of that string, keyed by the access key secret;
//! - `Authorization: ACS3-HMAC-SHA256 Credential=<key id>,SignedHeaders=<signed>,Signature=<sig>`.
//!
//! Every `x-acs-*` header, `host` and `content-type` a request carries must be signed.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::percent_encode;

pub const ALGORITHM: &str = "ACS3-HMAC-SHA256";
pub const ACTION: &str = "x-acs-action";
pub const VERSION: &str = "x-acs-version";
pub const DATE: &str = "x-acs-date";
pub const NONCE: &str = "x-acs-signature-nonce";
pub const CONTENT_SHA256: &str = "x-acs-content-sha256";
pub const SECURITY_TOKEN: &str = "x-acs-security-token";
pub const ACCESS_KEY_ID: &str = "x-acs-accesskey-id";

pub fn hex_sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The query part of the canonical request: every parameter, sorted by name.
pub fn canonical_query(params: &BTreeMap<String, String>) -> String {
    params.iter().map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v))).collect::<Vec<_>>().join("&")
}

/// Whether a header must be signed when present.
pub fn must_sign(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "host" || n == "content-type" || n.starts_with("x-acs-")
}

/// The canonical request of `method` on `path` with `query`, the signed `headers` (lower-case
/// name → values as received) and the hex SHA-256 of the body.
pub fn canonical_request(method: &str, path: &str, query: &BTreeMap<String, String>, headers: &BTreeMap<String, Vec<String>>, payload_sha256: &str) -> String {
    let mut canon_headers = String::new();
    for (name, values) in headers {
        let mut vs: Vec<&str> = values.iter().map(|v| v.trim()).collect();
        vs.sort_unstable();
        canon_headers.push_str(&format!("{name}:{}\n", vs.join(",")));
    }
    let signed = headers.keys().cloned().collect::<Vec<_>>().join(";");
    let path = if path.is_empty() { "/" } else { path };
    format!("{method}\n{path}\n{}\n{canon_headers}\n{signed}\n{payload_sha256}", canonical_query(query))
}

pub fn string_to_sign(canonical_request: &str) -> String {
    format!("{ALGORITHM}\n{}", hex_sha256(canonical_request.as_bytes()))
}

fn mac(secret: &str, string_to_sign: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(string_to_sign.as_bytes());
    mac
}

pub fn signature(secret: &str, string_to_sign: &str) -> String {
    hex(&mac(secret, string_to_sign).finalize().into_bytes())
}

/// Whether `given` (hex) is the signature of `string_to_sign`; compared in constant time.
pub fn verify(secret: &str, string_to_sign: &str, given: &str) -> bool {
    let Some(bytes) = unhex(given) else { return false };
    mac(secret, string_to_sign).verify_slice(&bytes).is_ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The parts of an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub algorithm: String,
    pub credential: String,
    /// Lower-case header names, in the order given.
    pub signed_headers: Vec<String>,
    pub signature: String,
}

impl Authorization {
    pub fn header(&self) -> String {
        format!("{} Credential={},SignedHeaders={},Signature={}", self.algorithm, self.credential, self.signed_headers.join(";"), self.signature)
    }

    /// Parses `ALGORITHM Credential=…,SignedHeaders=…,Signature=…`; the error names what is missing.
    pub fn parse(value: &str) -> Result<Authorization, String> {
        let (algorithm, rest) = value.trim().split_once(' ').ok_or_else(|| "Authorization has no algorithm before Credential=".to_string())?;
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for part in rest.split(',') {
            if let Some((k, v)) = part.trim().split_once('=') {
                fields.insert(k, v);
            }
        }
        let field = |k: &str| fields.get(k).copied().filter(|v| !v.is_empty()).ok_or_else(|| format!("Authorization has no {k}="));
        Ok(Authorization {
            algorithm: algorithm.to_string(),
            credential: field("Credential")?.to_string(),
            signed_headers: field("SignedHeaders")?.split(';').map(str::to_ascii_lowercase).collect(),
            signature: field("Signature")?.to_string(),
        })
    }
}

/// What a client signs besides the parameters.
pub struct Request<'a> {
    pub method: &'a str,
    /// The `host` header as sent: the endpoint's host and port.
    pub host: &'a str,
    pub action: &'a str,
    pub version: &'a str,
    /// `YYYY-MM-DDThh:mm:ssZ`, see [`super::format_timestamp`].
    pub date: &'a str,
    pub nonce: &'a str,
    pub access_key_id: &'a str,
    /// An STS token, sent as `x-acs-security-token`.
    pub security_token: Option<&'a str>,
}

/// The headers to send with a request whose parameters are `query` and whose body is `body`,
/// `Authorization` included (`host` included too: a client must send exactly that value).
pub fn sign(secret: &str, req: &Request<'_>, query: &BTreeMap<String, String>, body: &[u8]) -> Vec<(String, String)> {
    let payload = hex_sha256(body);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        headers.insert(k.to_string(), vec![v.to_string()]);
    };
    put("host", req.host);
    put(ACTION, req.action);
    put(VERSION, req.version);
    put(DATE, req.date);
    put(NONCE, req.nonce);
    put(CONTENT_SHA256, &payload);
    if let Some(token) = req.security_token {
        put(SECURITY_TOKEN, token);
        put(ACCESS_KEY_ID, req.access_key_id);
    }
    let canonical = canonical_request(req.method, "/", query, &headers, &payload);
    let auth = Authorization {
        algorithm: ALGORITHM.to_string(),
        credential: req.access_key_id.to_string(),
        signed_headers: headers.keys().cloned().collect(),
        signature: signature(secret, &string_to_sign(&canonical)),
    };
    let mut out: Vec<(String, String)> = headers.into_iter().map(|(k, mut v)| (k, v.remove(0))).collect();
    out.push(("authorization".to_string(), auth.header()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn req(token: Option<&str>) -> Request<'_> {
        Request {
            method: "POST",
            host: "ecs.cn-shanghai.aliyuncs.com",
            action: "RunInstances",
            version: "2014-05-26",
            date: "2023-10-26T10:22:32Z",
            nonce: "3156853299f313e23d1673dc12e1703d",
            access_key_id: "YourAccessKeyId",
            security_token: token,
        }
    }

    #[test]
    fn canonical_request_has_the_documented_shape() {
        let query = q(&[("RegionId", "cn-shanghai"), ("ImageId", "win 2019*")]);
        let mut headers = BTreeMap::new();
        headers.insert("host".to_string(), vec!["ecs.cn-shanghai.aliyuncs.com".to_string()]);
        headers.insert("x-acs-action".to_string(), vec![" RunInstances ".to_string()]);
        let empty = hex_sha256(b"");
        assert_eq!(empty, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let c = canonical_request("POST", "/", &query, &headers, &empty);
        assert_eq!(
            c,
            format!("POST\n/\nImageId=win%202019%2A&RegionId=cn-shanghai\nhost:ecs.cn-shanghai.aliyuncs.com\nx-acs-action:RunInstances\n\nhost;x-acs-action\n{empty}")
        );
    }

    #[test]
    fn signature_matches_a_vector_of_the_official_sdk() {
        // The worked example of the public "V3 request structure and signature" page (RunInstances
        // in cn-shanghai); the official Python SDK's signer gives the same signature for it.
        let query = q(&[("ImageId", "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd"), ("RegionId", "cn-shanghai")]);
        let headers = sign("YourAccessKeySecret", &req(None), &query, b"");
        let auth = headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.clone()).unwrap();
        assert_eq!(
            auth,
            format!("ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature={SDK_VECTOR}")
        );
    }

    const SDK_VECTOR: &str = "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0";

    #[test]
    fn sign_then_verify_and_tamper() {
        let query = q(&[("VSwitchId", "vsw-1")]);
        let headers = sign("secret", &req(Some("tok")), &query, b"");
        let auth = Authorization::parse(&headers.iter().find(|(k, _)| k == "authorization").unwrap().1).unwrap();
        assert!(auth.signed_headers.contains(&SECURITY_TOKEN.to_string()));
        let signed: BTreeMap<String, Vec<String>> =
            headers.iter().filter(|(k, _)| k != "authorization").map(|(k, v)| (k.clone(), vec![v.clone()])).collect();
        let sts = string_to_sign(&canonical_request("POST", "/", &query, &signed, &hex_sha256(b"")));
        assert!(verify("secret", &sts, &auth.signature));
        assert!(!verify("other", &sts, &auth.signature));
        let tampered = string_to_sign(&canonical_request("POST", "/", &q(&[("VSwitchId", "vsw-2")]), &signed, &hex_sha256(b"")));
        assert!(!verify("secret", &tampered, &auth.signature));
        assert!(!verify("secret", &sts, "zz"));
    }

    #[test]
    fn authorization_parses_and_names_what_is_missing() {
        let a = Authorization::parse("ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=host;X-Acs-Date,Signature=ab").unwrap();
        assert_eq!(a.credential, "ak");
        assert_eq!(a.signed_headers, vec!["host", "x-acs-date"]);
        assert_eq!(a.header(), "ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=host;x-acs-date,Signature=ab");
        assert!(Authorization::parse("ACS3-HMAC-SHA256 Credential=ak,Signature=ab").unwrap_err().contains("SignedHeaders"));
        assert!(Authorization::parse("garbage").is_err());
    }
}
