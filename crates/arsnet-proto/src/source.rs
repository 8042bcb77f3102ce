//! Where a download's segments come from. A source is parsed once, at the edge (the CLI,
//! the control request, the state file), into a [`SourceAddr`]; everything past that point
//! holds the typed value: an ArsNet server (`HOST:PORT`) or an HTTP(S) mirror (a URL).
//!
//! A URL may carry credentials (`https://user:token@host/...`, or a presigned query string).
//! [`fmt::Display`], which is what logs, `list` and `status` show, never prints them; only
//! the serialized form (the control request, the state file, which is private to the daemon)
//! keeps the whole URL, since it is needed to fetch.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One source of a download, as the user named it.
///
/// Serialized as a `"host:port"` string, so the state file and JSON output read as they always
/// did. Parsing ([`FromStr`]) is strict and is what every new request goes through (the CLI,
/// and [`FetchSpec::validate`](crate::control::FetchSpec::validate) in the daemon). Decoding
/// is lenient: it also takes what earlier releases accepted and saved (an unbracketed IPv6
/// address, a `+` before the port, any host text), so that an old state file never loses a
/// job over how a source was spelled; such a source simply fails to connect, with the error
/// naming it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SourceAddr {
    /// An ArsNet server: `HOST:PORT`, where HOST is a name, an IPv4 address or a bracketed
    /// IPv6 address.
    ArsNet { host: String, port: u16 },
    /// An HTTP or HTTPS mirror: the URL of the file, fetched with Range requests.
    Http { url: url::Url },
}

/// Why a string is not a source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceAddrError {
    #[error("server address {0:?} is not HOST:PORT with a port 1..=65535 (an IPv6 address goes in brackets: [::1]:5001)")]
    NotHostPort(String),
    #[error("mirror URL {0:?} is not a valid http:// or https:// URL with a host: {1}")]
    BadUrl(String, String),
}

/// Whether `s` is meant as a URL (then it is judged as one, never as `HOST:PORT`).
fn looks_like_url(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn parse_url(s: &str) -> Result<SourceAddr, SourceAddrError> {
    let bad = |why: &str| SourceAddrError::BadUrl(redact_text(s), why.to_string());
    let mut url = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http and https are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    // A fragment is never sent to the server; keeping it would only make two spellings of
    // one mirror look different.
    url.set_fragment(None);
    Ok(SourceAddr::Http { url })
}

/// A URL as it may be shown: user and password replaced by `***`, the query (a presigned
/// URL's signature) by `?***`.
fn redacted(url: &url::Url) -> String {
    let mut shown = url.clone();
    if !shown.username().is_empty() || shown.password().is_some() {
        // Cannot fail for the http(s) URLs a SourceAddr holds (they have a host).
        let _ = shown.set_username("***");
        let _ = shown.set_password(None);
    }
    if shown.query().is_some() {
        shown.set_query(Some("***"));
    }
    shown.to_string()
}

/// Best effort for text that did not even parse as a URL: everything between the scheme
/// and an `@` is hidden, and so is the query.
fn redact_text(s: &str) -> String {
    // Everything from the scheme to the last '@' anywhere (a password may hold '?' or '/'),
    // then the query after what remains.
    let (scheme, rest) = s.split_once("://").unwrap_or(("", s));
    let rest = match rest.rfind('@') {
        Some(at) => format!("***{}", &rest[at..]),
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((head, _)) => format!("{head}?***"),
        None => rest,
    };
    if scheme.is_empty() {
        rest
    } else {
        format!("{scheme}://{rest}")
    }
}

impl SourceAddr {
    /// Whether this is an HTTP(S) mirror, which knows no content identity of its own.
    pub fn is_mirror(&self) -> bool {
        matches!(self, SourceAddr::Http { .. })
    }

    /// The name a mirror's file is saved under: the URL path's last segment, percent-decoded,
    /// when it is a safe plain file name (`validate_file_name`). Taken from the URL the user
    /// gave, never from a header the mirror chooses. `None` for an ArsNet server (its
    /// manifest names the file) and for a URL ending in `/`, `..` or a name that is not safe.
    pub fn file_name(&self) -> Option<String> {
        self.download_name().ok()
    }

    /// The name a mirror's URL gives the file (its last path segment, percent-decoded), if
    /// a download may be saved under it (`name::validate_download_name`), or why not.
    pub fn download_name(&self) -> Result<String, crate::name::NameError> {
        use crate::name::NameError;
        let SourceAddr::Http { url } = self else {
            return Err(NameError::Empty);
        };
        let last = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or_default();
        let name = percent_encoding::percent_decode_str(last)
            .decode_utf8()
            .map_err(|_| NameError::NotUtf8)?
            .into_owned();
        crate::name::validate_download_name(name.as_bytes())?;
        Ok(name)
    }

    /// The whole source, credentials included: for fetching and for the daemon's own
    /// records, never for showing (use `Display`).
    pub fn to_full_string(&self) -> String {
        match self {
            SourceAddr::ArsNet { host, port } => format!("{host}:{port}"),
            SourceAddr::Http { url } => url.to_string(),
        }
    }
}

impl FromStr for SourceAddr {
    type Err = SourceAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if looks_like_url(s) {
            return parse_url(s);
        }
        let bad = || SourceAddrError::NotHostPort(s.to_string());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| digits && p != 0)
            .ok_or_else(bad)?;
        // A bracketed host is an IPv6 address, nothing else.
        let bracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
        let plain = !host.is_empty()
            && !host.contains(|c: char| {
                matches!(c, ':' | '/' | '[' | ']') || c.is_whitespace() || c.is_control()
            });
        if !(bracketed || plain) {
            return Err(bad());
        }
        Ok(SourceAddr::ArsNet {
            host: host.to_string(),
            port,
        })
    }
}

