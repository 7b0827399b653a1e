//! The CNI network configuration the agent writes once it can serve: until that file exists a
//! runtime does not send pods to this node's network.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::config::CniConfig;

pub const FILE_NAME: &str = "10-berth.conflist";
/// One more conflist per mode with pods' own ENIs, named `<network>-<mode>` (`berth-exclusive`,
/// `berth-trunk`), so that a runtime passing no CNI_ARGS picks the mode by the network it names
/// (`podman run --network berth-trunk`). They sort after [`FILE_NAME`]: a runtime that takes the
/// first file gets the default network.
pub const MODE_FILES: [(&str, &str); 2] = [("exclusive", "11-berth-exclusive.conflist"), ("trunk", "12-berth-trunk.conflist")];

/// The conflist: `berth` first, then the chained plugins the operator listed (e.g. `portmap`
/// with the portMappings capability, `bandwidth` with the bandwidth capability). `berth` shapes
/// pods itself and takes the bandwidth capability, unless the chain has the `bandwidth` plugin.
/// With `cni.log_file` set, `berth` appends a line per command to it (`logFile`).
pub fn render(cni: &CniConfig, agent_socket: &Path, release_queue_dir: &Path) -> String {
    render_network(cni, agent_socket, release_queue_dir, None)
}

/// The conflist of one mode's network (`networkMode` in berth's config); `None`: the default one.
pub fn render_network(cni: &CniConfig, agent_socket: &Path, release_queue_dir: &Path, mode: Option<&str>) -> String {
    let (cni_version, chain) = (&cni.cni_version, &cni.chain);
    let name = match mode {
        Some(m) => format!("{}-{m}", cni.network_name),
        None => cni.network_name.clone(),
    };
    let mut plugins = vec![serde_json::json!({
        "type": "berth",
        "agentSocket": agent_socket,
        "releaseQueueDir": release_queue_dir,
        "mtu": cni.mtu,
    })];
    if let Some(m) = mode {
        plugins[0]["networkMode"] = serde_json::json!(m);
    }
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

/// Writes every network's conflist: the modes' first (trunk only when the node serves it; a
/// stale one is removed), the default last, so that its file, the agent's sign of readiness,
/// means all are there. Returns the default's path.
pub fn write_all(dir: &Path, cni: &CniConfig, agent_socket: &Path, release_queue_dir: &Path, trunk: bool) -> std::io::Result<PathBuf> {
    for (mode, file) in MODE_FILES {
        if mode == "trunk" && !trunk {
            match std::fs::remove_file(dir.join(file)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => continue,
            }
        }
        write_file(dir, file, &render_network(cni, agent_socket, release_queue_dir, Some(mode)))?;
    }
    write(dir, &render(cni, agent_socket, release_queue_dir))
}

/// Writes the file atomically (temp file, fsync, rename): a runtime never reads half of it.
pub fn write(dir: &Path, text: &str) -> std::io::Result<PathBuf> {
    write_file(dir, FILE_NAME, text)
}

fn write_file(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
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

    #[test]
    fn one_network_per_mode() {
        let dir = tempfile::tempdir().unwrap();
        let cni = CniConfig::default();
        std::fs::write(dir.path().join("12-berth-trunk.conflist"), "stale").unwrap();
        let default = write_all(dir.path(), &cni, Path::new("/s"), Path::new("/q"), false).unwrap();
        assert_eq!(default, dir.path().join(FILE_NAME));
        assert!(!dir.path().join("12-berth-trunk.conflist").exists(), "no trunk network on a node without a trunk");
        write_all(dir.path(), &cni, Path::new("/s"), Path::new("/q"), true).unwrap();
        for (file, name, mode) in [(FILE_NAME, "berth", None), ("11-berth-exclusive.conflist", "berth-exclusive", Some("exclusive")), ("12-berth-trunk.conflist", "berth-trunk", Some("trunk"))] {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join(file)).unwrap()).unwrap();
            assert_eq!(v["name"], name);
            assert_eq!(v["plugins"][0]["networkMode"].as_str(), mode, "{file}");
        }
    }
}
