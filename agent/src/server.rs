//! The agent's gRPC API on its unix socket (mode 0600, peers checked by uid), for the CNI plugin.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use berth_cloud::Cloud;
use berth_proto::agent::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::attach::ledger::{AttachState, AttachmentRecord};
use crate::attach::{AttachError, DiskAttacher};
use crate::eni_pool::{AllocError, Allocated, EniPool, PodEniRequest};
use crate::node::host_veth_name;

use crate::pool::ledger::{AllocationKey, PodMode, PodRef};

/// The plugin↔agent protocol this agent speaks; a plugin outside [MIN, MAX] is refused by Hello.
pub const PROTOCOL_VERSION: u32 = 1;
pub const MIN_PROTOCOL_VERSION: u32 = 1;

pub struct AgentService<C> {
    pool: Arc<EniPool<C>>,
    disks: Arc<DiskAttacher<C>>,
}

impl<C> AgentService<C> {
    pub fn new(pool: Arc<EniPool<C>>, disks: Arc<DiskAttacher<C>>) -> Self {
        AgentService { pool, disks }
    }
}

fn disk_id_of(disk_id: String) -> Result<String, Status> {
    if disk_id.is_empty() {
        return Err(Status::invalid_argument("the request has no disk_id; send the cloud disk's ID (d-...)"));
    }
    Ok(disk_id)
}

pub fn attachment_to_proto(r: &AttachmentRecord) -> pb::DiskAttachment {
    pb::DiskAttachment {
        disk_id: r.disk_id.clone(),
        serial: r.serial.clone(),
        device_path: r.device.clone(),
        state: match r.state {
            AttachState::Attaching => pb::AttachState::Attaching,
            AttachState::Attached => pb::AttachState::Attached,
            AttachState::Detaching => pb::AttachState::Detaching,
        } as i32,
        since: r.since,
    }
}

fn attach_status(e: AttachError) -> Status {
    use crate::attach::ledger::LedgerError;
    let text = e.to_string();
    match e {
        AttachError::Ledger(LedgerError::Busy(_)) => Status::aborted(text),
        AttachError::Ledger(LedgerError::Exhausted { .. }) => Status::resource_exhausted(text),
        AttachError::NotFound(_) => Status::not_found(text),
        AttachError::AttachedElsewhere { .. } | AttachError::InUse { .. } => Status::failed_precondition(text),
        AttachError::TimedOut { .. } => Status::deadline_exceeded(text),
        AttachError::Device(_) => Status::internal(text),
        AttachError::Cloud(ref c) if c.code().is_some_and(|c| c.starts_with("IncorrectDiskStatus") || c.starts_with("InvalidOperation")) => Status::failed_precondition(text),
        AttachError::Cloud(_) => Status::unavailable(text),
        AttachError::Store(_) => Status::internal(text),
    }
}

fn key_of(key: Option<pb::AllocationKey>) -> Result<AllocationKey, Status> {
    let key = key.ok_or_else(|| Status::invalid_argument("the request has no key; send container_id and ifname"))?;
    if key.container_id.is_empty() || key.ifname.is_empty() {
        return Err(Status::invalid_argument(format!("key {:?}/{:?} needs both a container ID and an interface name", key.container_id, key.ifname)));
    }
    Ok(AllocationKey { container_id: key.container_id, ifname: key.ifname })
}

/// The allocation as the plugin reads it; `node_ip` is the node's own address, which an exclusive
/// pod reaches through its veth.
pub fn to_proto(a: &Allocated, node_ip: &str) -> pb::Allocation {
    let r = &a.record;
    pb::Allocation {
        key: Some(pb::AllocationKey { container_id: r.key.container_id.clone(), ifname: r.key.ifname.clone() }),
        pod: Some(pb::PodIdentity { namespace: r.pod.namespace.clone(), name: r.pod.name.clone(), uid: r.pod.uid.clone(), infra_container_id: r.pod.infra_container_id.clone() }),
        mode: match r.mode {
            PodMode::Shared => pb::NetworkMode::Shared,
            PodMode::Exclusive => pb::NetworkMode::Exclusive,
            PodMode::Trunk => pb::NetworkMode::Trunk,
        } as i32,
        ipv4: Some(pb::IpConfig { address: r.ip.to_string(), prefix_length: u32::from(a.eni.prefix_len), gateway: a.eni.gateway.to_string() }),
        // The pod's IPv6 address as a /128 in every mode: everything else, its vSwitch's other
        // addresses too, is reached through the gateway (the VPC answers no neighbour solicitation
        // for other ENIs' addresses, unlike ARP).
        ipv6: r.ip6.map(|ip6| pb::IpConfig {
            address: ip6.to_string(),
            prefix_length: 128,
            gateway: a.eni.gateway6.map(|(g, _)| g.to_string()).unwrap_or_default(),
        }),
        eni: Some(pb::EniRef {
            eni_id: a.eni.id.clone(),
            mac: a.eni.mac.clone(),
            // A member's frames leave by the trunk's NIC.
            node_ifname: match &a.eni.vlan {
                Some(v) => v.trunk_nic.clone(),
                None => a.eni.nic.as_ref().map(|n| n.name.clone()).unwrap_or_default(),
            },
            route_table: a.eni.nic.as_ref().map(|n| n.route_table).unwrap_or_default(),
            vlan_id: a.eni.vlan.as_ref().map(|v| u32::from(v.id)).unwrap_or_default(),
            trunk_eni_id: a.eni.vlan.as_ref().map(|v| v.trunk_eni_id.clone()).unwrap_or_default(),
        }),
        bandwidth: None,
        netns: r.netns.clone(),
        created_at: r.created_at,
        node_addresses: if r.mode == PodMode::Exclusive && !node_ip.is_empty() { vec![node_ip.to_string()] } else { Vec::new() },
    }
}

