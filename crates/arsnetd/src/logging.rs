//! The daemon's log: tracing to stderr, in a form that suits where stderr goes. At a
//! terminal: colours and timestamps. Anywhere else: no ANSI escapes. Into the journal
//! (`$JOURNAL_STREAM` names our stderr): no timestamps either, journald adds its own, and
//! each line starts with its syslog priority (`<3>` error … `<7>` debug), which journald
//! reads as the entry's priority (`journalctl -p warning` then means something) instead of
//! the level's name. The
//! filter is `log` from the configuration (flag, `RUST_LOG`, file; see `config.rs`) and can be
//! replaced by a reload.

use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::Config;

/// The filter used when the configuration names none.
const DEFAULT_FILTER: &str = "info";

/// The installed log, whose filter a reload can replace.
pub(crate) struct Logging {
    /// `None` when another subscriber was installed first (the demo, which runs the daemon
    /// in its own process): then there is nothing of ours to change.
    filter: Option<reload::Handle<EnvFilter, Registry>>,
}

fn filter_for(config: &Config) -> EnvFilter {
    let wanted = config.log.as_deref().unwrap_or(DEFAULT_FILTER);
    // `Config::check` refused a filter that does not parse; this fallback is for a
    // configuration built in code.
    EnvFilter::try_new(wanted).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// Whether stderr is the stream `$JOURNAL_STREAM` (set by systemd, "DEV:INODE") names.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `stat` into the buffer it is given, for a descriptor we only read.
    if unsafe { libc::fstat(libc::STDERR_FILENO, stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat returned 0, so it filled the buffer.
    let stat = unsafe { stat.assume_init() };
    same_stream(dev, ino, &stat)
}

// dev_t and ino_t are not u64 on every platform.
#[allow(clippy::unnecessary_cast)]
fn same_stream(dev: &str, ino: &str, stat: &libc::stat) -> bool {
    dev.parse::<u64>().ok() == Some(stat.st_dev as u64)
        && ino.parse::<u64>().ok() == Some(stat.st_ino as u64)
}

/// The syslog priority journald reads from a `<N>` at the start of a line (sd-daemon(3)).
fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// An event format that puts the event's syslog priority in front of what `F` writes.
struct Prioritised<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritised<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let priority = syslog_priority(event.metadata().level());
        writer.write_str(&prioritised(&line, priority))
    }
}

/// `text` with `<priority>` in front of every line. journald reads a `<N>` at the start of
/// any line as that entry's priority: a newline inside a logged value (a directory name a
/// local user chose, say) must not start an entry whose priority that user wrote.
fn prioritised(text: &str, priority: u8) -> String {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut out = String::with_capacity(text.len() + 8);
    for line in body.split('\n') {
        out.push_str(&format!("<{priority}>{line}\n"));
    }
    out
}

/// Installs the log for the whole process.
pub(crate) fn init(config: &Config) -> Logging {
    let (filter, handle) = reload::Layer::new(filter_for(config));
    let terminal = std::io::stderr().is_terminal();
    let format = tracing_subscriber::fmt::layer()
        .with_ansi(terminal)
        .with_writer(std::io::stderr);
    let format = if stderr_is_journal() {
        // The level is the priority now: journalctl shows it (colour, `-p`), not as text.
        let event_format = tracing_subscriber::fmt::format()
            .without_time()
            .with_level(false);
        format.event_format(Prioritised(event_format)).boxed()
    } else {
        format.boxed()
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .try_init()
        .is_ok();
    Logging {
        filter: installed.then_some(handle),
    }
}

impl Logging {
    /// Puts the filter of `config` in force.
    pub(crate) fn apply(&self, config: &Config) -> Result<(), reload::Error> {
        match &self.filter {
            Some(handle) => handle.reload(filter_for(config)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prioritised;

    #[test]
    fn every_line_of_an_event_carries_its_priority_so_none_can_be_forged() {
        let forged = "arsnetd: dir=/d/x\n<0>arsnetd: DISK FAILING\nmore\n";
        assert_eq!(
            prioritised(forged, 6),
            "<6>arsnetd: dir=/d/x\n<6><0>arsnetd: DISK FAILING\n<6>more\n"
        );
        assert_eq!(prioritised("one line\n", 4), "<4>one line\n");
    }
}
