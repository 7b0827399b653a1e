//! Group commit. Handlers change the pure cluster state under its lock and hand the events and the
//! instructions that follow from them to the [`Committer`], in the order of the changes; its thread
//! takes everything queued, makes it durable with one [`Store::append`] (one fsync, or one round of
//! etcd transactions), and only then sends the instructions to the agents and answers the callers.
//! So no lock is held across a sync, placement goes on while a batch is written, and what an agent
//! or client hears is always durable. A failed append fails its batch and every one queued after
//! it (they build on it); the term is then over and the replica reloads the store.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use berth_proto::cluster::v1 as pb;
use tonic::Status;

use crate::store::{Event, Store};

/// Most events one append takes, so one batch cannot grow without bound under a flood of calls.
const MAX_BATCH_EVENTS: usize = 50_000;

pub type InstructionSender = tokio::sync::mpsc::Sender<Result<pb::NodeInstruction, Status>>;

/// Connected agents: node → (stream generation, sender).
pub type Streams = Arc<Mutex<HashMap<String, (u64, InstructionSender)>>>;

/// What one call hands over: events to make durable, then instructions to send and whom to tell.
pub struct Batch {
    pub events: Vec<Event>,
    pub instructions: Vec<(String, pb::NodeInstruction)>,
    pub done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    /// Run once the batch is durable, in the order of the batches (WatchPods publishes its
    /// changes so); not run when it failed.
    pub then: Option<Box<dyn FnOnce() + Send>>,
}

/// Why the committer stopped taking batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed(pub String);

pub struct Committer {
    queue: mpsc::Sender<Batch>,
    failed: tokio::sync::watch::Receiver<Option<Failed>>,
    /// Counts of batches and events written, for `/metrics` and the load benchmark.
    pub stats: Arc<CommitStats>,
}

#[derive(Debug, Default)]
pub struct CommitStats {
    pub appends: std::sync::atomic::AtomicU64,
    pub events: std::sync::atomic::AtomicU64,
}

impl Committer {
    /// Starts the committer's thread over `store`; instructions go to `streams`.
    pub fn start(mut store: Box<dyn Store>, streams: Streams) -> Committer {
        let (queue, rx) = mpsc::channel::<Batch>();
        let (failed_tx, failed) = tokio::sync::watch::channel(None);
        let stats = Arc::new(CommitStats::default());
        let counted = stats.clone();
        std::thread::Builder::new()
            .name("berth-commit".into())
            .spawn(move || {
                let mut broken: Option<String> = None;
                while let Ok(first) = rx.recv() {
                    let mut batches = vec![first];
                    let mut events = batches[0].events.len();
                    while events < MAX_BATCH_EVENTS
                        && let Ok(b) = rx.try_recv()
                    {
                        events += b.events.len();
                        batches.push(b);
                    }
                    let result = match &broken {
                        Some(e) => Err(e.clone()),
                        None if events == 0 => Ok(()),
                        None => {
                            let all: Vec<Event> = batches.iter_mut().flat_map(|b| std::mem::take(&mut b.events)).collect();
                            let r = store.append(&all).map_err(|e| e.to_string());
                            counted.appends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            counted.events.fetch_add(all.len() as u64, std::sync::atomic::Ordering::Relaxed);
                            r
                        }
                    };
                    if let Err(e) = &result
                        && broken.is_none()
                    {
                        tracing::error!(error = %e, "cannot persist the scheduler's state; this term ends");
                        broken = Some(e.clone());
                        let _ = failed_tx.send(Some(Failed(e.clone())));
                    }
                    if result.is_ok() {
                        deliver(&streams, batches.iter_mut().flat_map(|b| std::mem::take(&mut b.instructions)));
                        for then in batches.iter_mut().filter_map(|b| b.then.take()) {
                            then();
                        }
                    }
                    for b in batches {
                        if let Some(done) = b.done {
                            let _ = done.send(result.clone());
                        }
                    }
                }
            })
            .expect("the committer thread starts");
        Committer { queue, failed, stats }
    }

    /// Queues a batch; the caller must hold the lock under which its events were made, so batches
    /// are durable in the order of the changes.
    pub fn queue(&self, events: Vec<Event>, instructions: Vec<(String, pb::NodeInstruction)>) -> Pending {
        self.queue_then(events, instructions, None)
    }

