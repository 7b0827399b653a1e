//! Tests against the real kernel. They need root and skip (with a message) without it.
//!
//! Every mutation happens inside namespaces the test creates (`bnt-<pid>-<n>`); the
//! host namespace only gets read. Namespaces are `NetnsGuard`s and sockets are
//! dropped with them, so everything goes away even when an assertion fails.

use std::net::IpAddr;
use std::os::fd::AsFd;

use berth_nodenet::{
    Address, IpFamily, MacAddr, Neighbour, NeighbourState, NetOps, Netlink, Netns, NetnsGuard,
    Route, Rule, RuleAction, Scope, TABLE_MAIN, Veth, proto, sysctl_in, sysctl_read_in,
};
use ipnetwork::IpNetwork;

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping: needs root to create network namespaces");
    false
}

macro_rules! require_root {
    () => {
        if !is_root() {
            return;
        }
    };
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A namespace and a socket inside it.
struct TestNs {
    nl: Netlink,
    ns: NetnsGuard,
}

impl TestNs {
    fn new() -> TestNs {
        let ns = NetnsGuard::unique("bnt").unwrap();
        let nl = Netlink::open_in(ns.path()).unwrap();
        TestNs { nl, ns }
    }
}

const HOST_MAC: MacAddr = MacAddr([0x02, 0xbe, 0, 0, 0, 1]);
const POD_MAC: MacAddr = MacAddr([0x02, 0xbe, 0, 0, 0, 2]);

/// "host" and "pod" namespaces joined by a veth: `vh0` in host, `eth0` in pod.
fn veth_pair() -> (TestNs, TestNs) {
    let mut host = TestNs::new();
    let pod = TestNs::new();
    let veth = Veth::new("vh0", "eth0")
        .mac(HOST_MAC)
        .peer_mac(POD_MAC)
        .mtu(1400)
        .peer_netns(pod.ns.as_fd());
    host.nl.create_veth(&veth).unwrap();
    (host, pod)
}

#[test]
fn named_namespace_lifecycle() {
    require_root!();
    let here = Netns::current().unwrap().id().unwrap();
    let guard = NetnsGuard::unique("bnt").unwrap();
    let name = guard.name().to_owned();
    let path = guard.path().to_owned();
    assert!(name.starts_with(&format!("bnt-{}-", std::process::id())));
    assert_eq!(path, std::path::Path::new("/run/netns").join(&name));
    assert_ne!(guard.id().unwrap(), here, "a new namespace");

    // run_in runs on a thread inside the namespace and returns the closure's value.
    let inside = guard
        .run_in(|| Netns::current().unwrap().id().unwrap())
        .unwrap();
    assert_eq!(inside, guard.id().unwrap());
    assert_eq!(
        Netns::current().unwrap().id().unwrap(),
        here,
        "caller did not move"
    );

    // Reopening by name sees the same namespace; the name is taken.
    assert_eq!(
        Netns::open_named(&name).unwrap().id().unwrap(),
        guard.id().unwrap()
    );
    assert!(Netns::create(&name).unwrap_err().is_exists());

    // /run/netns is a shared mount point, like iproute2 makes it.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/run/netns") && l.contains("shared:")),
        "/run/netns is not a shared mount:\n{mountinfo}"
    );

    drop(guard);
    assert!(!path.exists());
    Netns::delete(&name).unwrap(); // already gone is success
    assert!(Netns::open(&path).unwrap_err().is_not_found());
}

