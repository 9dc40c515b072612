//! `netiso-bench`: compares netiso with host networking and veth paths (see `cargo xtask bench`).
//!
//! One binary, three roles: `run` orchestrates the whole benchmark; `server` and `client` are the
//! load generator, started by `run` inside the namespaces and cgroups it creates.
mod bench;
mod cost;
mod cost_report;
mod env;
mod floor;
mod load;
mod registration;
mod report;
mod sys;
mod tc_cost;
mod unix_cost;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "netiso-bench",
    about = "Benchmark netiso against host networking, veth+bridge and routed veth"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark (root only): builds its own namespaces, cgroups and agent.
    Run(bench::Opts),
    /// Load-generator server (started by `run`).
    Server(load::ServerArgs),
    /// Load-generator client (started by `run`); prints one JSON line.
    Client(load::ClientArgs),
    /// Run a program inside a network namespace and cgroup (for the iperf3/sockperf cross-check).
    Exec(env::ExecArgs),
    /// connect(2) a unix datagram socket in a loop (started by `run` for the abstract-unix cost).
    UnixLoop(unix_cost::LoopArgs),
}

fn main() -> ExitCode {
    let r = match Cli::parse().cmd {
        Cmd::Run(o) => bench::run(o),
        Cmd::Server(a) => load::server(a),
        Cmd::Client(a) => load::client(a),
        Cmd::Exec(a) => env::exec(a),
        Cmd::UnixLoop(a) => unix_cost::unix_loop(&a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            env::wait_if_interrupted();
            eprintln!("netiso-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
