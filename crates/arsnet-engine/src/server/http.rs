//! `serve --http`: a group's ports also answer plain HTTP/1.1, so that curl, a browser, aria2
//! or another ArsNet client (as a mirror) can pull the served file. The first byte of a
//! connection tells the protocols apart (an ArsNet frame never starts with `G` or `H`).
//!
//! `GET` and `HEAD` of `/` or `/NAME`, with a single `Range` (`bytes=A-B`, `A-`, `-N`) and
//! `If-Range`; every answer carries `ETag: "BLAKE3"` (the file's real BLAKE3, the same as the
//! ArsNet header's root, so it changes exactly when the content does), `X-ArsNet-BLAKE3` and
//! `Accept-Ranges: bytes`. The body comes from the same pread path, paced by the same
//! `--rate`, counted in the same port statistics, and a connection is admitted, evicted and
//! bounded like any other (hyper parses; one request's headers must arrive within
//! `SERVER_HELLO_TIMEOUT`). A file changed in place since it was hashed is never served:
//! `503` with `Retry-After` before a body, a cut connection during one (the client sees a
//! short body, never other bytes under the old ETag).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arsnet_proto::limits::SERVER_HELLO_TIMEOUT;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{
    HeaderValue, ACCEPT_RANGES, ALLOW, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE,
    RANGE, RETRY_AFTER,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::admission::{Activity, Phase};
use super::served::{PortStats, Served, ServedFile};
use crate::rate::TokenBucket;

/// Bytes read and sent per step of a body.
const CHUNK: usize = 64 * 1024;

type Body = BoxBody<Bytes, std::io::Error>;

/// What an HTTP connection of a port needs; all shared with the port's other connections.
#[derive(Clone)]
pub(crate) struct HttpPort {
    pub served: Arc<ServedFile>,
    pub stats: Arc<PortStats>,
    pub bucket: Option<Arc<TokenBucket>>,
}

/// Whether a connection that starts with `first` speaks HTTP (`GET`, `HEAD`, or any other
/// method, which is answered 405).
pub(crate) fn is_http(first: u8) -> bool {
    first.is_ascii_uppercase()
}

/// Serves HTTP requests on `stream` until the client closes or goes idle too long.
pub(crate) async fn serve(
    stream: TcpStream,
    port: HttpPort,
    activity: Arc<Activity>,
) -> Result<(), hyper::Error> {
    activity.set(Phase::Idle);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = respond(&port, &activity, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(SERVER_HELLO_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .await
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn status_only(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    response
}

/// `%XX` decoded; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A byte position: digits only; too many digits for 64 bits is "beyond any file" (RFC 9110
/// clamps a last position past the end, and a suffix longer than the file means all of it).
fn position(text: &str) -> Result<u64, ()> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    Ok(text.parse().unwrap_or(u64::MAX))
}

/// The inclusive byte range a `Range` header asks of a file of `size` bytes: `Ok(None)` for
/// the whole file (no header, or one this server ignores, like several ranges), `Err(())`
/// when it cannot be satisfied.
fn requested_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (first, last) = spec.split_once('-').ok_or(())?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let suffix = position(last)?;
        if suffix == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(suffix), size - 1)
    } else {
        let first = position(first)?;
        let last = match last {
            "" => size.saturating_sub(1),
            l => position(l)?.min(size.saturating_sub(1)),
        };
        (first, last)
    };
    if range.0 >= size || range.0 > range.1 {
        return Err(());
    }
    Ok(Some(range))
}

fn respond(
    port: &HttpPort,
    activity: &Arc<Activity>,
    request: &Request<Incoming>,
) -> Response<Body> {
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        let mut response = status_only(StatusCode::METHOD_NOT_ALLOWED);
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let Some(served) = port.served.for_new_connection() else {
        let mut response = status_only(StatusCode::SERVICE_UNAVAILABLE);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("2"));
        return response;
    };
    let name = &served.manifest.name;
    let path = percent_decode(request.uri().path());
    if !matches!(path.as_deref(), Some("/"))
        && path.as_deref().and_then(|p| p.strip_prefix('/')) != Some(name.as_str())
    {
        return status_only(StatusCode::NOT_FOUND);
    }
    let size = served.manifest.size;
    let root: String = served
        .manifest
        .root
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let etag = format!("\"{root}\"");
    // If-Range names the version the client holds: anything else gets the whole file.
    let honour_range = request
        .headers()
        .get(IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let range_header = request.headers().get(RANGE).and_then(|v| v.to_str().ok());
    let range = if honour_range {
        requested_range(range_header, size)
    } else {
        Ok(None)
    };
    let mut response = match range {
        Err(()) => unsatisfiable(size),
        Ok(range) => {
            let body = Content {
                port,
                activity,
                served: &served,
                head,
            };
            body.response(range)
        }
    };
    let headers = response.headers_mut();
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&root) {
        headers.insert("x-arsnet-blake3", v);
    }
    response
}

