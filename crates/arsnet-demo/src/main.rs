//! `arsnet-demo`: the product's main job in one command (`cargo run --release -p
//! arsnet-demo`). Starts a private daemon (temp socket and state dir) unless one was given,
//! creates a test file, serves it on N virtual servers, fetches it through the daemon with
//! live per-server metrics, stops one server half way to show failover, verifies the result
//! byte for byte and prints a summary.
//!
//! It is a crate of its own because it composes both halves: the daemon library (run on a
//! thread of this process, so one `cargo run` is all a fresh clone needs) and `arsnetctl`'s
//! commands and rendering, through the same control socket as any client.

mod args;
mod daemon;
mod files;
mod run;

use args::Args;
use arsnetctl::exit::Exit;
use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: cannot start the async runtime: {e}");
            return Exit::Refused.into();
        }
    };
    match runtime.block_on(run::run(args)) {
        Ok(code) => code.into(),
        Err(failure) => {
            eprintln!("demo: {}", failure.message);
            failure.exit.into()
        }
    }
}
