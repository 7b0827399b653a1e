//! WatchPods, as Kubernetes' watch: every change of a pod's status gets the next revision of the
//! term; the leader keeps a bounded window of recent changes ([`WatchLog`]) so that a client that
//! lost its stream resumes after the last revision it saw, and one whose revision left the window
//! (or belongs to another term) is told so and lists again.
//!
//! The cluster records [`Change`]s as it mutates; the server stamps them with revisions under the
//! cluster's lock (so a ListPods page and its revision agree) and publishes them into the window
//! once the batch they came with is durable, so a watcher never sees what a crash could undo.
//! Each watcher is a task with a cursor over the window and a small buffer of messages to its
//! client: it never holds a lock while it sends, so a slow client blocks no one, and one that
//! falls more than [`WatchLimits::max_lag_events`] behind is closed, told to resume.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::cluster::v1 as pb;
use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::cluster::PodRecord;
use crate::instruction::element_len;

/// What a pod's change was, as WatchPods names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Bound,
    StatusChanged,
    Deleted,
}

impl ChangeKind {
    fn wire(self) -> pb::PodEventType {
        match self {
            ChangeKind::Added => pb::PodEventType::Added,
            ChangeKind::Bound => pb::PodEventType::Bound,
            ChangeKind::StatusChanged => pb::PodEventType::StatusChanged,
            ChangeKind::Deleted => pb::PodEventType::Deleted,
        }
    }
}

/// One change of one pod, with its status after it (before a revision is given).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    pub status: pb::PodStatus,
}

impl Change {
    pub fn of(kind: ChangeKind, rec: &PodRecord) -> Change {
        Change { kind, status: rec.status() }
    }
}

/// The changes a cluster records while [`ChangeLog::on`] (the server turns it on).
#[derive(Debug, Default)]
pub struct ChangeLog {
    pub on: bool,
    pub list: Vec<Change>,
    /// Some pod changed since NetworkPolicy last looked (recorded or not).
    pub touched: bool,
}

impl ChangeLog {
    pub fn note(&mut self, kind: ChangeKind, rec: &PodRecord) {
        self.touched = true;
        if self.on {
            self.list.push(Change::of(kind, rec));
        }
    }
}

/// How much history the leader keeps and how far a watcher may fall behind (`[watch]` of
/// scheduler.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimits {
    /// Changes kept for watchers that resume: the newest this many, and no more than
    /// `window_bytes` of them encoded.
    pub window_events: usize,
    pub window_bytes: usize,
    /// A watcher whose client has not taken the changes up to this many revisions behind the
    /// newest is closed (ABORTED) and resumes; less than the window, so that it can.
    pub max_lag_events: u64,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits { window_events: 20_000, window_bytes: 32 << 20, max_lag_events: 5_000 }
    }
}

/// What one message of a watch may weigh encoded (a larger event comes alone).
const MESSAGE_BUDGET_BYTES: usize = 1 << 20;
/// Events in one message at most.
const MESSAGE_EVENTS: usize = 1_000;
/// Messages buffered for a watcher's client, beyond what HTTP/2 holds.
const BUFFER_MESSAGES: usize = 8;
/// A watcher whose filter skipped changes hears the revision it reached at most this often, so
/// that it resumes from a recent revision (Kubernetes' bookmarks).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Which pods a watcher wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub namespace: String,
    pub name: String,
}

impl Filter {
    pub fn of(r: &pb::WatchPodsRequest) -> Result<Filter, Status> {
        if !r.name.is_empty() && r.namespace.is_empty() {
            return Err(Status::invalid_argument(format!("WatchPods name {:?} needs its namespace; set namespace too", r.name)));
        }
        Ok(Filter { namespace: r.namespace.clone(), name: r.name.clone() })
    }

    fn matches(&self, e: &pb::PodEvent) -> bool {
        let Some(spec) = e.pod.as_ref().and_then(|p| p.spec.as_ref()) else { return false };
        (self.namespace.is_empty() || spec.namespace == self.namespace) && (self.name.is_empty() || spec.name == self.name)
    }
}

