//! `berth`, the CNI plugin: reads the environment and stdin, runs one command, prints its result
//! or the error document on stdout (CNI's contract), logs nothing to stdout.

use std::io::{Read as _, Write as _};

use berth_cni::commands;
use berth_cni::protocol;
use berth_cni::protocol::config::NetConf;
use berth_cni::protocol::env::{Command, Env};
use berth_cni::protocol::error::CniError;

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    // Errors are written in the version the config asked for, when it says one.
    let asked_version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_string))
        .unwrap_or_else(|| protocol::version::LATEST.to_string());
    let started = std::time::Instant::now();
    let result = match read {
        Err(e) => Err(CniError::new(protocol::error::code::IO_FAILURE, format!("cannot read stdin: {e}"), "")),
        Ok(_) => dispatch(&stdin),
    };
    if let Some(path) = NetConf::parse(&stdin).ok().and_then(|c| c.log_file()) {
        log_command(&path, started.elapsed(), result.as_ref().err());
    }
    let mut out = std::io::stdout().lock();
    match result {
        Ok(Some(text)) => {
            let _ = writeln!(out, "{text}");
        }
        Ok(None) => {}
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&asked_version));
            let _ = out.flush();
            eprintln!("berth: {e}");
            std::process::exit(1);
        }
    }
}

fn dispatch(stdin: &[u8]) -> Result<commands::Output, CniError> {
    let env = Env::parse(|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        return commands::version(stdin);
    }
    let conf = NetConf::parse(stdin)?;
    commands::run(&env, &conf)
}

/// One JSON line per command in the config's `logFile`: what ran, for which container, under which
/// trace ID (the one the agent's log and the cloud calls carry), how long, how it ended. A log that
/// cannot be written is skipped: the command's outcome is what the runtime needs.
fn log_command(path: &std::path::Path, elapsed: std::time::Duration, error: Option<&CniError>) {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let mut line = serde_json::json!({
        "time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default(),
        "command": var("CNI_COMMAND"),
        "containerId": var("CNI_CONTAINERID"),
        "ifname": var("CNI_IFNAME"),
        "traceId": berth_cni::agent_client::trace_id(),
        "elapsedMs": elapsed.as_secs_f64() * 1e3,
        "outcome": if error.is_some() { "error" } else { "ok" },
    });
    if let Some(e) = error {
        line["code"] = e.code.into();
        line["msg"] = e.msg.clone().into();
    }
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}
