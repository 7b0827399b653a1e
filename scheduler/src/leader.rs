//! Leader election on an etcd lease, after client-go's: a replica campaigns for `<prefix>/leader`
//! by creating it under a lease of its own (value: its [`LeaderRecord`]); the one whose key exists
//! leads for as long as its lease is renewed. The key's create revision marks the [`Term`] and
//! fences every write of the store (`store::etcd::Fence`), so a deposed leader cannot overwrite.
//!
//! The lease (`store.etcd.lease_ttl_secs`, 2 s by default; etcd raises a shorter TTL to its minimum,
//! 1.5 × its election timeout rounded up: 2 s with the default 1 s) is renewed every TTL/3. A
//! leader that has not renewed within 2/3 of the TTL of its last renewal's request (its renew
//! deadline) stops at once, while its lease still runs on the servers: the term is lost before
//! another replica can lead. A killed leader is replaced once etcd expires its lease: within the
//! TTL of its last renewal and etcd's expiry check (500 ms).

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::StoreError;
use crate::store::etcd::{Etcd, Fence};

/// What the leader key holds: who leads and where to send clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// Unique to the process: host, pid and a random part.
    pub identity: String,
    /// Its advertised gRPC address (`server.advertise`).
    pub address: String,
}

impl LeaderRecord {
    /// A record for this process, reached at `address`.
    pub fn new(address: &str) -> LeaderRecord {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let random = uuid::Uuid::new_v4().simple().to_string();
        LeaderRecord { identity: format!("{host}/{}/{}", std::process::id(), &random[..8]), address: address.to_string() }
    }

    pub fn decode(bytes: &[u8]) -> Result<LeaderRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record serializes")
    }
}

/// Why a term ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermLost {
    #[error("the lease was not renewed within its renew deadline of {} ms (etcd unreachable or without quorum); stopped before it expires", .0.as_millis())]
    RenewDeadline(Duration),
    #[error("etcd says the lease has expired or was revoked")]
    LeaseGone,
    #[error("the leader key was deleted")]
    KeyDeleted,
    #[error("the leader key now belongs to {}", .0.as_ref().map_or("another replica", |r| r.address.as_str()))]
    KeyTaken(Option<LeaderRecord>),
    #[error("resigned")]
    Resigned,
}

/// A replica that may lead: its record and lease TTL.
#[derive(Debug, Clone)]
pub struct Candidate {
    etcd: Etcd,
    record: LeaderRecord,
    ttl: Duration,
}

/// Aborts a task when dropped: a dropped term renews nothing.
#[derive(Debug)]
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// This replica leads, until [`Term::lost`] fires. Dropping it stops the renewals (the others then
/// wait out the lease, as after a kill); [`Term::resign`] hands over at once.
#[derive(Debug)]
pub struct Term {
    /// The leader key's create revision: the term's number, higher for every later term.
    pub revision: i64,
    pub lease_id: i64,
    /// The TTL etcd granted.
    pub ttl: Duration,
    pub record: LeaderRecord,
    key: String,
    etcd: Etcd,
    lost: watch::Receiver<Option<TermLost>>,
    lost_tx: Arc<watch::Sender<Option<TermLost>>>,
    _tasks: Vec<Task>,
}

impl Term {
    /// What the store compares every transaction to.
    pub fn fence(&self) -> Fence {
        Fence { key: self.key.clone(), revision: self.revision }
    }

    /// Why the term ended, if it has.
    pub fn is_lost(&self) -> Option<TermLost> {
        self.lost.borrow().clone()
    }

    /// Resolves when the term ends: the lease not renewed by its deadline, gone, or the key
    /// deleted or taken. Stop acting as the leader then.
    pub async fn lost(&self) -> TermLost {
        let mut rx = self.lost.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(v) => (*v).clone().expect("some"),
            Err(_) => TermLost::Resigned,
        }
    }

    /// The same, for a thread that polls or a task of its own.
    pub fn lost_signal(&self) -> watch::Receiver<Option<TermLost>> {
        self.lost.clone()
    }

    /// Ends the term now: stops renewing and revokes the lease, which deletes the leader key, so
    /// another replica leads without waiting for the TTL.
    pub async fn resign(self) -> Result<(), StoreError> {
        lose(&self.lost_tx, TermLost::Resigned);
        let id = self.lease_id;
        drop(self._tasks);
        self.etcd.call(|mut c| async move { c.lease_revoke(id).await }).await.map(drop)
    }
}

