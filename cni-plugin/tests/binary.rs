//! `berth` run as a container runtime runs it: environment, stdin, stdout, exit status.

use std::io::Write as _;
use std::process::{Command, Stdio};

struct Run {
    ok: bool,
    stdout: String,
}

fn berth(env: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Run { ok: out.status.success(), stdout: String::from_utf8_lossy(&out.stdout).into_owned() }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {s:?}"))
}

const MISSING_SOCKET: &str = "/nonexistent/berth-agent.sock";

fn conf(version: &str) -> String {
    format!(r#"{{"cniVersion":"{version}","name":"pods","type":"berth","agentSocket":"{MISSING_SOCKET}"}}"#)
}

fn add_env() -> Vec<(&'static str, &'static str)> {
    vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "/run/netns/none"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/opt/cni/bin")]
}

#[test]
fn version_answers_in_the_version_asked() {
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let r = berth(&[("CNI_COMMAND", "VERSION")], &format!(r#"{{"cniVersion":"{v}"}}"#));
        assert!(r.ok);
        let doc = json(&r.stdout);
        assert_eq!(doc["cniVersion"], v);
        assert_eq!(doc["supportedVersions"].as_array().unwrap().len(), 5);
    }
}

#[test]
fn errors_are_json_on_stdout_with_the_right_code() {
    let r = berth(&[("CNI_COMMAND", "FROB")], &conf("1.1.0"));
    assert!(!r.ok);
    assert_eq!(json(&r.stdout)["code"], 4);

    let r = berth(&add_env(), "{not json");
    assert_eq!(json(&r.stdout)["code"], 6);

    let r = berth(&add_env(), &conf("0.2.0"));
    let doc = json(&r.stdout);
    assert_eq!(doc["code"], 1);
    assert!(doc["msg"].as_str().unwrap().contains("0.2.0"));

    let mut bad = add_env();
    bad[3] = ("CNI_IFNAME", "much-too-long-ifname");
    let doc = json(&berth(&bad, &conf("1.1.0")).stdout);
    assert_eq!(doc["code"], 4);
    assert!(doc["msg"].as_str().unwrap().contains("CNI_IFNAME"));
    assert_eq!(doc["cniVersion"], "1.1.0", "errors come in the config's version");

    let r = berth(&[("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "/x"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/p")], &conf("0.3.1"));
    assert_eq!(json(&r.stdout)["code"], 1, "CHECK needs 0.4.0");
}

#[test]
fn without_the_agent_add_waits_status_fails_and_del_succeeds() {
    let r = berth(&add_env(), &conf("1.1.0"));
    assert!(!r.ok);
    let doc = json(&r.stdout);
    assert_eq!(doc["code"], 11);
    assert!(doc["msg"].as_str().unwrap().contains(MISSING_SOCKET), "{doc}");

    let r = berth(&[("CNI_COMMAND", "STATUS")], &conf("1.1.0"));
    assert_eq!(json(&r.stdout)["code"], 50);

    // DEL queues the release for the agent (in a directory of the test's, not the node's).
    let queue = tempfile::tempdir().unwrap();
    let mut del_conf: serde_json::Value = json(&conf("1.1.0"));
    del_conf["releaseQueueDir"] = serde_json::json!(queue.path().join("q"));
    let r = berth(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "")], &del_conf.to_string());
    assert!(r.ok, "DEL succeeds with the agent down and no netns: {}", r.stdout);
    assert!(r.stdout.is_empty());
    assert!(queue.path().join("q/c1.eth0").exists(), "the release is queued");
}
