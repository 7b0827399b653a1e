//! The client against a scripted HTTP server: signing, retries, ClientToken reuse, error shapes.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Router, routing::post};
use berth_cloud::api::Addresses;
use berth_cloud::model::Credentials;
use berth_cloud::retry::RetryPolicy;
use berth_cloud::{Cloud, CloudError, ClientConfig, HttpCloud, signing};

/// Answers each request with the next scripted (status, body) and records the parameters it got
/// (query and form body together) and, for signature v3, its headers.
type Headers = BTreeMap<String, Vec<String>>;

#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<Vec<(u16, String)>>>,
    seen: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    queries: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    headers: Arc<Mutex<Vec<Headers>>>,
    fetched: Arc<Mutex<Vec<String>>>,
}

async fn handle(State(s): State<Script>, Query(q): Query<BTreeMap<String, String>>, headers: HeaderMap, body: axum::body::Bytes) -> impl IntoResponse {
    // A form body (signature v1), decoded as a query would be.
    let form = reqwest::Url::parse(&format!("http://form/?{}", String::from_utf8_lossy(&body))).unwrap();
    let mut all = q.clone();
    all.extend(form.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())));
    s.seen.lock().unwrap().push(all);
    s.queries.lock().unwrap().push(q);
    let mut hs = Headers::new();
    for (k, v) in &headers {
        hs.entry(k.as_str().to_string()).or_default().push(v.to_str().unwrap().to_string());
    }
    s.headers.lock().unwrap().push(hs);
    let (status, body) = s.answers.lock().unwrap().remove(0);
    (StatusCode::from_u16(status).unwrap(), body)
}

/// Role credentials valid for an hour, a new key each time.
async fn role_credentials(State(s): State<Script>, axum::extract::Path(role): axum::extract::Path<String>) -> String {
    let n = {
        let mut f = s.fetched.lock().unwrap();
        f.push(role);
        f.len()
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    serde_json::json!({
        "AccessKeyId": format!("STS.k{n}"), "AccessKeySecret": format!("s{n}"), "SecurityToken": format!("t{n}"),
        "Expiration": signing::format_timestamp(now + 3600), "Code": "Success",
    })
    .to_string()
}

async fn serve(answers: Vec<(u16, &str)>) -> (String, Script) {
    let script = Script { answers: Arc::new(Mutex::new(answers.into_iter().map(|(s, b)| (s, b.to_string())).collect())), ..Default::default() };
    let app = Router::new()
        .route("/", post(handle))
        .route("/latest/meta-data/ram/security-credentials/{role}", axum::routing::get(role_credentials))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), script)
}

fn client(endpoint: &str) -> HttpCloud {
    client_signing(endpoint, signing::Version::V1)
}

fn client_signing(endpoint: &str, signature: signing::Version) -> HttpCloud {
    let mut cfg = ClientConfig::new(endpoint, "local-1", Credentials { access_key_id: "ak".into(), access_key_secret: "sk".into() });
    cfg.signature = signature;
    cfg.retry = RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5) };
    HttpCloud::new(cfg).unwrap()
}

const THROTTLED: &str = r#"{"RequestId":"r","HostId":"h","Code":"Throttling","Message":"Request was denied due to flow control."}"#;
const ASSIGNED: &str = r#"{"RequestId":"r","AssignedPrivateIpAddressesSet":{"NetworkInterfaceId":"eni-1","PrivateIpSet":{"PrivateIpAddress":["10.0.0.7","10.0.0.8"]}}}"#;

#[tokio::test]
async fn throttling_is_retried_with_the_same_client_token_and_fresh_nonces() {
    let (url, script) = serve(vec![(400, THROTTLED), (400, THROTTLED), (200, ASSIGNED)]).await;
    let ips = client(&url).assign_private_ips("eni-1", &Addresses::Count(2), Some("intent-42")).await.unwrap();
    assert_eq!(ips, vec!["10.0.0.7".parse::<std::net::Ipv4Addr>().unwrap(), "10.0.0.8".parse().unwrap()]);
    let seen = script.seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for p in seen.iter() {
        assert_eq!(p["ClientToken"], "intent-42");
        assert_eq!(p["Action"], "AssignPrivateIpAddresses");
        assert_eq!(p["Version"], "2014-05-26");
        assert_eq!(p["SecondaryPrivateIpAddressCount"], "2");
        assert!(signing::verify("sk", "POST", p), "every attempt is signed");
    }
    let nonces: std::collections::HashSet<_> = seen.iter().map(|p| p["SignatureNonce"].clone()).collect();
    assert_eq!(nonces.len(), 3, "a nonce is never reused");
}

