//! The HTTP client of the RPC API: signs each request, limits each action's rate, retries what the
//! service says is retryable with backoff, and keeps one ClientToken across the retries of a call
//! so that a retried create never creates twice.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::de::DeserializeOwned;

use crate::api::{
    BootImage,     Addresses, Cloud, CreateDiskRequest, CreateEniRequest, CreateSnapshotRequest, CreateVSwitchRequest, DiskFilter, EniFilter, InstanceFilter, SnapshotFilter,
    RunInstancesRequest,
};
use crate::credentials::{self, Provider};
use crate::endpoints;
use crate::error::{ApiError, CloudError, Result};
use crate::model::{
    Credentials, DataDiskStock, Direction, Disk, EniKind, Instance, InstanceType, IpProtocol, NasFileSystem, NetworkInterface, Policy, Snapshot,
    SecurityGroup, SecurityGroupRule, VSwitch, Vpc,
};
use crate::params::Params;
use crate::ratelimit::{Limit, RateLimiter};
use crate::retry::RetryPolicy;
use crate::signing;
use crate::wire::{self, Product};

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL of the ECS API (e.g. `https://ecs.<region>.aliyuncs.com` or the local cloud's
    /// `http://127.0.0.1:PORT`). VPC and NAS use it too unless given their own.
    pub endpoint: String,
    pub vpc_endpoint: Option<String>,
    pub nas_endpoint: Option<String>,
    pub region_id: String,
    /// A key, or the instance's RAM role (see [`crate::credentials`]).
    pub credentials: credentials::Source,
    /// The signature sent: v3 unless set otherwise (`cloud.signature` in the binaries' configs).
    pub signature: signing::Version,
    /// Time allowed for one HTTP request.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub default_limit: Limit,
    /// Per-action overrides of `default_limit`.
    pub limits: HashMap<String, Limit>,
}

impl ClientConfig {
    /// Every product at its public endpoint of `region_id` (see [`crate::endpoints`]).
    pub fn for_region(region_id: &str, credentials: impl Into<credentials::Source>) -> Self {
        let mut c = ClientConfig::new(endpoints::public(Product::Ecs, region_id), region_id, credentials);
        c.vpc_endpoint = Some(endpoints::public(Product::Vpc, region_id));
        c.nas_endpoint = Some(endpoints::public(Product::Nas, region_id));
        c
    }

    /// The client of a binary's `[cloud]` settings (`cloud.endpoint`, `cloud.vpc_endpoint`,
    /// `cloud.nas_endpoint`): with no `endpoint`, every product at the region's public endpoint
    /// unless given its own; with one, each product not given its own is sent there (the local
    /// cloud serving every product on one listener).
    pub fn from_settings(endpoint: &str, vpc: &str, nas: &str, region_id: &str, credentials: impl Into<credentials::Source>) -> Self {
        let mut c = if endpoint.is_empty() { ClientConfig::for_region(region_id, credentials) } else { ClientConfig::new(endpoint, region_id, credentials) };
        for (own, given) in [(&mut c.vpc_endpoint, vpc), (&mut c.nas_endpoint, nas)] {
            if !given.is_empty() {
                *own = Some(given.to_string());
            }
        }
        c
    }

    /// Sets the VPC and NAS endpoints given (an empty one leaves that product on `endpoint`).
    pub fn with_product_endpoints(mut self, vpc: &str, nas: &str) -> Self {
        self.vpc_endpoint = Some(vpc.to_string()).filter(|s| !s.is_empty());
        self.nas_endpoint = Some(nas.to_string()).filter(|s| !s.is_empty());
        self
    }

    pub fn new(endpoint: impl Into<String>, region_id: impl Into<String>, credentials: impl Into<credentials::Source>) -> Self {
        ClientConfig {
            endpoint: endpoint.into(),
            vpc_endpoint: None,
            nas_endpoint: None,
            region_id: region_id.into(),
            credentials: credentials.into(),
            signature: signing::Version::default(),
            timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            default_limit: Limit { rate_per_sec: 20.0, burst: 40 },
            limits: HashMap::new(),
        }
    }
}

/// How one API call ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Ok,
    Throttled,
    ApiError,
    TransportError,
}

/// Receives every attempt's action, latency and outcome (the agent turns these into metrics).
pub trait CallObserver: Send + Sync {
    fn observe(&self, action: &str, elapsed: Duration, outcome: CallOutcome);
}

pub struct HttpCloud {
    config: ClientConfig,
    http: reqwest::Client,
    limiter: RateLimiter,
    observer: Option<Arc<dyn CallObserver>>,
    credentials: Provider,
}

impl std::fmt::Debug for HttpCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCloud").field("endpoint", &self.config.endpoint).finish_non_exhaustive()
    }
}