#[test]
fn socket_opened_in_a_namespace_works_there_and_leaves_the_caller() {
    require_root!();
    let here = Netns::current().unwrap().id().unwrap();
    let mut t = TestNs::new();
    assert_eq!(Netns::current().unwrap().id().unwrap(), here);
    let links = t.nl.links().unwrap();
    let names: Vec<_> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lo"], "a fresh namespace holds only lo");
    assert!(t.nl.netns().contains(t.ns.name()));

    let lo = t.nl.link_by_name("lo").unwrap();
    assert!(!lo.up);
    t.nl.set_link_up(lo.index).unwrap();
    assert!(t.nl.link_by_index(lo.index).unwrap().up);
    // The host's lo was not touched through this socket: the host socket sees its own.
    let mut host = Netlink::open().unwrap();
    assert!(host.link_by_name("lo").is_ok());

    // A namespace that is gone reads as "not found" (CNI DEL after the sandbox died).
    let gone = Netlink::open_in("/run/netns/bnt-no-such-namespace").unwrap_err();
    assert!(gone.is_not_found(), "{gone}");

    let err = t.nl.link_by_name("nosuch0").unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("nosuch0"), "{err}");
}

#[test]
fn veth_pair_across_namespaces() {
    require_root!();
    let (mut host, mut pod) = veth_pair();

    let vh = host.nl.link_by_name("vh0").unwrap();
    assert_eq!(vh.kind.as_deref(), Some("veth"));
    assert_eq!((vh.mac, vh.mtu, vh.up), (Some(HOST_MAC), 1400, false));
    assert!(vh.link_netnsid.is_some(), "peer is in another namespace");

    let eth0 = pod.nl.link_by_name("eth0").unwrap();
    assert_eq!(
        (eth0.mac, eth0.mtu, eth0.kind.as_deref()),
        (Some(POD_MAC), 1400, Some("veth"))
    );
    assert_eq!(
        eth0.parent_index,
        Some(vh.index),
        "IFLA_LINK names the peer's index"
    );
    assert!(
        host.nl.link_by_name("eth0").unwrap_err().is_not_found(),
        "peer went straight to the pod"
    );

    host.nl.set_link_up(vh.index).unwrap();
    pod.nl.set_link_up(eth0.index).unwrap();
    assert!(host.nl.link_by_index(vh.index).unwrap().up);
    assert!(
        pod.nl.link_by_index(eth0.index).unwrap().lower_up,
        "carrier once both ends are up"
    );

    let again = Veth::new("vh0", "eth9");
    assert!(host.nl.create_veth(&again).unwrap_err().is_exists());

    // Deleting one end removes the other; a second delete is "already gone".
    host.nl.delete_link(vh.index).unwrap();
    assert!(pod.nl.link_by_name("eth0").unwrap_err().is_not_found());
    assert!(host.nl.delete_link(vh.index).unwrap_err().is_not_found());
}

#[test]
fn link_changes_mac_mtu_rename_and_move() {
    require_root!();
    let mut a = TestNs::new();
    let b = TestNs::new();
    let m0 = a.nl.create_veth(&Veth::new("m0", "m1")).unwrap();
    let m1 = a.nl.link_by_name("m1").unwrap();
    assert_eq!(m0.parent_index, Some(m1.index));

    let mac = MacAddr([0x02, 0xbe, 0xee, 0, 0, 9]);
    a.nl.set_link_mac(m0.index, mac).unwrap();
    a.nl.set_link_mtu(m0.index, 1280).unwrap();
    a.nl.rename_link(m0.index, "renamed0").unwrap();
    let got = a.nl.link_by_index(m0.index).unwrap();
    assert_eq!(
        (got.name.as_str(), got.mac, got.mtu),
        ("renamed0", Some(mac), 1280)
    );

    a.nl.set_link_up(m0.index).unwrap();
    assert!(a.nl.link_by_index(m0.index).unwrap().up);
    a.nl.set_link_down(m0.index).unwrap();
    assert!(!a.nl.link_by_index(m0.index).unwrap().up);
    assert!(a.nl.rename_link(m0.index, "m1").unwrap_err().is_exists());

    // Move m1 into b as eth1, keeping its MAC.
    a.nl.move_link(m1.index, b.ns.as_fd(), Some("eth1"))
        .unwrap();
    assert!(a.nl.link_by_index(m1.index).unwrap_err().is_not_found());
    let mut nl_b = Netlink::open_in_netns(&b.ns).unwrap();
    let eth1 = nl_b.link_by_name("eth1").unwrap();
    assert_eq!(eth1.mac, m1.mac);
}

