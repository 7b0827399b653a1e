//! The control plane: one lock around the state, every change persisted before it is answered,
//! the planes converged after every change (before the change is answered), and asynchronous
//! transitions completed later.
//!
//! The planes converge under a lock of their own, not the state's: a converge can take a while (a
//! snapshot's or a restored disk's data copied where the file system cannot clone it), and calls
//! that only read the state, or change it, do not wait for it. Converges run one at a time, each to
//! the newest state, so the machine only moves forward.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_cloud::model::Credentials;
use serde_json::Value;

use crate::api::{self, ApiFailure, Ctx, Params, Pending};
use crate::auth::{Issued, Keys, NonceCache};
use crate::faults::Faults;
use crate::metrics::{ApiCounters, PlaneReport};
use crate::state::{Plane, State};

pub struct EngineConfig {
    pub state_dir: PathBuf,
    pub region_id: String,
    pub zones: Vec<String>,
    pub credentials: Credentials,
    pub planes: Vec<Arc<dyn Plane>>,
    pub faults: Faults,
    pub role: RoleConfig,
}

/// The account's RAM roles: `name`, the one an instance run without `RamRoleName` is given (as if
/// launched with it), and `others` that RunInstances may name; and how long the STS credentials
/// an instance's metadata service hands out stay valid.
#[derive(Debug, Clone)]
pub struct RoleConfig {
    pub name: String,
    pub others: Vec<String>,
    pub lifetime_secs: u64,
}

impl RoleConfig {
    /// Every role of the account.
    pub fn roles(&self) -> Vec<String> {
        std::iter::once(self.name.clone()).chain(self.others.iter().cloned()).collect()
    }
}

/// The role credentials an instance's metadata service serves now.
#[derive(Debug, Clone)]
pub struct RoleSession {
    pub access_key_id: String,
    pub issued: Issued,
    pub issued_at: u64,
}

