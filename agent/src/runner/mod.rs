//! The pod runner (ARCHITECTURE.md flow 5): where no kubelet runs, the agent realizes the pods the
//! scheduler binds to its node as a kubelet and a runtime would, and reports their status.
//!
//! Set-up, in kubelet's order: the pod's volumes through the node's CSI driver (`runner.csi_socket`;
//! CreateVolume for a pod-owned volume, ControllerPublishVolume to this node, NodeStageVolume,
//! NodePublishVolume — see [`volumes`] for how a `VolumeSpec` maps to them), then a sandbox network
//! namespace with the conflist of the CNI config directory executed per the spec (so any plugin
//! and chain works), then the pod's command inside that namespace. Removal goes in reverse: the
//! command (SIGTERM to its process group, SIGKILL after [`STOP_GRACE`]), CNI DEL and the
//! namespace, NodeUnpublish, NodeUnstage, ControllerUnpublish, and DeleteVolume for pod-owned
//! volumes the spec marks `ephemeral`. A failed step undoes what was done. A volume that cannot be
//! set up (a NAS directory not there yet, a driver down) leaves the pod pending with the reason and
//! the time of the next try, tried again with capped exponential back-off ([`retry_delay`]) until
//! it starts, as a kubelet does; any other failure leaves the pod Failed with a message naming the
//! step (what it held is free again in the next report).
//!
//! Volumes appear to the command in its working directory: each pod has a directory of its own
//! under `<state_dir>/runner/pods/`, the command runs there (`BERTH_POD_DIR` names it too), and
//! each volume is published at `<that directory>/<mount_path>`, so nothing outside Berth's own
//! directories is touched and no mount namespace has to outlive the agent.
//!
//! Pods outlive the agent: each command leads its own process group, is not killed when the agent
//! stops, and the runner records every pod ([`record`]); a restarted agent adopts a pod whose
//! namespace exists and whose command is the same live process (pid and start time), without a
//! second CNI ADD or mount, and watches that command through /proc. Any other recorded pod is
//! undone and made again when the scheduler still binds it. Off by default (`runner.enabled`): on
//! a Kubernetes node kubelet does this.

pub mod record;
pub mod usage;
pub mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_cni::libcni::{self, Invocation};
use berth_proto::cluster::v1 as pb;
use berth_proto::csi::v1 as csi;

use record::{OnRestart, PodRecord, RecordState, RecordStore, VolumeRecord};
use volumes::{Csi, Source, VolumePlan};

/// How long a pod's command has between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the runner needs to know of the node.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// The node's namespace the plugins run in (None: this process's).
    pub node_netns: Option<PathBuf>,
    /// Where the conflist is (the first `*.conflist` by name is the pod network).
    pub cni_conf_dir: PathBuf,
    /// Where the plugins are (`CNI_PATH`).
    pub cni_path: String,
    /// Prefix of the pods' namespace names (unique per node).
    pub netns_prefix: String,
    pub node_name: String,
    /// The runner's own directory: records, pods' directories, staging paths, logs.
    pub state_dir: PathBuf,
    /// The node's CSI driver (None: pods with volumes fail).
    pub csi_socket: Option<PathBuf>,
    /// Where each pod's cgroup goes (None: no cgroups, no CPU measured).
    pub cgroup_root: Option<PathBuf>,
}

struct RunningPod {
    spec: pb::PodSpec,
    rec: PodRecord,
    /// The command, when this agent started it (an adopted one is watched through /proc).
    child: Option<Child>,
    /// Left from before a restart and not adopted (why): undone, and made again on `run`.
    stale: Option<String>,
    /// What a failed removal left (it is retried when the scheduler asks again).
    leftovers: String,
}

/// One pod as the capacity report takes it: its key and status for the scheduler (never its
/// spec, so the report stays small) and the CPU and memory it holds on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedPod {
    pub report: pb::PodReport,
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
}

pub struct PodRunner {
    settings: RunnerSettings,
    store: RecordStore,
    handle: tokio::runtime::Handle,
    pods: Mutex<BTreeMap<String, RunningPod>>,
    /// NetworkPolicy as the scheduler last sent it, enforced in each pod's namespace.
    policy: Mutex<crate::netpol::PolicyHeld>,
    /// Each running pod's last usage sample and the rates it gave.
    usage: Mutex<HashMap<String, usage::Measured>>,
}

/// What a pod waiting for its volumes reports: the reason and when it is tried next.
pub fn waiting_message(reason: &str, attempt: u32, retry_at_ms: u64) -> String {
    let at = berth_cloud::signing::format_timestamp(retry_at_ms / 1000);
    format!("waiting for its volumes: {reason}; failed {attempt} time(s), next try at {at}")
}

/// `namespace/name`, the scheduler's key of a pod.
pub fn pod_key(spec: &pb::PodSpec) -> String {
    format!("{}/{}", spec.namespace, spec.name)
}

