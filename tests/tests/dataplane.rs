//! The local cloud's data plane through the real API: instances reach each other through the
//! vRouter, a secondary IP is routed to its ENI, spoofed packets are dropped and counted, and an
//! unassigned IP is unreachable.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use berth_cloud::api::{Addresses, CreateEniRequest, EniFilter};
use berth_cloud::model::{EniKind, EniStatus};
use berth_cloud::{Cloud, wait};
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, in_netns, is_root, nft_counter, tcp_connects, tcp_listen};

const WAIT: Duration = Duration::from_secs(30);

fn ping(netns: &Path, from: Option<Ipv4Addr>, to: Ipv4Addr) -> bool {
    let to = to.to_string();
    let from = from.map(|f| f.to_string());
    // Three probes: the first may wait for ARP on a busy machine; a drop loses all three.
    let mut argv = vec!["ping", "-c", "3", "-i", "0.2", "-W", "2"];
    if let Some(f) = &from {
        argv.extend(["-I", f.as_str()]);
    }
    argv.push(&to);
    in_netns(netns, &argv).0
}

/// A metadata value read the way a VM does: HTTP on the loopback of its own namespace.
fn metadata(netns: &Path, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let ns = berth_nodenet::Netns::open(netns).unwrap();
    let request = format!("GET /latest/meta-data/{path} HTTP/1.0\r\nHost: metadata\r\n\r\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let request = request.clone();
        let answer = ns
            .run_in(move || -> std::io::Result<String> {
                let mut s = std::net::TcpStream::connect("127.0.0.1:8100")?;
                s.write_all(request.as_bytes())?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })
            .unwrap();
        match answer {
            Ok(text) => return text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string(),
            // The listener appears within moments of the namespace.
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("metadata in {}: {e}", netns.display()),
        }
    }
}

fn sh(netns: &Path, script: &str) {
    let (ok, out) = in_netns(netns, &["sh", "-ec", script]);
    assert!(ok, "`{script}` failed: {out}");
}

