//! GC and STATUS of `berth` against a fake agent, in a node namespace made by the test.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use berth_nodenet::NetOps;
use common::{FakeAgent, Invocation, Node, conf};
use ipnetwork::IpNetwork;
use serde_json::{Value, json};

fn host_net(ip: Ipv4Addr) -> IpNetwork {
    IpNetwork::new(IpAddr::V4(ip), 32).unwrap()
}

fn rules_of(node: &Node, ip: Ipv4Addr) -> usize {
    node.netlink().rules().unwrap().iter().filter(|r| r.to == Some(host_net(ip)) || r.from == Some(host_net(ip))).count()
}

fn has_link(node: &Node, name: &str) -> bool {
    node.netlink().link_by_name(name).is_ok()
}

fn gc_conf(agent: &FakeAgent, key: &str, valid: &[(&str, &str)]) -> Value {
    let mut c = conf("1.1.0", agent);
    c[key] = Value::Array(valid.iter().map(|(id, ifname)| json!({"containerID": id, "ifname": ifname})).collect());
    c
}

#[test]
fn gc_releases_exactly_what_the_runtime_no_longer_lists() {
    let agent = FakeAgent::start();
    let mut node = Node::new();
    let mut pods = Vec::new();
    for id in ["ctr-keep", "ctr-gone"] {
        let pod = node.pod();
        let result = node.berth(&Invocation::new("ADD", id, &pod), &conf("1.1.0", &agent)).result();
        pods.push((id, result["interfaces"][0]["name"].as_str().unwrap().to_string(), agent.ip_of(id, "eth0").unwrap()));
    }
    // An allocation the runtime forgot before any datapath was made, and a veth nobody owns.
    let ghost_ip = agent.insert("ctr-ghost", "eth0");
    node.ip(&["link", "add", "bth00000000000", "type", "veth", "peer", "name", "orphan-peer"]);
    node.ip(&["link", "add", "keep-me0", "type", "veth", "peer", "name", "keep-me1"]);

    let gc = Invocation { command: "GC", container_id: String::new(), netns: String::new(), ifname: String::new(), args: None };
    node.berth(&gc, &gc_conf(&agent, "cni.dev/valid-attachments", &[("ctr-keep", "eth0")])).assert_ok_silent();

    let mut released = agent.releases();
    released.sort();
    assert_eq!(released, vec![("ctr-ghost".to_string(), "eth0".to_string()), ("ctr-gone".to_string(), "eth0".to_string())]);
    let (_, keep_veth, keep_ip) = &pods[0];
    let (_, gone_veth, gone_ip) = &pods[1];
    assert_eq!(agent.ip_of("ctr-keep", "eth0"), Some(*keep_ip), "the listed pod keeps its IP");
    assert!(has_link(&node, keep_veth), "and its veth");
    assert_eq!(rules_of(&node, *keep_ip), 2, "and its rules");
    assert!(!has_link(&node, gone_veth), "the unlisted pod's veth is gone");
    assert_eq!(rules_of(&node, *gone_ip), 0, "and its rules");
    assert_eq!(rules_of(&node, ghost_ip), 0);
    assert!(!has_link(&node, "bth00000000000"), "a host veth of no allocation is gone");
    assert!(has_link(&node, "keep-me0"), "links that are not berth's stay");

    // The older key name works too; nothing more to collect.
    node.berth(&gc, &gc_conf(&agent, "cni.dev/attachments", &[("ctr-keep", "eth0")])).assert_ok_silent();
    assert_eq!(agent.releases().len(), 2);
    assert!(has_link(&node, keep_veth));
}

#[test]
fn gc_needs_cni_1_1_and_the_agent() {
    let mut agent = FakeAgent::start();
    let node = Node::new();
    let gc = Invocation { command: "GC", container_id: String::new(), netns: String::new(), ifname: String::new(), args: None };
    assert_eq!(node.berth(&gc, &conf("1.0.0", &agent)).code(), 1);
    agent.insert("ctr-a", "eth0");
    agent.stop();
    let run = node.berth(&gc, &gc_conf(&agent, "cni.dev/valid-attachments", &[]));
    assert!(!run.ok, "GC cannot list allocations without the agent");
    assert!(run.msg().contains(agent.socket()), "{}", run.msg());
}

#[test]
fn status_follows_the_agent() {
    let mut agent = FakeAgent::start();
    let node = Node::new();
    let status = Invocation { command: "STATUS", container_id: String::new(), netns: String::new(), ifname: String::new(), args: None };
    node.berth(&status, &conf("1.1.0", &agent)).assert_ok_silent();

    agent.set_ready(false, "no secondary ENI can be attached: quota of 3 reached");
    let run = node.berth(&status, &conf("1.1.0", &agent));
    assert_eq!(run.code(), 50);
    assert!(run.msg().contains("quota of 3 reached"), "{}", run.msg());

    agent.set_ready(true, "");
    node.berth(&status, &conf("1.1.0", &agent)).assert_ok_silent();

    agent.stop();
    let run = node.berth(&status, &conf("1.1.0", &agent));
    assert_eq!(run.code(), 50);
    assert!(run.msg().contains(agent.socket()), "{}", run.msg());

    let mut missing = conf("1.1.0", &agent);
    missing["agentSocket"] = json!("/nonexistent/agent.sock");
    let run = node.berth(&status, &missing);
    assert_eq!(run.code(), 50);
    assert!(run.msg().contains("/nonexistent/agent.sock"), "{}", run.msg());

    assert_eq!(node.berth(&status, &conf("1.0.0", &agent)).code(), 1, "STATUS needs 1.1.0");
}
