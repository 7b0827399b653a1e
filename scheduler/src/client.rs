//! What an agent needs to talk to the scheduler: [`NodeReporter`] opens the ReportNode stream,
//! sends the node's reports and yields the scheduler's instructions (pods to run, pods to remove).

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
}

impl NodeReporter {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:19470`) and opens the stream; the first
    /// report is sent at once, so the scheduler knows the node before its first instruction.
    pub async fn connect(endpoint: &str, first: pb::NodeReport) -> Result<NodeReporter, ReporterError> {
        let channel = Channel::from_shared(endpoint.to_string())
            .map_err(|_| ReporterError::Refused(tonic::Status::invalid_argument(format!("{endpoint} is not a URL"))))?
            .connect()
            .await
            .map_err(|source| ReporterError::Connect { endpoint: endpoint.to_string(), source })?;
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
