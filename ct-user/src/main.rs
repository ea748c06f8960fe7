//! The `ctscope` binary: parse flags, run one subcommand, map errors to exit codes.
//! Exit status: 0 success (also when stdout closes early, `ctscope list | head`), 1
//! runtime error (message on stderr), 2 usage error (clap, or a `--netns` that names no
//! network namespace).

use std::process::ExitCode;

use clap::Parser as _;
use ctscope::{
    cli::{Cli, Command},
    cmd,
    sys::{error_text, netns, stdout},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // conntrack's own syntax, messages and exit statuses (see compat).
    if let Command::Conntrack(args) = &cli.command {
        return ctscope::compat::main(&args.args);
    }
    if let Err(e) = cli.validate() {
        e.exit();
    }
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_timestamp(None)
        .init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if stdout::is_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctscope: error: {}", error_text::render(e.as_ref()));
            exit_status(&e)
        }
    }
}

/// 2 for a usage error found only when resolving the arguments, else 1.
fn exit_status(e: &anyhow::Error) -> ExitCode {
    let usage = e
        .chain()
        .filter_map(|c| c.downcast_ref::<netns::ResolveError>())
        .any(netns::ResolveError::is_usage);
    if usage {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Probe(args) => cmd::probe::run(args),
        Command::Watch(args) => agent_runtime()?.block_on(cmd::watch::run(args)),
        Command::Events(args) => runtime()?.block_on(cmd::events::run(args)),
        Command::List(args) => runtime()?.block_on(cmd::list::run(args)),
        Command::Count(args) => runtime()?.block_on(cmd::count::run(args)),
        Command::Stats(args) => runtime()?.block_on(cmd::stats::run(args)),
        Command::Delete(args) => runtime()?.block_on(cmd::delete::run(args)),
        Command::Flush(args) => runtime()?.block_on(cmd::flush::run(args)),
        Command::Get(args) => runtime()?.block_on(cmd::entry::get(args)),
        Command::Insert(args) => runtime()?.block_on(cmd::entry::insert(args)),
        Command::Update(args) => runtime()?.block_on(cmd::entry::update(args)),
        Command::Expect(args) => runtime()?.block_on(cmd::expect::run(args)),
        Command::Diagnose(args) => runtime()?.block_on(cmd::diagnose::run(args)),
        Command::Top(args) => runtime()?.block_on(cmd::top::run(args)),
        Command::Timeouts(args) => runtime()?.block_on(cmd::timeouts::run(args)),
        Command::Conntrack(_) => unreachable!("handled in main"),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The agent's: its loop (events, merges, requests) runs on the main thread, its dumps'
/// reading and decoding and its clients' connections on two workers, so a dump of a big
/// namespace does not take the loop's time.
fn agent_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