struct Window {
    /// Consecutive revisions, oldest first.
    events: VecDeque<Arc<pb::PodEvent>>,
    bytes: usize,
    /// The newest revision published (0: none yet).
    head: u64,
}

/// The recent changes of one term, by revision.
pub struct WatchLog {
    /// Names the term: a revision means something only with it.
    pub term: u64,
    limits: WatchLimits,
    window: Mutex<Window>,
    /// The newest revision given (under the cluster's lock), published or not yet.
    assigned: Mutex<u64>,
    /// The newest revision published, for watchers to wait on.
    published: watch::Sender<u64>,
    /// Open watches, and those closed for lagging, for `/metrics`.
    watchers: std::sync::atomic::AtomicU64,
    closed_lagging: std::sync::atomic::AtomicU64,
}

/// A part of the window read by a watcher.
struct Read {
    events: Vec<Arc<pb::PodEvent>>,
    /// Every change up to this revision was looked at.
    through: u64,
    /// More follow beyond this read.
    more: bool,
}

impl WatchLog {
    pub fn new(limits: WatchLimits) -> Arc<WatchLog> {
        // Random, so a revision of one term is never taken for one of another (a restart or a
        // new leader); 53 bits, so JSON tools keep it exact.
        let term = (uuid::Uuid::new_v4().as_u64_pair().0 >> 11).max(1);
        Arc::new(WatchLog {
            term,
            limits,
            window: Mutex::new(Window { events: VecDeque::new(), bytes: 0, head: 0 }),
            assigned: Mutex::new(0),
            published: watch::channel(0).0,
            watchers: 0.into(),
            closed_lagging: 0.into(),
        })
    }

