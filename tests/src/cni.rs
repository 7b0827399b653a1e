//! Running CNI plugins the way libcni does: one process per plugin of a conflist, the network
//! config on stdin with `name`, `cniVersion` and the previous plugin's result as `prevResult`,
//! the parameters in the environment, inside the node's network namespace.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the reference plugins of Debian's containernetworking-plugins live.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

#[derive(Debug, Clone)]
pub struct CniOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutput {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("plugin stdout is not JSON ({e}): {:?} stderr {:?}", self.stdout, self.stderr))
    }
}

/// One plugin invocation.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
}

/// The directory holding `berth` (the workspace's build) and, after it, the reference plugins.
pub fn cni_path() -> String {
    let berth = crate::bin("berth");
    format!("{}:{REFERENCE_PLUGINS}", berth.parent().unwrap().display())
}

/// Executes the plugin `plugin_type` found in `cni_path` with `conf` on stdin, in `node_netns`
/// (`None`: this process's namespace).
pub fn exec(node_netns: Option<&Path>, cni_path: &str, plugin_type: &str, conf: &serde_json::Value, inv: &Invocation<'_>) -> CniOutput {
    let binary: PathBuf = cni_path.split(':').map(|d| Path::new(d).join(plugin_type)).find(|p| p.exists()).unwrap_or_else(|| panic!("plugin {plugin_type} not found in {cni_path}"));
    let mut cmd = match node_netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg(&binary);
            c
        }
        None => Command::new(&binary),
    };
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", inv.command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn plugin");
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    CniOutput { ok: out.status.success(), stdout: String::from_utf8_lossy(&out.stdout).into_owned(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// The config one plugin of a conflist receives.
pub fn plugin_conf(conflist: &serde_json::Value, index: usize, prev: Option<&serde_json::Value>) -> serde_json::Value {
    let mut conf = conflist["plugins"][index].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    conf
}

/// ADD through every plugin of the list in order, as libcni does; the last result.
pub fn add_list(node_netns: Option<&Path>, cni_path: &str, conflist: &serde_json::Value, inv: &Invocation<'_>) -> Result<serde_json::Value, CniOutput> {
    let mut prev: Option<serde_json::Value> = None;
    for i in 0..conflist["plugins"].as_array().map_or(0, Vec::len) {
        let conf = plugin_conf(conflist, i, prev.as_ref());
        let out = exec(node_netns, cni_path, conf["type"].as_str().unwrap(), &conf, &Invocation { command: "ADD", ..inv.clone() });
        if !out.ok {
            return Err(out);
        }
        prev = Some(out.json());
    }
    Ok(prev.unwrap_or_default())
}

/// DEL through every plugin in reverse order with the ADD result as prevResult.
pub fn del_list(node_netns: Option<&Path>, cni_path: &str, conflist: &serde_json::Value, inv: &Invocation<'_>, prev: Option<&serde_json::Value>) -> Result<(), CniOutput> {
    let n = conflist["plugins"].as_array().map_or(0, Vec::len);
    for i in (0..n).rev() {
        let conf = plugin_conf(conflist, i, prev);
        let out = exec(node_netns, cni_path, conf["type"].as_str().unwrap(), &conf, &Invocation { command: "DEL", ..inv.clone() });
        if !out.ok {
            return Err(out);
        }
    }
    Ok(())
}