#[test]
fn shared_eni_datapath_reads_back() {
    require_root!();
    let (mut host, mut pod) = veth_pair();
    let vh = host.nl.link_by_name("vh0").unwrap();
    let eth0 = pod.nl.link_by_name("eth0").unwrap();
    for (nl, index) in [(&mut host.nl, vh.index), (&mut pod.nl, eth0.index)] {
        nl.set_link_up(index).unwrap();
    }

    // Pod side: /32, default via 169.254.1.1 on-link, permanent neighbour for it.
    let pod_addr = Address::new(eth0.index, net("10.20.0.5/32"));
    let pod_addr6 = Address::new(eth0.index, net("fd00:20::5/128")).nodad();
    pod.nl.add_address(&pod_addr).unwrap();
    pod.nl.add_address(&pod_addr6).unwrap();
    let gw = ip("169.254.1.1");
    let default = Route::default_route(IpFamily::V4)
        .via(gw)
        .dev(eth0.index)
        .onlink();
    pod.nl.add_route(&default).unwrap();
    let neigh = Neighbour::permanent(eth0.index, gw, HOST_MAC);
    pod.nl.add_neighbour(&neigh).unwrap();
    let neigh6 = Neighbour::permanent(eth0.index, ip("fe80::1"), HOST_MAC);
    pod.nl.add_neighbour(&neigh6).unwrap();

    let addrs = pod.nl.addresses(Some(eth0.index)).unwrap();
    assert!(addrs.contains(&pod_addr), "{addrs:?}");
    let v6 = addrs
        .iter()
        .find(|a| a.network == pod_addr6.network)
        .expect("v6 address listed");
    assert!(v6.nodad, "nodad flag reads back: {v6:?}");

    let routes = pod.nl.routes(Some(TABLE_MAIN)).unwrap();
    let got = routes
        .iter()
        .find(|r| r.destination.prefix() == 0 && r.family() == IpFamily::V4)
        .expect("default route");
    assert_eq!(got.gateway, Some(gw));
    assert_eq!(got.oif, Some(eth0.index));
    assert!(got.onlink, "{got:?}");
    assert_eq!(got.protocol, Some(proto::BOOT));
    assert_eq!(got.scope, Some(Scope::Universe));

    let neighbours = pod.nl.neighbours(Some(eth0.index)).unwrap();
    for want in [&neigh, &neigh6] {
        let n = neighbours
            .iter()
            .find(|n| n.ip == want.ip)
            .expect("neighbour listed");
        assert_eq!(
            (n.mac, n.state, n.proxy),
            (Some(HOST_MAC), NeighbourState::Permanent, false)
        );
    }
    assert!(pod.nl.add_neighbour(&neigh).unwrap_err().is_exists());
    pod.nl.replace_neighbour(&neigh).unwrap();

    // Host side: /32 to the pod on the veth, a per-ENI table, and the two rules.
    // An on-link gateway is checked against the local table, which a namespace
    // only has once it holds an address: bring lo up, as every real host has.
    let lo = host.nl.link_by_name("lo").unwrap();
    host.nl.set_link_up(lo.index).unwrap();
    let to_pod = Route::new(net("10.20.0.5/32")).dev(vh.index);
    host.nl.add_route(&to_pod).unwrap();
    let table = 1001;
    let eni_default = Route::default_route(IpFamily::V4)
        .via(ip("10.20.0.253"))
        .dev(vh.index)
        .onlink()
        .table(table)
        .metric(10);
    host.nl.add_route(&eni_default).unwrap();
    let rule_to = Rule::lookup(IpFamily::V4, TABLE_MAIN)
        .to(net("10.20.0.5/32"))
        .priority(512);
    let rule_from = Rule::lookup(IpFamily::V4, table)
        .from(net("10.20.0.5/32"))
        .iif("vh0")
        .priority(2048);
    host.nl.add_rule(&rule_to).unwrap();
    host.nl.add_rule(&rule_from).unwrap();

    let main = host.nl.routes(Some(TABLE_MAIN)).unwrap();
    let r = main
        .iter()
        .find(|r| r.destination == to_pod.destination)
        .expect("pod /32 route");
    assert_eq!(
        (r.oif, r.scope, r.gateway),
        (Some(vh.index), Some(Scope::Link), None)
    );
    let custom = host.nl.routes(Some(table)).unwrap();
    assert_eq!(custom.len(), 1, "{custom:?}");
    assert_eq!(
        (
            custom[0].gateway,
            custom[0].metric,
            custom[0].table,
            custom[0].onlink
        ),
        (Some(ip("10.20.0.253")), Some(10), table, true)
    );

    let rules = host.nl.rules().unwrap();
    assert!(rules.contains(&rule_to), "{rules:#?}");
    assert!(rules.contains(&rule_from), "{rules:#?}");
    assert!(
        rules
            .iter()
            .any(|r| r.priority == Some(32766) && r.table == TABLE_MAIN),
        "kernel defaults listed"
    );
    assert!(host.nl.add_rule(&rule_from).unwrap_err().is_exists());

    // Duplicates are EEXIST; replace is fine.
    assert!(host.nl.add_route(&to_pod).unwrap_err().is_exists());
    let not_local_src = host
        .nl
        .replace_route(&to_pod.clone().src(ip("10.20.0.5")))
        .unwrap_err();
    assert_eq!(
        not_local_src.errno(),
        Some(libc::EINVAL),
        "a preferred source must be local: {not_local_src}"
    );
    host.nl
        .replace_route(&eni_default.clone().via(ip("10.20.0.254")))
        .unwrap();
    assert_eq!(
        host.nl.routes(Some(table)).unwrap()[0].gateway,
        Some(ip("10.20.0.254"))
    );

    // Teardown, then teardown again: the second round is all "already gone".
    host.nl.delete_rule(&rule_from).unwrap();
    host.nl.delete_rule(&rule_to).unwrap();
    host.nl
        .delete_route(&Route::default_route(IpFamily::V4).table(table))
        .unwrap();
    host.nl.delete_route(&to_pod).unwrap();
    pod.nl.delete_neighbour(&neigh).unwrap();
    pod.nl.delete_address(&pod_addr).unwrap();
    let second = [
        host.nl.delete_rule(&rule_from).unwrap_err(),
        host.nl.delete_route(&to_pod).unwrap_err(),
        pod.nl.delete_neighbour(&neigh).unwrap_err(),
        pod.nl.delete_address(&pod_addr).unwrap_err(),
    ];
    for e in second {
        assert!(e.is_not_found(), "{e}");
    }
    assert!(host.nl.routes(Some(table)).unwrap().is_empty());
    assert!(!host.nl.rules().unwrap().iter().any(|r| r.table == table));
}

