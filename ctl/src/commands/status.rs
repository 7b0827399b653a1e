//! `berthctl status`: what the local cloud holds and which scheduler replica leads, as tables or
//! JSON.

use berth_cloud::api::{EniFilter, InstanceFilter};
use berth_cloud::model::EniKind;
use berth_cloud::{Cloud, HttpCloud};
use clap::Args;

use crate::Output;
use crate::cluster::{self, ClusterPaths};
use crate::table::Table;

#[derive(Args)]
pub struct Status {
    #[command(flatten)]
    paths: ClusterPaths,
}

impl Status {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let cloud = cluster::connect(&self.paths)?;
        print(&cloud, &self.paths, output).await
    }
}

pub async fn print(cloud: &HttpCloud, paths: &ClusterPaths, output: Output) -> anyhow::Result<()> {
    let vpcs = cloud.describe_vpcs(None).await?;
    let vswitches = cloud.describe_vswitches(None, None).await?;
    let instances = cloud.describe_instances(&InstanceFilter::default()).await?;
    let enis = cloud.describe_network_interfaces(&EniFilter::default()).await?;
    let types = cloud.describe_instance_types(&[]).await?;
    let replicas = schedulers(paths).await;
    // `up --ha`: the etcd members under the replicas, and whether each answers healthy.
    let etcd: Vec<(String, String, bool)> = crate::ha::HaLayout::load(paths).map(|l| l.etcd.iter().map(|m| (m.name.clone(), m.client_url(), m.healthy())).collect()).unwrap_or_default();

    if output == Output::Json {
        let schedulers: Vec<_> = replicas.iter().map(|(e, s)| serde_json::json!({ "endpoint": e, "leads": s.as_ref().ok().map(|s| s.leads), "leader": s.as_ref().ok().map(|s| s.leader.clone()), "error": s.as_ref().err() })).collect();
        let etcd: Vec<_> = etcd.iter().map(|(name, endpoint, healthy)| serde_json::json!({ "name": name, "endpoint": endpoint, "healthy": healthy })).collect();
        let doc = serde_json::json!({ "vpcs": vpcs, "vswitches": vswitches, "instances": instances, "enis": enis, "schedulers": schedulers, "etcd": etcd });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }

    let mut t = Table::new("SCHEDULERS", &["ENDPOINT", "ROLE", "LEADER"]);
    for (e, s) in &replicas {
        match s {
            Ok(s) => t.row(vec![e.clone(), if s.leads { "leader".into() } else { "follower".into() }, s.leader.clone()]),
            Err(why) => t.row(vec![e.clone(), "unreachable".into(), why.clone()]),
        }
    }
    println!("{}", t.render());
    if !etcd.is_empty() {
        let mut t = Table::new("ETCD", &["MEMBER", "ENDPOINT", "HEALTH"]);
        for (name, endpoint, healthy) in &etcd {
            t.row(vec![name.clone(), endpoint.clone(), if *healthy { "healthy".into() } else { "unhealthy".into() }]);
        }
        println!("{}", t.render());
    }

    let mut t = Table::new("VPCS", &["ID", "NAME", "CIDR"]);
    for v in &vpcs {
        t.row(vec![v.id.clone(), v.name.clone(), v.cidr_block.to_string()]);
    }
    println!("{}", t.render());

    let mut t = Table::new("VSWITCHES", &["ID", "VPC", "ZONE", "CIDR", "FREE IPS"]);
    for v in &vswitches {
        t.row(vec![v.id.clone(), v.vpc_id.clone(), v.zone_id.clone(), v.cidr_block.to_string(), v.available_ip_address_count.to_string()]);
    }
    println!("{}", t.render());

    let mut t = Table::new("INSTANCES", &["ID", "NAME", "TYPE", "ZONE", "STATUS", "PRIMARY IP", "ENIS", "MAX PODS (SHARED)", "NETNS"]);
    for i in &instances {
        let attached = enis.iter().filter(|e| e.instance_id.as_deref() == Some(&i.id) && e.kind != EniKind::Member).count();
        let quota = types.iter().find(|ty| ty.id == i.instance_type);
        t.row(vec![
            i.id.clone(),
            i.name.clone(),
            i.instance_type.clone(),
            i.zone_id.clone(),
            i.status.as_str().to_string(),
            i.primary_ip.to_string(),
            format!("{attached}/{}", quota.map(|q| q.eni_quota).unwrap_or_default()),
            quota.map(|q| q.max_shared_eni_pods().to_string()).unwrap_or_default(),
            paths.node_netns(&i.id).display().to_string(),
        ]);
    }
    println!("{}", t.render());

    let mut t = Table::new("ENIS", &["ID", "KIND", "STATUS", "INSTANCE", "MAC", "PRIMARY IP", "SECONDARY IPS"]);
    for e in &enis {
        let secondaries: Vec<String> = e.secondary_ips.iter().map(ToString::to_string).collect();
        t.row(vec![
            e.id.clone(),
            e.kind.as_str().to_string(),
            e.status.as_str().to_string(),
            e.instance_id.clone().unwrap_or_default(),
            e.mac.clone(),
            e.primary_ip.to_string(),
            secondaries.join(","),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

/// What each scheduler replica of `--scheduler-listen` says of the leader.
async fn schedulers(paths: &ClusterPaths) -> Vec<(String, Result<berth_proto::cluster::v1::LeaderStatus, String>)> {
    let mut out = Vec::new();
    for e in paths.scheduler_endpoints() {
        let status = async {
            let channel = tonic::transport::Channel::from_shared(e.clone()).map_err(|err| err.to_string())?.connect_timeout(std::time::Duration::from_millis(500)).connect().await.map_err(|err| err.to_string())?;
            let mut c = berth_proto::cluster::v1::scheduler_client::SchedulerClient::new(channel);
            c.get_leader(berth_proto::cluster::v1::GetLeaderRequest {}).await.map(|r| r.into_inner()).map_err(|s| s.message().to_string())
        }
        .await;
        out.push((e, status));
    }
    out
}
