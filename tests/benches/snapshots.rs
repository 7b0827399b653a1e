//! Snapshots and restores through `berth-csi` against the local cloud (its default 200 ms attach
//! delay stands in for the real service's attach time, and for the time a snapshot takes to become
//! usable): a 20 GiB disk holding 1 GiB of data is snapshotted, CreateSnapshot to `ready_to_use`;
//! then a disk restored from the snapshot is mounted and read (CreateVolume from the snapshot to
//! the first byte read in the pod's mount), beside a fresh disk of the same size made and written.
//!
//! It runs twice: with the local cloud's state directory on the system's temporary directory (on
//! ext4 the plane copies the data extents of the sparse files), then on an XFS file system (made
//! in a loop-mounted file, with reflinks: the plane clones the files, as a cloud's snapshot
//! service shares blocks), unless `mkfs.xfs` is missing. `BERTH_BENCH_FS=tmp` or `xfs` runs one.
//!
//! `cargo build --release --workspace --bins && cargo bench -p berth-tests --bench snapshots`

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use berth_proto::csi::v1 as csi;
use berth_tests::csi::{Ctl, Ns, OneNodeCsi, mount, mount_cap, unmount};
use csi::volume_capability::access_mode::Mode;

const GIB: i64 = 1 << 30;
const ROUNDS: usize = 5;

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!("median {:.1} ms, min {:.1}, max {:.1} (n={})", ms(v[v.len() / 2]), ms(v[0]), ms(v[v.len() - 1]), v.len())
}

fn create(name: &str, cap: &csi::VolumeCapability, from: Option<&str>) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange { required_bytes: 20 * GIB, limit_bytes: 0 }),
        volume_capabilities: vec![cap.clone()],
        volume_content_source: from.map(|s| csi::VolumeContentSource { r#type: Some(csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource { snapshot_id: s.into() })) }),
        ..Default::default()
    }
}

/// Unmounts and deletes `volume`.
async fn unmount_and_delete(ctl: &mut Ctl, ns: &mut Ns, node_id: &str, volume: &str, staging: &Path, target: &Path) {
    unmount(ctl, ns, node_id, volume, staging, target).await;
    ctl.delete_volume(csi::DeleteVolumeRequest { volume_id: volume.into(), ..Default::default() }).await.unwrap();
}

/// An XFS file system with reflinks in a loop-mounted sparse file, unmounted when dropped.
struct Xfs {
    _dir: tempfile::TempDir,
    mount: std::path::PathBuf,
}

impl Xfs {
    fn make() -> Option<Xfs> {
        let dir = tempfile::Builder::new().prefix("berth-bench-xfs-").tempdir().unwrap();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image).unwrap().set_len(64 * GIB as u64).unwrap();
        let ok = |c: &mut std::process::Command| c.status().is_ok_and(|s| s.success());
        if !ok(std::process::Command::new("mkfs.xfs").args(["-q", "-m", "reflink=1"]).arg(&image)) {
            return None;
        }
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        assert!(ok(std::process::Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mount)), "mounting the XFS image");
        Some(Xfs { _dir: dir, mount })
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mount).status();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let only = std::env::var("BERTH_BENCH_FS").unwrap_or_default();
    if only.is_empty() || only == "tmp" {
        println!("== the state directory on {} ==", std::env::temp_dir().display());
        run(berth_tests::LocalCloudOptions::default()).await;
    }
    if only.is_empty() || only == "xfs" {
        match Xfs::make() {
            Some(xfs) => {
                println!("== the state directory on XFS with reflinks ==");
                run(berth_tests::LocalCloudOptions { parent_dir: Some(xfs.mount.clone()), ..Default::default() }).await;
            }
            None => println!("== no XFS run: mkfs.xfs failed or is missing =="),
        }
    }
}

