//! The guest image: what a local-cloud instance runs once it is Running, as a VM runs the software
//! of its image. A strict TOML file of ordered services and a cleanup section, with per-instance
//! placeholders in every string. Pure: parsing, validation and rendering, no I/O beyond the read.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Every placeholder an image may use, with what it stands for (shown in `--help` and errors).
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    ("instance_id", "the instance's ID"),
    ("instance_type", "its instance type"),
    ("zone_id", "its zone"),
    ("region_id", "the region"),
    ("vpc_id", "its VPC"),
    ("vswitch_id", "its vSwitch"),
    ("private_ip", "its primary private IPv4 address"),
    ("netns", "the path of its network namespace (/run/netns/<prefix>-<instance-id>)"),
    ("dir", "the guest's private directory, <state-dir>/guests/<instance-id>"),
    ("cloud_endpoint", "the local cloud's API URL (ECS, and every product not served apart)"),
    ("vpc_endpoint", "the VPC API's URL (its own listener with --vpc-listen, else cloud_endpoint)"),
    ("nas_endpoint", "the NAS API's URL (its own listener with --nas-listen, else cloud_endpoint)"),
    ("oss_endpoint", "the OSS (S3) endpoint URL"),
    ("credentials", "the path of the credentials file the local cloud serves with"),
    ("nas_export_root", "<state-dir>/nas, where NAS file systems are exported"),
    ("metadata_url", "the metadata service as the instance reads it, http://127.0.0.1:8100/latest/meta-data"),
];

/// How long `ready_file` may take to appear when the image does not say.
pub const DEFAULT_READY_TIMEOUT_SECS: u64 = 60;
/// How long a service has between SIGTERM and SIGKILL when the image does not say.
pub const DEFAULT_STOP_GRACE_SECS: u64 = 10;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestImage {
    /// Seconds between SIGTERM and SIGKILL of each service's process group when the guest stops.
    #[serde(default = "default_grace")]
    pub stop_grace_secs: u64,
    /// Started in this order, each once the one before is ready; stopped in reverse.
    #[serde(rename = "service", default)]
    pub services: Vec<ServiceSpec>,
    #[serde(default)]
    pub cleanup: CleanupSpec,
}

fn default_grace() -> u64 {
    DEFAULT_STOP_GRACE_SECS
}

fn default_ready_timeout() -> u64 {
    DEFAULT_READY_TIMEOUT_SECS
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// A file name: the log is `{dir}/<name>.log`.
    pub name: String,
    /// argv; the first element is the program (a path, or a name looked up in PATH).
    pub command: Vec<String>,
    /// Set on top of the local cloud's own environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// A file whose existence means the service is ready: the next service starts only then.
    #[serde(default)]
    pub ready_file: Option<String>,
    /// How long `ready_file` may take; past it the service counts as failed (killed, restarted by policy).
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restarted (with a back-off) when it exits non-zero or is killed; an exit 0 is final.
    #[default]
    OnFailure,
    /// Never restarted.
    No,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupSpec {
    /// Network namespaces whose name starts with one of these belong to the guest: when it stops,
    /// their processes are killed and they are deleted. Each must contain `{instance_id}`, so that
    /// one guest's cleanup never takes another's namespaces.
    #[serde(default)]
    pub netns_prefixes: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("reading the guest image {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the guest image {path} is not valid TOML of the image format: {reason}")]
    Parse { path: String, reason: String },
    #[error("the guest image {path}: {field}: {reason}")]
    Invalid { path: String, field: String, reason: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("unknown placeholder {{{name}}}; known ones are {}", known_list())]
    Unknown { name: String },
    #[error("an unclosed '{{' at byte {at}; write {{{{ for a literal brace")]
    Unclosed { at: usize },
    #[error("a lone '}}' at byte {at}; write }}}} for a literal brace")]
    LoneClose { at: usize },
}

fn known_list() -> String {
    PLACEHOLDERS.iter().map(|(n, _)| format!("{{{n}}}")).collect::<Vec<_>>().join(", ")
}