    /// The newest revision given: a listing read now is at it.
    pub fn revision(&self) -> u64 {
        *self.assigned.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives the changes their revisions; call under the lock they were made under, and publish
    /// the result in the same order.
    pub fn stamp(&self, changes: Vec<Change>) -> Vec<Arc<pb::PodEvent>> {
        let mut assigned = self.assigned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        changes
            .into_iter()
            .map(|c| {
                *assigned += 1;
                Arc::new(pb::PodEvent { r#type: c.kind.wire() as i32, revision: *assigned, pod: Some(c.status) })
            })
            .collect()
    }

    /// Adds stamped events (once durable) to the window, dropping the oldest beyond its limits.
    pub fn publish(&self, events: Vec<Arc<pb::PodEvent>>) {
        let Some(last) = events.last().map(|e| e.revision) else { return };
        {
            let mut w = self.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for e in events {
                w.bytes += e.encoded_len();
                w.events.push_back(e);
            }
            while w.events.len() > self.limits.window_events || (w.bytes > self.limits.window_bytes && w.events.len() > 1) {
                if let Some(old) = w.events.pop_front() {
                    w.bytes -= old.encoded_len();
                }
            }
            w.head = last;
        }
        self.published.send_replace(last);
    }

    /// The oldest revision the window holds; a watch may resume after the one before it.
    fn oldest(w: &Window) -> u64 {
        w.events.front().map_or(w.head + 1, |e| e.revision)
    }

    /// Where a new watch starts: after `revision` of `term`, or after the newest for 0 and 0.
    pub fn start(&self, revision: u64, term: u64) -> Result<u64, Status> {
        let assigned = self.revision();
        if revision == 0 && term == 0 {
            return Ok(assigned);
        }
        if term != self.term {
            return Err(Status::out_of_range(format!(
                "revision {revision} is of term {term}, and this leader's term is {} (the leader changed or restarted since); list the pods again (ListPods) and watch from the revision it gives",
                self.term
            )));
        }
        if revision > assigned {
            return Err(Status::out_of_range(format!("revision {revision} is ahead of this term's newest, {assigned}; list the pods again (ListPods) and watch from the revision it gives")));
        }
        let w = self.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let oldest = Self::oldest(&w);
        if revision + 1 < oldest {
            return Err(Status::out_of_range(format!(
                "revision {revision} is too old: the oldest change this leader keeps is revision {oldest} (it keeps the last {} changes); list the pods again (ListPods) and watch from the revision it gives",
                self.limits.window_events
            )));
        }
        Ok(revision)
    }

    /// The events after `after` that `filter` selects, as much as one message takes; `Err` with
    /// the oldest revision kept when `after` has left the window.
    fn read(&self, after: u64, filter: &Filter) -> Result<Read, u64> {
        let w = self.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let oldest = Self::oldest(&w);
        if after + 1 < oldest {
            return Err(oldest);
        }
        let mut read = Read { events: Vec::new(), through: after, more: false };
        if after >= w.head {
            return Ok(read);
        }
        let skip = (after + 1 - oldest) as usize;
        let mut bytes = 0;
        for e in w.events.iter().skip(skip) {
            if filter.matches(e) {
                let cost = element_len(e.encoded_len());
                if read.events.len() >= MESSAGE_EVENTS || (!read.events.is_empty() && bytes + cost > MESSAGE_BUDGET_BYTES) {
                    read.more = true;
                    break;
                }
                bytes += cost;
                read.events.push(e.clone());
            }
            read.through = e.revision;
        }
        Ok(read)
    }

    fn head(&self) -> u64 {
        *self.published.borrow()
    }

    /// The watch's part of `/metrics`.
    pub fn metrics_text(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let (kept, bytes) = {
            let w = self.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (w.events.len(), w.bytes)
        };
        let mut out = String::new();
        for (name, kind, help, value) in [
            ("berth_scheduler_watchers", "gauge", "Open WatchPods streams.", self.watchers.load(Relaxed)),
            ("berth_scheduler_watch_revision", "gauge", "The newest revision of pod changes in this term.", self.revision()),
            ("berth_scheduler_watch_window_events", "gauge", "Pod changes kept for watches that resume.", kept as u64),
            ("berth_scheduler_watch_window_bytes", "gauge", "Their encoded size.", bytes as u64),
            ("berth_scheduler_watches_closed_lagging_total", "counter", "Watches closed (ABORTED) because their client fell more than watch.max_lag_events behind.", self.closed_lagging.load(Relaxed)),
        ] {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        }
        out
    }
}

/// The answer stream of WatchPods.
pub type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchPodsResponse, Status>> + Send + 'static>>;

/// Starts a watcher from `cursor` (see [`WatchLog::start`]); it ends when its client goes, when it
/// falls behind, or when `ended` resolves (the term is over) with why.
pub fn watcher(log: Arc<WatchLog>, filter: Filter, cursor: u64, ended: impl Future<Output = String> + Send + 'static) -> WatchStream {
    let (tx, rx) = mpsc::channel::<pb::WatchPodsResponse>(BUFFER_MESSAGES);
    let (close_tx, close_rx) = oneshot::channel::<Status>();
    log.watchers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(async move {
        let why = run(&log, &filter, cursor, &tx, ended).await;
        log.watchers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if why.as_ref().is_some_and(|s| s.code() == tonic::Code::Aborted) {
            log.closed_lagging.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(status) = why {
            let _ = close_tx.send(status);
        }
    });
    // What was buffered goes out first, then the status the watcher was closed with.
    let closing = futures::stream::once(close_rx).filter_map(|r| async move { r.ok().map(Err) });
    Box::pin(ReceiverStream::new(rx).map(Ok).chain(closing))
}

/// The watcher's loop; returns the status to close with (`None`: the client went).
async fn run(log: &WatchLog, filter: &Filter, mut cursor: u64, tx: &mpsc::Sender<pb::WatchPodsResponse>, ended: impl Future<Output = String>) -> Option<Status> {
    tokio::pin!(ended);
    let mut published = log.published.subscribe();
    // The revision the client was last told of, and when.
    let mut told: Option<u64> = None;
    let mut told_at = tokio::time::Instant::now();
    loop {
        let read = match log.read(cursor, filter) {
            Ok(r) => r,
            Err(oldest) => {
                return Some(Status::out_of_range(format!(
                    "this watch fell out of the window of kept changes (it was at revision {cursor}, the oldest kept is {oldest}); list the pods again (ListPods) and watch from the revision it gives"
                )));
            }
        };
        let due = told.is_none() || !read.events.is_empty() || (told != Some(read.through) && told_at.elapsed() >= PROGRESS_EVERY);
        if due {
            let message = pb::WatchPodsResponse { term: log.term, events: read.events.iter().map(|e| (**e).clone()).collect(), revision: read.through };
            // Wait for room in the client's buffer, but not past the lag the watch may have.
            let permit = loop {
                tokio::select! {
                    p = tx.reserve() => match p {
                        Ok(p) => break p,
                        Err(_) => return None,
                    },
                    why = &mut ended => return Some(term_ended(&why)),
                    changed = published.changed() => {
                        if changed.is_err() {
                            return Some(term_ended("stopping"));
                        }
                        let behind = log.head().saturating_sub(cursor);
                        if behind > log.limits.max_lag_events {
                            let last = told.unwrap_or(cursor);
                            return Some(Status::aborted(format!(
                                "this watch fell {behind} revisions behind the newest (more than the {} it may; its client reads slower than pods change) and was closed; resume from revision {last}, the last one it was sent",
                                log.limits.max_lag_events
                            )));
                        }
                    }
                }
            };
            permit.send(message);
            told = Some(read.through);
            told_at = tokio::time::Instant::now();
        }
        cursor = read.through;
        if read.more {
            continue;
        }
        // Wait for news; changes the filter skipped are told of after PROGRESS_EVERY.
        let progress_pending = told != Some(cursor);
        tokio::select! {
            changed = published.changed() => if changed.is_err() { return Some(term_ended("stopping")) },
            why = &mut ended => return Some(term_ended(&why)),
            () = tx.closed() => return None,
            () = tokio::time::sleep(PROGRESS_EVERY), if progress_pending => {}
        }
    }
}

fn term_ended(why: &str) -> Status {
    Status::unavailable(format!("this scheduler's term ended ({why}); resume the watch at the leader (a new term answers OUT_OF_RANGE: list the pods again)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: ChangeKind, ns: &str, name: &str) -> Change {
        Change { kind, status: pb::PodStatus { spec: Some(pb::PodSpec { namespace: ns.into(), name: name.into(), ..Default::default() }), ..Default::default() } }
    }

    fn all() -> Filter {
        Filter { namespace: String::new(), name: String::new() }
    }

    #[test]
    fn revisions_follow_each_other_and_the_window_keeps_the_newest() {
        let log = WatchLog::new(WatchLimits { window_events: 3, window_bytes: 1 << 20, max_lag_events: 2 });
        let stamped = log.stamp((0..5).map(|k| change(ChangeKind::Added, "d", &format!("p{k}"))).collect());
        assert_eq!(stamped.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(log.revision(), 5, "a listing now is at the newest revision given, published or not");
        assert_eq!(log.start(5, log.term).unwrap(), 5);
        log.publish(stamped);
        let r = log.read(2, &all()).unwrap();
        assert_eq!((r.events.iter().map(|e| e.revision).collect::<Vec<_>>(), r.through, r.more), (vec![3, 4, 5], 5, false));
        assert_eq!(log.read(1, &all()).err(), Some(3), "revision 2 was dropped");
        let e = log.start(1, log.term).unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange);
        assert!(e.message().contains("oldest change this leader keeps is revision 3"), "{}", e.message());
        let e = log.start(2, log.term + 1).unwrap_err();
        assert!(e.code() == tonic::Code::OutOfRange && e.message().contains("of term"), "{}", e.message());
        assert_eq!(log.start(9, log.term).unwrap_err().code(), tonic::Code::OutOfRange, "a revision never given");
        assert_eq!(log.start(0, 0).unwrap(), 5, "from now on");
    }

    #[test]
    fn a_filter_skips_other_pods_but_the_cursor_passes_them() {
        let log = WatchLog::new(WatchLimits::default());
        log.publish(log.stamp(vec![change(ChangeKind::Added, "a", "x"), change(ChangeKind::Added, "b", "x"), change(ChangeKind::Bound, "a", "y"), change(ChangeKind::Deleted, "c", "z")]));
        let one = Filter { namespace: "a".into(), name: "y".into() };
        let r = log.read(0, &one).unwrap();
        assert_eq!((r.events.len(), r.events[0].revision, r.through), (1, 3, 4));
        let ns = Filter { namespace: "a".into(), name: String::new() };
        assert_eq!(log.read(0, &ns).unwrap().events.len(), 2);
        assert!(Filter::of(&pb::WatchPodsRequest { name: "y".into(), ..Default::default() }).is_err(), "a name needs its namespace");
    }

    #[test]
    fn a_large_window_is_cut_by_bytes_and_a_read_by_message() {
        let log = WatchLog::new(WatchLimits { window_events: 100_000, window_bytes: 64 << 10, max_lag_events: 10 });
        let mut big = change(ChangeKind::Added, "d", "p");
        big.status.message = "x".repeat(1 << 10);
        log.publish(log.stamp(vec![big; 200]));
        let w = log.window.lock().unwrap();
        assert!(w.bytes <= 64 << 10 && w.events.len() < 70, "{} events, {} bytes", w.events.len(), w.bytes);
        drop(w);
        let log = WatchLog::new(WatchLimits::default());
        log.publish(log.stamp((0..2_500).map(|k| change(ChangeKind::Added, "d", &format!("p{k}"))).collect()));
        let r = log.read(0, &all()).unwrap();
        assert_eq!((r.events.len(), r.through, r.more), (MESSAGE_EVENTS, MESSAGE_EVENTS as u64, true));
    }

    #[tokio::test]
    async fn a_watcher_gets_the_changes_in_order_then_is_closed_when_it_lags() {
        let log = WatchLog::new(WatchLimits { window_events: 10_000, window_bytes: 64 << 20, max_lag_events: 50 });
        let (_end, ended) = oneshot::channel::<String>();
        let ended = async move { ended.await.unwrap_or_default() };
        let mut stream = watcher(log.clone(), all(), 0, ended);
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!((first.term, first.events.len(), first.revision), (log.term, 0, 0), "the first message comes at once");
        log.publish(log.stamp(vec![change(ChangeKind::Added, "d", "a"), change(ChangeKind::Bound, "d", "a")]));
        let m = stream.next().await.unwrap().unwrap();
        assert_eq!(m.events.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(m.events[1].r#type, pb::PodEventType::Bound as i32);
        // The client stops reading: its buffer fills, then it lags past 50 revisions.
        for k in 0..40 {
            log.publish(log.stamp((0..10).map(|j| change(ChangeKind::StatusChanged, "d", &format!("p{k}-{j}"))).collect()));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut last = 2;
        let status = loop {
            match stream.next().await.unwrap() {
                Ok(m) => {
                    assert!(m.events.first().is_none_or(|e| e.revision == last + 1), "no gap: {last} then {:?}", m.events.first().map(|e| e.revision));
                    last = m.revision;
                }
                Err(s) => break s,
            }
        };
        assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
        assert!(status.message().contains(&format!("resume from revision {last}")), "{} (last received {last})", status.message());
        assert_eq!(log.start(last, log.term).unwrap(), last, "the window still holds what it needs");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let text = log.metrics_text();
        assert!(text.contains("berth_scheduler_watches_closed_lagging_total 1\n") && text.contains("berth_scheduler_watchers 0\n"), "{text}");
    }
}
