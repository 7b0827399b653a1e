//! A member of an etcd cluster on loopback, as the local cluster (`berthctl up --ha`), the tests
//! and the load benchmark run it: Debian's `etcd-server`, client and peer URLs on 127.0.0.1, a
//! cluster token of its own so clusters side by side never join each other (and never the host's
//! default 127.0.0.1:2379). The callers own the processes (where logs and data go, when to kill);
//! this is how a member is started and asked whether it is healthy.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
}

/// The etcd binary: Debian's etcd-server, or `BERTH_ETCD` when set. An error says how to get it.
pub fn etcd_binary() -> Result<PathBuf, String> {
    let path = std::env::var_os("BERTH_ETCD").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from);
    if !path.exists() {
        return Err(format!("{} is missing: install Debian's etcd-server (apt-get install etcd-server; `./run` does), or set BERTH_ETCD to an etcd 3.4+ binary", path.display()));
    }
    Ok(path)
}

/// `--initial-cluster` of these members.
pub fn initial_cluster(members: &[EtcdMember]) -> String {
    members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",")
}

impl EtcdMember {
    /// Member `m<i>` on two ports.
    pub fn new(i: usize, client_port: u16, peer_port: u16) -> EtcdMember {
        EtcdMember { name: format!("m{i}"), client_port, peer_port }
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// The command that runs this member of `initial_cluster` on `data`, logging warnings and
    /// worse to stderr. Started again on the same data, the member keeps its membership (etcd
    /// ignores the initial-* flags then).
    pub fn command(&self, etcd: &Path, data: &Path, initial_cluster: &str, token: &str) -> Command {
        let mut c = Command::new(etcd);
        c.args(["--name", &self.name])
            .arg("--data-dir")
            .arg(data)
            .args(["--listen-client-urls", &self.client_url(), "--advertise-client-urls", &self.client_url()])
            .args(["--listen-peer-urls", &self.peer_url(), "--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", initial_cluster, "--initial-cluster-token", token, "--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c
    }

    /// Whether the member answers `/health` with a leader elected.
    pub fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], self.client_port).into(), Duration::from_millis(300)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains("\"health\":\"true\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_listens_on_loopback_and_names_its_peers() {
        let members: Vec<EtcdMember> = (0..3).map(|i| EtcdMember::new(i, 3000 + i as u16, 4000 + i as u16)).collect();
        let initial = initial_cluster(&members);
        assert_eq!(initial, "m0=http://127.0.0.1:4000,m1=http://127.0.0.1:4001,m2=http://127.0.0.1:4002");
        let c = members[1].command(Path::new("/usr/bin/etcd"), Path::new("/d"), &initial, "tok");
        let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let flag = |f: &str| args.iter().position(|a| a == f).map(|i| args[i + 1].clone());
        assert_eq!(flag("--listen-client-urls").as_deref(), Some("http://127.0.0.1:3001"));
        assert_eq!(flag("--listen-peer-urls").as_deref(), Some("http://127.0.0.1:4001"));
        assert_eq!(flag("--initial-cluster-token").as_deref(), Some("tok"));
        assert_eq!(flag("--data-dir").as_deref(), Some("/d"));
    }
}
