//! The wire numbers a real CSI client depends on, read back from the encoded bytes, and one call of
//! each service over a real tonic server on a unix socket.

use std::collections::HashMap;

use berth_proto::agent::v1 as agent;
use berth_proto::csi::v1 as csi;
use prost::Message;

/// Top-level field numbers of an encoded message, in order (a minimal protobuf reader).
fn field_numbers(mut bytes: &[u8]) -> Vec<u32> {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        v
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes);
        out.push((key >> 3) as u32);
        match key & 7 {
            0 => {
                varint(&mut bytes);
            }
            1 => bytes = &bytes[8..],
            2 => {
                let len = varint(&mut bytes) as usize;
                bytes = &bytes[len..];
            }
            5 => bytes = &bytes[4..],
            other => panic!("unexpected wire type {other}"),
        }
    }
    out.dedup();
    out
}

fn map(k: &str) -> HashMap<String, String> {
    HashMap::from([(k.to_string(), "v".to_string())])
}

fn mount_capability() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(csi::volume_capability::MountVolume { fs_type: "ext4".into(), ..Default::default() })),
        access_mode: Some(csi::volume_capability::AccessMode { mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32 }),
    }
}

#[test]
fn create_volume_request_numbers() {
    let req = csi::CreateVolumeRequest {
        name: "pvc-1".into(),
        capacity_range: Some(csi::CapacityRange { required_bytes: 1 << 30, limit_bytes: 0 }),
        volume_capabilities: vec![mount_capability()],
        parameters: map("type"),
        secrets: map("key"),
        volume_content_source: Some(csi::VolumeContentSource { r#type: Some(csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource { snapshot_id: "s".into() })) }),
        accessibility_requirements: Some(csi::TopologyRequirement { requisite: vec![csi::Topology { segments: map("zone") }], preferred: vec![] }),
        mutable_parameters: map("iops"),
    };
    assert_eq!(field_numbers(&req.encode_to_vec()), vec![1, 2, 3, 4, 5, 6, 7, 8]);
    let cap = mount_capability().encode_to_vec();
    assert_eq!(field_numbers(&cap), vec![2, 3], "mount is 2, access_mode is 3");
}

#[test]
fn node_publish_and_info_numbers() {
    let req = csi::NodePublishVolumeRequest {
        volume_id: "d-1".into(),
        publish_context: map("device"),
        staging_target_path: "/s".into(),
        target_path: "/t".into(),
        volume_capability: Some(mount_capability()),
        readonly: true,
        secrets: map("k"),
        volume_context: map("c"),
    };
    assert_eq!(field_numbers(&req.encode_to_vec()), vec![1, 2, 3, 4, 5, 6, 7, 8]);
    let stage = csi::NodeStageVolumeRequest {
        volume_id: "d".into(),
        publish_context: map("p"),
        staging_target_path: "/s".into(),
        volume_capability: Some(mount_capability()),
        secrets: map("k"),
        volume_context: map("c"),
    };
    assert_eq!(field_numbers(&stage.encode_to_vec()), vec![1, 2, 3, 4, 5, 6]);
    let info = csi::NodeGetInfoResponse { node_id: "i-1".into(), max_volumes_per_node: 15, accessible_topology: Some(csi::Topology { segments: map("zone") }) };
    assert_eq!(field_numbers(&info.encode_to_vec()), vec![1, 2, 3]);
    let expand = csi::ControllerExpandVolumeResponse { capacity_bytes: 1, node_expansion_required: true };
    assert_eq!(field_numbers(&expand.encode_to_vec()), vec![1, 2]);
    let caps = csi::GetPluginCapabilitiesResponse {
        capabilities: vec![csi::PluginCapability {
            r#type: Some(csi::plugin_capability::Type::VolumeExpansion(csi::plugin_capability::VolumeExpansion { r#type: csi::plugin_capability::volume_expansion::Type::Online as i32 })),
        }],
    };
    let bytes = caps.encode_to_vec();
    assert_eq!(field_numbers(&bytes), vec![1], "capabilities is field 1 in CSI v1");
    assert_eq!(csi::controller_service_capability::rpc::Type::ExpandVolume as i32, 9);
    assert_eq!(csi::node_service_capability::rpc::Type::ExpandVolume as i32, 3);
}

struct Identity;

#[tonic::async_trait]
impl csi::identity_server::Identity for Identity {
    async fn get_plugin_info(&self, _: tonic::Request<csi::GetPluginInfoRequest>) -> Result<tonic::Response<csi::GetPluginInfoResponse>, tonic::Status> {
        Ok(tonic::Response::new(csi::GetPluginInfoResponse { name: "test.berth".into(), vendor_version: "1".into(), manifest: HashMap::new() }))
    }
    async fn get_plugin_capabilities(&self, _: tonic::Request<csi::GetPluginCapabilitiesRequest>) -> Result<tonic::Response<csi::GetPluginCapabilitiesResponse>, tonic::Status> {
        Ok(tonic::Response::new(csi::GetPluginCapabilitiesResponse::default()))
    }
    async fn probe(&self, _: tonic::Request<csi::ProbeRequest>) -> Result<tonic::Response<csi::ProbeResponse>, tonic::Status> {
        Ok(tonic::Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

struct Agent;

#[tonic::async_trait]
impl agent::agent_server::Agent for Agent {
    async fn hello(&self, req: tonic::Request<agent::HelloRequest>) -> Result<tonic::Response<agent::HelloResponse>, tonic::Status> {
        let v = req.into_inner().protocol_version;
        Ok(tonic::Response::new(agent::HelloResponse { agent_version: "test".into(), protocol_version: v, min_protocol_version: 1, max_protocol_version: 1 }))
    }
    async fn allocate_ip(&self, _: tonic::Request<agent::AllocateIpRequest>) -> Result<tonic::Response<agent::Allocation>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }
    async fn release_ip(&self, _: tonic::Request<agent::ReleaseIpRequest>) -> Result<tonic::Response<agent::ReleaseIpResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }
    async fn get_allocation(&self, _: tonic::Request<agent::GetAllocationRequest>) -> Result<tonic::Response<agent::Allocation>, tonic::Status> {
        Err(tonic::Status::not_found("test"))
    }
    async fn list_allocations(&self, _: tonic::Request<agent::ListAllocationsRequest>) -> Result<tonic::Response<agent::ListAllocationsResponse>, tonic::Status> {
        Ok(tonic::Response::new(agent::ListAllocationsResponse::default()))
    }
    async fn status(&self, _: tonic::Request<agent::StatusRequest>) -> Result<tonic::Response<agent::StatusResponse>, tonic::Status> {
        Ok(tonic::Response::new(agent::StatusResponse::default()))
    }
    async fn attach_disk(&self, _: tonic::Request<agent::AttachDiskRequest>) -> Result<tonic::Response<agent::DiskAttachment>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }
    async fn detach_disk(&self, _: tonic::Request<agent::DetachDiskRequest>) -> Result<tonic::Response<agent::DetachDiskResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }
    async fn list_attachments(&self, _: tonic::Request<agent::ListAttachmentsRequest>) -> Result<tonic::Response<agent::ListAttachmentsResponse>, tonic::Status> {
        Ok(tonic::Response::new(agent::ListAttachmentsResponse::default()))
    }
    async fn disk_slots(&self, _: tonic::Request<agent::DiskSlotsRequest>) -> Result<tonic::Response<agent::DiskSlotsResponse>, tonic::Status> {
        Ok(tonic::Response::new(agent::DiskSlotsResponse::default()))
    }
}

#[tokio::test]
async fn services_answer_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grpc.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(csi::identity_server::IdentityServer::new(Identity))
        .add_service(agent::agent_server::AgentServer::new(Agent))
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener));
    let task = tokio::spawn(server);

    let socket = path.clone();
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }))
        .await
        .unwrap();
    let mut identity = csi::identity_client::IdentityClient::new(channel.clone());
    let info = identity.get_plugin_info(csi::GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, "test.berth");
    let mut agent_client = agent::agent_client::AgentClient::new(channel);
    let hello = agent_client.hello(agent::HelloRequest { plugin_version: "p".into(), protocol_version: 1 }).await.unwrap().into_inner();
    assert_eq!(hello.protocol_version, 1);
    let missing = agent_client.get_allocation(agent::GetAllocationRequest { key: None }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    task.abort();
}
