//! One control connection: read a request, dispatch it, write the response; `watch` turns
//! the connection into a stream of pushed updates. A malformed or oversized frame, a wrong
//! version or a stall mid-frame gets an error response and the connection is closed.

use std::sync::Arc;

use arsnet_proto::control::{
    decode_client_message, ControlError, ControlFrameError, ErrorKind, JobId, Request, Response,
    Update,
};
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info};

use crate::caller::Caller;
use arsnet_client::frame::{read_frame_with_handles, write_frame, FrameError};
use arsnet_client::transport::{Handle, Stream};

use crate::state::Daemon;
use crate::{groups, jobs};

use arsnet_proto::limits::{CONTROL_SETTLE_TIMEOUT, CONTROL_WATCH_WRITE_STALL, MAX_CONTROL_FRAME};

pub(super) async fn handle(daemon: Arc<Daemon>, mut stream: Stream, caller: Caller) {
    loop {
        let (payload, fds) = match read_frame_with_handles(&mut stream).await {
            Ok(frame) => frame,
            Err(FrameError::Closed) => return,
            Err(e) => {
                info!(error = %e, "closing control connection");
                let kind = ErrorKind::BadRequest;
                let _ = write_frame(
                    &mut stream,
                    &Response::Error(ControlError::new(kind, e.to_string())),
                )
                .await;
                return;
            }
        };
        let request = match decode_client_message(&payload) {
            Ok(request) => request,
            Err(e) => {
                info!(error = %e, "malformed control request; closing connection");
                let kind = match e {
                    ControlFrameError::Version { .. } => ErrorKind::Version,
                    _ => ErrorKind::BadRequest,
                };
                let _ = write_frame(
                    &mut stream,
                    &Response::Error(ControlError::new(kind, e.to_string())),
                )
                .await;
                return;
            }
        };
        debug!(?request, "control request");
        if let Request::Watch { id } = request {
            watch(&daemon, &mut stream, id).await;
            return;
        }
        let response = dispatch(&daemon, request, &caller, fds)
            .await
            .unwrap_or_else(Response::Error);
        if write_frame(&mut stream, &response).await.is_err() {
            return;
        }
    }
}

/// Answers one request. `fds` are the descriptors the client sent with it: a `serve` or
/// `fetch` of a caller other than the daemon's user must carry the file or directory it
/// names (see [`Caller`]); any other descriptors are closed unused.
async fn dispatch(
    daemon: &Arc<Daemon>,
    request: Request,
    caller: &Caller,
    fds: Vec<Handle>,
) -> Result<Response, ControlError> {
    Ok(match request {
        Request::Ping => Response::Pong {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
        },
        Request::Serve(spec) => {
            let file = caller.check_file(&spec.file, &fds)?;
            Response::GroupStarted {
                id: groups::serve(daemon, spec, file).await?,
            }
        }
        Request::Servers => Response::Servers(groups::infos(daemon)),
        Request::StopServer { ports } => {
            groups::stop_ports(daemon, &ports)?;
            Response::Done
        }
        Request::StartServer { ports } => {
            groups::start_ports(daemon, &ports).await?;
            Response::Done
        }
        Request::RemoveGroup { id } => {
            groups::remove(daemon, id).await?;
            Response::Done
        }
        Request::Fetch(spec) => {
            let grant = caller.check_dir(&spec.dir, &fds)?;
            let spec = jobs::resolve_checksum(daemon, spec).await?;
            let (id, attached) = jobs::fetch(daemon, spec, grant)?;
            Response::Queued { id, attached }
        }
        Request::List => Response::List {
            jobs: jobs::infos(daemon),
            groups: groups::infos(daemon),
            notes: daemon.restore_notes(),
        },
        Request::Status { id } => Response::Job(jobs::status(daemon, id)?),
        Request::Pause { id } => settled(daemon, id, jobs::pause).await?,
        Request::Resume { id } => {
            jobs::resume(daemon, id)?;
            Response::Job(jobs::status(daemon, id)?)
        }
        Request::Cancel { id, keep } => {
            settled(daemon, id, |d, id| jobs::cancel(d, id, keep)).await?
        }
        Request::Metrics => metrics(daemon)?,
        Request::Shutdown => {
            info!("shutdown requested over the control socket");
            daemon.shutdown.cancel();
            Response::Done
        }
        Request::Watch { .. } => {
            return Err(ControlError::new(
                ErrorKind::BadRequest,
                "watch is a stream",
            ))
        }
    })
}

