//! `/etc/berth/scheduler.toml`: strict (an unknown key is an error naming it), every key with a
//! default; flags and environment variables override the file (see `main.rs`). README.md
//! documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::autoscaler::{Expander, NodePool};
use crate::placement::Strategy;

pub const DEFAULT_PATH: &str = "/etc/berth/scheduler.toml";

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    pub server: ServerConfig,
    pub placement: PlacementConfig,
    pub autoscaler: AutoscalerConfig,
    pub hpa: HpaConfig,
    pub cloud: CloudConfig,
    pub store: StoreConfig,
    pub watch: WatchConfig,
    /// Node pools the autoscaler manages (`[[pool]]`).
    pub pool: Vec<NodePool>,
    /// Priority classes pods name (`[[priority_class]]`: name, value).
    pub priority_class: Vec<PriorityClass>,
    /// Per-label disruption budgets preemption honours (`[[disruption_budget]]`).
    pub disruption_budget: Vec<crate::placement::preemption::DisruptionBudget>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityClass {
    pub name: String,
    pub value: i32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The gRPC address agents and berthctl reach.
    pub listen: String,
    /// The address other replicas and clients are redirected to when this replica leads (host:port);
    /// empty: `listen`.
    pub advertise: String,
    /// Where the embedded store keeps its checkpoint and journal.
    pub state_dir: PathBuf,
    /// `/metrics` (Prometheus text) on this address; empty: not served.
    pub metrics_listen: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { listen: "127.0.0.1:19470".into(), advertise: String::new(), state_dir: "/var/lib/berth/scheduler".into(), metrics_listen: String::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    /// "bin-pack" (fullest node first) or "spread" (emptiest first).
    pub strategy: Strategy,
    /// Feasible nodes scored per decision, as a percentage of candidates; 0 is adaptive.
    pub percent_of_nodes_to_score: u32,
    /// A node that has not reported for this long is Unknown and its pods are rescheduled.
    pub lease_secs: u64,
    /// How often pending pods are retried and leases checked.
    pub tick_ms: u64,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig { strategy: Strategy::BinPack, percent_of_nodes_to_score: 0, lease_secs: 15, tick_ms: 200 }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscalerConfig {
    /// Whether to create and delete nodes (needs `cloud.region` and at least one pool).
    pub enabled: bool,
    /// "least-waste", "priority" or "price".
    pub expander: Expander,
    /// A pod pending this long asks for a node.
    pub pending_threshold_secs: u64,
    /// A node under this utilisation (its scarcest resource) is a removal candidate…
    pub scale_down_utilisation: f64,
    /// …once it has stayed under it this long.
    pub scale_down_after_secs: u64,
    /// A requested node that has not reported after this long is forgotten (and deleted).
    pub node_boot_timeout_secs: u64,
    /// How often the autoscaler plans.
    pub interval_ms: u64,
    /// Pods of a lower priority never make the autoscaler add a node.
    pub scale_up_min_priority: i32,
    /// An underused node whose pods would fit on one node of a cheaper type of its pool is
    /// replaced by one (created first, then the dearer node drained and removed).
    pub replace_with_cheaper: bool,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig { enabled: true, expander: Expander::LeastWaste, pending_threshold_secs: 10, scale_down_utilisation: 0.5, scale_down_after_secs: 600, node_boot_timeout_secs: 600, interval_ms: 1000, scale_up_min_priority: i32::MIN, replace_with_cheaper: true }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HpaConfig {
    /// How often each horizontal pod autoscaler reads its metrics and scales (Kubernetes'
    /// `--horizontal-pod-autoscaler-sync-period`); cron autoscalers are checked every tick.
    pub interval_ms: u64,
}

impl Default for HpaConfig {
    fn default() -> Self {
        HpaConfig { interval_ms: 15_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// The ECS API endpoint, e.g. http://127.0.0.1:17380 for the local cloud; empty:
    /// `https://ecs.<region>.aliyuncs.com`.
    pub endpoint: String,
    /// The VPC (2016-04-28) API endpoint; empty: `endpoint` if set (the local cloud serving every
    /// product there), else `https://vpc.<region>.aliyuncs.com`.
    pub vpc_endpoint: String,
    /// The NAS (2017-06-26) API endpoint; empty: `endpoint` if set, else `https://nas.<region>.aliyuncs.com`.
    pub nas_endpoint: String,
    pub region: String,
    /// `access_key_id` and `access_key_secret` as TOML; refused unless mode 0600.
    pub credentials_file: PathBuf,
    /// Where the credentials come from: `file` (`credentials_file`) or `ram_role` (the
    /// instance's RAM role: STS credentials from the metadata service, refreshed before expiry).
    pub credentials_source: berth_cloud::credentials::SourceKind,
    /// The RAM role of the `ram_role` source; empty: the one role the instance has.
    pub ram_role: String,
    /// The instance metadata service the `ram_role` source asks.
    pub metadata_url: String,
    /// The request signature: `v3` (ACS3-HMAC-SHA256, the default) or `v1` (HMAC-SHA1).
    pub signature: berth_cloud::signing::Version,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            endpoint: String::new(),
            vpc_endpoint: String::new(),
            nas_endpoint: String::new(),
            region: String::new(),
            credentials_file: PathBuf::new(), credentials_source: Default::default(), ram_role: String::new(), metadata_url: berth_cloud::credentials::INSTANCE_METADATA_URL.into(), signature: Default::default(),
        }
    }
}

impl ServerConfig {
    /// Where this replica is reached by others: `advertise`, or `listen` when that is empty.
    pub fn advertised(&self) -> &str {
        if self.advertise.is_empty() { &self.listen } else { &self.advertise }
    }
}

/// `[watch]`: what WatchPods keeps for watchers that resume, and how far one may fall behind.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Recent pod changes kept: a watch resumes after any of them; an older revision is answered
    /// OUT_OF_RANGE (list again).
    pub window_events: usize,
    /// …and no more than this many MiB of them, encoded.
    pub window_mib: usize,
    /// A watcher this many revisions behind the newest (its client reads too slowly) is closed
    /// with ABORTED and resumes; less than window_events.
    pub max_lag_events: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        let d = crate::watch::WatchLimits::default();
        WatchConfig { window_events: d.window_events, window_mib: d.window_bytes >> 20, max_lag_events: d.max_lag_events }
    }
}

impl WatchConfig {
    pub fn limits(&self) -> crate::watch::WatchLimits {
        crate::watch::WatchLimits { window_events: self.window_events, window_bytes: self.window_mib << 20, max_lag_events: self.max_lag_events }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded journal + checkpoint in `server.state_dir`: one scheduler.
    #[default]
    Journal,
    /// etcd (`[store.etcd]`): replicas under a leader lease.
    Etcd,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub etcd: EtcdConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members (http://host:port, or https:// with the TLS files).
    pub endpoints: Vec<String>,
    /// Every key of the scheduler lives under it: `<prefix>/pods/…`, `<prefix>/requested/…`,
    /// `<prefix>/leader`.
    pub prefix: String,
    /// TLS: the CA that signed the members' certificates and this client's certificate and key
    /// (PEM), all three or none.
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The leader lease; a killed leader is replaced about this long after its last renewal. etcd
    /// raises a shorter TTL to its minimum (2 s with its default 1 s election timeout).
    pub lease_ttl_secs: u64,
    /// Connecting to a member.
    pub dial_timeout_ms: u64,
    /// Every request's deadline: past it, the cluster is taken as without quorum or unreachable.
    pub request_timeout_ms: u64,
    /// Operations per transaction at most: etcd's `--max-txn-ops` (128 by default) or less.
    pub max_txn_ops: usize,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/berth/scheduler".into(),
            ca_file: PathBuf::new(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            lease_ttl_secs: 2,
            dial_timeout_ms: 2000,
            request_timeout_ms: 5000,
            max_txn_ops: 128,
        }
    }
}

impl EtcdConfig {
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }

    pub fn dial_timeout(&self) -> Duration {
        Duration::from_millis(self.dial_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Whether the TLS files are set (validation makes sure all three are).
    pub fn tls(&self) -> bool {
        !self.ca_file.as_os_str().is_empty()
    }

    /// Checks the section on its own (the store kind need not be etcd).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: String, hint| Err(ConfigError::Invalid { key: key.to_string(), value, hint });
        if self.endpoints.is_empty() {
            return invalid("store.etcd.endpoints", "[]".into(), "list the client URLs of the etcd members, e.g. [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\", \"http://10.0.0.3:2379\"]");
        }
        for e in &self.endpoints {
            let rest = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://"));
            let port_ok = rest.and_then(|r| r.rsplit_once(':')).is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return invalid("store.etcd.endpoints", e.clone(), "a client URL such as http://127.0.0.1:2379 (https:// with ca_file, cert_file and key_file)");
            }
            if e.starts_with("https://") != self.tls() {
                return invalid("store.etcd.endpoints", e.clone(), "https:// endpoints need ca_file, cert_file and key_file, and http:// ones none of them");
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') || self.prefix.contains("//") {
            return invalid("store.etcd.prefix", self.prefix.clone(), "a key path starting with / and not ending with one, e.g. /berth/scheduler");
        }
        let tls_set = [&self.ca_file, &self.cert_file, &self.key_file].iter().filter(|p| !p.as_os_str().is_empty()).count();
        if tls_set != 0 && tls_set != 3 {
            let value = format!("ca_file = {:?}, cert_file = {:?}, key_file = {:?}", self.ca_file, self.cert_file, self.key_file);
            return invalid("store.etcd.ca_file", value, "set all three of ca_file, cert_file and key_file for TLS, or none");
        }
        if self.lease_ttl_secs < 2 {
            return invalid("store.etcd.lease_ttl_secs", self.lease_ttl_secs.to_string(), "at least 2: etcd raises a shorter TTL to its minimum (2 s with its default election timeout)");
        }
        if self.dial_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return invalid("store.etcd.request_timeout_ms", format!("{} (dial_timeout_ms {})", self.request_timeout_ms, self.dial_timeout_ms), "request_timeout_ms and dial_timeout_ms must be at least 1");
        }
        if self.max_txn_ops == 0 {
            return invalid("store.etcd.max_txn_ops", "0".into(), "at least 1 and at most etcd's --max-txn-ops (128 by default)");
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}; pass --config with a readable file, or none for the defaults")]
    Read { path: PathBuf, reason: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} = {value:?} is not valid: {hint}")]
    Invalid { key: String, value: String, hint: &'static str },
}

impl SchedulerConfig {
    pub fn parse(text: &str, path: &Path) -> Result<SchedulerConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Reads the file; a missing file at the default path means all defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<SchedulerConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(SchedulerConfig::default()),
            Err(reason) => Err(ConfigError::Read { path: path.to_path_buf(), reason }),
        }
    }

    /// Checks what serde cannot: values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: String, hint| Err(ConfigError::Invalid { key: key.to_string(), value, hint });
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return invalid("server.listen", self.server.listen.clone(), "an address:port such as 127.0.0.1:19470");
        }
        if !self.server.advertise.is_empty() && !self.server.advertise.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)) {
            return invalid("server.advertise", self.server.advertise.clone(), "host:port other replicas and clients reach this one at, e.g. sched-1.example:19470; empty: server.listen");
        }
        if self.store.kind == StoreKind::Etcd {
            self.store.etcd.validate()?;
        }
        if self.placement.lease_secs == 0 || self.placement.tick_ms == 0 || self.autoscaler.interval_ms == 0 {
            return invalid("placement.lease_secs", self.placement.lease_secs.to_string(), "lease_secs, tick_ms and autoscaler.interval_ms must be at least 1");
        }
        if self.hpa.interval_ms == 0 {
            return invalid("hpa.interval_ms", "0".into(), "at least 1 (the default is 15000)");
        }
        if self.watch.window_events == 0 || self.watch.window_mib == 0 || self.watch.max_lag_events == 0 || self.watch.max_lag_events >= self.watch.window_events as u64 {
            return invalid("watch.max_lag_events", format!("{} (window_events {}, window_mib {})", self.watch.max_lag_events, self.watch.window_events, self.watch.window_mib), "at least 1 and less than window_events (a watcher closed for lagging must find its revision still kept); window_events and window_mib at least 1");
        }
        if self.placement.percent_of_nodes_to_score > 100 {
            return invalid("placement.percent_of_nodes_to_score", self.placement.percent_of_nodes_to_score.to_string(), "0 (adaptive) to 100");
        }
        if !(0.0..=1.0).contains(&self.autoscaler.scale_down_utilisation) {
            return invalid("autoscaler.scale_down_utilisation", self.autoscaler.scale_down_utilisation.to_string(), "between 0 and 1");
        }
        for (i, c) in self.priority_class.iter().enumerate() {
            if !crate::validation::label_name(&c.name) || self.priority_class.iter().skip(i + 1).any(|d| d.name == c.name) {
                return invalid("priority_class.name", c.name.clone(), "every priority class needs a unique name of label characters (e.g. high-priority)");
            }
        }
        for b in &self.disruption_budget {
            if b.min_available.is_some() == b.max_unavailable.is_some() || b.match_labels.is_empty() {
                return invalid("disruption_budget", format!("{}/{:?}", b.namespace, b.match_labels), "a budget has match_labels and exactly one of min_available and max_unavailable");
            }
        }
        for (i, p) in self.pool.iter().enumerate() {
            if p.name.is_empty() || self.pool.iter().skip(i + 1).any(|q| q.name == p.name) {
                return invalid("pool.name", p.name.clone(), "every pool needs a unique, non-empty name");
            }
            if p.instance_types.is_empty() || p.vswitches.is_empty() {
                return invalid("pool.instance_types", p.name.clone(), "a pool needs at least one instance type and one vSwitch");
            }
            if let Some(t) = p.instance_types.iter().find(|t| berth_cloud::catalogue::instance_type(t).is_none()) {
                return invalid("pool.instance_types", t.clone(), "an instance type of the catalogue, e.g. ecs.g7.large");
            }
            if p.max_nodes < p.min_nodes {
                return invalid("pool.max_nodes", p.max_nodes.to_string(), "must be at least min_nodes");
            }
            let images = [&p.image_id, &p.image_family, &p.launch_template_id].iter().filter(|i| i.is_some()).count();
            if self.autoscaler.enabled && images != 1 {
                return invalid("pool.image_id", p.name.clone(), "a pool the autoscaler creates nodes for names exactly one of image_id, image_family and launch_template_id (what RunInstances boots)");
            }
            if p.launch_template_version.is_some() && p.launch_template_id.is_none() {
                return invalid("pool.launch_template_version", p.name.clone(), "is a version of launch_template_id, which the pool does not name");
            }
            if let Some(gib) = p.system_disk_gib
                && !(20..=2048).contains(&gib)
            {
                return invalid("pool.system_disk_gib", gib.to_string(), "a system disk has 20 to 2048 GiB");
            }
            if p.system_disk_gib.is_some() && p.system_disk_category.is_none() {
                return invalid("pool.system_disk_category", p.name.clone(), "set the category (e.g. cloud_essd) with system_disk_gib");
            }
            if let Some(path) = &p.user_data_file {
                match std::fs::metadata(path) {
                    Ok(m) if m.len() <= 32 * 1024 => {}
                    Ok(m) => return invalid("pool.user_data_file", format!("{} ({} bytes)", path.display(), m.len()), "user data is at most 32 KiB"),
                    Err(e) => return invalid("pool.user_data_file", format!("{} ({e})", path.display()), "a readable file: the script the pool's nodes run at first boot"),
                }
            }
            if let Some(role) = &p.ram_role_name
                && !((1..=64).contains(&role.len()) && role.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
            {
                return invalid("pool.ram_role_name", role.clone(), "a RAM role name: 1 to 64 letters, digits, '.' or '-'");
            }
            for t in &p.taints {
                if !crate::validation::label_key(&t.key) || !(t.value.is_empty() || crate::validation::label_name(&t.value)) {
                    return invalid("pool.taints", format!("{}={}", t.key, t.value), "a taint's key is a label key and its value a label value (or empty)");
                }
                if !crate::placement::plugins::taints::EFFECTS.contains(&t.effect.as_str()) {
                    return invalid("pool.taints.effect", t.effect.clone(), "one of NoSchedule, PreferNoSchedule, NoExecute");
                }
            }
            if p.tags.len() > 19 || p.tags.keys().any(|k| k.is_empty() || k.len() > 128 || k.starts_with("aliyun") || k.starts_with("acs:") || k == "berth:pool") {
                return invalid("pool.tags", format!("{:?}", p.tags), "at most 19 tags (berth:pool is the 20th), keys 1 to 128 characters, not starting with aliyun or acs:");
            }
        }
        if let Err((key, value)) = berth_cloud::endpoints::check_settings(&self.cloud.endpoint, &self.cloud.vpc_endpoint, &self.cloud.nas_endpoint) {
            return invalid(key, value.to_string(), berth_cloud::endpoints::SETTING_HINT);
        }
        if self.autoscaler.enabled && !self.pool.is_empty() && self.cloud.region.is_empty() {
            return invalid("cloud.region", String::new(), "set the region the pools' vSwitches are in (local-1 on the local cloud)");
        }
        Ok(())
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.placement.lease_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example file shipped beside the binary is a valid config whose values are the defaults.
    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../scheduler.toml.example");
        let parsed = SchedulerConfig::parse(text, Path::new("scheduler.toml.example")).unwrap();
        assert_eq!(parsed, SchedulerConfig::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused_and_pools_parse() {
        let err = SchedulerConfig::parse("[placement]\nstrategy = \"bin-pack\"\nlease = 3\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("lease"), "{err}");
        let c = SchedulerConfig::parse(
            r#"
[cloud]
endpoint = "http://127.0.0.1:17380"
region = "local-1"
[autoscaler]
expander = "price"
[[pool]]
name = "small"
instance_types = ["ecs.g7.large"]
vswitches = [{ id = "vsw-1", zone = "cn-local-a" }]
max_nodes = 4
capacity = "spot"
image_family = "berth-node"
"#,
            Path::new("x.toml"),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.autoscaler.expander, Expander::Price);
        assert_eq!(c.pool[0].disruption_budget, 1);
        let mut bad = c.clone();
        bad.pool[0].instance_types = vec!["ecs.nope".into()];
        assert!(bad.validate().unwrap_err().to_string().contains("ecs.nope"));
        // What the nodes boot: exactly one image source, a disk in range, user data that is there.
        for (edit, says) in [
            (Box::new(|p: &mut NodePool| p.image_family = None) as Box<dyn Fn(&mut NodePool)>, "exactly one of image_id"),
            (Box::new(|p: &mut NodePool| p.image_id = Some("m-1".into())), "exactly one of image_id"),
            (Box::new(|p: &mut NodePool| p.launch_template_version = Some("3".into())), "launch_template_id"),
            (Box::new(|p: &mut NodePool| (p.system_disk_category, p.system_disk_gib) = (Some("cloud_essd".into()), Some(10))), "20 to 2048"),
            (Box::new(|p: &mut NodePool| p.system_disk_gib = Some(40)), "system_disk_category"),
            (Box::new(|p: &mut NodePool| p.user_data_file = Some("/nonexistent/boot.sh".into())), "/nonexistent/boot.sh"),
            (Box::new(|p: &mut NodePool| p.tags = [("acs:x".to_string(), "1".to_string())].into()), "acs:x"),
            (Box::new(|p: &mut NodePool| p.ram_role_name = Some("roles/node".into())), "roles/node"),
        ] {
            let mut bad = c.clone();
            edit(&mut bad.pool[0]);
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn the_etcd_store_section_parses_and_is_checked() {
        let c = SchedulerConfig::parse(
            "[server]\nadvertise = \"sched-1.example:19470\"\n[store]\nkind = \"etcd\"\n[store.etcd]\nendpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\nmax_txn_ops = 64\n",
            Path::new("x.toml"),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.store.kind, StoreKind::Etcd);
        assert_eq!(c.store.etcd.prefix, "/berth/scheduler");
        assert_eq!(c.server.advertised(), "sched-1.example:19470");
        assert_eq!(SchedulerConfig::default().server.advertised(), "127.0.0.1:19470");

        let refused = |edit: fn(&mut SchedulerConfig), key: &str, value: &str| {
            let mut bad = c.clone();
            edit(&mut bad);
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(value), "{err}");
        };
        refused(|c| c.store.etcd.endpoints = vec![], "store.etcd.endpoints", "[]");
        refused(|c| c.store.etcd.endpoints = vec!["10.0.0.1".into()], "store.etcd.endpoints", "10.0.0.1");
        refused(|c| c.store.etcd.endpoints = vec!["https://10.0.0.1:2379".into()], "store.etcd.endpoints", "need ca_file");
        refused(|c| c.store.etcd.prefix = "/berth/".into(), "store.etcd.prefix", "/berth/");
        refused(|c| c.store.etcd.cert_file = "/etc/berth/etcd.crt".into(), "store.etcd.ca_file", "all three");
        refused(|c| c.store.etcd.lease_ttl_secs = 1, "store.etcd.lease_ttl_secs", "1");
        refused(|c| c.store.etcd.max_txn_ops = 0, "store.etcd.max_txn_ops", "0");
        refused(|c| c.server.advertise = "nohost".into(), "server.advertise", "nohost");

        // The section is checked only when it is used.
        let mut journal = c.clone();
        journal.store.kind = StoreKind::Journal;
        journal.store.etcd.endpoints.clear();
        journal.validate().unwrap();
    }
}