/// reqwest is built without a default TLS crypto provider; ring is ours. Every HTTP client of a
/// process needs it installed first (installing twice is harmless).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl HttpCloud {
    pub fn new(config: ClientConfig) -> Result<Self> {
        install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_max_idle_per_host(16)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CloudError::Transport {
                action: "init".into(),
                endpoint: config.endpoint.clone(),
                reason: e.to_string(),
            })?;
        let limiter = RateLimiter::new(config.default_limit, config.limits.clone());
        let credentials = Provider::new(config.credentials.clone());
        Ok(HttpCloud { config, http, limiter, observer: None, credentials })
    }

    pub fn with_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// How many times RAM role credentials were fetched from the metadata service.
    pub fn credential_fetches(&self) -> u64 {
        self.credentials.fetches()
    }

    fn endpoint_for(&self, product: Product) -> &str {
        let own = match product {
            Product::Ecs => None,
            Product::Vpc => self.config.vpc_endpoint.as_deref(),
            Product::Nas => self.config.nas_endpoint.as_deref(),
        };
        own.unwrap_or(&self.config.endpoint)
    }

    fn observe(&self, action: &str, elapsed: Duration, outcome: CallOutcome) {
        if let Some(o) = &self.observer {
            o.observe(action, elapsed, outcome);
        }
    }

    /// Sends `action` with `params`, signed, rate-limited and retried, and decodes the answer.
    pub async fn call<T: DeserializeOwned>(&self, action: &str, params: Params) -> Result<T> {
        let product = Product::of(action);
        let endpoint = self.endpoint_for(product).to_string();
        // A repeated Describe is harmless, and a ClientToken makes a repeated create harmless.
        let idempotent = action.starts_with("Describe") || params.0.contains_key("ClientToken");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let wait = self.limiter.reserve(action, Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let started = Instant::now();
            let (result, retry_this) = self.attempt::<T>(action, product, &endpoint, &params, idempotent).await;
            let outcome = match &result {
                Ok(_) => CallOutcome::Ok,
                Err(CloudError::Api(e)) if e.is_throttling() => CallOutcome::Throttled,
                Err(CloudError::Api(_)) => CallOutcome::ApiError,
                Err(_) => CallOutcome::TransportError,
            };
            let elapsed = started.elapsed();
            self.observe(action, elapsed, outcome);
            // One line per call, inside the caller's spans (a pod's ADD carries its trace_id).
            match &result {
                Ok(_) => tracing::info!(action, attempt, elapsed_ms = elapsed.as_millis() as u64, trace_id = crate::trace::current().unwrap_or_default(), "cloud call"),
                Err(e) => tracing::info!(action, attempt, elapsed_ms = elapsed.as_millis() as u64, trace_id = crate::trace::current().unwrap_or_default(), error = %e, "cloud call failed"),
            }
            match result {
                Ok(v) => return Ok(v),
                Err(e) if retry_this && attempt < self.config.retry.max_attempts => {
                    let delay = self.config.retry.delay(attempt, rand::random::<f64>());
                    tracing::debug!(action, attempt, ?delay, error = %e, "retrying cloud call");
                    tokio::time::sleep(delay).await;
                }
                Err(e) if retry_this && attempt > 1 => {
                    return Err(CloudError::RetriesExhausted { action: action.to_string(), attempts: attempt, last: Box::new(e) });
                }
                Err(e) => return Err(wrong_endpoint(action, product, &endpoint, e)),
            }
        }
    }

    /// One signed request; also says whether its failure may be retried.
    async fn attempt<T: DeserializeOwned>(
        &self,
        action: &str,
        product: Product,
        endpoint: &str,
        params: &Params,
        idempotent: bool,
    ) -> (Result<T>, bool) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let timestamp = signing::format_timestamp(now);
        let base = endpoint.trim_end_matches('/');
        let creds = match self.credentials.current(&self.http).await {
            Ok(c) => c,
            // Never sent: another attempt may find the metadata service answering.
            Err(e) => return (Err(e), true),
        };
        let token = creds.security_token.as_deref();
        let mut request = match self.config.signature {
            signing::Version::V1 => {
                let mut signed = params.0.clone();
                let common = signing::CommonParams {
                    action,
                    version: product.version(),
                    access_key_id: &creds.access_key_id,
                    region_id: &self.config.region_id,
                    nonce: &nonce,
                    timestamp: &timestamp,
                };
                if let Some(t) = token {
                    signed.insert("SecurityToken".to_string(), t.to_string());
                }
                signing::sign(&creds.access_key_secret, "POST", &common, &mut signed);
                self.http.post(format!("{base}/")).form(&signed)
            }
            signing::Version::V3 => {
                // RPC style: every parameter in the query, an empty body.
                let mut query = params.0.clone();
                if wire::takes_region_id(action) {
                    query.entry("RegionId".to_string()).or_insert_with(|| self.config.region_id.clone());
                }
                let url = format!("{base}/?{}", signing::v3::canonical_query(&query));
                let host = match host_header(&url) {
                    Ok(h) => h,
                    Err(reason) => return (Err(CloudError::Transport { action: action.into(), endpoint: endpoint.into(), reason }), false),
                };
                let req = signing::v3::Request {
                    method: "POST",
                    host: &host,
                    action,
                    version: product.version(),
                    date: &timestamp,
                    nonce: &nonce,
                    access_key_id: &creds.access_key_id,
                    security_token: token,
                };
                let mut r = self.http.post(url);
                // reqwest sends the host header itself, with the value signed.
                for (k, v) in signing::v3::sign(&creds.access_key_secret, &req, &query, b"").into_iter().filter(|(k, _)| k != "host") {
                    r = r.header(k, v);
                }
                r
            }
        };
        if let Some(trace_id) = crate::trace::current() {
            request = request.header(crate::trace::CLOUD_HEADER, trace_id);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                // A request that never connected was never seen by the service: always safe to resend.
                let retry = e.is_connect() || (idempotent && (e.is_timeout() || e.is_request()));
                let err = CloudError::Transport { action: action.into(), endpoint: endpoint.into(), reason: e.to_string() };
                return (Err(err), retry);
            }
        };
        let status = response.status().as_u16();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                let err = CloudError::Transport { action: action.into(), endpoint: endpoint.into(), reason: e.to_string() };
                return (Err(err), idempotent);
            }
        };
        let (result, retry) = decode_response(action, status, &body);
        // A token the service calls expired is dropped and the call retried with a new one: the
        // request was refused before anything happened.
        if self.credentials.refreshes() && result.as_ref().err().and_then(CloudError::code) == Some(crate::error::code::INVALID_SECURITY_TOKEN) {
            self.credentials.invalidate(&creds).await;
            return (result, true);
        }
        (result, retry)
    }
}

