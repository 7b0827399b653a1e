//! `berthctl`: parses the command line and dispatches to one command.

mod cluster;
mod commands;
mod inspect;
mod table;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "berthctl", version, about = "Operate Berth: a local cluster on the local cloud, and what it holds")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How to print results.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start the local cloud with a sample VPC, vSwitches, a security group and two instances.
    Up(commands::up::Up),
    /// Stop the local cloud and remove everything it made on this machine.
    Down(commands::down::Down),
    /// Show the local cloud's VPCs, vSwitches, instances and ENIs.
    Status(commands::status::Status),
    /// Put the binaries, the CNI plugin, the systemd units and an example config in place (idempotent).
    Install(commands::install::Install),
    /// Remove what install put in place (configuration and state only with --purge).
    Uninstall(commands::install::Uninstall),
    /// Pods of the local cluster: add, del, list.
    Pod(commands::pod::Pod),
    /// Compare one node's pods, its agent's pool and the cloud; exit non-zero on any mismatch.
    Inspect(commands::inspect::Inspect),
    /// Pods and nodes of the central scheduler: submit, delete, get, pods, nodes.
    Sched(commands::sched::Sched),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(c) => c.exec(cli.output).await,
        Command::Down(c) => c.exec().await,
        Command::Status(c) => c.exec(cli.output).await,
        Command::Inspect(c) => c.exec(cli.output).await,
        Command::Pod(c) => c.exec(cli.output).await,
        Command::Install(c) => c.exec().await,
        Command::Uninstall(c) => c.exec().await,
        Command::Sched(c) => c.exec(cli.output).await,
    };
    if let Err(e) = result {
        eprintln!("berthctl: {e:#}");
        std::process::exit(1);
    }
}
