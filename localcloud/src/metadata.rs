//! Instance metadata: what a VM reads about itself from the metadata service, with the real paths
//! under `/latest/meta-data/`.

use berth_cloud::model::{EniStatus, NetworkInterface};

use crate::addressing;
use crate::state::State;

fn eni_by_mac<'s>(state: &'s State, instance_id: &str, mac: &str) -> Option<&'s NetworkInterface> {
    state.enis.values().find(|e| e.instance_id.as_deref() == Some(instance_id) && e.mac == mac && e.status == EniStatus::InUse)
}

/// The body served for `path` (relative to `/latest/meta-data/`) of an instance, or `None` (404).
pub fn lookup(state: &State, instance_id: &str, path: &str) -> Option<String> {
    let inst = state.instances.get(instance_id)?;
    let vsw = state.vswitches.get(&inst.vswitch_id)?;
    let vpc = state.vpcs.get(&inst.vpc_id)?;
    let primary = state.enis.get(&inst.primary_eni_id)?;
    let path = path.trim_start_matches('/');
    let value = match path {
        "" => "instance-id\ninstance/\nregion-id\nzone-id\nvpc-id\nvpc-cidr-block\nvswitch-id\nvswitch-cidr-block\nprivate-ipv4\nmac\nnetwork/\nram/\n".to_string(),
        "ram/" => "security-credentials/\n".to_string(),
        "instance-id" => inst.id.clone(),
        "instance/" => "instance-type\n".to_string(),
        "instance/instance-type" => inst.instance_type.clone(),
        "region-id" => state.region_id.clone(),
        "zone-id" => inst.zone_id.clone(),
        "vpc-id" => inst.vpc_id.clone(),
        "vpc-cidr-block" => vpc.cidr_block.to_string(),
        "vswitch-id" => inst.vswitch_id.clone(),
        "vswitch-cidr-block" => vsw.cidr_block.to_string(),
        "private-ipv4" => inst.primary_ip.to_string(),
        "mac" => primary.mac.clone(),
        "network/" => "interfaces/\n".to_string(),
        "network/interfaces/" => "macs/\n".to_string(),
        "network/interfaces/macs/" => {
            let mut macs: Vec<String> = state
                .enis
                .values()
                .filter(|e| e.instance_id.as_deref() == Some(instance_id) && e.status == EniStatus::InUse && e.trunk_eni_id.is_none())
                .map(|e| format!("{}/", e.mac))
                .collect();
            macs.sort();
            macs.join("\n") + "\n"
        }
        other => {
            let rest = other.strip_prefix("network/interfaces/macs/")?;
            let (mac, key) = rest.split_once('/')?;
            let eni = eni_by_mac(state, instance_id, mac)?;
            let eni_vsw = state.vswitches.get(&eni.vswitch_id)?;
            match key {
                "" => "network-interface-id\nprimary-ip-address\ngateway\nnetmask\nvswitch-id\nvswitch-cidr-block\nvpc-id\nvpc-cidr-block\nprivate-ipv4s\nipv6s\nipv6-gateway\nvswitch-ipv6-cidr-block\n".to_string(),
                "network-interface-id" => eni.id.clone(),
                "primary-ip-address" => eni.primary_ip.to_string(),
                "gateway" => addressing::gateway(eni_vsw.cidr_block).to_string(),
                "netmask" => eni_vsw.cidr_block.mask().to_string(),
                "vswitch-id" => eni.vswitch_id.clone(),
                "vswitch-cidr-block" => eni_vsw.cidr_block.to_string(),
                "vpc-id" => eni.vpc_id.clone(),
                "vpc-cidr-block" => vpc.cidr_block.to_string(),
                "private-ipv4s" => {
                    let all: Vec<String> = std::iter::once(eni.primary_ip).chain(eni.secondary_ips.iter().copied()).map(|ip| ip.to_string()).collect();
                    serde_json::to_string(&all).ok()?
                }
                "ipv6s" => serde_json::to_string(&eni.ipv6_addresses.iter().map(ToString::to_string).collect::<Vec<_>>()).ok()?,
                // The vRouter port's own link-local address (EUI-64 of the VPC's MAC), which answers
                // neighbour solicitations like the real VPC's gateway.
                "ipv6-gateway" => eni_vsw.ipv6_cidr_block.map(|_| crate::vpcnet::VROUTER_LINK_LOCAL.to_string())?,
                "vswitch-ipv6-cidr-block" => eni_vsw.ipv6_cidr_block?.to_string(),
                _ => return None,
            }
        }
    };
    Some(value)
}

