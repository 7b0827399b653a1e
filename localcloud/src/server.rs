//! HTTP: the RPC API on `/`, the admin API under `/_localcloud/`, instance metadata for tools under
//! `/_localcloud/metadata/<instance-id>/latest/meta-data/`, Prometheus metrics on `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use berth_cloud::signing;
use berth_cloud::wire::{ErrorBody, Product};

use crate::api::ApiFailure;
use crate::engine::{Engine, now_secs};
use crate::faults::{FaultKind, Faults};
use crate::metrics::Resources;
use crate::{auth, metadata};

/// The products a listener serves the RPC API of; an action of another product is answered
/// `InvalidAction.NotFound`, as the real endpoint of one product answers another's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serves(pub Vec<Product>);

impl Serves {
    pub fn all() -> Self {
        Serves(vec![Product::Ecs, Product::Vpc, Product::Nas])
    }

    fn check(&self, action: &str) -> Result<(), ApiFailure> {
        let product = Product::of(action);
        if self.0.contains(&product) {
            return Ok(());
        }
        let served: Vec<&str> = self.0.iter().map(|p| p.name()).collect();
        Err(ApiFailure::not_found(
            berth_cloud::error::code::INVALID_ACTION,
            format!("Specified api is not found: {action} is a {} action and this endpoint serves {}.", product.name(), served.join(", ")),
        ))
    }
}

/// The main listener: the RPC API of the products in `serves`, the admin API, metadata, metrics.
pub fn router(engine: Arc<Engine>, serves: Serves) -> Router {
    Router::new()
        .route("/", get(rpc).post(rpc))
        .route("/metrics", get(metrics))
        .route("/_localcloud/status", get(status))
        .route("/_localcloud/faults", get(get_faults).put(put_faults))
        .route("/_localcloud/metadata/{instance}/latest/meta-data/", get(meta_root))
        .route("/_localcloud/metadata/{instance}/latest/meta-data/{*path}", get(meta))
        .layer(axum::Extension(serves))
        .with_state(engine)
}

/// A listener of one product's RPC API only, as that product's own endpoint.
pub fn product_router(engine: Arc<Engine>, product: Product) -> Router {
    Router::new().route("/", get(rpc).post(rpc)).layer(axum::Extension(Serves(vec![product]))).with_state(engine)
}

fn json(status: u16, body: &impl serde::Serialize) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json;charset=utf-8")], serde_json::to_vec(body).unwrap_or_default()).into_response()
}

fn failure(f: ApiFailure, request_id: String) -> Response {
    json(f.status, &ErrorBody { request_id, host_id: "localcloud".into(), code: f.code, message: f.message, recommend: String::new() })
}

fn parse_pairs(text: &str, into: &mut BTreeMap<String, String>) {
    for (k, v) in form_urlencoded(text) {
        into.insert(k, v);
    }
}

/// `application/x-www-form-urlencoded` and query strings: `+` is a space, `%XX` a byte.
fn form_urlencoded(text: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (decode(k), decode(v))
    }).collect()
}