/// The trace ID a caller sent in `traceparent` metadata, or a new one.
fn trace_id_of<T>(request: &Request<T>) -> String {
    request.metadata().get(berth_proto::agent::TRACE_HEADER).and_then(|v| v.to_str().ok()).and_then(berth_cloud::trace::trace_id_of).unwrap_or_else(berth_cloud::trace::new_trace_id)
}

impl<C: Cloud + 'static> AgentService<C> {
    /// An ADD's allocation in the pod's mode.
    async fn allocate(&self, key: AllocationKey, r: pb::AllocateIpRequest, mode: pb::NetworkMode) -> Result<pb::Allocation, Status> {
        if r.want_ipv6 && !self.pool.settings().dual_stack {
            return Err(Status::invalid_argument("this node serves IPv4 only: set pool.ip_stack = \"dual\" in the agent's config (its vSwitches need IPv6 blocks)"));
        }
        let pod = r.pod.map(|p| PodRef { namespace: p.namespace, name: p.name, uid: p.uid, infra_container_id: p.infra_container_id }).unwrap_or_default();
        let result = match mode {
            pb::NetworkMode::Shared | pb::NetworkMode::Unspecified => {
                if !r.vswitch_id.is_empty() || !r.security_group_ids.is_empty() {
                    return Err(Status::invalid_argument(format!(
                        "vSwitch {:?} and security groups {:?} choose a pod's own ENI: ask for exclusive mode, or drop them for the shared pool",
                        r.vswitch_id, r.security_group_ids
                    )));
                }
                self.pool.allocate(key, r.netns, pod).await
            }
            pb::NetworkMode::Exclusive => {
                let request = PodEniRequest { vswitch_id: Some(r.vswitch_id).filter(|v| !v.is_empty()), security_group_ids: r.security_group_ids };
                self.pool.allocate_exclusive(key, r.netns, pod, request).await
            }
            pb::NetworkMode::Trunk => {
                let request = PodEniRequest { vswitch_id: Some(r.vswitch_id).filter(|v| !v.is_empty()), security_group_ids: r.security_group_ids };
                self.pool.allocate_trunk(key, r.netns, pod, request).await
            }
        };
        match result {
            Ok(a) => Ok(to_proto(&a, &self.pool.identity().private_ipv4)),
            Err(AllocError::Exhausted(why)) => Err(Status::resource_exhausted(why)),
            Err(AllocError::Refused(why)) => Err(Status::aborted(why)),
            Err(AllocError::Invalid(why)) => Err(Status::invalid_argument(why)),
            Err(e @ AllocError::Store(_)) => Err(Status::internal(e.to_string())),
        }
    }
}