/// The body served for `path` of an instance: [`lookup`], and its RAM role's STS credentials
/// under `ram/security-credentials/` (the role's name listed there, its credentials as JSON at
/// `ram/security-credentials/<role>`).
pub fn answer(engine: &crate::engine::Engine, instance_id: &str, path: &str) -> Option<String> {
    let path = path.trim_start_matches('/');
    let Some(rest) = path.strip_prefix("ram/security-credentials/") else {
        return lookup(&engine.snapshot(), instance_id, path);
    };
    if !engine.snapshot().instances.contains_key(instance_id) {
        return None;
    }
    let role = engine.role_of(instance_id);
    if rest.is_empty() {
        return Some(format!("{role}\n"));
    }
    if rest.trim_end_matches('/') != role {
        return None;
    }
    let now = crate::engine::now_secs();
    let s = engine.role_credentials(instance_id, now);
    let ts = berth_cloud::signing::format_timestamp;
    Some(
        serde_json::json!({
            "AccessKeyId": s.access_key_id,
            "AccessKeySecret": s.issued.access_key_secret,
            "SecurityToken": s.issued.security_token,
            "Expiration": ts(s.issued.expires_at),
            "LastUpdated": ts(s.issued_at),
            "Code": "Success",
        })
        .to_string(),
    )
}

/// Where a VM reads its metadata inside its own namespace (kept beside [`VPC_ADDR`] for the
/// binaries' configs that name it).
pub const IN_INSTANCE_ADDR: &str = "127.0.0.1:8100";

/// The metadata service's address on every real VPC, served here by each VPC's vRouter (on its
/// `lo`, inside the VPC's namespace: nothing leaves the machine).
pub const VPC_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 100, 100, 200);

/// The instance a request to [`VPC_ADDR`] comes from: the one whose ENI in `vpc_id` owns the
/// source address (the vRouter drops spoofed sources, so the address tells the sender). A pod on
/// a node, whatever its network mode, is answered as its node, as on a real VPC.
pub fn instance_of_source(state: &State, vpc_id: &str, source: std::net::IpAddr) -> Option<String> {
    state
        .enis
        .values()
        .filter(|e| e.vpc_id == vpc_id && e.status == EniStatus::InUse)
        .find(|e| match source {
            std::net::IpAddr::V4(ip) => e.primary_ip == ip || e.secondary_ips.contains(&ip),
            std::net::IpAddr::V6(ip) => e.ipv6_addresses.contains(&ip),
        })
        .and_then(|e| e.instance_id.clone())
}

