//! The opt-in metrics listener (`metrics_listen`): `GET /metrics` over HTTP/1.1, served by
//! hyper. Nothing else is offered (404 for any other path, 405 for another method), and the
//! listener is bounded so that a flood costs the daemon nothing it needs: at most
//! [`METRICS_MAX_CONNECTIONS`] connections at once (the rest wait in the kernel's backlog),
//! headers within [`METRICS_HEADER_TIMEOUT`], one request per connection, and each connection
//! closed after [`METRICS_CONNECTION_DEADLINE`] whatever it is doing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arsnet_proto::limits::{
    METRICS_CONNECTION_DEADLINE, METRICS_HEADER_TIMEOUT, METRICS_MAX_CONNECTIONS,
    METRICS_MAX_REQUEST_BYTES,
};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::state::Daemon;

/// Pause after a failed accept (out of descriptors and the like) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds the listener (at start-up, so that a bad address stops the daemon with a clear
/// error instead of leaving it without the metrics it was configured to serve).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics` on `listener` until the daemon shuts down.
pub(crate) fn spawn(daemon: Arc<Daemon>, listener: TcpListener) -> JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving metrics at http://{addr}/metrics");
    }
    tokio::spawn(accept_loop(daemon, listener))
}

async fn accept_loop(daemon: Arc<Daemon>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(METRICS_MAX_CONNECTIONS));
    loop {
        // The permit is taken before accepting: past the cap, connections wait unaccepted.
        let permit = tokio::select! {
            _ = daemon.shutdown.cancelled() => return,
            permit = permits.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            _ = daemon.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let daemon = daemon.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    serve_connection(daemon, stream, peer).await;
                });
            }
            Err(e) => {
                warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn serve_connection(daemon: Arc<Daemon>, stream: TcpStream, peer: SocketAddr) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = respond(&daemon, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(METRICS_HEADER_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(METRICS_MAX_REQUEST_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(METRICS_CONNECTION_DEADLINE, connection).await {
        Ok(Ok(())) => {}
        // Per-connection trouble stays at debug: a flood must not flood the log too.
        Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection ended"),
        Err(_) => debug!(%peer, "metrics connection closed at its deadline"),
    }
}

fn respond(daemon: &Daemon, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(super::render(daemon))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(super::CONTENT_TYPE));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
