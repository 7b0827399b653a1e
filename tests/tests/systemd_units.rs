//! The unit files in `systemd/`: `systemd-analyze verify` accepts them and `systemd-analyze
//! security` scores their exposure (PID 1 is not systemd here, so the units are checked offline).
//! ExecStart paths point at the installed binaries; the check points them at this build.

use std::path::Path;
use std::process::Command;

fn units() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let mut units: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "service")).collect();
    units.sort();
    units
}

/// A copy of the unit whose binaries are this build's, in `dir`.
fn for_this_build(unit: &Path, dir: &Path) -> std::path::PathBuf {
    let bin_dir = berth_tests::bin("berth-agent").parent().unwrap().display().to_string();
    let text = std::fs::read_to_string(unit).unwrap().replace("/usr/local/bin", &bin_dir);
    let copy = dir.join(unit.file_name().unwrap());
    std::fs::write(&copy, text).unwrap();
    copy
}

fn exposure(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(unit).output().expect("systemd-analyze (package systemd)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("no score for {}: {text}", unit.display()));
    line.split(':').nth(1).and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("cannot read {line:?}"))
}

#[test]
fn units_verify_and_are_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let units = units();
    let names: Vec<String> = units.iter().map(|u| u.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for needed in ["berth-agent.service", "berth-localcloud.service", "berth-csi.service", "berth-scheduler.service"] {
        assert!(names.contains(&needed.to_string()), "{needed} missing from {names:?}");
    }
    for unit in &units {
        let copy = for_this_build(unit, dir.path());
        let out = Command::new("systemd-analyze").arg("verify").arg(&copy).current_dir(dir.path()).output().expect("systemd-analyze (package systemd)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify {}: {stderr}", unit.display());
        let score = exposure(&copy);
        // The agent is locked down; the local cloud must make host-visible mounts, so it cannot
        // have a private mount namespace. The scheduler needs no privilege at all.
        let limit = if copy.ends_with("berth-agent.service") {
            3.0
        } else if copy.ends_with("berth-scheduler.service") {
            2.0
        } else {
            5.5
        };
        assert!(score <= limit, "{}: exposure {score} above {limit}", unit.display());
        eprintln!("{}: exposure {score}", unit.display());
    }
    let agent = std::fs::read_to_string(units.iter().find(|u| u.ends_with("berth-agent.service")).unwrap()).unwrap();
    for needed in ["Type=notify", "WatchdogSec=", "Restart=on-failure", "KillMode=process", "NoNewPrivileges=yes", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_PTRACE", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "RestrictAddressFamilies="] {
        assert!(agent.contains(needed), "berth-agent.service lacks {needed}");
    }
    // The CSI driver: its s3fs processes outlive its restarts; it mounts for the host.
    let csi = std::fs::read_to_string(units.iter().find(|u| u.ends_with("berth-csi.service")).unwrap()).unwrap();
    for needed in ["KillMode=process", "ExecStart=/usr/local/bin/berth-csi --config /etc/berth/csi.toml", "Restart=on-failure", "NoNewPrivileges=yes", "CapabilityBoundingSet=CAP_SYS_ADMIN CAP_SYS_RESOURCE CAP_DAC_OVERRIDE CAP_FOWNER"] {
        assert!(csi.contains(needed), "berth-csi.service lacks {needed}");
    }
    for refused in ["PrivateMounts=yes", "PrivateDevices=yes", "PrivateTmp=yes", "ProtectSystem="] {
        assert!(!csi.contains(refused), "berth-csi.service must not have {refused}: its mounts are the host's");
    }
    let scheduler = std::fs::read_to_string(units.iter().find(|u| u.ends_with("berth-scheduler.service")).unwrap()).unwrap();
    for needed in ["DynamicUser=yes", "CapabilityBoundingSet=\n", "LoadCredential=cloud:", "StateDirectory=berth-scheduler", "Restart=on-failure"] {
        assert!(scheduler.contains(needed), "berth-scheduler.service lacks {needed:?}");
    }
}