/// Serves the metadata: each instance's on [`IN_INSTANCE_ADDR`] inside the instance's own
/// namespace (`netns_of(instance_id)`), and on [`VPC_ADDR`] port 80 inside each VPC's namespace
/// (`netns_of(vpc_id)`), answering each sender as its instance. Listeners follow the state
/// (checked every 200 ms).
pub async fn serve(engine: std::sync::Arc<crate::engine::Engine>, netns_of: impl Fn(&str) -> std::path::PathBuf) {
    use std::collections::HashMap;
    let in_vpc = std::net::SocketAddr::from((VPC_ADDR, 80));
    let mut listeners: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let state = engine.snapshot();
        let ids: Vec<&String> = state.instances.keys().chain(state.vpcs.keys()).collect();
        listeners.retain(|id, task| {
            let keep = ids.contains(&id) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        let new: Vec<&String> = ids.into_iter().filter(|id| !listeners.contains_key(*id)).collect();
        for id in new {
            let path = netns_of(id);
            if !path.exists() {
                continue;
            }
            let is_vpc = state.vpcs.contains_key(id);
            match bind_in(&path, if is_vpc { in_vpc } else { IN_INSTANCE_ADDR.parse().expect("a socket address") }) {
                Ok(listener) => {
                    let task = if is_vpc {
                        let router = vpc_router(engine.clone(), id.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
                        tokio::spawn(async move {
                            let _ = axum::serve(listener, router).await;
                        })
                    } else {
                        let router = instance_router(engine.clone(), id.clone());
                        tokio::spawn(async move {
                            let _ = axum::serve(listener, router).await;
                        })
                    };
                    listeners.insert(id.clone(), task);
                }
                // The vRouter gets the address at its VPC's next converge.
                Err(e) if is_vpc && e.kind() == std::io::ErrorKind::AddrNotAvailable => {}
                Err(e) => tracing::warn!(id = %id, error = %e, "cannot serve metadata in the namespace"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn bind_in(netns: &std::path::Path, addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let ns = berth_nodenet::Netns::open(netns).map_err(std::io::Error::other)?;
    let std_listener = ns
        .run_in(|| {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })
        .map_err(std::io::Error::other)??;
    tokio::net::TcpListener::from_std(std_listener)
}

fn respond(body: Option<String>) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    match body {
        Some(b) => (StatusCode::OK, b).into_response(),
        None => (StatusCode::NOT_FOUND, "404 - Not Found\n").into_response(),
    }
}

fn instance_router(engine: std::sync::Arc<crate::engine::Engine>, instance_id: String) -> axum::Router {
    use axum::extract::Path;
    let answer = move |path: String| respond(answer(&engine, &instance_id, &path));
    let root = answer.clone();
    axum::Router::new()
        .route("/latest/meta-data/", axum::routing::get(move || async move { root(String::new()) }))
        .route("/latest/meta-data/{*path}", axum::routing::get(move |Path(path): Path<String>| async move { answer(path) }))
}

/// [`VPC_ADDR`] in one VPC: each request answered for the instance its source address belongs to
/// (none: 404, as for a path the service does not have).
fn vpc_router(engine: std::sync::Arc<crate::engine::Engine>, vpc_id: String) -> axum::Router {
    use axum::extract::{ConnectInfo, Path};
    use std::net::SocketAddr;
    let answer = move |peer: SocketAddr, path: String| respond(instance_of_source(&engine.snapshot(), &vpc_id, peer.ip()).and_then(|id| answer(&engine, &id, &path)));
    let root = answer.clone();
    axum::Router::new()
        .route("/latest/meta-data/", axum::routing::get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { root(peer, String::new()) }))
        .route("/latest/meta-data/{*path}", axum::routing::get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>, Path(path): Path<String>| async move { answer(peer, path) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_cloud::model::EniKind;

    fn eni(id: &str, vpc: &str, instance: Option<&str>, primary: &str, secondary: &[&str]) -> NetworkInterface {
        NetworkInterface {
            id: id.into(),
            kind: EniKind::Secondary,
            status: EniStatus::InUse,
            mac: "02:00:00:00:00:01".into(),
            vpc_id: vpc.into(),
            vswitch_id: "vsw-1".into(),
            zone_id: "local-1a".into(),
            security_group_ids: vec![],
            instance_id: instance.map(str::to_string),
            trunk_eni_id: None,
            vlan_id: None,
            primary_ip: primary.parse().unwrap(),
            secondary_ips: secondary.iter().map(|s| s.parse().unwrap()).collect(),
            ipv6_addresses: vec![],
            description: String::new(),
        }
    }

    #[test]
    fn a_request_to_the_vpc_address_is_answered_as_the_instance_owning_its_source() {
        let mut state = State::default();
        let mut member = eni("eni-m", "vpc-1", Some("i-a"), "10.0.0.9", &[]);
        member.kind = EniKind::Member;
        let mut free = eni("eni-f", "vpc-1", None, "10.0.0.20", &[]);
        free.status = EniStatus::Available;
        for e in [eni("eni-a", "vpc-1", Some("i-a"), "10.0.0.5", &["10.0.0.6"]), eni("eni-b", "vpc-1", Some("i-b"), "10.0.0.7", &[]), eni("eni-x", "vpc-2", Some("i-x"), "10.0.0.8", &[]), member, free] {
            state.enis.insert(e.id.clone(), e);
        }
        let of = |vpc: &str, ip: &str| instance_of_source(&state, vpc, ip.parse().unwrap());
        // The node's own address, a pod's secondary address, a trunk member's: the node.
        assert_eq!(of("vpc-1", "10.0.0.5").as_deref(), Some("i-a"));
        assert_eq!(of("vpc-1", "10.0.0.6").as_deref(), Some("i-a"));
        assert_eq!(of("vpc-1", "10.0.0.9").as_deref(), Some("i-a"));
        assert_eq!(of("vpc-1", "10.0.0.7").as_deref(), Some("i-b"));
        // Another VPC's address, a detached ENI's, an unknown one: nobody.
        assert_eq!(of("vpc-1", "10.0.0.8"), None);
        assert_eq!(of("vpc-1", "10.0.0.20"), None);
        assert_eq!(of("vpc-1", "10.0.0.99"), None);
    }
}
