//! The local cloud's whole state: every resource, as the API answers it. The control plane mutates
//! it under one lock and persists it after each change; the planes converge the machine to it.

use std::collections::BTreeMap;

use berth_cloud::model::{Disk, Instance, NasFileSystem, NetworkInterface, SecurityGroup, Snapshot, VSwitch, Vpc};
use serde::{Deserialize, Serialize};

use crate::metrics::PlaneReport;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub region_id: String,
    pub vpcs: BTreeMap<String, Vpc>,
    /// `available_ip_address_count` is kept up to date by the control plane.
    pub vswitches: BTreeMap<String, VSwitch>,
    pub security_groups: BTreeMap<String, SecurityGroup>,
    pub instances: BTreeMap<String, Instance>,
    /// Every ENI, primary ENIs included. An ENI is on the wire once its status is `InUse`.
    pub enis: BTreeMap<String, NetworkInterface>,
    /// A disk is attached (and must have a block device) once its status is `InUse`.
    pub disks: BTreeMap<String, Disk>,
    pub file_systems: BTreeMap<String, NasFileSystem>,
    /// Disk snapshots; one is a file of the volume plane once it exists here.
    #[serde(default)]
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Idempotency: `Action/ClientToken` to the ID of the resource that request created.
    pub client_tokens: BTreeMap<String, String>,
    /// When each `client_tokens` key was first used, seconds since the Unix epoch: a token is
    /// honoured for `api::CLIENT_TOKEN_VALIDITY_SECS` from then.
    #[serde(default)]
    pub client_token_used_secs: BTreeMap<String, u64>,
    /// The RAM role each instance was run with (RunInstances `RamRoleName`); an instance not
    /// here has the local cloud's default role (`--ram-role`).
    #[serde(default)]
    pub instance_roles: BTreeMap<String, String>,
    /// Source of unique resource IDs and MAC addresses; only grows.
    pub next_serial: u64,
}

/// A data or storage plane that makes the machine match the state: namespaces, veths, routes and
/// filters for the network; loop devices and directories for storage. `converge` is idempotent and
/// is called at start (after a restart) and after every change of the state.
pub trait Plane: Send + Sync {
    fn converge(&self, state: &State) -> Result<(), PlaneError>;
    /// Removes everything the plane made on this machine (used by `berth-localcloud down`/tests).
    fn teardown(&self) -> Result<(), PlaneError>;
    /// Adds what the plane tells `/metrics`, read at each scrape (blocking; kept cheap and bounded).
    fn report(&self, _into: &mut PlaneReport) {}
    /// Snapshots whose data this plane failed to copy since it was last asked: the control plane
    /// marks them `failed` (they never become `accomplished`).
    fn failed_snapshots(&self) -> Vec<String> {
        Vec::new()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{plane} plane: {what}: {reason}")]
pub struct PlaneError {
    pub plane: &'static str,
    pub what: String,
    pub reason: String,
}
