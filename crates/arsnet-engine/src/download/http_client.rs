//! The one HTTP client policy, for a job's mirrors and for a `--checksum-url` alike:
//! connection pooling and keep-alive, rustls with the system's roots plus the job's
//! `--ca-cert`s, a bounded number of redirects that never leave http(s) or step down from
//! https, and no decompression (the bytes are the file). No overall timeout here: for
//! mirrors the scheduler decides when silence is a stall; a checksum file sets its own.

use std::time::Duration;

use super::error::DownloadError;

/// Redirects a mirror may use: at most `HTTP_MAX_REDIRECTS`, only to http(s), and never from
/// https down to http (reqwest would carry a URL's credentials along to the same host).
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let https_before = attempt.previous().iter().any(|u| u.scheme() == "https");
        let scheme = attempt.url().scheme().to_string();
        if attempt.previous().len() > arsnet_proto::limits::HTTP_MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if scheme != "http" && scheme != "https" {
            attempt.error(format!("refusing a redirect to a {scheme}: URL"))
        } else if https_before && scheme == "http" {
            attempt.error("refusing a redirect from https to plain http")
        } else {
            attempt.follow()
        }
    })
}

/// A client trusting the system's roots and `ca_certs` (PEM texts).
pub(crate) fn build(
    ca_certs: &[String],
    connect_timeout: Duration,
) -> Result<reqwest::Client, DownloadError> {
    let mut builder = reqwest::Client::builder();
    for pem in ca_certs {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| DownloadError::HttpClient(format!("bad --ca-cert: {e}")))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .connect_timeout(connect_timeout)
        .redirect(redirect_policy())
        .user_agent(concat!("arsnet/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| DownloadError::HttpClient(e.without_url().to_string()))
}