/// Records the first reason a term ended.
fn lose(tx: &watch::Sender<Option<TermLost>>, why: TermLost) {
    tx.send_if_modified(|v| {
        if v.is_none() {
            *v = Some(why);
            true
        } else {
            false
        }
    });
}

impl Candidate {
    /// `ttl`: `store.etcd.lease_ttl_secs`.
    pub fn new(etcd: Etcd, record: LeaderRecord, ttl: Duration) -> Candidate {
        Candidate { etcd, record, ttl }
    }

    pub fn record(&self) -> &LeaderRecord {
        &self.record
    }

    /// Waits until this replica leads. An unreachable etcd is waited for (logged, retried every
    /// TTL/3); other errors (a refused request) are returned.
    pub async fn campaign(&self) -> Result<Term, StoreError> {
        loop {
            match self.try_campaign().await {
                Ok(term) => return Ok(term),
                Err(e @ StoreError::Unavailable { .. }) => {
                    tracing::warn!(error = %e, "campaign for the scheduler's lead: retrying");
                    tokio::time::sleep(self.ttl / 3).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_campaign(&self) -> Result<Term, StoreError> {
        let key = self.etcd.keys().leader();
        let sent = Instant::now();
        let ttl_secs = self.ttl.as_secs().max(1) as i64;
        let grant = self.etcd.call(|mut c| async move { c.lease_grant(ttl_secs, None).await }).await?;
        let (lease_id, ttl) = (grant.id(), Duration::from_secs(grant.ttl().max(1) as u64));
        let (lost_tx, mut lost) = watch::channel(None);
        let lost_tx = Arc::new(lost_tx);
        // Renewed while it waits, so that it may act the moment it wins.
        let keeper = Task(tokio::spawn(keep_alive(self.etcd.clone(), lease_id, ttl, sent, lost_tx.clone())));
        let revoke = |etcd: Etcd| async move {
            let _ = etcd.call(|mut c| async move { c.lease_revoke(lease_id).await }).await;
        };
        let revision = loop {
            if let Some(why) = lost.borrow().clone() {
                return Err(StoreError::Unavailable { endpoints: self.etcd.endpoints().into(), reason: format!("the campaign's lease ended: {why}") });
            }
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), self.record.encode(), Some(PutOptions::new().with_lease(lease_id)))])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let resp = match self.etcd.call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            }).await {
                Ok(r) => r,
                Err(e) => {
                    drop(keeper);
                    revoke(self.etcd.clone()).await;
                    return Err(e);
                }
            };
            let at = resp.header().map_or(0, |h| h.revision());
            if resp.succeeded() {
                break at;
            }
            // A repeated attempt whose first one won (its answer lost) finds its own lease on the key.
            let held = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().filter(|kv| kv.lease() == lease_id).map(|kv| kv.create_revision()),
                _ => None,
            });
            if let Some(revision) = held {
                break revision;
            }
            // Someone leads: wait for its key to go (watched from the revision read, so a delete in
            // between is seen), and try again at least every TTL in case the watch missed it.
            let watched = self.wait_deleted(&key, at);
            tokio::select! {
                _ = tokio::time::timeout(ttl, watched) => {}
                _ = lost.changed() => {}
            }
        };
        let watcher = Task(tokio::spawn(watch_key(self.etcd.clone(), key.clone(), revision, lost_tx.clone())));
        Ok(Term { revision, lease_id, ttl, record: self.record.clone(), key, etcd: self.etcd.clone(), lost, lost_tx, _tasks: vec![keeper, watcher] })
    }

    /// Returns once `key` is deleted after `revision`, or the watch fails.
    async fn wait_deleted(&self, key: &str, revision: i64) {
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let Ok(mut watch) = self.etcd.call(|mut c| {
            let (key, options) = (key.to_string(), options.clone());
            async move { c.watch(key, Some(options)).await }
        }).await else {
            tokio::time::sleep(self.ttl / 3).await;
            return;
        };
        while let Ok(Some(resp)) = watch.message().await {
            if resp.canceled() || resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                return;
            }
        }
    }
}

