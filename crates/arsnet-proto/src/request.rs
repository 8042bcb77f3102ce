//! The one check of each request that starts something: [`ServeSpec::validate`] and
//! [`FetchSpec::validate`]. The CLI, the daemon and the engine all rely on these, so a rule
//! (the port range, the interval bound, the source limit) is written once.

use std::collections::HashSet;

use crate::control::{FetchSpec, ServeSpec};
use crate::limits::{
    MAX_CA_CERTS, MAX_CA_CERT_BYTES, MAX_CONNECTIONS_PER_SOURCE, MAX_INTERVAL_SECS,
    MAX_SOURCES_PER_JOB, MIN_SERVE_PORT,
};

/// Why a `serve` or `fetch` request is refused. The texts name the flag the user typed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("port {0} is outside the allowed range {MIN_SERVE_PORT}..=65535")]
    PortOutOfRange(u16),
    #[error("-n says {expected} servers but {got} ports were given")]
    CountMismatch { expected: u32, got: usize },
    #[error("port {0} is listed twice")]
    DuplicatePort(u16),
    #[error("-i must be 1..={MAX_INTERVAL_SECS} seconds")]
    Interval,
    #[error("--rate must be at least 1 byte per second")]
    ZeroRate,
    #[error("at least one server is needed")]
    NoSources,
    #[error("{0} servers given; a job takes at most {MAX_SOURCES_PER_JOB}")]
    TooManySources(usize),
    #[error("server {0} is listed twice")]
    DuplicateSource(String),
    #[error("--ca-cert: at most {MAX_CA_CERTS} files of at most {MAX_CA_CERT_BYTES} bytes each, in PEM (-----BEGIN CERTIFICATE-----)")]
    BadCaCert,
    #[error("--connections-per-source must be 1..={MAX_CONNECTIONS_PER_SOURCE}")]
    ConnectionsPerSource,
    #[error("HTTP mirrors alone do not say what the file must be: pin it with --blake3 HEX or --sha256 HEX (checked before the file is published), add an ArsNet server (HOST:PORT), or accept it unchecked with --no-verify")]
    MirrorsOnly,
    #[error("--no-verify is only for jobs of HTTP mirrors alone without a pin: an ArsNet server or a pin always verifies")]
    NeedlessNoVerify,
    #[error("mirror URL {url} does not end in a name to save the file under: {reason}")]
    NoFileName {
        url: String,
        reason: crate::name::NameError,
    },
    #[error("--checksum-url must be an http:// or https:// URL")]
    ChecksumUrl,
    #[error("--checksum-url needs a mirror URL (--source http://…/NAME) to name the line to use")]
    ChecksumNeedsName,
    #[error(transparent)]
    BadSource(#[from] crate::source::SourceAddrError),
    #[error("output directory {0} must be an absolute path")]
    RelativeDir(String),
    #[error("file {0} must be an absolute path")]
    RelativeFile(String),
}

/// Checks a server group's port list: exactly `count` ports, each in
/// `MIN_SERVE_PORT..=65535`, no duplicates.
pub fn check_ports(count: u32, ports: &[u16]) -> Result<(), RequestError> {
    if let Some(&port) = ports.iter().find(|&&p| p < MIN_SERVE_PORT) {
        return Err(RequestError::PortOutOfRange(port));
    }
    if ports.len() != count as usize || count == 0 {
        return Err(RequestError::CountMismatch {
            expected: count,
            got: ports.len(),
        });
    }
    let mut seen = HashSet::new();
    match ports.iter().find(|&&p| !seen.insert(p)) {
        Some(&port) => Err(RequestError::DuplicatePort(port)),
        None => Ok(()),
    }
}

/// Checks a status or metric interval in seconds.
pub fn check_interval(secs: u64) -> Result<(), RequestError> {
    if crate::limits::INTERVAL_SECS.contains(&secs) {
        Ok(())
    } else {
        Err(RequestError::Interval)
    }
}

/// An interval for timers: lifted into the allowed range, so that a value read from an
/// older state file can never make timer arithmetic overflow.
pub fn interval(secs: u64) -> core::time::Duration {
    let allowed = crate::limits::INTERVAL_SECS;
    core::time::Duration::from_secs(secs.clamp(*allowed.start(), *allowed.end()))
}

impl ServeSpec {
    /// Everything about a `serve` that can be judged without the file or the network.
    pub fn validate(&self) -> Result<(), RequestError> {
        check_ports(self.count, &self.ports)?;
        check_interval(self.status_interval_secs)?;
        // Relative to what? Not the daemon's working directory: the client sends it whole.
        if !self.file.is_absolute() {
            return Err(RequestError::RelativeFile(self.file.display().to_string()));
        }
        if self.rate == Some(0) {
            return Err(RequestError::ZeroRate);
        }
        Ok(())
    }
}

