//! Pods made the way a runtime makes them: a namespace of their own and the agent's conflist
//! executed through libcni's rules, in the node's namespace.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use berth_nodenet::NetnsGuard;

use crate::agent::AgentProcess;
use crate::cni::{self, Invocation};
use crate::{LocalCloud, in_netns};

/// A pod: its namespace (removed on drop), its container ID, its IPv4 address and its CNI result.
pub struct Pod {
    pub netns: NetnsGuard,
    pub container_id: String,
    pub ip: Ipv4Addr,
    pub result: serde_json::Value,
}

impl Pod {
    /// The path of the pod's namespace, as CNI_NETNS names it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns.name()))
    }
}

/// Three pings; whether one came back.
pub fn ping(from: &Path, to: Ipv4Addr) -> bool {
    in_netns(from, &["ping", "-c", "3", "-i", "0.2", "-W", "2", &to.to_string()]).0
}

/// The conflist the agent wrote.
pub fn conflist(agent: &AgentProcess) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(agent.conflist_path()).unwrap()).unwrap()
}

/// ADDs a pod with extra CNI_ARGS (`args`, e.g. `BERTH_NETWORK_MODE=trunk`); the CNI error on failure.
pub fn try_add_pod(agent: &AgentProcess, container_id: &str, args: &str) -> Result<Pod, String> {
    let netns = NetnsGuard::unique("bp").expect("pod namespace");
    let ns_path = format!("/run/netns/{}", netns.name());
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id}{}{args}", if args.is_empty() { "" } else { ";" });
    let inv = Invocation { command: "ADD", container_id, netns: &ns_path, ifname: "eth0", args: &args };
    let result = cni::add_list(Some(&agent.netns), &cni::cni_path(), &conflist(agent), &inv).map_err(|e| format!("ADD {container_id}: {e:?}"))?;
    let ip: Ipv4Addr = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap();
    Ok(Pod { netns, container_id: container_id.to_string(), ip, result })
}

/// ADDs a pod; panics with the agent's log on failure.
pub fn add_pod(agent: &AgentProcess, container_id: &str, args: &str) -> Pod {
    try_add_pod(agent, container_id, args).unwrap_or_else(|e| panic!("{e}\n{}", agent.log()))
}

/// ADDs `n` shared-mode pods `<tag>-0`….
pub fn add_pods(agent: &AgentProcess, tag: &str, n: usize) -> Vec<Pod> {
    (0..n).map(|i| add_pod(agent, &format!("{tag}-{i}"), "")).collect()
}

/// DELs a pod with its ADD's result as prevResult.
pub fn del_pod(agent: &AgentProcess, pod: &Pod) {
    let ns_path = format!("/run/netns/{}", pod.netns.name());
    let inv = Invocation { command: "DEL", container_id: &pod.container_id, netns: &ns_path, ifname: "eth0", args: "" };
    cni::del_list(Some(&agent.netns), &cni::cni_path(), &conflist(agent), &inv, Some(&pod.result)).unwrap_or_else(|e| panic!("DEL {}: {e:?}", pod.container_id));
}