/// Renews the lease every TTL/3; loses the term when a renewal has not come back by the renew
/// deadline (2/3 TTL after the last successful renewal was sent) or etcd says the lease is gone.
async fn keep_alive(etcd: Etcd, lease_id: i64, ttl: Duration, granted: Instant, lost: Arc<watch::Sender<Option<TermLost>>>) {
    let every = ttl / 3;
    let renew_within = ttl * 2 / 3;
    let mut renewed = granted;
    let mut stream = None;
    loop {
        let deadline = renewed + renew_within;
        tokio::time::sleep_until((renewed + every).into()).await;
        let sent = Instant::now();
        let attempt = async {
            loop {
                let renewal = async {
                    match &mut stream {
                        None => {
                            // Opening the stream renews once and fails when the lease is gone.
                            stream = Some(etcd.client().lease_client().keep_alive(lease_id).await?);
                            Ok(true)
                        }
                        Some((keeper, responses)) => {
                            keeper.keep_alive().await?;
                            match responses.message().await? {
                                Some(r) => Ok(r.ttl() > 0),
                                None => Err(etcd_client::Error::LeaseKeepAliveError("the keep-alive stream ended".into())),
                            }
                        }
                    }
                };
                match renewal.await {
                    Ok(alive) => return alive,
                    // The crate's words for a lease etcd does not know.
                    Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == "lease not found" => return false,
                    Err(_) => {
                        // A broken stream (a member gone): open another, until the deadline.
                        stream = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        match tokio::time::timeout_at(deadline.into(), attempt).await {
            Ok(true) => renewed = sent,
            Ok(false) => return lose(&lost, TermLost::LeaseGone),
            Err(_) => return lose(&lost, TermLost::RenewDeadline(renew_within)),
        }
    }
}

/// Loses the term when the leader key is deleted or re-created by another term.
async fn watch_key(etcd: Etcd, key: String, revision: i64, lost: Arc<watch::Sender<Option<TermLost>>>) {
    let mut from = revision;
    loop {
        let options = WatchOptions::new().with_start_revision(from + 1);
        if let Ok(mut watch) = etcd.call(|mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.watch(key, Some(options)).await }
        }).await {
            while let Ok(Some(resp)) = watch.message().await {
                if resp.canceled() {
                    break;
                }
                for e in resp.events() {
                    let Some(kv) = e.kv() else { continue };
                    from = kv.mod_revision();
                    if e.event_type() == EventType::Delete {
                        return lose(&lost, TermLost::KeyDeleted);
                    }
                    if kv.create_revision() != revision {
                        return lose(&lost, TermLost::KeyTaken(LeaderRecord::decode(kv.value()).ok()));
                    }
                }
            }
        }
        // The watch broke (a member gone, or compacted): check the key itself, then watch again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(resp) = etcd.call(|mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        }).await {
            match resp.kvs().first() {
                None => return lose(&lost, TermLost::KeyDeleted),
                Some(kv) if kv.create_revision() != revision => return lose(&lost, TermLost::KeyTaken(LeaderRecord::decode(kv.value()).ok())),
                Some(_) => from = resp.header().map_or(from, |h| h.revision()),
            }
        }
    }
}

/// Who leads now, if anyone: where followers send clients.
pub async fn leader(etcd: &Etcd) -> Result<Option<LeaderRecord>, StoreError> {
    let resp = etcd.call(|mut c| {
        let key = etcd.keys().leader();
        async move { c.get(key, None).await }
    }).await?;
    Ok(resp.kvs().first().and_then(|kv| LeaderRecord::decode(kv.value()).ok()))
}

/// Who leads, kept current by a watch (re-read after any failure) until every receiver is dropped.
pub fn watch_leader(etcd: &Etcd) -> watch::Receiver<Option<LeaderRecord>> {
    let (tx, rx) = watch::channel(None);
    let etcd = etcd.clone();
    tokio::spawn(async move {
        let key = etcd.keys().leader();
        loop {
            let follow = async {
                let txn = Txn::new().and_then([TxnOp::get(key.as_str(), None)]);
                let resp = etcd.call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            }).await?;
                let at = resp.header().map_or(0, |h| h.revision());
                let now = resp.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().and_then(|kv| LeaderRecord::decode(kv.value()).ok()),
                    _ => None,
                });
                tx.send_if_modified(|v| std::mem::replace(v, now.clone()) != now);
                let options = WatchOptions::new().with_start_revision(at + 1);
                let mut watch = etcd.call(|mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.watch(key, Some(options)).await }
        }).await?;
                while let Some(resp) = watch.message().await.map_err(|e| crate::store::etcd::classify(etcd.endpoints(), e))? {
                    if resp.canceled() {
                        break;
                    }
                    for e in resp.events() {
                        let now = if e.event_type() == EventType::Delete { None } else { e.kv().and_then(|kv| LeaderRecord::decode(kv.value()).ok()) };
                        tx.send_if_modified(|v| std::mem::replace(v, now.clone()) != now);
                    }
                }
                Ok::<(), StoreError>(())
            };
            tokio::select! {
                _ = follow => {}
                () = tx.closed() => return,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    rx
}
