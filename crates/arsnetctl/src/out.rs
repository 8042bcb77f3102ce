//! Everything `arsnetctl` prints on stdout goes through here. A closed stdout (`arsnetctl
//! watch | head -1`) ends the command the way it ends coreutils: killed by SIGPIPE, quietly,
//! never a panic. Rust ignores SIGPIPE so that a write to the control socket returns an
//! error instead of killing us; stdout is the one place where the default behaviour is right.
//! Messages for stderr go through [`err_line`]: a closed stderr (`2>&-`, a reader that went
//! away) loses the message but never turns it into a panic and exit code 101.

use std::io::Write;

/// Prints `text` and a newline, flushed (progress must show at once, also into a pipe).
pub fn line(text: &str) {
    write(text.as_bytes(), true);
}

/// Prints `text` as it is (it carries its own newlines), flushed.
pub fn text(text: &str) {
    write(text.as_bytes(), false);
}

/// Prints raw bytes (a generated completion script, a man page).
pub fn bytes(bytes: &[u8]) {
    write(bytes, false);
}

/// Prints `text` and a newline on stderr, ignoring every error: there is nowhere left to
/// report that stderr itself failed, and the exit code still tells the outcome.
pub fn err_line(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_all(text.as_bytes())
        .and_then(|()| stderr.write_all(b"\n"))
        .and_then(|()| stderr.flush());
}

fn write(bytes: &[u8], newline: bool) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(bytes)
        .and_then(|()| {
            if newline {
                stdout.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => die_of_sigpipe(),
        Err(e) => {
            // Nowhere left to say it but stderr; exit as a failed command.
            err_line(&format!("arsnetctl: cannot write to stdout: {e}"));
            std::process::exit(1);
        }
    }
}

/// Ends the process as if SIGPIPE had not been ignored: the shell sees "killed by SIGPIPE"
/// (status 141), exactly as for `yes | head -1`.
fn die_of_sigpipe() -> ! {
    // SAFETY: restoring a signal's default disposition and raising it has no preconditions;
    // nothing else in this process relies on SIGPIPE being ignored from here on.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Not reached: the default action of SIGPIPE terminates the process.
    std::process::exit(141)
}
