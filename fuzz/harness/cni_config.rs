//! The CNI plugin's network config on stdin: a conflist's plugin entries as libcni hands them out,
//! the config itself (`NetConf::parse` and every accessor a command uses), `runtimeConfig`
//! (bandwidth) and `prevResult` (read back by DEL and CHECK, extended by ADD).
//! Shared by the fuzz target and the corpus test of `berth-cni`.

use berth_cni::commands;
use berth_cni::libcni;
use berth_cni::protocol::bandwidth;
use berth_cni::protocol::config::NetConf;
use berth_cni::protocol::env::Command;
use berth_cni::protocol::result::{self, CniResult, Interface, IpEntry, RouteEntry};

const COMMANDS: [Command; 6] = [Command::Add, Command::Del, Command::Check, Command::Gc, Command::Status, Command::Version];

pub fn run(data: &[u8]) {
    let _ = commands::version(data);
    // As a conflist: each plugin's config, as the pod runner and `berthctl pod` make it.
    if let Ok(list) = serde_json::from_slice::<serde_json::Value>(data) {
        let prev = list.get("prevResult");
        for i in 0..list["plugins"].as_array().map_or(0, Vec::len) {
            let conf = libcni::plugin_conf(&list, i, prev);
            one_config(conf.to_string().as_bytes());
        }
    }
    one_config(data);
}

fn one_config(data: &[u8]) {
    let Ok(conf) = NetConf::parse(data) else { return };
    let _ = conf.mtu();
    let _ = conf.release_queue_dir();
    let _ = conf.dns();
    let _ = conf.attachments_in_use();
    for c in COMMANDS {
        let _ = commands::check_version(c, &conf);
    }
    let _ = bandwidth::from_runtime_config(conf.runtime_config.as_ref());
    if let Some(prev) = &conf.prev_result {
        let _ = result::pod_ipv4(prev, "eth0");
        let _ = result::pod_ipv6(prev, "eth0");
        let _ = result::ipv4_addresses(prev);
    }
    // ADD's result chained after the previous plugins', in the version the config asks for.
    let ours = CniResult {
        interfaces: vec![Interface { name: "eth0".into(), mac: "02:00:00:00:00:01".into(), sandbox: Some("/run/netns/p".into()), mtu: Some(1500) }],
        ips: vec![IpEntry { address: "10.0.0.5/32".parse().unwrap(), gateway: None, interface: Some(0) }],
        routes: vec![RouteEntry { dst: "0.0.0.0/0".parse().unwrap(), gw: None }],
        dns: conf.dns().cloned(),
    };
    let doc = ours.render(&conf.cni_version, conf.prev_result.as_ref());
    let _ = result::pod_ipv4(&doc, "eth0");
    let _ = doc.to_string();
}