/// The CNI_ARGS a pod's spec asks for: its identity, network mode, own ENI's vSwitch and groups,
/// bandwidth (bits per second).
pub fn cni_args(spec: &pb::PodSpec) -> String {
    let mut args = vec!["IgnoreUnknown=1".to_string(), format!("K8S_POD_NAMESPACE={}", spec.namespace), format!("K8S_POD_NAME={}", spec.name)];
    let mode = match pb::NetworkMode::try_from(spec.network_mode).unwrap_or(pb::NetworkMode::Unspecified) {
        pb::NetworkMode::Exclusive => "exclusive",
        pb::NetworkMode::Trunk => "trunk",
        _ => "shared",
    };
    args.push(format!("BERTH_NETWORK_MODE={mode}"));
    if !spec.vswitch_id.is_empty() {
        args.push(format!("BERTH_VSWITCH_ID={}", spec.vswitch_id));
    }
    if !spec.security_group_ids.is_empty() {
        args.push(format!("BERTH_SECURITY_GROUP_IDS={}", spec.security_group_ids.join(",")));
    }
    if spec.ingress_bandwidth > 0 {
        args.push(format!("BERTH_INGRESS_BANDWIDTH={}", spec.ingress_bandwidth));
    }
    if spec.egress_bandwidth > 0 {
        args.push(format!("BERTH_EGRESS_BANDWIDTH={}", spec.egress_bandwidth));
    }
    args.join(";")
}

/// A short stable name: the prefix and a hash of `key` (names are ≤ 255 bytes, but short ones read
/// better in `ip netns`).
fn hashed_name(prefix: &str, key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{prefix}-{h:012x}")
}

/// The pod's namespace name.
fn netns_name(prefix: &str, key: &str) -> String {
    hashed_name(prefix, key)
}

fn first_conflist(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "conflist")).collect();
    files.sort();
    let path = files.first().ok_or_else(|| anyhow::anyhow!("no *.conflist in {}: is the agent ready?", dir.display()))?;
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

/// Mount points at or under `dir`, as this process's mount namespace shows them, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    berth_daemon::mountinfo::mount_points_under(&berth_daemon::mountinfo::mounts(), dir)
}

/// Fails when a directory on the way from `dir` to `target` (the target excluded) is a symbolic
/// link: a volume is only ever published inside the pod's directory.
fn check_no_links(dir: &Path, target: &Path) -> anyhow::Result<()> {
    let rel = target.strip_prefix(dir).context("the target is outside the pod's directory")?;
    let mut at = dir.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in parts.iter().take(parts.len().saturating_sub(1)) {
        at.push(c);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            anyhow::bail!("{} is a symbolic link; a volume is only published inside the pod's directory", at.display());
        }
    }
    Ok(())
}

/// Sends `signal` to a process group.
fn signal_group(pgid: i32, signal: libc::c_int) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// How often a pod whose set-up failed for a passing reason is tried, and the back-off (times the
/// attempt) between tries: 1 + 2 + 3 + 4 + 5 s at most.
const TRANSIENT_ATTEMPTS: u32 = 6;
const TRANSIENT_BACKOFF: Duration = Duration::from_secs(1);
/// The wait before the first new try of a pod whose volume could not be set up; it doubles with
/// each failure up to [`VOLUME_RETRY_CAP`].
const VOLUME_RETRY_FIRST: Duration = Duration::from_secs(1);
const VOLUME_RETRY_CAP: Duration = Duration::from_secs(120);

/// How long to wait after the `attempt`-th failed set-up of a pod's volumes (1-based).
pub fn retry_delay(attempt: u32) -> Duration {
    VOLUME_RETRY_FIRST.saturating_mul(1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX)).min(VOLUME_RETRY_CAP)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A volume that could not be set up: tried again later, the cause may go (a directory made, a
/// driver back).
#[derive(Debug)]
struct VolumeNotReady(String);

impl std::fmt::Display for VolumeNotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VolumeNotReady {}

/// A set-up failure that another try may not meet.
#[derive(Debug)]
struct Transient(String);

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Transient {}

/// Whether a plugin's error document says to try again: CNI code 11 (try again later) or 50 (the
/// plugin cannot serve an ADD now).
fn cni_error_is_transient(stdout: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(stdout.trim()).ok().and_then(|v| v["code"].as_u64()).is_some_and(|c| c == 11 || c == 50)
}

/// A CSI status that says the call was refused, so it made nothing.
fn refused(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, InvalidArgument | OutOfRange | AlreadyExists | NotFound | FailedPrecondition | ResourceExhausted | PermissionDenied | Unauthenticated | Unimplemented)
}

