//! The CNI plugin's environment: `KEY=VALUE` lines as the process environment (CNI_COMMAND,
//! CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH, CNI_ARGS with the Kubernetes and Berth keys and
//! the bandwidth quantities). Shared by the fuzz target and the corpus test of `berth-cni`.

use std::collections::HashMap;

use berth_cni::protocol::bandwidth;
use berth_cni::protocol::env::{self, Env};

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    if let Ok(e) = Env::parse(|k| vars.get(k).map(|v| v.to_string())) {
        let _ = bandwidth::merge((e.pod.ingress_bandwidth, e.pod.egress_bandwidth), bandwidth::Limits::default());
    }
    // The pieces alone, on the whole input.
    let _ = env::parse_args(&text);
    let _ = bandwidth::parse_quantity("BERTH_INGRESS_BANDWIDTH", &text);
}