async fn rpc(State(engine): State<Arc<Engine>>, axum::Extension(serves): axum::Extension<Serves>, method: Method, headers: HeaderMap, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let started = Instant::now();
    // A caller's trace (a pod's ADD) on the line of every call it made.
    let trace_id = headers.get(berth_cloud::trace::CLOUD_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let request_id = uuid::Uuid::new_v4().to_string().to_uppercase();
    let (action, answer) = serve_rpc(&engine, &serves, method, &headers, query, body, &trace_id, &request_id).await;
    let outcome = answer.as_ref().map_or_else(|f| f.code.as_str(), |_| "ok");
    engine.calls.call(crate::api::action_label(&action), outcome, started.elapsed());
    match answer {
        Ok(body) => json(200, &body),
        Err(f) => failure(f, request_id),
    }
}

/// Header names in lower case with every value each carries, as signature v3 signs them.
fn header_lists(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        out.entry(name.as_str().to_string()).or_default().push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    out
}

/// One RPC call: the action it named (empty if none) and the body to answer, or the failure.
/// Signature v1 names the action and version in the parameters, v3 in `x-acs-action` and
/// `x-acs-version`; both take parameters from the query and a form body.
#[allow(clippy::too_many_arguments)]
async fn serve_rpc(engine: &Arc<Engine>, serves: &Serves, method: Method, headers: &HeaderMap, query: Option<String>, body: Bytes, trace_id: &str, request_id: &str) -> (String, Result<serde_json::Value, ApiFailure>) {
    let mut query_params = BTreeMap::new();
    parse_pairs(query.as_deref().unwrap_or_default(), &mut query_params);
    let mut form = BTreeMap::new();
    let is_form = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_none_or(|t| t.starts_with("application/x-www-form-urlencoded"));
    if method == Method::POST && is_form {
        parse_pairs(&String::from_utf8_lossy(&body), &mut form);
    }
    let headers = header_lists(headers);
    let checked = {
        let presented = auth::Presented { method: method.as_str(), query: &query_params, form: &form, headers: &headers, body: &body };
        let keys = engine.keys.lock().unwrap_or_else(|e| e.into_inner());
        auth::check(&presented, &keys, now_secs(), &mut engine.nonces.lock().unwrap_or_else(|e| e.into_inner()))
    };
    let mut params = query_params;
    params.extend(form);
    for (h, p) in [(signing::v3::ACTION, "Action"), (signing::v3::VERSION, "Version")] {
        if let Some(v) = headers.get(h).and_then(|v| v.first()) {
            params.entry(p.to_string()).or_insert_with(|| v.clone());
        }
    }
    let action = params.get("Action").cloned().unwrap_or_default();
    let answer = match checked.and_then(|()| if action.is_empty() { Ok(()) } else { serves.check(&action) }) {
        Ok(()) => answer_rpc(engine, params, &action, trace_id, request_id).await,
        Err(f) => Err(f),
    };
    (action, answer)
}

/// The region a request names must be the one served here; an action whose API model has no
/// `RegionId` may leave it out (the endpoint names the region), as the official SDKs do.
fn check_region(action: &str, region: Option<&str>, served: &str) -> Result<(), ApiFailure> {
    match region {
        None if !berth_cloud::wire::takes_region_id(action) => Ok(()),
        None => Err(ApiFailure::bad(berth_cloud::error::code::MISSING_PARAMETER, format!("{action} needs RegionId; use {served}."))),
        Some(r) if r == served => Ok(()),
        Some(r) => Err(ApiFailure::bad(berth_cloud::error::code::INVALID_PARAMETER, format!("RegionId \"{r}\" is not served here; use {served}."))),
    }
}

async fn answer_rpc(engine: &Arc<Engine>, params: BTreeMap<String, String>, action: &str, trace_id: &str, request_id: &str) -> Result<serde_json::Value, ApiFailure> {
    if action.is_empty() {
        return Err(ApiFailure::bad(berth_cloud::error::code::MISSING_PARAMETER, "The input parameter \"Action\" that is mandatory for processing this request is not supplied."));
    }
    let version = params.get("Version").map(String::as_str).unwrap_or_default();
    let want = Product::of(action).version();
    if version != want {
        return Err(ApiFailure::bad(berth_cloud::error::code::INVALID_PARAMETER, format!("Version \"{version}\" is not the API version of {action}; use {want}.")));
    }
    if params.get("Format").is_some_and(|f| !f.eq_ignore_ascii_case("JSON")) {
        return Err(ApiFailure::bad(berth_cloud::error::code::INVALID_PARAMETER, "Format must be JSON; this service does not write XML."));
    }
    check_region(action, params.get("RegionId").map(String::as_str), &engine.region_id)?;
    let (latency, injected) = {
        let mut faults = engine.faults.write().unwrap_or_else(|e| e.into_inner());
        (faults.latency_ms, faults.decide(action, rand::random::<f64>()))
    };
    if latency > 0 {
        engine.calls.fault(FaultKind::Latency);
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if let Some((kind, f)) = injected {
        engine.calls.fault(kind);
        return Err(f);
    }
    let e = engine.clone();
    let owned = action.to_string();
    match tokio::task::spawn_blocking(move || e.call(&owned, &params)).await {
        Ok(Ok((mut body, request_id))) => {
            tracing::info!(%action, %request_id, trace_id, "api call");
            if let Some(obj) = body.as_object_mut() {
                obj.insert("RequestId".into(), request_id.into());
            }
            Ok(body)
        }
        Ok(Err(f)) => {
            tracing::info!(%action, %request_id, trace_id, code = %f.code, "api call refused");
            Err(f)
        }
        Err(e) => Err(ApiFailure::new(500, berth_cloud::error::code::INTERNAL_ERROR, e.to_string())),
    }
}

/// `/metrics`: no admin header, as a scraper has none; it tells counts, never secrets.
async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    let calls = engine.calls.snapshot();
    let resources = Resources::of(&engine.snapshot());
    // The planes' reports may run programs (nft in each VPC's namespace).
    let e = engine.clone();
    let planes = tokio::task::spawn_blocking(move || e.plane_report()).await.unwrap_or_default();
    (StatusCode::OK, [(header::CONTENT_TYPE, berth_daemon::metrics::CONTENT_TYPE)], crate::metrics::render(&calls, &resources, &planes)).into_response()
}

fn admin(engine: &Engine, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let given = headers.get("x-localcloud-admin").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if given == engine.credentials.access_key_secret {
        Ok(())
    } else {
        Err(Box::new((StatusCode::FORBIDDEN, "the admin API needs the header X-Localcloud-Admin: <access_key_secret>\n").into_response()))
    }
}

async fn status(State(engine): State<Arc<Engine>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&engine, &headers) {
        return *r;
    }
    let s = engine.snapshot();
    json(200, &serde_json::json!({
        "region_id": engine.region_id,
        "vpcs": s.vpcs.len(), "vswitches": s.vswitches.len(), "security_groups": s.security_groups.len(),
        "instances": s.instances.len(), "enis": s.enis.len(), "disks": s.disks.len(), "file_systems": s.file_systems.len(),
        "last_converge_error": engine.last_converge_error(),
    }))
}

