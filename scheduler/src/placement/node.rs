//! One node as the scheduler sees it: what its agent last reported, and what the scheduler has
//! bound to it since that the agent has not yet counted.

use std::collections::HashSet;

use berth_proto::cluster::v1 as pb;

use super::resources::Resources;

/// Condition types an agent reports. Any of them true means the agent cannot grow that resource
/// any more, so the scheduler treats its free count as zero whatever the count says.
pub mod condition {
    /// No shared IP left and the pool cannot grow (ENI quota, vSwitch exhausted).
    pub const IP_EXHAUSTED: &str = "IpExhausted";
    /// No ENI slot left for an exclusive-mode pod.
    pub const ENI_EXHAUSTED: &str = "EniExhausted";
    /// No member-ENI slot left for a trunk-mode pod.
    pub const MEMBER_ENI_EXHAUSTED: &str = "MemberEniExhausted";
    /// No disk can be attached any more.
    pub const DISK_EXHAUSTED: &str = "DiskExhausted";
    /// The agent asks for no new pods (it is shutting down or unhealthy).
    pub const NOT_READY: &str = "NotReady";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Reporting within its lease; takes pods.
    Ready,
    /// Its lease ran out; its pods were given to other nodes.
    Unknown,
    /// Being emptied for removal; takes no new pods.
    Draining,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ready => "Ready",
            Health::Unknown => "Unknown",
            Health::Draining => "Draining",
        }
    }
}

/// What the conditions of a report forbid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Blocked {
    pub shared_ips: bool,
    pub eni_slots: bool,
    pub member_eni_slots: bool,
    pub disk_slots: bool,
    pub not_ready: bool,
}

impl Blocked {
    pub fn from_conditions(conditions: &[pb::Condition]) -> Blocked {
        let mut b = Blocked::default();
        for c in conditions.iter().filter(|c| c.status) {
            match c.r#type.as_str() {
                condition::IP_EXHAUSTED => b.shared_ips = true,
                condition::ENI_EXHAUSTED => b.eni_slots = true,
                condition::MEMBER_ENI_EXHAUSTED => b.member_eni_slots = true,
                condition::DISK_EXHAUSTED => b.disk_slots = true,
                condition::NOT_READY => b.not_ready = true,
                _ => {}
            }
        }
        b
    }

    /// Whether the conditions forbid what `demand` asks for.
    pub fn forbids(&self, demand: &Resources) -> bool {
        self.not_ready
            || (self.shared_ips && demand.shared_ips > 0)
            || (self.eni_slots && demand.eni_slots > 0)
            || (self.member_eni_slots && demand.member_eni_slots > 0)
            || (self.disk_slots && demand.disk_slots > 0)
    }
}

/// A pod bound by the scheduler that the agent's free counts do not include yet.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub pod: String,
    pub demand: Resources,
    /// The node's report sequence when the pod was bound: only a later report that lists the
    /// pod can have counted it.
    pub after_sequence: u64,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub identity: pb::NodeIdentity,
    pub zone: u16,
    /// Its identity class (see `IdentityClasses`): nodes alike to selectors share one.
    pub class: u32,
    pub allocatable: Resources,
    /// The free counts of the last report, capped by allocatable.
    pub reported_free: Resources,
    /// Reported free minus unacknowledged reservations: what placement may still take.
    pub free: Resources,
    pub blocked: Blocked,
    pub reservations: Vec<Reservation>,
    /// Pods the scheduler has bound to this node.
    pub pods: HashSet<String>,
    pub health: Health,
    pub sequence: u64,
    /// When the last report arrived (the scheduler's clock, ms).
    pub last_seen_ms: u64,
    /// Since when its utilisation has stayed under the scale-down threshold.
    pub underused_since_ms: Option<u64>,
    /// How many pods the last report listed (the agent still runs them).
    pub reported_pods: usize,
    /// The last report without its pod list (kept for ListNodes).
    pub last_report: pb::NodeReport,
}

impl Node {
    /// Recomputes `free` from the reported counts and the reservations.
    pub(crate) fn refresh_free(&mut self) {
        let reserved = self.reservations.iter().fold(Resources::default(), |acc, r| acc.saturating_add(&r.demand));
        self.free = self.reported_free.saturating_sub(&reserved);
    }

    /// Takes `demand` for `pod` until a report acknowledges it.
    pub(crate) fn reserve(&mut self, pod: &str, demand: Resources) {
        self.reservations.push(Reservation { pod: pod.to_string(), demand, after_sequence: self.sequence });
        self.free = self.free.saturating_sub(&demand);
        self.pods.insert(pod.to_string());
    }

    /// Forgets `pod`; an unacknowledged reservation gives its resources back at once, an
    /// acknowledged one when the agent reports them free.
    pub(crate) fn release(&mut self, pod: &str) {
        self.pods.remove(pod);
        if let Some(i) = self.reservations.iter().position(|r| r.pod == pod) {
            self.reservations.swap_remove(i);
            self.refresh_free();
        }
    }

    /// Takes a report in: counts, conditions, and the reservations it acknowledges.
    pub(crate) fn apply_report(&mut self, report: &pb::NodeReport, now_ms: u64) {
        self.allocatable = report.allocatable.as_ref().map(Resources::from).unwrap_or_default();
        self.blocked = Blocked::from_conditions(&report.conditions);
        self.reported_free = report.free.as_ref().map(Resources::from).unwrap_or_default().min(&self.allocatable);
        let sequence = report.sequence;
        if !self.reservations.is_empty() {
            let listed: HashSet<String> = report.pods.iter().map(|p| super::pod_key(&p.namespace, &p.name)).collect();
            self.reservations.retain(|r| !(sequence > r.after_sequence && listed.contains(&r.pod)));
        }
        self.sequence = sequence;
        self.last_seen_ms = now_ms;
        self.refresh_free();
        self.reported_pods = report.pods.len();
        // Kept for ListNodes without its pods, and without the room they took: 5,000 nodes of
        // 30 pods would hold 15 MiB of empty vectors.
        let mut kept = report.clone();
        kept.pods = Vec::new();
        self.last_report = kept;
    }

    /// A new report stream numbers its reports from 1 again: every reservation waits for a report
    /// of that stream that lists its pod.
    pub(crate) fn restart_sequence(&mut self) {
        self.sequence = 0;
        for r in &mut self.reservations {
            r.after_sequence = 0;
        }
    }

    pub fn utilisation(&self) -> f64 {
        self.allocatable.utilisation(&self.free)
    }
}
