//! What an agent needs to talk to the scheduler: [`NodeReporter`] opens the ReportNode stream,
//! sends the node's reports and yields the scheduler's instructions (pods to run, pods to remove);
//! [`connect_leader`] finds the replica that leads among those configured, for agents and
//! `berthctl` alike.

use std::time::Duration;

use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

pub struct NodeReporter {
    reports: mpsc::Sender<pb::NodeReport>,
    instructions: tonic::Streaming<pb::NodeInstruction>,
    sequence: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReporterError {
    #[error("cannot reach the scheduler at {endpoint}: {source}")]
    Connect { endpoint: String, source: tonic::transport::Error },
    #[error("the scheduler refused the report stream: {0}")]
    Refused(#[from] tonic::Status),
    #[error("the report stream to the scheduler is closed; reconnect")]
    Closed,
    #[error("no scheduler replica of {endpoints} leads (last answer: {last}); check that the replicas run and their store has a quorum")]
    NoLeader { endpoints: String, last: String },
}

/// The scheduler replicas of a setting: a comma-separated list of URLs (`http://host:port`) or
/// `host:port`s.
pub fn endpoints(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(|e| if e.contains("://") { e.to_string() } else { format!("http://{e}") }).collect()
}

async fn channel_to(endpoint: &str) -> Result<Channel, ReporterError> {
    Channel::from_shared(endpoint.to_string())
        .map_err(|_| ReporterError::Refused(tonic::Status::invalid_argument(format!("{endpoint} is not a URL"))))?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .map_err(|source| ReporterError::Connect { endpoint: endpoint.to_string(), source })
}

/// A channel to the replica that leads: each endpoint is asked in turn (GetLeader), a follower's
/// answer leads to the leader it names; rounds repeat every 100 ms until `within` has passed.
pub async fn connect_leader(endpoints: &[String], within: Duration) -> Result<(String, Channel), ReporterError> {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::from("none asked");
    loop {
        for e in endpoints {
            match ask(e).await {
                Ok((channel, status)) if status.leads => return Ok((e.clone(), channel)),
                Ok((_, status)) if !status.leader.is_empty() => {
                    let leader = format!("http://{}", status.leader);
                    match ask(&leader).await {
                        Ok((channel, s)) if s.leads => return Ok((leader, channel)),
                        Ok(_) => last = format!("{leader} named as leader by {e} does not lead"),
                        Err(err) => last = err.to_string(),
                    }
                }
                Ok(_) => last = format!("{e} knows no leader"),
                Err(err) => last = err.to_string(),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ReporterError::NoLeader { endpoints: endpoints.join(","), last });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ask(endpoint: &str) -> Result<(Channel, pb::LeaderStatus), ReporterError> {
    let channel = channel_to(endpoint).await?;
    let status = SchedulerClient::new(channel.clone()).get_leader(pb::GetLeaderRequest {}).await?.into_inner();
    Ok((channel, status))
}

impl NodeReporter {
    /// Connects to the leader among `endpoints` (one or more, comma-separated: see
    /// [`endpoints`]) and opens the stream; the first report is sent at once, so the scheduler
    /// knows the node before its first instruction.
    pub async fn connect(endpoints: &str, first: pb::NodeReport) -> Result<NodeReporter, ReporterError> {
        let (_, channel) = connect_leader(&self::endpoints(endpoints), Duration::from_secs(3)).await?;
        Self::over(channel, first).await
    }

    pub async fn over(channel: Channel, mut first: pb::NodeReport) -> Result<NodeReporter, ReporterError> {
        let (tx, rx) = mpsc::channel(16);
        let sequence = first.sequence.max(1);
        first.sequence = sequence;
        tx.send(first).await.map_err(|_| ReporterError::Closed)?;
        let instructions = SchedulerClient::new(channel).report_node(ReceiverStream::new(rx)).await?.into_inner();
        Ok(NodeReporter { reports: tx, instructions, sequence })
    }

    /// Sends a report; its sequence is set to follow the previous one.
    pub async fn report(&mut self, mut report: pb::NodeReport) -> Result<(), ReporterError> {
        self.sequence += 1;
        report.sequence = self.sequence;
        self.reports.send(report).await.map_err(|_| ReporterError::Closed)
    }

    /// The next instruction; `Ok(None)` when the scheduler closed the stream.
    pub async fn instruction(&mut self) -> Result<Option<pb::NodeInstruction>, ReporterError> {
        Ok(self.instructions.message().await?)
    }
}