impl PodRunner {
    /// A runner with the pods recorded in its state: adopted, kept, or marked to be made again.
    /// Call inside the tokio runtime (CSI calls are made on it from the runner's blocking threads).
    pub fn new(settings: RunnerSettings) -> anyhow::Result<PodRunner> {
        let store = RecordStore::open(&settings.state_dir.join("records")).with_context(|| format!("the runner's records under {}", settings.state_dir.display()))?;
        let mut pods = BTreeMap::new();
        for rec in store.load() {
            let Some(spec) = record::decode_spec(&rec.spec) else {
                tracing::warn!(pod = %rec.key, "a pod record without a readable spec is ignored");
                continue;
            };
            let netns_exists = berth_nodenet::Netns::open_named(&rec.netns).is_ok();
            let alive = rec.command.map(|c| record::is_alive(&c));
            let stale = match record::decide(&rec, netns_exists, alive) {
                OnRestart::Adopt => {
                    tracing::info!(pod = %rec.key, pid = rec.command.map(|c| c.pid), ip = %rec.ip, "adopted a pod from before the agent's restart");
                    None
                }
                OnRestart::Keep => None,
                OnRestart::Redo(why) => {
                    tracing::info!(pod = %rec.key, why, "a recorded pod is not adopted; it is undone and made again if it is still bound here");
                    Some(why)
                }
            };
            pods.insert(rec.key.clone(), RunningPod { spec, rec, child: None, stale, leftovers: String::new() });
        }
        Ok(PodRunner { settings, store, handle: tokio::runtime::Handle::current(), pods: Mutex::new(pods), policy: Mutex::default(), usage: Mutex::default() })
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RunningPod>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, rec: &PodRecord) {
        if let Err(e) = self.store.save(rec) {
            tracing::warn!(pod = %rec.key, error = %e, "cannot write the pod's record; a restarted agent may not adopt it");
        }
    }

    fn csi(&self) -> Option<Csi> {
        self.settings.csi_socket.as_deref().map(|s| Csi::new(s, self.handle.clone()))
    }

    /// Starts a pod unless it runs already (a pod left from before a restart is made again; another
    /// pod under the same name replaces it). Blocking (CNI and CSI calls): call from a blocking thread.
    pub fn run(&self, spec: pb::PodSpec) {
        let key = pod_key(&spec);
        let existing = self.pods().remove(&key);
        if let Some(mut pod) = existing {
            if pod.stale.is_none() && pod.spec == spec && pod.rec.state != RecordState::Removing {
                self.pods().insert(key, pod);
                return;
            }
            // Left from before a restart: its volumes stay (the pod goes on). Another spec: a new pod.
            let same = pod.spec == spec;
            let left = self.teardown(&mut pod, !same);
            if !left.is_empty() {
                pod.leftovers = left.join("; ");
                tracing::warn!(pod = %key, left = %pod.leftovers, "cannot undo the pod's earlier set-up; it is not started");
                self.save(&pod.rec);
                self.pods().insert(key, pod);
                return;
            }
            self.forget(&pod.rec);
        }
        let netns_name = netns_name(&self.settings.netns_prefix, &key);
        let rec = PodRecord {
            key: key.clone(),
            container_id: format!("berth-pod-{}", &netns_name[netns_name.len() - 12..]),
            dir: self.settings.state_dir.join("pods").join(&netns_name),
            netns: netns_name,
            spec: record::encode_spec(&spec),
            state: RecordState::Starting,
            volumes: Vec::new(),
            network: false,
            cni_result: None,
            ip: String::new(),
            command: None,
        };
        let mut pod = RunningPod { spec, rec, child: None, stale: None, leftovers: String::new() };
        self.start_or_wait(&mut pod, 0);
        self.save(&pod.rec);
        self.pods().insert(key, pod);
    }

