//! An HTTP(S) mirror as a source: the file at a URL, fetched segment by segment with Range
//! requests. One scheduler connection to a mirror keeps up to `parallel` requests in flight,
//! each on its own kept-alive TCP connection from the job's `reqwest` pool: HTTP/1.1 cannot
//! pipeline, so this is what keeps a mirror's link busy between segments.
//!
//! A mirror knows no content identity: its [`Claim`] is the file's size and validators
//! (ETag, Last-Modified), learnt from a one-byte Range request. It serves only once the job
//! has decided the content by other means (an ArsNet server's manifest, or the job's own
//! history), and every segment it sends is verified against that manifest like any other.
//! The validators are pinned at that first response and sent back with `If-Range` on every
//! request, so a file that changes on the mirror mid-job answers 200 (the whole new file)
//! instead of 206, which ends the connection with the reason — never mixed bytes.
//!
//! Nothing here trusts the server's framing: the status must be 206, the `Content-Range`
//! must be exactly the range asked for out of the pinned size, and the body exactly that
//! long. Errors never print the URL (it may carry credentials).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arsnet_proto::Manifest;
use reqwest::header::{
    HeaderMap, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE, RETRY_AFTER,
};
use reqwest::StatusCode;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::seam::{Counters, Link, Source, SourceCommand, SourceError, SourceEvent};
use crate::download::buffers::BufferPool;
use crate::download::identity::{Claim, MirrorFile};

/// One connection to a mirror.
pub(crate) struct HttpMirror {
    url: reqwest::Url,
    client: reqwest::Client,
    parallel: usize,
}

impl HttpMirror {
    pub fn new(url: reqwest::Url, client: reqwest::Client, parallel: usize) -> Self {
        HttpMirror {
            url,
            client,
            parallel: parallel.max(1),
        }
    }
}

/// A transport error, without the URL reqwest would print.
fn transport(e: reqwest::Error) -> SourceError {
    // The causes say what went wrong ("connection reset", "unexpected end of body"); none
    // carries the URL, which `without_url` took out of the top level.
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    SourceError::Http(text)
}

/// A status other than the 206 asked for.
fn unexpected_status(status: StatusCode, headers: &HeaderMap) -> SourceError {
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    SourceError::HttpStatus {
        status: status.as_u16(),
        retry_after,
    }
}

fn header(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `bytes FIRST-LAST/SIZE` → (first, last, size).
fn content_range(headers: &HeaderMap) -> Option<(u64, u64, u64)> {
    let value = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let (range, size) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?, size.parse().ok()?))
}

impl MirrorFile {
    /// What `If-Range` carries: a strong ETag, else Last-Modified (a weak ETag may not be
    /// used there). `None` when the mirror gives neither: then only the size and the
    /// segment digests stand between a changed file and the job, which still suffices.
    fn if_range(&self) -> Option<&str> {
        match &self.etag {
            Some(etag) if !etag.starts_with("W/") => Some(etag),
            _ => self.last_modified.as_deref(),
        }
    }

    /// Whether a response's validators contradict the pinned ones.
    fn changed(&self, headers: &HeaderMap) -> Option<String> {
        let etag = header(headers, ETAG);
        if let (Some(pinned), Some(now)) = (&self.etag, &etag) {
            if pinned != now {
                return Some(format!("ETag {now} differs from {pinned}"));
            }
        }
        let modified = header(headers, LAST_MODIFIED);
        if let (Some(pinned), Some(now)) = (&self.last_modified, &modified) {
            if pinned != now {
                return Some(format!("Last-Modified {now} differs from {pinned}"));
            }
        }
        None
    }
}

