//! Executes the planners' decisions against the cloud. The scheduler needs only two calls of it,
//! so they sit behind [`NodeProvisioner`]; every [`Cloud`] is one, and tests use a recording fake.

use std::future::Future;

use berth_cloud::Cloud;
use berth_cloud::api::RunInstancesRequest;

use super::{CapacityType, NodePool, ScaleUpPlan};

pub trait NodeProvisioner: Send + Sync + 'static {
    /// Creates `plan.count` instances; returns their IDs. `client_token` makes a retry safe.
    fn create(&self, pool: &NodePool, plan: &ScaleUpPlan, client_token: &str) -> impl Future<Output = Result<Vec<String>, String>> + Send;
    fn delete(&self, instance_ids: &[String]) -> impl Future<Output = Result<(), String>> + Send;
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
            name: format!("berth-{}", pool.name),
            spot: pool.capacity == CapacityType::Spot,
            client_token: Some(client_token.to_string()),
        };
        self.cloud.run_instances(&req).await.map_err(|e| e.to_string())
    }

    async fn delete(&self, instance_ids: &[String]) -> Result<(), String> {
        self.cloud.delete_instances(instance_ids, true).await.map_err(|e| e.to_string())
    }
}
