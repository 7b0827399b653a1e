//! The CNI environment: which command, which container, which namespace and interface, and the
//! runtime's arguments. Pure: parsed from a lookup function, so tests need no process environment.

use std::collections::BTreeMap;

use super::error::{CniError, code};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            other => {
                return Err(invalid("CNI_COMMAND", other, "one of ADD, DEL, CHECK, GC, STATUS, VERSION"));
            }
        })
    }
}

/// The pod as the runtime names it in `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub infra_container_id: Option<String>,
    /// Berth's own keys: how the pod is networked (`shared`, `exclusive`, `trunk`), and for its own ENI the
    /// vSwitch and security groups (comma-separated).
    pub network_mode: Option<String>,
    pub vswitch_id: Option<String>,
    pub security_group_ids: Vec<String>,
    /// Bits per second the pod may receive and send (`kubernetes.io/ingress-bandwidth` and
    /// `egress-bandwidth` as `BERTH_INGRESS_BANDWIDTH`/`BERTH_EGRESS_BANDWIDTH`).
    pub ingress_bandwidth: Option<u64>,
    pub egress_bandwidth: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// Empty when the runtime gave none (allowed for DEL).
    pub netns: String,
    pub ifname: String,
    pub path: Vec<String>,
    pub pod: PodArgs,
}

fn invalid(var: &str, value: &str, expected: &str) -> CniError {
    CniError::new(code::INVALID_ENVIRONMENT, format!("invalid {var} \"{value}\""), format!("expected {expected}"))
}

fn missing(var: &str, command: &str) -> CniError {
    CniError::new(code::INVALID_ENVIRONMENT, format!("{var} is required for {command}"), format!("the container runtime must set {var}"))
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric()) && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// At most 15 bytes, not `.` or `..`, no `/`, `:` or white space.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty() && name.len() <= 15 && name != "." && name != ".." && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// `K=V;K=V`; keys other than the Kubernetes ones are refused unless `IgnoreUnknown` is set.
pub fn parse_args(args: &str) -> Result<PodArgs, CniError> {
    let mut pairs = BTreeMap::new();
    for part in args.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(invalid("CNI_ARGS", args, "KEY=VALUE pairs separated by ';'"));
        };
        pairs.insert(k.to_string(), v.to_string());
    }
    let ignore_unknown = pairs.get("IgnoreUnknown").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let mut pod = PodArgs::default();
    for (k, v) in pairs {
        match k.as_str() {
            "K8S_POD_NAMESPACE" => pod.namespace = Some(v),
            "K8S_POD_NAME" => pod.name = Some(v),
            "K8S_POD_UID" => pod.uid = Some(v),
            "K8S_POD_INFRA_CONTAINER_ID" => pod.infra_container_id = Some(v),
            "BERTH_NETWORK_MODE" => {
                if !["shared", "exclusive", "trunk"].contains(&v.as_str()) {
                    return Err(CniError::new(code::UNSUPPORTED_FIELD, format!("unsupported BERTH_NETWORK_MODE \"{v}\""), "use shared, exclusive or trunk"));
                }
                pod.network_mode = Some(v);
            }
            "BERTH_VSWITCH_ID" => pod.vswitch_id = Some(v),
            "BERTH_SECURITY_GROUP_IDS" => pod.security_group_ids = v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
            "BERTH_INGRESS_BANDWIDTH" => pod.ingress_bandwidth = Some(super::bandwidth::parse_quantity(&k, &v)?),
            "BERTH_EGRESS_BANDWIDTH" => pod.egress_bandwidth = Some(super::bandwidth::parse_quantity(&k, &v)?),
            "IgnoreUnknown" => {}
            _ if ignore_unknown => {}
            other => {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!("unknown CNI_ARGS key \"{other}\" (value \"{v}\")"),
                    "berth understands K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID, K8S_POD_INFRA_CONTAINER_ID, BERTH_NETWORK_MODE, BERTH_VSWITCH_ID, BERTH_SECURITY_GROUP_IDS, BERTH_INGRESS_BANDWIDTH, BERTH_EGRESS_BANDWIDTH; add IgnoreUnknown=1 to pass others",
                ));
            }
        }
    }
    Ok(pod)
}

