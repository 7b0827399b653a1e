//! OSS of the local cloud: its S3-compatible endpoint is mounted with s3fs; a file written through
//! the mount lands in the bucket and reads back through a fresh mount; wrong credentials get nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_tests::{LocalCloud, LocalCloudOptions, is_root};

/// An s3fs mount, unmounted when dropped (also when the test fails).
struct S3fsMount {
    dir: PathBuf,
}

impl S3fsMount {
    fn mount(bucket: &str, dir: &Path, endpoint: &str, passwd: &Path) -> S3fsMount {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("s3fs")
            .arg(bucket)
            .arg(dir)
            .args(["-o", &format!("url={endpoint}"), "-o", "use_path_request_style", "-o", "sigv4", "-o", "endpoint=local-1", "-o", "dbglevel=warn"])
            .arg("-o")
            .arg(format!("passwd_file={}", passwd.display()))
            .status()
            .expect("s3fs (Debian package s3fs) is installed");
        assert!(status.success(), "s3fs mount failed: {status}");
        S3fsMount { dir: dir.to_path_buf() }
    }
}

impl Drop for S3fsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn passwd_file(dir: &Path, name: &str, key: &str, secret: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("{key}:{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn s3fs_mounts_a_bucket_and_writes_land_in_it() {
    if !is_root() {
        eprintln!("skipped: needs root (FUSE mounts)");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions { no_dataplane: true, ..Default::default() });
    let endpoint = std::fs::read_to_string(lc.state_dir().join("oss-endpoint")).unwrap();
    let bucket_dir = lc.state_dir().join("oss").join("pods");
    std::fs::create_dir_all(&bucket_dir).unwrap();
    let work = lc.dir.path();
    let good = passwd_file(work, "passwd", &lc.credentials.access_key_id, &lc.credentials.access_key_secret);

    {
        let m = S3fsMount::mount("pods", &work.join("mnt"), &endpoint, &good);
        std::fs::write(m.dir.join("hello.txt"), b"written through s3fs\n").unwrap();
    }
    assert_eq!(std::fs::read(bucket_dir.join("hello.txt")).unwrap(), b"written through s3fs\n", "the object is in the bucket");
    {
        let m = S3fsMount::mount("pods", &work.join("mnt2"), &endpoint, &good);
        assert_eq!(std::fs::read(m.dir.join("hello.txt")).unwrap(), b"written through s3fs\n", "and reads back through S3");
    }

    let bad = passwd_file(work, "passwd-bad", &lc.credentials.access_key_id, "not-the-secret");
    let m = S3fsMount::mount("pods", &work.join("mnt3"), &endpoint, &bad);
    assert!(std::fs::read(m.dir.join("hello.txt")).is_err(), "wrong credentials read nothing");
    assert!(std::fs::write(m.dir.join("evil.txt"), b"x").is_err() || !bucket_dir.join("evil.txt").exists(), "wrong credentials write nothing");
}