async fn get_faults(State(engine): State<Arc<Engine>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&engine, &headers) {
        return *r;
    }
    let faults = engine.faults.read().unwrap_or_else(|e| e.into_inner()).clone();
    json(200, &faults)
}

async fn put_faults(State(engine): State<Arc<Engine>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = admin(&engine, &headers) {
        return *r;
    }
    let faults = match Faults::put_over(&engine.start_faults, &body) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    *engine.faults.write().unwrap_or_else(|e| e.into_inner()) = faults.clone();
    json(200, &faults)
}

async fn meta_root(State(engine): State<Arc<Engine>>, Path(instance): Path<String>) -> Response {
    serve_meta(&engine, &instance, "")
}

async fn meta(State(engine): State<Arc<Engine>>, Path((instance, path)): Path<(String, String)>) -> Response {
    serve_meta(&engine, &instance, &path)
}

fn serve_meta(engine: &Engine, instance: &str, path: &str) -> Response {
    match metadata::answer(engine, instance, path) {
        Some(body) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response(),
        None => (StatusCode::NOT_FOUND, "404 - Not Found\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_id_is_demanded_only_where_the_api_model_has_it() {
        assert!(check_region("AttachDisk", None, "cn-local").is_ok());
        assert!(check_region("DescribeFileSystems", None, "cn-local").is_ok());
        assert_eq!(check_region("AssignPrivateIpAddresses", None, "cn-local").unwrap_err().code, "MissingParameter");
        assert!(check_region("AssignPrivateIpAddresses", Some("cn-local"), "cn-local").is_ok());
        assert!(check_region("AttachDisk", Some("cn-elsewhere"), "cn-local").is_err());
    }

    #[test]
    fn a_listener_of_one_product_refuses_another_products_actions() {
        let vpc = Serves(vec![Product::Vpc]);
        assert!(vpc.check("DescribeVSwitches").is_ok());
        let err = vpc.check("DescribeInstances").unwrap_err();
        assert_eq!((err.code.as_str(), err.status), ("InvalidAction.NotFound", 404));
        assert!(err.message.contains("ecs action") && err.message.contains("serves vpc"), "{}", err.message);
        assert!(Serves::all().check("CreateMountTarget").is_ok());
    }

    #[test]
    fn form_decoding() {
        let v = form_urlencoded("a=1+2&b=%2F%3D&c=&d");
        assert_eq!(v, vec![("a".into(), "1 2".into()), ("b".into(), "/=".into()), ("c".into(), "".into()), ("d".into(), "".into())]);
    }
}
