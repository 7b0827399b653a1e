//! A scheduler replica's role. One replica leads: it holds the term (its store, fenced by its
//! leadership), binds, scales and writes; the others follow. A follower answers reads (GetPod,
//! ListPods, ListNodes, WatchPods) by asking the leader for them — the pods' live status comes
//! from the agents' reports, which only the leader receives — and tells writers and reporting
//! agents where the leader is (gRPC UNAVAILABLE with the leader's address in the `berth-leader`
//! metadata), so agents and `berthctl` move there by themselves. With the embedded journal there
//! is one replica, leading from the start until its store fails.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use tonic::Status;
use tonic::transport::Channel;

use crate::server::Shared;
use crate::store::{JournalStore, Store};

/// The metadata key of a follower's answer that names the leader's address.
pub const LEADER_METADATA: &str = "berth-leader";

/// The metadata key a follower sets on a read it passes to the leader (its own address): a
/// replica that does not lead answers such a read with where the leader is, never passes it on
/// again, so a read is forwarded once at most.
pub const FORWARDED_METADATA: &str = "berth-forwarded-by";

/// Where a read is answered.
pub enum Reader {
    /// This replica leads: from its own state.
    Local(Arc<Shared>),
    /// This replica follows: by the leader, through this client.
    Leader { address: String, client: SchedulerClient<Channel> },
}

pub enum Role {
    Starting,
    Leading(Arc<Shared>),
    Following,
}

/// What the gRPC service asks before every call.
pub struct Replica {
    role: RwLock<Role>,
    /// The leader's advertised address, as the election sees it.
    leader: tokio::sync::watch::Receiver<Option<String>>,
    /// This replica's own advertised address.
    pub advertise: String,
    /// The channel to the leader a follower forwards reads on, with the address it goes to.
    to_leader: std::sync::Mutex<Option<(String, Channel)>>,
}

impl Replica {
    pub fn new(advertise: String, leader: tokio::sync::watch::Receiver<Option<String>>) -> Arc<Replica> {
        Arc::new(Replica { role: RwLock::new(Role::Starting), leader, advertise, to_leader: std::sync::Mutex::new(None) })
    }

    pub fn set(&self, role: Role) {
        *self.role.write().unwrap_or_else(std::sync::PoisonError::into_inner) = role;
    }

    /// The term to serve a call in, or a status telling the caller where to go.
    pub fn leading(&self) -> Result<Arc<Shared>, Status> {
        match &*self.role.read().unwrap_or_else(std::sync::PoisonError::into_inner) {
            Role::Leading(s) => Ok(s.clone()),
            Role::Starting => Err(Status::unavailable("this scheduler replica is starting (loading its state); retry in a moment")),
            Role::Following => Err(not_leader(self.leader().as_deref())),
        }
    }

    /// Where to answer a read that came with `metadata`: here when this replica leads, else by
    /// the leader (once: a read a follower already forwarded is answered with where the leader is).
    pub fn reader(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Reader, Status> {
        let refusal = match self.leading() {
            Ok(s) => return Ok(Reader::Local(s)),
            Err(refusal) => refusal,
        };
        if metadata.contains_key(FORWARDED_METADATA) {
            return Err(refusal);
        }
        let Some(address) = self.leader.borrow().clone().filter(|l| !l.is_empty() && *l != self.advertise) else {
            return Err(refusal);
        };
        let mut cached = self.to_leader.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let channel = match &*cached {
            Some((a, ch)) if *a == address => ch.clone(),
            _ => {
                let endpoint = Channel::from_shared(format!("http://{address}")).map_err(|_| Status::unavailable(format!("the leader's advertised address {address:?} is not host:port; fix `server.advertise` in its scheduler.toml")))?;
                let ch = endpoint.connect_timeout(std::time::Duration::from_secs(1)).connect_lazy();
                *cached = Some((address.clone(), ch.clone()));
                ch
            }
        };
        let client = SchedulerClient::new(channel).max_decoding_message_size(berth_scheduler_client::REPLY_LIMIT_BYTES).max_encoding_message_size(berth_scheduler_client::REPLY_LIMIT_BYTES);
        Ok(Reader::Leader { address, client })
    }

    /// A caller's read as the leader gets it from this follower: marked as forwarded, with the
    /// caller's deadline.
    pub fn forwarded<T>(&self, from: tonic::Request<T>) -> tonic::Request<T> {
        let timeout = from.metadata().get("grpc-timeout").cloned();
        let mut request = tonic::Request::new(from.into_inner());
        if let Some(timeout) = timeout {
            request.metadata_mut().insert("grpc-timeout", timeout);
        }
        if let Ok(me) = self.advertise.parse() {
            request.metadata_mut().insert(FORWARDED_METADATA, me);
        } else {
            request.metadata_mut().insert(FORWARDED_METADATA, tonic::metadata::MetadataValue::from_static("follower"));
        }
        request
    }

    pub fn leads(&self) -> bool {
        matches!(&*self.role.read().unwrap_or_else(std::sync::PoisonError::into_inner), Role::Leading(_))
    }

    /// The leader's address as this replica knows it (its own when it leads).
    pub fn leader(&self) -> Option<String> {
        if self.leads() {
            return Some(self.advertise.clone());
        }
        self.leader.borrow().clone().filter(|l| !l.is_empty())
    }
}

/// UNAVAILABLE naming the leader, with its address in [`LEADER_METADATA`] for clients.
pub fn not_leader(leader: Option<&str>) -> Status {
    match leader {
        Some(addr) => {
            let mut s = Status::unavailable(format!("this scheduler replica does not lead; the leader is at {addr}"));
            if let Ok(v) = addr.parse() {
                s.metadata_mut().insert(LEADER_METADATA, v);
            }
            s
        }
        None => Status::unavailable("no scheduler replica leads right now (an election is under way, or the store has no quorum); retry"),
    }
}

/// The leader's answer to a read a follower forwarded, as the follower gives it: the leader's
/// own statuses pass unchanged; a leader that could not be reached is named, with the redirect.
pub fn from_leader(address: &str, status: Status) -> Status {
    if status.code() == tonic::Code::Unavailable && !status.metadata().contains_key(LEADER_METADATA) && !status.message().contains("does not lead") {
        let mut s = Status::unavailable(format!("this scheduler replica follows and could not reach the leader at {address} for the read: {}; retry, or ask the leader", status.message()));
        if let Ok(v) = address.parse() {
            s.metadata_mut().insert(LEADER_METADATA, v);
        }
        return s;
    }
    status
}

/// A stretch of time this replica leads, with the store it writes through while it does.
pub struct Term {
    pub store: Box<dyn Store>,
    /// Resolves (with why) when the term is lost: the lease could not be renewed in time, or
    /// another replica took the leader key. The replica stops acting at once.
    pub lost: Pin<Box<dyn Future<Output = String> + Send>>,
}

/// Where terms come from: an election on etcd, or the embedded journal (always this replica).
pub trait Terms: Send + 'static {
    /// Waits until this replica may lead.
    fn next(&mut self) -> impl Future<Output = Result<Term, String>> + Send;
    /// The leader's advertised address while this replica follows.
    fn leader(&self) -> tokio::sync::watch::Receiver<Option<String>>;
}