    /// [`Committer::queue`], and `then` runs once the batch is durable (before its callers hear).
    pub fn queue_then(&self, events: Vec<Event>, instructions: Vec<(String, pb::NodeInstruction)>, then: Option<Box<dyn FnOnce() + Send>>) -> Pending {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.queue.send(Batch { events, instructions, done: Some(tx), then });
        Pending(rx)
    }

    /// Resolves once a batch failed (the store refused or could not be reached).
    pub async fn failed(&self) -> Failed {
        let mut rx = self.failed.clone();
        loop {
            if let Some(f) = rx.borrow_and_update().clone() {
                return f;
            }
            if rx.changed().await.is_err() {
                return Failed("the committer stopped".into());
            }
        }
    }

    pub fn is_failed(&self) -> bool {
        self.failed.borrow().is_some()
    }
}

/// A queued batch; await it to know it is durable.
pub struct Pending(tokio::sync::oneshot::Receiver<Result<(), String>>);

impl Pending {
    pub async fn durable(self) -> Result<(), Status> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Status::unavailable(format!("the scheduler cannot persist its state: {e}"))),
            Err(_) => Err(Status::unavailable("the scheduler is stopping; retry")),
        }
    }
}

fn deliver(streams: &Streams, instructions: impl Iterator<Item = (String, pb::NodeInstruction)>) {
    let streams = streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for (node, ins) in instructions {
        let Some((_, tx)) = streams.get(&node) else { continue };
        if tx.try_send(Ok(ins)).is_err() {
            berth_daemon::limited!(warn, "instruction-dropped", node = %node, "instruction stream full or closed; the node gets everything again when it reconnects");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Snapshot, StoreError};

    /// Records each append's size and can be told to fail.
    struct Counting {
        appends: Arc<Mutex<Vec<usize>>>,
        fail_after: usize,
        gate: Arc<Mutex<()>>,
    }

    impl Store for Counting {
        fn load(&mut self) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
        fn append(&mut self, events: &[Event]) -> Result<(), StoreError> {
            let _held = self.gate.lock().unwrap();
            let mut a = self.appends.lock().unwrap();
            if a.len() >= self.fail_after {
                return Err(StoreError::Io { path: "x".into(), source: std::io::Error::other("disk gone") });
            }
            a.push(events.len());
            Ok(())
        }
    }

    fn ev(k: usize) -> Vec<Event> {
        vec![Event::Deleted { pod: format!("d/p{k}") }]
    }

    #[tokio::test]
    async fn calls_queued_during_a_sync_share_the_next_one() {
        let appends = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Mutex::new(()));
        let c = Committer::start(Box::new(Counting { appends: appends.clone(), fail_after: usize::MAX, gate: gate.clone() }), Streams::default());
        let held = gate.lock().unwrap();
        let first = c.queue(ev(0), vec![]);
        // The first append is stuck in its "sync"; these queue behind it.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let rest: Vec<Pending> = (1..=20).map(|k| c.queue(ev(k), vec![])).collect();
        drop(held);
        first.durable().await.unwrap();
        for p in rest {
            p.durable().await.unwrap();
        }
        assert_eq!(*appends.lock().unwrap(), vec![1, 20], "one append for the first call, one for the 20 that waited");
    }

    #[tokio::test]
    async fn a_failed_append_fails_its_batch_and_all_after_and_sends_nothing() {
        let streams = Streams::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        streams.lock().unwrap().insert("i-1".into(), (0, tx));
        let c = Committer::start(Box::new(Counting { appends: Default::default(), fail_after: 1, gate: Default::default() }), streams);
        let ins = |n: &str| vec![("i-1".to_string(), pb::NodeInstruction { remove: vec![n.into()], ..Default::default() })];
        c.queue(ev(0), ins("d/a")).durable().await.unwrap();
        assert_eq!(rx.recv().await.unwrap().unwrap().remove, vec!["d/a"]);
        let e = c.queue(ev(1), ins("d/b")).durable().await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains("disk gone"), "{}", e.message());
        // Even a batch without events fails now: it may depend on the lost one.
        assert!(c.queue(vec![], ins("d/c")).durable().await.is_err());
        assert!(c.is_failed());
        assert!(rx.try_recv().is_err(), "nothing of a batch that is not durable reaches an agent");
        assert!(c.failed().await.0.contains("disk gone"));
    }
}