#[test]
fn v6_routes_rules_and_proxy_neighbours() {
    require_root!();
    let (mut host, _pod) = veth_pair();
    let vh = host.nl.link_by_name("vh0").unwrap();
    host.nl.set_link_up(vh.index).unwrap();

    let route = Route::new(net("fd00:30::/64"))
        .via(ip("fe80::1"))
        .dev(vh.index)
        .table(2002)
        .protocol(proto::STATIC);
    host.nl.add_route(&route).unwrap();
    let listed = host.nl.routes(Some(2002)).unwrap();
    let got = listed
        .iter()
        .find(|r| r.destination == route.destination)
        .expect("v6 route listed");
    assert_eq!(
        (got.gateway, got.oif, got.protocol),
        (route.gateway, Some(vh.index), Some(proto::STATIC))
    );
    assert_eq!(got.metric, Some(1024), "kernel default v6 metric");

    let rule = Rule::lookup(IpFamily::V6, 2002)
        .from(net("fd00:30::/64"))
        .priority(3000);
    host.nl.add_rule(&rule).unwrap();
    assert!(host.nl.rules().unwrap().contains(&rule));
    let unreachable = Rule::lookup(IpFamily::V6, 0)
        .action(RuleAction::Unreachable)
        .to(net("fd00:31::/64"))
        .priority(3001);
    host.nl.add_rule(&unreachable).unwrap();
    assert!(host.nl.rules().unwrap().contains(&unreachable));

    let proxy = Neighbour::proxy(vh.index, ip("10.30.0.9"));
    host.nl.add_neighbour(&proxy).unwrap();
    let neighbours = host.nl.neighbours(Some(vh.index)).unwrap();
    assert!(neighbours.contains(&proxy), "{neighbours:?}");
    host.nl.delete_neighbour(&proxy).unwrap();
    assert!(host.nl.delete_neighbour(&proxy).unwrap_err().is_not_found());

    host.nl.delete_rule(&rule).unwrap();
    host.nl.delete_route(&route).unwrap();
    assert!(host.nl.delete_route(&route).unwrap_err().is_not_found());
}

