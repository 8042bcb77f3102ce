//! The live display at a terminal: how `fetch --wait` and `watch` show what they receive.
//! `commands/follow.rs` decides *when* something is shown (each report, a job's end, a wait
//! that gave up); this module decides *how*: [`Display::choose`] picks the form once, and
//! [`Bars`] draws jobs (one line per source, a total bar with bytes, rate and ETA) and server
//! groups in place with `indicatif`, each line cut to the terminal's width.
//!
//! Plain timestamped lines stay the form for anything that is not a terminal (a pipe, a file,
//! cron's mail, `TERM=dumb`), and `--json` is untouched: scripts and the CLI contract tests
//! read those, and redrawn lines would be noise there.

use std::io::IsTerminal;

use arsnet_proto::control::{GroupInfo, JobId, JobInfo, JobState};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::render;

/// How a follow shows its reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// `--json`: event lines.
    Json,
    /// `--quiet`: nothing but errors (on stderr).
    Quiet,
    /// Not a terminal (or `TERM=dumb`): a block of plain lines per report.
    Plain,
    /// A terminal: bars redrawn in place; `color` unless `NO_COLOR` is set.
    Bars { color: bool },
}

impl Display {
    /// The form for this process's stdout and environment.
    pub fn choose(json: bool, quiet: bool) -> Display {
        let term = std::env::var_os("TERM");
        let no_color = std::env::var_os("NO_COLOR");
        Self::decide(
            json,
            quiet,
            std::io::stdout().is_terminal(),
            term.as_deref().and_then(|t| t.to_str()),
            no_color.is_some_and(|v| !v.is_empty()),
        )
    }

    /// [`Display::choose`] without the environment, so that every case is unit-tested.
    fn decide(json: bool, quiet: bool, tty: bool, term: Option<&str>, no_color: bool) -> Display {
        if json {
            Display::Json
        } else if quiet {
            Display::Quiet
        } else if !tty || term == Some("dumb") {
            // A dumb terminal cannot move the cursor: redrawing would pile up lines.
            Display::Plain
        } else {
            // NO_COLOR (no-color.org) asks for no colour, not for no display.
            Display::Bars { color: !no_color }
        }
    }

    /// The bars, when this form draws them.
    pub fn bars(self) -> Option<Bars> {
        match self {
            Display::Bars { color } => Some(Bars::new(color)),
            _ => None,
        }
    }
}

/// A source's rate as people are shown it (defined with the tables, which show it too).
pub use crate::render::source_rate;

/// Cuts `text` to `width` characters, marking the cut with "…".
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// Addresses longer than this are cut, so that the columns after them stay in place.
const ADDRESS_WIDTH: usize = 28;

/// One line per source: address, state, rate, segments and their share of those delivered.
fn source_lines(info: &JobInfo) -> Vec<String> {
    let delivered: u64 = info.sources.iter().map(|s| s.segments).sum();
    let width = crate::render::address_width(&info.sources).min(ADDRESS_WIDTH);
    info.sources
        .iter()
        .map(|s| {
            let share = (s.segments * 100).checked_div(delivered).unwrap_or(0);
            let detail = if s.detail.is_empty() {
                String::new()
            } else {
                format!("  ({})", s.detail)
            };
            format!(
                "  {:<width$}  {:<10} {:>12}  {:>6} seg {:>3}%{detail}",
                cut(&s.address, width),
                s.state.label(),
                source_rate(s),
                s.segments,
                share,
            )
        })
        .collect()
}

fn header_line(info: &JobInfo) -> String {
    let path = info.name.as_deref().map_or_else(
        || info.dir.display().to_string(),
        |n| info.dir.join(n).display().to_string(),
    );
    format!(
        "job {} {}  {path}",
        info.id,
        render::state_text(&info.state)
    )
}

