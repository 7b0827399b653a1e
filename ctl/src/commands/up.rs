//! `berthctl up`: the local cloud with a sample VPC and two instances (the nodes of the cluster), a
//! `berth-agent` on each, and demo pods networked by the `berth` CNI plugin.

use std::time::Duration;

use anyhow::Context as _;
use berth_cloud::api::{CreateVSwitchRequest, RunInstancesRequest};
use berth_cloud::model::{Direction, InstanceStatus, IpProtocol, Policy, SecurityGroupRule};
use berth_cloud::{Cloud, wait};
use clap::Args;

use crate::Output;
use crate::cluster::{self, ClusterPaths};
use crate::commands::{pod, status};

#[derive(Args)]
pub struct Up {
    #[command(flatten)]
    paths: ClusterPaths,
}

/// The sample cluster: every create carries a fixed ClientToken, so `up` run twice makes nothing twice.
const VPC_CIDR: &str = "10.88.0.0/16";
const VSWITCHES: &[(&str, &str, &str)] = &[("local-1a", "10.88.1.0/24", "nodes-a"), ("local-1b", "10.88.2.0/24", "nodes-b")];
const NODES: &[(&str, usize)] = &[("ecs.g7.large", 0), ("ecs.c7.xlarge", 1)];

impl Up {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let paths = &self.paths;
        progress(output, "starting the local cloud");
        cluster::ensure_credentials(paths)?;
        cluster::start_localcloud(paths)?;
        let endpoint = cluster::wait_for_endpoint(paths, Duration::from_secs(30))?;
        let cloud = cluster::client(paths, &endpoint)?;

        progress(output, "creating the sample VPC, vSwitches and security group");
        let vpc = cloud.create_vpc(VPC_CIDR, "berth-sample", false, Some("berth-sample-vpc")).await.context("CreateVpc")?;
        let mut vswitches = Vec::new();
        for (zone, cidr, name) in VSWITCHES {
            let req = CreateVSwitchRequest {
                vpc_id: vpc.clone(),
                zone_id: zone.to_string(),
                cidr_block: cidr.to_string(),
                ipv6_block_index: None,
                name: name.to_string(),
                client_token: Some(format!("berth-sample-{name}")),
            };
            vswitches.push(cloud.create_vswitch(&req).await.context("CreateVSwitch")?);
        }
        let sg = cloud.create_security_group(&vpc, "berth-sample", Some("berth-sample-sg")).await.context("CreateSecurityGroup")?;
        let from_vpc = SecurityGroupRule {
            direction: Direction::Ingress,
            protocol: IpProtocol::All,
            ports: None,
            peer_cidr: VPC_CIDR.parse()?,
            policy: Policy::Accept,
            priority: 1,
        };
        let existing = cloud.describe_security_group(&sg).await?;
        if !existing.rules.contains(&from_vpc) {
            cloud.authorize_security_group(&sg, &from_vpc).await.context("AuthorizeSecurityGroup")?;
        }

        progress(output, "starting two instances");
        let mut instances = Vec::new();
        for (i, (instance_type, vsw)) in NODES.iter().enumerate() {
            let req = RunInstancesRequest {
                instance_type: instance_type.to_string(),
                vswitch_id: vswitches[*vsw].clone(),
                security_group_ids: vec![sg.clone()],
                amount: 1,
                name: format!("node-{}", i + 1),
                spot: false,
                client_token: Some(format!("berth-sample-node-{}", i + 1)),
            };
            instances.extend(cloud.run_instances(&req).await.context("RunInstances")?);
        }
        for id in &instances {
            wait::instance_status(&cloud, id, InstanceStatus::Running, Duration::from_secs(60)).await?;
        }

        progress(output, "starting a berth-agent for each instance");
        for (i, id) in instances.iter().enumerate() {
            cluster::start_agent(paths, &endpoint, id, i)?;
        }
        for id in &instances {
            cluster::wait_for_agent(paths, id, Duration::from_secs(60))?;
        }
        if pod::list(paths).is_empty() {
            progress(output, "adding demo pods through the berth CNI plugin: a shared pod on each node, an exclusive and a trunk pod on the second");
            let demos = [(0, "shared"), (1, "shared"), (1, "exclusive"), (1, "trunk")];
            for (n, (node, mode)) in demos.iter().enumerate() {
                pod::add(paths, &format!("demo-{}", n + 1), &instances[node % instances.len()], mode)?;
            }
        }
        status::print(&cloud, paths, output).await?;
        let pods = pod::list(paths);
        pod::print(&pods, output)?;
        if output == Output::Table {
            // Pods reach each other through the VPC: same node, and across nodes via the vRouter.
            if let Some(first) = pods.first() {
                for other in &pods[1..] {
                    let reached = std::process::Command::new("nsenter")
                        .arg(format!("--net={}", first.netns))
                        // Three tries: one lost echo on a busy machine is not unreachable.
                        .args(["ping", "-c", "3", "-i", "0.2", "-W", "2", &other.ip])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success());
                    println!("{} ({}) -> {} ({}) on {}: {}", first.name, first.ip, other.name, other.ip, other.node, if reached { "reachable" } else { "UNREACHABLE" });
                }
            }
            println!("\nadd a pod: berthctl pod add NAME; inspect a node: berthctl inspect --node <instance-id>; stop: berthctl down");
        }
        Ok(())
    }
}

fn progress(output: Output, step: &str) {
    if output == Output::Table {
        eprintln!("==> {step}");
    }
}