/// The probe's answer when it is not a 206: an empty file has no byte 0 to send, so a
/// mirror answers with 416 and `Content-Range: bytes */0`, or ignores the range and sends
/// its empty body with 200 (nginx does). Either is the file of size 0; a 200 with a body is
/// a mirror that ignores Range, and any other 416 an answer that makes no sense here.
async fn empty_file(
    mut response: reqwest::Response,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<Claim, SourceError> {
    if status == StatusCode::RANGE_NOT_SATISFIABLE {
        if header(headers, CONTENT_RANGE).as_deref() != Some("bytes */0") {
            return Err(unexpected_status(status, headers));
        }
    } else {
        let announced_empty = header(headers, CONTENT_LENGTH).as_deref() == Some("0");
        // Announced empty or not, a byte of body is the whole file being sent.
        let sends_bytes = !announced_empty
            || response
                .chunk()
                .await
                .map_err(transport)?
                .is_some_and(|c| !c.is_empty());
        if sends_bytes {
            return Err(SourceError::IgnoresRange);
        }
    }
    Ok(Claim::Mirror(Arc::new(MirrorFile {
        size: 0,
        etag: header(headers, ETAG),
        last_modified: header(headers, LAST_MODIFIED),
    })))
}

impl Source for HttpMirror {
    async fn handshake(&mut self, link: &Link) -> Result<Claim, SourceError> {
        let response = self
            .client
            .get(self.url.clone())
            .header(RANGE, "bytes=0-0")
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        if status == StatusCode::OK || status == StatusCode::RANGE_NOT_SATISFIABLE {
            return empty_file(response, status, &headers).await;
        }
        if status != StatusCode::PARTIAL_CONTENT {
            return Err(unexpected_status(status, &headers));
        }
        let (first, last, size) = content_range(&headers).ok_or_else(|| SourceError::BadRange {
            got: header(&headers, CONTENT_RANGE).unwrap_or_default(),
            want: "bytes 0-0/SIZE".into(),
        })?;
        if (first, last) != (0, 0) || size == 0 {
            return Err(SourceError::BadRange {
                got: format!("bytes {first}-{last}/{size}"),
                want: "bytes 0-0/SIZE".into(),
            });
        }
        // The one byte is not payload; it shows the mirror is alive. Read it chunk by chunk:
        // a mirror that sends more than it announced is cut off, not buffered.
        let mut response = response;
        let mut got = 0;
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            got += chunk.len();
            if got > 1 {
                return Err(SourceError::LongBody(1));
            }
            link.handshaking(chunk.len());
        }
        Ok(Claim::Mirror(Arc::new(MirrorFile {
            size,
            etag: header(&headers, ETAG),
            last_modified: header(&headers, LAST_MODIFIED),
        })))
    }

    async fn transfer(
        self,
        claim: Claim,
        mut commands: mpsc::UnboundedReceiver<SourceCommand>,
        link: &Link,
    ) -> Result<(), SourceError> {
        let Claim::Mirror(file) = claim else {
            return Err(SourceError::Unexpected("a mirror without its file".into()));
        };
        let manifest = link.accepted_manifest().await?;
        if manifest.size != file.size {
            return Err(SourceError::MirrorSize {
                mirror: file.size,
                content: manifest.size,
            });
        }
        let mut queue = VecDeque::new();
        // Requests in flight, each a task so that a cancel can abort exactly its segment.
        let mut running: JoinSet<(u64, Result<Vec<u8>, SourceError>)> = JoinSet::new();
        // Live requests by segment. A cancelled one leaves this map at once; its task is
        // remembered in `cancelled_tasks`, so that its result (it may have finished before
        // the abort) is never reported after its cancel was, even if the segment is asked
        // for again meanwhile.
        let mut handles: HashMap<u64, AbortHandle> = HashMap::new();
        let mut cancelled_tasks: HashSet<tokio::task::Id> = HashSet::new();
        loop {
            while running.len() < self.parallel {
                let Some(segment) = queue.pop_front() else {
                    break;
                };
                let request = SegmentRequest {
                    client: self.client.clone(),
                    url: self.url.clone(),
                    file: file.clone(),
                    manifest: manifest.clone(),
                    segment,
                    counters: link.counters.clone(),
                    buffers: link.buffers.clone(),
                };
                let handle = running.spawn(async move { (segment, request.fetch().await) });
                handles.insert(segment, handle);
            }
            tokio::select! {
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let (task, (segment, result)) = match done {
                        Ok(done) => done,
                        Err(e) if e.is_cancelled() => {
                            cancelled_tasks.remove(&e.id());
                            continue;
                        }
                        Err(e) => return Err(SourceError::Http(format!("request task failed: {e}"))),
                    };
                    if cancelled_tasks.remove(&task) {
                        continue;
                    }
                    handles.remove(&segment);
                    let data = result?;
                    let verified = verify(&manifest, segment, &data);
                    link.report(SourceEvent::Segment { conn: link.conn, segment, data, verified })
                        .await?;
                }
                command = commands.recv() => match command {
                    Some(SourceCommand::Request(s)) => queue.push_back(s),
                    Some(SourceCommand::Cancel(s)) => {
                        // Aborting a request in flight closes its connection: the rest of
                        // its body is not wanted.
                        if let Some(handle) = handles.remove(&s) {
                            handle.abort();
                            cancelled_tasks.insert(handle.id());
                            cancelled(link, s).await?;
                        } else if let Some(at) = queue.iter().position(|&q| q == s) {
                            queue.remove(at);
                            cancelled(link, s).await?;
                        }
                    }
                    None => return Err(SourceError::JobClosed),
                },
            }
        }
    }
}

async fn cancelled(link: &Link, segment: u64) -> Result<(), SourceError> {
    link.report(SourceEvent::Cancelled {
        conn: link.conn,
        segment,
    })
    .await
}

/// One segment's request, owning what it needs so that it can run as its own task.
struct SegmentRequest {
    client: reqwest::Client,
    url: reqwest::Url,
    file: Arc<MirrorFile>,
    manifest: Arc<Manifest>,
    segment: u64,
    counters: Arc<Counters>,
    buffers: BufferPool,
}