/// The total bar's text: bytes done / size, share, rate, and the ETA (or how long it took).
fn total_text(info: &JobInfo) -> String {
    let size = info.figures.size.map_or_else(|| "?".into(), render::bytes);
    let percent = match info.figures.size {
        Some(0) => 100.0,
        Some(size) => info.figures.bytes_done as f64 * 100.0 / size as f64,
        None => 0.0,
    };
    let done = format!(
        "{} / {size}  {percent:.1}%",
        render::bytes(info.figures.bytes_done)
    );
    let elapsed = std::time::Duration::from_millis(info.figures.elapsed_ms);
    if info.state == JobState::Completed {
        // After the end the daemon's rate is the run's average.
        return format!(
            "{done}  avg {}  done in {}",
            render::rate(info.rate_bps),
            render::duration(elapsed)
        );
    }
    let running = info.state == JobState::Running && info.rate_bps > 0;
    let rate = if running {
        render::rate(info.rate_bps)
    } else {
        "-".into()
    };
    let eta = match info.figures.size {
        Some(size) if running => {
            let left = size.saturating_sub(info.figures.bytes_done) / info.rate_bps;
            render::duration(std::time::Duration::from_secs(left.max(1)))
        }
        _ => "-".into(),
    };
    format!("{done}  {rate}  ETA {eta}")
}

/// The lines of the server groups (`watch` without an id).
fn group_lines(groups: &[GroupInfo]) -> Vec<String> {
    if groups.is_empty() {
        return vec!["server groups: none".into()];
    }
    let mut lines = Vec::new();
    for g in groups {
        lines.push(format!(
            "group {} {} ({}, {} ports)",
            g.id,
            g.file.display(),
            render::bytes(g.size),
            g.ports.len()
        ));
        for p in &g.ports {
            lines.push(format!(
                "  port {:<6} {:<10} {:>3} conns  {:>12}  sent {}",
                p.port,
                p.state.label(),
                p.connections,
                render::rate(p.rate_bps),
                render::bytes(p.bytes_sent)
            ));
        }
    }
    lines
}

/// The styles of the display's lines, with or without colour.
struct Styles {
    header: ProgressStyle,
    line: ProgressStyle,
    total: ProgressStyle,
}

// Each ends with `terminal::MARGIN` spaces: room for an echoed `^C` on the last line.
const HEADER: [&str; 2] = ["{wide_msg}   ", "{wide_msg:.bold}   "];
const LINE: [&str; 2] = ["{wide_msg}   ", "{wide_msg}   "];
const TOTAL: [&str; 2] = [
    "  {bar:30} {wide_msg}   ",
    "  {bar:30.cyan/blue} {wide_msg}   ",
];

impl Styles {
    fn new(color: bool) -> Styles {
        let pick = |templates: [&str; 2]| {
            // The templates are constants (a unit test parses each); the fallback only
            // keeps a display if that ever broke.
            ProgressStyle::with_template(templates[usize::from(color)])
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("█▉▊▋▌▍▎▏ ")
        };
        Styles {
            header: pick(HEADER),
            line: pick(LINE),
            total: pick(TOTAL),
        }
    }
}

/// One job on screen: its header and source lines, then the total bar.
struct JobBars {
    id: JobId,
    rows: Vec<ProgressBar>,
    total: ProgressBar,
}

/// At most this many frames a second (indicatif's default for stdout).
const REFRESH_HZ: u8 = 20;

/// The bars of a follow: jobs and server groups, redrawn in place.
pub struct Bars {
    multi: MultiProgress,
    styles: Styles,
    jobs: Vec<JobBars>,
    groups: Vec<ProgressBar>,
    closed: bool,
}

/// Shows `texts` on `rows`, adding lines (placed by `place`) or removing the extra ones.
fn set_rows(
    multi: &MultiProgress,
    rows: &mut Vec<ProgressBar>,
    texts: Vec<String>,
    style: &ProgressStyle,
    place: impl Fn(&MultiProgress, &[ProgressBar], ProgressBar) -> ProgressBar,
) {
    while rows.len() > texts.len().max(1) {
        if let Some(extra) = rows.pop() {
            extra.finish_and_clear();
            multi.remove(&extra);
        }
    }
    for (i, text) in texts.into_iter().enumerate() {
        match rows.get(i) {
            Some(row) => row.set_message(text),
            None => {
                let bar = ProgressBar::no_length()
                    .with_style(style.clone())
                    .with_message(text);
                let bar = place(multi, rows, bar);
                rows.push(bar);
            }
        }
    }
}

