//! Executes the planners' decisions against the cloud. The scheduler needs only two calls of it,
//! so they sit behind [`NodeProvisioner`]; every [`Cloud`] is one, and tests use a recording fake.

use std::future::Future;

use berth_cloud::Cloud;
use berth_cloud::api::{InstanceFilter, RunInstancesRequest, SystemDisk};

use super::{CapacityType, NodePool, ScaleUpPlan};

pub trait NodeProvisioner: Send + Sync + 'static {
    /// Creates `plan.count` instances; returns their IDs. `client_token` makes a retry safe.
    fn create(&self, pool: &NodePool, plan: &ScaleUpPlan, client_token: &str) -> impl Future<Output = Result<Vec<String>, String>> + Send;
    fn delete(&self, instance_ids: &[String]) -> impl Future<Output = Result<(), String>> + Send;
    /// The pool's instances that exist in the cloud now (a restarted scheduler counts them before
    /// it plans, as it does not keep nodes, only their reports). None known by default.
    fn list(&self, _pool: &NodePool) -> impl Future<Output = Result<Vec<PoolInstance>, String>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// An instance of a pool, as the cloud lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInstance {
    pub instance_id: String,
    pub instance_type: String,
    pub zone_id: String,
    pub vswitch_id: String,
}

/// The name every instance of `pool` is created with (and found by).
pub fn instance_name(pool: &NodePool) -> String {
    format!("berth-{}", pool.name)
}

/// Creates and deletes nodes through the cloud API (RunInstances, DeleteInstances).
pub struct CloudProvisioner<C> {
    pub cloud: C,
}

impl<C: Cloud + 'static> NodeProvisioner for CloudProvisioner<C> {
    async fn create(&self, pool: &NodePool, plan: &ScaleUpPlan, client_token: &str) -> Result<Vec<String>, String> {
        let req = RunInstancesRequest {
            instance_type: plan.instance_type.clone(),
            vswitch_id: plan.vswitch_id.clone(),
            security_group_ids: pool.security_group_ids.clone(),
            amount: plan.count,
            name: instance_name(pool),
            spot: pool.capacity == CapacityType::Spot,
            client_token: Some(client_token.to_string()),
            image: pool.boot_image(),
            system_disk: pool.system_disk_category.clone().map(|category| SystemDisk { category, size_gib: pool.system_disk_gib }),
            user_data: match &pool.user_data_file {
                Some(path) => Some(std::fs::read_to_string(path).map_err(|e| format!("pool {}: user_data_file {}: {e}", pool.name, path.display()))?),
                None => None,
            },
            tags: std::iter::once(("berth:pool".to_string(), pool.name.clone())).chain(pool.tags.iter().map(|(k, v)| (k.clone(), v.clone()))).collect(),
            ram_role_name: pool.ram_role_name.clone(),
        };
        self.cloud.run_instances(&req).await.map_err(|e| e.to_string())
    }

    async fn delete(&self, instance_ids: &[String]) -> Result<(), String> {
        self.cloud.delete_instances(instance_ids, true).await.map_err(|e| e.to_string())
    }

    async fn list(&self, pool: &NodePool) -> Result<Vec<PoolInstance>, String> {
        let mut out = Vec::new();
        for vsw in &pool.vswitches {
            let filter = InstanceFilter { vswitch_id: Some(vsw.id.clone()), ..Default::default() };
            let instances = self.cloud.describe_instances(&filter).await.map_err(|e| e.to_string())?;
            out.extend(instances.into_iter().filter(|i| i.name == instance_name(pool)).map(|i| PoolInstance { instance_id: i.id, instance_type: i.instance_type, zone_id: i.zone_id, vswitch_id: i.vswitch_id }));
        }
        Ok(out)
    }
}
