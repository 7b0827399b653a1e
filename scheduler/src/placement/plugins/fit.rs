//! The node's state: ready, not blocked by its agent for what the pod needs, and enough of every
//! resource left.

use crate::placement::node::{Health, Node};
use crate::placement::resources::Resources;

/// Why the node cannot take `demand` now (`free`: its free counts less what is held for other
/// pods), in the user's words; None: it can.
pub fn refusal(n: &Node, free: &Resources, d: &Resources) -> Option<&'static str> {
    match n.health {
        Health::Ready => {}
        Health::Unknown => return Some("not reporting"),
        Health::Draining => return Some("being drained"),
    }
    let b = &n.blocked;
    if b.not_ready {
        return Some("its agent is not ready");
    }
    if b.shared_ips && d.shared_ips > 0 {
        return Some("its agent can add no shared IP (IpExhausted)");
    }
    if b.eni_slots && d.eni_slots > 0 {
        return Some("its agent can attach no ENI (EniExhausted)");
    }
    if b.member_eni_slots && d.member_eni_slots > 0 {
        return Some("its agent can bind no member ENI (MemberEniExhausted)");
    }
    if b.disk_slots && d.disk_slots > 0 {
        return Some("its agent can attach no disk (DiskExhausted)");
    }
    let f = free;
    if d.shared_ips > f.shared_ips {
        Some("no shared IP left")
    } else if d.eni_slots > f.eni_slots {
        Some("no ENI slot left")
    } else if d.member_eni_slots > f.member_eni_slots {
        Some("no member-ENI slot left")
    } else if d.disk_slots > f.disk_slots {
        Some("no disk slot left")
    } else if d.pods > f.pods {
        Some("no pod slot left")
    } else if d.cpu_millicores > f.cpu_millicores {
        Some("too little CPU")
    } else if d.memory_bytes > f.memory_bytes {
        Some("too little memory")
    } else {
        None
    }
}
