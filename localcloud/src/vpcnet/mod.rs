//! The network data plane of the local cloud, built like a VPC:
//! - every instance is a network namespace `<prefix>-<instance-id>`;
//! - every VPC is a namespace `<prefix>-<vpc-id>` holding the vRouter;
//! - an ENI on the wire (`InUse`) is a veth pair: its NIC in the instance namespace (`ethN`, the
//!   ENI's MAC; the primary is `eth0`, configured as DHCP would), its port in the VPC namespace;
//! - the vRouter routes each address to the port of the ENI that owns it, answers ARP for every
//!   neighbour with the VPC's MAC `ee:ff:ff:ff:ff:ff` (gateways on its `lo`, proxy ARP on ports),
//!   and drops what the real VPC drops (see [`nft`]);
//! - a trunk ENI's port also carries its member ENIs' frames, told apart by 802.1Q VLAN ID: tc
//!   programs on the port take the tag off (leaving the VLAN ID as the packet mark the filters
//!   key on) and put the member's tag on frames to the member's MAC.

pub mod nft;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::IpAddr;
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_cloud::model::{EniKind, EniStatus, NetworkInterface};
use berth_nodenet::bpf::{load_tc_program, vlan};
use berth_nodenet::{Address, TcHook, IpFamily, MacAddr, NETNS_RUN_DIR, NetOps, Neighbour, Netlink, Netns, Route, Scope, Veth, sysctl_in};
use ipnetwork::{IpNetwork, Ipv4Network};

use crate::addressing;
use crate::metrics::PlaneReport;
use crate::state::{Plane, PlaneError, State};

/// The MAC every neighbour has on the real VPC.
pub const VROUTER_MAC: MacAddr = MacAddr([0xee, 0xff, 0xff, 0xff, 0xff, 0xff]);
/// The IPv6 gateway of every vSwitch: the link-local address each vRouter port derives from
/// [`VROUTER_MAC`] (EUI-64: the universal/local bit flipped, `ff:fe` in the middle).
pub const VROUTER_LINK_LOCAL: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecff, 0xffff, 0xfeff, 0xffff);

pub struct VpcNet {
    prefix: String,
    /// Per VPC, the security-group chains and sets this process last applied (see
    /// [`nft::security_groups_over`]).
    sg_objects: std::sync::Mutex<BTreeMap<String, nft::SgObjects>>,
}

fn fail(what: impl Into<String>, reason: impl ToString) -> PlaneError {
    PlaneError { plane: "network", what: what.into(), reason: reason.to_string() }
}

/// The vRouter port of an ENI: a short, stable name derived from its ID (interface names are ≤ 15 bytes).
pub fn port_name(eni_id: &str) -> String {
    // FNV-1a: stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in eni_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("p{:012x}", h & 0xffff_ffff_ffff)
}

fn on_wire(e: &NetworkInterface) -> bool {
    e.status == EniStatus::InUse && e.instance_id.is_some() && e.kind != EniKind::Member
}

/// The members bound to a trunk ENI, with their VLAN IDs: they share the trunk's port.
fn members_of<'a>(state: &'a State, trunk: &NetworkInterface) -> Vec<(&'a NetworkInterface, u16)> {
    state
        .enis
        .values()
        .filter(|m| m.kind == EniKind::Member && m.status == EniStatus::InUse && m.trunk_eni_id.as_deref() == Some(trunk.id.as_str()))
        .filter_map(|m| m.vlan_id.map(|v| (m, v)))
        .collect()
}

fn addresses_of(e: &NetworkInterface) -> impl Iterator<Item = IpAddr> + '_ {
    std::iter::once(IpAddr::V4(e.primary_ip)).chain(e.secondary_ips.iter().map(|i| IpAddr::V4(*i))).chain(e.ipv6_addresses.iter().map(|i| IpAddr::V6(*i)))
}

impl VpcNet {
    pub fn new(prefix: &str) -> VpcNet {
        VpcNet { prefix: prefix.to_string(), sg_objects: std::sync::Mutex::default() }
    }

    pub fn netns_name(&self, id: &str) -> String {
        format!("{}-{id}", self.prefix)
    }

