//! Following a job or the whole daemon through pushed updates: `fetch --wait` and `watch`.
//! A followed job's final state is the command's exit code. Progress is reported on a fixed
//! schedule (every `-i` seconds from the first report, whether anything changed or not), and
//! a follow always ends with a line that says what happened and what to do next: the job's
//! end, a timeout, Ctrl-C, or a daemon that went away.

use std::path::Path;
use std::time::Duration;

use arsnet_client::{Client, ClientError};
use arsnet_proto::control::{JobId, JobInfo, JobState, Response, Update};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{Instant, MissedTickBehavior};

use super::call::unexpected;
use crate::exit::{Exit, Failure};
use crate::progress::{Bars, Display};
use crate::{json, out, render};

/// The exit code a finished job maps to.
pub fn job_exit(state: &JobState) -> Option<Exit> {
    match state {
        JobState::Completed => Some(Exit::Ok),
        JobState::Failed(_) => Some(Exit::JobFailed),
        JobState::Cancelled => Some(Exit::JobCancelled),
        JobState::Paused => Some(Exit::JobPaused),
        _ => None,
    }
}

/// How to follow a job.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    pub json: bool,
    /// Report every this long.
    pub every: Duration,
    /// Stop waiting after this long (the job continues).
    pub timeout: Option<Duration>,
}

/// `--quiet` asks for no output and `--json` for machine-readable output: not both. (A
/// usage error here rather than in clap, where `--json` is global and may come first.)
pub fn check_quiet(json: bool, quiet: bool) -> Result<(), Failure> {
    if json && quiet {
        return Err(Failure::new(
            Exit::Usage,
            "--quiet and --json cannot be used together",
        ));
    }
    Ok(())
}

/// One JSON event line of a stream.
pub fn event(kind: &str, body: serde_json::Value) {
    let mut fields = serde_json::Map::new();
    fields.insert("event".into(), kind.into());
    if let serde_json::Value::Object(body) = body {
        fields.extend(body);
    }
    json::print(serde_json::Value::Object(fields));
}

fn report_job(json: bool, info: &JobInfo) {
    if json {
        event(
            "job",
            serde_json::json!({ "job": json::value(&json::Job::from(info)) }),
        );
    } else {
        plain(&render::job_detail(info));
    }
}

/// A plain report (not a terminal): each line starts with the time it was printed, in UTC,
/// so that a log or cron's mail says when each figure was seen.
fn plain(text: &str) {
    out::text(&crate::stamp::lines(&crate::stamp::now(), text));
}

/// Shows one report of a job in the chosen form.
fn show_job(display: Display, bars: &mut Option<Bars>, info: &JobInfo) {
    match (display, bars) {
        (_, Some(bars)) => bars.job(info),
        (Display::Quiet, None) => {}
        (display, None) => report_job(display == Display::Json, info),
    }
}

/// `fetch --wait` and `watch ID`: reports the job until it ends; `quiet` prints nothing but
/// errors; `pinned_sha256` says that the finished file was also checked against the user's
/// SHA-256.
pub async fn wait_for_job(
    socket: &Path,
    id: JobId,
    follow: Follow,
    quiet: bool,
    pinned_sha256: bool,
) -> Result<Exit, Failure> {
    let display = Display::choose(follow.json, quiet);
    let mut bars = display.bars();
    let mut last: Option<JobInfo> = None;
    let result = follow_job(
        socket,
        id,
        |info, end| {
            show_job(display, &mut bars, info);
            if end {
                last = Some(info.clone());
            }
        },
        follow,
    )
    .await;
    // The job's end leaves its final frame on screen; a wait that gave up (timeout, Ctrl-C,
    // a lost daemon) clears the bars first, so that its hint is not drawn into them.
    if let Some(bars) = bars {
        match last {
            Some(_) => bars.finish(),
            None => bars.clear(),
        }
    }
    // The job's own end (completed, failed, cancelled, paused) closes the stream with an
    // "end" event whatever its exit code; a wait that ended otherwise has no such line.
    if let Some(info) = &last {
        let exit = match &result {
            Ok(exit) => *exit,
            Err(failure) => failure.exit,
        };
        if follow.json {
            let job = json::value(&json::Job::from(info));
            event("end", serde_json::json!({ "job": job, "exit": exit as u8 }));
        } else if info.state == JobState::Completed && !quiet {
            out::line(&render::completed_line(info, pinned_sha256));
        }
    }
    result
}

