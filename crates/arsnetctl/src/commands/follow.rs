//! Following a job or the whole daemon through pushed updates: `fetch --wait` and `watch`.
//! A followed job's final state is the command's exit code. Progress is reported on a fixed
//! schedule (every `-i` seconds from the first report, whether anything changed or not), and
//! a follow always ends with a line that says what happened and what to do next: the job's
//! end, a timeout, Ctrl-C, or a daemon that went away.

use std::path::Path;
use std::time::Duration;

use arsnet_client::{Client, ClientError, Updates};
use arsnet_proto::control::{JobId, JobInfo, JobState, Request, Response, Update};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::call::unexpected;
use crate::exit::{Exit, Failure};
use crate::progress::{Bars, Display};
use crate::{again, json, out, render};

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

/// Ctrl-C, caught from before the first request of a command that may block (the `fetch`
/// itself, subscribing to updates): a Ctrl-C at any moment of a follow ends it with the hint
/// of [`interrupted`], never with the default "killed by SIGINT" and no word of the job.
pub struct Interrupt(Signal);

impl Interrupt {
    pub fn catch() -> Result<Interrupt, Failure> {
        signal(SignalKind::interrupt())
            .map(Interrupt)
            .map_err(|e| Failure::new(Exit::Refused, format!("cannot catch Ctrl-C: {e}")))
    }

