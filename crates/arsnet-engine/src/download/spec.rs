//! What a download job is asked to do: the spec, its tuning, the hook that records the
//! accepted content, and the commands an operator sends a running job.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arsnet_proto::control::{JobId, Pin};
use arsnet_proto::{Digest, JobTag};

use super::identity::required_content;

/// Tuning of a download job (defaults suit loopback and LAN alike).
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    pub pipeline_depth: usize,
    pub stall_timeout: Duration,
    /// A connection that receives nothing for this long (or for 8 times the fastest
    /// source's segment time, if longer) while other sources deliver is dropped, and its
    /// segments go to the others at once; in the tail, so is one on one segment that long.
    /// See `arsnet_sched::Config::laggard_floor`. Raise it for sources slow to send a first
    /// byte.
    pub silence_timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Connection attempts per source before it is given up, while it never answered and the
    /// job has no verified data; a job whose sources all give up fails (0 = unlimited). See
    /// `arsnet_sched::Config::max_tries`.
    pub max_tries: u32,
    /// Segments written between two durability points (fdatasync + journal fsync).
    pub commit_batch: usize,
    /// Longest time a written segment waits before it is made durable.
    pub commit_interval: Duration,
    /// How often the job logs its per-server metrics (the spec's client `-i`).
    pub metric_interval: Duration,
    /// Requests an HTTP mirror's connection keeps in flight at once, each on its own pooled
    /// TCP connection: HTTP/1.1 has no usable pipelining, so with one the link idles for a
    /// round trip between segments, and a long fat link needs more than one TCP window.
    pub mirror_connections: usize,
    /// In a job of mirrors alone, each mirror's first segment and then one in this many is
    /// fetched again from other mirrors and compared (see `cross_check`); 0 turns it off.
    pub cross_check_every: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            pipeline_depth: 4,
            stall_timeout: Duration::from_secs(15),
            // One default, the scheduler's.
            silence_timeout: arsnet_sched::Config::default().laggard_floor,
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            // One default, the scheduler's (aria2's `--max-tries` default, 5).
            max_tries: arsnet_sched::Config::default().max_tries,
            commit_batch: 32,
            commit_interval: Duration::from_millis(500),
            metric_interval: Duration::from_secs(1),
            mirror_connections: 2,
            cross_check_every: 64,
        }
    }
}

/// Called with the file name and accepted content (BLAKE3) before the job writes anything
/// in DIR, and must have saved them when it returns: so that after any crash the job knows
/// which files and which content are its own. An error fails the job before any write.
#[derive(Clone)]
pub struct ContentHook(pub Arc<RecordContent>);

/// The function behind a [`ContentHook`]: file name, content BLAKE3 → saved, or why not.
pub type RecordContent = dyn Fn(&str, &Digest) -> Result<(), RecordError> + Send + Sync;

/// Why a [`ContentHook`] could not save a job's accepted content (the daemon's state file
/// could not be written, say): the job must not write a byte it could not resume. The
/// hook's own error is kept as the source, not flattened.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(#[source] Box<dyn std::error::Error + Send + Sync>);

impl RecordError {
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        RecordError(error.into())
    }
}

impl std::fmt::Debug for ContentHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentHook")
    }
}

