//! `fetch --checksum-url`: reads a mirror's checksum file (`SHA256SUMS`, `B3SUMS`, …) and
//! turns its line for the file's name into the job's pin. Read once, when the request
//! arrives (the daemon stores the pin with the job), bounded in size and time, through the
//! same client policy as the mirrors (`http_client`).

use std::time::Duration;

use arsnet_proto::checksum::{algorithm_of_name, find_digest, ChecksumError};
use arsnet_proto::control::Pin;
use arsnet_proto::limits::{CHECKSUM_FETCH_SECS, MAX_CHECKSUM_FILE_BYTES};
use arsnet_proto::SourceAddr;

use super::error::DownloadError;
use super::http_client;

/// Why a checksum file gave no pin. The URL is never part of the text (it may carry
/// credentials); the caller names it redacted.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumUrlError {
    #[error("not an http(s) URL")]
    NotHttp,
    #[error("{0}")]
    Client(#[from] DownloadError),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("larger than {MAX_CHECKSUM_FILE_BYTES} bytes")]
    TooLarge,
    #[error("not complete after {CHECKSUM_FETCH_SECS} s")]
    TooSlow,
    #[error("not UTF-8 text")]
    NotText,
    #[error("{0}")]
    Lookup(#[from] ChecksumError),
}

/// The pin `url`'s checksum file gives the file `name`. The algorithm comes from a BSD tag
/// on the line, else from the checksum file's name (`SHA256SUMS`, `x.b3`).
pub async fn resolve(
    url: &SourceAddr,
    name: &str,
    ca_certs: &[String],
    connect_timeout: Duration,
) -> Result<Pin, ChecksumUrlError> {
    let SourceAddr::Http { url } = url else {
        return Err(ChecksumUrlError::NotHttp);
    };
    let client = http_client::build(ca_certs, connect_timeout)?;
    let deadline = Duration::from_secs(CHECKSUM_FETCH_SECS);
    let body = tokio::time::timeout(deadline, read_bounded(&client, url.clone()))
        .await
        .map_err(|_| ChecksumUrlError::TooSlow)??;
    let text = String::from_utf8(body).map_err(|_| ChecksumUrlError::NotText)?;
    let hint = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .and_then(algorithm_of_name);
    Ok(find_digest(&text, name, hint)?)
}

/// The body of a 200 answer, at most `MAX_CHECKSUM_FILE_BYTES`, read as it streams (a
/// mirror announcing or sending more is refused before it is held).
async fn read_bounded(
    client: &reqwest::Client,
    url: reqwest::Url,
) -> Result<Vec<u8>, ChecksumUrlError> {
    let transport = |e: reqwest::Error| ChecksumUrlError::Http(e.without_url().to_string());
    let mut response = client.get(url).send().await.map_err(transport)?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(ChecksumUrlError::Status(response.status().as_u16()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_CHECKSUM_FILE_BYTES as u64)
    {
        return Err(ChecksumUrlError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_CHECKSUM_FILE_BYTES {
            return Err(ChecksumUrlError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
