//! Who this node is, from the instance metadata service. The service is reached from inside the
//! node's namespace (on a real VM that is the host's own; a simulated node names its namespace),
//! with a plain HTTP/1.0 GET on a short-lived thread that entered the namespace.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use berth_nodenet::Netns;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeIdentity {
    pub instance_id: String,
    pub instance_type: String,
    pub region_id: String,
    pub zone_id: String,
    pub vpc_id: String,
    pub vswitch_id: String,
    /// The primary ENI's MAC.
    pub mac: String,
    /// The node's own address (the primary ENI's).
    pub private_ipv4: String,
}

#[derive(Debug, thiserror::Error)]
#[error("instance metadata {url}: {reason} (is the metadata service reachable from the node's namespace? check node.metadata_url and node.netns)")]
pub struct MetadataError {
    pub url: String,
    pub reason: String,
}

/// One metadata value.
pub fn get(netns: Option<&Netns>, base: &str, path: &str) -> Result<String, MetadataError> {
    let url = format!("{}/{path}", base.trim_end_matches('/'));
    let err = |reason: String| MetadataError { url: url.clone(), reason };
    let rest = url.strip_prefix("http://").ok_or_else(|| err("only http:// is supported".into()))?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h.to_string(), format!("/{p}"))).unwrap_or((rest.to_string(), "/".into()));
    let fetch = || -> std::io::Result<Vec<u8>> {
        let hostport = if host.contains(':') { host.clone() } else { format!("{host}:80") };
        let addr = hostport.to_socket_addrs()?.next().ok_or_else(|| std::io::Error::other("no address"))?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(buf)
    };
    let bytes = match netns {
        Some(ns) => ns.run_in(fetch).map_err(|e| err(e.to_string()))?,
        None => fetch(),
    }
    .map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| err("malformed HTTP answer".into()))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(err(format!("HTTP status {status}")));
    }
    Ok(body.trim().to_string())
}

impl NodeIdentity {
    pub fn discover(netns: Option<&Netns>, base: &str) -> Result<NodeIdentity, MetadataError> {
        Ok(NodeIdentity {
            instance_id: get(netns, base, "instance-id")?,
            instance_type: get(netns, base, "instance/instance-type")?,
            region_id: get(netns, base, "region-id")?,
            zone_id: get(netns, base, "zone-id")?,
            vpc_id: get(netns, base, "vpc-id")?,
            vswitch_id: get(netns, base, "vswitch-id")?,
            mac: get(netns, base, "mac")?,
            private_ipv4: get(netns, base, "private-ipv4")?,
        })
    }
}