impl Env {
    /// Reads and checks what `command` needs.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command_text = get("CNI_COMMAND").ok_or_else(|| missing("CNI_COMMAND", "any command"))?;
        let command = Command::parse(&command_text)?;
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let get_checked = |var: &str, required: bool| -> Result<String, CniError> {
            match get(var).filter(|v| !v.is_empty()) {
                Some(v) => Ok(v),
                None if required => Err(missing(var, &command_text)),
                None => Ok(String::new()),
            }
        };
        let container_id = get_checked("CNI_CONTAINERID", needs_container)?;
        if !container_id.is_empty() && !valid_container_id(&container_id) {
            return Err(invalid("CNI_CONTAINERID", &container_id, "letters, digits, '_', '.', '-', starting with a letter or digit"));
        }
        let netns = get_checked("CNI_NETNS", matches!(command, Command::Add | Command::Check))?;
        let ifname = get_checked("CNI_IFNAME", needs_container)?;
        if !ifname.is_empty() && !valid_ifname(&ifname) {
            return Err(invalid("CNI_IFNAME", &ifname, "at most 15 bytes without '/', ':' or white space"));
        }
        let path = get_checked("CNI_PATH", matches!(command, Command::Add | Command::Check))?;
        let pod = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(Env { command, container_id, netns, ifname, path: path.split(':').filter(|p| !p.is_empty()).map(str::to_string).collect(), pod })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env::parse(|k| map.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc-1.2_x"), ("CNI_NETNS", "/run/netns/p"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni")];

    #[test]
    fn a_complete_add() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.path, vec!["/opt/cni/bin", "/usr/lib/cni"]);
    }

    #[test]
    fn missing_and_malformed_variables_name_themselves() {
        let without_netns: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != "CNI_NETNS").collect();
        let e = env(&without_netns).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
        let mut bad: Vec<_> = ADD.to_vec();
        bad[1] = ("CNI_CONTAINERID", "-bad");
        assert!(env(&bad).unwrap_err().msg.contains("CNI_CONTAINERID"));
        bad[1] = ("CNI_CONTAINERID", "ok");
        bad[3] = ("CNI_IFNAME", "this-name-is-too-long");
        assert!(env(&bad).unwrap_err().msg.contains("CNI_IFNAME"));
        assert_eq!(env(&[("CNI_COMMAND", "FROB")]).unwrap_err().code, code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn del_needs_no_netns_and_version_needs_nothing() {
        assert!(env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "GC")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")]).is_err());
    }

    #[test]
    fn kubernetes_args() {
        let pod = parse_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u1;FOO=bar").unwrap();
        assert_eq!(pod.namespace.as_deref(), Some("default"));
        assert_eq!(pod.name.as_deref(), Some("web-0"));
        let e = parse_args("K8S_POD_NAME=x;FOO=bar").unwrap_err();
        assert_eq!(e.code, code::UNSUPPORTED_FIELD);
        assert!(e.msg.contains("FOO") && e.msg.contains("bar"));
        assert_eq!(parse_args("garbage").unwrap_err().code, code::INVALID_ENVIRONMENT);
        let own = parse_args("BERTH_NETWORK_MODE=exclusive;BERTH_VSWITCH_ID=vsw-1;BERTH_SECURITY_GROUP_IDS=sg-1,sg-2").unwrap();
        assert_eq!((own.network_mode.as_deref(), own.vswitch_id.as_deref(), own.security_group_ids.len()), (Some("exclusive"), Some("vsw-1"), 2));
        let e = parse_args("BERTH_NETWORK_MODE=turbo").unwrap_err();
        assert!(e.code == code::UNSUPPORTED_FIELD && e.msg.contains("turbo"), "{e}");
    }

    #[test]
    fn ifname_and_container_rules() {
        assert!(valid_ifname("eth0") && valid_ifname("a2345678901234b") && !valid_ifname("a23456789012345b"));
        assert!(!valid_ifname("..") && !valid_ifname("a/b") && !valid_ifname("a b") && !valid_ifname("a:b"));
        assert!(valid_container_id("k8s_POD.1-x") && !valid_container_id("_x") && !valid_container_id("a/b") && !valid_container_id(""));
    }
}
