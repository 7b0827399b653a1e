//! Start-up cost of the `berth` binary (CNI VERSION, exec to exit), side by side with Debian's
//! reference `loopback` plugin (package containernetworking-plugins) when it is installed.
//!
//! Run: `cargo bench -p berth-cni --bench startup`

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 1000;

fn run_once(binary: &str) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(binary)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("exec the plugin");
    child.stdin.take().unwrap().write_all(br#"{"cniVersion":"1.0.0"}"#).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{binary} VERSION failed");
    started.elapsed()
}

fn measure(name: &str, binary: &str) {
    let mut times: Vec<Duration> = (0..RUNS).map(|_| run_once(binary)).collect();
    times.sort();
    let mean = times.iter().sum::<Duration>() / RUNS as u32;
    let pct = |p: f64| times[((RUNS as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
    println!("{name:<28} VERSION x{RUNS}: mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms", mean.as_secs_f64() * 1e3, pct(0.5), pct(0.99));
}

fn main() {
    measure("berth", env!("CARGO_BIN_EXE_berth"));
    let reference = "/usr/lib/cni/loopback";
    if std::path::Path::new(reference).exists() {
        measure("reference loopback (Debian)", reference);
    } else {
        println!("reference loopback plugin not installed (apt-get install containernetworking-plugins)");
    }
}
