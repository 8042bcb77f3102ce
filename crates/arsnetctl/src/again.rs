//! How to call this `arsnetctl` again, for the hints that name a command to run next
//! ("`arsnetctl cancel 5` stops it"): with the socket of the daemon this invocation talked
//! to, whenever that is not the default one, so that a hint pasted as it is reaches the
//! daemon the job lives in (not the default daemon, where job 5 may be another job).

use std::path::Path;
use std::sync::OnceLock;

static COMMAND: OnceLock<String> = OnceLock::new();

/// Records the socket this invocation uses (once, before any hint is built).
pub fn remember(socket: &Path) {
    let _ = COMMAND.set(command_for(socket, &arsnet_client::paths::default_socket()));
}

/// `arsnetctl`, or `arsnetctl --socket PATH` (quoted for a POSIX shell where needed).
pub fn ctl() -> String {
    COMMAND
        .get()
        .cloned()
        .unwrap_or_else(|| "arsnetctl".to_string())
}

fn command_for(socket: &Path, default: &Path) -> String {
    if socket == default {
        return "arsnetctl".to_string();
    }
    format!(
        "arsnetctl --socket {}",
        shell_word(&socket.to_string_lossy())
    )
}

fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@%,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_names_the_socket_unless_it_is_the_default() {
        let default = Path::new("/run/user/1000/arsnet/arsnetd.sock");
        assert_eq!(command_for(default, default), "arsnetctl");
        assert_eq!(
            command_for(Path::new("/tmp/a/ctl.sock"), default),
            "arsnetctl --socket /tmp/a/ctl.sock"
        );
        assert_eq!(
            command_for(Path::new("/tmp/it's here/c.sock"), default),
            r"arsnetctl --socket '/tmp/it'\''s here/c.sock'"
        );
    }
}
