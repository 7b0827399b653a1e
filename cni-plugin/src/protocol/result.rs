//! The ADD result: what berth made, rendered in the version the runtime asked for and merged into
//! the `prevResult` of the plugins before it. Also reading a `prevResult` back (DEL, CHECK).

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Map, Value, json};

use super::version;

/// An interface in the result; `sandbox` is set for the one inside the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub sandbox: Option<String>,
    pub mtu: Option<u32>,
}

/// An address in CIDR form, its gateway, and the index of its interface in this result's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpEntry {
    pub address: ipnetwork::IpNetwork,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: ipnetwork::IpNetwork,
    pub gw: Option<IpAddr>,
}

/// What one plugin contributes to the result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpEntry>,
    pub routes: Vec<RouteEntry>,
    pub dns: Option<Value>,
}

fn array<'a>(doc: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = doc.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(items) => items,
        _ => unreachable!("made an array just above"),
    }
}

impl CniResult {
    /// The result document in `cni_version`: `prev`'s entries first (when chained after another
    /// plugin), then ours, with our interface indexes shifted past `prev`'s interfaces.
    pub fn render(&self, cni_version: &str, prev: Option<&Value>) -> Value {
        let mut doc = prev.and_then(Value::as_object).cloned().unwrap_or_default();
        // Results before 1.0.0 say which family each address is.
        let with_family = !version::at_least(cni_version, "1.0.0");
        // Interface fields beyond name/mac/sandbox came with 1.1.0.
        let with_mtu = version::at_least(cni_version, "1.1.0");
        let offset = array(&mut doc, "interfaces").len();
        for iface in &self.interfaces {
            let mut v = json!({ "name": iface.name, "mac": iface.mac });
            if let Some(sandbox) = &iface.sandbox {
                v["sandbox"] = json!(sandbox);
            }
            if let (true, Some(mtu)) = (with_mtu, iface.mtu) {
                v["mtu"] = json!(mtu);
            }
            array(&mut doc, "interfaces").push(v);
        }
        for ip in &self.ips {
            let mut v = json!({ "address": ip.address.to_string() });
            if with_family {
                v["version"] = json!(if ip.address.is_ipv4() { "4" } else { "6" });
            }
            if let Some(gw) = ip.gateway {
                v["gateway"] = json!(gw.to_string());
            }
            if let Some(i) = ip.interface {
                v["interface"] = json!(i + offset);
            }
            array(&mut doc, "ips").push(v);
        }
        for route in &self.routes {
            let mut v = json!({ "dst": route.dst.to_string() });
            if let Some(gw) = route.gw {
                v["gw"] = json!(gw.to_string());
            }
            array(&mut doc, "routes").push(v);
        }
        let prev_has_dns = doc.get("dns").and_then(Value::as_object).is_some_and(|d| !d.is_empty());
        match &self.dns {
            Some(dns) if !prev_has_dns => {
                doc.insert("dns".into(), dns.clone());
            }
            _ if !prev_has_dns => {
                doc.insert("dns".into(), json!({}));
            }
            _ => {}
        }
        doc.insert("cniVersion".into(), json!(cni_version));
        Value::Object(doc)
    }
}