#[tonic::async_trait]
impl<C: Cloud + 'static> pb::agent_server::Agent for AgentService<C> {
    async fn hello(&self, request: Request<pb::HelloRequest>) -> Result<Response<pb::HelloResponse>, Status> {
        let r = request.into_inner();
        tracing::debug!(plugin = %r.plugin_version, protocol = r.protocol_version, "hello");
        Ok(Response::new(pb::HelloResponse {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: PROTOCOL_VERSION.min(r.protocol_version.max(MIN_PROTOCOL_VERSION)),
            min_protocol_version: MIN_PROTOCOL_VERSION,
            max_protocol_version: PROTOCOL_VERSION,
        }))
    }

    async fn allocate_ip(&self, request: Request<pb::AllocateIpRequest>) -> Result<Response<pb::Allocation>, Status> {
        let trace_id = trace_id_of(&request);
        let r = request.into_inner();
        let key = key_of(r.key.clone())?;
        let mode = pb::NetworkMode::try_from(r.mode).unwrap_or(pb::NetworkMode::Unspecified);
        let span = tracing::info_span!("add", %trace_id, container = %key.container_id, ifname = %key.ifname, mode = mode.as_str_name());
        let started = std::time::Instant::now();
        let result = berth_cloud::trace::scope(trace_id, self.allocate(key, r, mode)).instrument(span.clone()).await;
        let _entered = span.enter();
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        match &result {
            Ok(a) => tracing::info!(ip = a.ipv4.as_ref().map(|i| i.address.as_str()).unwrap_or_default(), eni = a.eni.as_ref().map(|e| e.eni_id.as_str()).unwrap_or_default(), elapsed_ms, "pod network allocated"),
            Err(status) => berth_daemon::limited!(warn, "allocate", code = ?status.code(), error = status.message(), elapsed_ms, "pod network not allocated"),
        }
        result.map(Response::new)
    }

    async fn release_ip(&self, request: Request<pb::ReleaseIpRequest>) -> Result<Response<pb::ReleaseIpResponse>, Status> {
        let trace_id = trace_id_of(&request);
        let key = key_of(request.into_inner().key)?;
        let span = tracing::info_span!("del", %trace_id, container = %key.container_id, ifname = %key.ifname);
        let released = berth_cloud::trace::scope(trace_id, self.pool.release_and_unwire(&key)).instrument(span.clone()).await;
        let _entered = span.enter();
        match released {
            Ok(released) => {
                tracing::info!(released = released.is_some(), "pod network released");
                Ok(Response::new(pb::ReleaseIpResponse { released: released.is_some() }))
            }
            Err(e) => {
                berth_daemon::limited!(warn, "release", error = %e, "pod network not released");
                Err(Status::internal(e.to_string()))
            }
        }
    }


    async fn get_allocation(&self, request: Request<pb::GetAllocationRequest>) -> Result<Response<pb::Allocation>, Status> {
        let key = key_of(request.into_inner().key)?;
        match self.pool.get(&key) {
            Some(a) => Ok(Response::new(to_proto(&a, &self.pool.identity().private_ipv4))),
            None => Err(Status::not_found(format!("no allocation for {key} (host veth {})", host_veth_name(&key.container_id, &key.ifname)))),
        }
    }

    async fn list_allocations(&self, _request: Request<pb::ListAllocationsRequest>) -> Result<Response<pb::ListAllocationsResponse>, Status> {
        Ok(Response::new(pb::ListAllocationsResponse { allocations: self.pool.list().iter().map(|a| to_proto(a, &self.pool.identity().private_ipv4)).collect() }))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.pool.status();
        Ok(Response::new(pb::StatusResponse { ready: s.ready, reason: s.reason, idle_ips: s.idle, allocated_ips: s.allocated, max_ips: s.max }))
    }

    async fn attach_disk(&self, request: Request<pb::AttachDiskRequest>) -> Result<Response<pb::DiskAttachment>, Status> {
        let disk_id = disk_id_of(request.into_inner().disk_id)?;
        let r = self.disks.attach(&disk_id).await.map_err(attach_status)?;
        Ok(Response::new(attachment_to_proto(&r)))
    }

    async fn detach_disk(&self, request: Request<pb::DetachDiskRequest>) -> Result<Response<pb::DetachDiskResponse>, Status> {
        let disk_id = disk_id_of(request.into_inner().disk_id)?;
        let detached = self.disks.detach(&disk_id).await.map_err(attach_status)?;
        Ok(Response::new(pb::DetachDiskResponse { detached }))
    }

    async fn list_attachments(&self, _request: Request<pb::ListAttachmentsRequest>) -> Result<Response<pb::ListAttachmentsResponse>, Status> {
        Ok(Response::new(pb::ListAttachmentsResponse { attachments: self.disks.list().iter().map(attachment_to_proto).collect() }))
    }

    async fn disk_slots(&self, _request: Request<pb::DiskSlotsRequest>) -> Result<Response<pb::DiskSlotsResponse>, Status> {
        let s = self.disks.slots();
        let n = self.disks.settings();
        Ok(Response::new(pb::DiskSlotsResponse {
            instance_id: n.instance_id.clone(),
            instance_type: n.instance_type.clone(),
            zone_id: n.zone_id.clone(),
            disk_quota: s.quota,
            unmanaged: s.unmanaged,
            limit: s.limit,
            used: s.used,
            free: s.free,
        }))
    }
}

/// Refuses a caller that announces a protocol outside what this agent speaks.
fn check_protocol(request: Request<()>) -> Result<Request<()>, Status> {
    let Some(value) = request.metadata().get(berth_proto::agent::PROTOCOL_HEADER) else { return Ok(request) };
    let version: Option<u32> = value.to_str().ok().and_then(|v| v.parse().ok());
    match version {
        Some(v) if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&v) => Ok(request),
        _ => Err(Status::failed_precondition(format!(
            "the caller speaks agent protocol {value:?}; berth-agent {} speaks {MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION}",
            env!("CARGO_PKG_VERSION")
        ))),
    }
}

/// Binds the socket (replacing a stale one), mode 0600.
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves until `shutdown` resolves. Connections from uids not in `allowed_uids` are closed.
pub async fn serve<C: Cloud + 'static>(listener: tokio::net::UnixListener, pool: Arc<EniPool<C>>, disks: Arc<DiskAttacher<C>>, allowed_uids: Vec<u32>, shutdown: impl std::future::Future<Output = ()>) -> Result<(), tonic::transport::Error> {
    let incoming = berth_daemon::socket::allowed_peers(listener, allowed_uids, "api.allowed_uids");
    tonic::transport::Server::builder()
        .add_service(pb::agent_server::AgentServer::with_interceptor(AgentService::new(pool, disks), check_protocol))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
