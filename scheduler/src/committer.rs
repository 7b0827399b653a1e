//! Group commit. Handlers change the pure cluster state under its lock and hand the events and the
//! instructions that follow from them to the [`Committer`], in the order of the changes; its thread
//! takes everything queued, makes it durable with one [`Store::append`] (one fsync, or one round of
//! etcd transactions), and only then sends the instructions to the agents and answers the callers.
//! So no lock is held across a sync, placement goes on while a batch is written, and what an agent
//! or client hears is always durable. A failed append fails its batch and every one queued after
//! it (they build on it); the term is then over and the replica reloads the store.
//!
//! A store whose journal grew long asks for a checkpoint ([`Store::checkpoint_due`]); the next
//! call takes it from the cluster under the lock it already holds and queues it with its batch,
//! so it holds exactly the events queued up to it. The committer appends up to that batch, then
//! has the store write the checkpoint — encoded and synced on its thread, under no lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use berth_proto::cluster::v1 as pb;
use tonic::Status;

use crate::store::{Checkpoint, Event, Store};

/// Most events one append takes, so one batch cannot grow without bound under a flood of calls.
const MAX_BATCH_EVENTS: usize = 50_000;

/// The error boxed: a channel's slots are the size of its item, and a `Status` inline would make
/// every connected agent's channel hold kilobytes of room for an error sent once at the end.
pub type InstructionSender = tokio::sync::mpsc::Sender<Result<pb::NodeInstruction, Box<Status>>>;

/// Connected agents: node → (stream generation, sender).
pub type Streams = Arc<Mutex<HashMap<String, (u64, InstructionSender)>>>;

/// What one call hands over: events to make durable, then instructions to send and whom to tell.
pub struct Batch {
    pub events: Vec<Event>,
    pub instructions: Vec<(String, pb::NodeInstruction)>,
    pub done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    /// The state with this batch's events applied, when the store asked for a checkpoint.
    pub checkpoint: Option<Checkpoint>,
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
    /// Set by the committer's thread when the store asks for a checkpoint, until a call takes it.
    checkpoint_wanted: Arc<AtomicBool>,
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
        let checkpoint_wanted = Arc::new(AtomicBool::new(false));
        let wanted = checkpoint_wanted.clone();
        std::thread::Builder::new()
            .name("berth-commit".into())
            .spawn(move || {
                let mut broken: Option<String> = None;
                // A checkpoint was asked for and has not come yet: ask once, not after every append.
                let mut asked = false;
                while let Ok(first) = rx.recv() {
                    let mut batches = vec![first];
                    let mut events = batches[0].events.len();
                    // A batch with a checkpoint ends the round: what follows it is not in it.
                    while events < MAX_BATCH_EVENTS
                        && batches.last().is_some_and(|b| b.checkpoint.is_none())
                        && let Ok(b) = rx.try_recv()
                    {
                        events += b.events.len();
                        batches.push(b);
                    }
                    let checkpoint = batches.last_mut().and_then(|b| b.checkpoint.take());
                    let result = match &broken {
                        Some(e) => Err(e.clone()),
                        None => {
                            let all: Vec<Event> = batches.iter_mut().flat_map(|b| std::mem::take(&mut b.events)).collect();
                            let mut r = Ok(());
                            if !all.is_empty() {
                                r = store.append(&all).map_err(|e| e.to_string());
                                counted.appends.fetch_add(1, Ordering::Relaxed);
                                counted.events.fetch_add(all.len() as u64, Ordering::Relaxed);
                            }
                            if r.is_ok()
                                && let Some(state) = checkpoint
                            {
                                r = store.checkpoint(&state).map_err(|e| e.to_string());
                                asked = false;
                            }
                            if r.is_ok() && !asked && store.checkpoint_due() {
                                asked = true;
                                wanted.store(true, Ordering::Relaxed);
                            }
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
        Committer { queue, failed, checkpoint_wanted, stats }
    }

    /// Whether the store asked for a checkpoint; true once per request, and the caller (holding
    /// the cluster's lock) must then queue one with its batch ([`Committer::queue_with`]).
    pub fn take_checkpoint_request(&self) -> bool {
        self.checkpoint_wanted.swap(false, Ordering::Relaxed)
    }

    /// Queues a batch; the caller must hold the lock under which its events were made, so batches
    /// are durable in the order of the changes.
    pub fn queue(&self, events: Vec<Event>, instructions: Vec<(String, pb::NodeInstruction)>) -> Pending {
        self.queue_with(events, instructions, None, None)
    }

    /// [`Committer::queue`] with the state after these events, as a checkpoint for the store, when
    /// it asked for one, and `then` run once the batch is durable (before its callers hear).
    pub fn queue_with(&self, events: Vec<Event>, instructions: Vec<(String, pb::NodeInstruction)>, checkpoint: Option<Checkpoint>, then: Option<Box<dyn FnOnce() + Send>>) -> Pending {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.queue.send(Batch { events, instructions, done: Some(tx), checkpoint, then });
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
    use crate::store::{Checkpoint, Snapshot, StoreError};

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

    /// Asks for a checkpoint once `due_after` events were appended since the last one; records
    /// appends and checkpoints in order.
    struct Folding {
        log: Arc<Mutex<Vec<String>>>,
        since: usize,
        due_after: usize,
    }

    impl Store for Folding {
        fn load(&mut self) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
        fn append(&mut self, events: &[Event]) -> Result<(), StoreError> {
            self.since += events.len();
            self.log.lock().unwrap().push(format!("append {}", events.len()));
            Ok(())
        }
        fn checkpoint_due(&self) -> bool {
            self.since >= self.due_after
        }
        fn checkpoint(&mut self, state: &Checkpoint) -> Result<(), StoreError> {
            self.since = 0;
            self.log.lock().unwrap().push(format!("checkpoint at {}", state.next_order));
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_checkpoint_asked_for_comes_with_the_next_batch_and_ends_its_round() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let c = Committer::start(Box::new(Folding { log: log.clone(), since: 0, due_after: 2 }), Streams::default());
        assert!(!c.take_checkpoint_request());
        c.queue(ev(0), vec![]).durable().await.unwrap();
        assert!(!c.take_checkpoint_request());
        c.queue(ev(1), vec![]).durable().await.unwrap();
        assert!(c.take_checkpoint_request(), "two events appended: the store asks");
        assert!(!c.take_checkpoint_request(), "one request is taken once");
        // The caller holds its lock from taking the state to queueing it: nothing comes between.
        let with = c.queue_with(ev(2), vec![], Some(Checkpoint { next_order: 3, ..Default::default() }), None);
        let after = c.queue(ev(3), vec![]);
        with.durable().await.unwrap();
        after.durable().await.unwrap();
        c.queue(ev(4), vec![]).durable().await.unwrap();
        assert!(c.take_checkpoint_request(), "two events since the checkpoint: asked again");
        let log = log.lock().unwrap().clone();
        let at = log.iter().position(|l| l == "checkpoint at 3").expect("the checkpoint was written");
        assert_eq!(log[at - 1], "append 1", "the batch with the checkpoint is appended first: {log:?}");
        assert_eq!(log[..at].iter().filter(|l| l.starts_with("append")).count(), 3, "{log:?}");
        assert!(log[at + 1..].iter().all(|l| l.starts_with("append")), "what was queued after it is appended after it: {log:?}");
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