pub struct Engine {
    state: Mutex<State>,
    /// Held while the planes converge; taken before the state's lock, never while holding it.
    converging: Mutex<()>,
    state_file: PathBuf,
    pub region_id: String,
    pub zones: Vec<String>,
    pub credentials: Credentials,
    planes: Vec<Arc<dyn Plane>>,
    pub faults: RwLock<Faults>,
    /// The faults the local cloud started with (its flags): what a PUT leaves out keeps.
    pub start_faults: Faults,
    pub nonces: Mutex<NonceCache>,
    /// The account's key and the STS keys issued to instances' RAM roles.
    pub keys: Mutex<Keys>,
    pub role: RoleConfig,
    role_sessions: Mutex<std::collections::HashMap<String, RoleSession>>,
    last_converge_error: Mutex<Option<String>>,
    entropy: String,
    /// What the API served, for `/metrics`.
    pub calls: ApiCounters,
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `state` to `path` atomically: a crash leaves the old or the new file, never a torn one.
pub fn save(path: &Path, state: &State) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub fn load(path: &Path) -> std::io::Result<Option<State>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Engine {
    /// Loads the state (or starts empty), finishes transitions a crash interrupted, converges.
    pub fn open(config: EngineConfig) -> std::io::Result<Arc<Engine>> {
        std::fs::create_dir_all(&config.state_dir)?;
        let state_file = config.state_dir.join("state.json");
        let mut state = load(&state_file)?.unwrap_or_default();
        if state.region_id.is_empty() {
            state.region_id = config.region_id.clone();
        }
        for p in api::unfinished(&state) {
            api::complete(&mut state, &p);
        }
        save(&state_file, &state)?;
        let engine = Arc::new(Engine {
            state: Mutex::new(state),
            converging: Mutex::new(()),
            state_file,
            region_id: config.region_id,
            zones: config.zones,
            keys: Mutex::new(Keys::new(config.credentials.clone())),
            role: config.role,
            role_sessions: Mutex::new(std::collections::HashMap::new()),
            credentials: config.credentials,
            planes: config.planes,
            start_faults: config.faults.clone(),
            faults: RwLock::new(config.faults),
            nonces: Mutex::new(NonceCache::default()),
            last_converge_error: Mutex::new(None),
            entropy: uuid::Uuid::new_v4().simple().to_string(),
            calls: ApiCounters::default(),
        });
        engine.converge();
        Ok(engine)
    }

    /// Converges every plane to the newest state, outside the state's lock; then marks failed the
    /// snapshots a plane could not copy.
    fn converge(&self) {
        let _converging = lock(&self.converging);
        let state = lock(&self.state).clone();
        let mut errors = Vec::new();
        let mut failed = Vec::new();
        for plane in &self.planes {
            if let Err(e) = plane.converge(&state) {
                tracing::error!(error = %e, "converging a plane failed");
                errors.push(e.to_string());
            }
            failed.extend(plane.failed_snapshots());
        }
        *lock(&self.last_converge_error) = if errors.is_empty() { None } else { Some(errors.join("; ")) };
        if !failed.is_empty() {
            let mut state = lock(&self.state);
            let mut marked = false;
            for id in &failed {
                if let Some(s) = state.snapshots.get_mut(id)
                    && s.status == berth_cloud::model::SnapshotStatus::Progressing
                {
                    tracing::error!(snapshot = %id, "the snapshot's data could not be copied: it is failed");
                    s.status = berth_cloud::model::SnapshotStatus::Failed;
                    marked = true;
                }
            }
            if marked && let Err(e) = save(&self.state_file, &state) {
                tracing::error!(error = %e, "persisting the state failed");
            }
        }
    }

    pub fn last_converge_error(&self) -> Option<String> {
        lock(&self.last_converge_error).clone()
    }

    /// What every plane reports to `/metrics`. Blocking (a plane may run a program): call from a
    /// blocking thread.
    pub fn plane_report(&self) -> PlaneReport {
        let mut report = PlaneReport::default();
        for plane in &self.planes {
            plane.report(&mut report);
        }
        report
    }

    /// The STS credentials of `instance_id`'s role at `now`: the same ones until half their
    /// lifetime is gone, then new ones (the old stay valid until they expire), as the real
    /// metadata service rotates them well before they expire.
    pub fn role_credentials(&self, instance_id: &str, now: u64) -> RoleSession {
        let mut sessions = lock(&self.role_sessions);
        let lifetime = self.role.lifetime_secs;
        if let Some(s) = sessions.get(instance_id)
            && now < s.issued_at + lifetime / 2
        {
            return s.clone();
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let session = RoleSession {
            access_key_id: format!("STS.{}", &id[..20]),
            issued: Issued {
                access_key_secret: uuid::Uuid::new_v4().simple().to_string(),
                security_token: format!("CAIS{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()),
                expires_at: now + lifetime,
            },
            issued_at: now,
        };
        lock(&self.keys).issue(session.access_key_id.clone(), session.issued.clone(), now);
        tracing::info!(instance = %instance_id, access_key_id = %session.access_key_id, role = %self.role_of(instance_id), "issued role credentials");
        sessions.insert(instance_id.to_string(), session.clone());
        session
    }

    /// The RAM role of `instance_id`: the one it was run with, else the default one.
    pub fn role_of(&self, instance_id: &str) -> String {
        lock(&self.state).instance_roles.get(instance_id).cloned().unwrap_or_else(|| self.role.name.clone())
    }

    pub fn snapshot(&self) -> State {
        lock(&self.state).clone()
    }

    fn ctx(&self) -> Ctx {
        let faults = self.faults.read().unwrap_or_else(|e| e.into_inner());
        Ctx {
            region_id: self.region_id.clone(),
            zones: self.zones.clone(),
            request_id: uuid::Uuid::new_v4().to_string().to_uppercase(),
            entropy: self.entropy.clone(),
            vswitch_ip_limit: faults.vswitch_ip_limit.clone().into_iter().collect(),
            now_secs: now_secs(),
            snapshot_quota: faults.snapshot_quota,
            disk_stock: faults.disk_stock.clone(),
            ram_roles: self.role.roles(),
        }
    }

    /// Carries out one authenticated action. Blocking: call from a blocking thread.
    pub fn call(self: &Arc<Self>, action: &str, params: &BTreeMap<String, String>) -> Result<(Value, String), ApiFailure> {
        let ctx = self.ctx();
        let mut state = lock(&self.state);
        let outcome = api::dispatch(&mut state, &ctx, action, &Params(params))?;
        if outcome.mutated {
            if let Err(e) = save(&self.state_file, &state) {
                return Err(ApiFailure::new(500, berth_cloud::error::code::INTERNAL_ERROR, format!("persisting the state failed: {e}")));
            }
            drop(state);
            self.converge();
        } else {
            drop(state);
        }
        for p in outcome.pending {
            self.schedule(p);
        }
        Ok((outcome.body, ctx.request_id))
    }

    /// Completes a transition after the attach delay; the planes converge before it is visible.
    fn schedule(self: &Arc<Self>, pending: Pending) {
        let delay = Duration::from_millis(self.faults.read().unwrap_or_else(|e| e.into_inner()).attach_delay_ms);
        let engine = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tokio::task::spawn_blocking(move || {
                let mut state = lock(&engine.state);
                if api::complete(&mut state, &pending) {
                    vpc_refresh(&mut state, &engine);
                    if let Err(e) = save(&engine.state_file, &state) {
                        tracing::error!(error = %e, "persisting the state failed");
                    }
                    drop(state);
                    engine.converge();
                }
            })
            .await;
        });
    }

    /// Removes everything the planes made on the machine.
    pub fn teardown(planes: &[Arc<dyn Plane>]) -> Result<(), String> {
        let errors: Vec<String> = planes.iter().filter_map(|p| p.teardown().err()).map(|e| e.to_string()).collect();
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }
}

fn vpc_refresh(state: &mut State, engine: &Engine) {
    let ctx = engine.ctx();
    api::refresh_available(state, &ctx);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::VolumePlane;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_whose_copy_fails_becomes_failed_and_stays_so() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults { attach_delay_ms: 20, ..Faults::default() };
        let config = EngineConfig {
            state_dir: dir.path().to_path_buf(),
            region_id: "cn-local".into(),
            zones: vec!["local-1a".into()],
            credentials: Credentials { access_key_id: "LTAItest".into(), access_key_secret: "s".into() },
            planes: vec![Arc::new(VolumePlane::new(dir.path()))],
            faults,
            role: RoleConfig { name: "r".into(), others: vec![], lifetime_secs: 3600 },
        };
        let engine = Engine::open(config).unwrap();
        let call = |action: &'static str, p: BTreeMap<String, String>| {
            let engine = engine.clone();
            async move { tokio::task::spawn_blocking(move || engine.call(action, &p)).await.unwrap() }
        };
        let (body, _) = call("CreateDisk", params(&[("ZoneId", "local-1a"), ("DiskCategory", "cloud_essd"), ("PerformanceLevel", "PL0"), ("Size", "1")])).await.unwrap();
        let disk_id = body["DiskId"].as_str().unwrap().to_string();
        // The disk's file made unreadable as a file: the snapshot's copy fails.
        let file = dir.path().join("disks").join(format!("{disk_id}.img"));
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        let (body, _) = call("CreateSnapshot", params(&[("DiskId", &disk_id)])).await.unwrap();
        let snapshot_id = body["SnapshotId"].as_str().unwrap().to_string();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let snap = engine.snapshot().snapshots[&snapshot_id].clone();
        assert_eq!(snap.status, berth_cloud::model::SnapshotStatus::Failed, "{snap:?}");
        let (body, _) = call("DescribeSnapshots", params(&[("DiskId", &disk_id)])).await.unwrap();
        assert_eq!(body["Snapshots"]["Snapshot"][0]["Status"], "failed", "{body}");
        // A failed snapshot restores nothing.
        let err = call("CreateDisk", params(&[("ZoneId", "local-1a"), ("DiskCategory", "cloud_essd"), ("PerformanceLevel", "PL0"), ("SnapshotId", &snapshot_id)])).await.unwrap_err();
        assert!(format!("{err:?}").contains("NotReady"), "{err:?}");
        // It stays failed after a restart too.
        drop(engine);
        let engine = Engine::open(EngineConfig {
            state_dir: dir.path().to_path_buf(),
            region_id: "cn-local".into(),
            zones: vec!["local-1a".into()],
            credentials: Credentials { access_key_id: "LTAItest".into(), access_key_secret: "s".into() },
            planes: vec![Arc::new(VolumePlane::new(dir.path()))],
            faults: Faults::default(),
            role: RoleConfig { name: "r".into(), others: vec![], lifetime_secs: 3600 },
        })
        .unwrap();
        assert_eq!(engine.snapshot().snapshots[&snapshot_id].status, berth_cloud::model::SnapshotStatus::Failed);
    }
}