impl FetchSpec {
    /// Everything about a `fetch` that can be judged without the directory or the network.
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.sources.is_empty() {
            return Err(RequestError::NoSources);
        }
        if self.sources.len() > MAX_SOURCES_PER_JOB {
            return Err(RequestError::TooManySources(self.sources.len()));
        }
        let mirrors_only = self.mirrors_only();
        let pinned = self.pin.is_some() || self.checksum_url.is_some();
        if mirrors_only && !pinned && !self.no_verify {
            return Err(RequestError::MirrorsOnly);
        }
        if self.no_verify && (!mirrors_only || pinned) {
            return Err(RequestError::NeedlessNoVerify);
        }
        if let Some(url) = &self.checksum_url {
            if !url.is_mirror() {
                return Err(RequestError::ChecksumUrl);
            }
            if self.mirror_file_name().is_none() {
                return Err(RequestError::ChecksumNeedsName);
            }
        }
        if let (true, Some(first)) = (mirrors_only, self.sources.first()) {
            if let Err(reason) = first.download_name() {
                let url = first.to_string();
                return Err(RequestError::NoFileName { url, reason });
            }
        }
        let pem =
            |c: &String| c.len() <= MAX_CA_CERT_BYTES && c.contains("-----BEGIN CERTIFICATE-----");
        if self.ca_certs.len() > MAX_CA_CERTS || !self.ca_certs.iter().all(pem) {
            return Err(RequestError::BadCaCert);
        }
        if self
            .connections_per_source
            .is_some_and(|n| !(1..=MAX_CONNECTIONS_PER_SOURCE).contains(&n))
        {
            return Err(RequestError::ConnectionsPerSource);
        }
        check_interval(self.metric_interval_secs)?;
        if !self.dir.is_absolute() {
            return Err(RequestError::RelativeDir(self.dir.display().to_string()));
        }
        // Decoding is lenient for old state files; a new request must be spelled strictly.
        if let Some(loose) = self.sources.iter().find(|s| !s.is_strict()) {
            return Err(crate::source::SourceAddrError::NotHostPort(loose.to_string()).into());
        }
        let mut seen = HashSet::new();
        match self.sources.iter().find(|s| !seen.insert(*s)) {
            Some(twice) => Err(RequestError::DuplicateSource(twice.to_string())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn serve(ports: Vec<u16>) -> ServeSpec {
        ServeSpec {
            file: "/srv/f".into(),
            count: ports.len() as u32,
            ports,
            bind: "0.0.0.0".into(),
            rate: None,
            status_interval_secs: 5,
            http: false,
        }
    }

    fn fetch(sources: &[&str]) -> FetchSpec {
        FetchSpec {
            dir: PathBuf::from("/tmp"),
            sources: sources.iter().map(|s| s.parse().unwrap()).collect(),
            resume: false,
            overwrite: false,
            metric_interval_secs: 1,
            pin: None,
            ca_certs: Vec::new(),
            connections_per_source: None,
            no_verify: false,
            checksum_url: None,
        }
    }

    #[test]
    fn serve_rules() {
        assert_eq!(serve(vec![5001, 5002]).validate(), Ok(()));
        assert_eq!(
            serve(vec![1023]).validate(),
            Err(RequestError::PortOutOfRange(1023))
        );
        assert_eq!(
            serve(vec![5001, 5001]).validate(),
            Err(RequestError::DuplicatePort(5001))
        );
        let mut wrong_count = serve(vec![5001]);
        wrong_count.count = 2;
        assert!(matches!(
            wrong_count.validate(),
            Err(RequestError::CountMismatch {
                expected: 2,
                got: 1
            })
        ));
        assert!(serve(vec![]).validate().is_err());
        for (secs, ok) in [
            (0, false),
            (1, true),
            (MAX_INTERVAL_SECS, true),
            (MAX_INTERVAL_SECS + 1, false),
        ] {
            let mut spec = serve(vec![5001]);
            spec.status_interval_secs = secs;
            assert_eq!(spec.validate().is_ok(), ok, "{secs}");
        }
        let mut zero = serve(vec![5001]);
        zero.rate = Some(0);
        assert_eq!(zero.validate(), Err(RequestError::ZeroRate));
    }

    #[test]
    fn fetch_rules() {
        assert_eq!(fetch(&["a:1", "b:1"]).validate(), Ok(()));
        assert_eq!(fetch(&[]).validate(), Err(RequestError::NoSources));
        assert_eq!(
            fetch(&["a:1", "a:1"]).validate(),
            Err(RequestError::DuplicateSource("a:1".into()))
        );
        let many: Vec<String> = (1..=MAX_SOURCES_PER_JOB + 1)
            .map(|p| format!("h:{p}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(
            fetch(&many).validate(),
            Err(RequestError::TooManySources(_))
        ));
        let mut relative = fetch(&["a:1"]);
        relative.dir = "out".into();
        assert!(matches!(
            relative.validate(),
            Err(RequestError::RelativeDir(_))
        ));
        let mut slow = fetch(&["a:1"]);
        slow.metric_interval_secs = 0;
        assert_eq!(slow.validate(), Err(RequestError::Interval));
        assert_eq!(interval(0), core::time::Duration::from_secs(1));
        assert_eq!(
            interval(u64::MAX),
            core::time::Duration::from_secs(MAX_INTERVAL_SECS)
        );
    }

    #[test]
    fn a_job_of_mirrors_only_needs_a_pin_or_no_verify_and_a_file_name() {
        use crate::control::{Pin, Verification};
        let mirrors = fetch(&["http://a/x.img", "https://b/y/x.img"]);
        assert_eq!(mirrors.validate(), Err(RequestError::MirrorsOnly));
        for pin in [Pin::Blake3([1; 32]), Pin::Sha256([2; 32])] {
            let mut pinned = mirrors.clone();
            pinned.pin = Some(pin);
            assert_eq!(pinned.validate(), Ok(()));
            assert_eq!(pinned.verification(), Verification::WholeFile);
            pinned.no_verify = true;
            assert_eq!(pinned.validate(), Err(RequestError::NeedlessNoVerify));
        }
        let mut unchecked = mirrors.clone();
        unchecked.no_verify = true;
        assert_eq!(unchecked.validate(), Ok(()));
        assert_eq!(unchecked.verification(), Verification::None);
        let mut mixed = fetch(&["http://a/x.img", "a:1"]);
        assert_eq!(mixed.verification(), Verification::Segments);
        mixed.no_verify = true;
        assert_eq!(mixed.validate(), Err(RequestError::NeedlessNoVerify));
        // The name comes from the first mirror's URL, and must be a safe plain name.
        // Checked when the request arrives, with the rule the store applies: ArsNet's own
        // suffixes (any case) and names too long to take them are refused too.
        // 202 bytes: the kept-aside journal's name (54 bytes more) would not fit in 255.
        let long = format!("http://a/{}", "n".repeat(202));
        for url in [
            "http://a/",
            "http://a/dir/",
            "http://a/%2e%2e",
            "http://a/x%2Fy",
            "http://a/%00",
            "http://a/x.img.arsnet-dump",
            "http://a/x.img.ARSNET-SEGMENTS",
            "http://a/x.arsnet-untrusted-1",
            long.as_str(),
        ] {
            let mut nameless = fetch(&[url, "http://b/x.img"]);
            nameless.no_verify = true;
            assert!(
                matches!(nameless.validate(), Err(RequestError::NoFileName { .. })),
                "{url}"
            );
        }
        let longest = format!("http://a/{}", "n".repeat(201));
        let mut named = fetch(&[&longest]);
        named.no_verify = true;
        assert_eq!(named.validate(), Ok(()), "201 bytes still fit");
    }

    #[test]
    fn a_mirror_names_its_file_by_the_url_path_decoded() {
        let name = |s: &str| s.parse::<crate::source::SourceAddr>().unwrap().file_name();
        assert_eq!(name("http://a/pub/x.img"), Some("x.img".into()));
        assert_eq!(
            name("http://a/pub/my%20file.iso?sig=1"),
            Some("my file.iso".into())
        );
        assert_eq!(name("https://u:p@a/k/v.tar.gz"), Some("v.tar.gz".into()));
        assert_eq!(name("a:1"), None);
    }

    #[test]
    fn a_checksum_url_is_an_identity_and_needs_a_mirror_name() {
        use crate::control::Verification;
        let mut listed = fetch(&["http://a/x.img", "http://b/x.img"]);
        listed.checksum_url = Some("https://a/SHA256SUMS".parse().unwrap());
        assert_eq!(listed.validate(), Ok(()));
        assert_eq!(listed.verification(), Verification::WholeFile);
        assert_eq!(listed.mirror_file_name().as_deref(), Some("x.img"));
        let mut unchecked = listed.clone();
        unchecked.no_verify = true;
        assert_eq!(unchecked.validate(), Err(RequestError::NeedlessNoVerify));
        let mut not_a_url = listed.clone();
        not_a_url.checksum_url = Some("a:1".parse().unwrap());
        assert_eq!(not_a_url.validate(), Err(RequestError::ChecksumUrl));
        let mut servers_only = fetch(&["a:1"]);
        servers_only.checksum_url = listed.checksum_url.clone();
        assert_eq!(
            servers_only.validate(),
            Err(RequestError::ChecksumNeedsName)
        );
    }
}
