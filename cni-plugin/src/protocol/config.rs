//! The network configuration on stdin. Keys Berth does not know are kept, so that they pass through
//! to the result and to chained plugins.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{CniError, code};

pub const DEFAULT_AGENT_SOCKET: &str = "/run/berth/agent.sock";
/// Where DEL leaves a file per release the agent could not take, for the agent to drain.
pub const DEFAULT_RELEASE_QUEUE_DIR: &str = "/var/lib/berth/release-queue";
pub const DEFAULT_MTU: u32 = 1500;
/// IPv4 needs 68; a veth takes at most 65535.
const MTU_RANGE: std::ops::RangeInclusive<u64> = 68..=65535;

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

/// What a network config says about its pods' network (see [`NetConf::pod_network`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkChoice {
    pub mode: Option<String>,
    pub security_group_ids: Vec<String>,
    pub vswitch_id: Option<String>,
}

/// `sg-…` / `vsw-…`: the prefix, then letters, digits and `-`.
fn valid_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| !rest.is_empty() && rest.len() <= 64 && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
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

    /// The pod interface's MTU: `mtu`, default 1500.
    pub fn mtu(&self) -> Result<u32, CniError> {
        match self.other.get("mtu") {
            None | Some(Value::Null) => Ok(DEFAULT_MTU),
            Some(v) => v
                .as_u64()
                .filter(|m| MTU_RANGE.contains(m))
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| CniError::new(code::INVALID_NETWORK_CONFIG, format!("invalid \"mtu\" {v} in the network config"), "set \"mtu\" to a whole number from 68 to 65535, e.g. 1500")),
        }
    }

    /// `releaseQueueDir`, default /var/lib/berth/release-queue.
    pub fn release_queue_dir(&self) -> Result<std::path::PathBuf, CniError> {
        match self.other.get("releaseQueueDir") {
            None | Some(Value::Null) => Ok(DEFAULT_RELEASE_QUEUE_DIR.into()),
            Some(Value::String(s)) if !s.is_empty() => Ok(s.into()),
            Some(v) => Err(CniError::new(code::INVALID_NETWORK_CONFIG, format!("invalid \"releaseQueueDir\" {v} in the network config"), "set \"releaseQueueDir\" to a directory path")),
        }
    }

    /// Where to append one JSON line per command (`logFile`), when the config names one.
    pub fn log_file(&self) -> Option<std::path::PathBuf> {
        match self.other.get("logFile") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.into()),
            _ => None,
        }
    }

    /// The `dns` object to put in the result, when the config has one.
    pub fn dns(&self) -> Option<&Value> {
        self.other.get("dns").filter(|d| d.is_object())
    }

    /// The network's own pod network: `networkMode` (`shared`, `exclusive`, `trunk`) and, for a pod
    /// with an ENI of its own, `securityGroupIds` (a list of `sg-…`) and `vSwitchId` (`vsw-…`) — how
    /// a runtime that passes no CNI_ARGS (podman, containerd) picks a mode: by the network it names.
    pub fn pod_network(&self) -> Result<NetworkChoice, CniError> {
        let bad = |key: &str, v: &Value, expected: &str| CniError::new(code::INVALID_NETWORK_CONFIG, format!("invalid \"{key}\" {v} in the network config {:?}", self.name), expected.to_string());
        let mode = match self.other.get("networkMode") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) if ["shared", "exclusive", "trunk"].contains(&m.as_str()) => Some(m.clone()),
            Some(v @ Value::String(_)) => return Err(CniError::new(code::UNSUPPORTED_FIELD, format!("unsupported \"networkMode\" {v} in the network config {:?}", self.name), "set \"networkMode\" to \"shared\", \"exclusive\" or \"trunk\"")),
            Some(v) => return Err(bad("networkMode", v, "set \"networkMode\" to \"shared\", \"exclusive\" or \"trunk\"")),
        };
        let security_group_ids = match self.other.get("securityGroupIds") {
            None | Some(Value::Null) => Vec::new(),
            Some(v @ Value::Array(items)) => {
                let ids: Option<Vec<String>> = items.iter().map(|i| i.as_str().filter(|s| valid_id(s, "sg-")).map(str::to_string)).collect();
                ids.ok_or_else(|| bad("securityGroupIds", v, "list security group IDs, e.g. [\"sg-1234\"]"))?
            }
            Some(v) => return Err(bad("securityGroupIds", v, "list security group IDs, e.g. [\"sg-1234\"]")),
        };
        let vswitch_id = match self.other.get("vSwitchId") {
            None | Some(Value::Null) => None,
            Some(Value::String(v)) if valid_id(v, "vsw-") => Some(v.clone()),
            Some(v) => return Err(bad("vSwitchId", v, "name a vSwitch ID, e.g. \"vsw-1234\"")),
        };
        if (!security_group_ids.is_empty() || vswitch_id.is_some()) && mode.as_deref().is_none_or(|m| m == "shared") {
            return Err(CniError::new(
                code::INVALID_NETWORK_CONFIG,
                format!("the network config {:?} names security groups or a vSwitch for shared mode, whose pods use the node's ENIs", self.name),
                "set \"networkMode\" to \"exclusive\" or \"trunk\", or drop \"securityGroupIds\" and \"vSwitchId\"",
            ));
        }
        Ok(NetworkChoice { mode, security_group_ids, vswitch_id })
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
    fn mtu_release_queue_and_dns() {
        let conf = |extra: &str| NetConf::parse(format!(r#"{{"cniVersion":"1.1.0","name":"pods","type":"berth"{extra}}}"#).as_bytes()).unwrap();
        assert_eq!(conf("").mtu().unwrap(), DEFAULT_MTU);
        assert_eq!(conf(r#","mtu":9000"#).mtu().unwrap(), 9000);
        for bad in [r#""big""#, "0", "-1", "1500.5", "70000"] {
            let e = conf(&format!(r#","mtu":{bad}"#)).mtu().unwrap_err();
            assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
            assert!(e.msg.contains(bad), "{e}");
        }
        assert_eq!(conf("").release_queue_dir().unwrap(), std::path::Path::new(DEFAULT_RELEASE_QUEUE_DIR));
        assert_eq!(conf(r#","releaseQueueDir":"/q""#).release_queue_dir().unwrap(), std::path::Path::new("/q"));
        assert_eq!(conf(r#","releaseQueueDir":3"#).release_queue_dir().unwrap_err().code, code::INVALID_NETWORK_CONFIG);
        assert!(conf("").dns().is_none());
        assert_eq!(conf(r#","dns":{"nameservers":["10.0.0.10"]}"#).dns().unwrap()["nameservers"][0], "10.0.0.10");
    }

    #[test]
    fn the_network_picks_the_mode_and_names_a_bad_value() {
        let conf = |extra: &str| NetConf::parse(format!(r#"{{"cniVersion":"1.0.0","name":"berth-trunk","type":"berth"{extra}}}"#).as_bytes()).unwrap();
        assert_eq!(conf("").pod_network().unwrap(), NetworkChoice::default());
        let c = conf(r#","networkMode":"trunk","securityGroupIds":["sg-1","sg-2"],"vSwitchId":"vsw-9""#).pod_network().unwrap();
        assert_eq!((c.mode.as_deref(), c.security_group_ids.len(), c.vswitch_id.as_deref()), (Some("trunk"), 2, Some("vsw-9")));
        for (extra, code_, names) in [
            (r#","networkMode":"turbo""#, code::UNSUPPORTED_FIELD, "turbo"),
            (r#","networkMode":3"#, code::INVALID_NETWORK_CONFIG, "networkMode"),
            (r#","networkMode":"trunk","securityGroupIds":["web"]"#, code::INVALID_NETWORK_CONFIG, "web"),
            (r#","networkMode":"trunk","securityGroupIds":"sg-1""#, code::INVALID_NETWORK_CONFIG, "securityGroupIds"),
            (r#","networkMode":"exclusive","vSwitchId":"vsw-""#, code::INVALID_NETWORK_CONFIG, "vsw-"),
            (r#","securityGroupIds":["sg-1"]"#, code::INVALID_NETWORK_CONFIG, "shared mode"),
        ] {
            let e = conf(extra).pod_network().unwrap_err();
            assert_eq!(e.code, code_, "{extra}: {e}");
            assert!(e.msg.contains(names), "{extra}: {e}");
        }
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
