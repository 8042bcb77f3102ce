//! Human-readable output: tables for jobs and server groups, one progress block per update.
//! `--json` bypasses all of this.

use arsnet_proto::control::{GroupInfo, JobInfo, JobState, SourceInfo, SourceState};
pub use arsnet_proto::units::{human_bytes as bytes, human_rate as rate};
use arsnet_proto::units::{human_bytes, human_rate};

/// A source's rate as every display shows it (the bars, plain reports, `status`): only a
/// transferring source has one. A dead server in backoff, a blamed or given-up source shows
/// a dash, never "0 B/s" or a leftover trickle.
pub fn source_rate(source: &SourceInfo) -> String {
    match source.state {
        SourceState::Active if source.rate_bps > 0 => rate(source.rate_bps),
        _ => "-".into(),
    }
}

/// "  (why)" after a table row, or nothing.
fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!("  ({detail})")
    }
}

pub fn state_text(state: &JobState) -> String {
    match state {
        JobState::Failed(reason) => format!("failed: {reason}"),
        other => other.label().to_string(),
    }
}

fn percent(info: &JobInfo) -> f64 {
    match info.figures.size {
        Some(0) => 100.0,
        Some(size) => info.figures.bytes_done as f64 * 100.0 / size as f64,
        None => 0.0,
    }
}

pub fn job_line(info: &JobInfo) -> String {
    format!(
        "job {:<4} {:<10} {:>6.1}%  {:>12}  {:>12}  {}",
        info.id,
        info.state.label(),
        percent(info),
        human_bytes(info.figures.bytes_done),
        human_rate(info.rate_bps),
        info.name.as_deref().map_or_else(
            || info.dir.display().to_string(),
            |n| info.dir.join(n).display().to_string()
        ),
    )
}

pub fn jobs_table(jobs: &[JobInfo]) -> String {
    let mut out = String::from("JOBS\n");
    if jobs.is_empty() {
        out.push_str("  (none)\n");
    }
    for job in jobs {
        out.push_str("  ");
        out.push_str(&job_line(job));
        out.push('\n');
        if let JobState::Failed(reason) = &job.state {
            out.push_str(&format!("           reason: {reason}\n"));
        }
    }
    out
}

pub fn groups_table(groups: &[GroupInfo]) -> String {
    let mut out = String::from("SERVER GROUPS\n");
    if groups.is_empty() {
        out.push_str("  (none)\n");
    }
    for g in groups {
        out.push_str(&format!(
            "  group {} {} ({}, {} ports, bind {})\n    content: {}  (BLAKE3, as b3sum prints it)\n",
            g.id,
            g.file.display(),
            human_bytes(g.size),
            g.ports.len(),
            g.bind,
            arsnet_proto::manifest::to_hex(&g.blake3)
        ));
        out.push_str("    PORT   STATE      CONNS  SEGMENTS        SENT          RATE\n");
        for p in &g.ports {
            out.push_str(&format!(
                "    {:<6} {:<10} {:>5}  {:>8}  {:>10}  {:>12}{}\n",
                p.port,
                p.state.label(),
                p.connections,
                p.segments_sent,
                human_bytes(p.bytes_sent),
                human_rate(p.rate_bps),
                detail_suffix(&p.detail)
            ));
        }
    }
    out
}

/// Columns the longest source address takes (in characters).
pub fn address_width(sources: &[arsnet_proto::control::SourceInfo]) -> usize {
    sources
        .iter()
        .map(|s| s.address.chars().count())
        .max()
        .unwrap_or(0)
}

/// The full, per-server view of one job (`status`, and each `--wait` report).
pub fn job_detail(info: &JobInfo) -> String {
    let mut out = String::new();
    let total = info
        .figures
        .segments_total
        .map_or("?".to_string(), |t| t.to_string());
    out.push_str(&format!(
        "job {} {}  {:.1}%  {}/{} segments  {} of {}  {}  elapsed {:.1}s{}\n",
        info.id,
        state_text(&info.state),
        percent(info),
        info.figures.segments_done,
        total,
        human_bytes(info.figures.bytes_done),
        info.figures.size.map_or("?".to_string(), human_bytes),
        human_rate(info.rate_bps),
        info.figures.elapsed_ms as f64 / 1000.0,
        if info.figures.adopted_segments > 0 {
            format!(
                "  ({} segments adopted from journal)",
                info.figures.adopted_segments
            )
        } else {
            String::new()
        },
    ));
    if info.verification == arsnet_proto::control::Verification::None {
        out.push_str("  content: NOT verified (--no-verify)\n");
    }
    if let (Some(name), Some(content)) = (&info.name, &info.content) {
        // The same digest `b3sum DIR/NAME` prints once the file is complete.
        out.push_str(&format!(
            "  content: {}  {name}  (BLAKE3)\n",
            arsnet_proto::manifest::to_hex(content)
        ));
    }
    // As wide as the longest address (a mirror's URL is often longer than 22 columns), so
    // that every row's columns stay under their headings.
    let width = address_width(&info.sources).max(22);
    out.push_str(&format!(
        "  {:<width$} STATE        RATE          BYTES  SEGMENTS  FAILURES\n",
        "SERVER"
    ));
    for s in &info.sources {
        out.push_str(&format!(
            "  {:<width$} {:<10} {:>12} {:>12}  {:>8}  {:>8}{}\n",
            s.address,
            s.state.label(),
            source_rate(s),
            human_bytes(s.bytes),
            s.segments,
            s.failures,
            detail_suffix(&s.detail)
        ));
    }
    out
}

/// A duration as people write it: "90s", "5m", "2h 30m".
pub fn duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        1..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m{}", secs / 60, nonzero(secs % 60, "s")),
        _ => format!("{}h{}", secs / 3600, nonzero(secs % 3600 / 60, "m")),
    }
}

fn nonzero(n: u64, unit: &str) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" {n}{unit}")
    }
}

/// The last line of a successful `fetch --wait`: where the file is, and what it was
/// verified against.
pub fn completed_line(info: &JobInfo, pinned_sha256: bool) -> String {
    use arsnet_proto::control::Verification;
    let path = info.name.as_deref().map_or_else(
        || info.dir.display().to_string(),
        |n| info.dir.join(n).display().to_string(),
    );
    let size = info
        .figures
        .size
        .map(human_bytes)
        .unwrap_or_else(|| "?".into());
    let blake3 = info
        .content
        .as_ref()
        .map_or_else(|| "?".into(), arsnet_proto::manifest::to_hex);
    let sha = if pinned_sha256 {
        ", and against the pinned SHA-256"
    } else {
        ""
    };
    match info.verification {
        Verification::Segments => {
            format!("saved {path} ({size}), verified: every segment against BLAKE3 {blake3}{sha}")
        }
        // The content shown for a job of mirrors is its BLAKE3 pin; without one, the pin
        // (given, or read from --checksum-url) was a SHA-256.
        Verification::WholeFile if info.content.is_none() => {
            format!("saved {path} ({size}), verified: the whole file against the pinned SHA-256")
        }
        Verification::WholeFile => {
            format!("saved {path} ({size}), verified: the whole file against the pinned BLAKE3 {blake3}")
        }
        Verification::None => format!(
            "saved {path} ({size}), NOT verified (--no-verify: the mirrors' bytes, unchecked)"
        ),
    }
}
