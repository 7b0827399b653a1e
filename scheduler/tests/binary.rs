//! The `berth-scheduler` binary: a config file plus overriding flags and environment, its state
//! directory, the API on loopback, a clean stop on SIGTERM, and a refused config naming the key.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_serves_keeps_state_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scheduler.toml");
    std::fs::write(&config, "[placement]\nstrategy = \"spread\"\n[autoscaler]\nenabled = false\n").unwrap();
    let port = free_port();
    let state = dir.path().join("state");
    let child = Child(
        Command::new(env!("CARGO_BIN_EXE_berth-scheduler"))
            .arg("--config")
            .arg(&config)
            .env("BERTH_SCHEDULER_LISTEN", format!("127.0.0.1:{port}"))
            .arg("--state-dir")
            .arg(&state)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    let mut client = loop {
        if let Ok(c) = SchedulerClient::connect(url.clone()).await {
            break c;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "berth-scheduler does not listen on {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let spec = pb::PodSpec { namespace: "default".into(), name: "web".into(), cpu_millicores: 100, ..Default::default() };
    let st = client.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.unwrap().into_inner();
    assert_eq!(st.phase, pb::PodPhase::Pending as i32);
    assert!(st.message.contains("no node reports"), "{}", st.message);
    let journal = std::fs::read_to_string(state.join("journal.jsonl")).unwrap();
    assert!(journal.contains("default/web"), "the submission is journaled before the answer");
    // An agent's report stream stays open: the scheduler still stops, after a short grace.
    let first = pb::NodeReport { identity: Some(pb::NodeIdentity { instance_id: "i-a".into(), ..Default::default() }), ..Default::default() };
    let _reporter = berth_scheduler_client::NodeReporter::connect(&url, first).await.unwrap();
    let mut child = child;
    nix_kill(child.0.id());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");

    let out = Command::new(env!("CARGO_BIN_EXE_berth-scheduler")).arg("--config").arg(&config).env("BERTH_SCHEDULER_LISTEN", "nowhere").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.listen"), "{}", String::from_utf8_lossy(&out.stderr));
}

fn nix_kill(pid: u32) {
    let status = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}