/// The `host` header an HTTP client sends for `url`: the host, and the port unless it is the
/// scheme's default.
fn host_header(url: &str) -> std::result::Result<String, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("the endpoint is not a URL: {e}"))?;
    let host = u.host_str().ok_or("the endpoint has no host")?;
    Ok(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// One answer of `action` decoded: a 2xx body as `T`, any other as the service's error body; with
/// whether a failure may be retried. Pure, so that any body a service or a proxy sends is tested alone.
pub fn decode_response<T: DeserializeOwned>(action: &str, status: u16, body: &[u8]) -> (Result<T>, bool) {
    if (200..300).contains(&status) {
        return (serde_json::from_slice::<T>(body).map_err(|e| decode_error(action, &e, body)), false);
    }
    match serde_json::from_slice::<wire::ErrorBody>(body) {
        Ok(err) => {
            let api = ApiError { action: action.into(), code: err.code, message: err.message, request_id: err.request_id, http_status: status };
            let retry = api.is_retryable();
            (Err(CloudError::Api(api)), retry)
        }
        Err(e) => (Err(decode_error(action, &e, body)), status >= 500),
    }
}

fn decode_error(action: &str, e: &serde_json::Error, body: &[u8]) -> CloudError {
    let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    CloudError::Decode { action: action.into(), reason: e.to_string(), body }
}

/// The token of the next page of a listing, None after the last one. A service that answers the
/// token it was sent would have the client list forever: that is a decoding failure.
fn next_page(action: &str, sent: &str, answered: String) -> Result<Option<String>> {
    if answered.is_empty() {
        return Ok(None);
    }
    if answered == sent {
        return Err(decode_failure(action, &format!("NextToken {answered:?} repeats the token of the page it answers")));
    }
    Ok(Some(answered))
}

fn decode_failure(action: &str, what: &str) -> CloudError {
    CloudError::Decode { action: action.into(), reason: format!("unexpected value: {what}"), body: String::new() }
}

/// Reads credentials from a file that only its owner may read: `access_key_id` and
/// `access_key_secret`, as TOML or JSON.
pub fn load_credentials(path: &Path) -> Result<Credentials> {
    use std::os::unix::fs::PermissionsExt as _;
    let shown = path.display().to_string();
    let fail = |reason: String| CloudError::Credentials { path: shown.clone(), reason };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(fail(format!("mode {mode:04o} lets others read the secret; run `chmod 600 {shown}`")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let creds: Credentials = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?
    } else {
        toml::from_str(&text).map_err(|e| fail(format!("not valid TOML: {e}")))?
    };
    if creds.access_key_id.is_empty() || creds.access_key_secret.is_empty() {
        return Err(fail("access_key_id and access_key_secret must both be set".into()));
    }
    Ok(creds)
}

/// An action its endpoint does not know was sent to another product's endpoint: say which product
/// and which setting, rather than the bare `InvalidAction.NotFound`.
fn wrong_endpoint(action: &str, product: Product, endpoint: &str, e: CloudError) -> CloudError {
    match e.api() {
        Some(a) if a.code == crate::error::code::INVALID_ACTION || a.code.starts_with("InvalidAction") => CloudError::WrongEndpoint {
            action: action.to_string(),
            product: endpoints::title(product),
            endpoint: endpoint.to_string(),
            setting: endpoints::setting(product),
            code: a.code.clone(),
        },
        _ => e,
    }
}

fn token(t: Option<&str>) -> String {
    t.map(str::to_string).unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn rule_params(id: &str, rule: &SecurityGroupRule) -> Params {
    let protocol = match rule.protocol {
        IpProtocol::Tcp => "tcp",
        IpProtocol::Udp => "udp",
        IpProtocol::Icmp => "icmp",
        IpProtocol::All => "all",
    };
    let ports = rule.ports.map(|(a, b)| format!("{a}/{b}")).unwrap_or_else(|| "-1/-1".into());
    let peer_key = match (rule.direction, rule.peer_cidr.is_ipv6()) {
        (Direction::Ingress, false) => "SourceCidrIp",
        (Direction::Egress, false) => "DestCidrIp",
        (Direction::Ingress, true) => "Ipv6SourceCidrIp",
        (Direction::Egress, true) => "Ipv6DestCidrIp",
    };
    Params::new()
        .set("SecurityGroupId", id)
        .set("IpProtocol", protocol)
        .set("PortRange", ports)
        .set(peer_key, rule.peer_cidr)
        .set("Policy", if rule.policy == Policy::Drop { "drop" } else { "accept" })
        .set("Priority", rule.priority)
}

impl Cloud for HttpCloud {
    async fn describe_instance_types(&self, ids: &[String]) -> Result<Vec<InstanceType>> {
        let mut out = Vec::new();
        let mut next = String::new();
        loop {
            let p = Params::new().list("InstanceTypes", ids).set("MaxResults", 100).opt("NextToken", Some(&next).filter(|s| !s.is_empty()));
            let r: wire::DescribeInstanceTypesResponse = self.call("DescribeInstanceTypes", p).await?;
            out.extend(r.instance_types.items.iter().map(wire::InstanceTypeItem::to_model));
            match next_page("DescribeInstanceTypes", &next, r.next_token)? {
                Some(token) => next = token,
                None => return Ok(out),
            }
        }
    }

    async fn run_instances(&self, req: &RunInstancesRequest) -> Result<Vec<String>> {
        let p = Params::new()
            .set("InstanceType", &req.instance_type)
            .set("VSwitchId", &req.vswitch_id)
            .list("SecurityGroupIds", &req.security_group_ids)
            .set("Amount", req.amount.max(1))
            .set("InstanceName", &req.name)
            .set("SpotStrategy", if req.spot { "SpotAsPriceGo" } else { "NoSpot" })
            .set("ClientToken", token(req.client_token.as_deref()))
            .opt("RamRoleName", req.ram_role_name.as_deref());
        let mut p = match &req.image {
            Some(BootImage::Id(id)) => p.set("ImageId", id),
            Some(BootImage::Family(family)) => p.set("ImageFamily", family),
            Some(BootImage::LaunchTemplate { id, version }) => p.set("LaunchTemplateId", id).opt("LaunchTemplateVersion", version.as_deref()),
            None => p,
        };
        if let Some(disk) = &req.system_disk {
            p = p.set("SystemDisk.Category", &disk.category).opt("SystemDisk.Size", disk.size_gib);
        }
        if let Some(script) = &req.user_data {
            p = p.set("UserData", base64::engine::general_purpose::STANDARD.encode(script));
        }
        for (i, (key, value)) in req.tags.iter().enumerate() {
            p = p.set(&format!("Tag.{}.Key", i + 1), key).set(&format!("Tag.{}.Value", i + 1), value);
        }
        let r: wire::RunInstancesResponse = self.call("RunInstances", p).await?;
        Ok(r.instance_id_sets.items)
    }

    async fn delete_instances(&self, ids: &[String], force: bool) -> Result<()> {
        let p = Params::new().list("InstanceId", ids).set("Force", force);
        self.call::<wire::RequestIdOnly>("DeleteInstances", p).await.map(drop)
    }

    async fn describe_instances(&self, filter: &InstanceFilter) -> Result<Vec<Instance>> {
        let mut out = Vec::new();
        let mut next = String::new();
        loop {
            let p = Params::new()
                .json_list("InstanceIds", &filter.ids)
                .opt("VpcId", filter.vpc_id.as_deref())
                .opt("VSwitchId", filter.vswitch_id.as_deref())
                .opt("ZoneId", filter.zone_id.as_deref())
                .set("MaxResults", 100)
                .opt("NextToken", Some(&next).filter(|s| !s.is_empty()));
            let r: wire::DescribeInstancesResponse = self.call("DescribeInstances", p).await?;
            for i in &r.instances.items {
                out.push(i.to_model().ok_or_else(|| decode_failure("DescribeInstances", &i.instance_id))?);
            }
            match next_page("DescribeInstances", &next, r.next_token)? {
                Some(token) => next = token,
                None => return Ok(out),
            }
        }
    }

    async fn create_vpc(&self, cidr_block: &str, name: &str, ipv6: bool, client_token: Option<&str>) -> Result<String> {
        let p = Params::new()
            .set("CidrBlock", cidr_block)
            .set("VpcName", name)
            .set("EnableIpv6", ipv6)
            .set("ClientToken", token(client_token));
        let r: wire::CreateVpcResponse = self.call("CreateVpc", p).await?;
        Ok(r.vpc_id)
    }

    async fn describe_vpcs(&self, id: Option<&str>) -> Result<Vec<Vpc>> {
        let mut out = Vec::new();
        for page in 1u32.. {
            let p = Params::new().opt("VpcId", id).set("PageNumber", page).set("PageSize", 50);
            let r: wire::DescribeVpcsResponse = self.call("DescribeVpcs", p).await?;
            let got = r.vpcs.items.len();
            for v in &r.vpcs.items {
                out.push(v.to_model().ok_or_else(|| decode_failure("DescribeVpcs", &format!("{v:?}")))?);
            }
            if got < 50 || out.len() as u64 >= r.total_count {
                break;
            }
        }
        Ok(out)
    }

    async fn create_vswitch(&self, req: &CreateVSwitchRequest) -> Result<String> {
        let p = Params::new()
            .set("VpcId", &req.vpc_id)
            .set("ZoneId", &req.zone_id)
            .set("CidrBlock", &req.cidr_block)
            .opt("Ipv6CidrBlock", req.ipv6_block_index)
            .set("VSwitchName", &req.name)
            .set("ClientToken", token(req.client_token.as_deref()));
        let r: wire::CreateVSwitchResponse = self.call("CreateVSwitch", p).await?;
        Ok(r.vswitch_id)
    }

    async fn describe_vswitches(&self, vpc_id: Option<&str>, id: Option<&str>) -> Result<Vec<VSwitch>> {
        let mut out = Vec::new();
        let mut page = 1u32;
        loop {
            let p = Params::new().opt("VpcId", vpc_id).opt("VSwitchId", id).set("PageNumber", page).set("PageSize", 50);
            let r: wire::DescribeVSwitchesResponse = self.call("DescribeVSwitches", p).await?;
            let got = r.vswitches.items.len();
            for v in &r.vswitches.items {
                out.push(v.to_model().ok_or_else(|| decode_failure("DescribeVSwitches", &format!("{v:?}")))?);
            }
            if got < 50 || out.len() as u64 >= r.total_count {
                return Ok(out);
            }
            page += 1;
        }
    }

    async fn create_security_group(&self, vpc_id: &str, name: &str, client_token: Option<&str>) -> Result<String> {
        let p = Params::new().set("VpcId", vpc_id).set("SecurityGroupName", name).set("ClientToken", token(client_token));
        let r: wire::CreateSecurityGroupResponse = self.call("CreateSecurityGroup", p).await?;
        Ok(r.security_group_id)
    }

    async fn authorize_security_group(&self, id: &str, rule: &SecurityGroupRule) -> Result<()> {
        let action = if rule.direction == Direction::Ingress { "AuthorizeSecurityGroup" } else { "AuthorizeSecurityGroupEgress" };
        self.call::<wire::RequestIdOnly>(action, rule_params(id, rule)).await.map(drop)
    }

    async fn revoke_security_group(&self, id: &str, rule: &SecurityGroupRule) -> Result<()> {
        let action = if rule.direction == Direction::Ingress { "RevokeSecurityGroup" } else { "RevokeSecurityGroupEgress" };
        self.call::<wire::RequestIdOnly>(action, rule_params(id, rule)).await.map(drop)
    }

    async fn describe_security_group(&self, id: &str) -> Result<SecurityGroup> {
        let mut group = SecurityGroup { id: id.to_string(), ..Default::default() };
        let mut next = String::new();
        loop {
            let p = Params::new().set("SecurityGroupId", id).set("Direction", "all").set("MaxResults", 1000).opt("NextToken", Some(&next).filter(|s| !s.is_empty()));
            let r: wire::DescribeSecurityGroupAttributeResponse = self.call("DescribeSecurityGroupAttribute", p).await?;
            for p in &r.permissions.items {
                match p.to_referenced() {
                    Some(rule) => group.referenced_rules.push(rule),
                    None => group.rules.push(p.to_rule().ok_or_else(|| decode_failure("DescribeSecurityGroupAttribute", &format!("{p:?}")))?),
                }
            }
            (group.id, group.vpc_id, group.name) = (r.security_group_id, r.vpc_id, r.security_group_name);
            match next_page("DescribeSecurityGroupAttribute", &next, r.next_token)? {
                Some(token) => next = token,
                None => return Ok(group),
            }
        }
    }

    async fn delete_security_group(&self, id: &str) -> Result<()> {
        self.call::<wire::RequestIdOnly>("DeleteSecurityGroup", Params::new().set("SecurityGroupId", id)).await.map(drop)
    }

    async fn create_network_interface(&self, req: &CreateEniRequest) -> Result<NetworkInterface> {
        let kind = if req.kind == EniKind::Trunk { "Trunk" } else { "Secondary" };
        let p = Params::new()
            .set("VSwitchId", &req.vswitch_id)
            .list("SecurityGroupIds", &req.security_group_ids)
            .set("InstanceType", kind)
            .opt("PrimaryIpAddress", req.primary_ip)
            .opt("SecondaryPrivateIpAddressCount", Some(req.secondary_ip_count).filter(|n| *n > 0))
            .opt("Ipv6AddressCount", Some(req.ipv6_count).filter(|n| *n > 0))
            .set("Description", &req.description)
            .set("ClientToken", token(req.client_token.as_deref()));
        let r: wire::CreateNetworkInterfaceResponse = self.call("CreateNetworkInterface", p).await?;
        r.eni.to_model().ok_or_else(|| decode_failure("CreateNetworkInterface", &r.eni.network_interface_id))
    }

    async fn attach_network_interface(&self, eni_id: &str, instance_id: &str, trunk_eni_id: Option<&str>) -> Result<()> {
        let p = Params::new().set("NetworkInterfaceId", eni_id).set("InstanceId", instance_id).opt("TrunkNetworkInstanceId", trunk_eni_id);
        self.call::<wire::RequestIdOnly>("AttachNetworkInterface", p).await.map(drop)
    }

    async fn detach_network_interface(&self, eni_id: &str, instance_id: &str, trunk_eni_id: Option<&str>) -> Result<()> {
        let p = Params::new().set("NetworkInterfaceId", eni_id).set("InstanceId", instance_id).opt("TrunkNetworkInstanceId", trunk_eni_id);
        self.call::<wire::RequestIdOnly>("DetachNetworkInterface", p).await.map(drop)
    }

    async fn set_eni_security_groups(&self, eni_id: &str, security_group_ids: &[String]) -> Result<()> {
        let p = Params::new().set("NetworkInterfaceId", eni_id).list("SecurityGroupId", security_group_ids);
        self.call::<wire::RequestIdOnly>("ModifyNetworkInterfaceAttribute", p).await.map(drop)
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<()> {
        self.call::<wire::RequestIdOnly>("DeleteNetworkInterface", Params::new().set("NetworkInterfaceId", eni_id)).await.map(drop)
    }

    async fn describe_network_interfaces(&self, filter: &EniFilter) -> Result<Vec<NetworkInterface>> {
        let mut out = Vec::new();
        let mut next = String::new();
        loop {
            let p = Params::new()
                .list("NetworkInterfaceId", &filter.ids)
                .opt("InstanceId", filter.instance_id.as_deref())
                .opt("VSwitchId", filter.vswitch_id.as_deref())
                .opt("VpcId", filter.vpc_id.as_deref())
                .opt("Type", filter.kind.map(EniKind::as_str))
                .opt("Status", filter.status.map(|s| s.as_str()))
                .set("MaxResults", 500)
                .opt("NextToken", Some(&next).filter(|s| !s.is_empty()));
            let r: wire::DescribeNetworkInterfacesResponse = self.call("DescribeNetworkInterfaces", p).await?;
            for e in &r.network_interface_sets.items {
                out.push(e.to_model().ok_or_else(|| decode_failure("DescribeNetworkInterfaces", &e.network_interface_id))?);
            }
            match next_page("DescribeNetworkInterfaces", &next, r.next_token)? {
                Some(token) => next = token,
                None => return Ok(out),
            }
        }
    }

    async fn assign_private_ips(&self, eni_id: &str, ips: &Addresses<Ipv4Addr>, client_token: Option<&str>) -> Result<Vec<Ipv4Addr>> {
        let p = Params::new().set("NetworkInterfaceId", eni_id).set("ClientToken", token(client_token));
        let p = match ips {
            Addresses::Count(n) => p.set("SecondaryPrivateIpAddressCount", n),
            Addresses::These(list) => p.list("PrivateIpAddress", list),
        };
        let r: wire::AssignPrivateIpAddressesResponse = self.call("AssignPrivateIpAddresses", p).await?;
        Ok(r.assigned_private_ip_addresses_set.private_ip_set.items)
    }

    async fn unassign_private_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
        let p = Params::new().set("NetworkInterfaceId", eni_id).list("PrivateIpAddress", ips);
        self.call::<wire::RequestIdOnly>("UnassignPrivateIpAddresses", p).await.map(drop)
    }

    async fn assign_ipv6(&self, eni_id: &str, ips: &Addresses<Ipv6Addr>, client_token: Option<&str>) -> Result<Vec<Ipv6Addr>> {
        let p = Params::new().set("NetworkInterfaceId", eni_id).set("ClientToken", token(client_token));
        let p = match ips {
            Addresses::Count(n) => p.set("Ipv6AddressCount", n),
            Addresses::These(list) => p.list("Ipv6Address", list),
        };
        let r: wire::AssignIpv6AddressesResponse = self.call("AssignIpv6Addresses", p).await?;
        Ok(r.ipv6_sets.items)
    }

    async fn unassign_ipv6(&self, eni_id: &str, ips: &[Ipv6Addr]) -> Result<()> {
        let p = Params::new().set("NetworkInterfaceId", eni_id).list("Ipv6Address", ips);
        self.call::<wire::RequestIdOnly>("UnassignIpv6Addresses", p).await.map(drop)
    }

    async fn create_disk(&self, req: &CreateDiskRequest) -> Result<String> {
        let p = Params::new()
            .set("ZoneId", &req.zone_id)
            .set("DiskName", &req.name)
            .set("DiskCategory", &req.category)
            .opt("PerformanceLevel", req.performance_level.as_deref())
            .set("Size", req.size_gib)
            .opt("SnapshotId", req.snapshot_id.as_deref())
            .opt("Description", Some(req.description.as_str()).filter(|d| !d.is_empty()))
            .set("ClientToken", token(req.client_token.as_deref()));
        let r: wire::CreateDiskResponse = self.call("CreateDisk", p).await?;
        Ok(r.disk_id)
    }

    async fn modify_disk_performance_level(&self, disk_id: &str, level: &str) -> Result<()> {
        let p = Params::new().set("DiskId", disk_id).set("PerformanceLevel", level);
        self.call::<wire::RequestIdOnly>("ModifyDiskSpec", p).await.map(drop)
    }

    async fn describe_data_disk_stock(&self, zone_id: Option<&str>, category: Option<&str>) -> Result<Vec<DataDiskStock>> {
        let p = Params::new()
            .set("DestinationResource", "DataDisk")
            .set("ResourceType", "disk")
            .opt("ZoneId", zone_id)
            .opt("DataDiskCategory", category);
        let r: wire::DescribeAvailableResourceResponse = self.call("DescribeAvailableResource", p).await?;
        let mut out = Vec::new();
        for z in &r.available_zones.items {
            out.extend(z.data_disks().ok_or_else(|| decode_failure("DescribeAvailableResource", &z.zone_id))?);
        }
        Ok(out)
    }

    async fn create_snapshot(&self, req: &CreateSnapshotRequest) -> Result<String> {
        let p = Params::new()
            .set("DiskId", &req.disk_id)
            .opt("SnapshotName", Some(req.name.as_str()).filter(|n| !n.is_empty()))
            .opt("Description", Some(req.description.as_str()).filter(|d| !d.is_empty()))
            .set("ClientToken", token(req.client_token.as_deref()));
        let r: wire::CreateSnapshotResponse = self.call("CreateSnapshot", p).await?;
        Ok(r.snapshot_id)
    }

    async fn describe_snapshots(&self, filter: &SnapshotFilter) -> Result<Vec<Snapshot>> {
        let mut out = Vec::new();
        let mut next = String::new();
        loop {
            let p = Params::new()
                .json_list("SnapshotIds", &filter.ids)
                .opt("DiskId", filter.disk_id.as_deref())
                .opt("SnapshotName", filter.name.as_deref())
                .set("MaxResults", 100)
                .opt("NextToken", Some(&next).filter(|s| !s.is_empty()));
            let r: wire::DescribeSnapshotsResponse = self.call("DescribeSnapshots", p).await?;
            for s in &r.snapshots.items {
                out.push(s.to_model().ok_or_else(|| decode_failure("DescribeSnapshots", &s.snapshot_id))?);
            }
            match next_page("DescribeSnapshots", &next, r.next_token)? {
                Some(token) => next = token,
                None => return Ok(out),
            }
        }
    }

    async fn delete_snapshot(&self, snapshot_id: &str, force: bool) -> Result<()> {
        let p = Params::new().set("SnapshotId", snapshot_id).set("Force", force);
        self.call::<wire::RequestIdOnly>("DeleteSnapshot", p).await.map(drop)
    }

    async fn attach_disk(&self, disk_id: &str, instance_id: &str) -> Result<()> {
        let p = Params::new().set("DiskId", disk_id).set("InstanceId", instance_id);
        self.call::<wire::RequestIdOnly>("AttachDisk", p).await.map(drop)
    }

    async fn detach_disk(&self, disk_id: &str, instance_id: &str) -> Result<()> {
        let p = Params::new().set("DiskId", disk_id).set("InstanceId", instance_id);
        self.call::<wire::RequestIdOnly>("DetachDisk", p).await.map(drop)
    }

    async fn delete_disk(&self, disk_id: &str) -> Result<()> {
        self.call::<wire::RequestIdOnly>("DeleteDisk", Params::new().set("DiskId", disk_id)).await.map(drop)
    }

    async fn resize_disk(&self, disk_id: &str, new_size_gib: u64, online: bool) -> Result<()> {
        let p = Params::new().set("DiskId", disk_id).set("NewSize", new_size_gib).set("Type", if online { "online" } else { "offline" });
        self.call::<wire::RequestIdOnly>("ResizeDisk", p).await.map(drop)
    }

    async fn describe_disks(&self, filter: &DiskFilter) -> Result<Vec<Disk>> {
        let mut out = Vec::new();
        let mut next = String::new();
        loop {
            let p = Params::new()
                .json_list("DiskIds", &filter.ids)
                .opt("InstanceId", filter.instance_id.as_deref())
                .opt("ZoneId", filter.zone_id.as_deref())
                .set("MaxResults", 100)
                .opt("NextToken", Some(&next).filter(|s| !s.is_empty()));
            let r: wire::DescribeDisksResponse = self.call("DescribeDisks", p).await?;
            for d in &r.disks.items {
                out.push(d.to_model().ok_or_else(|| decode_failure("DescribeDisks", &d.disk_id))?);
            }
            match next_page("DescribeDisks", &next, r.next_token)? {
                Some(token) => next = token,
                None => return Ok(out),
            }
        }
    }

    async fn create_nas_file_system(&self, zone_id: &str, vpc_id: &str, vswitch_id: &str, client_token: Option<&str>) -> Result<NasFileSystem> {
        let p = Params::new()
            .set("ProtocolType", "NFS")
            .set("StorageType", "Performance")
            .set("ZoneId", zone_id)
            .set("ClientToken", token(client_token));
        let fs: wire::CreateFileSystemResponse = self.call("CreateFileSystem", p).await?;
        let p = Params::new()
            .set("FileSystemId", &fs.file_system_id)
            .set("NetworkType", "Vpc")
            .set("VpcId", vpc_id)
            .set("VSwitchId", vswitch_id)
            .set("AccessGroupName", wire::DEFAULT_VPC_ACCESS_GROUP);
        let mt: wire::CreateMountTargetResponse = self.call("CreateMountTarget", p).await?;
        let mut all = self.describe_nas_file_systems(Some(&fs.file_system_id)).await?;
        match all.pop() {
            Some(found) => Ok(found),
            None => Ok(NasFileSystem {
                id: fs.file_system_id,
                zone_id: zone_id.into(),
                vpc_id: vpc_id.into(),
                protocol: "NFS".into(),
                mount_target: mt.mount_target_domain,
                capacity_gib: 0,
            }),
        }
    }

    async fn describe_nas_file_systems(&self, id: Option<&str>) -> Result<Vec<NasFileSystem>> {
        let mut out = Vec::new();
        for page in 1u32.. {
            let p = Params::new().opt("FileSystemId", id).set("PageNumber", page).set("PageSize", 100);
            let r: wire::DescribeFileSystemsResponse = self.call("DescribeFileSystems", p).await?;
            let got = r.file_systems.items.len();
            out.extend(r.file_systems.items.iter().map(wire::FileSystemItem::to_model));
            if got < 100 || out.len() as u64 >= r.total_count {
                break;
            }
        }
        Ok(out)
    }

    async fn delete_nas_file_system(&self, id: &str) -> Result<()> {
        self.call::<wire::RequestIdOnly>("DeleteFileSystem", Params::new().set("FileSystemId", id)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The action names this file sends: the literal of each `self.call("Name"` and
    /// `self.call::<…>("Name"`, and both literals of a `let action = if … { "A" } else { "B" }`.
    fn actions_in_source() -> std::collections::BTreeSet<String> {
        let src = include_str!("client.rs");
        let literals = |s: &str| s.split('"').skip(1).step_by(2).map(str::to_string).collect::<Vec<_>>();
        let mut found = std::collections::BTreeSet::new();
        for line in src.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            if let Some((_, rest)) = line.split_once("self.call(").or_else(|| line.split_once(">(\"")) {
                let rest = if line.contains(">(\"") && !line.contains("self.call(") { format!("\"{rest}") } else { rest.to_string() };
                if rest.starts_with('"') {
                    found.extend(literals(&rest).into_iter().take(1));
                }
            } else if line.starts_with("let action = if ") {
                found.extend(literals(line));
            }
        }
        found.retain(|a| a.chars().all(|c| c.is_ascii_alphanumeric()));
        found
    }

    #[test]
    fn settings_without_an_endpoint_name_the_regions_public_ones_and_each_product_may_be_overridden() {
        let key = credentials::Source::Static(crate::model::Credentials { access_key_id: "k".into(), access_key_secret: "s".into() });
        let c = ClientConfig::from_settings("", "", "", "cn-hangzhou", key.clone());
        assert_eq!(c.endpoint, "https://ecs.cn-hangzhou.aliyuncs.com");
        assert_eq!(c.vpc_endpoint.as_deref(), Some("https://vpc.cn-hangzhou.aliyuncs.com"));
        assert_eq!(c.nas_endpoint.as_deref(), Some("https://nas.cn-hangzhou.aliyuncs.com"));
        let c = ClientConfig::from_settings("", "https://vpc-vpc.cn-hangzhou.aliyuncs.com", "", "cn-hangzhou", key.clone());
        assert_eq!(c.vpc_endpoint.as_deref(), Some("https://vpc-vpc.cn-hangzhou.aliyuncs.com"));
        assert_eq!(c.nas_endpoint.as_deref(), Some("https://nas.cn-hangzhou.aliyuncs.com"));
        // One endpoint given: every product not given its own is sent there.
        let c = ClientConfig::from_settings("http://127.0.0.1:1", "", "http://127.0.0.1:3", "local-1", key);
        assert_eq!((c.endpoint.as_str(), c.vpc_endpoint.as_deref(), c.nas_endpoint.as_deref()), ("http://127.0.0.1:1", None, Some("http://127.0.0.1:3")));
    }

    #[test]
    fn the_action_list_is_every_action_the_client_calls() {
        let listed: std::collections::BTreeSet<String> = crate::wire::ACTIONS.iter().map(|s| s.to_string()).collect();
        assert_eq!(listed.len(), crate::wire::ACTIONS.len(), "an action is listed twice");
        assert_eq!(actions_in_source(), listed, "wire::ACTIONS is not the set of actions client.rs calls");
    }

    #[test]
    fn an_action_its_endpoint_does_not_serve_names_the_product_and_the_setting() {
        let api = |code: &str| CloudError::Api(ApiError { action: "DescribeVSwitches".into(), code: code.into(), message: "m".into(), request_id: "r".into(), http_status: 404 });
        let refused = api("InvalidAction.NotFound");
        let e = wrong_endpoint("DescribeVSwitches", Product::Vpc, "https://ecs.cn-hangzhou.aliyuncs.com", refused);
        let text = e.to_string();
        assert!(text.contains("VPC") && text.contains("cloud.vpc_endpoint") && text.contains("DescribeVSwitches"), "{text}");
        assert!(wrong_endpoint("DescribeVSwitches", Product::Vpc, "e", api("Throttling")).is_code("Throttling"));
    }

    #[test]
    fn a_listing_ends_on_an_empty_token_and_refuses_a_repeated_one() {
        assert_eq!(next_page("DescribeDisks", "", String::new()).unwrap(), None);
        assert_eq!(next_page("DescribeDisks", "", "t1".into()).unwrap().as_deref(), Some("t1"));
        assert_eq!(next_page("DescribeDisks", "t1", "t2".into()).unwrap().as_deref(), Some("t2"));
        let e = next_page("DescribeDisks", "t2", "t2".into()).unwrap_err();
        assert!(e.to_string().contains("repeats"), "{e}");
    }
}