/// `berthctl inspect` of one agent's node against the cloud: whether it found pods, pool, cloud
/// and node in agreement, and what it printed.
pub fn inspect(lc: &LocalCloud, agent: &AgentProcess) -> (bool, String) {
    let out = std::process::Command::new(crate::bin("berthctl"))
        .args(["inspect", "--agent", &agent.metrics_addr, "--cloud-endpoint", &lc.endpoint, "--credentials"])
        .arg(lc.dir.path().join("credentials.json"))
        .args(["--region", crate::REGION, "--grace-secs", "0", "--output", "json"])
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// What a churn left: the live pods (container ID and namespace), the CNI executions, the kills and
/// the ADDs that succeeded.
pub struct ChurnOutcome {
    pub live: Vec<(String, NetnsGuard)>,
    pub ops: usize,
    pub kills: usize,
    pub added: usize,
}

/// Churn under `kill -9`: one runtime thread per entry of `worker_args` (the CNI_ARGS of its pods,
/// e.g. a network mode) ADDs and DELs pods like kubelet (a failed ADD is followed by DEL and
/// retried; DEL must succeed even with the agent down) while another thread kills the agent at
/// random instants and restarts it. Each runtime does `rounds` ADDs or DELs. Returns the agent (running) and what is left.
pub fn churn(agent: AgentProcess, worker_args: &[&str], rounds: usize) -> (AgentProcess, ChurnOutcome) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    let list = conflist(&agent);
    let node_ns = agent.netns.clone();
    let agent = Arc::new(Mutex::new(agent));
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let (agent, done) = (agent.clone(), done.clone());
        std::thread::spawn(move || {
            let mut kills = 0;
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            while !done.load(Ordering::Relaxed) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                std::thread::sleep(Duration::from_millis(30 + seed % 150));
                let mut a = agent.lock().unwrap();
                a.kill9();
                kills += 1;
                drop(a);
                std::thread::sleep(Duration::from_millis(seed % 100));
                agent.lock().unwrap().restart();
            }
            kills
        })
    };
    let workers: Vec<_> = worker_args
        .iter()
        .enumerate()
        .map(|(w, args)| {
            let (list, node_ns, args) = (list.clone(), node_ns.clone(), args.to_string());
            std::thread::spawn(move || {
                let path = cni::cni_path();
                let mut mine: Vec<(NetnsGuard, String, serde_json::Value)> = Vec::new();
                let (mut ops, mut added) = (0, 0);
                for i in 0..rounds {
                    if mine.len() >= 4 || (!mine.is_empty() && i % 3 == 2) {
                        let (ns, id, result) = mine.remove(0);
                        let ns_path = format!("/run/netns/{}", ns.name());
                        let inv = Invocation { command: "DEL", container_id: &id, netns: &ns_path, ifname: "eth0", args: &args };
                        cni::del_list(Some(&node_ns), &path, &list, &inv, Some(&result)).unwrap_or_else(|e| panic!("DEL {id}: {e:?}"));
                    } else {
                        let ns = NetnsGuard::unique("bk").unwrap();
                        let id = format!("w{w}-{i}");
                        let ns_path = format!("/run/netns/{}", ns.name());
                        let inv = Invocation { command: "ADD", container_id: &id, netns: &ns_path, ifname: "eth0", args: &args };
                        for _attempt in 0..20 {
                            match cni::add_list(Some(&node_ns), &path, &list, &inv) {
                                Ok(result) => {
                                    added += 1;
                                    mine.push((ns, id.clone(), result));
                                    break;
                                }
                                Err(out) => {
                                    let code = serde_json::from_str::<serde_json::Value>(&out.stdout).ok().and_then(|v| v["code"].as_u64());
                                    assert!(matches!(code, Some(5) | Some(11)), "ADD {id} failed with an unexpected answer: {out:?}");
                                    let inv = Invocation { command: "DEL", ..inv.clone() };
                                    cni::del_list(Some(&node_ns), &path, &list, &inv, None).unwrap_or_else(|e| panic!("DEL after failed ADD {id}: {e:?}"));
                                    ops += 2;
                                    std::thread::sleep(Duration::from_millis(50));
                                }
                            }
                        }
                    }
                    ops += 1;
                }
                (mine.into_iter().map(|(ns, id, _)| (id, ns)).collect::<Vec<_>>(), ops, added)
            })
        })
        .collect();
    let mut outcome = ChurnOutcome { live: Vec::new(), ops: 0, kills: 0, added: 0 };
    for w in workers {
        let (pods, n, a) = w.join().expect("a worker panicked");
        outcome.live.extend(pods);
        outcome.ops += n;
        outcome.added += a;
    }
    done.store(true, Ordering::Relaxed);
    outcome.kills = killer.join().unwrap();
    let agent = Arc::try_unwrap(agent).ok().expect("the killer is done").into_inner().unwrap();
    (agent, outcome)
}

