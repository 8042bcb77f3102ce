//! `arsnetd` entry point: parse flags, load the config, run the daemon. Everything else is
//! in the library so that it can be tested and reused.

use clap::Parser;

/// Writes `bytes` to stdout for `--man`, `--completions` and `--check-config`. A reader
/// that went away (`| head`) is not an error (what mattered was the exit code); any other
/// write error is, and never a panic.
fn write_stdout(bytes: &[u8], what: &str) -> std::process::ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("arsnetd: cannot print {what}: {e}");
            std::process::ExitCode::FAILURE
        }
        _ => std::process::ExitCode::SUCCESS,
    }
}

/// `--man`: the manual page from the same definition as `--help`.
fn print_man() -> std::process::ExitCode {
    use clap::CommandFactory;
    let mut page = Vec::new();
    match clap_mangen::Man::new(arsnetd::Args::command()).render(&mut page) {
        Ok(()) => write_stdout(&page, "the manual"),
        Err(e) => {
            eprintln!("arsnetd: cannot print the manual: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--completions SHELL`: the completion script from the same definition as `--help`.
fn print_completions(shell: clap_complete::Shell) -> std::process::ExitCode {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut arsnetd::Args::command(), "arsnetd", &mut script);
    write_stdout(&script, "the completions")
}

/// The signals the daemon acts on, made deliverable from its first line.
///
/// SIGHUP's default is to terminate. Until the daemon listens for it (after the lock, the
/// saved state and the socket), one sent by a service manager or a config tool must not kill
/// it: ignored until then (the configuration was only just read anyway). Setting SIG_IGN
/// also discards one already pending.
///
/// A signal mask is inherited across exec: a daemon started by a parent that blocked
/// SIGHUP, SIGTERM or SIGINT would never reload or stop. They are unblocked here, after
/// SIGHUP is ignored, so that a pending one cannot kill either.
fn take_signals() {
    // SAFETY: SIG_IGN as a disposition and a mask built by sigemptyset/sigaddset have no
    // preconditions; nothing else runs yet (no other thread exists).
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

fn main() -> std::process::ExitCode {
    take_signals();
    let args = arsnetd::Args::parse();
    if args.man {
        return print_man();
    }
    if let Some(shell) = args.completions {
        return print_completions(shell);
    }
    let config = match arsnetd::Config::load(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("arsnetd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.check_config {
        let source = args.config.as_ref().map_or_else(
            || "flags, environment and defaults".to_string(),
            |p| p.display().to_string(),
        );
        eprintln!("arsnetd: configuration OK ({source}); in effect:");
        return write_stdout(config.to_toml().as_bytes(), "the configuration");
    }
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
    let result = runtime.block_on(arsnetd::run(config, arsnetd::Origin::new(args)));
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