/// Subscribes to a job and calls `report` with its latest state every `follow.every` and
/// once more, with `true`, at its end. Returns the exit code of the job's final state; a
/// timeout, Ctrl-C or a lost daemon is a [`Failure`] whose message says the job continues.
pub async fn follow_job(
    socket: &Path,
    id: JobId,
    mut report: impl FnMut(&JobInfo, bool),
    follow: Follow,
) -> Result<Exit, Failure> {
    let mut updates = Client::connect(socket).await?.watch(Some(id)).await?;
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|e| Failure::new(Exit::Refused, format!("cannot catch Ctrl-C: {e}")))?;
    let mut ticks = tokio::time::interval(follow.every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A timeout too long for the clock is no timeout at all.
    let deadline = follow.timeout.and_then(|t| Instant::now().checked_add(t));
    let mut latest: Option<JobInfo> = None;
    loop {
        tokio::select! {
            response = updates.next() => {
                let info = match response {
                    Ok(Response::Update(Update::Job(info))) => info,
                    Ok(Response::Lagged { .. } | Response::Update(_)) => continue,
                    Ok(other) => return unexpected(other),
                    Err(e) => return Err(lost(id, e)),
                };
                if let Some(exit) = job_exit(&info.state) {
                    report(&info, true);
                    return ended(id, &info, exit);
                }
                if latest.is_none() {
                    // The first report at once; the schedule counts from it.
                    report(&info, false);
                    ticks.reset();
                }
                latest = Some(info);
            }
            _ = ticks.tick() => {
                if let Some(info) = &latest {
                    report(info, false);
                }
            }
            _ = expired(deadline) => {
                return Err(gave_up(id, follow.timeout.unwrap_or_default()));
            }
            _ = interrupt.recv() => return Err(interrupted(id)),
        }
    }
}

/// Resolves when `deadline` has passed; never without one.
async fn expired(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn ended(id: JobId, info: &JobInfo, exit: Exit) -> Result<Exit, Failure> {
    match &info.state {
        JobState::Failed(reason) => Err(Failure::new(exit, format!("job {id} failed: {reason}"))),
        JobState::Cancelled => Err(Failure::new(exit, format!("job {id} was cancelled"))),
        JobState::Paused => Err(Failure::new(
            exit,
            format!("job {id} was paused; `arsnetctl resume {id}` continues it"),
        )),
        _ => Ok(exit),
    }
}

fn continues(id: JobId) -> String {
    format!(
        "job {id} continues in the daemon: `arsnetctl watch {id}` follows it again, `arsnetctl cancel {id}` stops it"
    )
}

fn gave_up(id: JobId, after: Duration) -> Failure {
    Failure::new(
        Exit::Timeout,
        format!(
            "stopped waiting after {}; {}",
            render::duration(after),
            continues(id)
        ),
    )
}

fn interrupted(id: JobId) -> Failure {
    Failure::new(
        Exit::Interrupted,
        format!("stopped waiting (interrupted); {}", continues(id)),
    )
}

/// The daemon went away (or broke the connection) while we followed a job: the job is saved
/// with the daemon's state and continues when it runs again.
fn lost(id: JobId, e: ClientError) -> Failure {
    let mut failure = Failure::from(e);
    if failure.exit == Exit::Unreachable {
        failure.message = format!(
            "{} (is arsnetd stopping?); job {id} is saved and continues when arsnetd runs again: `arsnetctl status {id}` then tells how it stands, `arsnetctl resume {id}` resumes it if it is paused, `arsnetctl cancel {id}` stops it",
            failure.message
        );
    }
    failure
}

/// `watch` without an id: every job's and group's updates until Ctrl-C, the timeout, or the
/// daemon goes away.
pub async fn watch_all(socket: &Path, follow: Follow, quiet: bool) -> Result<Exit, Failure> {
    let display = Display::choose(follow.json, quiet);
    // Every way out of the loop is a return that drops the bars, which clears them before
    // the error's message is printed.
    let mut bars = display.bars();
    let mut updates = Client::connect(socket).await?.watch(None).await?;
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|e| Failure::new(Exit::Refused, format!("cannot catch Ctrl-C: {e}")))?;
    // A timeout too long for the clock is no timeout at all.
    let deadline = follow.timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let response = tokio::select! {
            response = updates.next() => response.map_err(Failure::from)?,
            _ = expired(deadline) => {
                let after = render::duration(follow.timeout.unwrap_or_default());
                return Err(Failure::new(Exit::Timeout, format!("stopped watching after {after}; every job continues in the daemon")));
            }
            _ = interrupt.recv() => {
                return Err(Failure::new(Exit::Interrupted, "stopped watching (interrupted); every job continues in the daemon"));
            }
        };
        show_update(display, &mut bars, response)?;
    }
}

/// Shows one update of `watch` (without an id) in the chosen form.
fn show_update(
    display: Display,
    bars: &mut Option<Bars>,
    response: Response,
) -> Result<(), Failure> {
    match (response, bars) {
        (Response::Update(Update::Job(info)), bars) => show_job(display, bars, &info),
        (Response::Update(Update::Groups(groups)), Some(bars)) => bars.groups(&groups),
        (Response::Lagged { skipped }, Some(bars)) => bars.note(&lagged(skipped)),
        (Response::Update(Update::Groups(groups)), None) => match display {
            Display::Json => event(
                "groups",
                serde_json::json!({ "groups": json::groups(&groups) }),
            ),
            Display::Quiet => {}
            _ => plain(&render::groups_table(&groups)),
        },
        (Response::Lagged { skipped }, None) => match display {
            Display::Json => event("lagged", serde_json::json!({ "skipped": skipped })),
            Display::Quiet => {}
            _ => plain(&lagged(skipped)),
        },
        (other, _) => return unexpected(other),
    }
    Ok(())
}

fn lagged(skipped: u64) -> String {
    format!("(skipped {skipped} updates: this terminal reads too slowly)")
}
