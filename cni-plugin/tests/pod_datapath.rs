//! ADD, CHECK and DEL of `berth` against a fake agent, in a node namespace and pod namespaces made
//! by the test, checking what the kernel holds afterwards.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use berth_nodenet::{IpFamily, NetOps, Route, Rule, TABLE_MAIN};
use common::{FakeAgent, Invocation, Node, ROUTE_TABLE, conf, pod_netlink, with_prev};
use ipnetwork::IpNetwork;
use serde_json::Value;

const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

fn host_net(ip: Ipv4Addr) -> IpNetwork {
    IpNetwork::new(IpAddr::V4(ip), 32).unwrap()
}

fn ip_in(result: &Value) -> Ipv4Addr {
    let address = result["ips"][0]["address"].as_str().unwrap();
    assert!(address.ends_with("/32"), "{address}");
    address.trim_end_matches("/32").parse().unwrap()
}

/// Asserts the whole shared-mode datapath of one pod interface, on both sides.
#[track_caller]
fn assert_datapath(node: &Node, pod_path: &str, result: &Value, ip: Ipv4Addr) {
    let host_name = result["interfaces"][0]["name"].as_str().unwrap();
    let host_mac = result["interfaces"][0]["mac"].as_str().unwrap();
    let pod_mac = result["interfaces"][1]["mac"].as_str().unwrap();

    let mut pod = pod_netlink(pod_path);
    let lo = pod.link_by_name("lo").unwrap();
    assert!(lo.up, "lo is up in the pod");
    let eth0 = pod.link_by_name("eth0").unwrap();
    assert!(eth0.up);
    assert_eq!(eth0.kind.as_deref(), Some("veth"));
    assert_eq!(eth0.mac.unwrap().to_string(), pod_mac);
    assert_eq!(eth0.mtu, 1500);
    assert!(pod.addresses(Some(eth0.index)).unwrap().iter().any(|a| a.network == host_net(ip)), "the pod holds {ip}/32");
    let routes = pod.routes(Some(TABLE_MAIN)).unwrap();
    assert!(routes.iter().any(|r| r.destination == host_net(POD_GATEWAY) && r.oif == Some(eth0.index) && r.gateway.is_none()), "{routes:?}");
    assert!(routes.iter().any(|r| r.destination == IpFamily::V4.any_network() && r.gateway == Some(IpAddr::V4(POD_GATEWAY)) && r.oif == Some(eth0.index)), "{routes:?}");
    let neigh = pod.neighbours(Some(eth0.index)).unwrap();
    assert!(neigh.iter().any(|n| n.ip == IpAddr::V4(POD_GATEWAY) && n.mac.map(|m| m.to_string()).as_deref() == Some(host_mac) && n.state == berth_nodenet::NeighbourState::Permanent), "{neigh:?}");

    let mut nl = node.netlink();
    let host = nl.link_by_name(host_name).unwrap();
    assert!(host.up);
    assert_eq!(host.kind.as_deref(), Some("veth"));
    assert_eq!(host.mac.unwrap().to_string(), host_mac);
    let routes = nl.routes(Some(TABLE_MAIN)).unwrap();
    assert!(routes.iter().any(|r| r.destination == host_net(ip) && r.oif == Some(host.index)), "host route {ip}/32 dev {host_name}: {routes:?}");
    let neigh = nl.neighbours(Some(host.index)).unwrap();
    assert!(neigh.iter().any(|n| n.ip == IpAddr::V4(ip) && n.mac.map(|m| m.to_string()).as_deref() == Some(pod_mac) && n.state == berth_nodenet::NeighbourState::Permanent), "{neigh:?}");
    let rules = nl.rules().unwrap();
    assert!(rules.iter().any(|r| r.priority == Some(512) && r.to == Some(host_net(ip)) && r.table == TABLE_MAIN), "{rules:?}");
    assert!(rules.iter().any(|r| r.priority == Some(2048) && r.from == Some(host_net(ip)) && r.table == ROUTE_TABLE), "{rules:?}");
    // `ip` reads the same rules.
    let text = node.ip(&["rule", "show"]);
    assert!(text.contains(&format!("512:\tfrom all to {ip} lookup main")), "{text}");
    assert!(text.contains(&format!("2048:\tfrom {ip} lookup {ROUTE_TABLE}")), "{text}");
}

