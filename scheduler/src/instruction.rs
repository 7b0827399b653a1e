//! Instructions that stay under the gRPC message limit: one batch of removals and runs for a node
//! is cut into several [`pb::NodeInstruction`]s of at most a byte budget each, in order —
//! removals first, then runs — so an agent that applies them one after the other (and `remove`
//! before `run` within one) removes before it runs, as with a single instruction.

use berth_proto::cluster::v1 as pb;
use prost::Message as _;

/// What one instruction may carry. A quarter of tonic's default 4 MiB decode limit, so a burst
/// of binds stays well within any agent's limit; one spec larger than this goes alone.
pub const INSTRUCTION_BUDGET_BYTES: usize = 1 << 20;

/// The bytes one element of a repeated length-delimited field takes in its message.
pub(crate) fn element_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Cuts `remove` then `run` into instructions whose encoding stays under `budget` bytes (an
/// element alone larger than it gets an instruction of its own). Each carries
/// `acknowledged_sequence`. Nothing in, nothing out.
pub fn split(remove: Vec<String>, run: Vec<pb::PodSpec>, acknowledged_sequence: u64, budget: usize) -> Vec<pb::NodeInstruction> {
    let header = pb::NodeInstruction { acknowledged_sequence, ..Default::default() }.encoded_len();
    let mut out = Vec::new();
    let mut current = pb::NodeInstruction { acknowledged_sequence, ..Default::default() };
    let mut size = header;
    let mut make_room = |current: &mut pb::NodeInstruction, size: &mut usize, cost: usize| {
        let empty = current.run.is_empty() && current.remove.is_empty();
        if !empty && *size + cost > budget {
            out.push(std::mem::replace(current, pb::NodeInstruction { acknowledged_sequence, ..Default::default() }));
            *size = header;
        }
        *size += cost;
    };
    for key in remove {
        make_room(&mut current, &mut size, element_len(key.len()));
        current.remove.push(key);
    }
    for spec in run {
        make_room(&mut current, &mut size, element_len(spec.encoded_len()));
        current.run.push(spec);
    }
    if !current.run.is_empty() || !current.remove.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, label_bytes: usize) -> pb::PodSpec {
        let mut s = pb::PodSpec { namespace: "d".into(), name: name.into(), ..Default::default() };
        s.labels.insert("blob".into(), "x".repeat(label_bytes));
        s
    }

    #[test]
    fn a_batch_is_cut_under_the_budget_with_removals_first_and_nothing_lost() {
        let remove: Vec<String> = (0..3).map(|k| format!("d/gone{k}")).collect();
        let run: Vec<pb::PodSpec> = (0..40).map(|k| spec(&format!("p{k}"), 200 << 10)).collect();
        let parts = split(remove.clone(), run.clone(), 7, INSTRUCTION_BUDGET_BYTES);
        assert!(parts.len() >= 8, "40 × 200 KiB in 1 MiB parts: {}", parts.len());
        for p in &parts {
            assert!(p.encoded_len() <= INSTRUCTION_BUDGET_BYTES, "{} bytes", p.encoded_len());
            assert_eq!(p.acknowledged_sequence, 7);
        }
        // In order: every removal comes before every run, and each element once.
        let removed: Vec<String> = parts.iter().flat_map(|p| p.remove.clone()).collect();
        let ran: Vec<pb::PodSpec> = parts.iter().flat_map(|p| p.run.clone()).collect();
        assert_eq!((removed, ran), (remove, run));
        let last_removal = parts.iter().rposition(|p| !p.remove.is_empty()).unwrap();
        let first_run = parts.iter().position(|p| !p.run.is_empty()).unwrap();
        assert!(last_removal <= first_run);
        assert!(parts[first_run].run.len() < 40);
    }

    #[test]
    fn a_spec_larger_than_the_budget_goes_alone_and_small_batches_stay_whole() {
        let parts = split(vec![], vec![spec("a", 10), spec("big", 3 << 20), spec("b", 10)], 1, INSTRUCTION_BUDGET_BYTES);
        let names: Vec<Vec<&str>> = parts.iter().map(|p| p.run.iter().map(|s| s.name.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["a"], vec!["big"], vec!["b"]]);
        let whole = split(vec!["d/x".into()], vec![spec("a", 10), spec("b", 10)], 1, INSTRUCTION_BUDGET_BYTES);
        assert_eq!((whole.len(), whole[0].remove.len(), whole[0].run.len()), (1, 1, 2));
        assert!(split(vec![], vec![], 1, INSTRUCTION_BUDGET_BYTES).is_empty());
    }
}
