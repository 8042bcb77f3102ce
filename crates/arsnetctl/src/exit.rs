//! Exit codes, in one place (README's table mirrors this). Cron jobs rely on them.

use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// The daemon refused the request or it failed.
    Refused = 1,
    /// Bad command line (clap uses 2 as well).
    Usage = 2,
    /// No daemon at the socket, or the connection broke.
    Unreachable = 3,
    /// The download failed.
    JobFailed = 4,
    /// The download was cancelled.
    JobCancelled = 5,
    /// The download was paused while `--wait` was waiting on it.
    JobPaused = 6,
    /// `--timeout` passed before the job ended; the job continues in the daemon.
    Timeout = 7,
    /// Ctrl-C while waiting; the job continues in the daemon.
    Interrupted = 130,
}

impl Exit {
    /// Every code, in order (`--help` and README's table list exactly these).
    pub const ALL: [Exit; 9] = [
        Exit::Ok,
        Exit::Refused,
        Exit::Usage,
        Exit::Unreachable,
        Exit::JobFailed,
        Exit::JobCancelled,
        Exit::JobPaused,
        Exit::Timeout,
        Exit::Interrupted,
    ];
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure {
            exit,
            message: message.into(),
        }
    }
}

impl From<arsnet_client::ClientError> for Failure {
    fn from(e: arsnet_client::ClientError) -> Self {
        use arsnet_client::ClientError;
        match e {
            ClientError::Unreachable { path, source }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Failure::new(
                    Exit::Unreachable,
                    format!(
                        "not allowed to use the control socket {} ({source}): the daemon serves its own user, root and members of its control_group",
                        path.display()
                    ),
                )
            }
            ClientError::Unreachable { path, source } => Failure::new(
                Exit::Unreachable,
                format!(
                    "arsnetd is not running at {} ({source}). Start it with `arsnetd` (or `systemctl start arsnetd`), or point --socket / ARSNET_SOCKET at it.",
                    path.display()
                ),
            ),
            // Not our daemon: as good as none, and nothing was sent to it.
            e @ ClientError::Untrusted { .. } => Failure::new(Exit::Unreachable, e.to_string()),
            ClientError::Frame(e) => Failure::new(Exit::Unreachable, format!("lost connection to arsnetd: {e}")),
            e @ ClientError::NoAnswer(_) => Failure::new(Exit::Unreachable, e.to_string()),
            ClientError::Daemon(e) => Failure::new(Exit::Refused, e.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    /// A new variant does not compile until it has a place in `Exit::ALL`.
    #[test]
    fn all_holds_every_variant() {
        for (i, e) in Exit::ALL.iter().enumerate() {
            let place = match e {
                Exit::Ok => 0,
                Exit::Refused => 1,
                Exit::Usage => 2,
                Exit::Unreachable => 3,
                Exit::JobFailed => 4,
                Exit::JobCancelled => 5,
                Exit::JobPaused => 6,
                Exit::Timeout => 7,
                Exit::Interrupted => 8,
            };
            assert_eq!(place, i, "{e:?}");
        }
    }
}
