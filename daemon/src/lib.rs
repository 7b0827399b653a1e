//! What every Berth daemon (agent, CSI driver, scheduler, local cloud) does the same way, in one
//! place: logging set-up (text or JSON, level from `BERTH_LOG`), rate-limited log lines for hot
//! paths, dropping the capabilities a daemon does not need, serving `/metrics`, and reading the mount table.

pub mod logging;
pub mod metrics;
pub mod mountinfo;
pub mod privileges;
pub mod socket;

use privileges::{Capability, Reach};

/// A daemon's `main` after its flags are parsed: logging set up, capabilities reduced to `keep`
/// (before any thread exists, so every thread inherits the reduced sets), a runtime with
/// `worker_threads`, then `run`; its error is logged and printed as `<program>: <error>` and the
/// exit code says failure.
pub fn start<F, Fut, E>(program: &str, log_json: bool, keep: &[Capability], worker_threads: usize, run: F) -> std::process::ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    logging::init(log_json);
    if let Err(e) = privileges::keep_only_or_explain(program, keep, Reach::ProcessAndChildren) {
        eprintln!("{e}");
        return std::process::ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(worker_threads).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{program}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
