//! The node agent, called over its unix socket with gRPC. Each call blocks on a current-thread
//! runtime built only when a command needs the agent (VERSION never does).

use std::path::Path;
use std::time::Duration;

use berth_proto::agent::v1 as pb;
use berth_proto::agent::v1::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::protocol::error::{CniError, code};

/// The plugin↔agent protocol this plugin speaks.
pub const PROTOCOL_VERSION: u32 = 1;

pub struct Agent {
    runtime: tokio::runtime::Runtime,
    client: AgentClient<Channel>,
    socket: String,
}

/// Why the agent could not be reached, as a CNI error with `code`.
fn unreachable(code: u32, socket: &str, why: impl std::fmt::Display) -> CniError {
    CniError::new(code, format!("the Berth agent at {socket} cannot be reached: {why}"), "start berth-agent and wait until it reports ready (systemctl status berth-agent)")
}

impl Agent {
    /// Connects (each call then announces the protocol version). `down_code` is the CNI code to answer when the agent is down
    /// (11 for ADD and CHECK, 50 for STATUS).
    pub fn connect(socket: &str, down_code: u32) -> Result<Agent, CniError> {
        if !Path::new(socket).exists() {
            return Err(CniError::new(down_code, format!("the Berth agent socket {socket} does not exist"), "start berth-agent and wait until it reports ready (systemctl status berth-agent)"));
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| CniError::new(code::IO_FAILURE, format!("cannot start an async runtime: {e}"), ""))?;
        let path = socket.to_string();
        let channel = runtime
            .block_on(async {
                tonic::transport::Endpoint::try_from("http://agent")
                    .expect("a static URI")
                    .connect_timeout(Duration::from_secs(1))
                    .connect_with_connector(tower::service_fn(move |_| {
                        let path = path.clone();
                        async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                    }))
                    .await
            })
            .map_err(|e| unreachable(down_code, socket, source_chain(&e)))?;
        let agent = Agent { runtime, client: AgentClient::new(channel), socket: socket.to_string() };
        Ok(agent)
    }

    fn call<T, F, Fut>(&mut self, timeout: Duration, down_code: u32, f: F) -> Result<T, CniError>
    where
        F: FnOnce(AgentClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        let socket = self.socket.clone();
        self.runtime.block_on(async move {
            match tokio::time::timeout(timeout, f(client)).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(status)) => Err(status_error(&socket, down_code, status)),
                Err(_) => Err(CniError::new(code::TRY_AGAIN_LATER, format!("the Berth agent at {socket} did not answer within {timeout:?}"), "try again; check berth-agent's log")),
            }
        })
    }

    pub fn allocate(&mut self, request: pb::AllocateIpRequest) -> Result<pb::Allocation, CniError> {
        self.call(Duration::from_secs(30), code::TRY_AGAIN_LATER, |mut c| async move { c.allocate_ip(versioned(request)).await })
    }

    pub fn release(&mut self, key: pb::AllocationKey) -> Result<bool, CniError> {
        self.call(Duration::from_secs(5), code::TRY_AGAIN_LATER, |mut c| async move { c.release_ip(versioned(pb::ReleaseIpRequest { key: Some(key) })).await }).map(|r| r.released)
    }

    /// The allocation of one pod interface; `None` when the agent has none.
    pub fn get(&mut self, key: pb::AllocationKey) -> Result<Option<pb::Allocation>, CniError> {
        match self.call(Duration::from_secs(5), code::TRY_AGAIN_LATER, |mut c| async move { c.get_allocation(versioned(pb::GetAllocationRequest { key: Some(key) })).await }) {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.code == code::UNKNOWN_CONTAINER => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn list(&mut self) -> Result<Vec<pb::Allocation>, CniError> {
        self.call(Duration::from_secs(5), code::TRY_AGAIN_LATER, |mut c| async move { c.list_allocations(versioned(pb::ListAllocationsRequest::default())).await }).map(|r| r.allocations)
    }

    pub fn status(&mut self) -> Result<pb::StatusResponse, CniError> {
        self.call(Duration::from_secs(5), code::PLUGIN_NOT_AVAILABLE, |mut c| async move { c.status(versioned(pb::StatusRequest {})).await })
    }
}

/// Every call announces the protocol version (the agent refuses one it does not speak) and this
/// command's trace, which the agent's log lines and cloud calls for it carry.
fn versioned<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(berth_proto::agent::PROTOCOL_HEADER, tonic::metadata::MetadataValue::from(PROTOCOL_VERSION));
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(traceparent()) {
        request.metadata_mut().insert(berth_proto::agent::TRACE_HEADER, value);
    }
    request
}

/// This command's trace ID: 32 hex digits, made once per execution.
pub fn trace_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut bytes = [0u8; 16];
        let random = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
        if random.is_err() || bytes.iter().all(|b| *b == 0) {
            // No randomness to be had: the clock and pid still tell commands apart.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(1);
            bytes = (now ^ (u128::from(std::process::id()) << 64) | 1).to_be_bytes();
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// The trace context sent to the agent: version 00, this command's trace, a parent ID, sampled.
fn traceparent() -> String {
    format!("00-{}-{}-01", trace_id(), &trace_id()[..16])
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A gRPC status as the CNI error a runtime understands.
fn status_error(socket: &str, down_code: u32, status: tonic::Status) -> CniError {
    use tonic::Code;
    let msg = status.message().to_string();
    match status.code() {
        Code::Unavailable | Code::Cancelled => unreachable(down_code, socket, msg),
        // The agent closes connections of peers whose uid it does not allow.
        Code::Unknown if msg.contains("transport error") => CniError::new(
            down_code,
            format!("the Berth agent at {socket} closed the connection ({msg})"),
            "run the plugin as a uid listed in the agent's api.allowed_uids, and check berth-agent's log",
        ),
        Code::FailedPrecondition => CniError::new(code::AGENT_PROTOCOL_MISMATCH, msg, "install matching versions of berth and berth-agent"),
        Code::Aborted => CniError::new(code::TRY_AGAIN_LATER, msg, "the agent could not give the pod its ENI now; the runtime will retry"),
        Code::ResourceExhausted => CniError::new(code::TRY_AGAIN_LATER, msg, "the node's pool is growing or cannot grow; the runtime will retry, or schedule the pod elsewhere"),
        Code::InvalidArgument => CniError::new(code::INVALID_NETWORK_CONFIG, msg, "check the network config and CNI_ARGS"),
        Code::Unimplemented => CniError::new(code::UNSUPPORTED_FIELD, msg, "ask for what this agent serves"),
        Code::NotFound => CniError::new(code::UNKNOWN_CONTAINER, msg, "the agent has no allocation for this container and interface"),
        Code::PermissionDenied | Code::Unauthenticated => CniError::new(code::IO_FAILURE, msg, "run the plugin as a uid listed in the agent's api.allowed_uids"),
        _ => CniError::new(code::IO_FAILURE, format!("the Berth agent failed: {msg}"), "see berth-agent's log"),
    }
}
