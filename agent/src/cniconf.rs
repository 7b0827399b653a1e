//! The CNI network configuration the agent writes once it can serve: until that file exists a
//! runtime does not send pods to this node's network.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::config::CniConfig;

pub const FILE_NAME: &str = "10-berth.conflist";

/// The conflist: `berth` first, then the chained plugins the operator listed (e.g. `portmap`
/// with the portMappings capability, `bandwidth` with the bandwidth capability). `berth` shapes
/// pods itself and takes the bandwidth capability, unless the chain has the `bandwidth` plugin.
/// With `cni.log_file` set, `berth` appends a line per command to it (`logFile`).
pub fn render(cni: &CniConfig, agent_socket: &Path, release_queue_dir: &Path) -> String {
    let (name, cni_version, chain) = (&cni.network_name, &cni.cni_version, &cni.chain);
    let mut plugins = vec![serde_json::json!({
        "type": "berth",
        "agentSocket": agent_socket,
        "releaseQueueDir": release_queue_dir,
        "mtu": cni.mtu,
    })];
    if !cni.log_file.as_os_str().is_empty() {
        plugins[0]["logFile"] = serde_json::json!(cni.log_file);
    }
    if !chain.iter().any(|p| p == "bandwidth") {
        plugins[0]["capabilities"] = serde_json::json!({ "bandwidth": true });
    }
    for plugin in chain {
        let mut p = serde_json::json!({ "type": plugin });
        match plugin.as_str() {
            "portmap" => p["capabilities"] = serde_json::json!({ "portMappings": true }),
            "bandwidth" => p["capabilities"] = serde_json::json!({ "bandwidth": true }),
            _ => {}
        }
        plugins.push(p);
    }
    serde_json::to_string_pretty(&serde_json::json!({ "cniVersion": cni_version, "name": name, "plugins": plugins })).expect("JSON")
}

/// Writes the file atomically (temp file, fsync, rename): a runtime never reads half of it.
pub fn write(dir: &Path, text: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_with_capabilities() {
        let cni = CniConfig { network_name: "pods".into(), chain: vec!["portmap".into(), "bandwidth".into()], ..CniConfig::default() };
        let text = render(&cni, Path::new("/run/berth/agent.sock"), Path::new("/q"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["plugins"][0]["type"], "berth");
        assert_eq!(v["plugins"][0]["agentSocket"], "/run/berth/agent.sock");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
        assert_eq!(v["plugins"][2]["capabilities"]["bandwidth"], true);
        assert!(v["plugins"][0].get("capabilities").is_none(), "the chained plugin shapes, not berth");
        assert!(v["plugins"][0].get("logFile").is_none(), "no plugin log unless asked");
        let logged = CniConfig { log_file: "/var/log/berth/cni.log".into(), ..CniConfig::default() };
        let alone: serde_json::Value = serde_json::from_str(&render(&logged, Path::new("/s"), Path::new("/q"))).unwrap();
        assert_eq!(alone["plugins"][0]["capabilities"]["bandwidth"], true);
        assert_eq!(alone["plugins"][0]["logFile"], "/var/log/berth/cni.log");
    }
}