#[test]
fn kernel_errors_carry_errno_object_and_reason() {
    require_root!();
    let (mut host, _pod) = veth_pair();
    let vh = host.nl.link_by_name("vh0").unwrap();
    host.nl.set_link_up(vh.index).unwrap();
    // A gateway that is not on any connected network and not marked on-link.
    let route = Route::new(net("10.40.0.0/16"))
        .via(ip("192.0.2.1"))
        .dev(vh.index);
    let err = host.nl.add_route(&route).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("add route 10.40.0.0/16 via 192.0.2.1"),
        "{text}"
    );
    assert!(text.contains(host.ns.name()), "{text}");
    assert!(text.contains("gateway"), "extended ack reason: {text}");
}

#[test]
fn dumps_spanning_many_datagrams() {
    require_root!();
    let mut t = TestNs::new();
    let vh = t.nl.create_veth(&Veth::new("d0", "d1")).unwrap();
    t.nl.set_link_up(vh.index).unwrap();
    for i in 0..40 {
        t.nl.create_veth(&Veth::new(format!("a{i}"), format!("b{i}")))
            .unwrap();
    }
    assert_eq!(t.nl.links().unwrap().len(), 1 + 2 + 80);
    for i in 0..600u32 {
        let dst =
            IpNetwork::new(IpAddr::from([10, 50, (i / 256) as u8, (i % 256) as u8]), 32).unwrap();
        t.nl.add_route(&Route::new(dst).dev(vh.index).table(77))
            .unwrap();
    }
    assert_eq!(t.nl.routes(Some(77)).unwrap().len(), 600);
}

#[test]
fn sysctl_is_per_namespace() {
    require_root!();
    let t = TestNs::new();
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(
        sysctl_read_in(&t.ns, "net.ipv4.ip_forward").unwrap(),
        "0",
        "a new namespace starts with forwarding off"
    );
    sysctl_in(&t.ns, "net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(sysctl_read_in(&t.ns, "net/ipv4/ip_forward").unwrap(), "1");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_before,
        "host untouched"
    );

    let err = sysctl_in(&t.ns, "net.ipv4.no_such_knob", "1").unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains(t.ns.name()), "{err}");
}

#[test]
fn a_failing_test_still_removes_its_namespaces() {
    require_root!();
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let (host, pod) = veth_pair();
        names
            .lock()
            .unwrap()
            .extend([host.ns.name().to_owned(), pod.ns.name().to_owned()]);
        panic!("an assertion failed halfway");
    });
    assert!(result.is_err());
    for name in names.into_inner().unwrap() {
        assert!(
            !std::path::Path::new("/run/netns").join(&name).exists(),
            "{name} left behind"
        );
    }
}

/// Runs a command inside a test namespace; its success.
fn run_in(ns: &NetnsGuard, args: &[&str]) -> std::process::Output {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(args)
        .output()
        .unwrap()
}

