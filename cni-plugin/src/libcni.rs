//! Running CNI plugins the way libcni does: one process per plugin of a conflist, the network
//! config on stdin with `name`, `cniVersion` and the previous plugin's result as `prevResult`,
//! the parameters in the environment, inside the node's network namespace (entered with
//! `nsenter`). Used by `berthctl pod` and the tests; the agent's pod runner will use it too.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, Clone)]
pub struct CniOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutput {
    /// The plugin's stdout as JSON; `Null` when it printed none.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn failed(stderr: String) -> CniOutput {
        CniOutput { ok: false, stdout: String::new(), stderr }
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

/// Executes the plugin `plugin_type` found in `cni_path` with `conf` on stdin, in `node_netns`
/// (`None`: this process's namespace).
pub fn exec(node_netns: Option<&Path>, cni_path: &str, plugin_type: &str, conf: &serde_json::Value, inv: &Invocation<'_>) -> CniOutput {
    let Some(binary): Option<PathBuf> = cni_path.split(':').map(|d| Path::new(d).join(plugin_type)).find(|p| p.exists()) else {
        return CniOutput::failed(format!("plugin {plugin_type:?} not found in CNI_PATH {cni_path}"));
    };
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
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return CniOutput::failed(format!("cannot run {}: {e}", binary.display())),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading its stdin is judged by its exit status.
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return CniOutput::failed(format!("waiting for {}: {e}", binary.display())),
    };
    CniOutput { ok: out.status.success(), stdout: String::from_utf8_lossy(&out.stdout).into_owned(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// The config one plugin of a conflist receives. An entry that is not an object is handed on as it
/// is (add_list and del_list refuse such a list before running any plugin).
pub fn plugin_conf(conflist: &serde_json::Value, index: usize, prev: Option<&serde_json::Value>) -> serde_json::Value {
    let mut conf = conflist["plugins"][index].clone();
    if !conf.is_object() {
        return conf;
    }
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    conf
}

/// The number of plugins of a conflist whose every entry is an object naming its plugin `type`.
pub fn plugin_count(conflist: &serde_json::Value) -> Result<usize, CniOutput> {
    let Some(plugins) = conflist["plugins"].as_array() else {
        return Err(CniOutput::failed("the conflist has no \"plugins\" list; see the CNI spec's network configuration lists".into()));
    };
    if let Some((i, entry)) = plugins.iter().enumerate().find(|(_, p)| p["type"].as_str().is_none_or(str::is_empty)) {
        return Err(CniOutput::failed(format!("plugin {i} of the conflist is {entry}, not an object with a \"type\"; fix the conflist")));
    }
    Ok(plugins.len())
}

/// ADD through every plugin of the list in order, as libcni does; the last result.
pub fn add_list(node_netns: Option<&Path>, cni_path: &str, conflist: &serde_json::Value, inv: &Invocation<'_>) -> Result<serde_json::Value, CniOutput> {
    let mut prev: Option<serde_json::Value> = None;
    for i in 0..plugin_count(conflist)? {
        let conf = plugin_conf(conflist, i, prev.as_ref());
        let out = exec(node_netns, cni_path, conf["type"].as_str().unwrap_or_default(), &conf, &Invocation { command: "ADD", ..inv.clone() });
        if !out.ok {
            return Err(out);
        }
        prev = Some(out.json());
    }
    Ok(prev.unwrap_or_default())
}

/// DEL through every plugin in reverse order with the ADD result as prevResult.
pub fn del_list(node_netns: Option<&Path>, cni_path: &str, conflist: &serde_json::Value, inv: &Invocation<'_>, prev: Option<&serde_json::Value>) -> Result<(), CniOutput> {
    for i in (0..plugin_count(conflist)?).rev() {
        let conf = plugin_conf(conflist, i, prev);
        let out = exec(node_netns, cni_path, conf["type"].as_str().unwrap_or_default(), &conf, &Invocation { command: "DEL", ..inv.clone() });
        if !out.ok {
            return Err(out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Found by the cni_config fuzz target: a plugin entry that is not an object panicked.
    #[test]
    fn a_plugin_entry_that_is_not_an_object_is_refused_without_panic() {
        let list = json!({"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "berth"}, 1]});
        assert_eq!(plugin_conf(&list, 1, None), json!(1));
        assert_eq!(plugin_conf(&list, 0, None), json!({"type": "berth", "name": "pods", "cniVersion": "1.0.0"}));
        let e = plugin_count(&list).unwrap_err();
        assert!(e.stderr.contains("plugin 1") && !e.ok, "{}", e.stderr);
        let inv = Invocation { command: "ADD", container_id: "c", netns: "/run/netns/x", ifname: "eth0", args: "" };
        assert!(add_list(None, "/nonexistent", &list, &inv).unwrap_err().stderr.contains("plugin 1"), "refused before any plugin runs");
        assert!(plugin_count(&json!({"name": "pods"})).unwrap_err().stderr.contains("\"plugins\""));
        assert_eq!(plugin_count(&json!({"plugins": [{"type": "berth"}, {"type": "portmap"}]})).unwrap(), 2);
    }
}