/// What to download, where.
#[derive(Debug, Clone)]
pub struct DownloadSpec {
    pub id: JobId,
    pub dir: PathBuf,
    /// Every source, as the user named it.
    pub sources: Vec<arsnet_proto::SourceAddr>,
    /// Adopt a partial download found in `dir`.
    pub resume: bool,
    /// The file name, when known from an earlier run (picks the partial to adopt).
    pub name: Option<String>,
    /// Replace an existing `dir/NAME`.
    pub overwrite: bool,
    /// The (device, inode) `dir` must be: the directory the caller proved it may write to
    /// when it asked (`None`: the caller is the daemon's own user, and `dir` is created if
    /// missing).
    pub dir_identity: Option<arsnet_store::dir::FileId>,
    /// Who the finished file is given to, `(uid, gid)`, when that is not the daemon's user.
    pub give_to: Option<(u32, u32)>,
    /// The requesting user when it is not the daemon's: `--overwrite` replaces only its files.
    pub caller_uid: Option<u32>,
    /// Saves the accepted name and content before anything is written (see [`ContentHook`]).
    pub on_content: Option<ContentHook>,
    /// This job's tag: its partial files carry it, and only they are adopted or removed.
    pub tag: JobTag,
    /// Tags of the daemon's other jobs that still own their partial files (open or failed):
    /// never adopted. A journal with any other tag is an orphan (its job was cancelled with
    /// --keep, or is unknown to this daemon), which `fetch -r` may continue.
    pub foreign_tags: Vec<JobTag>,
    /// The content the user pinned.
    pub pin: Option<Pin>,
    /// Extra CA certificates (PEM) for HTTPS mirrors, besides the system's roots.
    pub ca_certs: Vec<String>,
    /// The content this job accepted in an earlier run (its BLAKE3): nothing else is taken.
    pub content: Option<Digest>,
    pub config: DownloadConfig,
}

impl DownloadSpec {
    /// Whether partial files carrying `tag` may be adopted by this job: its own, or an
    /// orphan's when the job already knows which content it wants (pinned or accepted
    /// before) — the adoption then checks the journal holds that content. An orphan never
    /// chooses the content: anyone who can write DIR could have left it there.
    ///
    /// A job of mirrors only adopts its own files alone: its layout has no identity (see
    /// `Manifest::unproven`), so an orphan of the same name and size could hold any file.
    pub(crate) fn may_adopt(&self, tag: &JobTag) -> bool {
        *tag == self.tag
            || (!self.mirrors_only()
                && !self.foreign_tags.contains(tag)
                && self.required_content().is_some())
    }

    /// The BLAKE3 the content must have, from the job's history or the user's pin. A job of
    /// mirrors only has no per-segment identity: its history is its layout's (unproven)
    /// root, and its pin is checked on the whole file instead (see [`DownloadSpec::end_check`]).
    pub(crate) fn required_content(&self) -> Option<Digest> {
        if self.mirrors_only() {
            return self.content;
        }
        required_content(self.content, self.pin)
    }

    /// Whether every source is an HTTP mirror: nothing proves segments one by one.
    pub(crate) fn mirrors_only(&self) -> bool {
        self.sources.iter().all(arsnet_proto::SourceAddr::is_mirror)
    }

    /// The pin the finished file is checked against before it is published: a SHA-256 pin
    /// always, a BLAKE3 pin when no digest table proved the segments (mirrors only).
    pub(crate) fn end_check(&self) -> Option<Pin> {
        match self.pin {
            Some(Pin::Blake3(_)) if !self.mirrors_only() => None,
            pin => pin,
        }
    }

    /// What a file found at `DIR/NAME` after a restart must hash to for this job to count it
    /// as its own finished download (a crash between publishing and the job's end): the
    /// accepted content's BLAKE3, or for mirrors alone the pin (their layout's root is no
    /// file's hash). `None` when nothing can recognise it (`--no-verify`, or no content yet).
    pub(crate) fn published_check(&self) -> Option<Pin> {
        if self.mirrors_only() {
            return self.content.and(self.pin);
        }
        self.content.map(Pin::Blake3)
    }

    /// The name a job of mirrors only saves under: an earlier run's, else the first mirror's
    /// URL's last path segment (validated by the request, checked again here).
    pub(crate) fn mirror_file_name(&self) -> Option<String> {
        self.name.clone().or_else(|| {
            self.sources
                .iter()
                .find_map(arsnet_proto::SourceAddr::file_name)
        })
    }
}

/// Operator commands to a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobCommand {
    /// Stop at a durable point, keeping the partial files (pause, daemon shutdown).
    Stop,
    /// Stop and remove the partial files unless `keep`.
    Cancel { keep: bool },
}
