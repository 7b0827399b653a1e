//! `berth-proto`: Berth's wire contracts, generated from `proto/*.proto` at build time.

pub mod codec;

/// The CSI v1 services (Identity, Controller, Node), package `csi.v1`.
pub mod csi {
    #[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
}

/// The node agent's API, package `berth.agent.v1`.
pub mod agent {
    #[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
    pub mod v1 {
        tonic::include_proto!("berth.agent.v1");
    }

    /// Request metadata carrying the plugin↔agent protocol version of the caller on every call,
    /// so a version mismatch is refused (FAILED_PRECONDITION, naming the agent's range) without a
    /// separate Hello round trip on the plugin's hot path.
    pub const PROTOCOL_HEADER: &str = "berth-agent-protocol";

    /// Request metadata carrying the caller's trace context in W3C Trace Context form
    /// (`00-<32 hex trace ID>-<16 hex parent ID>-<2 hex flags>`): the agent logs the call and
    /// the cloud calls it makes with that trace ID.
    pub const TRACE_HEADER: &str = "traceparent";
}

/// The scheduler's API, package `berth.cluster.v1`.
pub mod cluster {
    #[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
    pub mod v1 {
        tonic::include_proto!("berth.cluster.v1");
    }
}