async fn run(options: berth_tests::LocalCloudOptions) {
    let mut t = OneNodeCsi::start_with(options, "10.99.0.0/16", "10.99.1.0/24").await;
    let me = t.node_id.clone();
    let (ctl, ns) = (&mut t.ctl, &mut t.ns);
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let pods = t.pods.path().to_path_buf();
    let at = |p: &str| pods.join(p);

    // The source: 20 GiB holding 1 GiB of data that does not compress (the plane copies extents).
    let src = ctl.create_volume(create("bench-src", &cap, None)).await.unwrap().into_inner().volume.unwrap();
    mount(ctl, ns, &me, &src.volume_id, &cap, &at("st/src"), &at("src")).await;
    {
        let mut f = std::fs::File::create(at("src/data.bin")).unwrap();
        let mut block = vec![0u8; 1 << 20];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..1024 {
            for b in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&block).unwrap();
        }
        f.sync_all().unwrap();
    }
    let disk_file = t.cluster.lc.state_dir().join("disks").join(format!("{}.img", src.volume_id));
    let used = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&disk_file).unwrap()) * 512;
    println!("source disk: 20 GiB, {:.2} GiB of it allocated in its file", used as f64 / GIB as f64);

    // CreateSnapshot to ready_to_use.
    let mut to_ready = Vec::new();
    let mut snapshots = Vec::new();
    for i in 0..ROUNDS {
        let t0 = Instant::now();
        let snap = ctl.create_snapshot(csi::CreateSnapshotRequest { name: format!("bench-snap-{i}"), source_volume_id: src.volume_id.clone(), ..Default::default() }).await.unwrap().into_inner().snapshot.unwrap();
        loop {
            let list = ctl.list_snapshots(csi::ListSnapshotsRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() }).await.unwrap().into_inner();
            if list.entries[0].snapshot.as_ref().unwrap().ready_to_use {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        to_ready.push(t0.elapsed());
        snapshots.push(snap.snapshot_id);
    }
    println!("CreateSnapshot to ready_to_use (20 GiB disk, 1 GiB of data): {}", summary(to_ready));

    // A restored disk read in its pod, beside a fresh disk made and written.
    let (mut restores, mut fresh) = (Vec::new(), Vec::new());
    for (i, snapshot) in snapshots.iter().enumerate() {
        let (staging, target) = (at(&format!("st/r{i}")), at(&format!("r{i}")));
        let t0 = Instant::now();
        let vol = ctl.create_volume(create(&format!("bench-restore-{i}"), &cap, Some(snapshot))).await.unwrap().into_inner().volume.unwrap();
        mount(ctl, ns, &me, &vol.volume_id, &cap, &staging, &target).await;
        let mut first = [0u8; 4096];
        std::fs::File::open(target.join("data.bin")).unwrap().read_exact(&mut first).unwrap();
        restores.push(t0.elapsed());
        unmount_and_delete(ctl, ns, &me, &vol.volume_id, &staging, &target).await;

        let (staging, target) = (at(&format!("st/f{i}")), at(&format!("f{i}")));
        let t0 = Instant::now();
        let vol = ctl.create_volume(create(&format!("bench-fresh-{i}"), &cap, None)).await.unwrap().into_inner().volume.unwrap();
        mount(ctl, ns, &me, &vol.volume_id, &cap, &staging, &target).await;
        std::fs::write(target.join("first"), b"x").unwrap();
        fresh.push(t0.elapsed());
        unmount_and_delete(ctl, ns, &me, &vol.volume_id, &staging, &target).await;
    }
    println!("restore: CreateVolume from the snapshot to the first block read in the pod's mount: {}", summary(restores));
    println!("fresh: CreateVolume of an empty 20 GiB disk to the first write in the pod's mount (mkfs included): {}", summary(fresh));

    for s in &snapshots {
        ctl.delete_snapshot(csi::DeleteSnapshotRequest { snapshot_id: s.clone(), ..Default::default() }).await.unwrap();
    }
    unmount_and_delete(ctl, ns, &me, &src.volume_id, &at("st/src"), &at("src")).await;
}
