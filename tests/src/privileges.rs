//! What a process may do: its capability sets, read from `/proc/<pid>/task/*/status` for every
//! thread (capabilities are per thread).

/// A thread's effective, permitted and bounding sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub bounding: u64,
}

/// The sets of every thread of `pid`, with the thread's ID.
pub fn threads(pid: u32) -> Vec<(String, CapSets)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let field = |name: &str| status.lines().find(|l| l.starts_with(name)).and_then(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok()).unwrap_or_else(|| panic!("no {name} in {}", task.path().display()));
        out.push((task.file_name().to_string_lossy().into_owned(), CapSets { effective: field("CapEff:"), permitted: field("CapPrm:"), bounding: field("CapBnd:") }));
    }
    assert!(!out.is_empty(), "process {pid} has no threads to read");
    out
}

/// This (test) process's bounding set: what any process it starts can hold at most.
pub fn own_bounding() -> u64 {
    threads(std::process::id())[0].1.bounding
}

/// The mask of capability numbers (CAP_NET_ADMIN = 12, …).
pub fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | (1u64 << c))
}

/// The process whose command line contains every one of `needles` (the first found).
pub fn pid_with_args(needles: &[&str]) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()).find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).into_owned()).is_ok_and(|c| needles.iter().all(|n| c.contains(n)))
    })
}