    /// Resolves at the next Ctrl-C (one that came since [`Interrupt::catch`] included).
    pub async fn recv(&mut self) {
        if self.0.recv().await.is_none() {
            // The signal driver is gone (the runtime is shutting down): no more Ctrl-C.
            std::future::pending::<()>().await;
        }
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
    interrupt: &mut Interrupt,
) -> Result<Exit, Failure> {
    let display = Display::choose(follow.json, quiet);
    let mut bars = display.bars();
    let mut last: Option<JobInfo> = None;
    let result = follow_job_catching(
        socket,
        id,
        |info, end| {
            show_job(display, &mut bars, info);
            if end {
                last = Some(info.clone());
            }
        },
        follow,
        interrupt,
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

/// Subscribes to pushed updates (of job `id`, or of everything), or says why it cannot.
async fn subscribe(socket: &Path, id: Option<JobId>) -> Result<Updates, ClientError> {
    Client::connect(socket).await?.watch(id).await
}

/// A follow's connection to the daemon's pushed updates. A connection that is lost is
/// subscribed again once (a daemon restarted behind its socket, as systemd's socket
/// activation does, answers it); if that fails too, the first loss is the follow's error.
struct Subscription {
    updates: Updates,
    reconnected: bool,
}

/// What cut a wait for the daemon short.
enum Cut {
    /// Ctrl-C.
    Interrupted,
    /// The follow's `--timeout` ran out (it bounds subscribing and reconnecting too).
    Expired,
}

impl Subscription {
    async fn open(
        socket: &Path,
        id: Option<JobId>,
        interrupt: &mut Interrupt,
        deadline: Option<Instant>,
    ) -> Result<Result<Subscription, Cut>, Failure> {
        tokio::select! {
            subscribed = subscribe(socket, id) => Ok(Ok(Subscription {
                updates: subscribed?,
                reconnected: false,
            })),
            _ = interrupt.recv() => Ok(Err(Cut::Interrupted)),
            _ = expired(deadline) => Ok(Err(Cut::Expired)),
        }
    }

    /// After the connection was lost with `lost`: subscribes again, or gives back why not —
    /// `lost` when the daemon cannot be reached, the restarted daemon's own refusal (say,
    /// no such job any more) when it answered one.
    async fn reconnect(
        &mut self,
        socket: &Path,
        id: Option<JobId>,
        lost: ClientError,
        interrupt: &mut Interrupt,
        deadline: Option<Instant>,
    ) -> Result<Result<(), Cut>, ClientError> {
        if self.reconnected {
            return Err(lost);
        }
        self.reconnected = true;
        tokio::select! {
            again = subscribe(socket, id) => match again {
                Ok(updates) => {
                    self.updates = updates;
                    Ok(Ok(()))
                }
                Err(refused @ ClientError::Daemon(_)) => Err(refused),
                Err(_) => Err(lost),
            },
            _ = interrupt.recv() => Ok(Err(Cut::Interrupted)),
            _ = expired(deadline) => Ok(Err(Cut::Expired)),
        }
    }
}

/// Asks the daemon for a job's status when the figures it pushed are older than the
/// watcher's own interval: the daemon pushes a job's updates at the interval the job was
/// fetched with, so `watch -i 1` on a job fetched with `-i 30` would otherwise repeat stale
/// figures. One connection, kept open between polls and opened again after a failure; a
/// poll that fails answers `None` (the report then shows what was last pushed).
struct Poller {
    asks: mpsc::Sender<()>,
    answers: mpsc::Receiver<Option<JobInfo>>,
    task: tokio::task::JoinHandle<()>,
    /// A poll was asked for and not answered yet.
    asked: bool,
}

impl Poller {
    fn start(socket: &Path, id: JobId) -> Poller {
        let (asks, mut asked) = mpsc::channel::<()>(1);
        let (answer, answers) = mpsc::channel(1);
        let socket = socket.to_path_buf();
        let task = tokio::spawn(async move {
            let mut client = None;
            while asked.recv().await.is_some() {
                let info = poll_status(&socket, id, &mut client).await;
                if answer.send(info).await.is_err() {
                    return;
                }
            }
        });
        Poller {
            asks,
            answers,
            task,
            asked: false,
        }
    }

    /// Asks for a fresh status; false if one is under way already.
    fn ask(&mut self) -> bool {
        if self.asked {
            return false;
        }
        self.asked = self.asks.try_send(()).is_ok();
        self.asked
    }

    /// The answer to the poll asked for (call only while [`Poller::asked`]).
    async fn answer(&mut self) -> Option<JobInfo> {
        let answer = self.answers.recv().await.flatten();
        self.asked = false;
        answer
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn poll_status(socket: &Path, id: JobId, client: &mut Option<Client>) -> Option<JobInfo> {
    if client.is_none() {
        *client = Client::connect(socket).await.ok();
    }
    match client.as_mut()?.call(Request::Status { id }).await {
        Ok(Response::Job(info)) => Some(info),
        _ => {
            *client = None;
            None
        }
    }
}

/// What a follow knows of its job: the latest figures, pushed or polled, and when they came.
struct Latest {
    info: Option<JobInfo>,
    at: Instant,
}

impl Latest {
    fn empty() -> Latest {
        Latest {
            info: None,
            at: Instant::now(),
        }
    }

    /// Keeps `info` unless what is held is newer (a poll answered after a later push).
    fn offer(&mut self, info: JobInfo) {
        let newer = self
            .info
            .as_ref()
            .is_none_or(|held| info.figures.elapsed_ms >= held.figures.elapsed_ms);
        if newer {
            self.info = Some(info);
            self.at = Instant::now();
        }
    }

    /// Young enough to be reported as it is at a report every `every`.
    fn fresh(&self, every: Duration) -> bool {
        self.at.elapsed() < every / 2
    }
}

/// What one turn of a follow's loop came to.
enum Turn {
    /// New figures of the job (pushed, or polled after a tick: then `report`).
    Seen { info: Box<JobInfo>, report: bool },
    /// A report is due: the held figures are fresh, or a poll failed.
    Report,
    /// Nothing to show.
    Nothing,
}

/// Subscribes to a job and calls `report` with its latest state every `follow.every` and
/// once more, with `true`, at its end. Returns the exit code of the job's final state; a
/// timeout, Ctrl-C or a lost daemon is a [`Failure`] whose message says the job continues.
pub async fn follow_job(
    socket: &Path,
    id: JobId,
    report: impl FnMut(&JobInfo, bool),
    follow: Follow,
) -> Result<Exit, Failure> {
    let mut interrupt = Interrupt::catch()?;
    follow_job_catching(socket, id, report, follow, &mut interrupt).await
}

/// [`follow_job`], with Ctrl-C caught already (by a command that asked the daemon something
/// first).
pub async fn follow_job_catching(
    socket: &Path,
    id: JobId,
    mut report: impl FnMut(&JobInfo, bool),
    follow: Follow,
    interrupt: &mut Interrupt,
) -> Result<Exit, Failure> {
    // A timeout too long for the clock is no timeout at all.
    let deadline = follow.timeout.and_then(|t| Instant::now().checked_add(t));
    let timed_out = || gave_up(id, follow.timeout.unwrap_or_default());
    let mut sub = match Subscription::open(socket, Some(id), interrupt, deadline).await? {
        Ok(sub) => sub,
        Err(Cut::Interrupted) => return Err(interrupted(id)),
        Err(Cut::Expired) => return Err(timed_out()),
    };
    let mut poller = Poller::start(socket, id);
    let mut ticks = tokio::time::interval(follow.every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut latest = Latest::empty();
    loop {
        let turn = tokio::select! {
            response = sub.updates.next() => match response {
                Ok(Response::Update(Update::Job(info))) => Turn::Seen { info: Box::new(info), report: false },
                Ok(Response::Lagged { .. } | Response::Update(_)) => Turn::Nothing,
                Ok(other) => return unexpected(other),
                Err(e) => match sub.reconnect(socket, Some(id), e, interrupt, deadline).await {
                    Ok(Ok(())) => {
                        // A restarted daemon's run counts its time from zero again: what
                        // was held is of the run before, never newer than what comes now.
                        latest.info = None;
                        Turn::Nothing
                    }
                    Ok(Err(Cut::Interrupted)) => return Err(interrupted(id)),
                    Ok(Err(Cut::Expired)) => return Err(timed_out()),
                    Err(e) => return Err(lost(id, e)),
                },
            },
            polled = poller.answer(), if poller.asked => match polled {
                Some(info) => Turn::Seen { info: Box::new(info), report: true },
                None => Turn::Report,
            },
            _ = ticks.tick() => match latest.info {
                Some(_) if latest.fresh(follow.every) => Turn::Report,
                // Stale: the report waits for the poll's answer.
                Some(_) => {
                    poller.ask();
                    Turn::Nothing
                }
                None => Turn::Nothing,
            },
            _ = expired(deadline) => return Err(timed_out()),
            _ = interrupt.recv() => return Err(interrupted(id)),
        };
        let report_now = match turn {
            Turn::Seen {
                info,
                report: polled,
            } => {
                if let Some(exit) = job_exit(&info.state) {
                    report(&info, true);
                    return ended(id, &info, exit);
                }
                let first = latest.info.is_none();
                latest.offer(*info);
                if first {
                    // The first report at once; the schedule counts from it.
                    ticks.reset();
                }
                first || polled
            }
            Turn::Report => true,
            Turn::Nothing => false,
        };
        if let (true, Some(info)) = (report_now, &latest.info) {
            report(info, false);
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
            format!(
                "job {id} was paused; `{} resume {id}` continues it",
                again::ctl()
            ),
        )),
        _ => Ok(exit),
    }
}

fn continues(id: JobId) -> String {
    let ctl = again::ctl();
    format!(
        "job {id} continues in the daemon: `{ctl} watch {id}` follows it again, `{ctl} cancel {id}` stops it"
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
    let ctl = again::ctl();
    lost_with(e, &format!("job {id} is saved and continues when arsnetd runs again: `{ctl} status {id}` then tells how it stands, `{ctl} resume {id}` resumes it if it is paused, `{ctl} cancel {id}` stops it"))
}

/// A follow's error `e`; when the daemon went away, with `after`: what became of the jobs.
fn lost_with(e: ClientError, after: &str) -> Failure {
    let mut failure = Failure::from(e);
    if failure.exit == Exit::Unreachable {
        failure.message = format!("{} (is arsnetd stopping?); {after}", failure.message);
    }
    failure
}

/// `watch` without an id: every job's and group's updates until Ctrl-C, the timeout, or the
/// daemon goes away.
pub async fn watch_all(
    socket: &Path,
    follow: Follow,
    quiet: bool,
    interrupt: &mut Interrupt,
) -> Result<Exit, Failure> {
    let display = Display::choose(follow.json, quiet);
    // Every way out of the loop is a return that drops the bars, which clears them before
    // the error's message is printed.
    let mut bars = display.bars();
    let stopped = || {
        Failure::new(
            Exit::Interrupted,
            "stopped watching (interrupted); every job continues in the daemon",
        )
    };
    let timed_out = || {
        let after = render::duration(follow.timeout.unwrap_or_default());
        Failure::new(
            Exit::Timeout,
            format!("stopped watching after {after}; every job continues in the daemon"),
        )
    };
    // A timeout too long for the clock is no timeout at all.
    let deadline = follow.timeout.and_then(|t| Instant::now().checked_add(t));
    let mut sub = match Subscription::open(socket, None, interrupt, deadline).await? {
        Ok(sub) => sub,
        Err(Cut::Interrupted) => return Err(stopped()),
        Err(Cut::Expired) => return Err(timed_out()),
    };
    loop {
        let response = tokio::select! {
            response = sub.updates.next() => match response {
                Ok(response) => response,
                Err(e) => match sub.reconnect(socket, None, e, interrupt, deadline).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(Cut::Interrupted)) => return Err(stopped()),
                    Ok(Err(Cut::Expired)) => return Err(timed_out()),
                    Err(e) => return Err(lost_all(e)),
                },
            },
            _ = expired(deadline) => return Err(timed_out()),
            _ = interrupt.recv() => return Err(stopped()),
        };
        show_update(display, &mut bars, response)?;
    }
}

/// [`lost`] for `watch` without an id.
fn lost_all(e: ClientError) -> Failure {
    let ctl = again::ctl();
    lost_with(e, &format!("every job is saved and continues when arsnetd runs again: `{ctl} list` then tells how they stand, `{ctl} watch` follows them again"))
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