impl SegmentRequest {
    /// A Range request conditional on the pinned validators, checked and read into a
    /// pooled buffer, counting bytes as they arrive.
    async fn fetch(self) -> Result<Vec<u8>, SourceError> {
        let file = &self.file;
        let (start, len) = self.manifest.segment_range(self.segment);
        let last = start + u64::from(len) - 1;
        let mut request = self
            .client
            .get(self.url.clone())
            .header(RANGE, format!("bytes={start}-{last}"));
        if let Some(validator) = file.if_range() {
            request = request.header(IF_RANGE, validator);
        }
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        let headers = response.headers();
        if status == StatusCode::OK {
            // With If-Range, a 200 means the file is no longer the one pinned; without it,
            // the mirror stopped honouring Range. Either way the bytes are not the segment.
            return Err(match file.if_range() {
                Some(_) => {
                    SourceError::MirrorChanged("it answered the whole file to If-Range".into())
                }
                None => SourceError::IgnoresRange,
            });
        }
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            return Err(SourceError::MirrorChanged(
                "the range no longer exists (416)".into(),
            ));
        }
        if status != StatusCode::PARTIAL_CONTENT {
            return Err(unexpected_status(status, headers));
        }
        if let Some(why) = file.changed(headers) {
            return Err(SourceError::MirrorChanged(why));
        }
        if content_range(headers) != Some((start, last, file.size)) {
            return Err(SourceError::BadRange {
                got: header(headers, CONTENT_RANGE).unwrap_or_default(),
                want: format!("bytes {start}-{last}/{}", file.size),
            });
        }
        let want = len as usize;
        let mut data = self.buffers.take(want);
        let mut filled = 0;
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            let end = filled + chunk.len();
            if end > want {
                self.buffers.give(data);
                return Err(SourceError::LongBody(want));
            }
            data[filled..end].copy_from_slice(&chunk);
            filled = end;
            self.counters
                .payload
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        if filled != want {
            self.buffers.give(data);
            return Err(SourceError::ShortBody { got: filled, want });
        }
        Ok(data)
    }
}

/// Segment `segment` of `manifest` from the mirror at `url`, outside any scheduler
/// connection (a referee asked by `repair`): the same checks as a scheduled request, except
/// the validators, which a one-off request has none pinned of (the size still is).
pub(super) async fn fetch_segment(
    client: &reqwest::Client,
    url: &reqwest::Url,
    manifest: &Arc<Manifest>,
    segment: u64,
    buffers: &BufferPool,
) -> Result<Vec<u8>, SourceError> {
    SegmentRequest {
        client: client.clone(),
        url: url.clone(),
        file: Arc::new(MirrorFile {
            size: manifest.size,
            etag: None,
            last_modified: None,
        }),
        manifest: manifest.clone(),
        segment,
        counters: Arc::default(),
        buffers: buffers.clone(),
    }
    .fetch()
    .await
}

/// Whether a mirror's segment is the content's. An unproven layout (mirrors only) has no
/// digests: the job checks the whole file against the user's pin before publishing instead.
fn verify(manifest: &Manifest, segment: u64, data: &[u8]) -> bool {
    manifest.is_unproven() || manifest.verify_segment(segment, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(reqwest::header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn content_range_is_parsed_strictly() {
        let ok = headers(&[(CONTENT_RANGE, "bytes 0-99/1000")]);
        assert_eq!(content_range(&ok), Some((0, 99, 1000)));
        for bad in [
            "bytes 0-99/*",
            "bytes */1000",
            "0-99/1000",
            "bytes 0-x/1000",
            "bytes 5/10",
        ] {
            assert_eq!(
                content_range(&headers(&[(CONTENT_RANGE, bad)])),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn if_range_prefers_a_strong_etag_and_changes_are_named() {
        let file = MirrorFile {
            size: 10,
            etag: Some("\"abc\"".into()),
            last_modified: Some("Mon, 01 Jan 2024 00:00:00 GMT".into()),
        };
        assert_eq!(file.if_range(), Some("\"abc\""));
        let weak = MirrorFile {
            etag: Some("W/\"abc\"".into()),
            ..file.clone()
        };
        assert_eq!(weak.if_range(), Some("Mon, 01 Jan 2024 00:00:00 GMT"));
        assert_eq!(file.changed(&headers(&[(ETAG, "\"abc\"")])), None);
        let why = file.changed(&headers(&[(ETAG, "\"new\"")])).unwrap();
        assert!(why.contains("\"new\""), "{why}");
        assert!(file
            .changed(&headers(&[(
                LAST_MODIFIED,
                "Tue, 02 Jan 2024 00:00:00 GMT"
            )]))
            .is_some());
    }
}
