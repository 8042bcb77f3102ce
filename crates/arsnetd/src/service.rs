//! What the service manager sees (systemd's notify protocol; a no-op without
//! `$NOTIFY_SOCKET`): READY=1 once the socket listens and state is restored (and again after a reload,
//! which RELOADING=1 begins), STATUS= lines
//! saying what the daemon is doing, WATCHDOG=1 while its state is reachable, STOPPING=1 when
//! the graceful stop begins.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arsnet_proto::control::JobState;
use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::state::Daemon;

/// How often STATUS= is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(5);

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "cannot notify the service manager");
    }
}

/// One line for `systemctl status`: "2 downloads running, 1 queued, 1 paused, 3 server groups".
pub(crate) fn status_line(daemon: &Daemon) -> String {
    let inner = daemon.lock();
    let (mut running, mut queued, mut paused) = (0, 0, 0);
    for job in inner.jobs.values() {
        match job.state() {
            JobState::Running | JobState::Waiting => running += 1,
            JobState::Queued => queued += 1,
            JobState::Paused => paused += 1,
            _ => {}
        }
    }
    let groups = inner.groups.len();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "{} running, {queued} queued, {paused} paused, {}",
        plural(running, "download", "downloads"),
        plural(groups, "server group", "server groups")
    )
}

/// The daemon is ready: its socket listens and its state is restored.
pub(crate) fn ready(daemon: &Daemon) {
    daemon.ready.store(true, Ordering::SeqCst);
    let status = status_line(daemon);
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// A reload ended: READY=1 again, but only once start-up said it first (a SIGHUP during
/// the restore must not announce a daemon that cannot answer yet).
pub(crate) fn reloaded(daemon: &Daemon) {
    if daemon.ready.load(Ordering::SeqCst) {
        ready(daemon);
    }
}

/// A reload (SIGHUP) begins; [`ready`] ends it. The timestamp is what systemd's
/// `Type=notify-reload` expects; older managers ignore both lines.
pub(crate) fn reloading(daemon: &Daemon) {
    if !daemon.ready.load(Ordering::SeqCst) {
        return;
    }
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading the configuration"),
    ];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
}

pub(crate) fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: bringing jobs to a durable point"),
    ]);
}

/// Refreshes STATUS= and, when the service manager asked for a watchdog (`WatchdogSec=`),
/// sends WATCHDOG=1 at half its interval. Each round takes the daemon's state lock first, so a
/// daemon whose state is stuck stops pinging and is restarted.
pub(crate) fn spawn_heartbeat(daemon: &Arc<Daemon>) -> JoinHandle<()> {
    let mut usec = 0u64;
    let watchdog =
        sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec) / 2);
    let every = watchdog
        .map_or(STATUS_EVERY, |w| w.min(STATUS_EVERY))
        .max(Duration::from_millis(10));
    let daemon = Arc::downgrade(daemon);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(daemon) = daemon.upgrade() else {
                return;
            };
            if daemon.is_shutting_down() {
                return;
            }
            let status = status_line(&daemon);
            if watchdog.is_some() {
                notify(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
            } else {
                notify(&[NotifyState::Status(&status)]);
            }
        }
    })
}