impl Bars {
    fn new(color: bool) -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::term_like_with_hz(
                Box::new(crate::terminal::Stdout::default()),
                REFRESH_HZ,
            )),
            styles: Styles::new(color),
            jobs: Vec::new(),
            groups: Vec::new(),
            closed: false,
        }
    }

    /// Shows the latest state of a job (its block is added below the others when new).
    pub fn job(&mut self, info: &JobInfo) {
        let index = match self.jobs.iter().position(|j| j.id == info.id) {
            Some(index) => index,
            None => {
                let header = self
                    .multi
                    .add(ProgressBar::no_length().with_style(self.styles.header.clone()));
                let total = self.multi.insert_after(
                    &header,
                    ProgressBar::new(0).with_style(self.styles.total.clone()),
                );
                self.jobs.push(JobBars {
                    id: info.id,
                    rows: vec![header],
                    total,
                });
                self.jobs.len() - 1
            }
        };
        let job = &mut self.jobs[index];
        let mut texts = vec![header_line(info)];
        texts.extend(source_lines(info));
        let total = job.total.clone();
        set_rows(
            &self.multi,
            &mut job.rows,
            texts,
            &self.styles.line,
            |m, _, bar| m.insert_before(&total, bar),
        );
        // An unknown size draws an empty bar (indicatif shows a length of 0 as full).
        let len = info.figures.size.unwrap_or(1);
        job.total.update(|state| {
            state.set_len(len);
            state.set_pos(info.figures.bytes_done.min(len));
        });
        job.total.set_message(total_text(info));
        // Lines updated in a burst may be rate-limited by indicatif; this draws them all as
        // they now stand, once.
        job.total.force_draw();
    }

    /// Shows the server groups (above the jobs once they are there).
    pub fn groups(&mut self, groups: &[GroupInfo]) {
        let texts = group_lines(groups);
        let anchor = self.jobs.first().and_then(|j| j.rows.first()).cloned();
        set_rows(
            &self.multi,
            &mut self.groups,
            texts,
            &self.styles.line,
            |m, rows, bar| match (rows.last(), &anchor) {
                (Some(last), _) => m.insert_after(last, bar),
                (None, Some(job)) => m.insert_before(job, bar),
                (None, None) => m.add(bar),
            },
        );
        if let Some(last) = self.groups.last() {
            last.force_draw();
        }
    }

    /// A one-off message, printed above the bars.
    pub fn note(&self, text: &str) {
        // Nothing useful is left to do if the terminal cannot be written to.
        let _ = self.multi.println(text);
    }

    /// Leaves the last frame on screen (a job ended: its final state stays visible).
    pub fn finish(mut self) {
        for bar in self.all() {
            bar.abandon();
        }
        self.closed = true;
        // The cursor stays after the last line's text (see `terminal.rs`): what follows
        // starts on a line of its own.
        crate::out::text("\n");
    }

    /// Removes the bars, so that what is printed next (a hint, an error) stands alone.
    pub fn clear(mut self) {
        self.clear_all();
    }

    fn clear_all(&mut self) {
        for bar in self.all() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
        self.closed = true;
    }

    fn all(&self) -> Vec<ProgressBar> {
        let mut all = self.groups.clone();
        for job in &self.jobs {
            all.extend(job.rows.iter().cloned());
            all.push(job.total.clone());
        }
        all
    }
}

