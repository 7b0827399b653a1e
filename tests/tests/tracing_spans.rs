//! One pod's ADD can be followed by its trace ID: the plugin logs it (its `logFile`) and sends it
//! to the agent, whose JSON log lines for the ADD carry it in their span, and so do the lines of
//! the cloud calls the ADD made, and the local cloud's lines of those calls.

use berth_tests::agent::AgentProcess;
use berth_tests::pods::{add_pod, del_pod};
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, is_root};
use serde_json::Value;

/// The agent's JSON log lines.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
}

/// The value of `field` in the line's own fields or in any of its spans.
fn field<'a>(line: &'a Value, name: &str) -> Option<&'a str> {
    line["fields"][name].as_str().or_else(|| line["spans"].as_array()?.iter().find_map(|s| s[name].as_str())).filter(|s| !s.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_add_is_followed_from_the_agent_to_the_cloud_calls_it_made() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.87.0.0/16", "10.87.1.0/24").await;
    let node = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    // No warm ENI: the exclusive ADD creates and attaches its pod's ENI itself.
    let logs = tempfile::tempdir().unwrap();
    let plugin_log = logs.path().join("cni.log");
    let agent = AgentProcess::start(&lc, &node, &["--log-json", "--min-idle-ips", "1", "--warm-exclusive-enis", "0", "--cni-log-file", plugin_log.to_str().unwrap()]);
    let (pod, other) = tokio::task::block_in_place(|| (add_pod(&agent, "traced", "BERTH_NETWORK_MODE=exclusive"), add_pod(&agent, "other", "")));

    let lines = json_lines(&agent.log());
    let done = lines
        .iter()
        .find(|l| l["fields"]["message"] == "pod network allocated" && field(l, "container") == Some(pod.container_id.as_str()))
        .unwrap_or_else(|| panic!("no line of the ADD of {}:\n{}", pod.container_id, agent.log()));
    let trace_id = field(done, "trace_id").expect("the ADD's span has a trace_id").to_string();
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    // The plugin's own line of that ADD names the same trace.
    let plugin_lines = json_lines(&std::fs::read_to_string(&plugin_log).expect("the plugin's log"));
    let add = plugin_lines.iter().find(|l| l["command"] == "ADD" && l["containerId"] == pod.container_id.as_str()).expect("the plugin logged the ADD");
    assert_eq!((add["traceId"].as_str(), add["outcome"].as_str()), (Some(trace_id.as_str()), Some("ok")), "{add}");
    assert_eq!(field(done, "mode"), Some("NETWORK_MODE_EXCLUSIVE"));
    // The other pod's ADD is another trace.
    let other_line = lines.iter().find(|l| l["fields"]["message"] == "pod network allocated" && field(l, "container") == Some(other.container_id.as_str())).expect("the other ADD's line");
    assert_ne!(field(other_line, "trace_id"), Some(trace_id.as_str()), "each command is its own trace");

    // The cloud calls made for this ADD, in the agent's log under its trace…
    let calls: Vec<&str> = lines.iter().filter(|l| l["fields"]["message"] == "cloud call" && field(l, "trace_id") == Some(trace_id.as_str())).filter_map(|l| l["fields"]["action"].as_str()).collect();
    for action in ["CreateNetworkInterface", "AttachNetworkInterface"] {
        assert!(calls.contains(&action), "{action} not under trace {trace_id}: {calls:?}");
    }
    // …and in the local cloud's, which got the trace ID with each request.
    let cloud_log = lc.log();
    for action in ["CreateNetworkInterface", "AttachNetworkInterface"] {
        assert!(
            cloud_log.lines().any(|l| l.contains("api call") && l.contains(action) && l.contains(&trace_id)),
            "the local cloud did not log {action} with trace {trace_id}"
        );
    }
    tokio::task::block_in_place(|| {
        del_pod(&agent, &pod);
        del_pod(&agent, &other);
    });
}