    /// Sets the pod up from its fresh record; `failures` is how many set-ups of its volumes failed
    /// before. It ends Running, Waiting (a volume not ready: tried again by [`Self::retry_waiting`])
    /// or Failed.
    fn start_or_wait(&self, pod: &mut RunningPod, failures: u32) {
        let key = pod.rec.key.clone();
        let fresh = pod.rec.clone();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.start(pod) {
                Ok(()) => {
                    pod.rec.state = RecordState::Running;
                    tracing::info!(pod = %key, ip = %pod.rec.ip, "pod running");
                }
                Err(e) => {
                    let mut message = format!("{e:#}");
                    tracing::warn!(pod = %key, error = %message, attempt, "pod failed to start; undoing its set-up");
                    let left = self.teardown(pod, true);
                    // What says "try again later" (the agent's pool growing, the metadata service
                    // restarting) is tried again, as a kubelet retries a sandbox.
                    if left.is_empty() && e.is::<Transient>() && attempt < TRANSIENT_ATTEMPTS {
                        std::thread::sleep(TRANSIENT_BACKOFF * attempt);
                        pod.rec = fresh.clone();
                        continue;
                    }
                    if left.is_empty() && e.is::<VolumeNotReady>() {
                        let failures = failures + 1;
                        let retry_at_ms = now_ms() + retry_delay(failures).as_millis() as u64;
                        pod.rec = fresh.clone();
                        pod.rec.state = RecordState::Waiting { message, attempt: failures, retry_at_ms };
                        break;
                    }
                    if !left.is_empty() {
                        message.push_str(&format!("; not undone yet: {}", left.join("; ")));
                    }
                    message.push_str(" (not retried on this node: delete the pod and submit it again)");
                    pod.rec.state = RecordState::Failed { message };
                }
            }
            break;
        }
    }

    /// Sets up again every pod whose volumes wait and whose time has come. Blocking: call from a
    /// blocking thread. Returns how many were tried.
    pub fn retry_waiting(&self) -> usize {
        let now = now_ms();
        let due: Vec<String> = self.pods().iter().filter(|(_, p)| matches!(p.rec.state, RecordState::Waiting { retry_at_ms, .. } if retry_at_ms <= now)).map(|(k, _)| k.clone()).collect();
        let mut tried = 0;
        for key in due {
            let Some(mut pod) = self.pods().remove(&key) else { continue };
            let RecordState::Waiting { attempt, .. } = pod.rec.state else {
                self.pods().insert(key, pod);
                continue;
            };
            tried += 1;
            pod.rec.state = RecordState::Starting;
            pod.rec.volumes.clear();
            tracing::info!(pod = %key, attempt = attempt + 1, "setting up the pod's volumes again");
            self.start_or_wait(&mut pod, attempt);
            self.save(&pod.rec);
            self.pods().insert(key, pod);
        }
        tried
    }

    fn start(&self, pod: &mut RunningPod) -> anyhow::Result<()> {
        self.save(&pod.rec);
        // A namespace of this pod without a record (an agent before records, or a lost record):
        // its network is undone (CNI DEL without a previous result) before it is made again.
        if berth_nodenet::Netns::open_named(&pod.rec.netns).is_ok() {
            tracing::info!(pod = %pod.rec.key, "a namespace of this pod is left from before; undoing its network");
            self.undo_network(&mut pod.rec);
        }
        let dir = pod.rec.dir.clone();
        if dir.exists() {
            let left = mounts_under(&dir);
            anyhow::ensure!(left.is_empty(), "the pod's directory {} still has mounts: {left:?}", dir.display());
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing the pod's directory {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("making the pod's directory {}", dir.display()))?;

        let plans = volumes::plan(&pod.spec)?;
        if !plans.is_empty() {
            let csi = self.csi().ok_or_else(|| anyhow::anyhow!("volume {:?}: the pod has volumes and runner.csi_socket is not set", plans[0].name))?;
            let not_ready = |e: anyhow::Error| anyhow::Error::new(VolumeNotReady(format!("{e:#}")));
            let facts = csi.driver_facts().with_context(|| format!("the CSI driver at {}", self.settings.csi_socket.as_deref().unwrap_or(Path::new("")).display())).map_err(not_ready)?;
            for plan in &plans {
                self.setup_volume(&csi, &facts, pod, plan).map_err(not_ready)?;
            }
        }

        berth_nodenet::Netns::create(&pod.rec.netns).map_err(|e| anyhow::anyhow!("sandbox namespace {}: {e}", pod.rec.netns))?;
        pod.rec.network = true;
        self.save(&pod.rec);
        let conflist = first_conflist(&self.settings.cni_conf_dir)?;
        let netns = format!("/run/netns/{}", pod.rec.netns);
        let args = cni_args(&pod.spec);
        let inv = Invocation { command: "ADD", container_id: &pod.rec.container_id, netns: &netns, ifname: "eth0", args: &args };
        let result = libcni::add_list(self.settings.node_netns.as_deref(), &self.settings.cni_path, &conflist, &inv).map_err(|out| {
            let text = format!("CNI ADD failed: {}{}", out.stdout.trim(), out.stderr.trim());
            if cni_error_is_transient(&out.stdout) { anyhow::Error::new(Transient(text)) } else { anyhow::anyhow!(text) }
        })?;
        pod.rec.ip = result["ips"][0]["address"].as_str().unwrap_or_default().split('/').next().unwrap_or_default().to_string();
        pod.rec.cni_result = Some(result);
        self.save(&pod.rec);
        // Its NetworkPolicy is in force before its command starts. A new namespace has no
        // table, which is what a pod no policy selects needs: nft is not started for it.
        if self.is_selected(&pod.rec.key) {
            self.enforce(&pod.rec.key, &pod.rec.netns).map_err(|e| anyhow::anyhow!(e))?;
        }

        if !pod.spec.command.is_empty() {
            let logs = self.settings.state_dir.join("logs");
            std::fs::create_dir_all(&logs)?;
            let log = std::fs::OpenOptions::new().create(true).append(true).open(logs.join(format!("{}.log", pod.rec.netns)))?;
            // Its cgroup, entered before nsenter runs: all the pod forks is in it.
            let cgroup = self.cgroup(&pod.rec.netns).map(|cg| cg.create().map_err(|e| (cg, e)));
            let procs = match cgroup {
                Some(Ok(fd)) => Some(fd),
                Some(Err((cg, e))) => {
                    berth_daemon::limited!(warn, "pod-cgroup", pod = %pod.rec.key, cgroup = %cg.path.display(), error = %e, "cannot make the pod's cgroup; it runs without (no CPU measured)");
                    None
                }
                None => None,
            };
            let mut command = Command::new("nsenter");
            if let Some(fd) = procs {
                // SAFETY: the closure only writes to an open descriptor (async-signal-safe).
                unsafe {
                    command.pre_exec(move || berth_nodenet::cgroup::Cgroup::enter(&fd));
                }
            }
            let child = command
                .arg(format!("--net={netns}"))
                .arg("--")
                .args(&pod.spec.command)
                .current_dir(&dir)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()))
                .env("BERTH_POD_DIR", &dir)
                .env("BERTH_POD_NAMESPACE", &pod.spec.namespace)
                .env("BERTH_POD_NAME", &pod.spec.name)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                // Its own group: a signal to the agent's group does not reach it, and stopping it
                // reaches what it started.
                .process_group(0)
                .spawn()
                .map_err(|e| anyhow::anyhow!("starting {:?}: {e}", pod.spec.command))?;
            pod.rec.command = record::process_id(child.id() as i32);
            pod.child = Some(child);
        }
        Ok(())
    }

    fn staging_path(&self, volume_id: &str) -> PathBuf {
        self.settings.state_dir.join("staging").join(hashed_name("v", volume_id))
    }

    /// Obtains, attaches, stages and publishes one volume, recording each step before it is made.
    fn setup_volume(&self, csi: &Csi, facts: &volumes::DriverFacts, pod: &mut RunningPod, plan: &VolumePlan) -> anyhow::Result<()> {
        let name = plan.name.as_str();
        let target = pod.rec.dir.join(&plan.mount_path);
        check_no_links(&pod.rec.dir, &target).with_context(|| format!("volume {name:?}"))?;
        let (csi_name, existing) = match &plan.source {
            Source::Create(req) => (Some(req.name.clone()), None),
            Source::Existing(id) => (None, Some(id.clone())),
        };
        pod.rec.volumes.push(VolumeRecord { name: name.into(), csi_name, volume_id: existing, ephemeral: plan.ephemeral, node_id: facts.node_id.clone(), controller_published: false, staging: None, target: target.clone(), published: false });
        let i = pod.rec.volumes.len() - 1;
        self.save(&pod.rec);
        let (volume_id, context) = match &plan.source {
            Source::Create(req) => match csi.create(name, (**req).clone(), facts.topology.as_ref()) {
                Ok(v) => (v.volume_id, v.volume_context),
                Err(e) => {
                    if refused(e.code) {
                        // Refused: nothing was made, nothing to undo.
                        pod.rec.volumes.pop();
                    }
                    return Err(e.into());
                }
            },
            Source::Existing(id) => (id.clone(), Default::default()),
        };
        pod.rec.volumes[i].volume_id = Some(volume_id.clone());
        let mut publish_context = Default::default();
        if facts.controller_publish {
            pod.rec.volumes[i].controller_published = true;
            self.save(&pod.rec);
            let req = csi::ControllerPublishVolumeRequest { volume_id: volume_id.clone(), node_id: facts.node_id.clone(), volume_capability: Some(plan.capability.clone()), readonly: plan.read_only, volume_context: context.clone(), ..Default::default() };
            publish_context = csi.controller_publish(name, req)?;
        }
        let mut staging = String::new();
        if facts.stage_unstage {
            let path = self.staging_path(&volume_id);
            staging = path.display().to_string();
            pod.rec.volumes[i].staging = Some(path);
            self.save(&pod.rec);
            let req = csi::NodeStageVolumeRequest { volume_id: volume_id.clone(), publish_context: publish_context.clone(), staging_target_path: staging.clone(), volume_capability: Some(plan.capability.clone()), volume_context: context.clone(), ..Default::default() };
            csi.stage(name, req)?;
        }
        pod.rec.volumes[i].published = true;
        self.save(&pod.rec);
        let req = csi::NodePublishVolumeRequest {
            volume_id,
            publish_context,
            staging_target_path: staging,
            target_path: target.display().to_string(),
            volume_capability: Some(plan.capability.clone()),
            readonly: plan.read_only,
            volume_context: context,
            ..Default::default()
        };
        csi.publish(name, req)?;
        tracing::info!(pod = %pod.rec.key, volume = name, target = %target.display(), "volume published");
        Ok(())
    }

    /// Stops the pod's command: SIGTERM to its process group, SIGKILL after the grace period.
    fn stop_command(&self, pod: &mut RunningPod) {
        if let Some(mut child) = pod.child.take() {
            let pgid = child.id() as i32;
            if matches!(child.try_wait(), Ok(None)) {
                signal_group(pgid, libc::SIGTERM);
                let deadline = Instant::now() + STOP_GRACE;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            // Whatever of its group is left (the leader is still unreaped or its group lives on).
            signal_group(pgid, libc::SIGKILL);
            let _ = child.wait();
        } else if let Some(p) = pod.rec.command.filter(record::is_alive) {
            // Adopted: not a child; watched through /proc.
            let group = record::leads_group(&p);
            let send = |s| if group { signal_group(p.pid, s) } else {
                // SAFETY: kill(2) on a pid checked to be this pod's command (pid and start time).
                unsafe { libc::kill(p.pid, s); }
            };
            send(libc::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while record::is_alive(&p) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if record::is_alive(&p) {
                send(libc::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(2);
                while record::is_alive(&p) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        pod.rec.command = None;
    }

    /// CNI DEL with the ADD's result and the namespace deleted; each step tolerates what is gone.
    fn undo_network(&self, rec: &mut PodRecord) {
        if let Ok(conflist) = first_conflist(&self.settings.cni_conf_dir) {
            let netns = format!("/run/netns/{}", rec.netns);
            let args = cni_args(&record::decode_spec(&rec.spec).unwrap_or_default());
            let inv = Invocation { command: "DEL", container_id: &rec.container_id, netns: &netns, ifname: "eth0", args: &args };
            if let Err(out) = libcni::del_list(self.settings.node_netns.as_deref(), &self.settings.cni_path, &conflist, &inv, rec.cni_result.as_ref()) {
                tracing::warn!(pod = %rec.key, error = %out.stdout.trim(), "CNI DEL failed");
            }
        }
        let _ = berth_nodenet::Netns::delete(&rec.netns);
        rec.network = false;
        rec.cni_result = None;
        rec.ip.clear();
    }

    /// Whether another pod of this runner holds `volume_id` staged or attached.
    fn shared(&self, volume_id: &str) -> bool {
        self.pods().values().any(|p| p.rec.volumes.iter().any(|v| v.volume_id.as_deref() == Some(volume_id) && (v.staging.is_some() || v.controller_published)))
    }

    /// Undoes one volume as far as its record says it went; stops at the first step that fails.
    fn undo_volume(&self, csi: &Csi, spec: &pb::PodSpec, v: &mut VolumeRecord, delete_ephemeral: bool) -> Result<(), volumes::CallError> {
        let name = v.name.clone();
        if let Some(id) = v.volume_id.clone() {
            if v.published {
                csi.unpublish(&name, &id, &v.target)?;
                v.published = false;
            }
            let shared = self.shared(&id);
            if let Some(staging) = v.staging.clone() {
                if !shared {
                    csi.unstage(&name, &id, &staging)?;
                }
                v.staging = None;
            }
            if v.controller_published {
                if !shared {
                    csi.controller_unpublish(&name, &id, &v.node_id)?;
                }
                v.controller_published = false;
            }
        }
        if delete_ephemeral && v.ephemeral && v.csi_name.is_some() {
            let id = match v.volume_id.clone() {
                Some(id) => Some(id),
                // CreateVolume may have made it without the agent learning its ID: it is idempotent
                // by name, so asking again names it (a refusal means there is none).
                None => match volumes::plan(spec).ok().and_then(|ps| ps.into_iter().find(|p| p.name == name)).map(|p| p.source) {
                    Some(Source::Create(req)) => match csi.create(&name, *req, None) {
                        Ok(vol) => Some(vol.volume_id),
                        Err(e) if refused(e.code) => None,
                        Err(e) => return Err(e),
                    },
                    _ => None,
                },
            };
            if let Some(id) = id {
                csi.delete(&name, &id)?;
                tracing::info!(volume = %name, id, "ephemeral volume deleted");
            }
            v.ephemeral = false;
        }
        Ok(())
    }

    /// Undoes a pod: its command, network and volumes, in reverse order of set-up, and its
    /// directory. Returns what could not be undone (the record keeps it for another try).
    fn teardown(&self, pod: &mut RunningPod, delete_ephemeral: bool) -> Vec<String> {
        let mut left = Vec::new();
        self.stop_command(pod);
        // What the command left behind (a daemon it started in another group) goes with it.
        if let Some(cg) = self.cgroup(&pod.rec.netns)
            && let Err(e) = cg.remove()
        {
            left.push(e);
        }
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).remove(&pod.rec.key);
        if pod.rec.network || berth_nodenet::Netns::open_named(&pod.rec.netns).is_ok() {
            self.undo_network(&mut pod.rec);
        }
        self.save(&pod.rec);
        if !pod.rec.volumes.is_empty() {
            match self.csi() {
                None => left.push("volumes: runner.csi_socket is not set".to_string()),
                Some(csi) => {
                    for i in (0..pod.rec.volumes.len()).rev() {
                        let mut v = pod.rec.volumes[i].clone();
                        let r = self.undo_volume(&csi, &pod.spec, &mut v, delete_ephemeral);
                        pod.rec.volumes[i] = v;
                        self.save(&pod.rec);
                        if let Err(e) = r {
                            left.push(e.to_string());
                        }
                    }
                }
            }
            // What is fully undone is forgotten (a kept volume is found again by its name).
            pod.rec.volumes.retain(|v| v.published || v.staging.is_some() || v.controller_published || (delete_ephemeral && v.ephemeral && v.csi_name.is_some()));
            self.save(&pod.rec);
        }
        let dir = pod.rec.dir.clone();
        if dir.exists() {
            let mounts = mounts_under(&dir);
            if mounts.is_empty() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    left.push(format!("removing {}: {e}", dir.display()));
                }
            } else {
                left.push(format!("mounts remain under {}: {mounts:?}", dir.display()));
            }
        }
        left
    }

    fn forget(&self, rec: &PodRecord) {
        if let Err(e) = self.store.delete(&rec.netns) {
            tracing::warn!(pod = %rec.key, error = %e, "cannot delete the pod's record");
        }
    }

    /// Takes a NetworkPolicy update in and rewrites the tables of the pods it changes (every pod
    /// with a namespace for a full one). Blocking.
    pub fn apply_policy(&self, update: &pb::PolicyUpdate) {
        let Some(affected) = self.policy.lock().unwrap_or_else(|p| p.into_inner()).apply(update) else { return };
        let pods: Vec<(String, String)> = self.pods().values().filter(|p| p.rec.network && p.rec.cni_result.is_some()).map(|p| (p.rec.key.clone(), p.rec.netns.clone())).collect();
        for (key, netns) in pods {
            let wanted = match &affected {
                crate::netpol::Affected::All => true,
                crate::netpol::Affected::Pods(set) => set.contains(&key),
            };
            if wanted && let Err(e) = self.enforce(&key, &netns) {
                berth_daemon::limited!(error, "netpol-enforce", pod = %key, error = %e, "cannot enforce the pod's NetworkPolicy; its previous table stays");
            }
        }
    }

    fn cgroup(&self, netns: &str) -> Option<berth_nodenet::cgroup::Cgroup> {
        self.settings.cgroup_root.as_deref().map(|root| berth_nodenet::cgroup::Cgroup::at(root.join(netns)))
    }

    /// Samples a running pod and returns its rates since the previous sample.
    /// Within [`usage::MIN_WINDOW`] of the last sample, the last rates again.
    fn measure(&self, key: &str, netns: &str) -> Option<pb::PodUsage> {
        {
            let all = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            let last = all.get(key);
            if !usage::due(last, Instant::now()) {
                return last.and_then(|m| m.rates);
            }
        }
        let now = usage::Sample { at: Instant::now(), cpu: self.cgroup(netns).and_then(|cg| cg.cpu_used()), traffic: usage::pod_traffic(netns) };
        let mut all = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let rates = all.get(key).and_then(|before| usage::usage(&before.sample, &now));
        all.insert(key.to_string(), usage::Measured { sample: now, rates });
        rates
    }

    fn is_selected(&self, key: &str) -> bool {
        self.policy.lock().unwrap_or_else(|p| p.into_inner()).selections.contains_key(key)
    }

    /// The pods with a network, their namespace names and last usage samples, for the metrics.
    pub fn pod_rows(&self) -> Vec<crate::metrics::PodRow> {
        let rows: Vec<(String, String)> = self.pods().values().filter(|p| p.rec.network).map(|p| (p.rec.key.clone(), p.rec.netns.clone())).collect();
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        rows.into_iter().map(|(key, netns)| crate::metrics::PodRow { sample: usage.get(&key).map(|m| m.sample), key, netns }).collect()
    }

    fn enforce(&self, key: &str, netns: &str) -> Result<(), String> {
        let script = crate::netpol::pod_script(&self.policy.lock().unwrap_or_else(|p| p.into_inner()), key);
        crate::netpol::run_in_pod(netns, &script)
    }

    /// Removes a pod (`namespace/name`); unknown is success. What cannot be undone now is kept
    /// (reported Terminating) and retried when the scheduler asks again. Blocking.
    pub fn remove(&self, key: &str) {
        let Some(mut pod) = self.pods().remove(key) else { return };
        let failed_before = matches!(pod.rec.state, RecordState::Failed { .. });
        pod.rec.state = RecordState::Removing;
        self.save(&pod.rec);
        let left = self.teardown(&mut pod, true);
        if left.is_empty() {
            self.forget(&pod.rec);
            tracing::info!(pod = %key, "pod removed");
            return;
        }
        pod.leftovers = left.join("; ");
        tracing::warn!(pod = %key, left = %pod.leftovers, failed_before, "the pod's removal is not complete; retried when asked again");
        self.save(&pod.rec);
        self.pods().insert(key.to_string(), pod);
    }

    /// The pods, their status and what they hold, for the capacity report.
    pub fn statuses(&self) -> Vec<ReportedPod> {
        let mut pods = self.pods();
        pods.values_mut()
            .map(|p| {
                if p.rec.state == RecordState::Running {
                    // A command that ended: the pod succeeded or failed with it.
                    let ended = match p.child.as_mut() {
                        Some(child) => match child.try_wait() {
                            Ok(Some(status)) => Some((status.success(), format!("the command exited: {status}"))),
                            _ => None,
                        },
                        None => p.rec.command.filter(|c| p.stale.is_none() && !record::is_alive(c)).map(|c| (false, format!("the command (pid {}) ended while it was not this agent's child; its exit status is unknown", c.pid))),
                    };
                    if let Some((succeeded, message)) = ended {
                        if let Some(mut child) = p.child.take() {
                            let _ = child.wait();
                        }
                        p.rec.command = None;
                        p.rec.state = RecordState::Ended { succeeded, message };
                        if let Err(e) = self.store.save(&p.rec) {
                            berth_daemon::limited!(warn, "runner-record", pod = %p.rec.key, error = %e, "cannot write the pod's record");
                        }
                    }
                }
                let (phase, message) = match (&p.rec.state, &p.stale) {
                    (RecordState::Removing, _) => (pb::PodPhase::Terminating, format!("removing: {}", p.leftovers)),
                    (_, Some(why)) => (pb::PodPhase::Pending, format!("left from before the agent restarted and not adopted ({why}); made again while it is bound here")),
                    (RecordState::Starting, _) => (pb::PodPhase::Pending, String::new()),
                    (RecordState::Waiting { message, attempt, retry_at_ms }, _) => (pb::PodPhase::Pending, waiting_message(message, *attempt, *retry_at_ms)),
                    (RecordState::Running, _) => (pb::PodPhase::Running, String::new()),
                    (RecordState::Ended { succeeded: true, message }, _) => (pb::PodPhase::Succeeded, message.clone()),
                    (RecordState::Ended { message, .. }, _) | (RecordState::Failed { message }, _) => (pb::PodPhase::Failed, message.clone()),
                };
                let pod_ips = p.rec.cni_result.as_ref().and_then(|r| r["ips"].as_array()).map(|ips| ips.iter().filter_map(|i| i["address"].as_str()).map(|a| a.split('/').next().unwrap_or_default().to_string()).collect()).unwrap_or_default();
                let usage = (phase == pb::PodPhase::Running && p.rec.network).then(|| self.measure(&p.rec.key, &p.rec.netns)).flatten();
                let report = pb::PodReport { namespace: p.spec.namespace.clone(), name: p.spec.name.clone(), phase: phase as i32, pod_ip: p.rec.ip.clone(), message: berth_scheduler_client::bounded_message(&message), pod_ips, usage };
                ReportedPod { report, cpu_millicores: p.spec.cpu_millicores, memory_bytes: p.spec.memory_bytes }
            })
            .collect()
    }

    /// Stops every pod (the agent is shutting down its runner).
    pub fn stop_all(&self) {
        let keys: Vec<String> = self.pods().keys().cloned().collect();
        for k in keys {
            self.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_plugin_that_says_try_again_is_tried_again_and_nothing_else_is() {
        assert!(super::cni_error_is_transient(r#"{"cniVersion":"1.0.0","code":11,"msg":"metadata refused"}"#));
        assert!(super::cni_error_is_transient(" {\"code\":50,\"msg\":\"not ready\"}\n"));
        for other in [r#"{"code":7,"msg":"bad config"}"#, r#"{"code":4}"#, "not json", ""] {
            assert!(!super::cni_error_is_transient(other), "{other}");
        }
    }

    use super::*;

    #[test]
    fn volume_retries_back_off_exponentially_and_are_capped() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(5), Duration::from_secs(16));
        assert_eq!(retry_delay(8), Duration::from_secs(120));
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(120));
        let m = waiting_message("volume \"data\": NodePublishVolume: NotFound", 3, 1_796_644_805_000);
        assert!(m.contains("NotFound") && m.contains("3 time(s)") && m.contains("2026-12-07T"), "{m}");
    }

    #[test]
    fn cni_args_carry_the_spec() {
        let spec = pb::PodSpec { namespace: "default".into(), name: "web".into(), network_mode: pb::NetworkMode::Trunk as i32, security_group_ids: vec!["sg-1".into(), "sg-2".into()], egress_bandwidth: 20_000_000, ..Default::default() };
        let args = cni_args(&spec);
        assert_eq!(args, "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;BERTH_NETWORK_MODE=trunk;BERTH_SECURITY_GROUP_IDS=sg-1,sg-2;BERTH_EGRESS_BANDWIDTH=20000000");
        assert_eq!(netns_name("p", "default/web"), netns_name("p", "default/web"));
        assert_ne!(netns_name("p", "default/web"), netns_name("p", "default/db"));
    }

    #[test]
    fn volumes_are_published_only_inside_the_pods_directory() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("pod");
        std::fs::create_dir_all(pod.join("a")).unwrap();
        std::os::unix::fs::symlink("/etc", pod.join("evil")).unwrap();
        assert!(check_no_links(&pod, &pod.join("a/b")).is_ok());
        assert!(check_no_links(&pod, &pod.join("data")).is_ok());
        let e = check_no_links(&pod, &pod.join("evil/x")).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(check_no_links(&pod, Path::new("/etc/x")).is_err());
    }

    #[test]
    fn refused_calls_made_nothing() {
        assert!(refused(tonic::Code::InvalidArgument) && refused(tonic::Code::ResourceExhausted));
        assert!(!refused(tonic::Code::Unavailable) && !refused(tonic::Code::DeadlineExceeded) && !refused(tonic::Code::Internal));
    }
}
