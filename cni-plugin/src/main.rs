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
    let result = match read {
        Err(e) => Err(CniError::new(protocol::error::code::IO_FAILURE, format!("cannot read stdin: {e}"), "")),
        Ok(_) => dispatch(&stdin),
    };
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
