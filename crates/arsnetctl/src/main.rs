//! `arsnetctl` entry point: parse the command line, run the command, map the result to an
//! exit code (see `exit.rs`). Errors print one line on stderr, never a backtrace; with
//! `--json` they are also printed on stdout as `{"schema":1,"error":{...}}`.

use arsnetctl::{cli, commands, exit, json, out};
use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // A usage error is an error document too (args_os: an argument that is not
            // UTF-8 is such a usage error, not a reason to panic) when the caller asked for JSON (help
            // and version are not errors, and print as they always do).
            if e.use_stderr() && std::env::args_os().any(|a| a == "--json") {
                // The whole error (clap lists missing arguments on the lines after the
                // first), without the usage and "try --help" lines that follow a blank line.
                let message = e.to_string();
                let text = message.split("\n\n").next().unwrap_or_default().trim();
                let text = text.strip_prefix("error: ").unwrap_or(text);
                let text: Vec<&str> = text.lines().map(str::trim).collect();
                let text = text.join(" ");
                json::print(serde_json::json!({ "error": { "exit": 2, "message": text } }));
            }
            if !e.use_stderr() {
                // Help and version go through the one stdout writer, so a closed stdout
                // ends this like every other command (SIGPIPE), not with a silent 0.
                out::text(&e.render().to_string());
                return exit::Exit::Ok.into();
            }
            e.exit()
        }
    };
    let as_json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out::err_line(&format!("arsnetctl: cannot start the async runtime: {e}"));
            return exit::Exit::Refused.into();
        }
    };
    let result = runtime.block_on(commands::run(cli));
    // A follow that was interrupted leaves tasks behind (the watch connection); they end
    // with the process.
    runtime.shutdown_background();
    match result {
        Ok(code) => code.into(),
        Err(failure) => {
            out::err_line(&format!("arsnetctl: {}", failure.message));
            if as_json {
                json::print(serde_json::json!({
                    "error": { "exit": failure.exit as u8, "message": failure.message }
                }));
            }
            failure.exit.into()
        }
    }
}