/// `metrics`: the exposition, if it fits in one control frame. A daemon holding thousands of
/// jobs' sources may render more than that; the HTTP listener has no such bound, so the
/// error says to use it rather than cutting the text short.
fn metrics(daemon: &Daemon) -> Result<Response, ControlError> {
    let text = crate::metrics::render(daemon);
    // Room for the encoding around the text (variant index, varint length).
    let room = (MAX_CONTROL_FRAME as usize).saturating_sub(16);
    if text.len() > room {
        return Err(ControlError::new(
            ErrorKind::Conflict,
            format!(
                "the metrics are {} bytes, more than a control frame carries ({MAX_CONTROL_FRAME}); set metrics_listen and scrape GET /metrics instead",
                text.len()
            ),
        ));
    }
    Ok(Response::Metrics(text))
}

/// Runs a request that stops a job, then answers with the job once the state it reports is
/// durable: at once for a job that was not running, else when its engine has stopped at a
/// durable point (the files are then as the new state says: kept, or removed). A job that
/// takes longer than `CONTROL_SETTLE_TIMEOUT` is answered as it is then, still "running",
/// which the client reports as pending.
async fn settled(
    daemon: &Arc<Daemon>,
    id: JobId,
    request: impl FnOnce(&Arc<Daemon>, JobId) -> Result<(), ControlError>,
) -> Result<Response, ControlError> {
    // Subscribed before the request, so the engine's end cannot slip in between.
    let mut updates = daemon.updates.subscribe();
    request(daemon, id)?;
    let settle = async {
        while jobs::is_running(daemon, id) {
            match updates.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    };
    let _ = tokio::time::timeout(CONTROL_SETTLE_TIMEOUT, settle).await;
    Ok(Response::Job(jobs::status(daemon, id)?))
}

fn wanted(update: &Update, id: Option<JobId>) -> bool {
    match (update, id) {
        (_, None) => true,
        (Update::Job(info), Some(id)) => info.id == id,
        (Update::Groups(_), Some(_)) => false,
    }
}

/// Streams updates until the client goes away or the daemon stops. The first frames are the
/// current state, so a watcher never misses an end that happened before it subscribed.
/// The current state a watcher gets first, and again after it lagged (so that an end it
/// skipped is never missed).
fn snapshot(daemon: &Daemon, id: Option<JobId>) -> Result<Vec<Update>, ControlError> {
    Ok(match id {
        Some(id) => vec![Update::Job(jobs::status(daemon, id)?)],
        None => {
            let mut all: Vec<Update> = jobs::infos(daemon).into_iter().map(Update::Job).collect();
            all.push(Update::Groups(groups::infos(daemon)));
            all
        }
    })
}

async fn watch(daemon: &Arc<Daemon>, stream: &mut Stream, id: Option<JobId>) {
    let mut updates = daemon.updates.subscribe();
    let initial = match snapshot(daemon, id) {
        Ok(initial) => initial,
        Err(e) => {
            let _ = write_frame(stream, &Response::Error(e)).await;
            return;
        }
    };
    let (mut reader, mut writer) = stream.split();
    let mut pending: std::collections::VecDeque<Response> =
        initial.into_iter().map(Response::Update).collect();
    let mut probe = [0u8; 1];
    loop {
        while let Some(response) = pending.pop_front() {
            // A watcher that stops reading altogether (a suspended terminal) gives its
            // connection slot back after a while instead of holding it forever.
            let written = tokio::time::timeout(
                CONTROL_WATCH_WRITE_STALL,
                write_frame(&mut writer, &response),
            )
            .await;
            if !matches!(written, Ok(Ok(()))) {
                return;
            }
        }
        tokio::select! {
            _ = daemon.shutdown.cancelled() => return,
            // Any byte or EOF from a watcher ends the watch.
            _ = reader.read(&mut probe) => return,
            update = updates.recv() => match update {
                Ok(update) if wanted(&update, id) => pending.push_back(Response::Update(update)),
                Ok(_) => {}
                Err(RecvError::Lagged(skipped)) => {
                    pending.push_back(Response::Lagged { skipped });
                    // What was skipped may include a job's end: resend the current state.
                    if let Ok(now) = snapshot(daemon, id) {
                        pending.extend(now.into_iter().map(Response::Update));
                    }
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}