#[tokio::test]
async fn instances_talk_through_the_vrouter_and_spoofing_is_dropped() {
    if !is_root() {
        eprintln!("skipped: needs root (namespaces and veths)");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.60.0.0/16", "10.60.1.0/24").await;
    let (vpc, vsw, sg) = (net.vpc.clone(), net.vsw.clone(), net.sg.clone());
    let a = net.run(&cloud, "ecs.g7.large", &sg).await;
    let b = net.run(&cloud, "ecs.c7.large", &sg).await;
    let (ns_a, ns_b) = (lc.instance_netns(&a), lc.instance_netns(&b));
    let vpc_ns = std::path::PathBuf::from(format!("/run/netns/{}-{vpc}", lc.prefix));
    let primary = |id: &str| {
        let id = id.to_string();
        let cloud = &cloud;
        async move {
            cloud.describe_network_interfaces(&EniFilter { instance_id: Some(id), kind: Some(EniKind::Primary), ..Default::default() }).await.unwrap().remove(0)
        }
    };
    let (eni_a, eni_b) = (primary(&a).await, primary(&b).await);

    assert!(ping(&ns_a, None, eni_b.primary_ip), "A reaches B's primary IP through the vRouter\n{}", lc.log());
    assert!(ping(&ns_a, None, "10.60.1.253".parse().unwrap()), "A reaches the vSwitch gateway");
    assert_eq!(metadata(&ns_a, "instance-id"), a, "A reads its own metadata on its loopback");
    assert_eq!(metadata(&ns_b, "private-ipv4"), eni_b.primary_ip.to_string());

    // A secondary ENI on B with one secondary IP, configured inside B as a node agent would.
    let eni = cloud
        .create_network_interface(&CreateEniRequest::secondary(vsw.clone(), vec![sg.clone()]))
        .await
        .unwrap();
    cloud.attach_network_interface(&eni.id, &b, None).await.unwrap();
    wait::eni_status(&cloud, &eni.id, EniStatus::InUse, WAIT).await.unwrap();
    let secondary = cloud.assign_private_ips(&eni.id, &Addresses::Count(1), None).await.unwrap()[0];
    let (_, links) = in_netns(&ns_b, &["ip", "-o", "link"]);
    let nic = links
        .lines()
        .find(|l| l.contains(&eni.mac))
        .and_then(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .unwrap_or_else(|| panic!("the ENI's NIC (MAC {}) is in B's namespace: {links}", eni.mac));
    sh(&ns_b, &format!(
        "ip link set {nic} up; ip addr add {secondary}/32 dev {nic}; ip route add 10.60.1.253 dev {nic} table 100; ip route add default via 10.60.1.253 dev {nic} table 100; ip rule add from {secondary} lookup 100 priority 100"
    ));
    assert!(ping(&ns_a, None, secondary), "A reaches B's secondary IP on the secondary ENI");

    // A spoofed source IP: an address the cloud never assigned to A's ENI.
    let spoofed_ip_before = nft_counter(&vpc_ns, "spoofed_ip");
    sh(&ns_a, "ip addr add 10.60.1.200/32 dev eth0");
    assert!(!ping(&ns_a, Some("10.60.1.200".parse().unwrap()), eni_b.primary_ip), "a spoofed source IP is dropped");
    assert!(nft_counter(&vpc_ns, "spoofed_ip") > spoofed_ip_before, "the vRouter counted the spoofed source IP");
    sh(&ns_a, "ip addr del 10.60.1.200/32 dev eth0");

    // A spoofed source MAC.
    let spoofed_mac_before = nft_counter(&vpc_ns, "spoofed_mac");
    sh(&ns_a, "ip link set eth0 address 02:11:22:33:44:55");
    assert!(!ping(&ns_a, None, eni_b.primary_ip), "a spoofed source MAC is dropped");
    assert!(nft_counter(&vpc_ns, "spoofed_mac") > spoofed_mac_before, "the vRouter counted the spoofed MAC");
    sh(&ns_a, &format!("ip link set eth0 address {}", eni_a.mac));
    assert!(ping(&ns_a, None, eni_b.primary_ip), "with its own MAC back, A reaches B again");

    // Once unassigned, the secondary IP is not routed any more.
    cloud.unassign_private_ips(&eni.id, &[secondary]).await.unwrap();
    assert!(!ping(&ns_a, None, secondary), "an unassigned IP is unreachable");
}

/// A TCP listener inside a namespace, accepting in the background.
#[tokio::test]
async fn security_groups_decide_who_reaches_a_port() {
    use berth_cloud::model::{Direction, IpProtocol, Policy, SecurityGroupRule};
    if !is_root() {
        eprintln!("skipped: needs root (namespaces and veths)");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.61.0.0/16", "10.61.1.0/24").await;
    let vpc = net.vpc.clone();
    let clients = cloud.create_security_group(&vpc, "clients", None).await.unwrap();
    let open = cloud.create_security_group(&vpc, "open", None).await.unwrap();
    let closed = cloud.create_security_group(&vpc, "closed", None).await.unwrap();
    let rule = |policy, priority| SecurityGroupRule {
        direction: Direction::Ingress,
        protocol: IpProtocol::Tcp,
        ports: Some((9000, 9000)),
        peer_cidr: "10.61.0.0/16".parse().unwrap(),
        policy,
        priority,
    };
    cloud.authorize_security_group(&open, &rule(Policy::Accept, 10)).await.unwrap();
    // "closed" accepts the port at priority 10 but drops it at priority 1, which wins.
    cloud.authorize_security_group(&closed, &rule(Policy::Accept, 10)).await.unwrap();
    cloud.authorize_security_group(&closed, &rule(Policy::Drop, 1)).await.unwrap();

    let client = net.run(&cloud, "ecs.g7.large", &clients).await;
    let open_server = net.run(&cloud, "ecs.g7.large", &open).await;
    let closed_server = net.run(&cloud, "ecs.g7.large", &closed).await;
    let ip = |id: String| {
        let cloud = &cloud;
        async move { cloud.describe_instances(&berth_cloud::api::InstanceFilter { ids: vec![id], ..Default::default() }).await.unwrap()[0].primary_ip }
    };
    let (open_ip, closed_ip) = (ip(open_server.clone()).await, ip(closed_server.clone()).await);
    tcp_listen(&lc.instance_netns(&open_server), 9000);
    tcp_listen(&lc.instance_netns(&closed_server), 9000);
    tcp_listen(&lc.instance_netns(&open_server), 9001);

    assert!(tcp_connects(&lc.instance_netns(&client), open_ip, 9000), "the open group accepts port 9000\n{}", lc.log());
    assert!(!tcp_connects(&lc.instance_netns(&client), closed_ip, 9000), "the closed group drops port 9000");
    assert!(!tcp_connects(&lc.instance_netns(&client), open_ip, 9001), "a port no rule accepts is denied from another group");
    assert!(!ping(&lc.instance_netns(&client), None, open_ip), "ingress is denied by default: no rule accepts ICMP from another group");

    // Revoking the drop opens the closed group's port.
    cloud.revoke_security_group(&closed, &rule(Policy::Drop, 1)).await.unwrap();
    assert!(tcp_connects(&lc.instance_netns(&client), closed_ip, 9000), "after revoking the drop the port is reachable");
}