/// Trunk mode's VLAN programs, end to end: a pod behind a node's trunk NIC talks to an address
/// of the "vRouter" across a veth that carries 802.1Q tags; the vRouter side sees the member's
/// VLAN ID as the mark; without the vRouter's untagging the tagged frames go nowhere.
#[test]
fn vlan_programs_carry_a_members_traffic_tagged_across_a_trunk() {
    use berth_nodenet::TcHook;
    use berth_nodenet::bpf::{load_tc_program, vlan};
    use std::os::fd::AsFd as _;
    require_root!();
    const GW_MAC: MacAddr = MacAddr([0xee, 0xff, 0xff, 0xff, 0xff, 0xff]);
    const MEMBER_MAC: MacAddr = MacAddr([0x02, 0x4d, 0, 0, 0, 0x2a]);
    const TRUNK_MAC: MacAddr = MacAddr([0x02, 0x54, 0, 0, 0, 1]);
    const VID: u16 = 42;
    let mut vpc = TestNs::new();
    let mut node = TestNs::new();
    let mut pod = TestNs::new();

    // vRouter port `pt` <-> trunk NIC `tr0`; host veth `hv` <-> pod `eth0`.
    vpc.nl.create_veth(&Veth::new("pt", "tr0").mac(GW_MAC).peer_mac(TRUNK_MAC).peer_netns(node.ns.as_fd())).unwrap();
    node.nl.create_veth(&Veth::new("hv", "eth0").mac(HOST_MAC).peer_netns(pod.ns.as_fd())).unwrap();
    let pt = vpc.nl.link_by_name("pt").unwrap().index;
    let tr0 = node.nl.link_by_name("tr0").unwrap().index;
    let hv = node.nl.link_by_name("hv").unwrap().index;
    let eth0 = pod.nl.link_by_name("eth0").unwrap();
    vpc.nl.set_link_up(pt).unwrap();
    node.nl.set_link_up(tr0).unwrap();
    node.nl.set_link_up(hv).unwrap();
    pod.nl.set_link_up(eth0.index).unwrap();
    for t in [&mut vpc, &mut node, &mut pod] {
        let lo = t.nl.link_by_name("lo").unwrap().index;
        t.nl.set_link_up(lo).unwrap();
    }
    for key in ["net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.tr0.rp_filter"] {
        sysctl_in(node.ns.netns(), key, if key.ends_with("forward") { "1" } else { "0" }).unwrap();
    }
    // The vRouter: a far address on lo, the pod's address by the member's MAC on the port.
    let lo = vpc.nl.link_by_name("lo").unwrap().index;
    vpc.nl.add_address(&Address::new(lo, net("10.7.0.200/32"))).unwrap();
    vpc.nl.add_route(&Route::new(net("10.7.0.5/32")).dev(pt).scope(Scope::Link)).unwrap();
    vpc.nl.add_neighbour(&Neighbour::permanent(pt, ip("10.7.0.5"), MEMBER_MAC)).unwrap();
    // The node: the pod by its veth.
    node.nl.add_route(&Route::new(net("10.7.0.5/32")).dev(hv).scope(Scope::Link)).unwrap();
    node.nl.add_neighbour(&Neighbour::permanent(hv, ip("10.7.0.5"), eth0.mac.unwrap())).unwrap();
    // The pod: /32 and a default route via the link-local gateway.
    pod.nl.add_address(&Address::new(eth0.index, net("10.7.0.5/32"))).unwrap();
    pod.nl.add_route(&Route::new(net("169.254.1.1/32")).dev(eth0.index).scope(Scope::Link)).unwrap();
    pod.nl.add_route(&Route::default_route(IpFamily::V4).via(ip("169.254.1.1")).dev(eth0.index)).unwrap();
    pod.nl.add_neighbour(&Neighbour::permanent(eth0.index, ip("169.254.1.1"), HOST_MAC)).unwrap();

    for (index, name, insns) in [(hv, "member_egress", vlan::member_egress(VID, tr0, MEMBER_MAC, GW_MAC).unwrap()), (tr0, "trunk_ingress", vlan::trunk_ingress().unwrap())] {
        let fd = load_tc_program(name, &insns).unwrap_or_else(|e| panic!("{e}"));
        node.nl.attach_bpf(index, TcHook::Ingress, fd.as_fd(), name).unwrap();
    }
    for (hook, name, insns) in [(TcHook::Ingress, "port_ingress", vlan::port_ingress().unwrap()), (TcHook::Egress, "port_egress", vlan::port_egress(&[(MEMBER_MAC, VID)]).unwrap())] {
        let fd = load_tc_program(name, &insns).unwrap_or_else(|e| panic!("{e}"));
        vpc.nl.attach_bpf(pt, hook, fd.as_fd(), name).unwrap();
    }
    // Every program the trunk mode builds passes the verifier, a trunk port without members too.
    for (name, insns) in [("no_members", vlan::port_egress(&[]).unwrap()), ("many_members", vlan::port_egress(&[(MEMBER_MAC, VID), (TRUNK_MAC, 7), (GW_MAC, 4094)]).unwrap())] {
        load_tc_program(name, &insns).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let filters = vpc.nl.bpf_filters(pt, TcHook::Ingress).unwrap();
    assert_eq!(filters.len(), 1, "{filters:?}");
    assert!(filters[0].name.starts_with("port_ingress") && filters[0].direct_action, "{filters:?}");

    // Count what the vRouter sees from the member: its VLAN as the mark, its MAC as the source.
    let nft = "add table inet t\nadd counter inet t member\nadd chain inet t pre { type filter hook prerouting priority -300; }\nadd rule inet t pre iifname \"pt\" meta mark 42 ether saddr 02:4d:00:00:00:2a ip saddr 10.7.0.5 counter name member\n";
    let mut child = std::process::Command::new("ip").args(["netns", "exec", vpc.ns.name(), "nft", "-f", "-"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), nft.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());

    let ping = run_in(&pod.ns, &["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.7.0.200"]);
    assert!(ping.status.success(), "pod → vRouter through the trunk: {}", String::from_utf8_lossy(&ping.stdout));
    let counters = run_in(&vpc.ns, &["nft", "list", "counter", "inet", "t", "member"]);
    let text = String::from_utf8_lossy(&counters.stdout).to_string();
    assert!(text.contains("packets 3"), "three echo requests arrived tagged 42 from the member's MAC: {text}");

    // Without the vRouter's untagging, the tagged frames reach no one.
    vpc.nl.detach_bpf(pt, TcHook::Ingress).unwrap();
    assert!(vpc.nl.bpf_filters(pt, TcHook::Ingress).unwrap().is_empty());
    let ping = run_in(&pod.ns, &["ping", "-c", "1", "-W", "1", "10.7.0.200"]);
    assert!(!ping.status.success(), "tagged frames must not be taken as untagged");
}

/// This machine's kernel has no 8021q: creating a VLAN sub-interface fails as "unsupported", which
/// is what makes trunk mode take its tc program path.
#[test]
fn a_kernel_without_8021q_refuses_vlan_links_as_unsupported() {
    require_root!();
    let (mut host, _pod) = veth_pair();
    let vh = host.nl.link_by_name("vh0").unwrap();
    match host.nl.create_vlan("vh0.42", vh.index, 42, HOST_MAC) {
        Ok(link) => {
            // A kernel with 8021q: the sub-interface is there, with its VLAN ID's parent.
            assert_eq!(link.kind.as_deref(), Some("vlan"));
            assert_eq!(link.parent_index, Some(vh.index));
        }
        Err(e) => assert!(e.is_unsupported(), "{e}"),
    }
}

/// Set elements and named counters over netlink, read back through nft(8): the keys a
/// concatenated set type expects, all-or-none batches, and counters by name.
#[test]
fn nftables_set_elements_and_counters_over_netlink() {
    use berth_nodenet::nftables::{Counter, Element, Family, Nftables, SetKey};
    require_root!();
    let ns = NetnsGuard::unique("bnt").unwrap();
    let script = "add table inet t\n\
        add set inet t pairs { type ifname . ipv4_addr; }\n\
        add set inet t pairs6 { type ifname . ipv6_addr; }\n\
        add set inet t names { type ifname; }\n\
        add counter inet t dropped { packets 5 bytes 300 }\n\
        add counter inet t other\n";
    let mut nft = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut nft.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(nft.wait().unwrap().success());

    let mut nf = Nftables::open_in_netns(ns.netns()).unwrap();
    let el = |set: &str, key: SetKey| Element { set: set.into(), key };
    let elements = [
        el("pairs", SetKey::new().ifname("bth1").ip(ip("10.0.0.7"))),
        el("pairs", SetKey::new().ifname("bth2").ip(ip("10.0.0.8"))),
        el("pairs6", SetKey::new().ifname("bth1").ip(ip("fd00::7"))),
        el("names", SetKey::new().ifname("bth1")),
    ];
    nf.add_elements(Family::Inet, "t", &elements).unwrap();
    nf.add_elements(Family::Inet, "t", &elements[..1]).expect("an element already there is fine");
    let list = |set: &str| String::from_utf8(run_in(&ns, &["nft", "list", "set", "inet", "t", set]).stdout).unwrap();
    let pairs = list("pairs");
    assert!(pairs.contains("\"bth1\" . 10.0.0.7") && pairs.contains("\"bth2\" . 10.0.0.8"), "{pairs}");
    assert!(list("pairs6").contains("\"bth1\" . fd00::7"), "{}", list("pairs6"));
    assert!(list("names").contains("\"bth1\""), "{}", list("names"));

    // A batch with one element absent changes nothing and says not found.
    let absent = [elements[1].clone(), el("pairs", SetKey::new().ifname("bth9").ip(ip("10.0.0.9")))];
    let err = nf.delete_elements(Family::Inet, "t", &absent).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(list("pairs").contains("\"bth2\" . 10.0.0.8"), "nothing of a refused batch is applied");
    nf.delete_elements(Family::Inet, "t", &elements).unwrap();
    assert!(!list("pairs").contains("bth"), "{}", list("pairs"));
    let missing_set = nf.add_elements(Family::Inet, "t", &[el("nope", SetKey::new().ifname("x"))]).unwrap_err();
    assert!(missing_set.is_not_found(), "{missing_set}");

    let counters = nf.counters(Family::Inet, "t").unwrap();
    assert_eq!(counters.get("dropped"), Some(&Counter { packets: 5, bytes: 300 }), "{counters:?}");
    assert_eq!(counters.get("other"), Some(&Counter::default()));
    assert!(nf.counters(Family::Inet, "absent").unwrap().is_empty(), "no table, no counters");
}

#[test]
fn links_deleted_together_take_their_peers_and_spare_the_others() {
    require_root!();
    let mut t = TestNs::new();
    let mut doomed = Vec::new();
    for i in 0..5 {
        let l = t.nl.create_veth(&Veth::new(format!("vd{i}"), format!("pd{i}"))).unwrap();
        doomed.push(l.index);
    }
    let kept = t.nl.create_veth(&Veth::new("vk0", "pk0")).unwrap();
    // One of them already gone: skipped, not an error.
    t.nl.delete_link(doomed[4]).unwrap();
    t.nl.delete_links_together(&doomed, 0x6265).unwrap();
    let left: Vec<String> = t.nl.links().unwrap().into_iter().map(|l| l.name).filter(|n| n != "lo").collect();
    assert_eq!(left.len(), 2, "only the kept pair is left: {left:?}");
    assert!(t.nl.link_by_index(kept.index).is_ok());
    // Nothing left to delete is fine too.
    t.nl.delete_links_together(&doomed, 0x6265).unwrap();
}
