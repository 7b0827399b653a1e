//! The guest supervisor: a thread of its own that makes the guests follow the Running instances.
//! It starts each guest's services in order, restarts failed ones with a back-off, records every
//! process under the guest's directory so a restarted local cloud adopts them, and stops deleted
//! instances' guests on threads of their own (stopping waits on processes; nothing here holds the
//! engine's lock).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_nodenet::Netns;
use serde::{Deserialize, Serialize};

use super::image::{GuestImage, GuestService, GuestVars, RenderedGuest};
use super::plan::{AfterExit, GuestChange, GuestPhase, after_exit, plan};
use super::process::{self, ServiceProcess};
use crate::metrics::GuestReport;

/// How often services are checked (exits, ready files, back-offs).
const TICK: Duration = Duration::from_millis(200);
/// The record of a guest's processes, in its directory.
pub const RECORD_FILE: &str = "guest.json";

/// What every guest of this local cloud shares.
#[derive(Debug, Clone)]
pub struct GuestContext {
    /// `<state-dir>/guests`, absolute: each guest's directory is `<guests_dir>/<instance-id>`.
    pub guests_dir: PathBuf,
    pub netns_prefix: String,
    pub region_id: String,
    pub cloud_endpoint: String,
    pub vpc_endpoint: String,
    pub nas_endpoint: String,
    pub oss_endpoint: String,
    pub credentials: PathBuf,
    pub nas_export_root: PathBuf,
    pub metadata_url: String,
}

/// What a guest learns about its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceFacts {
    pub instance_type: String,
    pub zone_id: String,
    pub vpc_id: String,
    pub vswitch_id: String,
    pub private_ip: String,
}

