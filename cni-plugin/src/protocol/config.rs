//! The network configuration on stdin. Keys Berth does not know are kept, so that they pass through
//! to the result and to chained plugins.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{CniError, code};

pub const DEFAULT_AGENT_SOCKET: &str = "/run/berth/agent.sock";

/// One attachment a runtime still uses, in GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Where the node's agent listens.
    #[serde(rename = "agentSocket", default = "default_socket")]
    pub agent_socket: String,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Option<Value>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The name before CNI 1.1 settled on `valid-attachments`.
    #[serde(rename = "cni.dev/attachments", default)]
    pub attachments: Option<Vec<Attachment>>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn default_socket() -> String {
    DEFAULT_AGENT_SOCKET.to_string()
}

impl NetConf {
    /// Decodes stdin: malformed JSON is code 6, a missing or empty required key code 7.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::new(code::DECODE_FAILURE, format!("the network config on stdin is not valid JSON: {e}"), "pass the network configuration as JSON on stdin"))?;
        for key in ["cniVersion", "name", "type"] {
            if value.get(key).and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(CniError::new(code::INVALID_NETWORK_CONFIG, format!("the network config has no \"{key}\""), format!("add \"{key}\" to the network configuration")));
            }
        }
        serde_json::from_value(value).map_err(|e| CniError::new(code::INVALID_NETWORK_CONFIG, format!("invalid network config: {e}"), "check the value types of the berth keys"))
    }

    /// GC's list of attachments still in use (either spelling).
    pub fn attachments_in_use(&self) -> Vec<Attachment> {
        self.valid_attachments.clone().or_else(|| self.attachments.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_unknown_keys_and_reads_ours() {
        let c = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"pods","type":"berth","mtu":1400,"cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}]}"#).unwrap();
        assert_eq!(c.agent_socket, DEFAULT_AGENT_SOCKET);
        assert_eq!(c.other.get("mtu"), Some(&Value::from(1400)));
        assert_eq!(c.attachments_in_use(), vec![Attachment { container_id: "c1".into(), ifname: "eth0".into() }]);
    }

    #[test]
    fn malformed_and_incomplete_configs() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, code::DECODE_FAILURE);
        let e = NetConf::parse(br#"{"cniVersion":"1.1.0","type":"berth"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
        assert!(e.msg.contains("\"name\""));
        assert_eq!(NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"berth","agentSocket":5}"#).unwrap_err().code, code::INVALID_NETWORK_CONFIG);
    }
}