#[tokio::test]
async fn signature_v3_is_the_default_and_each_retry_is_signed_afresh_in_the_headers() {
    assert_eq!(ClientConfig::new("http://x", "r", Credentials { access_key_id: "a".into(), access_key_secret: "s".into() }).signature, signing::Version::V3);
    let (url, script) = serve(vec![(400, THROTTLED), (200, ASSIGNED)]).await;
    client_signing(&url, signing::Version::V3).assign_private_ips("eni-1", &Addresses::Count(2), Some("intent-7")).await.unwrap();
    let queries = script.queries.lock().unwrap();
    let headers = script.headers.lock().unwrap();
    assert_eq!(queries.len(), 2);
    for (q, h) in queries.iter().zip(headers.iter()) {
        assert_eq!(q["ClientToken"], "intent-7");
        assert_eq!(q["RegionId"], "local-1");
        assert!(!q.contains_key("Action") && !q.contains_key("Signature"), "v3 names the action in a header: {q:?}");
        assert_eq!(h[signing::v3::ACTION], vec!["AssignPrivateIpAddresses"]);
        assert_eq!(h[signing::v3::VERSION], vec!["2014-05-26"]);
        let auth = signing::v3::Authorization::parse(&h["authorization"][0]).unwrap();
        assert_eq!(auth.credential, "ak");
        let signed: BTreeMap<String, Vec<String>> = auth.signed_headers.iter().map(|k| (k.clone(), h[k].clone())).collect();
        assert!(signed.contains_key("host") && signed.contains_key(signing::v3::CONTENT_SHA256), "{:?}", auth.signed_headers);
        let canonical = signing::v3::canonical_request("POST", "/", q, &signed, &signing::v3::hex_sha256(b""));
        assert!(signing::v3::verify("sk", &signing::v3::string_to_sign(&canonical), &auth.signature), "the signature covers what the server got");
    }
    assert_ne!(headers[0][signing::v3::NONCE], headers[1][signing::v3::NONCE], "a nonce is never reused");
}

#[tokio::test]
async fn a_token_the_service_calls_expired_is_fetched_again_and_the_call_retried() {
    let expired = r#"{"RequestId":"r","HostId":"h","Code":"InvalidSecurityToken.Expired","Message":"Specified SecurityToken is expired."}"#;
    let (url, script) = serve(vec![(400, expired), (200, ASSIGNED)]).await;
    let mut cfg = ClientConfig::new(&url, "local-1", berth_cloud::credentials::Source::RamRole { metadata_url: format!("{url}/latest/meta-data"), role: "node".into() });
    cfg.retry = RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5) };
    let cloud = HttpCloud::new(cfg).unwrap();
    cloud.assign_private_ips("eni-1", &Addresses::Count(2), None).await.unwrap();
    assert_eq!(*script.fetched.lock().unwrap(), vec!["node", "node"]);
    assert_eq!(cloud.credential_fetches(), 2);
    let headers = script.headers.lock().unwrap();
    let tokens: Vec<&str> = headers.iter().map(|h| h[signing::v3::SECURITY_TOKEN][0].as_str()).collect();
    assert_eq!(tokens, vec!["t1", "t2"], "the retry carries the new token");
    let keys: Vec<&str> = headers.iter().map(|h| h[signing::v3::ACCESS_KEY_ID][0].as_str()).collect();
    assert_eq!(keys, vec!["STS.k1", "STS.k2"]);
}

#[tokio::test]
async fn a_non_retryable_error_comes_back_at_once_with_its_code() {
    let body = r#"{"RequestId":"r9","HostId":"h","Code":"InvalidVSwitchId.IpNotEnough","Message":"The specified VSwitch \"vsw-1\" has not enough IpAddress."}"#;
    let (url, script) = serve(vec![(403, body)]).await;
    let err = client(&url).assign_private_ips("eni-1", &Addresses::Count(1), None).await.unwrap_err();
    assert!(err.is_code("InvalidVSwitchId.IpNotEnough"), "{err}");
    let api = err.api().unwrap();
    assert_eq!(api.http_status, 403);
    assert_eq!(api.request_id, "r9");
    assert_eq!(script.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn retries_end_with_the_last_error() {
    let (url, script) = serve(vec![(400, THROTTLED); 4]).await;
    let err = client(&url).delete_network_interface("eni-1").await.unwrap_err();
    assert!(matches!(err, CloudError::RetriesExhausted { attempts: 4, .. }), "{err}");
    assert!(err.is_code("Throttling"));
    assert_eq!(script.seen.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = client(&url).describe_vpcs(None).await.unwrap_err();
    assert!(err.to_string().contains(&url), "{err}");
}

#[test]
fn credentials_readable_by_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials");
    std::fs::write(&path, "access_key_id = \"ak\"\naccess_key_secret = \"sk\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = berth_cloud::client::load_credentials(&path).unwrap_err().to_string();
    assert!(err.contains("chmod 600") && err.contains("0644"), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let creds = berth_cloud::client::load_credentials(&path).unwrap();
    assert_eq!(creds.access_key_id, "ak");
    assert!(!format!("{creds:?}").contains("sk"), "the secret never shows in Debug");
}