/// The embedded journal: one replica, leading as soon as its state is read; a term ends only when
/// the store fails, and the next one reopens it.
pub struct JournalTerms {
    pub dir: PathBuf,
    leader: tokio::sync::watch::Sender<Option<String>>,
    opened: bool,
}

impl JournalTerms {
    pub fn new(dir: PathBuf) -> JournalTerms {
        JournalTerms { dir, leader: tokio::sync::watch::channel(None).0, opened: false }
    }
}

impl Terms for JournalTerms {
    async fn next(&mut self) -> Result<Term, String> {
        if self.opened {
            // The store failed: give the disk a moment before reading it again.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        self.opened = true;
        let dir = self.dir.clone();
        let store = tokio::task::spawn_blocking(move || JournalStore::open(&dir)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        Ok(Term { store: Box::new(store), lost: Box::pin(std::future::pending()) })
    }

    fn leader(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.leader.subscribe()
    }
}

/// Terms from an election on etcd: this replica campaigns for the leader key; each term's store
/// writes fenced by it, and the term is lost when the lease cannot be renewed in time or another
/// replica holds the key.
pub struct EtcdTerms {
    etcd: crate::store::etcd::Etcd,
    candidate: crate::leader::Candidate,
    max_txn_ops: usize,
    leader: tokio::sync::watch::Receiver<Option<String>>,
}

impl EtcdTerms {
    /// Connects to the members and starts watching who leads (call inside the runtime).
    pub async fn connect(cfg: &crate::config::EtcdConfig, advertise: &str) -> Result<EtcdTerms, String> {
        let etcd = crate::store::etcd::Etcd::connect(cfg).await.map_err(|e| e.to_string())?;
        let candidate = crate::leader::Candidate::new(etcd.clone(), crate::leader::LeaderRecord::new(advertise), cfg.lease_ttl());
        let mut records = crate::leader::watch_leader(&etcd);
        let (tx, leader) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            loop {
                let address = records.borrow_and_update().as_ref().map(|r| r.address.clone());
                tx.send_replace(address);
                if records.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(EtcdTerms { etcd, candidate, max_txn_ops: cfg.max_txn_ops, leader })
    }
}

impl Terms for EtcdTerms {
    async fn next(&mut self) -> Result<Term, String> {
        let term = self.candidate.campaign().await.map_err(|e| e.to_string())?;
        tracing::info!(revision = term.revision, "this replica holds the leader key");
        let mut store = crate::store::EtcdStore::new(tokio::runtime::Handle::current(), self.etcd.clone(), self.max_txn_ops);
        store.fence(&term);
        // The term lives in its `lost` future: dropping it stops the renewals, as a kill would.
        let lost = Box::pin(async move { term.lost().await.to_string() });
        Ok(Term { store: Box::new(store), lost })
    }

    fn leader(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.leader.clone()
    }
}