/// Asserts that the node routes nothing by the pod's IP any more: its rules are gone. (With the
/// agent up, DEL leaves the host veth and its `/32` route to the agent, which deletes them after
/// the release, off the runtime's clock.)
#[track_caller]
fn assert_no_rules(node: &Node, ip: Ipv4Addr) {
    let rules = node.netlink().rules().unwrap();
    assert!(!rules.iter().any(|r| r.to == Some(host_net(ip)) || r.from == Some(host_net(ip))), "rules of {ip} are gone: {rules:?}");
}

/// Asserts that nothing of the pod interface is left on the node.
#[track_caller]
fn assert_gone(node: &Node, host_name: &str, ip: Ipv4Addr) {
    assert_no_rules(node, ip);
    let mut nl = node.netlink();
    assert!(nl.link_by_name(host_name).is_err(), "{host_name} is gone");
    assert!(!nl.routes(None).unwrap().iter().any(|r| r.destination == host_net(ip)), "route to {ip} is gone");
}

/// Makes `eth0` exist in the pod namespace at `pod` (a veth: this kernel has no dummy driver).
fn take_eth0(pod: &str) {
    let name = pod.trim_start_matches("/run/netns/");
    common::run_ok(std::process::Command::new("ip").args(["-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "other0"]));
}

#[test]
fn add_builds_the_datapath_and_answers_in_every_version() {
    let agent = FakeAgent::start();
    let mut node = Node::new();
    for (n, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let pod = node.pod();
        let id = format!("ctr-{n}");
        let run = node.berth(&Invocation::new("ADD", &id, &pod), &conf(version, &agent));
        let result = run.result();
        assert_eq!(result["cniVersion"], version);
        let ifaces = result["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), 2, "{result}");
        let host_name = ifaces[0]["name"].as_str().unwrap();
        assert!(host_name.starts_with("bth") && host_name.len() == 14, "{host_name}");
        assert!(ifaces[0].get("sandbox").is_none_or(|s| s == ""), "the host end has no sandbox: {result}");
        assert_eq!(ifaces[1]["name"], "eth0");
        assert_eq!(ifaces[1]["sandbox"], pod.as_str());
        for iface in ifaces {
            let mac = iface["mac"].as_str().unwrap();
            assert_eq!(mac.len(), 17, "{mac}");
        }
        let ips = result["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 1);
        assert_eq!(ips[0]["gateway"], "169.254.1.1");
        assert_eq!(ips[0]["interface"], 1);
        assert_eq!(ips[0].get("version").map(|v| v.as_str().unwrap()), if version.starts_with("0.") { Some("4") } else { None }, "{version}: {result}");
        assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(result["routes"][0]["gw"], "169.254.1.1");
        let ip = ip_in(&result);
        assert_eq!(Some(ip), agent.ip_of(&id, "eth0"), "the result carries the agent's IP");
        assert_datapath(&node, &pod, &result, ip);
    }
}

#[test]
fn add_passes_the_pod_identity_and_dns_and_merges_a_previous_result() {
    let agent = FakeAgent::start();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let record = seen.clone();
    agent.on_allocate(move |req| *record.lock().unwrap() = Some(req.clone()));
    let mut node = Node::new();
    let pod = node.pod();
    let mut c = conf("1.0.0", &agent);
    c["dns"] = serde_json::json!({"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]});
    let prev = serde_json::json!({"cniVersion": "1.0.0", "interfaces": [{"name": "dummy0"}], "ips": [{"address": "192.0.2.5/24", "interface": 0}], "routes": [{"dst": "192.0.2.0/24"}]});
    let result = node.berth(&Invocation::new("ADD", "ctr-chained", &pod), &with_prev(c, &prev)).result();
    assert_eq!(result["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(result["interfaces"][0]["name"], "dummy0");
    assert_eq!(result["ips"][0]["address"], "192.0.2.5/24");
    assert_eq!(result["ips"][1]["interface"], 2, "our address points at our pod interface after the earlier ones");
    assert_eq!(result["routes"].as_array().unwrap().len(), 2);
    assert_eq!(result["dns"]["nameservers"][0], "10.96.0.10");

    let req = seen.lock().unwrap().clone().unwrap();
    assert_eq!(req.key.unwrap(), berth_proto::agent::v1::AllocationKey { container_id: "ctr-chained".into(), ifname: "eth0".into() });
    assert_eq!(req.netns, pod);
    assert_eq!(req.mode, berth_proto::agent::v1::NetworkMode::Shared as i32);
    assert!(req.want_ipv4);
    let who = req.pod.unwrap();
    assert_eq!((who.namespace.as_str(), who.name.as_str(), who.uid.as_str()), ("default", "ctr-chained", "uid-ctr-chained"));
}

#[test]
fn add_sets_the_configured_mtu_and_refuses_a_bad_one_before_allocating() {
    let agent = FakeAgent::start();
    let mut node = Node::new();
    let pod = node.pod();
    let mut c = conf("1.1.0", &agent);
    c["mtu"] = serde_json::json!(1400);
    let result = node.berth(&Invocation::new("ADD", "ctr-mtu", &pod), &c).result();
    assert_eq!(pod_netlink(&pod).link_by_name("eth0").unwrap().mtu, 1400);
    assert_eq!(node.netlink().link_by_name(result["interfaces"][0]["name"].as_str().unwrap()).unwrap().mtu, 1400);

    let pod2 = node.pod();
    c["mtu"] = serde_json::json!("jumbo");
    let run = node.berth(&Invocation::new("ADD", "ctr-mtu2", &pod2), &c);
    assert_eq!(run.code(), 7);
    assert!(run.msg().contains("jumbo"), "{}", run.msg());
    assert!(agent.ip_of("ctr-mtu2", "eth0").is_none(), "no IP taken for a config that cannot work");
}

#[test]
fn add_onto_a_taken_interface_name_fails_and_keeps_no_ip() {
    let agent = FakeAgent::start();
    let mut node = Node::new();
    let pod = node.pod();
    take_eth0(&pod);
    let before = pod_netlink(&pod).link_by_name("eth0").unwrap();
    let run = node.berth(&Invocation::new("ADD", "ctr-taken", &pod), &conf("1.1.0", &agent));
    assert!(run.code() == 101 || run.code() == 5, "{run:?}");
    assert!(run.msg().contains("eth0"), "{}", run.msg());
    assert!(agent.ip_of("ctr-taken", "eth0").is_none(), "the IP is not kept: {:?}", agent.releases());
    assert_eq!(pod_netlink(&pod).link_by_name("eth0").unwrap(), before, "the existing interface is left alone");
    let leftover: Vec<_> = node.netlink().links().unwrap().into_iter().filter(|l| l.name.starts_with("bth")).collect();
    assert!(leftover.is_empty(), "{leftover:?}");
}

#[test]
fn a_failure_after_the_allocation_undoes_everything_and_releases_the_ip() {
    let agent = FakeAgent::start();
    let mut node = Node::new();
    let pod = node.pod();
    // The interface name gets taken while the agent allocates: the veth cannot be made.
    let racing = pod.clone();
    agent.on_allocate(move |_| take_eth0(&racing));
    let run = node.berth(&Invocation::new("ADD", "ctr-race", &pod), &conf("1.1.0", &agent));
    assert!(!run.ok);
    assert!(run.msg().contains("eth0"), "{}", run.msg());
    assert_eq!(agent.allocate_calls(), 1);
    assert_eq!(agent.releases(), vec![("ctr-race".to_string(), "eth0".to_string())], "the IP went back to the agent");
    assert_eq!(agent.allocation_count(), 0);
    let mut nl = node.netlink();
    assert!(nl.links().unwrap().iter().all(|l| !l.name.starts_with("bth")));
    assert!(nl.rules().unwrap().iter().all(|r| r.priority != Some(512) && r.priority != Some(2048)), "no rule left");
}

#[test]
fn check_passes_on_a_fresh_pod_and_names_what_went_missing() {
    let agent = FakeAgent::start();
    let mut node = Node::new();

    // (a) the pod's default route, (b) a rule, (c) the pod's address.
    for broken in ["route", "rule", "address"] {
        let pod = node.pod();
        let id = format!("ctr-check-{broken}");
        let inv = Invocation::new("ADD", &id, &pod);
        let result = node.berth(&inv, &conf("1.0.0", &agent)).result();
        let ip = ip_in(&result);
        let check = with_prev(conf("1.0.0", &agent), &result);
        node.berth(&inv.command("CHECK"), &check).assert_ok_silent();
        // Other plugins may add things: CHECK tolerates them.
        let mut pod_nl = pod_netlink(&pod);
        let eth0 = pod_nl.link_by_name("eth0").unwrap();
        pod_nl.add_route(&Route::new("198.51.100.0/24".parse().unwrap()).via(IpAddr::V4(POD_GATEWAY)).dev(eth0.index).onlink()).unwrap();
        node.berth(&inv.command("CHECK"), &check).assert_ok_silent();

        let expected = match broken {
            "route" => {
                pod_nl.delete_route(&Route::default_route(IpFamily::V4).dev(eth0.index)).unwrap();
                "default route"
            }
            "rule" => {
                node.netlink().delete_rule(&Rule::lookup(IpFamily::V4, ROUTE_TABLE).from(host_net(ip)).priority(2048)).unwrap();
                "1001"
            }
            _ => {
                pod_nl.delete_address(&berth_nodenet::Address::new(eth0.index, host_net(ip))).unwrap();
                "/32"
            }
        };
        let run = node.berth(&inv.command("CHECK"), &check);
        assert!(!run.ok, "CHECK with the {broken} removed passed");
        assert!(run.code() >= 100 || run.code() == 5, "{run:?}");
        assert!(run.msg().contains(expected), "CHECK without the {broken}: {}", run.msg());
    }
}

#[test]
fn check_needs_a_previous_result_and_a_known_container() {
    let agent = FakeAgent::start();
    let mut node = Node::new();
    let pod = node.pod();
    let inv = Invocation::new("CHECK", "ctr-unknown", &pod);
    assert_eq!(node.berth(&inv, &conf("1.0.0", &agent)).code(), 7, "no prevResult");
    let prev = serde_json::json!({"cniVersion": "1.0.0", "interfaces": [], "ips": [{"address": "10.99.0.77/32"}]});
    assert_eq!(node.berth(&inv, &with_prev(conf("1.0.0", &agent), &prev)).code(), 3, "the agent does not know the container");
}

#[test]
fn del_removes_everything_releases_and_repeats() {
    let agent = FakeAgent::start();
    let mut node = Node::new();
    let pod = node.pod();
    let inv = Invocation::new("ADD", "ctr-del", &pod);
    let result = node.berth(&inv, &conf("1.1.0", &agent)).result();
    let ip = ip_in(&result);
    let host_name = result["interfaces"][0]["name"].as_str().unwrap().to_string();
    let del = with_prev(conf("1.1.0", &agent), &result);
    node.berth(&inv.command("DEL"), &del).assert_ok_silent();
    assert_no_rules(&node, ip);
    assert_eq!(agent.ip_of("ctr-del", "eth0"), None);
    assert_eq!(agent.releases(), vec![("ctr-del".to_string(), "eth0".to_string())]);
    // Again, and again without prevResult: nothing to do, still success.
    node.berth(&inv.command("DEL"), &del).assert_ok_silent();
    node.berth(&inv.command("DEL"), &conf("1.1.0", &agent)).assert_ok_silent();
    assert_no_rules(&node, ip);
    // Once the agent is gone too, DEL removes the veth itself.
    let _ = host_name;
}

#[test]
fn del_without_prev_result_or_netns_finds_the_ip_through_the_agent() {
    let agent = FakeAgent::start();
    let mut node = Node::new();
    let pod = node.pod();
    let inv = Invocation::new("ADD", "ctr-nons", &pod);
    let result = node.berth(&inv, &conf("0.4.0", &agent)).result();
    let ip = ip_in(&result);
    let host_name = result["interfaces"][0]["name"].as_str().unwrap().to_string();
    // The runtime lost the namespace: it is gone, and DEL comes with an empty CNI_NETNS.
    node.remove_pod(&pod);
    let mut del = inv.command("DEL");
    del.netns = String::new();
    node.berth(&del, &conf("0.4.0", &agent)).assert_ok_silent();
    assert_no_rules(&node, ip);
    assert_eq!(agent.ip_of("ctr-nons", "eth0"), None, "released");
    let _ = host_name;
}

#[test]
fn del_with_the_agent_down_cleans_up_and_queues_the_release() {
    let mut agent = FakeAgent::start();
    let mut node = Node::new();
    let pod = node.pod();
    let inv = Invocation::new("ADD", "ctr-queued", &pod);
    let result = node.berth(&inv, &conf("1.1.0", &agent)).result();
    let ip = ip_in(&result);
    let host_name = result["interfaces"][0]["name"].as_str().unwrap().to_string();
    agent.stop();
    node.berth(&inv.command("DEL"), &with_prev(conf("1.1.0", &agent), &result)).assert_ok_silent();
    assert_gone(&node, &host_name, ip);
    let queued = agent.queue_dir().join("ctr-queued.eth0");
    assert!(queued.exists(), "{} was written", queued.display());
    // It holds the DEL's time, so the agent never releases a later ADD's allocation with it.
    let at: u128 = std::fs::read_to_string(&queued).unwrap().parse().expect("the DEL's time in nanoseconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    assert!(at <= now && now - at < 60_000_000_000, "{at} is not the DEL's time");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(agent.queue_dir()).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(agent.releases().is_empty());
    // Also when the socket is not there at all, and again (idempotent).
    let mut c = conf("1.1.0", &agent);
    c["agentSocket"] = serde_json::json!("/nonexistent/agent.sock");
    node.berth(&inv.command("DEL"), &c).assert_ok_silent();
}

#[test]
fn add_and_check_with_the_agent_down_ask_to_try_again() {
    let mut agent = FakeAgent::start();
    let mut node = Node::new();
    let pod = node.pod();
    let inv = Invocation::new("ADD", "ctr-down", &pod);
    let result = node.berth(&inv, &conf("1.0.0", &agent)).result();
    agent.stop();
    for (command, c) in [("ADD", conf("1.0.0", &agent)), ("CHECK", with_prev(conf("1.0.0", &agent), &result))] {
        let run = node.berth(&inv.command(command), &c);
        assert_eq!(run.code(), 11, "{command}: {run:?}");
        assert!(run.msg().contains(agent.socket()), "{command} names the socket: {}", run.msg());
    }
    let pod2 = node.pod();
    let run = node.berth(&Invocation::new("ADD", "ctr-down2", &pod2), &conf("1.0.0", &agent));
    assert_eq!(run.code(), 11);
    assert!(pod_netlink(&pod2).link_by_name("eth0").is_err(), "nothing was made");
    agent.restart();
    node.berth(&inv.command("CHECK"), &with_prev(conf("1.0.0", &agent), &result)).assert_ok_silent();
}

#[test]
fn an_agent_of_another_protocol_is_refused_by_name() {
    let agent = FakeAgent::start();
    agent.set_protocol(2, 3);
    let mut node = Node::new();
    let pod = node.pod();
    let run = node.berth(&Invocation::new("ADD", "ctr-proto", &pod), &conf("1.1.0", &agent));
    assert_eq!(run.code(), 100, "{run:?}");
    assert!(run.msg().contains("2..3"), "the message names the agent's versions: {}", run.msg());
    assert_eq!(agent.allocate_calls(), 0);
}

#[test]
fn a_retried_add_after_a_crash_replaces_the_leftover_veth() {
    let agent = FakeAgent::start();
    let mut node = Node::new();
    let pod = node.pod();
    // What an ADD killed right after making the veth leaves: our host end, its peer as eth0.
    let host_name = berth_cni::datapath::host_veth_name("ctr-crash", "eth0");
    node.ip(&["link", "add", &host_name, "type", "veth", "peer", "name", "eth0", "netns", pod.trim_start_matches("/run/netns/")]);
    let result = node.berth(&Invocation::new("ADD", "ctr-crash", &pod), &conf("1.1.0", &agent)).result();
    assert_eq!(result["interfaces"][0]["name"], host_name.as_str());
    assert_datapath(&node, &pod, &result, ip_in(&result));
}

#[test]
fn a_rule_of_an_earlier_holder_of_the_ip_to_another_table_is_replaced() {
    let agent = FakeAgent::start();
    let mut node = Node::new();
    let pod = node.pod();
    // The fake agent hands out 10.99.0.2 first.
    let ip = Ipv4Addr::new(10, 99, 0, 2);
    node.netlink().add_rule(&Rule::lookup(IpFamily::V4, 1002).from(host_net(ip)).priority(2048)).unwrap();
    let result = node.berth(&Invocation::new("ADD", "ctr-reuse", &pod), &conf("1.1.0", &agent)).result();
    assert_eq!(ip_in(&result), ip);
    let tables: Vec<u32> = node.netlink().rules().unwrap().iter().filter(|r| r.from == Some(host_net(ip))).map(|r| r.table).collect();
    assert_eq!(tables, vec![ROUTE_TABLE], "only the rule to the ENI's table of now");
}

#[test]
fn parallel_adds_and_dels_of_different_pods() {
    const PODS: usize = 12;
    let agent = FakeAgent::start();
    let mut node = Node::new();
    let pods: Vec<String> = (0..PODS).map(|_| node.pod()).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods.iter().enumerate().map(|(i, pod)| {
            let (node, agent) = (&node, &agent);
            s.spawn(move || node.berth(&Invocation::new("ADD", &format!("ctr-par-{i}"), pod), &conf("1.1.0", agent)).result())
        }).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<Ipv4Addr> = results.iter().map(ip_in).collect();
    for (pod, result) in pods.iter().zip(&results) {
        assert_datapath(&node, pod, result, ip_in(result));
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), PODS, "every pod has its own IP");
    std::thread::scope(|s| {
        for (i, (pod, result)) in pods.iter().zip(&results).enumerate() {
            let (node, agent) = (&node, &agent);
            s.spawn(move || node.berth(&Invocation::new("DEL", &format!("ctr-par-{i}"), pod), &with_prev(conf("1.1.0", agent), result)).assert_ok_silent());
        }
    });
    for ip in ips {
        assert_no_rules(&node, ip);
    }
    assert_eq!(agent.allocation_count(), 0);
}

#[test]
fn an_exhausted_pool_asks_to_try_again_with_the_agents_reason() {
    let agent = FakeAgent::start();
    agent.exhaust();
    let mut node = Node::new();
    let pod = node.pod();
    let run = node.berth(&Invocation::new("ADD", "ctr-full", &pod), &conf("1.1.0", &agent));
    assert_eq!(run.code(), 11);
    assert!(run.msg().contains("the fake pool is empty"), "{}", run.msg());
    assert!(pod_netlink(&pod).link_by_name("eth0").is_err());
}

#[test]
fn add_again_into_the_same_namespace_after_del() {
    let agent = FakeAgent::start();
    let mut node = Node::new();
    let pod = node.pod();
    let inv = Invocation::new("ADD", "ctr-again", &pod);
    let first = node.berth(&inv, &conf("1.1.0", &agent)).result();
    node.berth(&inv.command("DEL"), &with_prev(conf("1.1.0", &agent), &first)).assert_ok_silent();
    let second = node.berth(&inv, &conf("1.1.0", &agent)).result();
    let ip = ip_in(&second);
    assert_eq!(agent.ip_of("ctr-again", "eth0"), Some(ip));
    assert_datapath(&node, &pod, &second, ip);
    node.berth(&inv.command("CHECK"), &with_prev(conf("1.1.0", &agent), &second)).assert_ok_silent();
}
