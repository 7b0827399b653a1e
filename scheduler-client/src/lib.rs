//! `berth-scheduler-client`: what an agent (and `berthctl`) needs to talk to the scheduler, without
//! linking the scheduler itself: [`NodeReporter`] opens the ReportNode stream,
//! sends the node's reports and yields the scheduler's instructions (pods to run, pods to remove);
//! [`connect_leader`] finds the replica that leads among those configured, for agents and
//! `berthctl` alike; [`list_pods`] and [`list_nodes`] follow the pages of the lists; [`watch`]
//! lists and watches pods, resuming by itself.

pub mod watch;

use std::time::Duration;

use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// The longest `PodReport.message` an agent sends and the scheduler keeps (bytes, cut at a
/// character): a report's size then depends on the number of pods, not on what failed.
pub const POD_MESSAGE_LIMIT: usize = 1024;

/// The largest report the scheduler decodes: tonic's default, kept. A report holds keys and
/// status only (under ~1.1 KiB a pod with names of DNS length), so this is thousands of pods.
pub const REPORT_LIMIT_BYTES: usize = 4 << 20;

/// What a client of the scheduler decodes (an instruction, a page, a pod). Raised above tonic's
/// 4 MiB because one spec travels whole: an instruction or a page holding one spec that SubmitPod
/// took (its request decoded under 4 MiB) adds the framing and the zone a disk pod is pinned to.
pub const REPLY_LIMIT_BYTES: usize = (4 << 20) + (64 << 10);

/// `message` cut to [`POD_MESSAGE_LIMIT`] bytes at a character boundary, marked with "…".
pub fn bounded_message(message: &str) -> String {
    if message.len() <= POD_MESSAGE_LIMIT {
        return message.to_string();
    }
    let mut end = POD_MESSAGE_LIMIT - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

pub struct NodeReporter {
    reports: mpsc::Sender<pb::NodeReport>,
    instructions: tonic::Streaming<pb::NodeInstruction>,
    sequence: u64,
    /// The encoded size and pod count of the last report sent, to say so when it was refused.
    last: (usize, usize),
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

impl ReporterError {
    /// Whether the scheduler refused a report as too large to take.
    pub fn report_too_big(&self) -> bool {
        matches!(self, ReporterError::Refused(s) if s.code() == tonic::Code::ResourceExhausted)
    }
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
        let last = (first.encoded_len(), first.pods.len());
        tx.send(first).await.map_err(|_| ReporterError::Closed)?;
        let instructions = SchedulerClient::new(channel).max_decoding_message_size(REPLY_LIMIT_BYTES).report_node(ReceiverStream::new(rx)).await?.into_inner();
        Ok(NodeReporter { reports: tx, instructions, sequence, last })
    }

    /// Sends a report; its sequence is set to follow the previous one.
    pub async fn report(&mut self, mut report: pb::NodeReport) -> Result<(), ReporterError> {
        self.sequence += 1;
        report.sequence = self.sequence;
        self.last = (report.encoded_len(), report.pods.len());
        self.reports.send(report).await.map_err(|_| ReporterError::Closed)
    }

    /// The encoded size (bytes) and the pod count of the last report sent.
    pub fn last_report(&self) -> (usize, usize) {
        self.last
    }

    /// The next instruction; `Ok(None)` when the scheduler closed the stream.
    pub async fn instruction(&mut self) -> Result<Option<pb::NodeInstruction>, ReporterError> {
        Ok(self.instructions.message().await?)
    }
}

/// Every pod of `namespace` ("" for all), page after page, in key order.
pub async fn list_pods(client: &mut SchedulerClient<Channel>, namespace: &str) -> Result<Vec<pb::PodStatus>, tonic::Status> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client.list_pods(pb::ListPodsRequest { namespace: namespace.to_string(), page_size: 0, page_token: page_token.clone() }).await?.into_inner();
        all.extend(page.pods);
        match next(page_token, page.next_page_token)? {
            Some(t) => page_token = t,
            None => return Ok(all),
        }
    }
}

/// Every node the scheduler knows, page after page, in instance-ID order.
pub async fn list_nodes(client: &mut SchedulerClient<Channel>) -> Result<Vec<pb::NodeState>, tonic::Status> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client.list_nodes(pb::ListNodesRequest { page_size: 0, page_token: page_token.clone() }).await?.into_inner();
        all.extend(page.nodes);
        match next(page_token, page.next_page_token)? {
            Some(t) => page_token = t,
            None => return Ok(all),
        }
    }
}

/// The token of the next page, if any; a server handing back the token it was given would
/// loop forever.
fn next(previous: String, token: String) -> Result<Option<String>, tonic::Status> {
    match token {
        t if t.is_empty() => Ok(None),
        t if t == previous => Err(tonic::Status::internal("the scheduler gave the same page token twice; is it a compatible version?")),
        t => Ok(Some(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_is_cut_at_a_character_and_marked() {
        assert_eq!(bounded_message("volume data failed"), "volume data failed");
        let long = "é".repeat(POD_MESSAGE_LIMIT);
        let cut = bounded_message(&long);
        assert!(cut.len() <= POD_MESSAGE_LIMIT && cut.ends_with('…'), "{} bytes", cut.len());
        assert!(cut.len() > POD_MESSAGE_LIMIT - 8);
    }
}