/// What [`churn_at_quota`] did: the ADDs made, the most pods alive at once, and every ADD that
/// failed (with its CNI answer).
pub struct QuotaChurn {
    pub added: usize,
    pub peak: usize,
    pub failed: Vec<String>,
}

/// `total` pods ADDed and DELed in random order by `parallel` runtime threads, at most `quota` of
/// them alive at once (a pod's slot is counted from before its ADD until its DEL returned, so every
/// ADD has a free slot); each pod's CNI_ARGS drawn from `args`. Every pod is DELed by the end. A
/// failed ADD is recorded (and DELed, as a runtime does), never retried.
pub fn churn_at_quota(agent: &AgentProcess, args: &[String], total: usize, quota: usize, parallel: usize) -> QuotaChurn {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let list = conflist(agent);
    let (started, live, peak) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    let failed = Mutex::new(Vec::new());
    let path = cni::cni_path();
    std::thread::scope(|s| {
        for w in 0..parallel {
            let (list, path, started, live, peak, failed) = (&list, &path, &started, &live, &peak, &failed);
            s.spawn(move || {
                let mut seed = 0x2545_f491_4f6c_dd1du64 ^ ((w as u64 + 1) * 0x9e37_79b9);
                let mut next = || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                let mut mine: Vec<(NetnsGuard, String, String, serde_json::Value)> = Vec::new();
                let del = |(ns, id, args, result): (NetnsGuard, String, String, serde_json::Value)| {
                    let ns_path = format!("/run/netns/{}", ns.name());
                    let inv = Invocation { command: "DEL", container_id: &id, netns: &ns_path, ifname: "eth0", args: &args };
                    cni::del_list(Some(&agent.netns), path, list, &inv, Some(&result)).unwrap_or_else(|e| panic!("DEL {id}: {e:?}"));
                    live.fetch_sub(1, Ordering::SeqCst);
                };
                loop {
                    let more = started.load(Ordering::SeqCst) < total;
                    if !more && mine.is_empty() {
                        break;
                    }
                    let add = more && (mine.is_empty() || next() % 2 == 0);
                    let slot = add && live.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| (l < quota).then_some(l + 1)).is_ok();
                    if !slot {
                        if mine.is_empty() {
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        } else {
                            let i = (next() % mine.len() as u64) as usize;
                            del(mine.swap_remove(i));
                        }
                        continue;
                    }
                    let n = started.fetch_add(1, Ordering::SeqCst);
                    if n >= total {
                        live.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                    peak.fetch_max(live.load(Ordering::SeqCst), Ordering::SeqCst);
                    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=churn;K8S_POD_NAME=q{n};{}", args[(next() % args.len() as u64) as usize]);
                    let ns = NetnsGuard::unique("bq").expect("pod namespace");
                    let id = format!("q{w}-{n}");
                    let ns_path = format!("/run/netns/{}", ns.name());
                    let inv = Invocation { command: "ADD", container_id: &id, netns: &ns_path, ifname: "eth0", args: &args };
                    match cni::add_list(Some(&agent.netns), path, list, &inv) {
                        Ok(result) => mine.push((ns, id, args, result)),
                        Err(out) => {
                            failed.lock().unwrap().push(format!("ADD {id} ({args}) with {} alive: {out:?}", live.load(Ordering::SeqCst)));
                            let inv = Invocation { command: "DEL", ..inv.clone() };
                            cni::del_list(Some(&agent.netns), path, list, &inv, None).unwrap_or_else(|e| panic!("DEL after failed ADD {id}: {e:?}"));
                            live.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
    });
    QuotaChurn { added: started.load(Ordering::SeqCst).min(total), peak: peak.load(Ordering::SeqCst), failed: failed.into_inner().unwrap() }
}
