//! The commands on one job: `status`, `watch`, `pause`, `resume`, `cancel`. A change answers
//! once the state it reports is durable (the daemon waits for a running job to stop at a
//! durable point) or says that it is still pending.

use std::path::Path;

use arsnet_proto::control::{JobId, JobInfo, JobState, Request, Response};

use super::call::{call, print_value, unexpected};
use super::follow::{self, Follow};
use crate::cli::WatchArgs;
use crate::exit::{Exit, Failure};
use crate::{json, render};

pub async fn status(socket: &Path, json: bool, id: JobId) -> Result<Exit, Failure> {
    match call(socket, Request::Status { id }).await? {
        Response::Job(info) => print_value(
            json,
            json::value(&json::Job::from(&info)),
            render::job_detail(&info).trim_end(),
        ),
        other => unexpected(other),
    }
}

pub async fn watch(socket: &Path, json: bool, args: WatchArgs) -> Result<Exit, Failure> {
    follow::check_quiet(json, args.quiet)?;
    // Before anything is asked of the daemon: a Ctrl-C while it answers still gets the hint.
    let mut interrupt = follow::Interrupt::catch()?;
    let follow = Follow {
        json,
        every: std::time::Duration::from_secs(args.interval),
        timeout: args.timeout,
    };
    match args.id {
        Some(id) => {
            follow::wait_for_job(socket, id, follow, args.quiet, false, &mut interrupt).await
        }
        None => follow::watch_all(socket, follow, args.quiet, &mut interrupt).await,
    }
}

/// What a request asked for, as the state it leads to.
fn wanted(request: &Request) -> &'static str {
    match request {
        Request::Pause { .. } => "paused",
        Request::Cancel { .. } => "cancelled",
        _ => "resumed",
    }
}

fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Pause { .. } => "pause",
        Request::Cancel { .. } => "cancel",
        _ => "resume",
    }
}

/// Whether the daemon's answer shows the request done (rather than still under way).
fn settled(request: &Request, info: &JobInfo) -> bool {
    match request {
        Request::Pause { .. } => info.state == JobState::Paused,
        Request::Cancel { .. } => info.state == JobState::Cancelled,
        // Resumed: queued again, or already on its way.
        _ => !matches!(info.state, JobState::Paused),
    }
}

/// `pause`, `resume`, `cancel`: one rule for all — asking for the state the job is already
/// in succeeds; the answer names the state the job is in now.
pub async fn change(
    socket: &Path,
    json: bool,
    request: Request,
    id: JobId,
) -> Result<Exit, Failure> {
    let verb = wanted(&request);
    let info = match call(socket, request.clone()).await? {
        Response::Job(info) => info,
        other => return unexpected(other),
    };
    let done = settled(&request, &info);
    if !done && info.state.is_terminal() {
        // It ended meanwhile (say, completed while the cancel was on its way): the state
        // asked for can no longer be reached.
        return Err(Failure::new(
            Exit::Refused,
            format!("job {id} is {} and cannot be {verb}", info.state.label()),
        ));
    }
    let text = if done && info.state.label() == verb {
        format!("job {id} {verb}")
    } else if done {
        format!("job {id} {verb} (now {})", info.state.label())
    } else {
        format!(
            "job {id}: {} requested, still pending (the job is {} until it reaches a durable point; `{} status {id}` shows when)",
            request_name(&request),
            info.state.label(),
            crate::again::ctl()
        )
    };
    let value = serde_json::json!({
        "ok": true,
        "pending": !done,
        "job": json::value(&json::Job::from(&info)),
    });
    print_value(json, value, &text)
}