pub enum Msg {
    /// The instances that are Running now.
    Running(BTreeMap<String, InstanceFacts>),
    /// A guest finished stopping.
    Stopped(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRecord {
    pub instance_id: String,
    /// The instance's namespace: processes left in it are killed when the guest stops.
    pub netns: Option<PathBuf>,
    pub cleanup_netns_prefixes: Vec<String>,
    pub stop_grace_secs: u64,
    /// In image order.
    pub services: Vec<ServiceRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: String,
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`: tells the process apart from a later one with its pid.
    pub start_ticks: u64,
    /// Set once the service ended for good (`true`: it exited 0).
    #[serde(default)]
    pub finished: Option<bool>,
}

enum RunState {
    Waiting,
    Running { proc: ServiceProcess, since: Instant, ready_by: Option<Instant> },
    BackingOff(Instant),
    Finished(bool),
}

struct ServiceRun {
    state: RunState,
    /// Failed runs in a row (drives the back-off).
    failures: u32,
    /// Latched once the service was ready: the next one may start.
    ready: bool,
}

struct Guest {
    id: String,
    dir: PathBuf,
    spec: RenderedGuest,
    netns_path: PathBuf,
    /// Held open while the guest lives, so its processes can be found in it after the network
    /// plane removed its name.
    netns: Option<Netns>,
    services: Vec<ServiceRun>,
}

pub struct Supervisor {
    image: GuestImage,
    ctx: GuestContext,
    guests: BTreeMap<String, Guest>,
    found: BTreeMap<String, GuestRecord>,
    stopping: BTreeSet<String>,
    running: Option<BTreeMap<String, InstanceFacts>>,
    tx: Sender<Msg>,
    /// Restarts of failed services since the start, by service name; only grows.
    restarts: BTreeMap<String, u64>,
    /// Published after every round, for `/metrics`.
    report: Arc<Mutex<GuestReport>>,
}

fn write_record(dir: &Path, record: &GuestRecord) -> std::io::Result<()> {
    let tmp = dir.join(format!("{RECORD_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, dir.join(RECORD_FILE))
}

/// Every guest directory under `guests_dir` with its record; a directory without a readable record
/// (a crash before the first was written) gets an empty one, so it is still cleaned up.
pub fn load_records(guests_dir: &Path) -> BTreeMap<String, GuestRecord> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(guests_dir).into_iter().flatten().flatten() {
        let Some(id) = entry.file_name().to_str().map(str::to_string) else { continue };
        if !entry.path().is_dir() {
            continue;
        }
        let record = std::fs::read(entry.path().join(RECORD_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<GuestRecord>(&b).ok())
            .unwrap_or_else(|| GuestRecord { instance_id: id.clone(), stop_grace_secs: super::image::DEFAULT_STOP_GRACE_SECS, ..Default::default() });
        found.insert(id, record);
    }
    found
}

impl Supervisor {
    pub fn new(image: GuestImage, ctx: GuestContext, tx: Sender<Msg>) -> Supervisor {
        Supervisor {
            image,
            ctx,
            guests: BTreeMap::new(),
            found: BTreeMap::new(),
            stopping: BTreeSet::new(),
            running: None,
            tx,
            restarts: BTreeMap::new(),
            report: Arc::new(Mutex::new(GuestReport::default())),
        }
    }

    /// Where the supervisor publishes what it runs, read by `/metrics`.
    pub fn report_handle(&self) -> Arc<Mutex<GuestReport>> {
        self.report.clone()
    }

    fn publish(&self) {
        let mut services: BTreeMap<&'static str, u64> = ["waiting", "running", "backing_off", "exited", "failed"].into_iter().map(|s| (s, 0)).collect();
        for run in self.guests.values().flat_map(|g| &g.services) {
            let state = match run.state {
                RunState::Waiting => "waiting",
                RunState::Running { .. } => "running",
                RunState::BackingOff(_) => "backing_off",
                RunState::Finished(true) => "exited",
                RunState::Finished(false) => "failed",
            };
            *services.entry(state).or_default() += 1;
        }
        let report = GuestReport {
            guests: [("running", self.guests.len() as u64), ("stopping", self.stopping.len() as u64)].into(),
            services,
            restarts: self.restarts.clone(),
        };
        *self.report.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = report;
    }

    pub fn run(mut self, rx: Receiver<Msg>) {
        self.found = load_records(&self.ctx.guests_dir);
        loop {
            match rx.recv_timeout(TICK) {
                Ok(m) => self.handle(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while let Ok(m) = rx.try_recv() {
                self.handle(m);
            }
            self.reconcile();
            let now = Instant::now();
            for g in self.guests.values_mut() {
                g.tick(now, &mut self.restarts);
            }
            self.publish();
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Running(r) => self.running = Some(r),
            Msg::Stopped(id) => {
                self.stopping.remove(&id);
            }
        }
    }

    fn reconcile(&mut self) {
        // Nothing is started or stopped before the engine said which instances run.
        let Some(running) = self.running.clone() else { return };
        let mut live: BTreeMap<String, GuestPhase> = self.guests.keys().map(|id| (id.clone(), GuestPhase::Supervised)).collect();
        live.extend(self.found.keys().map(|id| (id.clone(), GuestPhase::Found)));
        live.extend(self.stopping.iter().map(|id| (id.clone(), GuestPhase::Stopping)));
        let ids: BTreeSet<String> = running.keys().cloned().collect();
        for change in plan(&ids, &live) {
            match change {
                GuestChange::Start(id) => {
                    let g = self.new_guest(&id, &running[&id]);
                    g.start();
                    self.guests.insert(id, g);
                }
                GuestChange::Adopt(id) => {
                    let record = self.found.remove(&id).unwrap_or_default();
                    let mut g = self.new_guest(&id, &running[&id]);
                    g.adopt(&record, &mut self.restarts);
                    self.guests.insert(id, g);
                }
                GuestChange::Stop(id) => self.stop(&id),
            }
        }
    }

    fn vars(&self, id: &str, facts: &InstanceFacts) -> GuestVars {
        GuestVars {
            instance_id: id.to_string(),
            instance_type: facts.instance_type.clone(),
            zone_id: facts.zone_id.clone(),
            region_id: self.ctx.region_id.clone(),
            vpc_id: facts.vpc_id.clone(),
            vswitch_id: facts.vswitch_id.clone(),
            private_ip: facts.private_ip.clone(),
            netns: self.netns_path(id).display().to_string(),
            dir: self.ctx.guests_dir.join(id).display().to_string(),
            cloud_endpoint: self.ctx.cloud_endpoint.clone(),
            vpc_endpoint: self.ctx.vpc_endpoint.clone(),
            nas_endpoint: self.ctx.nas_endpoint.clone(),
            oss_endpoint: self.ctx.oss_endpoint.clone(),
            credentials: self.ctx.credentials.display().to_string(),
            nas_export_root: self.ctx.nas_export_root.display().to_string(),
            metadata_url: self.ctx.metadata_url.clone(),
        }
    }

    fn netns_path(&self, id: &str) -> PathBuf {
        crate::vpcnet::VpcNet::new(&self.ctx.netns_prefix).instance_netns_path(id)
    }

    fn new_guest(&self, id: &str, facts: &InstanceFacts) -> Guest {
        let spec = self.image.render(&self.vars(id, facts)).unwrap_or_else(|(field, e)| {
            // Checked when the image was loaded; only a value could break it, and none can.
            tracing::error!(instance = %id, %field, error = %e, "cannot render the guest image; the guest runs nothing");
            RenderedGuest { services: Vec::new(), cleanup_netns_prefixes: Vec::new(), stop_grace_secs: self.image.stop_grace_secs }
        });
        let netns_path = self.netns_path(id);
        let netns = Netns::open(&netns_path).map_err(|e| tracing::warn!(instance = %id, error = %e, "cannot open the instance's namespace")).ok();
        let services = spec.services.iter().map(|_| ServiceRun { state: RunState::Waiting, failures: 0, ready: false }).collect();
        Guest { id: id.to_string(), dir: self.ctx.guests_dir.join(id), spec, netns_path, netns, services }
    }

    fn stop(&mut self, id: &str) {
        let job = if let Some(g) = self.guests.remove(id) {
            g.into_stop_job()
        } else if let Some(record) = self.found.remove(id) {
            StopJob::from_record(&record, self.ctx.guests_dir.join(id))
        } else {
            return;
        };
        self.stopping.insert(id.to_string());
        let tx = self.tx.clone();
        let id = id.to_string();
        let spawned = std::thread::Builder::new().name("berth-guest-stop".into()).spawn(move || {
            // Logged by the job; the guest is forgotten either way (its record is gone or kept).
            let _ = job.run();
            let _ = tx.send(Msg::Stopped(id));
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a thread to stop a guest");
        }
    }
}

impl Guest {
    fn record(&self) -> GuestRecord {
        let services = self
            .spec
            .services
            .iter()
            .zip(&self.services)
            .filter_map(|(spec, run)| match &run.state {
                RunState::Running { proc, .. } => Some(ServiceRecord { name: spec.name.clone(), pid: proc.pid, start_ticks: proc.start_ticks, finished: None }),
                RunState::Finished(ok) => Some(ServiceRecord { name: spec.name.clone(), pid: 0, start_ticks: 0, finished: Some(*ok) }),
                RunState::Waiting | RunState::BackingOff(_) => None,
            })
            .collect();
        GuestRecord {
            instance_id: self.id.clone(),
            netns: Some(self.netns_path.clone()),
            cleanup_netns_prefixes: self.spec.cleanup_netns_prefixes.clone(),
            stop_grace_secs: self.spec.stop_grace_secs,
            services,
        }
    }

    fn save(&self) {
        if let Err(e) = write_record(&self.dir, &self.record()) {
            tracing::error!(instance = %self.id, error = %e, "cannot write the guest's record; a restarted local cloud may start its services twice");
        }
    }

    fn start(&self) {
        use std::os::unix::fs::DirBuilderExt as _;
        if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir) {
            tracing::error!(instance = %self.id, dir = %self.dir.display(), error = %e, "cannot make the guest's directory");
        }
        tracing::info!(instance = %self.id, services = self.spec.services.len(), "starting the guest");
        self.save();
    }

    /// Takes over the services a record names: live ones are kept as they are, dead ones are
    /// handled as exits with an unknown status.
    fn adopt(&mut self, record: &GuestRecord, restarts: &mut BTreeMap<String, u64>) {
        let now = Instant::now();
        for (spec, run) in self.spec.services.iter().zip(self.services.iter_mut()) {
            let Some(r) = record.services.iter().find(|r| r.name == spec.name) else { continue };
            if let Some(ok) = r.finished {
                run.state = RunState::Finished(ok);
                run.ready = ok;
            } else if process::is_alive(r.pid, r.start_ticks) {
                tracing::info!(instance = %self.id, service = %spec.name, pid = r.pid, "adopted a running guest service");
                run.state = RunState::Running { proc: ServiceProcess { pid: r.pid, start_ticks: r.start_ticks, child: None }, since: now, ready_by: None };
                run.ready = is_ready(spec);
            } else {
                tracing::warn!(instance = %self.id, service = %spec.name, pid = r.pid, "a guest service died while the local cloud was down");
                run.ready = is_ready(spec);
                let (next, failures) = after_exit(spec.restart, None, Duration::ZERO, 0);
                run.failures = failures;
                run.state = match next {
                    AfterExit::Restart(_) => {
                        *restarts.entry(spec.name.clone()).or_default() += 1;
                        RunState::BackingOff(now)
                    }
                    AfterExit::Finished { ok } => RunState::Finished(ok),
                };
            }
        }
        self.save();
    }

    fn tick(&mut self, now: Instant, restarts: &mut BTreeMap<String, u64>) {
        let mut changed = false;
        for i in 0..self.services.len() {
            let gate = i == 0 || self.services[i - 1].ready;
            let spec = &self.spec.services[i];
            let run = &mut self.services[i];
            match &mut run.state {
                RunState::Waiting if gate => {
                    launch(&self.id, &self.dir, spec, run, now, restarts);
                    changed = true;
                }
                RunState::BackingOff(until) if now >= *until => {
                    launch(&self.id, &self.dir, spec, run, now, restarts);
                    changed = true;
                }
                RunState::Running { proc, since, ready_by } => {
                    if let Some(success) = process::exit_of(proc) {
                        let (next, failures) = after_exit(spec.restart, success, now.saturating_duration_since(*since), run.failures);
                        run.failures = failures;
                        run.state = match next {
                            AfterExit::Restart(after) => {
                                tracing::warn!(instance = %self.id, service = %spec.name, ?success, restart_in_ms = after.as_millis() as u64, "a guest service exited; restarting it");
                                *restarts.entry(spec.name.clone()).or_default() += 1;
                                RunState::BackingOff(now + after)
                            }
                            AfterExit::Finished { ok } => {
                                tracing::info!(instance = %self.id, service = %spec.name, ok, "a guest service exited for good");
                                run.ready |= ok;
                                RunState::Finished(ok)
                            }
                        };
                        changed = true;
                    } else if !run.ready {
                        if is_ready(spec) {
                            tracing::info!(instance = %self.id, service = %spec.name, "a guest service is ready");
                            run.ready = true;
                        } else if ready_by.is_some_and(|by| now >= by) {
                            tracing::warn!(instance = %self.id, service = %spec.name, timeout_secs = spec.ready_timeout_secs, file = ?spec.ready_file, "a guest service was not ready in time; killing it");
                            *ready_by = None;
                            process::kill_group(proc);
                        }
                    }
                }
                RunState::Waiting | RunState::BackingOff(_) | RunState::Finished(_) => {}
            }
        }
        if changed {
            self.save();
        }
    }

    fn into_stop_job(self) -> StopJob {
        let services = self
            .services
            .into_iter()
            .rev()
            .filter_map(|run| match run.state {
                RunState::Running { proc, .. } => Some(proc),
                _ => None,
            })
            .collect();
        StopJob { id: self.id, dir: self.dir, services, grace: Duration::from_secs(self.spec.stop_grace_secs), prefixes: self.spec.cleanup_netns_prefixes, netns: self.netns }
    }
}

fn is_ready(spec: &GuestService) -> bool {
    spec.ready_file.as_deref().is_none_or(|f| Path::new(f).exists())
}

fn launch(id: &str, dir: &Path, spec: &GuestService, run: &mut ServiceRun, now: Instant, restarts: &mut BTreeMap<String, u64>) {
    if !run.ready
        && let Some(f) = &spec.ready_file
    {
        // A file left from an earlier run would say ready before this one is.
        let _ = std::fs::remove_file(f);
    }
    match process::spawn(spec, dir) {
        Ok(proc) => {
            tracing::info!(instance = %id, service = %spec.name, pid = proc.pid, "started a guest service");
            let ready_by = spec.ready_file.as_ref().map(|_| now + Duration::from_secs(spec.ready_timeout_secs));
            // Without a ready file, started is ready: the next service must not depend on
            // whether a quick exit is seen before a tick sees it running.
            run.ready |= spec.ready_file.is_none();
            run.state = RunState::Running { proc, since: now, ready_by };
        }
        Err(e) => {
            let (next, failures) = after_exit(spec.restart, Some(false), Duration::ZERO, run.failures);
            run.failures = failures;
            tracing::error!(instance = %id, service = %spec.name, error = %e, "cannot start a guest service");
            run.state = match next {
                AfterExit::Restart(after) => {
                    *restarts.entry(spec.name.clone()).or_default() += 1;
                    RunState::BackingOff(now + after)
                }
                AfterExit::Finished { ok } => RunState::Finished(ok),
            };
        }
    }
}

/// Everything needed to stop one guest, apart from the supervisor.
pub struct StopJob {
    id: String,
    dir: PathBuf,
    /// In stop order (the image's order reversed).
    services: Vec<ServiceProcess>,
    grace: Duration,
    prefixes: Vec<String>,
    netns: Option<Netns>,
}

impl StopJob {
    pub fn from_record(record: &GuestRecord, dir: PathBuf) -> StopJob {
        let services = record.services.iter().rev().filter(|r| r.finished.is_none() && r.pid > 0).map(|r| ServiceProcess { pid: r.pid, start_ticks: r.start_ticks, child: None }).collect();
        let netns = record.netns.as_deref().filter(|p| p.exists()).and_then(|p| Netns::open(p).ok());
        StopJob { id: record.instance_id.clone(), dir, services, grace: Duration::from_secs(record.stop_grace_secs), prefixes: record.cleanup_netns_prefixes.clone(), netns }
    }

    /// Stops the services (SIGTERM to each group in reverse order, the grace period, SIGKILL),
    /// then cleans up: stray processes of the guest, its namespaces and what runs in them, every
    /// mount under its directory, the directory. Errors are logged and the rest still done.
    pub fn run(mut self) -> Result<(), String> {
        tracing::info!(instance = %self.id, "stopping the guest");
        let mut errors = Vec::new();
        for p in &mut self.services {
            if let Err(e) = process::stop_service(p, self.grace) {
                errors.push(e);
            }
        }
        let dir = self.dir.clone();
        if let Err(e) = process::kill_all(|| process::marked_processes(&dir)) {
            errors.push(format!("the guest's processes: {e}"));
        }
        for name in process::netns_with_prefixes(&self.prefixes) {
            if let Ok(ino) = Netns::open_named(&name).and_then(|ns| ns.id())
                && let Err(e) = process::kill_all(|| process::processes_in_netns(ino))
            {
                errors.push(format!("processes in namespace {name}: {e}"));
            }
            if let Err(e) = Netns::delete(&name) {
                errors.push(format!("namespace {name}: {e}"));
            }
        }
        if let Some(ino) = self.netns.as_ref().and_then(|ns| ns.id().ok())
            && let Err(e) = process::kill_all(|| process::processes_in_netns(ino))
        {
            errors.push(format!("processes in the instance's namespace: {e}"));
        }
        drop(self.netns.take());
        let left = process::unmount_under(&self.dir);
        if left.is_empty() {
            match std::fs::remove_dir_all(&self.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("removing {}: {e}", self.dir.display())),
            }
        } else {
            // Never remove a directory with a mount below it: that would delete the mounted data.
            errors.push(format!("{} keeps mounts {left:?}; left in place", self.dir.display()));
        }
        if errors.is_empty() {
            tracing::info!(instance = %self.id, "the guest is stopped and cleaned up");
            Ok(())
        } else {
            let joined = errors.join("; ");
            tracing::error!(instance = %self.id, errors = %joined, "stopping the guest left things behind");
            Err(joined)
        }
    }
}

/// Stops every guest recorded under `guests_dir`, in parallel (`berth-localcloud down`).
pub fn stop_recorded(guests_dir: &Path) -> Result<(), String> {
    let jobs: Vec<StopJob> = load_records(guests_dir).into_iter().map(|(id, r)| StopJob::from_record(&r, guests_dir.join(id))).collect();
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs.into_iter().map(|job| s.spawn(move || job.run())).collect();
        handles.into_iter().filter_map(|h| h.join().unwrap_or_else(|_| Err("a stop thread panicked".into())).err()).collect()
    });
    let _ = std::fs::remove_dir(guests_dir);
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}
