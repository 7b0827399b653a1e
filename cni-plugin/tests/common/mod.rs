//! What the plugin tests share: a fake node agent (a real tonic `Agent` server on a unix socket,
//! with an in-memory allocation table), node and pod namespaces removed on drop, and `berth` run
//! inside the node namespace the way a runtime runs it.

#![allow(dead_code)] // each test binary uses its own part of this

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use berth_nodenet::{Netlink, NetnsGuard};
use berth_proto::agent::v1 as pb;
use serde_json::{Value, json};

pub const GATEWAY: &str = "10.99.0.253";
pub const ROUTE_TABLE: u32 = 1001;
pub const NODE_IFNAME: &str = "eth1";

type Key = (String, String);
type AllocateHook = Box<dyn Fn(&pb::AllocateIpRequest) + Send>;

struct Table {
    allocations: BTreeMap<Key, pb::Allocation>,
    next_host: u8,
    releases: Vec<Key>,
    allocate_calls: usize,
    ready: bool,
    reason: String,
    protocol: (u32, u32),
    on_allocate: Option<AllocateHook>,
}

fn allocation(key: &Key, host: u8, netns: &str) -> pb::Allocation {
    pb::Allocation {
        key: Some(pb::AllocationKey { container_id: key.0.clone(), ifname: key.1.clone() }),
        mode: pb::NetworkMode::Shared as i32,
        ipv4: Some(pb::IpConfig { address: format!("10.99.0.{host}"), prefix_length: 24, gateway: GATEWAY.into() }),
        eni: Some(pb::EniRef { eni_id: "eni-test1".into(), mac: "02:00:00:00:99:01".into(), node_ifname: NODE_IFNAME.into(), route_table: ROUTE_TABLE, ..Default::default() }),
        netns: netns.into(),
        ..Default::default()
    }
}

#[derive(Clone)]
struct Service(Arc<Mutex<Table>>);

fn key_of(key: Option<pb::AllocationKey>) -> Result<Key, tonic::Status> {
    let k = key.ok_or_else(|| tonic::Status::invalid_argument("no key"))?;
    if k.container_id.is_empty() || k.ifname.is_empty() {
        return Err(tonic::Status::invalid_argument("empty key"));
    }
    Ok((k.container_id, k.ifname))
}

#[tonic::async_trait]
impl pb::agent_server::Agent for Service {
    async fn hello(&self, _: tonic::Request<pb::HelloRequest>) -> Result<tonic::Response<pb::HelloResponse>, tonic::Status> {
        let (min, max) = self.0.lock().unwrap().protocol;
        Ok(tonic::Response::new(pb::HelloResponse { agent_version: "fake".into(), protocol_version: max, min_protocol_version: min, max_protocol_version: max }))
    }

    async fn allocate_ip(&self, req: tonic::Request<pb::AllocateIpRequest>) -> Result<tonic::Response<pb::Allocation>, tonic::Status> {
        let req = req.into_inner();
        let key = key_of(req.key.clone())?;
        let mut t = self.0.lock().unwrap();
        t.allocate_calls += 1;
        if let Some(hook) = &t.on_allocate {
            hook(&req);
        }
        if let Some(a) = t.allocations.get(&key) {
            return Ok(tonic::Response::new(a.clone()));
        }
        if t.next_host > 250 {
            return Err(tonic::Status::resource_exhausted("the fake pool is empty"));
        }
        let a = allocation(&key, t.next_host, &req.netns);
        t.next_host += 1;
        t.allocations.insert(key, a.clone());
        Ok(tonic::Response::new(a))
    }

    async fn release_ip(&self, req: tonic::Request<pb::ReleaseIpRequest>) -> Result<tonic::Response<pb::ReleaseIpResponse>, tonic::Status> {
        let key = key_of(req.into_inner().key)?;
        let mut t = self.0.lock().unwrap();
        let released = t.allocations.remove(&key).is_some();
        t.releases.push(key);
        Ok(tonic::Response::new(pb::ReleaseIpResponse { released }))
    }

    async fn get_allocation(&self, req: tonic::Request<pb::GetAllocationRequest>) -> Result<tonic::Response<pb::Allocation>, tonic::Status> {
        let key = key_of(req.into_inner().key)?;
        match self.0.lock().unwrap().allocations.get(&key) {
            Some(a) => Ok(tonic::Response::new(a.clone())),
            None => Err(tonic::Status::not_found(format!("no allocation for {}/{}", key.0, key.1))),
        }
    }

    async fn list_allocations(&self, _: tonic::Request<pb::ListAllocationsRequest>) -> Result<tonic::Response<pb::ListAllocationsResponse>, tonic::Status> {
        let allocations = self.0.lock().unwrap().allocations.values().cloned().collect();
        Ok(tonic::Response::new(pb::ListAllocationsResponse { allocations }))
    }