/// The IPv4 address of a result entry (`"10.0.0.5/32"` → 10.0.0.5).
fn entry_ipv4(entry: &Value) -> Option<Ipv4Addr> {
    let address = entry.get("address")?.as_str()?;
    match address.parse::<ipnetwork::IpNetwork>().ok()?.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

/// The IPv4 address a result gives the pod interface `ifname` (the interface in the sandbox).
pub fn pod_ipv4(result: &Value, ifname: &str) -> Option<Ipv4Addr> {
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let is_pod_iface = |index: &Value| {
        let iface = index.as_u64().and_then(|i| interfaces?.get(usize::try_from(i).ok()?));
        iface.is_some_and(|f| f.get("name").and_then(Value::as_str) == Some(ifname) && f.get("sandbox").and_then(Value::as_str).is_some_and(|s| !s.is_empty()))
    };
    result.get("ips")?.as_array()?.iter().filter(|e| e.get("interface").is_some_and(is_pod_iface)).find_map(entry_ipv4)
}

/// The pod interface's IPv6 address in a result (dual-stack), like [`pod_ipv4`].
pub fn pod_ipv6(result: &Value, ifname: &str) -> Option<std::net::Ipv6Addr> {
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let is_pod_iface = |index: &Value| {
        let iface = index.as_u64().and_then(|i| interfaces?.get(usize::try_from(i).ok()?));
        iface.is_some_and(|f| f.get("name").and_then(Value::as_str) == Some(ifname) && f.get("sandbox").and_then(Value::as_str).is_some_and(|s| !s.is_empty()))
    };
    result.get("ips")?.as_array()?.iter().filter(|e| e.get("interface").is_some_and(is_pod_iface)).find_map(|e| e.get("address")?.as_str()?.split('/').next()?.parse().ok())
}

/// Every IPv4 address a result lists, whatever interface it is on.
pub fn ipv4_addresses(result: &Value) -> Vec<Ipv4Addr> {
    result.get("ips").and_then(Value::as_array).map(|ips| ips.iter().filter_map(entry_ipv4).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface { name: "bth0123456789a".into(), mac: "02:00:00:00:00:01".into(), sandbox: None, mtu: Some(1500) },
                Interface { name: "eth0".into(), mac: "02:00:00:00:00:02".into(), sandbox: Some("/run/netns/p".into()), mtu: Some(1500) },
            ],
            ips: vec![IpEntry { address: "10.99.0.5/32".parse().unwrap(), gateway: Some("169.254.1.1".parse().unwrap()), interface: Some(1) }],
            routes: vec![RouteEntry { dst: "0.0.0.0/0".parse().unwrap(), gw: Some("169.254.1.1".parse().unwrap()) }],
            dns: None,
        }
    }

    #[test]
    fn versions_before_1_0_say_the_family() {
        for (v, family, mtu) in [("0.3.0", true, false), ("0.3.1", true, false), ("0.4.0", true, false), ("1.0.0", false, false), ("1.1.0", false, true)] {
            let doc = ours().render(v, None);
            assert_eq!(doc["cniVersion"], v);
            assert_eq!(doc["ips"][0].get("version").is_some(), family, "{v}: {doc}");
            assert_eq!(doc["interfaces"][1].get("mtu").is_some(), mtu, "{v}: {doc}");
            assert_eq!(doc["ips"][0]["address"], "10.99.0.5/32");
            assert_eq!(doc["ips"][0]["interface"], 1);
            assert_eq!(doc["interfaces"][1]["sandbox"], "/run/netns/p");
            assert!(doc["interfaces"][0].get("sandbox").is_none());
            assert_eq!(doc["routes"][0], json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"}));
            assert_eq!(pod_ipv4(&doc, "eth0"), Some(Ipv4Addr::new(10, 99, 0, 5)));
            assert_eq!(pod_ipv4(&doc, "eth1"), None);
        }
    }

    #[test]
    fn chained_results_keep_what_came_before() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "192.168.1.2/24", "interface": 0}],
            "routes": [{"dst": "192.168.0.0/16"}],
            "dns": {"nameservers": ["192.168.0.10"]},
            "vendorKey": true
        });
        let mut mine = ours();
        mine.dns = Some(json!({"nameservers": ["10.0.0.10"]}));
        let doc = mine.render("1.0.0", Some(&prev));
        assert_eq!(doc["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(doc["ips"][0]["address"], "192.168.1.2/24");
        assert_eq!(doc["ips"][1]["interface"], 2, "our index moves past the interfaces before ours");
        assert_eq!(doc["routes"].as_array().unwrap().len(), 2);
        assert_eq!(doc["dns"]["nameservers"][0], "192.168.0.10", "an earlier plugin's DNS stays");
        assert_eq!(doc["vendorKey"], true);
        assert_eq!(pod_ipv4(&doc, "eth0"), Some(Ipv4Addr::new(10, 99, 0, 5)));
        assert_eq!(ipv4_addresses(&doc), vec![Ipv4Addr::new(192, 168, 1, 2), Ipv4Addr::new(10, 99, 0, 5)]);
    }

    #[test]
    fn dns_from_the_config_when_nobody_set_one() {
        let mut mine = ours();
        assert_eq!(mine.render("1.1.0", None)["dns"], json!({}));
        mine.dns = Some(json!({"nameservers": ["10.0.0.10"], "search": ["svc.cluster.local"]}));
        assert_eq!(mine.render("1.1.0", None)["dns"]["search"][0], "svc.cluster.local");
    }
}
