//! The daemon's metrics, in the Prometheus text format (`text.rs`): rendered here from one
//! snapshot of the registry, and handed out by `arsnetctl metrics` (the control socket) and,
//! when `metrics_listen` is set, by `GET /metrics` (`http.rs`). One renderer, two doors.
//!
//! Job and source figures are gauges of the job table as it is now; the daemon-wide
//! counters come from [`Totals`], which only ever grow while the daemon runs, whatever is
//! pruned from the table.

pub(crate) mod http;
mod text;

use std::time::Duration;

use arsnet_proto::control::{GroupInfo, JobInfo, PortState, SourceState};

use crate::state::{Daemon, Totals};
pub(crate) use text::CONTENT_TYPE;
use text::{Exposition, Kind};

/// Every state a job can show, in the order `arsnet_jobs` and `arsnet_job_state` list them.
const JOB_STATES: [&str; 7] = [
    "queued",
    "running",
    "waiting",
    "paused",
    "completed",
    "failed",
    "cancelled",
];

const SOURCE_STATES: [SourceState; 5] = [
    SourceState::Idle,
    SourceState::Connecting,
    SourceState::Active,
    SourceState::Backoff,
    SourceState::Blamed,
];

/// What one scrape reports, read under one lock so that the figures agree with each other.
struct Snapshot {
    jobs: Vec<JobInfo>,
    groups: Vec<GroupInfo>,
    totals: Totals,
    uptime: Duration,
}

fn snapshot(daemon: &Daemon) -> Snapshot {
    let inner = daemon.lock();
    Snapshot {
        jobs: inner.jobs.iter().map(|(&id, j)| j.snapshot(id)).collect(),
        groups: inner.groups.values().map(|g| g.group.info()).collect(),
        totals: inner.totals.clone(),
        uptime: daemon.started.elapsed(),
    }
}

/// The whole exposition, as of now.
pub(crate) fn render(daemon: &Daemon) -> String {
    let snap = snapshot(daemon);
    let mut x = Exposition::default();
    daemon_families(&mut x, &snap);
    job_families(&mut x, &snap.jobs);
    source_families(&mut x, &snap.jobs);
    server_families(&mut x, &snap.groups);
    x.finish()
}

fn daemon_families(x: &mut Exposition, snap: &Snapshot) {
    x.family(
        "arsnet_uptime_seconds",
        Kind::Gauge,
        "Seconds since this arsnetd started.",
    );
    x.sample("arsnet_uptime_seconds", &[], snap.uptime.as_secs_f64());
    x.family(
        "arsnet_jobs",
        Kind::Gauge,
        "Download jobs in the job table, by state.",
    );
    for state in JOB_STATES {
        let n = snap
            .jobs
            .iter()
            .filter(|j| j.state.label() == state)
            .count();
        x.sample("arsnet_jobs", &[("state", state)], n as u64);
    }
    let t = &snap.totals;
    x.family(
        "arsnet_downloaded_bytes_total",
        Kind::Counter,
        "Segment bytes received from sources by every job since arsnetd started.",
    );
    x.sample("arsnet_downloaded_bytes_total", &[], t.downloaded_bytes);
    x.family(
        "arsnet_jobs_finished_total",
        Kind::Counter,
        "Jobs that ended (completed, failed or cancelled) since arsnetd started, pruned ones included.",
    );
    for (state, n) in [
        ("completed", t.jobs_completed),
        ("failed", t.jobs_failed),
        ("cancelled", t.jobs_cancelled),
    ] {
        x.sample("arsnet_jobs_finished_total", &[("state", state)], n);
    }
    let live: u64 = snap
        .groups
        .iter()
        .flat_map(|g| &g.ports)
        .map(|p| p.bytes_sent)
        .sum();
    x.family(
        "arsnet_served_bytes_total",
        Kind::Counter,
        "Bytes sent by every virtual server since arsnetd started, removed groups included.",
    );
    let served = live.saturating_add(t.served_bytes_of_removed_groups);
    x.sample("arsnet_served_bytes_total", &[], served);
}

/// A job's figures: name, help, and the value (none while it is unknown).
type JobGauge = (&'static str, &'static str, fn(&JobInfo) -> Option<u64>);