    async fn status(&self, _: tonic::Request<pb::StatusRequest>) -> Result<tonic::Response<pb::StatusResponse>, tonic::Status> {
        let t = self.0.lock().unwrap();
        Ok(tonic::Response::new(pb::StatusResponse { ready: t.ready, reason: t.reason.clone(), idle_ips: 10, allocated_ips: t.allocations.len() as u32, max_ips: 20 }))
    }
}

/// A node agent stand-in on `<tempdir>/agent.sock`, served by a tokio runtime on its own thread.
pub struct FakeAgent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    table: Arc<Mutex<Table>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeAgent {
    pub fn start() -> FakeAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let table = Arc::new(Mutex::new(Table {
            allocations: BTreeMap::new(),
            next_host: 2,
            releases: Vec::new(),
            allocate_calls: 0,
            ready: true,
            reason: String::new(),
            protocol: (1, 1),
            on_allocate: None,
        }));
        let mut agent = FakeAgent { dir, socket, table, shutdown: None, thread: None };
        agent.serve();
        agent
    }

    fn serve(&mut self) {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let socket = self.socket.clone();
        let service = Service(self.table.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let _ = std::fs::remove_file(&socket);
                let listener = tokio::net::UnixListener::bind(&socket).unwrap();
                ready_tx.send(()).unwrap();
                let table = service.0.clone();
                // Like the agent: every call announces the caller's protocol in metadata, and a
                // version outside the agent's range is refused with FAILED_PRECONDITION.
                let check_protocol = move |request: tonic::Request<()>| {
                    let Some(value) = request.metadata().get(berth_proto::agent::PROTOCOL_HEADER) else {
                        return Ok(request);
                    };
                    let (min, max) = table.lock().unwrap().protocol;
                    match value.to_str().ok().and_then(|v| v.parse::<u32>().ok()) {
                        Some(v) if (min..=max).contains(&v) => Ok(request),
                        _ => Err(tonic::Status::failed_precondition(format!("the caller speaks agent protocol {value:?}; the fake agent speaks {min}..{max}"))),
                    }
                };
                tonic::transport::Server::builder()
                    .add_service(pb::agent_server::AgentServer::with_interceptor(service, check_protocol))
                    .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        ready_rx.recv().unwrap();
        self.shutdown = Some(stop_tx);
        self.thread = Some(thread);
    }

    /// Stops serving; the socket file stays, so clients meet "connection refused".
    pub fn stop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Serves again on the same socket with the same table.
    pub fn restart(&mut self) {
        self.stop();
        self.serve();
    }

    pub fn socket(&self) -> &str {
        self.socket.to_str().unwrap()
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.dir.path().join("release-queue")
    }

    /// The pod IP the agent holds for this pod interface.
    pub fn ip_of(&self, container_id: &str, ifname: &str) -> Option<Ipv4Addr> {
        let t = self.table.lock().unwrap();
        t.allocations.get(&(container_id.into(), ifname.into())).map(|a| a.ipv4.as_ref().unwrap().address.parse().unwrap())
    }

    /// Records an allocation as if an ADD had asked for it.
    pub fn insert(&self, container_id: &str, ifname: &str) -> Ipv4Addr {
        let mut t = self.table.lock().unwrap();
        let key = (container_id.to_string(), ifname.to_string());
        let a = allocation(&key, t.next_host, "");
        t.next_host += 1;
        t.allocations.insert(key, a);
        drop(t);
        self.ip_of(container_id, ifname).unwrap()
    }

    pub fn releases(&self) -> Vec<(String, String)> {
        self.table.lock().unwrap().releases.clone()
    }

    pub fn allocate_calls(&self) -> usize {
        self.table.lock().unwrap().allocate_calls
    }

    pub fn allocation_count(&self) -> usize {
        self.table.lock().unwrap().allocations.len()
    }

    pub fn set_ready(&self, ready: bool, reason: &str) {
        let mut t = self.table.lock().unwrap();
        t.ready = ready;
        t.reason = reason.into();
    }

    /// From now on AllocateIp answers RESOURCE_EXHAUSTED, as an agent whose pool cannot grow.
    pub fn exhaust(&self) {
        self.table.lock().unwrap().next_host = 251;
    }

    pub fn set_protocol(&self, min: u32, max: u32) {
        self.table.lock().unwrap().protocol = (min, max);
    }

    /// Runs `hook` inside every AllocateIp, before answering.
    pub fn on_allocate(&self, hook: impl Fn(&pb::AllocateIpRequest) + Send + 'static) {
        self.table.lock().unwrap().on_allocate = Some(Box::new(hook));
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node namespace and the pod namespaces of one test, all removed on drop (also on panic).
pub struct Node {
    pub ns: NetnsGuard,
    pods: Vec<NetnsGuard>,
}

impl Node {
    pub fn new() -> Node {
        let ns = NetnsGuard::unique("bcni-node").unwrap();
        // The loopback of the node, as on a real one (the plugin does not rely on it).
        run_ok(Command::new("ip").args(["-n", ns.name(), "link", "set", "lo", "up"]));
        Node { ns, pods: Vec::new() }
    }

    /// A new pod namespace; returns its path (CNI_NETNS).
    pub fn pod(&mut self) -> String {
        let pod = NetnsGuard::unique("bcni-pod").unwrap();
        let path = pod_path(&pod);
        self.pods.push(pod);
        path
    }

    /// Removes a pod namespace before the test ends (the pod is gone).
    pub fn remove_pod(&mut self, path: &str) {
        self.pods.retain(|p| pod_path(p) != path);
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.ns.name())
    }

    pub fn netlink(&self) -> Netlink {
        Netlink::open_in_netns(&self.ns).unwrap()
    }

    /// `ip -n <node> ARGS`, asserting success, stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(Command::new("ip").arg("-n").arg(self.ns.name()).args(args))
    }

    /// Runs `berth` (or another plugin) inside the node namespace as a runtime would.
    pub fn plugin(&self, binary: &str, inv: &Invocation, conf: &Value) -> Run {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path())).arg(binary).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        cmd.env("CNI_COMMAND", inv.command).env("CNI_CONTAINERID", &inv.container_id).env("CNI_NETNS", &inv.netns).env("CNI_IFNAME", &inv.ifname).env("CNI_PATH", "/usr/lib/cni");
        if let Some(args) = &inv.args {
            cmd.env("CNI_ARGS", args);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let doc = serde_json::from_str(&stdout).ok();
        Run { ok: out.status.success(), stdout, stderr: String::from_utf8_lossy(&out.stderr).into_owned(), doc }
    }

    pub fn berth(&self, inv: &Invocation, conf: &Value) -> Run {
        self.plugin(env!("CARGO_BIN_EXE_berth"), inv, conf)
    }
}

