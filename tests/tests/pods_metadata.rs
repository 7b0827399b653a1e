//! The metadata service at 100.100.100.200 through the VPC, as a real VPC serves it: a pod of each
//! network mode reads its node's instance's metadata (its RAM role's credentials too, as ECS gives
//! every process in the instance's network), never another instance's; the local cloud's own
//! loopback API stays out of the pods' reach.

use std::path::Path;

use berth_tests::agent::AgentProcess;
use berth_tests::pods::add_pod;
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, in_netns, is_root};

/// `curl` of `path` under the metadata root, from inside `netns`: (succeeded, body or error).
fn metadata(netns: &Path, path: &str) -> (bool, String) {
    in_netns(netns, &["curl", "-sS", "-f", "-m", "5", &format!("http://100.100.100.200/latest/meta-data/{path}")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_of_each_mode_reads_its_own_nodes_metadata_at_the_vpc_address() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.59.0.0/16", "10.59.1.0/24").await;
    // No rule opens anything: the metadata service answers whatever the security groups say.
    let node_a = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let node_b = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let flags = ["--min-idle-ips", "2", "--max-idle-ips", "4", "--cooldown-secs", "1"];
    let agent_a = AgentProcess::start(&lc, &node_a, &[&flags[..], &["--trunk", "true"]].concat());
    let agent_b = AgentProcess::start(&lc, &node_b, &flags);
    let pods = tokio::task::block_in_place(|| {
        [
            (add_pod(&agent_a, "ma-shared", ""), &node_a),
            (add_pod(&agent_a, "ma-exclusive", "BERTH_NETWORK_MODE=exclusive"), &node_a),
            (add_pod(&agent_a, "ma-trunk", "BERTH_NETWORK_MODE=trunk"), &node_a),
            (add_pod(&agent_b, "mb-shared", ""), &node_b),
        ]
    });

    for (pod, node) in &pods {
        let (ok, body) = metadata(&pod.path(), "instance-id");
        assert!(ok, "{} ({}) cannot read the metadata: {body}\n{}", pod.container_id, pod.ip, lc.log());
        assert_eq!(&body, *node, "{} ({}) is answered as its node", pod.container_id, pod.ip);
        let (ok, role) = metadata(&pod.path(), "ram/security-credentials/");
        assert!(ok && role.trim() == "berth-node", "{}: {role}", pod.container_id);
        let (ok, creds) = metadata(&pod.path(), "ram/security-credentials/berth-node");
        assert!(ok && creds.contains("\"SecurityToken\""), "{}: {creds}", pod.container_id);
    }
    // The node itself reads the same at the VPC address.
    let (ok, body) = metadata(&lc.instance_netns(&node_b), "instance-id");
    assert!(ok && body == node_b, "{body}");

    // No path names another instance, and the local cloud's loopback API (whose metadata pages
    // take any instance ID) is not reachable from a pod.
    let (ok, body) = metadata(&pods[0].0.path(), &format!("../../_localcloud/metadata/{node_b}/latest/meta-data/instance-id"));
    assert!(!ok, "the VPC address served another page than the metadata: {body}");
    let (ok, body) = in_netns(&pods[0].0.path(), &["curl", "-sS", "-m", "3", &format!("{}/_localcloud/metadata/{node_b}/latest/meta-data/instance-id", lc.endpoint)]);
    assert!(!ok, "a pod reached the local cloud's API: {body}");
}