/// As shown, never with credentials: a `{:?}` of a request in a debug log must not print
/// them either.
impl fmt::Debug for SourceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceAddr({self})")
    }
}

impl fmt::Display for SourceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceAddr::ArsNet { host, port } => write!(f, "{host}:{port}"),
            SourceAddr::Http { url } => f.write_str(&redacted(url)),
        }
    }
}

impl SourceAddr {
    /// What earlier releases accepted: `HOST:PORT` split at the last colon, a non-empty
    /// host, a port 1..=65535 (Rust's integer parsing, which takes a leading `+`). An
    /// unbracketed IPv6 host gets its brackets.
    pub fn parse_lenient(s: &str) -> Result<Self, SourceAddrError> {
        if looks_like_url(s) {
            return parse_url(s);
        }
        if let Ok(strict) = s.parse() {
            return Ok(strict);
        }
        let bad = || SourceAddrError::NotHostPort(s.to_string());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(bad)?;
        if host.is_empty() {
            return Err(bad());
        }
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        Ok(SourceAddr::ArsNet { host, port })
    }

    /// Whether this source is spelled as a new request must spell it (see [`FromStr`]).
    pub fn is_strict(&self) -> bool {
        self.to_full_string().parse::<SourceAddr>().as_ref() == Ok(self)
    }
}

impl TryFrom<String> for SourceAddr {
    type Error = SourceAddrError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        SourceAddr::parse_lenient(&s)
    }
}

impl From<SourceAddr> for String {
    fn from(source: SourceAddr) -> String {
        source.to_full_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        for good in [
            "127.0.0.1:5001",
            "mirror.example:1",
            "[::1]:65535",
            "localhost:80",
        ] {
            let parsed: SourceAddr = good.parse().unwrap();
            assert_eq!(parsed.to_string(), good);
        }
        for bad in [
            "",
            "5001",
            ":5001",
            "host:",
            "host:0",
            "host:65536",
            "host:x",
            "::1:5001",
            "[]:5",
            "a b:5",
            "host:+5",
            "[a b]:5",
            "[host]:5",
            "[::1\n]:5",
        ] {
            assert!(bad.parse::<SourceAddr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn round_trips_as_the_string_the_user_typed() {
        let source: SourceAddr = "[::1]:5001".parse().unwrap();
        let json = serde_json_like(&source);
        assert_eq!(json, "[::1]:5001");
        let bytes = bincode::serde::encode_to_vec(&source, bincode::config::standard()).unwrap();
        let (back, _): (SourceAddr, _) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, source);
        // Decoding takes what earlier releases saved, normalised.
        for (old, now) in [
            ("::1:5001", "[::1]:5001"),
            ("host:+5", "host:5"),
            ("a b:5", "a b:5"),
        ] {
            let bytes = bincode::serde::encode_to_vec(old, bincode::config::standard()).unwrap();
            let (back, _): (SourceAddr, _) =
                bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
            assert_eq!(back.to_string(), now);
            assert_eq!(back.is_strict(), old != "a b:5", "{old}");
        }
        let junk = bincode::serde::encode_to_vec("no port", bincode::config::standard()).unwrap();
        let refused: Result<(SourceAddr, usize), _> =
            bincode::serde::decode_from_slice(&junk, bincode::config::standard());
        assert!(refused.is_err());
    }

    #[test]
    fn mirror_urls_parse_and_never_show_their_credentials() {
        let plain: SourceAddr = "http://mirror.example/pub/x.img".parse().unwrap();
        assert!(plain.is_mirror());
        assert_eq!(plain.to_string(), "http://mirror.example/pub/x.img");
        let secret: SourceAddr = "HTTPS://alice:s3cret@Mirror.example:8443/x.img?X-Sig=abc#frag"
            .parse()
            .unwrap();
        let shown = secret.to_string();
        assert_eq!(shown, "https://***@mirror.example:8443/x.img?***");
        for leak in ["alice", "s3cret", "abc"] {
            assert!(!shown.contains(leak), "{shown}");
        }
        // What is saved and sent keeps everything needed to fetch (not the fragment).
        let full = String::from(secret.clone());
        assert_eq!(
            full,
            "https://alice:s3cret@mirror.example:8443/x.img?X-Sig=abc"
        );
        assert!(secret.is_strict());
        let bytes = bincode::serde::encode_to_vec(&secret, bincode::config::standard()).unwrap();
        let (back, _): (SourceAddr, _) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, secret);
        for bad in [
            "http://",
            "http://exa mple/x",
            "https://[zz]/x",
            "ftp://h/x",
        ] {
            assert!(bad.parse::<SourceAddr>().is_err(), "{bad:?} accepted");
        }
        let err = "http://bob:pw@[::1/x?t=1"
            .parse::<SourceAddr>()
            .unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("pw") && !text.contains("t=1"), "{text}");
        // A password holding '?' must not split the redaction.
        let err = "http://user:SEC?RETPW@[::1/x"
            .parse::<SourceAddr>()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            !text.contains("user") && !text.contains("SEC") && !text.contains("RETPW"),
            "{text}"
        );
        // Debug (what a `{:?}` of a whole request prints) is redacted too.
        let debug = format!("{secret:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("alice"),
            "{debug}"
        );
    }

    fn serde_json_like(source: &SourceAddr) -> String {
        String::from(source.clone())
    }
}