fn job_families(x: &mut Exposition, jobs: &[JobInfo]) {
    let gauges: [JobGauge; 6] = [
        (
            "arsnet_job_verified_bytes",
            "Bytes of the job's file verified and stored, adopted ones included.",
            |j| Some(j.figures.bytes_done),
        ),
        (
            "arsnet_job_size_bytes",
            "Size of the job's file, once a source told it.",
            |j| j.figures.size,
        ),
        (
            "arsnet_job_rate_bytes_per_second",
            "The job's download rate: now while it runs, the average of its last run after.",
            |j| Some(j.rate_bps),
        ),
        (
            "arsnet_job_segments_done",
            "Segments of the job's file verified and stored.",
            |j| Some(j.figures.segments_done),
        ),
        (
            "arsnet_job_segments",
            "Segments of the job's file, once known.",
            |j| j.figures.segments_total,
        ),
        (
            "arsnet_job_adopted_segments",
            "Segments taken over from a partial download's journal.",
            |j| Some(j.figures.adopted_segments),
        ),
    ];
    for (name, help, value) in gauges {
        x.family(name, Kind::Gauge, help);
        for job in jobs {
            if let Some(v) = value(job) {
                let (id, file) = (job.id.to_string(), job.name.clone().unwrap_or_default());
                x.sample(name, &[("job_id", &id), ("name", &file)], v);
            }
        }
    }
    x.family(
        "arsnet_job_state",
        Kind::Gauge,
        "1 for the state the job is in, 0 for the others.",
    );
    for job in jobs {
        let (id, file) = (job.id.to_string(), job.name.clone().unwrap_or_default());
        for state in JOB_STATES {
            let labels = [("job_id", id.as_str()), ("name", &file), ("state", state)];
            x.sample(
                "arsnet_job_state",
                &labels,
                u64::from(job.state.label() == state),
            );
        }
    }
}

type SourceGauge = (
    &'static str,
    &'static str,
    fn(&arsnet_proto::control::SourceInfo) -> u64,
);

fn source_families(x: &mut Exposition, jobs: &[JobInfo]) {
    let gauges: [SourceGauge; 4] = [
        ("arsnet_job_source_bytes", "Segment bytes this source sent the job in its current (or last) run.", |s| s.bytes),
        ("arsnet_job_source_rate_bytes_per_second", "This source's rate for the job now (0 unless transferring).", |s| s.rate_bps),
        ("arsnet_job_source_segments", "Segments this source delivered to the job in its current (or last) run.", |s| s.segments),
        ("arsnet_job_source_failures", "Failed connections or requests of this source for the job in its current (or last) run.", |s| s.failures),
    ];
    for (name, help, value) in gauges {
        x.family(name, Kind::Gauge, help);
        for job in jobs {
            let id = job.id.to_string();
            for s in &job.sources {
                x.sample(name, &[("job_id", &id), ("source", &s.address)], value(s));
            }
        }
    }
    x.family(
        "arsnet_job_source_blamed",
        Kind::Gauge,
        "1 when the job blamed this source (bad data or other content; never contacted again), with the reason.",
    );
    for job in jobs {
        let id = job.id.to_string();
        for s in &job.sources {
            let blamed = s.state == SourceState::Blamed;
            let reason = if blamed { s.detail.as_str() } else { "" };
            let labels = [
                ("job_id", id.as_str()),
                ("source", &s.address),
                ("reason", reason),
            ];
            x.sample("arsnet_job_source_blamed", &labels, u64::from(blamed));
        }
    }
    source_states(x, jobs);
}

/// `arsnet_job_source_state`: like `arsnet_job_state`, one sample per state for each source.
fn source_states(x: &mut Exposition, jobs: &[JobInfo]) {
    x.family(
        "arsnet_job_source_state",
        Kind::Gauge,
        "1 for the state this source is in for the job (idle, connecting, active, backoff, blamed), 0 for the others.",
    );
    for job in jobs {
        let id = job.id.to_string();
        for s in &job.sources {
            for state in SOURCE_STATES {
                let labels = [
                    ("job_id", id.as_str()),
                    ("source", &s.address),
                    ("state", state.label()),
                ];
                x.sample(
                    "arsnet_job_source_state",
                    &labels,
                    u64::from(s.state == state),
                );
            }
        }
    }
}

type PortFigure = (
    &'static str,
    Kind,
    &'static str,
    fn(&arsnet_proto::control::PortInfo) -> u64,
);

fn server_families(x: &mut Exposition, groups: &[GroupInfo]) {
    let figures: [PortFigure; 5] = [
        (
            "arsnet_server_listening",
            Kind::Gauge,
            "1 while this virtual server listens (0: stopped or failed).",
            |p| u64::from(p.state == PortState::Listening),
        ),
        (
            "arsnet_server_connections",
            Kind::Gauge,
            "Client connections this virtual server has open.",
            |p| p.connections,
        ),
        (
            "arsnet_server_sent_bytes_total",
            Kind::Counter,
            "Bytes this virtual server sent since its group started.",
            |p| p.bytes_sent,
        ),
        (
            "arsnet_server_segments_sent_total",
            Kind::Counter,
            "Segment requests this virtual server answered since its group started.",
            |p| p.segments_sent,
        ),
        (
            "arsnet_server_rate_bytes_per_second",
            Kind::Gauge,
            "This virtual server's sending rate now.",
            |p| p.rate_bps,
        ),
    ];
    for (name, kind, help, value) in figures {
        x.family(name, kind, help);
        for g in groups {
            let id = g.id.to_string();
            for p in &g.ports {
                let port = p.port.to_string();
                x.sample(name, &[("group", id.as_str()), ("port", &port)], value(p));
            }
        }
    }
}