impl Drop for Bars {
    /// A follow that ends by an error (`?`) clears its bars like any other that gave up:
    /// a dropped bar would otherwise draw itself once more, under the error's message.
    fn drop(&mut self) {
        if !self.closed {
            self.clear_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arsnet_proto::control::{SourceInfo, SourceState};

    fn source(address: &str, state: SourceState, rate: u64, segments: u64) -> SourceInfo {
        SourceInfo {
            address: address.into(),
            state,
            detail: String::new(),
            rate_bps: rate,
            bytes: 0,
            segments,
            failures: 0,
        }
    }

    fn job(state: JobState, sources: Vec<SourceInfo>) -> JobInfo {
        JobInfo {
            id: 1,
            state,
            dir: "/tmp/out".into(),
            name: Some("f.bin".into()),
            figures: arsnet_proto::control::RunFigures {
                size: Some(4_000_000),
                segments_total: Some(4),
                segments_done: 1,
                bytes_done: 1_000_000,
                adopted_segments: 0,
                fetched_bytes: 1_000_000,
                elapsed_ms: 2_000,
            },
            rate_bps: 500_000,
            sources,
            content: None,
            verification: Default::default(),
            owner_tag: None,
        }
    }

    #[test]
    fn status_columns_stay_under_their_headings_with_long_mirror_urls() {
        let long = "http://192.0.2.18:8000/payload.bin";
        let text = crate::render::job_detail(&job(
            JobState::Running,
            vec![
                source("127.0.0.1:9000", SourceState::Active, 1, 1),
                source(long, SourceState::Active, 1, 1),
            ],
        ));
        let lines: Vec<&str> = text.lines().collect();
        let heading = lines.iter().find(|l| l.contains("SERVER")).unwrap();
        let column = heading.find("STATE").unwrap();
        for address in ["127.0.0.1:9000", long] {
            let row = lines.iter().find(|l| l.contains(address)).unwrap();
            assert_eq!(
                row[column..].split_whitespace().next(),
                Some(SourceState::Active.label()),
                "{text}"
            );
        }
    }

    #[test]
    fn the_form_follows_flags_stdout_and_environment() {
        use Display::*;
        assert_eq!(Display::decide(true, true, true, None, false), Json);
        assert_eq!(Display::decide(false, true, true, None, false), Quiet);
        assert_eq!(Display::decide(false, false, false, None, false), Plain);
        assert_eq!(
            Display::decide(false, false, true, Some("dumb"), false),
            Plain
        );
        assert_eq!(
            Display::decide(false, false, true, Some("xterm"), false),
            Bars { color: true }
        );
        assert_eq!(
            Display::decide(false, false, true, Some("xterm"), true),
            Bars { color: false }
        );
    }

    #[test]
    fn every_template_parses() {
        let margin = " ".repeat(crate::terminal::MARGIN);
        for template in HEADER.iter().chain(&LINE).chain(&TOTAL) {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
            assert!(
                template.ends_with(&margin),
                "{template:?} leaves room for ^C"
            );
        }
    }

    #[test]
    fn only_a_transferring_source_has_a_rate() {
        assert_eq!(source_rate(&source("a:1", SourceState::Backoff, 1, 0)), "-");
        assert_eq!(source_rate(&source("a:1", SourceState::Blamed, 0, 0)), "-");
        assert_eq!(source_rate(&source("a:1", SourceState::Idle, 7, 0)), "-");
        assert_eq!(
            source_rate(&source("a:1", SourceState::Active, 2_000, 0)),
            "2.00 kB/s"
        );
    }

    #[test]
    fn source_lines_show_shares_and_cut_long_addresses() {
        let long = "a-very-long-host-name.example.org:5001";
        let info = job(
            JobState::Running,
            vec![
                source("10.0.0.5:5001", SourceState::Active, 250_000, 3),
                source(long, SourceState::Backoff, 0, 1),
            ],
        );
        let lines = source_lines(&info);
        assert!(
            lines[0].contains("75%") && lines[0].contains("250.00 kB/s"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("25%") && lines[1].contains(" - "),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("a-very-long-host-name.examp…"),
            "{lines:?}"
        );
        assert!(!lines[1].contains(long), "{lines:?}");
    }

    #[test]
    fn the_total_says_how_long_is_left_or_how_long_it_took() {
        let running = total_text(&job(JobState::Running, vec![]));
        assert!(running.contains("1.00 MB / 4.00 MB  25.0%"), "{running}");
        assert!(running.contains("500.00 kB/s  ETA 6s"), "{running}");
        let waiting = total_text(&job(JobState::Waiting, vec![]));
        assert!(waiting.ends_with("-  ETA -"), "{waiting}");
        let done = total_text(&job(JobState::Completed, vec![]));
        assert!(done.contains("done in 2s"), "{done}");
    }
}
