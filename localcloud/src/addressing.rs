//! The address plan of a vSwitch, as on the real VPC: the network address and the last three
//! addresses are reserved, the gateway is the broadcast address minus two.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// The vSwitch gateway, e.g. 10.0.1.253 in 10.0.1.0/24.
pub fn gateway(cidr: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.broadcast()).wrapping_sub(2))
}

/// Addresses an ENI may hold: everything but the network address and the last three.
pub fn usable(cidr: Ipv4Network) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(cidr.network()).saturating_add(1);
    let last = u32::from(cidr.broadcast()).saturating_sub(3);
    (first..=last).map(Ipv4Addr::from)
}

pub fn usable_count(cidr: Ipv4Network) -> u64 {
    let size = 1u64 << (32 - u32::from(cidr.prefix()));
    size.saturating_sub(4)
}

pub fn is_usable(cidr: Ipv4Network, ip: Ipv4Addr) -> bool {
    let n = u32::from(ip);
    cidr.contains(ip) && n > u32::from(cidr.network()) && n <= u32::from(cidr.broadcast()).saturating_sub(3)
}

/// The lowest `count` free usable addresses, or `None` when the vSwitch has fewer free.
pub fn pick_free(cidr: Ipv4Network, used: &HashSet<Ipv4Addr>, count: usize, limit: Option<u64>) -> Option<Vec<Ipv4Addr>> {
    if let Some(limit) = limit
        && used.len() as u64 + count as u64 > limit
    {
        return None;
    }
    let picked: Vec<Ipv4Addr> = usable(cidr).filter(|ip| !used.contains(ip)).take(count).collect();
    (picked.len() == count).then_some(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_addresses_and_gateway() {
        let cidr: Ipv4Network = "10.0.1.0/24".parse().unwrap();
        assert_eq!(gateway(cidr), Ipv4Addr::new(10, 0, 1, 253));
        assert_eq!(usable_count(cidr), 252);
        assert_eq!(usable(cidr).count(), 252);
        assert!(!is_usable(cidr, Ipv4Addr::new(10, 0, 1, 0)));
        assert!(is_usable(cidr, Ipv4Addr::new(10, 0, 1, 1)));
        assert!(is_usable(cidr, Ipv4Addr::new(10, 0, 1, 252)));
        assert!(!is_usable(cidr, Ipv4Addr::new(10, 0, 1, 253)));
        assert!(!is_usable(cidr, Ipv4Addr::new(10, 0, 2, 1)));
    }

    #[test]
    fn picks_lowest_free_and_refuses_when_short() {
        let cidr: Ipv4Network = "10.0.0.0/28".parse().unwrap();
        let mut used = HashSet::new();
        used.insert(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(pick_free(cidr, &used, 2, None).unwrap(), vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)]);
        assert_eq!(pick_free(cidr, &used, 11, None).map(|v| v.len()), Some(11));
        assert!(pick_free(cidr, &used, 12, None).is_none());
        assert!(pick_free(cidr, &used, 2, Some(2)).is_none());
    }
}
