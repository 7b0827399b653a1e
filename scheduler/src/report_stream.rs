//! What the scheduler answers on a node's report stream that it cannot go on with: a gRPC
//! status saying what was wrong and what to do, sent before the stream ends, so an agent is
//! never left with a silent close (it would reconnect and send the same report again).

use berth_proto::cluster::v1 as pb;
use tonic::Status;

/// The node a report is from, if the stream may take it: every report names the node, and one
/// stream serves one node (`stream_node`, named by its first report).
pub fn reporting_node(report: &pb::NodeReport, stream_node: Option<&str>) -> Result<String, Status> {
    let Some(id) = report.identity.as_ref().map(|i| i.instance_id.as_str()).filter(|i| !i.is_empty()) else {
        return Err(Status::invalid_argument("a node report needs identity.instance_id (the node's instance ID) in every report; the stream ends"));
    };
    match stream_node {
        Some(first) if first != id => Err(Status::invalid_argument(format!("this report stream serves node {first}, and a report of node {id} came on it: open one stream per node; the stream ends"))),
        _ => Ok(id.to_string()),
    }
}

/// The answer to a report the server could not read (`e` is what decoding it gave).
pub fn refusal(e: &Status) -> Status {
    match e.code() {
        // tonic's decode limit: "decoded message length too large: found N bytes, the limit is M".
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => Status::resource_exhausted(format!(
            "the node report is too large for the scheduler ({}); reports carry pod keys and status only, so the node runs pods with very long names or the agent is older than the scheduler: delete such pods or upgrade the agent; the stream ends",
            e.message()
        )),
        tonic::Code::Internal if e.message().contains("decode") => Status::invalid_argument(format!("the node report does not decode as berth.cluster.v1.NodeReport ({}): the agent and the scheduler speak different versions of cluster.proto; the stream ends", e.message())),
        _ => Status::new(e.code(), format!("the report stream broke: {}", e.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(id: &str) -> pb::NodeReport {
        pb::NodeReport { identity: Some(pb::NodeIdentity { instance_id: id.into(), ..Default::default() }), ..Default::default() }
    }

    #[test]
    fn a_report_names_its_node_and_the_stream_keeps_to_one() {
        assert_eq!(reporting_node(&of("i-1"), None).unwrap(), "i-1");
        assert_eq!(reporting_node(&of("i-1"), Some("i-1")).unwrap(), "i-1");
        let e = reporting_node(&of(""), None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("identity.instance_id"), "{}", e.message());
        let e = reporting_node(&of("i-2"), Some("i-1")).unwrap_err();
        assert!(e.message().contains("i-1") && e.message().contains("i-2"), "{}", e.message());
    }

    #[test]
    fn a_report_too_large_is_resource_exhausted_and_says_what_to_do() {
        let too_big = Status::out_of_range("Error, decoded message length too large: found 5242880 bytes, the limit is: 4194304 bytes");
        let a = refusal(&too_big);
        assert_eq!(a.code(), tonic::Code::ResourceExhausted);
        assert!(a.message().contains("5242880") && a.message().contains("delete such pods"), "{}", a.message());
        let garbled = refusal(&Status::internal("failed to decode Protobuf message: invalid wire type"));
        assert_eq!(garbled.code(), tonic::Code::InvalidArgument);
        assert_eq!(refusal(&Status::cancelled("gone")).code(), tonic::Code::Cancelled);
    }
}
