//! Guests: what runs "inside" a local-cloud instance, as a VM runs the software of its image.
//! With `serve --image FILE`, every Running instance gets a guest — the image's services started
//! in order (a Berth node: its agent and CSI driver) — and losing the instance stops it and
//! removes what it left: processes, namespaces, mounts, its directory `<state-dir>/guests/<id>`.
//!
//! - [`image`]: the image file (strict TOML, per-instance placeholders); pure.
//! - [`plan`]: which guests to start, adopt or stop; what follows a service's exit; pure.
//! - [`process`]: spawning, signalling and finding processes, unmounting.
//! - [`supervisor`]: the thread that carries it out.

pub mod image;
pub mod plan;
pub mod process;
pub mod supervisor;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};

use berth_cloud::model::InstanceStatus;

use crate::metrics::{GuestReport, PlaneReport};
use crate::state::{Plane, PlaneError, State};
use image::GuestImage;
use supervisor::{GuestContext, InstanceFacts, Msg, Supervisor};

/// Where the guests' directories are under a state directory.
pub fn guests_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("guests")
}

/// The guest plane: tells the supervisor which instances run (never waits on it), and stops every
/// recorded guest on teardown.
pub struct GuestPlane {
    supervisor: Option<Sender<Msg>>,
    guests_dir: PathBuf,
    /// What the supervisor runs, as it last published it.
    report: Option<Arc<Mutex<GuestReport>>>,
}

fn fail(what: impl Into<String>, reason: impl ToString) -> PlaneError {
    PlaneError { plane: "guest", what: what.into(), reason: reason.to_string() }
}

impl GuestPlane {
    /// Starts the supervisor thread of `image`.
    pub fn start(image: GuestImage, ctx: GuestContext) -> std::io::Result<GuestPlane> {
        std::fs::create_dir_all(&ctx.guests_dir)?;
        let guests_dir = ctx.guests_dir.clone();
        let (tx, rx) = channel();
        let supervisor = Supervisor::new(image, ctx, tx.clone());
        let report = supervisor.report_handle();
        std::thread::Builder::new().name("berth-guests".into()).spawn(move || supervisor.run(rx))?;
        Ok(GuestPlane { supervisor: Some(tx), guests_dir, report: Some(report) })
    }

    /// A plane that starts nothing and only tears down the guests recorded under `state_dir`
    /// (`berth-localcloud down`, or `serve` without an image).
    pub fn recorded_only(state_dir: &Path) -> GuestPlane {
        GuestPlane { supervisor: None, guests_dir: guests_dir(state_dir), report: None }
    }
}

impl Plane for GuestPlane {
    fn converge(&self, state: &State) -> Result<(), PlaneError> {
        let Some(tx) = &self.supervisor else { return Ok(()) };
        let running: BTreeMap<String, InstanceFacts> = state
            .instances
            .values()
            .filter(|i| i.status == InstanceStatus::Running)
            .map(|i| {
                let facts = InstanceFacts {
                    instance_type: i.instance_type.clone(),
                    zone_id: i.zone_id.clone(),
                    vpc_id: i.vpc_id.clone(),
                    vswitch_id: i.vswitch_id.clone(),
                    private_ip: i.primary_ip.to_string(),
                };
                (i.id.clone(), facts)
            })
            .collect();
        tx.send(Msg::Running(running)).map_err(|_| fail("supervisor", "its thread has ended; see the log"))
    }

    fn teardown(&self) -> Result<(), PlaneError> {
        supervisor::stop_recorded(&self.guests_dir).map_err(|e| fail("teardown", e))
    }

    fn report(&self, into: &mut PlaneReport) {
        into.guests = self.report.as_ref().map(|r| r.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone());
    }
}