fn pod_path(pod: &NetnsGuard) -> String {
    format!("/run/netns/{}", pod.name())
}

/// Netlink inside a pod namespace given by path.
pub fn pod_netlink(path: &str) -> Netlink {
    Netlink::open_in(path).unwrap()
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One plugin run: exit status, stdout (and as JSON when it is), stderr.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    pub doc: Option<Value>,
}

impl Run {
    /// The result document of a successful ADD.
    #[track_caller]
    pub fn result(&self) -> Value {
        assert!(self.ok, "the plugin failed: {} {}", self.stdout, self.stderr);
        self.doc.clone().unwrap_or_else(|| panic!("stdout is not JSON: {:?}", self.stdout))
    }

    #[track_caller]
    pub fn assert_ok_silent(&self) {
        assert!(self.ok, "the plugin failed: {} {}", self.stdout, self.stderr);
        assert!(self.stdout.trim().is_empty(), "printed {:?}", self.stdout);
    }

    /// The CNI error code of a failed run.
    #[track_caller]
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "the plugin succeeded: {}", self.stdout);
        let doc = self.doc.as_ref().unwrap_or_else(|| panic!("the error is not JSON: {:?} ({})", self.stdout, self.stderr));
        doc["code"].as_u64().unwrap()
    }

    pub fn msg(&self) -> String {
        self.doc.as_ref().and_then(|d| d["msg"].as_str()).unwrap_or_default().to_string()
    }
}

/// The CNI parameters of one call.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: &'static str,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: Option<String>,
}

impl Invocation {
    pub fn new(command: &'static str, container_id: &str, netns: &str) -> Invocation {
        Invocation { command, container_id: container_id.into(), netns: netns.into(), ifname: "eth0".into(), args: Some(format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id};K8S_POD_UID=uid-{container_id}")) }
    }

    pub fn command(&self, command: &'static str) -> Invocation {
        Invocation { command, ..self.clone() }
    }
}

/// The network config berth gets, pointing at `agent`.
pub fn conf(version: &str, agent: &FakeAgent) -> Value {
    json!({
        "cniVersion": version,
        "name": "pods",
        "type": "berth",
        "agentSocket": agent.socket(),
        "releaseQueueDir": agent.queue_dir(),
    })
}

/// `conf` with `prevResult` set.
pub fn with_prev(mut conf: Value, prev: &Value) -> Value {
    conf["prevResult"] = prev.clone();
    conf
}

pub fn exists(path: impl AsRef<Path>) -> bool {
    path.as_ref().exists()
}