    /// Where an instance's namespace is: its agent and its metadata reader run against it.
    pub fn instance_netns_path(&self, instance_id: &str) -> PathBuf {
        self.netns_path(instance_id)
    }

    /// Where the namespace of an instance or of a VPC (its vRouter) is.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(self.netns_name(id))
    }

    fn ensure_netns(&self, id: &str) -> Result<Netns, PlaneError> {
        let name = self.netns_name(id);
        if let Ok(ns) = Netns::open_named(&name) {
            return Ok(ns);
        }
        let ns = Netns::create(&name).map_err(|e| fail(format!("namespace {name}"), e))?;
        let mut nl = Netlink::open_in_netns(&ns).map_err(|e| fail(format!("netlink in {name}"), e))?;
        let lo = nl.link_by_name("lo").map_err(|e| fail(format!("lo in {name}"), e))?;
        nl.set_link_up(lo.index).map_err(|e| fail(format!("lo up in {name}"), e))?;
        Ok(ns)
    }

    /// Namespaces of this plane now on the machine (names without the prefix).
    fn existing_namespaces(&self) -> BTreeSet<String> {
        let start = format!("{}-", self.prefix);
        std::fs::read_dir(NETNS_RUN_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix(&start)).map(str::to_string))
            .filter(|id| id.starts_with("i-") || id.starts_with("vpc-"))
            .collect()
    }

    fn converge_vpc(&self, state: &State, vpc_id: &str) -> Result<(), PlaneError> {
        let name = self.netns_name(vpc_id);
        let ns = self.ensure_netns(vpc_id)?;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.conf.default.proxy_arp", "1"),
        ] {
            sysctl_in(&ns, key, value).map_err(|e| fail(format!("{key} in {name}"), e))?;
        }
        let mut nl = Netlink::open_in_netns(&ns).map_err(|e| fail(format!("netlink in {name}"), e))?;
        let lo = nl.link_by_name("lo").map_err(|e| fail(format!("lo in {name}"), e))?;

        // Gateways of the VPC's vSwitches live on the vRouter's lo, and so does the metadata
        // service's address (served there by `metadata::serve`).
        let have: BTreeSet<IpNetwork> = nl.addresses(Some(lo.index)).map_err(|e| fail(format!("addresses in {name}"), e))?.into_iter().map(|a| a.network).collect();
        let gateways = state.vswitches.values().filter(|v| v.vpc_id == vpc_id).map(|vsw| addressing::gateway(vsw.cidr_block));
        for ip in gateways.chain(std::iter::once(crate::metadata::VPC_ADDR)) {
            let local = IpNetwork::V4(Ipv4Network::new(ip, 32).expect("/32 is valid"));
            if !have.contains(&local) {
                nl.add_address(&Address::new(lo.index, local)).or_else(exists_ok).map_err(|e| fail(format!("address {local} in {name}"), e))?;
            }
        }

        // Ports: one per ENI on the wire in this VPC.
        let wanted: BTreeMap<String, &NetworkInterface> = state.enis.values().filter(|e| e.vpc_id == vpc_id && on_wire(e)).map(|e| (port_name(&e.id), e)).collect();
        let links = nl.links().map_err(|e| fail(format!("links in {name}"), e))?;
        let mut ports: BTreeMap<String, u32> = links.iter().filter(|l| l.name.starts_with('p') && l.kind.as_deref() == Some("veth")).map(|l| (l.name.clone(), l.index)).collect();
        for (port, index) in ports.clone() {
            if !wanted.contains_key(&port) {
                nl.delete_link(index).or_else(gone_ok).map_err(|e| fail(format!("port {port} in {name}"), e))?;
                ports.remove(&port);
            }
        }
        for (port, eni) in &wanted {
            if !ports.contains_key(port) {
                let index = self.wire(&mut nl, state, eni, port)?;
                sysctl_in(&ns, &format!("net/ipv4/conf/{port}/proxy_arp"), "1").map_err(|e| fail(format!("proxy_arp on {port}"), e))?;
                ports.insert(port.clone(), index);
            }
        }

        // Members of trunks: (port, VLAN ID, ENI).
        let mut members: Vec<(String, u16, &NetworkInterface)> = Vec::new();
        for (port, eni) in wanted.iter().filter(|(_, e)| e.kind == EniKind::Trunk) {
            for (m, vlan) in members_of(state, eni) {
                members.push((port.clone(), vlan, m));
            }
        }

        // Host routes by IP ownership, each with the MAC it is delivered to; anything else on a
        // port is stale. A member's addresses are on its trunk's port, under its own MAC.
        let mut want_routes: BTreeMap<(IpNetwork, u32), MacAddr> = BTreeMap::new();
        let owners = wanted.iter().map(|(port, eni)| (port, *eni)).chain(members.iter().map(|(port, _, m)| (port, *m)));
        for (port, eni) in owners {
            let mac: MacAddr = eni.mac.parse().map_err(|e| fail(format!("MAC of {}", eni.id), e))?;
            for ip in addresses_of(eni) {
                want_routes.insert((IpNetwork::from(ip), ports[port]), mac);
            }
        }
        let port_indexes: BTreeSet<u32> = ports.values().copied().collect();
        let mut have_routes = BTreeSet::new();
        for r in nl.routes(Some(berth_nodenet::TABLE_MAIN)).map_err(|e| fail(format!("routes in {name}"), e))? {
            let Some(oif) = r.oif else { continue };
            let host = r.destination.prefix() == if r.destination.is_ipv4() { 32 } else { 128 };
            if !host || !port_indexes.contains(&oif) {
                continue;
            }
            if want_routes.contains_key(&(r.destination, oif)) {
                have_routes.insert((r.destination, oif));
            } else {
                nl.delete_route(&r).or_else(gone_ok).map_err(|e| fail(format!("route {} in {name}", r.destination), e))?;
                let _ = nl.delete_neighbour(&Neighbour::permanent(oif, r.destination.ip(), VROUTER_MAC));
            }
        }
        // The real VPC knows every ENI's MAC and never ARPs for an address; neither does the vRouter.
        for ((dst, oif), mac) in &want_routes {
            if !have_routes.contains(&(*dst, *oif)) {
                let route = Route::new(*dst).dev(*oif).scope(Scope::Link);
                nl.replace_route(&route).map_err(|e| fail(format!("route {dst} in {name}"), e))?;
            }
            // Replaced every time: a member that moved to another VLAN keeps its address.
            nl.replace_neighbour(&Neighbour::permanent(*oif, dst.ip(), *mac)).map_err(|e| fail(format!("neighbour {dst} in {name}"), e))?;
        }

        // Trunk ports take members' tags off on the way in and put them on on the way out. One
        // port's failure is reported after the others and the filters are done.
        let mut trunk_errors = Vec::new();
        for (port, _) in wanted.iter().filter(|(_, e)| e.kind == EniKind::Trunk) {
            let tagged: Vec<(MacAddr, u16)> = members.iter().filter(|(p, _, _)| p == port).filter_map(|(_, vlan, m)| m.mac.parse().ok().map(|mac| (mac, *vlan))).collect();
            if let Err(e) = self.program_trunk_port(&mut nl, ports[port], &tagged) {
                trunk_errors.push(fail(format!("VLAN programs on trunk port {port} in {name}"), e).to_string());
            }
        }

        // Filters.
        let mut wired: Vec<nft::WiredEni<'_>> = wanted.iter().map(|(port, eni)| nft::WiredEni { port: port.clone(), vlan: 0, eni }).collect();
        wired.extend(members.iter().map(|(port, vlan, m)| nft::WiredEni { port: port.clone(), vlan: *vlan, eni: m }));
        wired.sort_by(|a, b| (&a.port, a.vlan).cmp(&(&b.port, b.vlan)));
        let mut applied = self.sg_objects.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (sg, made) = nft::security_groups_over(state, &wired, applied.get(vpc_id));
        let script = nft::antispoof(&wired) + &sg;
        match run_nft(&ns, &script) {
            Ok(()) => {
                applied.insert(vpc_id.to_string(), made);
            }
            Err(e) => {
                // What is in the kernel is unknown now: the next converge starts the table afresh.
                applied.remove(vpc_id);
                return Err(fail(format!("nftables in {name}"), e));
            }
        }
        drop(applied);
        if trunk_errors.is_empty() { Ok(()) } else { Err(fail("trunk ports", trunk_errors.join("; "))) }
    }

    /// Loads and attaches the trunk port's two programs: untag to mark on ingress, tag by the
    /// member's MAC on egress (rebuilt from the members each time).
    fn program_trunk_port(&self, nl: &mut Netlink, index: u32, members: &[(MacAddr, u16)]) -> Result<(), String> {
        let ingress = vlan::port_ingress().map_err(|e| e.to_string())?;
        let egress = vlan::port_egress(members).map_err(|e| e.to_string())?;
        for (hook, name, insns) in [(TcHook::Ingress, "berth_port_in", ingress), (TcHook::Egress, "berth_port_out", egress)] {
            let fd = load_tc_program(name, &insns).map_err(|e| e.to_string())?;
            nl.attach_bpf(index, hook, fd.as_fd(), name).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Creates the veth of an ENI: the port here, the NIC in its instance; returns the port's index.
    fn wire(&self, nl: &mut Netlink, state: &State, eni: &NetworkInterface, port: &str) -> Result<u32, PlaneError> {
        let instance = eni.instance_id.as_deref().unwrap_or_default();
        let inst_name = self.netns_name(instance);
        let inst_ns = self.ensure_netns(instance)?;
        let mut inl = Netlink::open_in_netns(&inst_ns).map_err(|e| fail(format!("netlink in {inst_name}"), e))?;
        let taken: BTreeSet<String> = inl.links().map_err(|e| fail(format!("links in {inst_name}"), e))?.into_iter().map(|l| l.name).collect();
        let nic = if eni.kind == EniKind::Primary { "eth0".to_string() } else { (1..).map(|n| format!("eth{n}")).find(|n| !taken.contains(n)).expect("a free name") };
        let mac: MacAddr = eni.mac.parse().map_err(|e| fail(format!("MAC of {}", eni.id), e))?;
        let veth = Veth::new(port, &nic).mac(VROUTER_MAC).peer_mac(mac).peer_netns(inst_ns.as_fd());
        let link = nl.create_veth(&veth).map_err(|e| fail(format!("veth {port}/{nic} for {}", eni.id), e))?;
        nl.set_link_up(link.index).map_err(|e| fail(format!("port {port} up"), e))?;
        if eni.kind == EniKind::Primary {
            // What DHCP does on a VM: the primary address and the default route via the gateway.
            let vsw = state.vswitches.get(&eni.vswitch_id).ok_or_else(|| fail(format!("vSwitch of {}", eni.id), "not in the state"))?;
            let nic_link = inl.link_by_name(&nic).map_err(|e| fail(format!("{nic} in {inst_name}"), e))?;
            let addr = Ipv4Network::new(eni.primary_ip, vsw.cidr_block.prefix()).map_err(|e| fail("primary address", e))?;
            inl.add_address(&Address::new(nic_link.index, IpNetwork::V4(addr))).or_else(exists_ok).map_err(|e| fail(format!("address on {nic} in {inst_name}"), e))?;
            inl.set_link_up(nic_link.index).map_err(|e| fail(format!("{nic} up in {inst_name}"), e))?;
            let default = Route::default_route(IpFamily::V4).via(IpAddr::V4(addressing::gateway(vsw.cidr_block))).dev(nic_link.index);
            inl.replace_route(&default).map_err(|e| fail(format!("default route in {inst_name}"), e))?;
        }
        Ok(link.index)
    }
}

/// How long reading the drop counters of every VPC may take at one scrape.
const COUNTERS_READ_BUDGET: Duration = Duration::from_secs(3);

/// The drop counters of the vRouter in `ns`: `nft -j list counters` run there, killed if it is
/// still running at `deadline`.
fn read_drop_counters(ns: &Netns, deadline: Instant) -> Result<BTreeMap<String, u64>, String> {
    let listing = ns
        .run_in(move || -> Result<String, String> {
            let child = Command::new("nft").args(["-j", "list", "counters"]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| format!("cannot run nft: {e}"))?;
            let pid = child.id();
            let (tx, rx) = std::sync::mpsc::channel();
            // Waited for on a thread of its own, so that neither a large output nor a hung nft blocks the scrape.
            std::thread::Builder::new().name("berth-nft-read".into()).spawn(move || tx.send(child.wait_with_output())).map_err(|e| e.to_string())?;
            let out = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(out) => out.map_err(|e| e.to_string())?,
                Err(_) => {
                    if let Ok(pid) = i32::try_from(pid) {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                    }
                    return Err(format!("nft -j list counters took longer than {COUNTERS_READ_BUDGET:?}; killed"));
                }
            };
            if !out.status.success() {
                return Err(format!("nft -j list counters failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .map_err(|e| e.to_string())??;
    nft::drop_counts(&listing)
}

fn exists_ok(e: berth_nodenet::Error) -> berth_nodenet::Result<()> {
    if e.is_exists() { Ok(()) } else { Err(e) }
}

fn gone_ok(e: berth_nodenet::Error) -> berth_nodenet::Result<()> {
    if e.is_not_found() { Ok(()) } else { Err(e) }
}

/// Applies an nftables script atomically inside a namespace.
fn run_nft(ns: &Netns, script: &str) -> Result<(), String> {
    let script = script.to_string();
    ns.run_in(move || -> Result<(), String> {
        let mut child = Command::new("nft").args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(|e| format!("cannot run nft (install the nftables package): {e}"))?;
        child.stdin.take().expect("piped").write_all(script.as_bytes()).map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() { Ok(()) } else { Err(format!("nft refused the ruleset: {}", String::from_utf8_lossy(&out.stderr).trim())) }
    })
    .map_err(|e| e.to_string())?
}

impl Plane for VpcNet {
    fn converge(&self, state: &State) -> Result<(), PlaneError> {
        let mut errors = Vec::new();
        for id in state.instances.keys() {
            if let Err(e) = self.ensure_netns(id) {
                errors.push(e.to_string());
            }
        }
        for vpc_id in state.vpcs.keys() {
            if let Err(e) = self.converge_vpc(state, vpc_id) {
                errors.push(e.to_string());
            }
        }
        for id in self.existing_namespaces() {
            if !state.instances.contains_key(&id)
                && !state.vpcs.contains_key(&id)
                && let Err(e) = Netns::delete(&self.netns_name(&id))
            {
                errors.push(fail(format!("namespace {}", self.netns_name(&id)), e).to_string());
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(fail("converge", errors.join("; "))) }
    }

    /// The drop counters summed over the VPCs' vRouters; left out (and logged) if one cannot be read.
    fn report(&self, into: &mut PlaneReport) {
        let deadline = Instant::now() + COUNTERS_READ_BUDGET;
        let mut total: BTreeMap<String, u64> = nft::DROP_COUNTERS.iter().chain(nft::SG_DROP_COUNTERS.iter()).map(|c| (c.to_string(), 0)).collect();
        for id in self.existing_namespaces().into_iter().filter(|id| id.starts_with("vpc-")) {
            // Deleted since it was listed: its counters are gone with it.
            let Ok(ns) = Netns::open_named(&self.netns_name(&id)) else { continue };
            match read_drop_counters(&ns, deadline) {
                Ok(counts) => {
                    for (reason, n) in counts {
                        *total.entry(reason).or_default() += n;
                    }
                }
                Err(e) => {
                    tracing::warn!(vpc = %id, error = %e, "cannot read the vRouter's drop counters; /metrics leaves them out");
                    return;
                }
            }
        }
        into.vrouter_dropped_packets = Some(total);
    }

    fn teardown(&self) -> Result<(), PlaneError> {
        let errors: Vec<String> = self.existing_namespaces().into_iter().filter_map(|id| Netns::delete(&self.netns_name(&id)).err().map(|e| e.to_string())).collect();
        if errors.is_empty() { Ok(()) } else { Err(fail("teardown", errors.join("; "))) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_are_short_and_stable() {
        let a = port_name("eni-0123456789abcdef0000");
        assert_eq!(a.len(), 13);
        assert_eq!(a, port_name("eni-0123456789abcdef0000"));
        assert_ne!(a, port_name("eni-0123456789abcdef0001"));
    }
}