/// `416` for a range beyond the end.
fn unsatisfiable(size: u64) -> Response<Body> {
    let mut response = status_only(StatusCode::RANGE_NOT_SATISFIABLE);
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        response.headers_mut().insert(CONTENT_RANGE, v);
    }
    response
}

/// What a `200` or `206` answer is made of.
struct Content<'a> {
    port: &'a HttpPort,
    activity: &'a Arc<Activity>,
    served: &'a Arc<Served>,
    head: bool,
}

impl Content<'_> {
    /// The whole file (`None`) or the inclusive `range`, headers and (unless HEAD) body.
    fn response(&self, range: Option<(u64, u64)>) -> Response<Body> {
        let size = self.served.manifest.size;
        let (first, last, status) = match range {
            Some((first, last)) => (first, last, StatusCode::PARTIAL_CONTENT),
            None => (0, size.saturating_sub(1), StatusCode::OK),
        };
        let length = if size == 0 { 0 } else { last - first + 1 };
        let body = if self.head || length == 0 {
            empty()
        } else {
            file_body(
                self.port.clone(),
                self.served.clone(),
                self.activity.clone(),
                first,
                length,
            )
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        if status == StatusCode::PARTIAL_CONTENT {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")) {
                headers.insert(CONTENT_RANGE, v);
            }
        }
        response
    }
}

/// `length` bytes of the served file from `first`, read in chunks on the blocking pool,
/// paced by the port's rate, each checked against the file as hashed.
fn file_body(
    port: HttpPort,
    served: Arc<Served>,
    activity: Arc<Activity>,
    first: u64,
    length: u64,
) -> Body {
    let state = (port, served, activity, first, first + length);
    let stream =
        futures_util::stream::unfold(state, |(port, served, activity, pos, end)| async move {
            if pos >= end {
                activity.set(Phase::Idle);
                return None;
            }
            activity.set(Phase::Working);
            // A throttled port reads what it may send in a quarter second, so that a slow
            // port sends steadily (see `TokenBucket::chunk_size`).
            let chunk_max = port
                .bucket
                .as_ref()
                .map_or(CHUNK, |b| b.chunk_size().min(CHUNK));
            let want = usize::try_from(end - pos)
                .unwrap_or(chunk_max)
                .min(chunk_max);
            let chunk = read_chunk(served.clone(), pos, want).await;
            let chunk = match chunk {
                Ok(data) if data.len() == want && served.unchanged() => data,
                Ok(_) => {
                    port.served.report_change();
                    let e = std::io::Error::other(
                        "the served file changed on disk since it was hashed",
                    );
                    return Some((Err(e), (port, served, activity, end, end)));
                }
                Err(e) => return Some((Err(e), (port, served, activity, end, end))),
            };
            if let Some(bucket) = &port.bucket {
                bucket.acquire(chunk.len()).await;
            }
            activity.set(Phase::Writing);
            port.stats
                .bytes_sent
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            let next = pos + chunk.len() as u64;
            Some((
                Ok(Frame::data(Bytes::from(chunk))),
                (port, served, activity, next, end),
            ))
        });
    StreamBody::new(stream).boxed()
}

async fn read_chunk(served: Arc<Served>, offset: u64, length: usize) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0; length];
        let filled = served.read_at_most(&mut buf, offset)?;
        buf.truncate(filled);
        Ok(buf)
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_parsed_as_rfc_9110_says() {
        assert_eq!(requested_range(None, 100), Ok(None));
        assert_eq!(requested_range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(requested_range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(requested_range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(requested_range(Some("bytes=-1000"), 100), Ok(Some((0, 99))));
        assert_eq!(
            requested_range(Some("bytes=50-1000"), 100),
            Ok(Some((50, 99)))
        );
        assert_eq!(requested_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        let huge = "99999999999999999999999";
        assert_eq!(
            requested_range(Some(&format!("bytes=0-{huge}")), 100),
            Ok(Some((0, 99)))
        );
        assert_eq!(
            requested_range(Some(&format!("bytes=-{huge}")), 100),
            Ok(Some((0, 99)))
        );
        assert_eq!(
            requested_range(Some(&format!("bytes={huge}-")), 100),
            Err(())
        );
        assert_eq!(requested_range(Some("items=0-1"), 100), Ok(None));
        for bad in [
            "bytes=100-",
            "bytes=9-3",
            "bytes=-0",
            "bytes=x-1",
            "bytes=5",
        ] {
            assert_eq!(requested_range(Some(bad), 100), Err(()), "{bad}");
        }
    }

    #[test]
    fn paths_are_percent_decoded_strictly() {
        assert_eq!(percent_decode("/a%20b.img").as_deref(), Some("/a b.img"));
        assert_eq!(percent_decode("/%zz"), None);
        assert_eq!(percent_decode("/%ff"), None);
        assert!(is_http(b'G') && is_http(b'H') && !is_http(1));
    }
}