/// The values of the placeholders for one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestVars {
    pub instance_id: String,
    pub instance_type: String,
    pub zone_id: String,
    pub region_id: String,
    pub vpc_id: String,
    pub vswitch_id: String,
    pub private_ip: String,
    pub netns: String,
    pub dir: String,
    pub cloud_endpoint: String,
    pub vpc_endpoint: String,
    pub nas_endpoint: String,
    pub oss_endpoint: String,
    pub credentials: String,
    pub nas_export_root: String,
    pub metadata_url: String,
}

impl GuestVars {
    fn get(&self, name: &str) -> Option<&str> {
        Some(match name {
            "instance_id" => &self.instance_id,
            "instance_type" => &self.instance_type,
            "zone_id" => &self.zone_id,
            "region_id" => &self.region_id,
            "vpc_id" => &self.vpc_id,
            "vswitch_id" => &self.vswitch_id,
            "private_ip" => &self.private_ip,
            "netns" => &self.netns,
            "dir" => &self.dir,
            "cloud_endpoint" => &self.cloud_endpoint,
            "vpc_endpoint" => &self.vpc_endpoint,
            "nas_endpoint" => &self.nas_endpoint,
            "oss_endpoint" => &self.oss_endpoint,
            "credentials" => &self.credentials,
            "nas_export_root" => &self.nas_export_root,
            "metadata_url" => &self.metadata_url,
            _ => return None,
        })
    }

    /// Values that only show where each placeholder went: used to check an image at load.
    fn probe() -> GuestVars {
        let v = |n: &str| format!("<{n}>");
        GuestVars {
            instance_id: v("instance_id"),
            instance_type: v("instance_type"),
            zone_id: v("zone_id"),
            region_id: v("region_id"),
            vpc_id: v("vpc_id"),
            vswitch_id: v("vswitch_id"),
            private_ip: v("private_ip"),
            netns: v("netns"),
            dir: v("dir"),
            cloud_endpoint: v("cloud_endpoint"),
            vpc_endpoint: v("vpc_endpoint"),
            nas_endpoint: v("nas_endpoint"),
            oss_endpoint: v("oss_endpoint"),
            credentials: v("credentials"),
            nas_export_root: v("nas_export_root"),
            metadata_url: v("metadata_url"),
        }
    }
}

/// Substitutes `{name}` with its value; `{{` and `}}` are literal braces.
pub fn render(template: &str, vars: &GuestVars) -> Result<String, RenderError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut at = 0;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            (rest, at) = (after, at + i + 2);
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            (rest, at) = (after, at + i + 2);
        } else if tail.starts_with('}') {
            return Err(RenderError::LoneClose { at: at + i });
        } else {
            let end = tail.find('}').ok_or(RenderError::Unclosed { at: at + i })?;
            let name = &tail[1..end];
            out.push_str(vars.get(name).ok_or_else(|| RenderError::Unknown { name: name.to_string() })?);
            (rest, at) = (&tail[end + 1..], at + i + end + 1);
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// One service of an image with its instance's values in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestService {
    pub name: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub restart: RestartPolicy,
    pub ready_file: Option<String>,
    pub ready_timeout_secs: u64,
}

/// An image rendered for one instance: what its supervisor runs and cleans up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedGuest {
    pub services: Vec<GuestService>,
    pub cleanup_netns_prefixes: Vec<String>,
    pub stop_grace_secs: u64,
}

