//! Watching pods from a client, as Kubernetes' informers do: list, watch from the listing's
//! revision, resume from the last revision seen after a disconnect or a leader change, and list
//! again when the leader no longer keeps that revision (OUT_OF_RANGE). `berthctl pod list --watch`
//! and every wait of `berthctl` on pods go through [`PodWatch`].

use std::collections::VecDeque;
use std::time::Duration;

use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::{REPLY_LIMIT_BYTES, ReporterError, connect_leader};

/// What a watch yields.
#[derive(Debug, Clone, PartialEq)]
pub enum PodUpdate {
    /// The pods as they are now: the first update of [`PodWatch::list_then_watch`], and again
    /// whenever the watch had to list anew (what it knew before is to be replaced).
    Listed(Vec<pb::PodStatus>),
    /// One change, in revision order, never twice and with none left out.
    Event(Box<pb::PodEvent>),
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    NoLeader(#[from] ReporterError),
    #[error("the scheduler refused the watch: {}", .0.message())]
    Refused(tonic::Status),
}

/// A watch of the pods of a namespace ("" for all), or of one pod.
pub struct PodWatch {
    endpoints: Vec<String>,
    namespace: String,
    name: String,
    term: u64,
    revision: u64,
    must_list: bool,
    stream: Option<tonic::Streaming<pb::WatchPodsResponse>>,
    updates: VecDeque<PodUpdate>,
    /// How long to look for a leader before [`PodWatch::next`] fails.
    pub patience: Duration,
}

impl PodWatch {
    /// Lists, then watches: the first update is the listing.
    pub fn list_then_watch(endpoints: &[String], namespace: &str, name: &str) -> PodWatch {
        PodWatch { endpoints: endpoints.to_vec(), namespace: namespace.into(), name: name.into(), term: 0, revision: 0, must_list: true, stream: None, updates: VecDeque::new(), patience: Duration::from_secs(30) }
    }

    /// Watches from now on, without listing; returns once the leader started the watch, so every
    /// change made after this returns is seen (submit after it to see your pod's whole life).
    pub async fn from_now(endpoints: &[String], namespace: &str, name: &str) -> Result<PodWatch, WatchError> {
        let mut w = PodWatch { must_list: false, ..Self::list_then_watch(endpoints, namespace, name) };
        while w.stream.is_none() {
            w.open().await?;
            if let Some(stream) = &mut w.stream {
                match stream.message().await {
                    Ok(Some(m)) => w.take(m),
                    Ok(None) => w.stream = None,
                    Err(s) => w.lost(s)?,
                }
            }
        }
        Ok(w)
    }

    /// The revision and term the watch has seen everything up to.
    pub fn position(&self) -> (u64, u64) {
        (self.revision, self.term)
    }

    /// The next update; resumes and lists again by itself, and fails only when no leader is
    /// found within [`PodWatch::patience`] or the scheduler refuses the request itself.
    pub async fn next(&mut self) -> Result<PodUpdate, WatchError> {
        loop {
            if let Some(u) = self.updates.pop_front() {
                return Ok(u);
            }
            if self.must_list {
                self.list().await?;
                continue;
            }
            let Some(stream) = &mut self.stream else {
                self.open().await?;
                continue;
            };
            match stream.message().await {
                Ok(Some(m)) => self.take(m),
                // A clean end is a stopping server: resume elsewhere.
                Ok(None) => self.stream = None,
                Err(s) => self.lost(s)?,
            }
        }
    }

    fn take(&mut self, m: pb::WatchPodsResponse) {
        self.term = m.term;
        self.revision = m.revision;
        self.updates.extend(m.events.into_iter().map(|e| PodUpdate::Event(Box::new(e))));
    }

    /// What a watch's error status means: list again, resume, or give up.
    fn lost(&mut self, s: tonic::Status) -> Result<(), WatchError> {
        self.stream = None;
        match s.code() {
            Code::OutOfRange => {
                self.must_list = true;
                Ok(())
            }
            // Fell behind, the term ended, the replica stopped or the connection broke: resume.
            Code::Aborted | Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Internal | Code::DeadlineExceeded => Ok(()),
            _ => Err(WatchError::Refused(s)),
        }
    }

    async fn client(&self) -> Result<SchedulerClient<Channel>, WatchError> {
        let (_, channel) = connect_leader(&self.endpoints, self.patience).await?;
        Ok(SchedulerClient::new(channel).max_decoding_message_size(REPLY_LIMIT_BYTES))
    }

    async fn open(&mut self) -> Result<(), WatchError> {
        let mut c = self.client().await?;
        let req = pb::WatchPodsRequest { namespace: self.namespace.clone(), name: self.name.clone(), revision: self.revision, term: self.term };
        match c.watch_pods(req).await {
            Ok(r) => self.stream = Some(r.into_inner()),
            Err(s) => {
                self.lost(s)?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Lists every page; the watch goes on from the first page's revision.
    async fn list(&mut self) -> Result<(), WatchError> {
        let mut c = self.client().await?;
        let mut pods = Vec::new();
        let mut page_token = String::new();
        let mut first: Option<(u64, u64)> = None;
        loop {
            let page = match c.list_pods(pb::ListPodsRequest { namespace: self.namespace.clone(), page_size: 0, page_token: page_token.clone() }).await {
                Ok(p) => p.into_inner(),
                Err(s) if matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled) => {
                    // The leader moved while listing: start over there.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Ok(());
                }
                Err(s) => return Err(WatchError::Refused(s)),
            };
            let (_, term) = *first.get_or_insert((page.revision, page.term));
            if page.term != term {
                // A new leader between pages: list again there.
                return Ok(());
            }
            pods.extend(page.pods.into_iter().filter(|p| self.name.is_empty() || p.spec.as_ref().is_some_and(|s| s.name == self.name)));
            if page.next_page_token.is_empty() || page.next_page_token == page_token {
                break;
            }
            page_token = page.next_page_token;
        }
        let (revision, term) = first.unwrap_or_default();
        self.revision = revision;
        self.term = term;
        self.must_list = false;
        self.stream = None;
        self.updates.push_back(PodUpdate::Listed(pods));
        Ok(())
    }
}

/// The pod an update is about: "namespace/name".
pub fn key_of(p: &pb::PodStatus) -> String {
    p.spec.as_ref().map(|s| format!("{}/{}", s.namespace, s.name)).unwrap_or_default()
}
