//! The CNI commands. VERSION answers alone; the others check their input fully and then need the
//! node's agent, which they reach over its unix socket.

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;

use crate::protocol::config::NetConf;
use crate::protocol::env::{Command, Env};
use crate::protocol::error::{CniError, code};
use crate::protocol::version;

/// What a command prints on success (nothing for DEL, CHECK, GC, STATUS).
pub type Output = Option<String>;

pub fn version(stdin: &[u8]) -> Result<Output, CniError> {
    // VERSION may come with a config or with just {"cniVersion": …}, or with nothing.
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_string))
        .unwrap_or_else(|| version::LATEST.to_string());
    let doc = serde_json::json!({ "cniVersion": asked, "supportedVersions": version::SUPPORTED });
    Ok(Some(doc.to_string()))
}

/// The version a command needs at least.
fn minimum(command: Command) -> &'static str {
    match command {
        Command::Check => "0.4.0",
        Command::Gc | Command::Status => "1.1.0",
        _ => "0.3.0",
    }
}

/// Checks the config's version against what the command needs.
pub fn check_version(command: Command, conf: &NetConf) -> Result<(), CniError> {
    version::check(&conf.cni_version)?;
    let min = minimum(command);
    if !version::at_least(&conf.cni_version, min) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{command:?} needs cniVersion {min} or newer, the config says {}", conf.cni_version),
            "raise cniVersion in the network config",
        ));
    }
    Ok(())
}

/// Why the agent cannot be reached, if it cannot.
fn agent_unreachable(socket: &str) -> Option<String> {
    match UnixStream::connect(socket) {
        Ok(_) => None,
        Err(e) if e.kind() == ErrorKind::NotFound => Some(format!("the Berth agent socket {socket} does not exist")),
        Err(e) => Some(format!("the Berth agent at {socket} does not answer: {e}")),
    }
}

pub fn run(env: &Env, conf: &NetConf) -> Result<Output, CniError> {
    check_version(env.command, conf)?;
    let unreachable = agent_unreachable(&conf.agent_socket);
    match env.command {
        Command::Version => Ok(None),
        // DEL must succeed with the agent down; the release is left to GC when it returns.
        Command::Del => Ok(None),
        Command::Gc => Ok(None),
        Command::Status => Err(CniError::new(
            code::PLUGIN_NOT_AVAILABLE,
            unreachable.unwrap_or_else(|| "the Berth agent answers but cannot serve allocations yet".into()),
            "start berth-agent (systemctl status berth-agent) and wait until it reports ready",
        )),
        Command::Add | Command::Check => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            unreachable.unwrap_or_else(|| "the Berth agent answers but cannot serve allocations yet".into()),
            "try again once berth-agent is ready (systemctl status berth-agent)",
        )),
    }
}