impl GuestImage {
    pub fn load(path: &Path) -> Result<GuestImage, ImageError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ImageError::Read { path: shown.clone(), reason: e.to_string() })?;
        GuestImage::parse(&text, &shown)
    }

    /// Parses and validates: unknown keys, unknown placeholders, bad names are refused here, so a
    /// local cloud with a bad image does not start.
    pub fn parse(text: &str, path: &str) -> Result<GuestImage, ImageError> {
        let image: GuestImage = toml::from_str(text).map_err(|e| ImageError::Parse { path: path.to_string(), reason: e.to_string() })?;
        image.validate(path)?;
        Ok(image)
    }

    fn validate(&self, path: &str) -> Result<(), ImageError> {
        let bad = |field: String, reason: String| ImageError::Invalid { path: path.to_string(), field, reason };
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("service[{i}] ({})", s.name);
            if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || s.name == "guest" {
                return Err(bad(format!("{at}.name"), format!("\"{}\" must be non-empty letters, digits, '-' or '_' (it names the log file), and not \"guest\"", s.name)));
            }
            if !names.insert(s.name.as_str()) {
                return Err(bad(format!("{at}.name"), format!("\"{}\" is used by two services; names must be unique", s.name)));
            }
            if s.command.is_empty() || s.command[0].is_empty() {
                return Err(bad(format!("{at}.command"), "must name a program, e.g. [\"/usr/local/bin/berth-agent\", \"--node-netns\", \"{netns}\"]".into()));
            }
            if s.ready_timeout_secs == 0 {
                return Err(bad(format!("{at}.ready_timeout_secs"), "must be at least 1".into()));
            }
        }
        for (i, p) in self.cleanup.netns_prefixes.iter().enumerate() {
            if !p.contains("{instance_id}") {
                return Err(bad(format!("cleanup.netns_prefixes[{i}]"), format!("\"{p}\" must contain {{instance_id}}, or one guest's cleanup would take other guests' namespaces")));
            }
            if p.contains('/') {
                return Err(bad(format!("cleanup.netns_prefixes[{i}]"), format!("\"{p}\" is a namespace name prefix and cannot contain '/'")));
            }
        }
        // Rendering with probe values finds every unknown placeholder and stray brace.
        self.render(&GuestVars::probe()).map_err(|(field, e)| bad(field, e.to_string()))?;
        Ok(())
    }

    /// The image with `vars` in place; on failure, the field that failed.
    pub fn render(&self, vars: &GuestVars) -> Result<RenderedGuest, (String, RenderError)> {
        let mut services = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("service[{i}] ({})", s.name);
            let command = s.command.iter().enumerate().map(|(j, a)| render(a, vars).map_err(|e| (format!("{at}.command[{j}]"), e))).collect::<Result<Vec<_>, _>>()?;
            let mut env = BTreeMap::new();
            for (k, v) in &s.env {
                let key = render(k, vars).map_err(|e| (format!("{at}.env key {k}"), e))?;
                env.insert(key, render(v, vars).map_err(|e| (format!("{at}.env.{k}"), e))?);
            }
            let ready_file = s.ready_file.as_deref().map(|f| render(f, vars).map_err(|e| (format!("{at}.ready_file"), e))).transpose()?;
            services.push(GuestService { name: s.name.clone(), command, env, restart: s.restart, ready_file, ready_timeout_secs: s.ready_timeout_secs });
        }
        let cleanup_netns_prefixes = self
            .cleanup
            .netns_prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| render(p, vars).map_err(|e| (format!("cleanup.netns_prefixes[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RenderedGuest { services, cleanup_netns_prefixes, stop_grace_secs: self.stop_grace_secs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> GuestVars {
        GuestVars { instance_id: "i-1".into(), dir: "/s/guests/i-1".into(), netns: "/run/netns/lc-i-1".into(), ..GuestVars::default() }
    }

    const IMAGE: &str = r#"
stop_grace_secs = 3

[[service]]
name = "agent"
command = ["/bin/agent", "--node-netns", "{netns}", "--state-dir", "{dir}/state", "--json", "{{\"a\": 1}}"]
env = { BERTH_LOG = "info", NODE = "{instance_id}" }
ready_file = "{dir}/net.d/10-berth.conflist"
ready_timeout_secs = 30

[[service]]
name = "csi"
command = ["/bin/csi"]
restart = "no"

[cleanup]
netns_prefixes = ["{instance_id}-p"]
"#;

    #[test]
    fn an_image_parses_and_renders_for_an_instance() {
        let image = GuestImage::parse(IMAGE, "image.toml").unwrap();
        assert_eq!(image.services.len(), 2);
        assert_eq!(image.services[1].restart, RestartPolicy::No);
        assert_eq!(image.services[0].restart, RestartPolicy::OnFailure);
        assert_eq!(image.services[1].ready_timeout_secs, DEFAULT_READY_TIMEOUT_SECS);
        let r = image.render(&vars()).unwrap();
        assert_eq!(r.services[0].command, ["/bin/agent", "--node-netns", "/run/netns/lc-i-1", "--state-dir", "/s/guests/i-1/state", "--json", "{\"a\": 1}"]);
        assert_eq!(r.services[0].env["NODE"], "i-1");
        assert_eq!(r.services[0].ready_file.as_deref(), Some("/s/guests/i-1/net.d/10-berth.conflist"));
        assert_eq!(r.cleanup_netns_prefixes, ["i-1-p"]);
        assert_eq!(r.stop_grace_secs, 3);
    }

    #[test]
    fn an_empty_image_runs_nothing() {
        let image = GuestImage::parse("", "e.toml").unwrap();
        assert!(image.services.is_empty() && image.cleanup.netns_prefixes.is_empty());
        assert_eq!(image.stop_grace_secs, DEFAULT_STOP_GRACE_SECS);
    }

    #[test]
    fn an_unknown_placeholder_is_refused_by_name_and_field() {
        let e = GuestImage::parse("[[service]]\nname = \"a\"\ncommand = [\"x\", \"{instance_idd}\"]\n", "img.toml").unwrap_err().to_string();
        assert!(e.contains("{instance_idd}") && e.contains("service[0] (a).command[1]") && e.contains("img.toml") && e.contains("{instance_id}"), "{e}");
        let e = GuestImage::parse("[[service]]\nname = \"a\"\ncommand = [\"x\"]\nenv = { A = \"{nope}\" }\n", "img.toml").unwrap_err().to_string();
        assert!(e.contains("{nope}") && e.contains("env.A"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = GuestImage::parse("[[service]]\nname = \"a\"\ncommand = [\"x\"]\nrestart_policy = \"no\"\n", "i").unwrap_err().to_string();
        assert!(e.contains("restart_policy"), "{e}");
        let e = GuestImage::parse("[[service]]\nname = \"a\"\ncommand = [\"x\"]\nrestart = \"always\"\n", "i").unwrap_err().to_string();
        assert!(e.contains("always"), "{e}");
        let e = GuestImage::parse("[cleanup]\nnetns = []\n", "i").unwrap_err().to_string();
        assert!(e.contains("netns"), "{e}");
        let e = GuestImage::parse("[[service]]\nname = \"a/b\"\ncommand = [\"x\"]\n", "i").unwrap_err().to_string();
        assert!(e.contains("a/b"), "{e}");
        let e = GuestImage::parse("[[service]]\nname = \"a\"\ncommand = [\"x\"]\n[[service]]\nname = \"a\"\ncommand = [\"y\"]\n", "i").unwrap_err().to_string();
        assert!(e.contains("unique"), "{e}");
        let e = GuestImage::parse("[[service]]\nname = \"a\"\ncommand = []\n", "i").unwrap_err().to_string();
        assert!(e.contains("command"), "{e}");
        let e = GuestImage::parse("[cleanup]\nnetns_prefixes = [\"pod-\"]\n", "i").unwrap_err().to_string();
        assert!(e.contains("pod-") && e.contains("{instance_id}"), "{e}");
    }

    #[test]
    fn braces_are_escaped_by_doubling_and_strays_are_refused() {
        let v = vars();
        assert_eq!(render("{{x}} {instance_id}}}", &v).unwrap(), "{x} i-1}");
        assert_eq!(render("no placeholders", &v).unwrap(), "no placeholders");
        assert_eq!(render("a{dir", &v), Err(RenderError::Unclosed { at: 1 }));
        assert_eq!(render("ab}c", &v), Err(RenderError::LoneClose { at: 2 }));
        assert_eq!(render("{}", &v), Err(RenderError::Unknown { name: String::new() }));
        assert_eq!(render("é{instance_id}é", &v).unwrap(), "éi-1é");
    }

    #[test]
    fn every_placeholder_has_a_value() {
        let probe = GuestVars::probe();
        for (name, _) in PLACEHOLDERS {
            assert_eq!(render(&format!("{{{name}}}"), &probe).unwrap(), format!("<{name}>"));
        }
    }
}
