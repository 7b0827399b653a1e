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

/// The body served for `path` of an instance: [`lookup`], and the RAM role's STS credentials
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
    if rest.is_empty() {
        return Some(format!("{}\n", engine.role.name));
    }
    if rest.trim_end_matches('/') != engine.role.name {
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

/// Where a VM reads its metadata inside its own namespace (the real service's address is not used
/// on this machine: nothing may leave it).
pub const IN_INSTANCE_ADDR: &str = "127.0.0.1:8100";

/// Serves each instance's metadata on `127.0.0.1:8100` inside the instance's own namespace, as a
/// VM reads it: listeners follow the instances (checked every 200 ms), each answers for its
/// instance only.
pub async fn serve_in_instances(engine: std::sync::Arc<crate::engine::Engine>, netns_of: impl Fn(&str) -> std::path::PathBuf) {
    use std::collections::HashMap;
    let mut listeners: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let instances: Vec<String> = engine.snapshot().instances.keys().cloned().collect();
        listeners.retain(|id, task| {
            let keep = instances.contains(id) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        let new: Vec<&String> = instances.iter().filter(|id| !listeners.contains_key(*id)).collect();
        for id in new {
            let path = netns_of(id);
            if !path.exists() {
                continue;
            }
            match bind_in(&path) {
                Ok(listener) => {
                    let router = instance_router(engine.clone(), id.clone());
                    listeners.insert(id.clone(), tokio::spawn(async move {
                        let _ = axum::serve(listener, router).await;
                    }));
                }
                Err(e) => tracing::warn!(instance = %id, error = %e, "cannot serve metadata in the instance's namespace"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn bind_in(netns: &std::path::Path) -> std::io::Result<tokio::net::TcpListener> {
    let ns = berth_nodenet::Netns::open(netns).map_err(std::io::Error::other)?;
    let std_listener = ns
        .run_in(|| {
            let l = std::net::TcpListener::bind(IN_INSTANCE_ADDR)?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })
        .map_err(std::io::Error::other)??;
    tokio::net::TcpListener::from_std(std_listener)
}

fn instance_router(engine: std::sync::Arc<crate::engine::Engine>, instance_id: String) -> axum::Router {
    use axum::extract::Path;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let answer = move |path: String| {
        let body = answer(&engine, &instance_id, &path);
        match body {
            Some(b) => (StatusCode::OK, b).into_response(),
            None => (StatusCode::NOT_FOUND, "404 - Not Found\n").into_response(),
        }
    };
    let root = answer.clone();
    axum::Router::new()
        .route("/latest/meta-data/", axum::routing::get(move || async move { root(String::new()) }))
        .route("/latest/meta-data/{*path}", axum::routing::get(move |Path(path): Path<String>| async move { answer(path) }))
}
