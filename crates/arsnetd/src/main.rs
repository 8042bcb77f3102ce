//! `arsnetd` entry point: parse flags, load the config, run the daemon. Everything else is
//! in the library so that it can be tested and reused.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = arsnetd::Args::parse();
    let config = match arsnetd::Config::load(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("arsnetd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("arsnetd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(arsnetd::run(config));
    // Blocking work still running (hashing a huge file, re-verifying a journal) must not
    // hold the exit hostage: everything durable was saved before `run` returned.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arsnetd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
