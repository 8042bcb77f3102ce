//! `arsnetctl` entry point: parse the command line, run the command, map the result to an
//! exit code (see `exit.rs`). Errors print one line on stderr, never a backtrace.

mod cli;
mod commands;
mod demo;
mod exit;
mod render;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("arsnetctl: cannot start the async runtime: {e}");
            return exit::Exit::Refused.into();
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code.into(),
        Err(failure) => {
            eprintln!("arsnetctl: {}", failure.message);
            failure.exit.into()
        }
    }
}
